"""The resync orchestrator over the real etcd source and real etcd processes, stopped by PID:
the orchestrator's part of the store rows of docs/faults.md (F1, F2, F3, F4, F5 silent
member, F6, F14 scaled down, and a blocked event loop, which is not F21: that row stops the
agent process; invariants I1, I2, I3, I5, I8, I15 checked against the plugin's state).

The plugin is a ``Recorder`` (tests/orchestrator_helpers.py) that keeps the state it was
told, every change it applied and a count of effective changes: a dict standing in for the
dataplane, so these are not the rows themselves; the rows run through the VPP plugins into
the simulator in tests/faults. ``rec`` (I8) is the number of rounds after start-up.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from datasync.api import SourceState
from datasync.errors import EscalationError, SourceError
from datasync.resync import (
    EXIT_RESTART_REQUIRED,
    Escalated,
    Orchestrator,
    ResyncConfig,
)
from datasync.transport.etcd import EtcdSource
from tests.netproxy import TCPProxy
from tests.orchestrator_helpers import (
    Recorder,
    RecordingSleep,
    Rounds,
    background,
    converge_on,
    per_key_increasing,
)
from tests.orchestrator_helpers import eventually as _eventually

from .etcdserver import EtcdCluster, etcdctl

# (a pytestmark in conftest.py does not mark the tests: it has to be here)
pytestmark = pytest.mark.etcd

WAIT = 30.0  # safety net against hangs only
END = "zz-end"  # sentinel key: its arrival means every earlier write arrived too


# --- the plugin and the harness ----------------------------------------------------------


# Fast rounds, and no escalation: these tests watch the retries themselves.
CONFIG = dict(
    resync_timeout=20.0,
    snapshot_timeout=20.0,
    backoff_initial=0.1,
    backoff_max=0.5,
    escalation="retry",
)


@pytest.fixture
async def orch_factory(
    make_source: Callable[..., EtcdSource],
) -> AsyncIterator[Callable[..., Orchestrator]]:
    """Orchestrators stopped at teardown, before the sources (``make_source``) close."""
    made: list[Orchestrator] = []

    def make(src: EtcdSource, sleep: RecordingSleep | None = None, **cfg: object) -> Orchestrator:
        o = Orchestrator(
            [src],
            ResyncConfig(**{**CONFIG, **cfg}),  # type: ignore[arg-type]
            rng=random.Random(7),
            sleep=sleep,
        )
        made.append(o)
        return o

    yield make
    for o in made:
        await o.stop()


async def eventually(pred: Callable[[], bool], what: str = "condition") -> None:
    """Poll ``pred`` until true (a hang fails after WAIT)."""
    await _eventually(pred, what, WAIT)


@pytest.fixture
def prefix() -> str:
    return f"/vnf-agent/{uuid.uuid4().hex[:8]}/config/"


async def put_retrying(pub: EtcdSource, key: str, value: bytes) -> int:
    """A writer that keeps trying through an outage; returns the acknowledged revision."""
    async with asyncio.timeout(WAIT):
        while True:
            try:
                return await pub.put(key, value)
            except SourceError:
                await asyncio.sleep(0.05)


async def converge(
    orch: Orchestrator, src: EtcdSource, plugin: Recorder, endpoints: list[str], prefix: str
) -> int:
    """I1: wait until the plugin holds the store's content at its current revision R, the
    orchestrator reports applied_revision == R and in_sync; returns R."""
    truth = EtcdSource(name="truth", endpoints=endpoints, recycle_interval=None)

    def failure(want: dict[str, bytes], revision: int) -> str:
        st = orch.status()
        return (
            f"no convergence: plugin has {len(plugin.state)} keys, store {len(want)}; "
            f"applied {orch.applied_revision(src.name)} vs R {revision}; status {st}"
        )

    return await converge_on(orch, src.name, plugin, truth, [prefix], WAIT, failure)


async def history(endpoints: list[str], prefix: str, start: int) -> list[tuple[str, int]]:
    """The store's own (key, revision) history of ``prefix`` from ``start`` up to the
    sentinel, read by a fresh client."""
    src = EtcdSource(name="history", endpoints=endpoints, recycle_interval=None)
    it = src.watch([prefix], start)
    out: list[tuple[str, int]] = []
    try:
        async with asyncio.timeout(WAIT):
            while not any(k == prefix + END for k, _ in out):
                out += [(c.key, c.revision) for c in await anext(it)]
    finally:
        await it.aclose()  # type: ignore[attr-defined]
        await src.close()
    return out


async def preload(pub: EtcdSource, prefix: str, n: int) -> set[str]:
    keys = [f"{prefix}vpp/v2/interfaces/if{i:05d}" for i in range(n)]
    for i in range(0, n, 100):  # etcd allows 128 operations per txn
        await pub.txn({k: b'{"enabled": true}' for k in keys[i : i + 100]})
    return set(keys)


# --- I1 ----------------------------------------------------------------------------------


async def test_converges_to_the_store_under_write_traffic(
    etcd1: EtcdCluster,
    make_source: Callable[..., EtcdSource],
    orch_factory: Callable[..., Orchestrator],
    prefix: str,
) -> None:
    """I1 with writes, deletes and re-creates running through the start-up round: the plugin
    ends with the store's content at its final revision R, applied_revision == R, in sync,
    one round only, and every key's changes in increasing revision order (I3)."""
    pub = make_source(etcd1.endpoints, name="pub")
    await preload(pub, prefix, 300)
    src = make_source(etcd1.endpoints)
    plugin = Recorder("if", [prefix])
    orch = orch_factory(src)
    rounds = Rounds(orch)
    orch.add_plugin(plugin)

    async def writer() -> None:
        for i in range(120):
            key = f"{prefix}vpp/v2/interfaces/if{i % 40:05d}"
            if i % 7 == 3:
                await pub.delete(key)
            else:
                await pub.put(key, b'{"mtu": %d}' % (1000 + i))
            await asyncio.sleep(0.005)

    async with background(writer()) as w:
        await orch.start()
        await w
    r = await converge(orch, src, plugin, etcd1.endpoints, prefix)
    assert rounds.rec == 0 and orch.status().failed_rounds == 0
    assert per_key_increasing(plugin.changes)
    # Everything after the snapshot came as changes, each revision once (I5).
    snap_rev = plugin.resyncs[0].revisions["etcd"]
    assert all(ch.revision > snap_rev for ch in plugin.changes)
    assert len({(c.key, c.revision) for c in plugin.changes}) == len(plugin.changes)
    assert orch.status().sources["etcd"].applied_revision == r
    # I2: a forced resync right after convergence changes nothing at the plugin.
    effects = plugin.effects
    orch.request_resync("test: no-op resync")
    await eventually(lambda: len(rounds.finished) == 2, "the forced round")
    assert rounds.finished[1].ok and plugin.effects == effects
    assert await converge(orch, src, plugin, etcd1.endpoints, prefix) == r


