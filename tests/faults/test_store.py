"""Store rows (etcd): real etcd processes, killed, cut off and compacted by PID, through
the etcd source, the orchestrator and the VPP plugins into the strict simulator."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from datasync.api import SourceState
from datasync.testing import failpoints as fp
from datasync.testing import invariants as inv
from datasync.testing.history import History
from datasync.testing.netproxy import TCPProxy
from datasync.transport.etcd import EtcdSource
from datasync.vpp.sim import Simulator
from tests.etcd.etcdserver import EtcdCluster

from .harness import Writer, eventually, interfaces, loop_if, running
from .stores import Load, etcd_truth, put_retrying, store_now

pytestmark = pytest.mark.etcd

Record = Callable[[str, object], None]


async def test_f4_leader_killed_under_load_watch_resumes_without_relist(
    etcd3: EtcdCluster,
    make_source: Callable[..., EtcdSource],
    sim: Simulator,
    tmp_path: Path,
    history: History,
    record_property: Record,
) -> None:
    """F4: SIGKILL the leader the agent's watch is on while writes flow: the watch resumes
    on another member, no relist, every acknowledged write ends up in VPP, nothing
    applied twice or out of order."""
    leader = await asyncio.to_thread(etcd3.leader)
    others = [m.endpoint for m in etcd3.members if m is not leader]
    src = make_source([leader.endpoint, *others], recycle_interval=None)
    w = Writer(make_source([*others, leader.endpoint], name="pub", request_timeout=1.0), history)
    store = interfaces(20)
    await w.txn(store)
    async with running(src, sim, tmp_path, history) as rig:
        await rig.orch.start()
        await rig.converged(store, w.revision)
        assert src.endpoint == leader.endpoint
        load = Load(w, store)
        await load.wait_count(30)
        rig.mark("fault.injected", member=leader.name)
        await asyncio.to_thread(leader.kill)
        rig.mark("fault.healed")  # the agent has to recover by itself from here
        await load.stop()
        last = await put_retrying(w, dict([loop_if("lo0", "10.99.0.1/32")]))
        final, head = await store_now(others)
        assert head >= last
        await rig.converged(final, head)
        await etcd_truth(others, history, head)
        assert src.endpoint != leader.endpoint
        await rig.verify(final, head, inv.Expect(relists=0, fault="fault.injected",
                                                 min_rate=5.0), record_property)  # fmt: skip
        assert rig.relists == 0


@pytest.mark.parametrize("cut", ["reset", "blackhole"])
async def test_f2_compaction_while_cut_off_is_one_relist_no_phantoms(
    etcd1: EtcdCluster,
    make_source: Callable[..., EtcdSource],
    sim: Simulator,
    tmp_path: Path,
    history: History,
    record_property: Record,
    cut: str,
) -> None:
    """F2: while the agent's link is cut, keys are deleted, one is deleted and re-created
    with a new value, one is added, and the store is compacted to its head: on reconnect
    exactly one full relist; the deleted interfaces are gone from VPP, the re-created one
    has its new value, the new one is there."""
    member = etcd1.members[0]
    w = Writer(make_source(etcd1.endpoints, name="pub"), history)
    store = interfaces(10)
    await w.txn(store)
    async with TCPProxy("127.0.0.1", member.client_port) as proxy:
        src = make_source([proxy.address], recycle_interval=None)
        async with running(src, sim, tmp_path, history) as rig:
            await rig.orch.start()
            await rig.converged(store, w.revision)
            rig.mark("fault.injected", cut=cut)
            proxy.trigger_connectivity_loss(cut)
            gone = list(store)[:3]
            await w.delete(*gone)
            recreated = loop_if("lo3", "10.77.0.1/32")
            await w.delete(recreated[0])
            await w.txn(dict([recreated, loop_if("lo50", "10.50.0.1/32")]))
            head = await w.put(*loop_if("lo4", "10.44.0.1/32"))
            await src_compact(w, head)
            await eventually_not_connected(src)
            proxy.restore_connectivity()
            rig.mark("fault.healed")
            final, rev = await store_now(etcd1.endpoints)
            await rig.converged(final, rev)
            await rig.verify(final, rev, inv.Expect(relists=1, fault="fault.injected"),
                             record_property, only=_NO_I12)  # fmt: skip
            assert rig.relists == 1
            assert all(rig.state(k) is None for k in gone), "a deleted key still has a state"


#: I12's loss check compares one session's revisions with the store's; a compaction
#: ends the session with a relist, whose snapshot the tap records
_NO_I12 = [i for i in inv.CHECKS if i != "I12"]


async def src_compact(w: Writer, revision: int) -> None:
    await w.store.compact(revision)


async def eventually_not_connected(src: EtcdSource) -> None:
    await eventually(lambda: src.state != SourceState.CONNECTED, "the source to notice the cut")


async def test_f1_etcd_killed_while_the_snapshot_is_applied_nothing_deleted(
    etcd1: EtcdCluster,
    make_source: Callable[..., EtcdSource],
    sim: Simulator,
    tmp_path: Path,
    history: History,
    record_property: Record,
) -> None:
    """F1: etcd is SIGKILLed while a resync round holds its snapshot (paused after the
    snapshot page, before the plugins apply it), then restarted on the same data dir:
    the agent deletes nothing that is in the store, retries with backoff and converges."""
    member = etcd1.members[0]
    w = Writer(make_source(etcd1.endpoints, name="pub"), history)
    store = interfaces(30)
    await w.txn(store)
    src = make_source(etcd1.endpoints, recycle_interval=None)
    async with running(src, sim, tmp_path, history) as rig:
        await rig.orch.start()
        await rig.converged(store, w.revision)
        deletes_before = _deletes(sim)
        fp.enable("resync.after_snapshot_page", "1*pause")
        rig.orch.request_resync("test: a round to kill etcd in")
        with history.phase("snapshot.held"):
            await fp.wait_hit("resync.after_snapshot_page")
            rig.mark("fault.injected")
            await asyncio.to_thread(member.kill)
            fp.release("resync.after_snapshot_page")
        await asyncio.sleep(0.5)  # etcd stays down a while: the agent must not give up
        await asyncio.to_thread(member.restart)
        rig.mark("fault.healed")
        await w.put(*loop_if("lo55", "10.55.0.1/32"))
        final, rev = await store_now(etcd1.endpoints)
        await rig.converged(final, rev)
        assert _deletes(sim) == deletes_before, "a southbound delete of a key in the store"
        await etcd_truth(etcd1.endpoints, history, rev)
        expect = inv.Expect(max_relists=3, fault="fault.injected", during="snapshot.held")
        await rig.verify(final, rev, expect, record_property)


def _deletes(sim: Simulator) -> int:
    return sum(ops.get("delete", 0) for ops in sim.counters()["writes"].values())


async def test_f3_compaction_inside_the_list_watch_window_one_relist(
    etcd1: EtcdCluster,
    make_source: Callable[..., EtcdSource],
    sim: Simulator,
    tmp_path: Path,
    history: History,
    record_property: Record,
) -> None:
    """F3: a round is held after its snapshot at R and before its watch from R+1; the store
    gets two writes and is compacted to its head: the watch is refused as compacted, the
    agent relists once and the second attempt succeeds (no livelock)."""
    w = Writer(make_source(etcd1.endpoints, name="pub"), history)
    store = interfaces(10)
    await w.txn(store)
    src = make_source(etcd1.endpoints, recycle_interval=None)
    fp.enable("resync.before_watch", "1*pause")
    async with running(src, sim, tmp_path, history) as rig:
        await rig.orch.start()
        with history.phase("list_watch_window"):
            await fp.wait_hit("resync.before_watch")
            rig.mark("fault.injected")
            await w.put(*loop_if("lo20", "10.20.0.1/32"))
            head = await w.put(*loop_if("lo21", "10.21.0.1/32"))
            await w.store.compact(head)
            fp.release("resync.before_watch")
        rig.mark("fault.healed")
        final, rev = await store_now(etcd1.endpoints)
        await rig.converged(final, rev)
        assert 1 <= rig.relists <= 2
        expect = inv.Expect(max_relists=2, fault="fault.injected", during="list_watch_window")
        await rig.verify(final, rev, expect, record_property, only=_NO_I12)


async def test_f6_restore_from_backup_relists_to_the_restored_content(
    etcd1: EtcdCluster,
    make_source: Callable[..., EtcdSource],
    sim: Simulator,
    tmp_path: Path,
    history: History,
    record_property: Record,
) -> None:
    """F6: etcd is restored from a backup taken before the last writes (its revision goes
    back below what the agent applied): the agent sees the store reset, relists once and
    VPP holds the restored content: the interfaces made after the backup are deleted."""
    w = Writer(make_source(etcd1.endpoints, name="pub"), history)
    await w.txn(interfaces(10))
    await asyncio.to_thread(etcd1.snapshot_save, tmp_path / "b.db")
    src = make_source(etcd1.endpoints, recycle_interval=None)
    async with running(src, sim, tmp_path, history) as rig:
        await rig.orch.start()
        await w.txn(interfaces(5, start=30))
        final, rev = await store_now(etcd1.endpoints)
        await rig.converged(final, rev)
        rig.mark("fault.injected")
        await asyncio.to_thread(etcd1.snapshot_restore, tmp_path / "b.db")
        rig.mark("fault.healed")
        restored, rev = await store_now(etcd1.endpoints)
        assert restored == interfaces(10)
        await rig.converged(restored, rev)
        assert rig.relists == 1
        # the ground truth before the restore is not the store's any more: judge the end
        await rig.verify(restored, rev, inv.Expect(relists=1, fault="fault.injected"),
                         record_property, only=_AFTER_RESET)  # fmt: skip


#: after a restore, revisions of the old history are reused for other values: I3 and I12
#: (which compare with the recorded history) do not apply across the reset
_AFTER_RESET = [i for i in inv.CHECKS if i not in ("I3", "I12")]


async def test_f5_isolated_member_not_in_sync_then_resumes_without_relist(
    etcd3_peer_proxied: EtcdCluster,
    make_source: Callable[..., EtcdSource],
    sim: Simulator,
    tmp_path: Path,
    history: History,
    record_property: Record,
) -> None:
    """F5: every member's peer traffic is blackholed while the agent watches a follower
    (its client port answers, the cluster has no leader): the agent must not stay "in
    sync" on a member that cannot know the latest state (require-leader cancels the
    watch); after the heal it resumes from its revision without a relist, nothing lost."""
    cluster = etcd3_peer_proxied
    leader = await asyncio.to_thread(cluster.leader)
    follower = next(m for m in cluster.members if m is not leader)
    eps = [follower.endpoint, *(m.endpoint for m in cluster.members if m is not follower)]
    src = make_source(eps, recycle_interval=None)
    w = Writer(make_source(cluster.endpoints, name="pub", request_timeout=1.0), history)
    store = interfaces(10)
    await w.txn(store)
    async with running(src, sim, tmp_path, history) as rig:
        await rig.orch.start()
        await rig.converged(store, w.revision)
        rig.mark("fault.injected")
        for proxy in cluster.peer_proxy.values():
            proxy.trigger_connectivity_loss("blackhole")
        try:
            await eventually(lambda: not rig.in_sync(), "the agent not in sync while isolated")
        finally:
            for proxy in cluster.peer_proxy.values():
                proxy.restore_connectivity()
        rig.mark("fault.healed")
        await put_retrying(w, dict([loop_if("lo30", "10.30.0.1/32")]))
        final, rev = await store_now(cluster.endpoints)
        await rig.converged(final, rev)
        assert rig.relists == 0
        await etcd_truth(cluster.endpoints, history, rev)
        await rig.verify(final, rev, inv.Expect(relists=0, fault="fault.injected"),
                         record_property)  # fmt: skip
