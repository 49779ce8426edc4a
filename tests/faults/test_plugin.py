"""Plugin rows: a plugin that is too slow for the resync timeout, or raises; the values
come from a real etcd, the faults from agent failpoints in the real VPP plugins."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from datasync.plugins import KeyState
from datasync.plugins.models import ROUTE_PREFIX
from datasync.resync import PluginState
from datasync.testing import failpoints as fp
from datasync.testing import invariants as inv
from datasync.testing.history import History
from datasync.transport.etcd import EtcdSource
from datasync.vpp.sim import Simulator
from tests.etcd.etcdserver import EtcdCluster
from tests.orchestrator_helpers import tasks_left

from .harness import LABEL, WAIT, Writer, interfaces, loop_if, running
from .stores import etcd_truth, store_now

pytestmark = pytest.mark.etcd

Record = Callable[[str, object], None]
ROUTE = ROUTE_PREFIX.format(label=LABEL)


def route(dst: str, gw: str, iface: str) -> tuple[str, bytes]:
    ip, _, plen = dst.partition("/")
    key = f"{ROUTE}if/{iface}/vrf/0/dst/{ip}/{plen}/gw/{gw}"
    doc = {"dst_network": dst, "next_hop_addr": gw, "outgoing_interface": iface, "vrf_id": 0}
    return key, json.dumps(doc).encode()


def routes_of(sim: Simulator) -> set[str]:
    return {r["prefix"] for t in sim.dump_state()["tables"] for r in t["routes"]}


async def test_f12_slow_plugin_times_out_others_reconcile_buffered_change_applied(
    etcd1: EtcdCluster,
    make_source: Callable[..., EtcdSource],
    sim: Simulator,
    tmp_path: Path,
    history: History,
    record_property: Record,
) -> None:
    """F12: the routes plugin's resync sleeps past the resync timeout: that round fails
    with routes timed out, the interfaces are in VPP meanwhile, the agent says not in sync
    until routes reconciled; a change written during the round is applied afterwards; no
    task is left behind."""
    w = Writer(make_source(etcd1.endpoints, name="pub"), history)
    await w.txn({**interfaces(10), **dict([route("20.0.0.0/8", "10.0.0.2", "lo0")])})
    src = make_source(etcd1.endpoints, recycle_interval=None)
    fp.enable("plugin.routes.resync", "1*sleep(1500)")
    tasks_before = set(asyncio.all_tasks())
    async with running(src, sim, tmp_path, history, resync_timeout=0.5) as rig:
        rig.mark("fault.injected")
        await rig.orch.start()
        with history.phase("routes.slow"):
            await fp.wait_hit("plugin.routes.resync")
            await w.put(*loop_if("lo77", "10.77.0.1/32"))  # buffered meanwhile
            assert not rig.in_sync()
            async with asyncio.timeout(WAIT):
                while not rig.finished:
                    await asyncio.sleep(0.02)
        first = rig.finished[0]
        assert not first.ok and "routes" in first.errors, first
        assert "did not finish its resync within 0.5 s" in first.errors["routes"]
        rig.mark("fault.healed")
        final, rev = await store_now(etcd1.endpoints)
        await rig.converged(final, rev)
        assert "20.0.0.0/8" in routes_of(sim)
        assert rig.orch.status().plugins["routes"].state is PluginState.IN_SYNC
        await etcd_truth(etcd1.endpoints, history, rev)
        expect = inv.Expect(relists=1, fault="fault.injected")
        await rig.verify(final, rev, expect, record_property)
    leaked = await tasks_left(tasks_before)
    assert not leaked, leaked


async def test_f13_plugin_raises_for_one_key_others_converge(
    etcd1: EtcdCluster,
    make_source: Callable[..., EtcdSource],
    sim: Simulator,
    tmp_path: Path,
    history: History,
    record_property: Record,
) -> None:
    """F13: the routes plugin raises in two applies (a resync's, then a change's): each is a
    failed round, retried with backoff; the agent survives, the interfaces converge
    unaffected, and in the end the routes are in VPP too."""
    w = Writer(make_source(etcd1.endpoints, name="pub"), history)
    await w.txn({**interfaces(10), **dict([route("20.0.0.0/8", "10.0.0.2", "lo0")])})
    src = make_source(etcd1.endpoints, recycle_interval=None)
    fp.enable("plugin.routes.apply", "2*raise(RuntimeError)")
    async with running(src, sim, tmp_path, history) as rig:
        rig.mark("fault.injected")
        await rig.orch.start()
        await w.put(*route("21.0.0.0/8", "10.0.1.2", "lo1"))
        rig.mark("fault.healed")
        final, rev = await store_now(etcd1.endpoints)
        await rig.converged(final, rev)
        hits = fp.hits("plugin.routes.apply")
        assert isinstance(hits, int) and hits >= 2
        assert not all(r.ok for r in rig.finished), "the raises were not failed rounds"
        assert {"20.0.0.0/8", "21.0.0.0/8"} <= routes_of(sim)
        assert all(s.state is KeyState.CONFIGURED for s in rig.plugins.states)
        await etcd_truth(etcd1.endpoints, history, rev)
        await rig.verify(final, rev, inv.Expect(fault="fault.injected"), record_property)
