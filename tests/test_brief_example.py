"""The brief's example workflow, executable: the real VPP plugins against the strict
VPP simulator.

Interfaces and bridge domains are configured; a resync starts; the interface plugin
finds an interface that must be deleted and announces it on IDX; the bridge-domain
plugin detaches it and calls done(); only then is the interface deleted. The strict
simulator counts a delete of an interface that is still a member as a violation; a
negative control shows that it does.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from datasync.api import Op
from datasync.resync import RoundFinished, RoundStarted, SouthboundStateChanged
from datasync.transport.local import LocalStore
from datasync.vpp.sim import Simulator
from tests.plugins.conftest import Agent, bd, loop, running_agent
from tests.vpp.helpers import eventually


@pytest.fixture
async def store() -> AsyncIterator[LocalStore]:
    s = LocalStore()
    yield s
    await s.close()


async def _seed_stale(agent: Agent) -> int:
    """VPP as a previous run left it: loop0 and stale0 in bd1 (tagged, so the agent's)."""
    c = agent.client
    bd_id = (await c.call("bridge_domain_add_del_v2", is_add=True, bd_id=0xFFFFFFFF, bd_tag="bd1",
                          flood=True, forward=True, learn=True)).bd_id  # fmt: skip
    stale = 0
    for name in ("loop0", "stale0"):
        index = (await c.call("create_loopback")).sw_if_index
        await c.call("sw_interface_tag_add_del", is_add=True, sw_if_index=index, tag=name)
        await c.call("sw_interface_set_l2_bridge", rx_sw_if_index=index, bd_id=bd_id, enable=True)
        stale = index
    return int(stale)


@pytest.mark.parametrize("parallel", [True, False])
async def test_detach_happens_before_delete(
    store: LocalStore, sim: Simulator, tmp_path: Path, parallel: bool
) -> None:
    await store.txn(dict([loop("loop0", enabled=False), bd("bd1", "loop0")]))
    async with running_agent(store, sim, tmp_path, parallel=parallel) as agent:
        stale = await _seed_stale(agent)
        order: list[str] = []  # what the bridge-domain plugin saw, and when VPP lost stale0
        sub = agent.plugins.ctx.interfaces.watch("test")

        async def watch() -> None:
            async for ev in sub:
                if ev.op is Op.DELETE:
                    bd1 = next(b for b in sim.dump_state()["bridge_domains"] if b["tag"] == "bd1")
                    order.append(f"announce {ev.name}, member: {str(ev.index) in bd1['members']}")
                ev.done()

        task = asyncio.ensure_future(watch())
        try:
            await agent.orch.start()
            await agent.settle()
        finally:
            sub.close()
            await task
        # announced while still a member; deleted only after the detach (strict: 0 violations)
        assert order == ["announce stale0, member: True"]
        assert "stale0" not in agent.tagged()
        assert all(i["sw_if_index"] != stale for i in sim.dump_state()["interfaces"])
        assert agent.violations() == 0
        bd1 = next(b for b in sim.dump_state()["bridge_domains"] if b["tag"] == "bd1")
        assert set(bd1["members"]) == {str(agent.tagged()["loop0"]["sw_if_index"])}


async def test_strict_simulator_counts_delete_before_detach(
    store: LocalStore, sim: Simulator, tmp_path: Path
) -> None:
    async with running_agent(store, sim, tmp_path) as agent:
        stale = await _seed_stale(agent)
        await agent.client.call("delete_loopback", sw_if_index=stale)
        assert agent.violations() == 1


async def test_a_reconnect_without_state_loss_resyncs_with_zero_writes(
    store: LocalStore, sim: Simulator, tmp_path: Path
) -> None:
    """VPP drops the API connection but keeps its state. The reconnect starts a round
    (calls may have been lost with the connection), which reads VPP back, finds it as the
    store wants it, and writes nothing; the agent is not in sync while VPP is away."""
    await store.txn(dict([loop("loop0", "10.0.0.1/24"), bd("bd1", "loop0")]))
    async with running_agent(store, sim, tmp_path) as agent:
        rounds: list[Any] = []
        seen: list[tuple[bool, bool]] = []
        agent.orch.add_listener(
            lambda ev: rounds.append(ev) if isinstance(ev, RoundStarted | RoundFinished) else None
        )
        agent.orch.add_listener(
            lambda ev: (
                seen.append((ev.up, agent.orch.status().in_sync))
                if isinstance(ev, SouthboundStateChanged)
                else None
            )
        )
        await agent.orch.start()
        await agent.settle()
        sim.reset_counters()
        assert sim.drop_connections() == 1
        await eventually(
            lambda: any(isinstance(e, RoundFinished) and e.ok and e.round >= 2 for e in rounds), 10
        )
        reasons = [r for e in rounds if isinstance(e, RoundStarted) for r in e.reasons]
        assert "VPP reconnected after a lost connection" in reasons
        assert seen == [(False, False), (True, False)]
        await agent.orch.wait_in_sync(10)
        assert agent.writes() == 0, sim.counters()["writes"]


async def test_a_vpp_restart_restores_the_store_state(
    store: LocalStore, sim: Simulator, tmp_path: Path
) -> None:
    await store.txn(
        dict([loop("loop0", "10.0.0.1/24"), loop("loop1"), bd("bd1", "loop0", "loop1")])
    )
    async with running_agent(store, sim, tmp_path) as agent:
        await agent.orch.start()
        await agent.settle()
        rounds = agent.orch.status().rounds
        sim.restart()
        await eventually(lambda: agent.orch.status().rounds > rounds, 10)
        await agent.settle()
        tagged = agent.tagged()
        assert set(tagged) == {"loop0", "loop1"}
        assert tagged["loop0"]["addresses"] == ["10.0.0.1/24"]
        bd1 = next(b for b in sim.dump_state()["bridge_domains"] if b["tag"] == "bd1")
        assert {int(m) for m in bd1["members"]} == {i["sw_if_index"] for i in tagged.values()}
        assert agent.violations() == 0


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
    assert "VPP holds what the store wants: True" in lines
    # the one key VPP refuses stays FAILED, the malformed one INVALID, and nothing else
    assert re.search(
        r"^    FAILED +\S+/interfaces/refused0: add address 10\.99\.0\.1/24", out.stdout, re.M
    )
    assert re.search(r"^    INVALID +\S+/interfaces/broken: field mtu", out.stdout, re.M)
    # the round the restart started: the client's fault report, not a plugin's error
    started = [line for line in lines if line.startswith("  [round ") and "] started: " in line]
    assert any("VPP restarted (vpe_pid " in line for line in started), out.stdout
    assert any(line.startswith("  [vpp] down (VPP disconnected") for line in lines), out.stdout