# --- F1 ----------------------------------------------------------------------------------


async def test_kill_during_resync_delivers_no_partial_view_and_recovers(
    etcd1: EtcdCluster,
    make_source: Callable[..., EtcdSource],
    orch_factory: Callable[..., Orchestrator],
    prefix: str,
) -> None:
    """F1: etcd is SIGKILLed while a resync round pages its snapshot. The round fails
    without any resync event (nothing is deleted on a partial view), rounds retry with
    backoff while etcd is down, and after a restart on the same data dir the agent
    converges (I1), writes made meanwhile included."""
    member = etcd1.members[0]
    pub = make_source(etcd1.endpoints, name="pub")
    keys = await preload(pub, prefix, 2000)
    async with TCPProxy("127.0.0.1", member.client_port) as proxy:
        src = make_source([proxy.address], page_size=50, max_page_bytes=1)
        sleep = RecordingSleep()
        plugin = Recorder("if", [prefix])
        orch = orch_factory(src, sleep)
        rounds = Rounds(orch)
        orch.add_plugin(plugin)
        await orch.start()
        await converge(orch, src, plugin, etcd1.endpoints, prefix)
        assert rounds.rec == 0

        # A slow link makes the paging long enough to kill etcd in the middle of it.
        proxy.set_mode("delay", delay=0.02)
        snapshots, pages = src.stats["snapshots"], src.stats["pages"]
        orch.request_resync("test: forced round")
        await eventually(lambda: src.stats["pages"] >= pages + 3, "snapshot paging")
        # I15: the kill lands mid-round, while the snapshot is still being read.
        assert orch.status().round_running and src.stats["snapshots"] == snapshots
        await asyncio.to_thread(member.kill)
        await eventually(lambda: len(rounds.finished) >= 2, "the interrupted round's end")
        failed = rounds.finished[1]
        assert not failed.ok and "source:etcd" in failed.errors
        assert src.stats["snapshots"] == snapshots, "the killed snapshot must not complete"
        assert len(plugin.resyncs) == 1, "a failed snapshot must reach no plugin"
        await eventually(lambda: len(rounds.finished) >= 3, "a retry while etcd is down")
        assert not rounds.finished[2].ok and len(plugin.resyncs) == 1

        # Writes go on as soon as etcd is back, the agent must pick them up.
        async def writer() -> None:
            for i in range(30):
                await put_retrying(pub, f"{prefix}vpp/v2/interfaces/if{i:05d}", b"%d" % i)
                await asyncio.sleep(0.01)

        async with background(writer()) as w:
            await asyncio.to_thread(member.restart)
            proxy.set_mode("pass")
            await w
        await converge(orch, src, plugin, etcd1.endpoints, prefix)
    st = orch.status()
    assert st.failed_rounds >= 2 and rounds.rec >= 2
    assert plugin.deleted == [], "no key present in the store may be deleted"
    assert all(keys <= ev.kvs.keys() for ev in plugin.resyncs)
    assert per_key_increasing(plugin.changes)
    # I8: retries followed the capped exponential schedule (jitter only shortens by 20 %).
    assert sleep.delays, "failed rounds must back off"
    for n, d in enumerate(sleep.delays[: st.failed_rounds]):
        base = min(0.5, 0.1 * 2**n)
        assert base * 0.8 <= d <= base


