"""Cases a review found (each failed before its fix): families sharing a VRF id, scoped
addresses, detaches that fail and are retried, TAPs without a host name, one next hop
spelled two ways, one interface in two bridge domains, memif id clashes in one
transaction, objects VPP had before a key asked for them."""

from __future__ import annotations

import pytest

from datasync.plugins import KeyState, VppPlugins
from datasync.vpp.client import VppClient
from datasync.vpp.retvals import RETVAL_NAMES
from tests.vpp.helpers import eventually

from .conftest import BD, IF, ROUTE, VRF, Agent, bd, js, loop, route, vrf

RV = {name: value for value, name in RETVAL_NAMES.items()}


async def start(agent: Agent, *kvs: tuple[str, bytes]) -> None:
    await agent.put(*kvs)
    await agent.orch.start()
    await agent.settle()


def not_configured(agent: Agent) -> dict[str, tuple[KeyState, str]]:
    return {
        s.key: (s.state, s.reason)
        for s in agent.plugins.states
        if s.state is not KeyState.CONFIGURED
    }


async def test_ipv4_and_ipv6_tables_may_share_an_id(agent: Agent) -> None:
    await start(
        agent,
        vrf(5), vrf(5, "IPV6"),
        loop("loop1", "10.1.0.1/24", "2001:db8:1::1/64", vrf=5),
        route("30.0.0.0/8", gw="10.1.0.2", iface="loop1", vrf=5),
        route("2001:db8:9::/48", gw="2001:db8:1::2", iface="loop1", vrf=5),
    )  # fmt: skip
    assert not_configured(agent) == {}
    assert agent.orch.status().failed_rounds == 0
    assert agent.tagged()["loop1"]["vrf"] == {"ip4": 5, "ip6": 5}
    await agent.delete(vrf(5, "IPV6")[0])
    await agent.settle()
    assert agent.tagged()["loop1"]["vrf"] == {"ip4": 5, "ip6": 0}
    assert agent.violations() == 0


async def test_scoped_addresses_are_invalid(agent: Agent) -> None:
    await start(
        agent,
        loop("loop0", "10.0.0.1/24"),
        loop("loop1", "fe80::1%eth0/64"),
        (ROUTE + "if/loop0/vrf/0/dst/fe80::/64/", js({"dst_network": "fe80::%eth0/64",
                                                       "outgoing_interface": "loop0"})),
    )  # fmt: skip
    bad = not_configured(agent)
    assert bad[IF + "loop1"][0] is KeyState.INVALID and "scoped" in bad[IF + "loop1"][1]
    assert bad[ROUTE + "if/loop0/vrf/0/dst/fe80::/64/"][0] is KeyState.INVALID
    assert agent.orch.status().failed_rounds == 0


async def test_a_failed_detach_is_announced_again_when_the_delete_is_retried(
    agent: Agent,
) -> None:
    await start(agent, loop("loop0"), loop("loop1"), bd("bd1", "loop0", "loop1"))
    agent.sim.inject_error("sw_interface_set_l2_bridge", RV["UNSPECIFIED"], count=2)
    await agent.delete(IF + "loop0")
    await eventually(lambda: "loop0" not in agent.tagged(), limit=10)
    assert agent.violations() == 0
    await agent.settle()


async def test_a_failed_unbind_is_announced_again_when_the_table_delete_is_retried(
    agent: Agent,
) -> None:
    await start(agent, vrf(5), loop("loop1", "10.1.0.1/24", vrf=5))
    agent.sim.inject_error("sw_interface_set_table", RV["UNSPECIFIED"], count=2)
    await agent.delete(vrf(5)[0])
    await eventually(
        lambda: not any(t["table_id"] == 5 for t in agent.sim.dump_state()["tables"]), limit=10
    )
    assert agent.tagged()["loop1"]["vrf"]["ip4"] == 0
    assert agent.violations() == 0


async def test_a_tap_without_a_host_name_is_left_alone_by_a_resync(agent: Agent) -> None:
    await start(
        agent,
        (IF + "tap0", js({"name": "tap0", "type": "TAP", "enabled": True})),
        (IF + "tap1", js({"name": "tap1", "type": "TAP", "tap": {"version": 2}})),
    )
    before = agent.writes()
    agent.orch.request_resync("test")
    await agent.settle()
    await agent.orch.wait_in_sync(5)
    assert agent.writes() == before


