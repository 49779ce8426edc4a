"""The etcd source alone under real etcd faults: kill -9, SIGSTOP of etcd, compaction while
cut off, leader loss, restore from backup. These check the source's part of the store rows
of docs/faults.md (F1-F6: what the source yields or raises); they have no orchestrator,
plugins or VPP, so they are not the rows themselves, which run end to end in
tests/faults/test_store.py. Processes are ours, stopped by PID."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from datasync.api import Change, Op, SourceState
from datasync.errors import (
    CompactedError,
    SourceError,
    SourceUnavailableError,
    StoreResetError,
)
from datasync.transport.etcd import EtcdSource
from tests.netproxy import TCPProxy
from tests.source_contract import aclose

from .etcdserver import EtcdCluster

WAIT = 30.0  # safety net against hangs only
END = "zz-end"  # sentinel key: readers stop when they see it

Row = tuple[str, Op, bytes | None, int]


def rows(changes: list[Change]) -> list[Row]:
    return [(c.key, c.op, c.value, c.revision) for c in changes]


async def read_until(it: AsyncIterator[list[Change]], sentinel: str) -> list[Change]:
    """Every change up to and including the put of ``sentinel``."""
    out: list[Change] = []
    async with asyncio.timeout(WAIT):
        while True:
            out.extend(await anext(it))
            if any(c.key == sentinel for c in out):
                return out


async def ground_truth(endpoints: list[str], prefix: str, start: int) -> list[Row]:
    """The store's own history of ``prefix`` from ``start``, read by a fresh client."""
    src = EtcdSource(name="truth", endpoints=endpoints, recycle_interval=None)
    it = src.watch([prefix], start)
    try:
        return rows(await read_until(it, prefix + END))
    finally:
        await aclose(it)
        await src.close()


async def put_retrying(pub: EtcdSource, key: str, value: bytes) -> int:
    """A writer that keeps trying through an outage; returns the acknowledged revision."""
    async with asyncio.timeout(WAIT):
        while True:
            try:
                return await pub.put(key, value)
            except SourceError:
                await asyncio.sleep(0.05)


async def eventually(pred: Callable[[], bool]) -> None:
    """Poll ``pred`` until true (a hang fails after WAIT)."""
    async with asyncio.timeout(WAIT):
        while True:
            if pred():
                return
            await asyncio.sleep(0.01)