async def test_store_gone_for_good_escalates_without_deleting(
    etcd1: EtcdCluster,
    make_source: Callable[..., EtcdSource],
    orch_factory: Callable[..., Orchestrator],
    prefix: str,
) -> None:
    """F1, etcd never comes back: after ``escalate_after`` failed rounds the orchestrator
    takes the "brute force" path (EscalationError with the restart exit code, an Escalated
    event) instead of retrying for ever, and the plugin's state is left as it was."""
    pub = make_source(etcd1.endpoints, name="pub")
    keys = await preload(pub, prefix, 20)
    src = make_source(etcd1.endpoints)
    plugin = Recorder("if", [prefix])
    orch = orch_factory(src, escalation="exit", escalate_after=3)
    escalated: list[Escalated] = []
    orch.add_listener(lambda ev: escalated.append(ev) if isinstance(ev, Escalated) else None)
    orch.add_plugin(plugin)
    await orch.start()
    await converge(orch, src, plugin, etcd1.endpoints, prefix)
    await asyncio.to_thread(etcd1.members[0].kill)
    orch.request_resync("test: round while etcd is gone")
    with pytest.raises(EscalationError) as info:
        async with asyncio.timeout(WAIT):
            await orch.run_until_stopped()
    assert info.value.exit_code == EXIT_RESTART_REQUIRED
    assert [e.failed_rounds for e in escalated] == [3]
    st = orch.status()
    assert st.failed_rounds == 3 and not st.in_sync
    assert plugin.state.keys() == keys and plugin.deleted == []


