"""The plugins end to end: the embedded store through the orchestrator and the real
VppClient (socket and shm) into the strict simulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasync.plugins import KeyState
from datasync.transport.local import LocalStore
from datasync.vpp.sim import Simulator
from tests.vpp.helpers import eventually

from .conftest import BD, IF, Agent, bd, js, loop, route, running_agent, vrf


def routes_of(agent: Agent, table: int = 0) -> dict[str, list[dict[str, object]]]:
    """Routes the simulator holds in an IPv4 table: prefix -> paths."""
    for t in agent.sim.dump_state()["tables"]:
        if t["table_id"] == table and not t["is_ip6"]:
            return {r["prefix"]: r["paths"] for r in t["routes"]}
    return {}


SCENARIO = [
    vrf(5),
    loop("loop0", "10.0.0.1/24", mtu=1500, phys_address="02:00:00:00:00:01"),
    loop("loop1", "10.1.0.1/24", vrf=5),
    loop("bvi0", "192.168.0.1/24"),
    (IF + "tap0", js({"name": "tap0", "type": "TAP", "enabled": True,
                      "ip_addresses": ["10.2.0.1/24"], "tap": {"host_if_name": "ds-tap0"}})),
    (IF + "memif0", js({"name": "memif0", "type": "MEMIF", "enabled": True,
                        "memif": {"id": 7, "socket_filename": "/run/ds/memif.sock"}})),
    bd("bd1", "loop0", "memif0", bvi="bvi0", flood=True, learn=True),
    route("20.0.0.0/8", gw="10.0.0.2", iface="loop0"),
    route("20.0.0.0/8", gw="10.2.0.2", iface="tap0"),
    route("30.0.0.0/8", gw="10.1.0.2", iface="loop1", vrf=5),
]  # fmt: skip


@pytest.mark.parametrize("transport", ["socket", "shm"], indirect=True)
async def test_scenario_converges_and_a_second_resync_writes_nothing(agent: Agent) -> None:
    await agent.put(*SCENARIO)
    await agent.orch.start()
    await agent.settle()
    assert [s for s in agent.plugins.states if s.state is not KeyState.CONFIGURED] == []
    assert len(agent.plugins.states.plugins()["routes"]) == 3
    tagged = agent.tagged()
    assert set(tagged) == {"loop0", "loop1", "bvi0", "tap0", "memif0"}
    assert tagged["loop0"]["addresses"] == ["10.0.0.1/24"]
    assert tagged["loop0"]["mtu"][0] == 1500
    assert tagged["loop0"]["mac"] == "02:00:00:00:00:01"
    assert tagged["loop1"]["vrf"]["ip4"] == 5
    assert all(i["admin_up"] for i in tagged.values())
    assert tagged["tap0"]["kind"] == "tap" and tagged["memif0"]["kind"] == "memif"
    bd1 = next(b for b in agent.sim.dump_state()["bridge_domains"] if b["tag"] == "bd1")
    members = {tagged[n]["sw_if_index"] for n in ("loop0", "memif0", "bvi0")}
    assert {int(k) for k in bd1["members"]} == members
    assert bd1["bvi"] == tagged["bvi0"]["sw_if_index"]
    assert len(routes_of(agent)["20.0.0.0/8"]) == 2  # two keys: two paths of one entry
    assert "30.0.0.0/8" in routes_of(agent, 5)
    assert agent.violations() == 0

    before = agent.writes()
    agent.orch.request_resync("test: nothing changed")
    await agent.settle()
    await agent.orch.wait_in_sync(5)
    assert agent.writes() == before, "a resync with nothing changed must not write"


async def test_delete_detaches_dependents_first(agent: Agent) -> None:
    """The brief's workflow: deleting an interface that is a bridge-domain member and a
    route's outgoing interface removes the member and the route first (strict mode counts
    any dangling reference)."""
    await agent.put(*SCENARIO)
    await agent.orch.start()
    await agent.settle()
    await agent.delete(IF + "loop0", IF + "memif0")
    await agent.settle()
    assert set(agent.tagged()) == {"loop1", "bvi0", "tap0"}
    assert [p["nh"] for p in routes_of(agent)["20.0.0.0/8"]] == ["10.2.0.2"]
    assert agent.state(BD + "bd1") is KeyState.PENDING
    assert "loop0" in agent.reason(BD + "bd1")
    assert agent.state(route("20.0.0.0/8", gw="10.0.0.2", iface="loop0")[0]) is KeyState.PENDING
    assert agent.violations() == 0
    # and the VRF: its interface and route are unbound and removed before the table goes
    await agent.delete(vrf(5)[0])
    await agent.settle()
    assert agent.tagged()["loop1"]["vrf"]["ip4"] == 0
    assert routes_of(agent, 5) == {}
    assert agent.state(IF + "loop1") is KeyState.PENDING
    assert agent.violations() == 0


async def test_negative_control_strict_mode_counts_a_delete_before_detach(agent: Agent) -> None:
    await agent.put(loop("loop0"), bd("bd1", "loop0"))
    await agent.orch.start()
    await agent.settle()
    await agent.client.call("delete_loopback", sw_if_index=agent.tagged()["loop0"]["sw_if_index"])
    assert agent.violations() == 1


async def test_pending_until_the_dependency_arrives_in_a_later_change(agent: Agent) -> None:
    member_key, _ = bd("bd1", "loop9")
    route_key, _ = route("40.0.0.0/8", gw="10.9.0.2", iface="loop9", vrf=7)
    if_key, _ = loop("loop9", "10.9.0.1/24", vrf=7)
    await agent.put(bd("bd1", "loop9"), route("40.0.0.0/8", gw="10.9.0.2", iface="loop9", vrf=7),
                    loop("loop9", "10.9.0.1/24", vrf=7))  # fmt: skip
    await agent.orch.start()
    await agent.settle()
    assert agent.state(if_key) is KeyState.PENDING and "IPV4/7" in agent.reason(if_key)
    assert agent.state(member_key) is KeyState.PENDING and "loop9" in agent.reason(member_key)
    assert agent.state(route_key) is KeyState.PENDING
    assert "loop9" not in agent.tagged()
    assert agent.orch.status().failed_rounds == 0
    await agent.put(vrf(7))  # the table arrives: the interface, then its member and route
    await agent.settle()
    for key in (if_key, member_key, route_key):
        await agent.wait_state(key, KeyState.CONFIGURED)
    assert agent.tagged()["loop9"]["vrf"]["ip4"] == 7
    assert "40.0.0.0/8" in routes_of(agent, 7)
    assert agent.violations() == 0


async def test_objects_the_agent_did_not_make_are_never_touched(agent: Agent) -> None:
    c = agent.client
    hand = (await c.call("create_loopback")).sw_if_index  # untagged: an operator's
    await c.call(
        "sw_interface_add_del_address", sw_if_index=hand, is_add=True, prefix="10.7.0.1/24"
    )
    await c.call("ip_table_add_del", is_add=True, table={"table_id": 9, "is_ip6": False})
    nh = {"address": {"ip4": bytes([10, 7, 0, 2])}}
    path = {"sw_if_index": hand, "nh": nh, "weight": 1}
    r = {"table_id": 0, "prefix": "50.0.0.0/8", "n_paths": 1, "paths": [path]}
    await c.call("ip_route_add_del", is_add=True, is_multipath=True, route=r)
    await c.call("bridge_domain_add_del_v2", is_add=True, bd_id=77)  # no tag
    await agent.put(loop("loop0"))
    await agent.orch.start()
    await agent.settle()
    state = agent.sim.dump_state()
    assert any(i["sw_if_index"] == hand for i in state["interfaces"])
    assert "50.0.0.0/8" in routes_of(agent)
    assert any(t["table_id"] == 9 for t in state["tables"])
    assert any(b["bd_id"] == 77 for b in state["bridge_domains"])


async def test_vpp_restart_restores_everything(agent: Agent) -> None:
    await agent.put(*SCENARIO)
    await agent.orch.start()
    await agent.settle()
    wanted = {n: (i["addresses"], i["admin_up"]) for n, i in agent.tagged().items()}
    rounds = agent.orch.status().rounds
    agent.sim.restart()
    await agent.client.wait_connected(10)

    async def restored() -> bool:
        return {n: (i["addresses"], i["admin_up"]) for n, i in agent.tagged().items()} == wanted

    await eventually(lambda: agent.orch.status().rounds > rounds, limit=10)
    await agent.settle()
    assert {n: (i["addresses"], i["admin_up"]) for n, i in agent.tagged().items()} == wanted
    assert len(routes_of(agent)["20.0.0.0/8"]) == 2
    assert "30.0.0.0/8" in routes_of(agent, 5)
    assert [s for s in agent.plugins.states if s.state is not KeyState.CONFIGURED] == []
    assert agent.violations() == 0


async def test_an_orphan_route_is_deleted_after_an_agent_restart(
    store: LocalStore, sim: Simulator, tmp_path: Path
) -> None:
    """The ledger remembers the routes and tables the agent made (VPP has no tag on them):
    those deleted from the store while the agent was down go at the next agent's first
    resync, and nothing else is written."""
    key, value = route("60.0.0.0/8", gw="10.0.0.9", iface="loop0", vrf=3)
    async with running_agent(store, sim, tmp_path) as first:
        await first.put(loop("loop0", "10.0.0.1/24", vrf=3), vrf(3), (key, value))
        await first.orch.start()
        await first.settle()
        assert "60.0.0.0/8" in routes_of(first, 3)
    await store.txn({}, [key, vrf(3)[0]])
    await store.put(*loop("loop0", "10.0.0.1/24"))
    async with running_agent(store, sim, tmp_path) as second:
        await second.orch.start()
        await second.settle()
        assert routes_of(second, 3) == {}
        assert not any(t["table_id"] == 3 for t in sim.dump_state()["tables"])
        assert second.tagged()["loop0"]["vrf"]["ip4"] == 0
        assert second.violations() == 0
        before = second.writes()
    async with running_agent(store, sim, tmp_path) as third:  # a restart with no change
        await third.orch.start()
        await third.settle()
        assert third.writes() == before


async def test_downstream_reapply_repairs_drift_without_reading_the_store(agent: Agent) -> None:
    """Drift behind the agent's back (an operator's vppctl): a downstream resync puts back
    what the agent holds, and touches nothing else."""
    await agent.put(*SCENARIO)
    await agent.orch.start()
    await agent.settle()
    index = {name: i["sw_if_index"] for name, i in agent.tagged().items()}
    agent.sim.drift("delete_interface", sw_if_index=index["loop1"])
    agent.sim.drift("del_address", sw_if_index=index["loop0"], prefix="10.0.0.1/24")
    agent.sim.drift("add_address", sw_if_index=index["bvi0"], prefix="172.16.0.1/24")
    await agent.plugins.reapply()
    tagged = agent.tagged()
    assert "loop1" in tagged and tagged["loop1"]["vrf"]["ip4"] == 5
    assert tagged["loop0"]["addresses"] == ["10.0.0.1/24"]
    assert tagged["bvi0"]["addresses"] == ["192.168.0.1/24"]
    assert "30.0.0.0/8" in routes_of(agent, 5)
    before = agent.writes()
    await agent.plugins.reapply()
    assert agent.writes() == before


async def test_plan_lists_exactly_what_the_downstream_resync_then_does(agent: Agent) -> None:
    await agent.put(*SCENARIO)
    await agent.orch.start()
    await agent.settle()
    assert await agent.plugins.plan() == []
    index = {name: i["sw_if_index"] for name, i in agent.tagged().items()}
    agent.sim.drift("delete_interface", sw_if_index=index["loop1"])
    agent.sim.drift("add_address", sw_if_index=index["bvi0"], prefix="172.16.0.1/24")
    writes = agent.writes()
    counts = dict(agent.sim.message_counts)
    plan = await agent.plugins.plan()
    assert agent.writes() == writes, "a plan writes nothing"
    planned: dict[str, int] = {}
    for call in plan:
        planned[call.msg] = planned.get(call.msg, 0) + 1
    assert planned["create_loopback_instance"] == 1
    assert planned["sw_interface_add_del_address"] == 2  # loop1's back, bvi0's extra out
    await agent.plugins.reapply()
    done = {
        msg: n - counts.get(msg, 0)
        for msg, n in agent.sim.message_counts.items()
        if n != counts.get(msg, 0)
        and not msg.endswith("_dump")
        and msg not in ("control_ping", "sw_interface_get_table")
    }
    assert done == planned