async def test_one_next_hop_spelled_two_ways_is_one_key(agent: Agent) -> None:
    other = ROUTE + "if/loop0/vrf/0/dst/2001:db8::/32/gw/2001:DB8:0::1"
    await start(
        agent,
        loop("loop0", "2001:db8::2/64"),
        route("2001:db8::/32", gw="2001:db8::1", iface="loop0"),
        (other, js({"dst_network": "2001:db8::/32", "next_hop_addr": "2001:DB8:0::1",
                    "outgoing_interface": "loop0"})),
    )  # fmt: skip
    state, reason = not_configured(agent)[other]
    assert state is KeyState.INVALID and "gw/2001:db8::1" in reason


async def test_an_interface_in_two_bridge_domains_goes_to_the_first(agent: Agent) -> None:
    await start(agent, loop("loop0"), bd("bd1", "loop0"), bd("bd2", "loop0"))
    state, reason = not_configured(agent)[BD + "bd2"]
    assert state is KeyState.PENDING and "loop0 (in bd1)" in reason
    before = agent.writes()
    agent.orch.request_resync("test")
    await agent.settle()
    await agent.orch.wait_in_sync(5)
    assert agent.writes() == before, "the member must not move between bridge domains"
    await agent.delete(BD + "bd1")
    await agent.settle()
    await agent.wait_state(BD + "bd2", KeyState.CONFIGURED)
    bd2 = next(b for b in agent.sim.dump_state()["bridge_domains"] if b["tag"] == "bd2")
    assert set(bd2["members"]) == {str(agent.tagged()["loop0"]["sw_if_index"])}


async def test_two_memif_keys_with_one_id_in_one_transaction(agent: Agent) -> None:
    def memif(name: str) -> tuple[str, bytes]:
        return IF + name, js({"name": name, "type": "MEMIF", "memif": {"id": 3}})

    await start(agent, memif("memif1"), memif("memif2"))
    bad = not_configured(agent)
    assert len(bad) == 1
    ((_key, (state, reason)),) = bad.items()
    assert state is KeyState.FAILED and "in use" in reason
    assert agent.orch.status().failed_rounds == 0


async def test_a_table_vpp_had_before_its_key_is_not_deleted_with_the_key(agent: Agent) -> None:
    await agent.client.call("ip_table_add_del", is_add=True, table={"table_id": 9, "is_ip6": False})
    await start(agent, vrf(9))
    assert agent.state(VRF + "id/9/protocol/IPV4") is KeyState.CONFIGURED
    await agent.delete(VRF + "id/9/protocol/IPV4")
    await agent.settle()
    assert any(t["table_id"] == 9 for t in agent.sim.dump_state()["tables"])


@pytest.mark.parametrize(
    "addrs",
    [
        ["10.9.0.1/24", "10.9.0.1/25"],
        ["0.0.0.0/0"],
        ["224.0.0.1/24"],
        ["10.0.0.1/24", "10.0.0.9/16"],
    ],
)
async def test_addresses_that_can_never_be_configured_are_invalid(
    agent: Agent, addrs: list[str]
) -> None:
    await start(agent, loop("loop0", *addrs))
    assert agent.state(IF + "loop0") is KeyState.INVALID


def test_the_plugins_must_be_made_inside_the_running_loop() -> None:
    with pytest.raises(RuntimeError, match="inside the running event loop"):
        VppPlugins(VppClient("/nonexistent"), "t")


async def test_a_label_with_nul_is_invalid_and_a_resync_writes_nothing(agent: Agent) -> None:
    # VPP's strings end at NUL (keys cannot hold one; a table's label can)
    await start(agent, loop("ok0"), vrf(7, label="x\x00y"), vrf(8, label="fine"))
    key = vrf(7)[0]
    assert not_configured(agent) == {key: (KeyState.INVALID, "field label: must not contain NUL")}
    before = agent.writes()
    agent.orch.request_resync("test")
    await agent.settle()
    assert agent.writes() == before