async def test_kill_while_plugins_apply_resumes_the_watch_without_relist(
    etcd1: EtcdCluster,
    make_source: Callable[..., EtcdSource],
    orch_factory: Callable[..., Orchestrator],
    prefix: str,
) -> None:
    """F1 variant: etcd dies while the plugin applies the snapshot. The snapshot is whole,
    so the round succeeds; the source resumes its watch after the restart (same data dir,
    same history), so no relist is needed and writes made meanwhile arrive as changes."""
    member = etcd1.members[0]
    pub = make_source(etcd1.endpoints, name="pub")
    keys = await preload(pub, prefix, 200)
    src = make_source(etcd1.endpoints)
    plugin = Recorder("if", [prefix], gate=asyncio.Event())
    orch = orch_factory(src)
    rounds = Rounds(orch)
    orch.add_plugin(plugin)
    await orch.start()
    async with asyncio.timeout(WAIT):
        await plugin.entered.wait()
    assert orch.status().round_running  # I15: the kill lands during the apply
    await asyncio.to_thread(member.kill)
    assert plugin.gate is not None
    plugin.gate.set()
    await asyncio.to_thread(member.restart)
    await put_retrying(pub, f"{prefix}after-restart", b"1")
    await converge(orch, src, plugin, etcd1.endpoints, prefix)
    assert rounds.rec == 0 and orch.status().failed_rounds == 0
    assert keys <= plugin.state.keys() and plugin.deleted == []
    assert [c.key for c in plugin.changes] == [f"{prefix}after-restart"]


# --- F2 ----------------------------------------------------------------------------------


def _compacted_past(endpoints: list[str], key: str, revision: int) -> bool:
    """True once ``revision`` of the store's history is gone (compacted)."""
    try:
        etcdctl(endpoints, "get", key, f"--rev={revision}")
    except subprocess.CalledProcessError as exc:
        if "compacted" in exc.stderr:
            return True
        raise
    return False


@pytest.mark.parametrize(
    ("cut", "compaction"), [("reset", "ours"), ("blackhole", "ours"), ("reset", "etcd's own")]
)
async def test_compaction_while_cut_off_is_exactly_one_relist(
    request: pytest.FixtureRequest,
    make_source: Callable[..., EtcdSource],
    orch_factory: Callable[..., Orchestrator],
    prefix: str,
    cut: str,
    compaction: str,
) -> None:
    """F2: while the agent's link is cut, keys are deleted, deleted and re-created, added,
    and the history the agent needs is compacted: by our request to the head, or by etcd's
    own periodic auto-compaction (which goes on after the link heals). On healing: exactly
    one relist (rec == 1), 0 phantoms, re-created keys at their new value, I1, and the
    watch the relist left behind keeps delivering."""
    auto = compaction == "etcd's own"
    etcd: EtcdCluster = request.getfixturevalue("etcd1_autocompacting" if auto else "etcd1")
    pub = make_source(etcd.endpoints, name="pub")
    await pub.txn({f"{prefix}k{i}": b"old" for i in range(10)})
    async with TCPProxy("127.0.0.1", etcd.members[0].client_port) as proxy:
        src = make_source([proxy.address])
        plugin = Recorder("if", [prefix])
        orch = orch_factory(src)
        rounds = Rounds(orch)
        orch.add_plugin(plugin)
        await orch.start()
        await converge(orch, src, plugin, etcd.endpoints, prefix)

        proxy.trigger_connectivity_loss(cut)
        gone = [f"{prefix}k{i}" for i in range(0, 4)]
        recreated = [f"{prefix}k{i}" for i in range(4, 7)]
        first_missed = await pub.delete(gone[0])
        for k in gone[1:] + recreated:
            await pub.delete(k)
        for k in recreated:
            await pub.put(k, b"new")
        head = await pub.put(f"{prefix}added", b"new")
        if auto:
            async with asyncio.timeout(WAIT):
                while not await asyncio.to_thread(
                    _compacted_past, etcd.endpoints, gone[0], first_missed
                ):
                    await pub.put(f"{prefix}tick", b"")  # the compactor needs newer revisions
                    await asyncio.sleep(0.5)
        else:
            await pub.compact(head)
        # The source notices the cut (a blackhole through its watchdog) before healing.
        await eventually(lambda: src.state is not SourceState.CONNECTED, "the cut noticed")
        assert not orch.status().in_sync
        proxy.restore_connectivity()
        await converge(orch, src, plugin, etcd.endpoints, prefix)
        if auto:
            # etcd's compactor goes past the relist's revision while the new watch runs
            relisted = orch.applied_revision(src.name)
            async with asyncio.timeout(WAIT):
                while not await asyncio.to_thread(
                    _compacted_past, etcd.endpoints, prefix + "tick", relisted
                ):
                    await pub.put(f"{prefix}tick", b"")  # the compactor needs newer revisions
                    await asyncio.sleep(0.5)
        # A later write still comes as a change: the relist left a working watch behind.
        await pub.put(prefix + END, b"")
        await eventually(lambda: prefix + END in plugin.state, "the sentinel")
    assert rounds.rec == 1, [r.reasons for r in rounds.started]
    assert "CompactedError" in " ".join(rounds.started[1].reasons)
    assert orch.status().failed_rounds == 0
    assert not set(gone) & plugin.state.keys(), "phantoms"
    assert all(plugin.state[k] == b"new" for k in recreated)
    assert plugin.state[f"{prefix}added"] == b"new"
    assert src.stats["compacted"] == 1
    assert per_key_increasing(plugin.changes)


