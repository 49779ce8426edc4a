"""The brief's example workflow, executable against the strict VPP simulator.

Interfaces and bridge domains are configured; a resync starts; the interface plugin
finds an interface that must be deleted and announces it on IDX; the bridge-domain
plugin detaches it and calls done(); only then is the interface deleted. The strict
simulator counts a delete of an interface that is still a member as a violation; a
negative control shows that it does.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from datasync.agent.demo import (
    BD_PREFIX,
    IF_PREFIX,
    BridgeDomainPlugin,
    DataplaneView,
    InterfacePlugin,
    VppDataplane,
    _bd,
    _iface,
    resync_on_vpp_fault,
    simulator_view,
)
from datasync.idx import NameToIndex
from datasync.resync import (
    Orchestrator,
    ResyncConfig,
    RoundFinished,
    RoundStarted,
    SouthboundStateChanged,
)
from datasync.transport.local import LocalStore
from datasync.vpp.client import VppClient
from datasync.vpp.sim import Simulator
from tests.vpp.helpers import eventually

IF, BD = IF_PREFIX.format(label="t"), BD_PREFIX.format(label="t")


def _view(interfaces: Sequence[str], bridge_domains: Mapping[str, Sequence[str]]) -> DataplaneView:
    """Enabled interfaces and bridge domains with their members, as the simulator shows them."""
    return DataplaneView(
        dict.fromkeys(interfaces, True), {bd: frozenset(m) for bd, m in bridge_domains.items()}
    )


def _indexes(sim: Simulator) -> dict[str, int]:
    """sw_if_index by tag, from the simulator's own state."""
    return {i["tag"]: i["sw_if_index"] for i in sim.dump_state()["interfaces"] if i["tag"]}


@pytest.fixture
async def vpp() -> AsyncIterator[tuple[Simulator, VppClient]]:
    """A strict simulator and a client connected to it over the socket transport."""
    sock_dir = tempfile.mkdtemp(prefix="ds-")  # AF_UNIX paths are short; tmp_path may not be
    sim = Simulator(strict=True, seed=1)
    await sim.start(os.path.join(sock_dir, "api.sock"))
    assert sim.path is not None
    client = VppClient(sim.path, timeout=2, probe_interval=0.2, probe_timeout=1.0, backoff_max=0.5)
    try:
        await client.connect()
        yield sim, client
    finally:
        await client.close()
        await sim.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


async def _seed(dp: VppDataplane, bridge_domains: Mapping[str, Sequence[str]]) -> None:
    """VPP as a previous run left it: enabled loopbacks in tagged bridge domains."""
    for bd, members in bridge_domains.items():
        bd_id = await dp.create_bridge_domain(bd)
        for name in members:
            await dp.add_member(bd_id, await dp.create_loopback(name, True))


@dataclass
class Agent:
    orch: Orchestrator
    idx: NameToIndex
    interfaces: InterfacePlugin
    rounds: list[RoundStarted | RoundFinished] = field(default_factory=list)


@asynccontextmanager
async def running_agent(
    store: LocalStore, client: VppClient, *, bridge_domains: bool = True, **config: Any
) -> AsyncIterator[Agent]:
    """The demo's plugins on ``store`` and ``client``, started and in sync."""
    config.setdefault("resync_timeout", 5)
    config.setdefault("backoff_initial", 0.05)
    orch = Orchestrator([store], ResyncConfig(**config))
    client.on_fault = resync_on_vpp_fault(orch)
    dp, idx = VppDataplane(client), NameToIndex("interfaces")
    agent = Agent(orch, idx, InterfacePlugin(dp, idx, "t"))
    orch.add_listener(
        lambda ev: agent.rounds.append(ev) if isinstance(ev, RoundStarted | RoundFinished) else None
    )
    bds = BridgeDomainPlugin(dp, idx, "t") if bridge_domains else None
    try:
        if bds is not None:
            orch.add_plugin(bds)
        orch.add_plugin(agent.interfaces)
        await orch.start()
        await orch.wait_in_sync(10)
        yield agent
    finally:
        if bds is not None:
            await bds.close()
        await orch.stop()


@pytest.mark.parametrize("parallel", [True, False])
async def test_detach_happens_before_delete(
    vpp: tuple[Simulator, VppClient], parallel: bool
) -> None:
    sim, client = vpp
    await _seed(VppDataplane(client), {"bd1": ["loop0", "old0"]})
    sim.reset_counters()
    store = LocalStore()
    await store.txn({IF + "loop0": _iface("loop0"), BD + "bd1": _bd("bd1", ["loop0"])})
    try:
        async with running_agent(store, client, parallel=parallel) as agent:
            counters = sim.counters()
            assert counters["violations"] == 0, sim.state.violations
            # old0 was detached and deleted (not merely left alone)
            assert counters["writes"]["bd_member"]["delete"] == 1
            assert counters["writes"]["interface"]["delete"] == 1
            assert simulator_view(sim) == _view(["loop0"], {"bd1": ["loop0"]})
            assert agent.idx.lookup("old0") is None
            assert {e.name: e.index for e in agent.idx} == _indexes(sim)
    finally:
        await store.close()


