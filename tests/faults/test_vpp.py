"""VPP rows: the strict simulator restarts, drops its clients, refuses one item, or is
changed behind the agent's back; the store is the embedded one (the rows are about the
dataplane), the plugins and the VppClient are the real ones."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from datasync.plugins import KeyState
from datasync.testing import invariants as inv
from datasync.testing.history import History
from datasync.transport.local import LocalStore
from datasync.vpp.retvals import RETVAL_NAMES
from datasync.vpp.sim import Simulator

from .harness import (
    IF,
    Writer,
    eventually,
    interfaces,
    loop_if,
    running,
    sim_writes,
)

Record = Callable[[str, object], None]
RV = {name: value for value, name in RETVAL_NAMES.items()}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    s = LocalStore(tmp_path / "store.db", poll_interval=0.02)
    yield s
    await s.close()


async def _store(s: LocalStore) -> tuple[dict[str, bytes], int]:
    snap = await s.snapshot(["/"])
    return {kv.key: kv.value for kv in snap.kvs}, snap.revision


@pytest.mark.parametrize("epochs", [1, pytest.param(5, marks=pytest.mark.slow)])
async def test_f9_vpp_restart_loses_everything_reprogrammed_once(
    store: LocalStore, sim: Simulator, tmp_path: Path, history: History,
    record_property: Record, epochs: int,
) -> None:  # fmt: skip
    """F9: the dataplane restarts with empty state and renumbered indices: the agent
    detects it, rebuilds its index map and programs every desired item again, once;
    the untagged default objects (local0) are untouched; no dangling reference."""
    w = Writer(store, history)
    await w.txn(interfaces(50))
    async with running(store, sim, tmp_path, history, client_opts={"probe_interval": 0.5}) as rig:
        await rig.orch.start()
        want, rev = await _store(store)
        await rig.converged(want, rev)
        for _ in range(epochs):
            rig.mark("fault.injected")
            sim.restart(shuffle=True)  # a new state: its write counters start at 0
            rig.mark("fault.healed")
            await eventually(lambda: _creates(sim) > 0, "VPP programmed again")
            await rig.converged(want, rev)
            assert _creates(sim) == 50, "each interface created once per epoch"
        assert any(i["name"] == "local0" for i in sim.dump_state()["interfaces"])
        await rig.verify(want, rev, inv.Expect(fault="fault.injected"), record_property,
                         sb_writes=sim_writes(sim))  # fmt: skip


def _creates(sim: Simulator) -> int:
    return int(sim.counters()["writes"].get("interface", {}).get("create", 0))


async def test_f10_vpp_connection_dropped_state_kept_zero_writes(
    store: LocalStore, sim: Simulator, tmp_path: Path, history: History,
    record_property: Record,
) -> None:  # fmt: skip
    """F10: VPP drops the agent's API connection and keeps its state: the agent reconnects
    and its downstream resync writes nothing."""
    w = Writer(store, history)
    await w.txn(interfaces(50))
    async with running(store, sim, tmp_path, history, client_opts={"probe_interval": 0.5}) as rig:
        await rig.orch.start()
        want, rev = await _store(store)
        await rig.converged(want, rev)
        rig.mark("fault.injected")
        before = sim_writes(sim)
        hellos = sim.message_counts["sockclnt_create"]
        assert sim.drop_connections() >= 1
        await eventually(lambda: sim.message_counts["sockclnt_create"] > hellos,
                         "the client reconnected")  # fmt: skip
        await rig.client.wait_connected(10)
        rig.mark("fault.healed")
        await rig.converged(want, rev)
        assert sim_writes(sim) == before, "a resync after a reconnect wrote to VPP"
        await rig.verify(want, rev, inv.Expect(fault="fault.injected"), record_property)
        assert sim_writes(sim) == before


async def test_f11_one_item_refused_others_converge(
    store: LocalStore, sim: Simulator, tmp_path: Path, history: History,
    record_property: Record,
) -> None:  # fmt: skip
    """F11 (permanent): VPP refuses one interface's address (UNSUPPORTED): that key is
    FAILED and not retried by later rounds, every other key CONFIGURED, the agent in sync
    meanwhile; a new value for the key is tried again and converges."""
    bad = ipaddress.ip_interface("10.9.0.1/32")
    sim.inject_error("sw_interface_add_del_address", RV["UNSUPPORTED"], count=None,
                     match={"prefix": bad})  # fmt: skip
    w = Writer(store, history)
    await w.txn({**interfaces(20), **dict([loop_if("bad", str(bad))])})
    async with running(store, sim, tmp_path, history) as rig:
        rig.mark("fault.injected")
        await rig.orch.start()
        want, rev = await _store(store)
        await rig.settle(rev)
        await eventually(lambda: rig.state(IF + "bad") is KeyState.FAILED, "bad FAILED")
        calls = sim.message_counts["sw_interface_add_del_address"]
        rig.orch.request_resync("test: a round after the failure")
        await rig.settle(rev)
        assert sim.message_counts["sw_interface_add_del_address"] == calls, "FAILED retried"
        others = {k for k in want if k != IF + "bad"}
        assert all(rig.state(k) is KeyState.CONFIGURED for k in others)
        sim.clear_faults()
        rig.mark("fault.healed")
        await w.put(*loop_if("bad", str(bad), mtu=1400))  # a new value is tried again
        want, rev = await _store(store)
        await rig.converged(want, rev)
        await rig.verify(want, rev, inv.Expect(fault="fault.injected"), record_property)


async def test_f11_retryable_error_retried_until_it_clears(
    store: LocalStore, sim: Simulator, tmp_path: Path, history: History,
    record_property: Record,
) -> None:  # fmt: skip
    """F11 (retryable): VPP answers QUEUE_FULL to one interface's admin-up: that key is
    RETRYING with growing attempts, the others CONFIGURED; once the fault clears it
    converges with no round failed."""
    sim.inject_error("sw_interface_set_flags", RV["QUEUE_FULL"], count=None, match={"flags": 1})
    w = Writer(store, history)
    await w.txn({**interfaces(5, start=0), **dict([loop_if("slow")])})
    # only "slow" is up: interfaces() are up too, so make them down
    await w.txn({k: v.replace(b'"enabled": true', b'"enabled": false')
                 for k, v in interfaces(5).items()})  # fmt: skip
    async with running(store, sim, tmp_path, history) as rig:
        rig.mark("fault.injected")
        await rig.orch.start()
        want, rev = await _store(store)
        await rig.settle(rev)
        await eventually(lambda: rig.state(IF + "slow") is KeyState.RETRYING, "slow RETRYING")
        st = rig.plugins.states.get(IF + "slow")
        assert st is not None and st.retval == "QUEUE_FULL"
        await eventually(lambda: (rig.plugins.states.get(IF + "slow") or st).attempts >= 3,
                         "three attempts")  # fmt: skip
        assert all(rig.state(k) is KeyState.CONFIGURED for k in want if not k.endswith("slow"))
        sim.clear_faults()
        rig.mark("fault.healed")
        await rig.converged(want, rev)
        assert rig.orch.status().failed_rounds == 0
        await rig.verify(want, rev, inv.Expect(fault="fault.injected"), record_property)


async def test_f22_drift_repaired_by_anti_entropy(
    store: LocalStore, sim: Simulator, tmp_path: Path, history: History,
    record_property: Record,
) -> None:  # fmt: skip
    """F22: behind the agent's back an owned interface is deleted, another loses its
    address and a third gains a foreign one: the periodic anti-entropy round repairs all
    three; local0 (not the agent's) is untouched."""
    w = Writer(store, history)
    await w.txn(interfaces(10))
    async with running(store, sim, tmp_path, history, anti_entropy_interval=0.5) as rig:
        await rig.orch.start()
        want, rev = await _store(store)
        await rig.converged(want, rev)
        index = {i["tag"]: i["sw_if_index"] for i in sim.dump_state()["interfaces"] if i["tag"]}
        rig.mark("fault.injected")
        sim.drift("delete_interface", sw_if_index=index["lo1"])
        sim.drift("del_address", sw_if_index=index["lo2"], prefix="10.0.2.1/32")
        sim.drift("add_address", sw_if_index=index["lo3"], prefix="172.16.0.1/24")
        rig.mark("fault.healed")
        await rig.converged(want, rev)
        assert any(i["name"] == "local0" for i in sim.dump_state()["interfaces"])
        await rig.verify(want, rev, inv.Expect(fault="fault.injected"), record_property)


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("latency", "n"), [(0.1, 10), pytest.param(1.0, 5, marks=pytest.mark.slow)]
)
async def test_f23_slow_dataplane_no_false_failures(
    store: LocalStore, sim: Simulator, tmp_path: Path, history: History,
    record_property: Record, latency: float, n: int,
) -> None:  # fmt: skip
    """F23: every VPP call takes ``latency`` seconds (below the client's 10 s call
    timeout): nothing is reported FAILED or RETRYING, and the agent converges."""
    sim.set_latency(latency)
    w = Writer(store, history)
    await w.txn(interfaces(n))
    async with running(store, sim, tmp_path, history, resync_timeout=600.0) as rig:
        rig.mark("fault.injected", latency=latency)
        rig.mark("t_conv.start")  # the latency stays on: convergence is timed from start
        await rig.orch.start()
        want, rev = await _store(store)
        await rig.converged(want, rev, timeout=600)
        bad = [e for e in history.of("decision") if e.decision in ("failed", "retrying")]
        assert not bad, bad[:3]
        sim.set_latency(0)
        await rig.verify(want, rev, inv.Expect(fault="fault.injected"), record_property)