# --- F4 ----------------------------------------------------------------------------------


async def test_leader_kill_resumes_without_relist_losing_or_repeating_nothing(
    etcd3: EtcdCluster,
    make_source: Callable[..., EtcdSource],
    orch_factory: Callable[..., Orchestrator],
    prefix: str,
) -> None:
    """F4: SIGKILL the 3-member cluster's leader, which the agent talks to, under write
    traffic. The watch resumes on another member: no relist (rec == 0), and the changes the
    plugin applied are exactly the store's history (no loss I4, no duplicate I5, order I3)."""
    leader = await asyncio.to_thread(etcd3.leader)
    others = [m.endpoint for m in etcd3.members if m is not leader]
    src = make_source([leader.endpoint, *others])
    pub = make_source([*others, leader.endpoint], name="pub", request_timeout=1.0)
    await pub.txn({f"{prefix}k{i}": b"0" for i in range(5)})
    plugin = Recorder("if", [prefix])
    orch = orch_factory(src)
    rounds = Rounds(orch)
    orch.add_plugin(plugin)
    await orch.start()
    await converge(orch, src, plugin, etcd3.endpoints, prefix)
    start = plugin.resyncs[0].revisions["etcd"] + 1
    assert src.endpoint == leader.endpoint
    acked: list[int] = []

    async def writer() -> None:
        for i in range(80):
            key = f"{prefix}k{i % 5}"
            if i % 9 == 4:
                acked.append(await pub.delete(key))
            else:
                acked.append(await put_retrying(pub, key, b"%d" % i))
            await asyncio.sleep(0.01)

    async with background(writer()) as w:
        await eventually(lambda: len(plugin.changes) >= 15, "traffic before the kill")
        await asyncio.to_thread(leader.kill)
        await w
    await put_retrying(pub, prefix + END, b"")
    await eventually(lambda: prefix + END in plugin.state, "the sentinel")
    truth = await history(others, prefix, start)
    assert [(c.key, c.revision) for c in plugin.changes] == truth
    assert set(acked) <= {r for _, r in truth}, "an acknowledged write was lost"
    assert rounds.rec == 0, [r.reasons for r in rounds.started]
    assert orch.status().failed_rounds == 0
    assert src.endpoint != leader.endpoint and src.stats["reconnects"] >= 1
    assert src.stats["snapshots"] == 1
    await converge(orch, src, plugin, others, prefix)