async def test_strict_simulator_counts_delete_before_detach(
    vpp: tuple[Simulator, VppClient],
) -> None:
    """The negative control: without the bridge-domain plugin nobody detaches old0 when
    its delete is announced on IDX, and the strict simulator counts the violation."""
    sim, client = vpp
    await _seed(VppDataplane(client), {"bd1": ["loop0", "old0"]})
    old0 = _indexes(sim)["old0"]
    store = LocalStore()
    await store.txn({IF + "loop0": _iface("loop0")})
    try:
        async with running_agent(store, client, bridge_domains=False):
            assert sim.counters()["violations"] == 1
            assert f"({old0}) deleted while in bridge domain" in sim.state.violations[0]
    finally:
        await store.close()


async def test_vpp_restart_makes_the_plugins_restore_the_store_state(
    vpp: tuple[Simulator, VppClient],
) -> None:
    sim, client = vpp
    store = LocalStore()
    await store.txn(
        {IF + "loop0": _iface("loop0"), IF + "loop1": _iface("loop1"),
         BD + "bd1": _bd("bd1", ["loop0", "loop1"])}
    )  # fmt: skip
    wanted = _view(["loop0", "loop1"], {"bd1": ["loop0", "loop1"]})
    try:
        async with running_agent(store, client) as agent:
            assert simulator_view(sim) == wanted
            old_pid = sim.state.vpe_pid
            new_pid = sim.restart()
            assert simulator_view(sim) == _view([], {})
            # nothing but the client's on_fault wiring tells the orchestrator
            await eventually(lambda: client.connected and simulator_view(sim) == wanted, 10)
            await agent.orch.wait_in_sync(10)
            reasons = [r for ev in agent.rounds if isinstance(ev, RoundStarted) for r in ev.reasons]
            assert f"VPP restarted (vpe_pid {old_pid} -> {new_pid})" in reasons
            assert sim.counters()["violations"] == 0, sim.state.violations
            # IDX carries the new sw_if_indexes
            assert {e.name: e.index for e in agent.idx} == _indexes(sim)
    finally:
        await store.close()


async def test_a_reconnect_without_state_loss_resyncs_with_zero_writes(
    vpp: tuple[Simulator, VppClient],
) -> None:
    """FAULTS F10: VPP drops the API connection but keeps its state. The reconnect starts a
    round (calls may have been lost with the connection), which reads VPP back, finds it as
    the store wants it, and writes nothing."""
    sim, client = vpp
    store = LocalStore()
    await store.txn({IF + "loop0": _iface("loop0"), BD + "bd1": _bd("bd1", ["loop0"])})
    try:
        async with running_agent(store, client) as agent:
            seen: list[tuple[bool, bool]] = []  # (VPP up, agent in sync) at each report
            agent.orch.add_listener(
                lambda ev: (
                    seen.append((ev.up, agent.orch.status().in_sync))
                    if isinstance(ev, SouthboundStateChanged)
                    else None
                )
            )
            sim.reset_counters()
            assert sim.drop_connections() == 1
            await eventually(
                lambda: any(
                    isinstance(ev, RoundFinished) and ev.ok and ev.round >= 2 for ev in agent.rounds
                ),
                10,
            )
            reasons = [r for ev in agent.rounds if isinstance(ev, RoundStarted) for r in ev.reasons]
            assert "VPP reconnected after a lost connection" in reasons
            # not in sync while VPP was away, nor when it came back (a round was pending)
            assert seen == [(False, False), (True, False)]
            await agent.orch.wait_in_sync(10)
            assert agent.orch.status().southbound["vpp"].up
            assert sim.counters()["writes"] == {}, sim.counters()["writes"]
            assert simulator_view(sim) == _view(["loop0"], {"bd1": ["loop0"]})
    finally:
        await store.close()


async def test_a_vpp_error_fails_the_round_and_the_retry_applies_it(
    vpp: tuple[Simulator, VppClient],
) -> None:
    sim, client = vpp
    sim.inject_error("create_loopback", -1, count=1)
    store = LocalStore()
    await store.txn({IF + "loop0": _iface("loop0"), BD + "bd1": _bd("bd1", ["loop0"])})
    try:
        async with running_agent(store, client) as agent:
            finished = [ev for ev in agent.rounds if isinstance(ev, RoundFinished)]
            assert not finished[0].ok
            assert "create_loopback" in finished[0].errors["interfaces"]
            assert finished[-1].ok
            assert simulator_view(sim) == _view(["loop0"], {"bd1": ["loop0"]})
    finally:
        await store.close()


