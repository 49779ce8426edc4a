"""docs/faults.md rows through the real VPP plugins into the strict simulator, injected with
agent failpoints: F12 (a slow plugin past the resync timeout) and F13 (a plugin raises,
in a resync's apply and in a change's)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from datasync.plugins import KeyState
from datasync.resync import PluginState, PluginStateChanged, RoundFinished
from datasync.testing import failpoints as fp
from datasync.transport.local import LocalStore
from datasync.vpp.sim import Simulator
from tests.orchestrator_helpers import tasks_left
from tests.plugins.conftest import Agent, bd, loop, route, running_agent

WAIT = 20.0  # safety net against hangs, not a timing goal


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    s = LocalStore(tmp_path / "store.db", poll_interval=0.02)
    yield s
    await s.close()


CONFIG = [
    loop("loop0", "10.0.0.1/24"),
    loop("loop1", "10.1.0.1/24"),
    loop("bvi0", "192.168.1.1/24"),
    bd("bd1", "loop1", bvi="bvi0"),
    route("20.0.0.0/8", "10.0.0.2", "loop0"),
]


class Events:
    """Round and plugin-state events, with what the agent and VPP looked like at each."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.rounds: list[tuple[RoundFinished, bool, set[str]]] = []
        self.states: list[PluginStateChanged] = []
        agent.orch.add_listener(self._add)

    def _add(self, ev: object) -> None:
        if isinstance(ev, RoundFinished):
            in_sync = self.agent.orch.status().in_sync
            self.rounds.append((ev, in_sync, set(self.agent.tagged())))
        elif isinstance(ev, PluginStateChanged):
            self.states.append(ev)


def routes_of(sim: Simulator) -> set[str]:
    return {r["prefix"] for t in sim.dump_state()["tables"] for r in t["routes"]}


def assert_vpp_holds(agent: Agent, interfaces: set[str]) -> None:
    assert set(agent.tagged()) == interfaces
    assert agent.violations() == 0
    bad = [
        (s.key, s.state, s.reason)
        for s in agent.plugins.states
        if s.state is not KeyState.CONFIGURED
    ]
    assert not bad, bad


async def test_f12_slow_plugin_times_out_others_finish_buffered_changes_applied(
    store: LocalStore, sim: Simulator, tmp_path: Path
) -> None:
    """F12: the routes plugin's resync sleeps past resync_timeout: it fails that round
    (timed out) and is retried after a backoff; the interfaces and bridge domains are in
    VPP meanwhile; the agent is not in sync until routes reconciled; a change made while
    the round runs is buffered and applied afterwards; no task is left behind."""
    await store.txn(dict(CONFIG))
    fp.enable("plugin.routes.resync", "1*sleep(1500)")  # 3x the timeout below
    tasks_before = set(asyncio.all_tasks())
    async with running_agent(store, sim, tmp_path, resync_timeout=0.5) as agent:
        events = Events(agent)
        await agent.orch.start()
        await fp.wait_hit("plugin.routes.resync")
        agent.revision = await store.put(*loop("loop2", "10.2.0.1/24"))  # buffered
        await agent.settle(WAIT)
        first, in_sync_then, vpp_then = events.rounds[0]
        assert not first.ok and "routes" in first.errors
        assert "did not finish its resync within 0.5 s" in first.errors["routes"]
        assert not in_sync_then  # never "in sync" while routes had not reconciled
        assert {"loop0", "loop1", "bvi0"} <= vpp_then  # the others finished
        assert events.rounds[-1][0].ok and events.rounds[-1][1]
        assert any(s.plugin == "routes" and s.new is PluginState.FAILED for s in events.states)
        assert agent.orch.status().failed_rounds == 1
        assert_vpp_holds(agent, {"loop0", "loop1", "bvi0", "loop2"})
        assert "20.0.0.0/8" in routes_of(sim)
    leaked = await tasks_left(tasks_before)
    assert not leaked, leaked


async def test_f13_plugin_raises_in_resync_and_in_change_the_agent_survives(
    store: LocalStore, sim: Simulator, tmp_path: Path
) -> None:
    """F13: the bridge-domain plugin raises in two resyncs' apply, then the routes plugin in
    a change's apply: each is a failed round retried with backoff, nothing crashes, the
    other plugins converge, and in the end VPP holds everything with no violation."""
    await store.txn(dict(CONFIG))
    fp.enable("plugin.bridge-domains.apply", "2*raise(RuntimeError)")
    async with running_agent(store, sim, tmp_path) as agent:
        events = Events(agent)
        await agent.orch.start()
        agent.revision = store.revision
        await agent.settle(WAIT)
        assert [r.ok for r, _, _ in events.rounds] == [False, False, True]
        assert all("bridge-domains" in r.errors for r, _, _ in events.rounds[:2])
        assert {"loop0", "loop1", "bvi0"} <= events.rounds[0][2]  # interfaces went ahead
        assert fp.hits("plugin.bridge-domains.apply") == 2
        assert_vpp_holds(agent, {"loop0", "loop1", "bvi0"})

        fp.enable("plugin.routes.apply", "1*raise(RuntimeError)")
        new_route = route("21.0.0.0/8", "10.1.0.2", "loop1")
        agent.revision = await store.put(*new_route)
        await fp.wait_hit("plugin.routes.apply")
        await agent.settle(WAIT)
        assert agent.state(new_route[0]) is KeyState.CONFIGURED
        assert agent.orch.status().failed_rounds == 2  # a failed change is a fault report
        assert len(events.rounds) == 4 and events.rounds[-1][0].ok
        assert_vpp_holds(agent, {"loop0", "loop1", "bvi0"})
        assert {"20.0.0.0/8", "21.0.0.0/8"} <= routes_of(sim)