async def test_leader_killed_three_times_at_random_moments(
    etcd3: EtcdCluster,
    make_source: Callable[..., EtcdSource],
    orch_factory: Callable[..., Orchestrator],
    prefix: str,
) -> None:
    """F4, repeated: three times, at 1 s +-200 ms (seeded) after the write traffic flows,
    SIGKILL whichever member leads now (the agent may or may not be talking to it), then
    bring it back on its data dir, so the next kill keeps a quorum and the agent may land
    on a member that is still catching up. Still no relist, and the changes the plugin
    applied are exactly the store's history (I3, I4, I5)."""
    rng = random.Random(20261127)
    src = make_source(etcd3.endpoints)
    pub = make_source(etcd3.endpoints, name="pub", request_timeout=1.0)
    await pub.txn({f"{prefix}k{i}": b"0" for i in range(5)})
    plugin = Recorder("if", [prefix])
    orch = orch_factory(src)
    rounds = Rounds(orch)
    orch.add_plugin(plugin)
    await orch.start()
    await converge(orch, src, plugin, etcd3.endpoints, prefix)
    start = plugin.resyncs[0].revisions["etcd"] + 1
    acked: list[int] = []
    done = asyncio.Event()

    async def writer() -> None:
        i = 0
        while not done.is_set():
            acked.append(await put_retrying(pub, f"{prefix}k{i % 5}", b"%d" % i))
            i += 1
            await asyncio.sleep(0.01)

    async with background(writer()) as w:
        for _ in range(3):
            goal = len(plugin.changes) + 10
            await eventually(lambda g=goal: len(plugin.changes) >= g, "traffic flowing")
            await asyncio.sleep(rng.uniform(0.8, 1.2))
            leader = await asyncio.to_thread(etcd3.leader)
            await asyncio.to_thread(leader.kill)
            await asyncio.to_thread(leader.restart)
        seen = len(plugin.changes)
        await eventually(lambda: len(plugin.changes) >= seen + 10, "traffic after the kills")
        done.set()
        await w
    await put_retrying(pub, prefix + END, b"")
    await eventually(lambda: prefix + END in plugin.state, "the sentinel")
    truth = await history(etcd3.endpoints, prefix, start)
    assert [(c.key, c.revision) for c in plugin.changes] == truth
    assert set(acked) <= {r for _, r in truth}, "an acknowledged write was lost"
    assert rounds.rec == 0, [r.reasons for r in rounds.started]
    assert orch.status().failed_rounds == 0
    assert src.stats["snapshots"] == 1
    await converge(orch, src, plugin, etcd3.endpoints, prefix)


# --- F5 (silent member) ------------------------------------------------------------------


async def test_hung_member_is_left_for_a_healthy_one_without_relist(
    etcd3: EtcdCluster,
    make_source: Callable[..., EtcdSource],
    orch_factory: Callable[..., Orchestrator],
    prefix: str,
) -> None:
    """F5, silent variant: the follower the agent watches through hangs (SIGSTOP: sockets
    open, nothing answers) while the rest of the cluster takes writes. The stall is found,
    the agent is not in sync meanwhile, the watch moves to a healthy member and resumes from
    its revision: no relist, the plugin's changes are exactly the store's history."""
    leader = await asyncio.to_thread(etcd3.leader)
    follower = next(m for m in etcd3.members if m is not leader)
    others = [m.endpoint for m in etcd3.members if m is not follower]
    src = make_source([follower.endpoint, *others])
    pub = make_source(others, name="pub")
    plugin = Recorder("if", [prefix])
    orch = orch_factory(src)
    rounds = Rounds(orch)
    orch.add_plugin(plugin)
    not_in_sync: list[bool] = []
    src.add_state_listener(
        lambda _n, st, _r: not_in_sync.append(
            st is SourceState.STALLED and not orch.status().in_sync
        )
    )
    await pub.put(f"{prefix}k0", b"0")
    await orch.start()
    await converge(orch, src, plugin, etcd3.endpoints, prefix)
    start = plugin.resyncs[0].revisions["etcd"] + 1
    assert src.endpoint == follower.endpoint
    follower.stop()
    try:
        for i in range(1, 30):
            await pub.put(f"{prefix}k{i % 3}", b"%d" % i)
            await asyncio.sleep(0.01)
        await pub.put(prefix + END, b"")
        await eventually(lambda: prefix + END in plugin.state, "the sentinel")
        await eventually(lambda: orch.status().in_sync, "in sync again")
    finally:
        follower.cont()
    assert any(not_in_sync), "the stall must show: not in sync"
    assert src.stats["stalls"] >= 1 and src.endpoint != follower.endpoint
    assert [(c.key, c.revision) for c in plugin.changes] == await history(others, prefix, start)
    assert rounds.rec == 0 and orch.status().failed_rounds == 0
    await converge(orch, src, plugin, others, prefix)


# --- F6 ----------------------------------------------------------------------------------


