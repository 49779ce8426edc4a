"""The plugins end to end: the embedded store through the orchestrator and the real
VppClient into the strict simulator."""

from __future__ import annotations

from datasync.plugins import KeyState

from .conftest import BD, IF, Agent, bd, loop, route, vrf


async def test_full_scenario_converges_and_a_second_resync_writes_nothing(agent: Agent) -> None:
    await agent.put(
        vrf(5),
        loop("loop0", "10.0.0.1/24", mtu=1500, phys_address="02:00:00:00:00:01"),
        loop("loop1", "10.1.0.1/24", vrf=5),
        loop("bvi0", "192.168.0.1/24"),
        bd("bd1", "loop0", bvi="bvi0", flood=True, learn=True),
        route("20.0.0.0/8", gw="10.0.0.2", iface="loop0"),
        route("30.0.0.0/8", gw="10.1.0.2", iface="loop1", vrf=5),
    )
    await agent.orch.start()
    await agent.settle()
    for status in agent.plugins.states:
        assert status.state is KeyState.CONFIGURED, status
    tagged = agent.tagged()
    assert set(tagged) == {"loop0", "loop1", "bvi0"}
    assert tagged["loop0"]["addresses"] == ["10.0.0.1/24"]
    assert tagged["loop0"]["mtu"][0] == 1500
    assert tagged["loop0"]["mac"] == "02:00:00:00:00:01"
    assert tagged["loop1"]["vrf"]["ip4"] == 5
    assert tagged["loop0"]["admin_up"]
    assert agent.violations() == 0
    before = agent.writes()
    agent.orch.request_resync("test: again")
    await agent.settle()
    await agent.orch.wait_in_sync(5)
    assert agent.writes() == before
    # delete: routes and members go first (strict mode counts any dangling reference)
    await agent.delete(IF + "loop0", IF + "loop1", BD + "bd1")
    await agent.settle()
    assert set(agent.tagged()) == {"bvi0"}
    assert agent.violations() == 0