async def test_a_pending_member_is_added_once_its_interface_exists(
    vpp: tuple[Simulator, VppClient],
) -> None:
    sim, client = vpp
    store = LocalStore()
    await store.txn({IF + "loop0": _iface("loop0"), BD + "bd1": _bd("bd1", ["loop0", "later"])})
    try:
        async with running_agent(store, client):
            assert simulator_view(sim) == _view(["loop0"], {"bd1": ["loop0"]})
            await store.put(IF + "later", _iface("later"))
            wanted = _view(["loop0", "later"], {"bd1": ["loop0", "later"]})
            await eventually(lambda: simulator_view(sim) == wanted, 10)
            assert sim.counters()["violations"] == 0
    finally:
        await store.close()


async def test_an_invalid_value_leaves_what_vpp_has_alone(
    vpp: tuple[Simulator, VppClient],
) -> None:
    sim, client = vpp
    await _seed(VppDataplane(client), {"bd1": ["loop0"]})
    store = LocalStore()
    await store.txn(
        {IF + "loop0": b'{"name": "loop0", "type": "TAP"}', BD + "bd1": b'{"interfaces": 3}'}
    )
    try:
        async with running_agent(store, client) as agent:
            assert simulator_view(sim) == _view(["loop0"], {"bd1": ["loop0"]})
            assert "SOFTWARE_LOOPBACK only" in agent.interfaces.invalid[IF + "loop0"]
    finally:
        await store.close()


def test_demo_command_runs_and_reports_in_sync(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "datasync.agent.cli", "demo", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert re.search(
        r"^status: IN_SYNC, in_sync=True, rounds=\d+, failed_rounds=0$", out.stdout, re.M
    )
    assert "  dangling-reference violations: 0" in lines
    assert "  bridge domains: bd1 (bd_id 1): loop0, loop2" in lines
    assert "VPP holds what the store wants: True" in lines
    # the round the restart started: the client's fault report, not a plugin's error
    started = [line for line in lines if line.startswith("  [round ") and "] started: " in line]
    assert any("VPP restarted (vpe_pid " in line for line in started), out.stdout
    assert any("VPP reconnected after a restart" in line for line in started), out.stdout
    # while VPP was away the agent said it was not in sync
    assert any(line.startswith("  [vpp] down (VPP disconnected") for line in lines), out.stdout


def test_values_are_validated_with_the_key_named() -> None:
    from datasync.agent.demo import (
        MAX_VALUE_BYTES,
        bridge_domain_members,
        interface_enabled,
        parse_json,
    )
    from datasync.errors import InvalidValueError

    assert parse_json("/k", b'{"name": "a"}') == {"name": "a"}
    with pytest.raises(InvalidValueError, match=r"'/k'.*not valid JSON"):
        parse_json("/k", b"{bad")
    with pytest.raises(InvalidValueError, match=r"'/k'.*expected a JSON object"):
        parse_json("/k", b"[1]")
    with pytest.raises(InvalidValueError, match=r"'/k'.*exceeds"):
        parse_json("/k", b'{"x": "' + b"a" * MAX_VALUE_BYTES + b'"}')
    assert interface_enabled("/i/a", _iface("a")) is True
    with pytest.raises(InvalidValueError, match=r"'/i/a'.*enabled must be true or false"):
        interface_enabled("/i/a", b'{"enabled": "yes"}')
    with pytest.raises(InvalidValueError, match=r"VPP tag"):
        interface_enabled("/i/" + "x" * 64, b"{}")
    assert bridge_domain_members("/b/bd", _bd("bd", ["a", "b"])) == {"a", "b"}
    with pytest.raises(InvalidValueError, match=r"'/b/bd'.*list of objects with a name"):
        bridge_domain_members("/b/bd", b'{"interfaces": [{"nom": "a"}]}')


async def test_what_is_not_the_agents_is_left_alone(vpp: tuple[Simulator, VppClient]) -> None:
    """A tagged tap (someone else's: vpp-agent tags everything it makes) is not taken for
    one of the demo's loopbacks, and a nested key, whose name could not be a VPP tag, is an
    invalid value: neither fails a round."""
    sim, client = vpp
    tap = int((await client.call("tap_create_v3", id=0xFFFFFFFF, tag="tap0")).sw_if_index)
    nested = IF + "a/b"
    store = LocalStore()
    await store.txn({IF + "loop0": _iface("loop0"), nested: _iface("b")})
    try:
        async with running_agent(store, client) as agent:
            assert all(ev.ok for ev in agent.rounds if isinstance(ev, RoundFinished))
            assert _indexes(sim) == {"tap0": tap, "loop0": agent.idx.lookup("loop0").index}  # type: ignore[union-attr]
            assert "nested keys" in agent.interfaces.invalid[nested]
    finally:
        await store.close()