async def test_restore_from_backup_resyncs_to_the_restored_content(
    etcd1: EtcdCluster,
    make_source: Callable[..., EtcdSource],
    orch_factory: Callable[..., Orchestrator],
    prefix: str,
    tmp_path: Path,
) -> None:
    """F6: etcd restored from a backup (revision goes back): one store-reset round, and the
    plugin converges to the restored content: keys created after the backup are deleted,
    keys changed after it are back at their old value."""
    pub = make_source(etcd1.endpoints, name="pub")
    await pub.txn({f"{prefix}kept{i}": b"backup" for i in range(5)})
    await asyncio.to_thread(etcd1.snapshot_save, tmp_path / "b.db")
    src = make_source(etcd1.endpoints)
    plugin = Recorder("if", [prefix])
    orch = orch_factory(src)
    rounds = Rounds(orch)
    orch.add_plugin(plugin)
    await orch.start()
    await pub.put(f"{prefix}kept0", b"changed-after-backup")
    for i in range(3):
        await pub.put(f"{prefix}new{i}", b"after-backup")
    high = await converge(orch, src, plugin, etcd1.endpoints, prefix)
    await asyncio.to_thread(etcd1.snapshot_restore, tmp_path / "b.db")
    restored = await converge(orch, src, plugin, etcd1.endpoints, prefix)
    assert restored < high
    assert plugin.state == {f"{prefix}kept{i}": b"backup" for i in range(5)}
    assert sorted(plugin.deleted) == [f"{prefix}new{i}" for i in range(3)]
    assert rounds.rec == 1, [r.reasons for r in rounds.started]
    assert "StoreResetError" in " ".join(rounds.started[1].reasons)
    # The agent goes on from the restored revision.
    r = await pub.put(f"{prefix}later", b"1")
    await eventually(lambda: orch.applied_revision("etcd") == r, "a change after the restore")
    assert plugin.state[f"{prefix}later"] == b"1"


# --- F3 ----------------------------------------------------------------------------------


async def test_compaction_inside_the_list_watch_window_is_one_relist(
    etcd1: EtcdCluster,
    make_source: Callable[..., EtcdSource],
    orch_factory: Callable[..., Orchestrator],
    prefix: str,
) -> None:
    """F3: after snapshot R is read and before the watch at R+1 is created, keys change and
    the store is compacted to its head. The watch create is canceled as compacted and the
    orchestrator relists once (rec == 1, no livelock), converging to the new content."""
    member = etcd1.members[0]
    pub = make_source(etcd1.endpoints, name="pub")
    await pub.txn({f"{prefix}k{i}": b"old" for i in range(5)})
    async with TCPProxy("127.0.0.1", member.client_port) as proxy:
        src = make_source([proxy.address])
        plugin = Recorder("if", [prefix])
        orch = orch_factory(src)
        rounds = Rounds(orch)
        orch.add_plugin(plugin)
        in_window: list[asyncio.Task[None]] = []

        async def change_and_compact() -> None:
            await pub.delete(f"{prefix}k0")
            await pub.put(f"{prefix}k1", b"new")
            await pub.compact(await pub.put(f"{prefix}k9", b"new"))
            proxy.set_mode("pass")  # the held watch create now reaches etcd

        def on_state(_name: str, state: SourceState, reason: str) -> None:
            # The source reports "snapshot read" synchronously, before it returns the
            # snapshot: hold the link there, so the watch create waits in the proxy.
            if reason == "snapshot read" and not in_window:
                proxy.set_mode("stall")
                in_window.append(asyncio.ensure_future(change_and_compact()))

        src.add_state_listener(on_state)
        await orch.start()
        await converge(orch, src, plugin, etcd1.endpoints, prefix)
        assert in_window and in_window[0].done()  # I15: the window was hit
        await in_window[0]
    assert rounds.rec == 1, [r.reasons for r in rounds.started]
    assert "CompactedError" in " ".join(rounds.started[1].reasons)
    assert plugin.resyncs[0].kvs.keys() == {f"{prefix}k{i}" for i in range(5)}
    assert plugin.state == {f"{prefix}k{i}": b"new" if i == 1 else b"old" for i in range(1, 5)} | {
        f"{prefix}k9": b"new"
    }
    assert plugin.deleted == [f"{prefix}k0"]
    assert src.stats["compacted"] == 1


# --- F14 (small) -------------------------------------------------------------------------