class Consumer:
    """Drains a watch in the background, as the orchestrator would."""

    def __init__(self, it: AsyncIterator[list[Change]]) -> None:
        self.it = it
        self.changes: list[Change] = []
        self.error: BaseException | None = None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for batch in self.it:
                self.changes.extend(batch)
        except Exception as exc:
            self.error = exc

    async def until(self, pred: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not pred():
                if self.task.done():
                    raise AssertionError(f"watch ended early: {self.error!r}")
                await asyncio.sleep(0.02)

    def saw(self, key: str) -> bool:
        return any(c.key == key for c in self.changes)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await aclose(self.it)


@pytest.fixture
def prefix() -> str:
    return f"/f/{uuid.uuid4().hex[:10]}/"


def states_of(src: EtcdSource) -> list[SourceState]:
    seen: list[SourceState] = []
    src.add_state_listener(lambda _n, st, _r: seen.append(st))
    return seen


async def test_kill_during_snapshot_returns_no_partial_result(
    etcd1: EtcdCluster, make_source: Callable[..., EtcdSource], prefix: str
) -> None:
    """Source side of F1: etcd dies while the snapshot is being paged: an error, never a partial
    snapshot."""
    member = etcd1.members[0]
    pub = make_source(etcd1.endpoints)
    for i in range(0, 2000, 100):  # etcd allows 128 operations per txn
        await pub.txn({f"{prefix}{j:05d}": b"v" for j in range(i, i + 100)})
    # A slow link makes the paging long enough to kill etcd in the middle of it.
    async with TCPProxy("127.0.0.1", member.client_port) as proxy:
        proxy.set_mode("delay", delay=0.02)
        src = make_source([proxy.address], page_size=50, max_page_bytes=1)
        task = asyncio.create_task(src.snapshot([prefix]))
        await eventually(lambda: src.stats["pages"] >= 3)
        assert not task.done()
        await asyncio.to_thread(member.kill)
        with pytest.raises(SourceUnavailableError):
            await task
        await asyncio.to_thread(member.restart)
        proxy.set_mode("pass")
        snap = await src.snapshot([prefix])
    assert len(snap.kvs) == 2000


async def test_kill_and_restart_during_watch_loses_and_repeats_nothing(
    etcd1: EtcdCluster, make_source: Callable[..., EtcdSource], prefix: str
) -> None:
    """Source side of F1 (watch side): the watch resumes after etcd restarts: no loss, no
    duplicate, no CompactedError, and the outage is visible in the source state."""
    member = etcd1.members[0]
    pub = make_source(etcd1.endpoints, name="pub")
    src = make_source(etcd1.endpoints)
    seen = states_of(src)
    snap = await src.snapshot([prefix])
    consumer = Consumer(src.watch([prefix], snap.revision + 1))
    acked: list[int] = []

    async def writer() -> None:
        for i in range(60):
            acked.append(await put_retrying(pub, f"{prefix}k{i % 7}", b"%d" % i))
            await asyncio.sleep(0.01)

    w = asyncio.create_task(writer())
    await consumer.until(lambda: len(consumer.changes) >= 10)
    await asyncio.to_thread(member.kill)
    await asyncio.sleep(0.3)
    await asyncio.to_thread(member.restart)
    await w
    await put_retrying(pub, prefix + END, b"")
    await consumer.until(lambda: consumer.saw(prefix + END))
    await consumer.stop()
    assert consumer.error is None
    truth = await ground_truth(etcd1.endpoints, prefix, snap.revision + 1)
    assert rows(consumer.changes) == truth
    assert set(acked) <= {r[3] for r in truth}
    assert src.stats["reconnects"] >= 1
    assert SourceState.DISCONNECTED in seen or SourceState.STALLED in seen
    assert src.state == SourceState.CONNECTED


@pytest.mark.parametrize("cut", ["reset", "blackhole"])
async def test_compaction_while_cut_off_raises_compacted(
    etcd1: EtcdCluster, make_source: Callable[..., EtcdSource], prefix: str, cut: str
) -> None:
    """Source side of F2: writes, deletes, re-creates and a compaction happen while the link is
    cut: on reconnect the watch raises CompactedError (never resumes at the compact revision)."""
    member = etcd1.members[0]
    pub = make_source(etcd1.endpoints, name="pub")
    async with TCPProxy("127.0.0.1", member.client_port) as proxy:
        src = make_source([proxy.address])
        seen = states_of(src)
        snap = await src.snapshot([prefix])
        consumer = Consumer(src.watch([prefix], snap.revision + 1))
        await pub.put(prefix + "a", b"1")
        await consumer.until(lambda: consumer.saw(prefix + "a"))
        proxy.trigger_connectivity_loss(cut)
        await pub.delete(prefix + "a")
        await pub.put(prefix + "a", b"2")
        head = await pub.put(prefix + "b", b"3")
        await pub.compact(head)
        # Wait until the source noticed the cut (a blackhole is found by the watchdog).
        await eventually(lambda: src.state != SourceState.CONNECTED)
        proxy.restore_connectivity()
        async with asyncio.timeout(WAIT):
            await consumer.task
        await aclose(consumer.it)
    assert isinstance(consumer.error, CompactedError), consumer.error
    assert consumer.error.compact_revision == head
    assert [c.key for c in consumer.changes] == [prefix + "a"]
    if cut == "blackhole":
        assert SourceState.STALLED in seen


async def test_compaction_between_snapshot_and_watch(
    etcd_endpoints: list[str], make_source: Callable[..., EtcdSource], prefix: str
) -> None:
    """Source side of F3: compaction inside the list->watch window: CompactedError, then a relist
    works."""
    src = make_source(etcd_endpoints)
    snap = await src.snapshot([prefix])
    await src.put(prefix + "x", b"1")
    head = await src.put(prefix + "y", b"2")
    await src.compact(head)
    it = src.watch([prefix], snap.revision + 1)
    with pytest.raises(CompactedError):
        await anext(it)
    snap2 = await src.snapshot([prefix])
    assert {kv.key for kv in snap2.kvs} == {prefix + "x", prefix + "y"}
    it2 = src.watch([prefix], snap2.revision + 1)
    try:
        r = await src.put(prefix + "z", b"3")
        async with asyncio.timeout(WAIT):
            batch = await anext(it2)
    finally:
        await aclose(it2)
    assert [(c.key, c.revision) for c in batch] == [(prefix + "z", r)]


async def test_silent_blackhole_is_stalled_then_resumes_without_loss(
    etcd1: EtcdCluster, make_source: Callable[..., EtcdSource], prefix: str
) -> None:
    """Source side of F5 (silent blackhole, no RST): the watchdog finds the stall; after healing
    the watch resumes from the last delivered revision, no relist, nothing lost."""
    pub = make_source(etcd1.endpoints, name="pub")
    async with TCPProxy("127.0.0.1", etcd1.members[0].client_port) as proxy:
        src = make_source([proxy.address])
        seen = states_of(src)
        snap = await src.snapshot([prefix])
        consumer = Consumer(src.watch([prefix], snap.revision + 1))
        await pub.put(prefix + "before", b"1")
        await consumer.until(lambda: consumer.saw(prefix + "before"))
        proxy.trigger_connectivity_loss("blackhole")
        for i in range(5):
            await pub.put(prefix + f"during{i}", b"2")
        await eventually(lambda: SourceState.STALLED in seen)
        proxy.restore_connectivity()
        await pub.put(prefix + END, b"")
        await consumer.until(lambda: consumer.saw(prefix + END))
        await consumer.stop()
    assert consumer.error is None
    assert rows(consumer.changes) == await ground_truth(etcd1.endpoints, prefix, snap.revision + 1)
    assert src.stats["stalls"] >= 1


async def test_sigstop_is_detected_as_stalled(
    etcd1: EtcdCluster, make_source: Callable[..., EtcdSource], prefix: str
) -> None:
    """Source side of F5 (a hung member, no RST): a SIGSTOPped etcd keeps its sockets open; the
    watchdog reports STALLED, and the watch resumes after SIGCONT. (Not F21: that row stops the
    agent, not the store.)"""
    member = etcd1.members[0]
    src = make_source(etcd1.endpoints)
    seen = states_of(src)
    snap = await src.snapshot([prefix])
    consumer = Consumer(src.watch([prefix], snap.revision + 1))
    await src.put(prefix + "a", b"1")
    await consumer.until(lambda: consumer.saw(prefix + "a"))
    member.stop()
    try:
        await eventually(lambda: SourceState.STALLED in seen)
    finally:
        member.cont()
    await put_retrying(src, prefix + END, b"")
    await consumer.until(lambda: consumer.saw(prefix + END))
    await consumer.stop()
    assert [c.key for c in consumer.changes] == [prefix + "a", prefix + END]
    assert src.state == SourceState.CONNECTED


async def test_leader_kill_resumes_on_another_member_without_relist(
    etcd3: EtcdCluster, make_source: Callable[..., EtcdSource], prefix: str
) -> None:
    """Source side of F4: SIGKILL the leader the source is connected to: the watch resumes on
    another member from the last delivered revision, without CompactedError, no loss, no
    duplicate."""
    leader = await asyncio.to_thread(etcd3.leader)
    others = [m.endpoint for m in etcd3.members if m is not leader]
    src = make_source([leader.endpoint, *others])
    pub = make_source([*others, leader.endpoint], name="pub", request_timeout=1.0)
    snap = await src.snapshot([prefix])
    assert src.endpoint == leader.endpoint
    consumer = Consumer(src.watch([prefix], snap.revision + 1))
    acked: list[int] = []

    async def writer() -> None:
        for i in range(80):
            acked.append(await put_retrying(pub, f"{prefix}k{i % 5}", b"%d" % i))
            await asyncio.sleep(0.01)

    w = asyncio.create_task(writer())
    await consumer.until(lambda: len(consumer.changes) >= 15)
    await asyncio.to_thread(leader.kill)
    await w
    await put_retrying(pub, prefix + END, b"")
    await consumer.until(lambda: consumer.saw(prefix + END))
    await consumer.stop()
    assert consumer.error is None
    truth = await ground_truth(others, prefix, snap.revision + 1)
    assert rows(consumer.changes) == truth
    assert set(acked) <= {r[3] for r in truth}
    assert src.endpoint != leader.endpoint
    assert src.stats["reconnects"] >= 1
    assert src.stats["compacted"] == 0 and src.stats["snapshots"] == 1


async def test_restore_from_backup_raises_store_reset(
    etcd1: EtcdCluster, make_source: Callable[..., EtcdSource], prefix: str, tmp_path: Path
) -> None:
    """Source side of F6: the store is restored from a backup below the revision already handed
    out: the watch raises StoreResetError; the relist shows the restored content."""
    src = make_source(etcd1.endpoints)
    await src.put(prefix + "kept", b"1")
    await asyncio.to_thread(etcd1.snapshot_save, tmp_path / "b.db")
    snap = await src.snapshot([prefix])
    consumer = Consumer(src.watch([prefix], snap.revision + 1))
    await src.put(prefix + "after-backup", b"2")
    await consumer.until(lambda: consumer.saw(prefix + "after-backup"))
    await asyncio.to_thread(etcd1.snapshot_restore, tmp_path / "b.db")
    async with asyncio.timeout(WAIT):
        await consumer.task
    await aclose(consumer.it)
    assert isinstance(consumer.error, StoreResetError), consumer.error
    snap2 = await src.snapshot([prefix])
    assert [kv.key for kv in snap2.kvs] == [prefix + "kept"]
    assert snap2.extra.get("revision_regressed_from") == snap.revision + 1


async def test_cluster_recreated_raises_store_reset(
    etcd_endpoints: list[str],
    etcd1: EtcdCluster,
    make_source: Callable[..., EtcdSource],
    prefix: str,
) -> None:
    """Source side of F6 (re-created cluster): the endpoint now answers for another cluster id,
    even one with a higher revision: StoreResetError, and the relist adopts the new cluster."""
    other = make_source(etcd1.endpoints, name="other")
    old = make_source(etcd_endpoints, name="old")
    await old.put(prefix + "a", b"1")
    old_host, old_port = etcd_endpoints[0].rsplit(":", 1)
    async with TCPProxy(old_host, int(old_port)) as proxy:
        src = make_source([proxy.address])
        snap = await src.snapshot([prefix])
        consumer = Consumer(src.watch([prefix], snap.revision + 1))
        await old.put(prefix + "b", b"2")
        await consumer.until(lambda: consumer.saw(prefix + "b"))
        # Move the link to the other cluster, well ahead in revisions.
        for i in range(0, snap.revision + 10, 100):
            await other.txn({f"{prefix}pad{j}": b"" for j in range(i, i + 100)})
        proxy.target_port = etcd1.members[0].client_port
        proxy.reset_connections()
        async with asyncio.timeout(WAIT):
            await consumer.task
        await aclose(consumer.it)
        assert isinstance(consumer.error, StoreResetError), consumer.error
        assert "cluster id changed" in str(consumer.error)
        snap2 = await src.snapshot([prefix])
    assert snap2.store_id == (await other.snapshot([prefix])).store_id != snap.store_id


async def test_leaderless_member_is_not_trusted_and_watch_resumes_after_heal(
    etcd3_peer_proxied: EtcdCluster, make_source: Callable[..., EtcdSource], prefix: str
) -> None:
    """Source side of F5: every peer link is cut (all processes up, client ports answering,
    progress requests answered too). With require-leader the members cancel our watch, so the
    source reports DISCONNECTED instead of a silent, stale CONNECTED. After the heal the watch
    resumes from the last delivered revision: no relist, nothing lost, nothing repeated."""
    cluster = etcd3_peer_proxied
    leader = await asyncio.to_thread(cluster.leader)
    follower = next(m for m in cluster.members if m is not leader)
    src = make_source(
        [follower.endpoint, *(m.endpoint for m in cluster.members if m is not follower)]
    )
    seen = states_of(src)
    pub = make_source(cluster.endpoints, name="pub", request_timeout=1.0)
    snap = await src.snapshot([prefix])
    consumer = Consumer(src.watch([prefix], snap.revision + 1))
    await put_retrying(pub, prefix + "before", b"1")
    await consumer.until(lambda: consumer.saw(prefix + "before"))
    for proxy in cluster.peer_proxy.values():
        proxy.trigger_connectivity_loss("blackhole")
    try:
        await eventually(lambda: SourceState.DISCONNECTED in seen)
    finally:
        for proxy in cluster.peer_proxy.values():
            proxy.restore_connectivity()
    for i in range(5):
        await put_retrying(pub, prefix + f"after{i}", b"2")
    await put_retrying(pub, prefix + END, b"")
    await consumer.until(lambda: consumer.saw(prefix + END))
    await consumer.stop()
    assert consumer.error is None
    assert rows(consumer.changes) == await ground_truth(
        cluster.endpoints, prefix, snap.revision + 1
    )
    assert src.stats["compacted"] == 0 and src.stats["snapshots"] == 1
    assert src.stats["stalls"] == 0  # found by require-leader, not by the watchdog
