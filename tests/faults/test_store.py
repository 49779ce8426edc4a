"""Store rows (etcd): real etcd processes, killed, cut off and compacted by PID, through
the etcd source, the orchestrator and the VPP plugins into the strict simulator."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from datasync.testing import failpoints as fp
from datasync.testing import invariants as inv
from datasync.testing.history import History
from datasync.testing.netproxy import TCPProxy
from datasync.transport.etcd import EtcdSource
from datasync.vpp.sim import Simulator
from tests.etcd.etcdserver import EtcdCluster

from .harness import Writer, interfaces, loop_if, running
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
            gone = [k for k in list(store)[:3]]
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
            assert not set(gone) & {f"{k}" for k in rig.plugins.states.plugins()}


#: I12's loss check compares one session's revisions with the store's; a compaction
#: ends the session with a relist, whose snapshot the tap records
_NO_I12 = [i for i in inv.CHECKS if i != "I12"]


async def src_compact(w: Writer, revision: int) -> None:
    await w.store.compact(revision)


async def eventually_not_connected(src: EtcdSource) -> None:
    from datasync.api import SourceState

    from .harness import eventually

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