async def test_storm_during_resync_is_coalesced_and_converges(
    etcd1: EtcdCluster,
    make_source: Callable[..., EtcdSource],
    orch_factory: Callable[..., Orchestrator],
    prefix: str,
) -> None:
    """F14, scaled down: over 1000 puts and deletes of 50 keys arrive while the plugin holds
    its resync. The buffer coalesces per key, so the plugin gets at most one change per key
    changed (not 1000s), none at or below the snapshot, in per-key order, and I1 holds."""
    pub = make_source(etcd1.endpoints, name="pub")
    keys = [f"{prefix}k{i:02d}" for i in range(50)]
    await pub.txn({k: b"0" for k in keys})
    src = make_source(etcd1.endpoints)
    plugin = Recorder("if", [prefix], gate=asyncio.Event())
    orch = orch_factory(src, buffer_coalesce_above=32)
    rounds = Rounds(orch)
    orch.add_plugin(plugin)
    await orch.start()
    async with asyncio.timeout(WAIT):
        await plugin.entered.wait()
    events = src.stats["events"]
    n = 0
    rng = random.Random(3)
    live = set(keys)
    for b in range(40):
        puts = {k: b"%d" % b for k in rng.sample(keys, 25)}
        dels = [k for k in rng.sample(keys, 25) if k not in puts]
        await pub.txn(puts, dels)
        # etcd has an event for every put, and for deletes of present keys only.
        n += len(puts) + len(live.intersection(dels))
        live = (live - set(dels)) | puts.keys()
    # I15: the whole storm is held in the buffer while the round runs.
    await eventually(lambda: src.stats["events"] - events >= n, "the storm buffered")
    assert orch.status().round_running
    assert plugin.gate is not None
    plugin.gate.set()
    await converge(orch, src, plugin, etcd1.endpoints, prefix)
    assert n > 1000 and 0 < len(plugin.changes) <= len(keys)
    assert all(c.revision > plugin.resyncs[0].revisions["etcd"] for c in plugin.changes)
    assert per_key_increasing(plugin.changes)
    assert rounds.rec == 0


# --- not F21 (which SIGSTOPs an agent process): the agent's loop is blocked in-process ------


async def test_blocked_agent_loop_meanwhile_writes_and_compaction(
    etcd1: EtcdCluster,
    make_source: Callable[..., EtcdSource],
    orch_factory: Callable[..., Orchestrator],
    prefix: str,
) -> None:
    """Stands in for F21 without testing it (F21 stops an agent process past the keepalive):
    the agent's event loop is blocked in-process longer than the stall timeout while the
    store changes and is compacted. Afterwards no stale value is applied after a newer one
    (I3) and I1 holds."""
    src = make_source(etcd1.endpoints)
    plugin = Recorder("if", [prefix])
    orch = orch_factory(src)
    rounds = Rounds(orch)
    orch.add_plugin(plugin)
    pub = make_source(etcd1.endpoints, name="pub")
    await pub.put(f"{prefix}a", b"0")
    await orch.start()
    await converge(orch, src, plugin, etcd1.endpoints, prefix)

    def blocked() -> None:
        # No await in here: the whole loop stands still, as in a stopped process.
        for i in range(1, 6):
            etcdctl(etcd1.endpoints, "put", f"{prefix}a", str(i))
        etcdctl(etcd1.endpoints, "del", f"{prefix}a")
        out = etcdctl(etcd1.endpoints, "put", f"{prefix}b", "x", "-w", "json")
        etcdctl(etcd1.endpoints, "compact", str(json.loads(out)["header"]["revision"]))
        time.sleep(2.0)  # > stall_timeout (1.5 s)

    blocked()
    await converge(orch, src, plugin, etcd1.endpoints, prefix)
    assert plugin.state == {f"{prefix}b": b"x"}
    assert per_key_increasing(plugin.changes)
    # What happens here: the events were queued in the socket while the loop stood still;
    # etcd does not cancel a synced watcher for a compaction, and the watchdog knows its
    # own loop was blocked (no false stall). So: no relist, every change in order.
    assert rounds.rec == 0 and orch.status().failed_rounds == 0
    assert src.stats["stalls"] == 0 and src.stats["compacted"] == 0
    a, b = f"{prefix}a", f"{prefix}b"
    assert [(c.key, c.value) for c in plugin.changes] == [
        *((a, b"%d" % i) for i in range(1, 6)),
        (a, None),
        (b, b"x"),
    ]
