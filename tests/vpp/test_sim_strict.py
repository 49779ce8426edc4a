"""Strict mode for routes and VRFs: each dangling reference is counted and described.

The simulator in ``sim`` is strict. Every test here makes one violation in an otherwise
clean run, and the negative control goes through the whole life cycle in the order an
agent should, with zero violations.
"""

from __future__ import annotations

from typing import Any

from datasync.vpp.client import VppClient
from datasync.vpp.retvals import RETVAL_NAMES
from datasync.vpp.sim import Simulator

from .test_sim import route, route_path

U32_MAX = 0xFFFFFFFF
RV = {name: value for value, name in RETVAL_NAMES.items()}


async def rv(client: VppClient, name: str, **kw: Any) -> int:
    return int((await client.call(name, check=False, **kw)).retval)


def violations(sim: Simulator) -> list[str]:
    return list(sim.dump_state()["violations"])


async def test_route_through_an_interface_that_does_not_exist(
    sim: Simulator, client: VppClient
) -> None:
    got = await rv(
        client, "ip_route_add_del", route=route("9.0.0.0/8", [route_path(42, "1.2.3.4")])
    )
    assert got == RV["NO_MATCHING_INTERFACE"]
    assert sim.counters()["violations"] == 1
    (text,) = violations(sim)
    assert "9.0.0.0/8" in text and "sw_if_index 42" in text


async def test_route_resolving_in_a_table_that_does_not_exist(
    sim: Simulator, client: VppClient
) -> None:
    path = route_path(U32_MAX, "1.2.3.4", table_id=7)
    assert (
        await rv(client, "ip_route_add_del", route=route("9.0.0.0/8", [path])) == RV["NO_SUCH_FIB"]
    )
    assert sim.counters()["violations"] == 1
    assert "table 7" in violations(sim)[0]


async def test_route_into_a_table_that_does_not_exist(sim: Simulator, client: VppClient) -> None:
    loop = (await client.call("create_loopback")).sw_if_index
    got = await rv(client, "ip_route_add_del", route=route("9.0.0.0/8", [route_path(loop)], 5))
    assert got == RV["NO_SUCH_FIB"]
    assert sim.counters()["violations"] == 1
    assert "table 5" in violations(sim)[0]
    # deleting from a missing table is not a dangling reference
    assert (
        await rv(client, "ip_route_add_del", is_add=False, route=route("9.0.0.0/8", [], 5))
        == (RV["NO_SUCH_FIB"])
    )
    assert sim.counters()["violations"] == 1


async def test_interface_bound_to_a_table_that_does_not_exist(
    sim: Simulator, client: VppClient
) -> None:
    loop = (await client.call("create_loopback")).sw_if_index
    got = await rv(client, "sw_interface_set_table", sw_if_index=loop, is_ipv6=True, vrf_id=3)
    assert got == RV["NO_SUCH_FIB"]
    assert sim.counters()["violations"] == 1
    assert "loop0" in violations(sim)[0] and "ip6 table 3" in violations(sim)[0]


async def test_table_deleted_while_an_interface_is_bound(sim: Simulator, client: VppClient) -> None:
    loop = (await client.call("create_loopback")).sw_if_index
    await client.call("ip_table_add_del", is_add=True, table={"table_id": 4})
    await client.call("sw_interface_set_table", sw_if_index=loop, vrf_id=4)
    assert sim.counters()["violations"] == 0
    await client.call("ip_table_add_del", is_add=False, table={"table_id": 4})
    assert sim.counters()["violations"] == 1
    assert "table 4" in violations(sim)[0] and "loop0" in violations(sim)[0]


async def test_table_deleted_while_routes_are_in_it(sim: Simulator, client: VppClient) -> None:
    loop = (await client.call("create_loopback")).sw_if_index
    await client.call("ip_table_add_del", is_add=True, table={"table_id": 4})
    await client.call("ip_route_add_del", route=route("9.0.0.0/8", [route_path(loop)], 4))
    await client.call("ip_table_add_del", is_add=False, table={"table_id": 4})
    assert sim.counters()["violations"] == 1
    assert "route" in violations(sim)[0]
    # the routes went with the table
    await client.call("ip_table_add_del", is_add=True, table={"table_id": 4})
    details = await client.dump("ip_route_dump", table={"table_id": 4})
    assert "9.0.0.0/8" not in {str(d.route.prefix) for d in details}


async def test_table_deleted_while_a_route_resolves_in_it(
    sim: Simulator, client: VppClient
) -> None:
    await client.call("ip_table_add_del", is_add=True, table={"table_id": 6})
    path = route_path(U32_MAX, "0.0.0.0", table_id=6)  # a lookup in table 6 (via-vrf)
    await client.call("ip_route_add_del", route=route("9.0.0.0/8", [path]))
    assert sim.counters()["violations"] == 0
    await client.call("ip_table_add_del", is_add=False, table={"table_id": 6})
    assert sim.counters()["violations"] == 1
    assert "9.0.0.0/8" in violations(sim)[0] and "resolves" in violations(sim)[0]


async def test_interface_deleted_while_a_route_goes_through_it(
    sim: Simulator, client: VppClient
) -> None:
    a = (await client.call("create_loopback")).sw_if_index
    b = (await client.call("create_loopback")).sw_if_index
    add = "ip_route_add_del"
    await client.call(add, route=route("9.0.0.0/8", [route_path(a, "1.1.1.1")]))
    await client.call(add, is_multipath=True, route=route("9.0.0.0/8", [route_path(b, "2.2.2.2")]))
    await client.call("delete_loopback", sw_if_index=a)
    assert sim.counters()["violations"] == 1
    assert "loop0" in violations(sim)[0] and "9.0.0.0/8" in violations(sim)[0]
    # the path through it is gone, the route lives on through the other one
    details = await client.dump("ip_route_dump", table={"table_id": 0})
    (r,) = [d.route for d in details if str(d.route.prefix) == "9.0.0.0/8"]
    assert [p.sw_if_index for p in r.paths] == [b]
    # deleting b now removes the last path, and counts once more
    await client.call("delete_loopback", sw_if_index=b)
    assert sim.counters()["violations"] == 2


async def test_the_order_an_agent_should_use_counts_nothing(
    sim: Simulator, client: VppClient
) -> None:
    # up: table, interface, binding, address, bridge domain, routes
    await client.call("ip_table_add_del", is_add=True, table={"table_id": 10})
    await client.call("ip_table_add_del", is_add=True, table={"table_id": 10, "is_ip6": True})
    a = (await client.call("create_loopback")).sw_if_index
    b = (await client.call("create_loopback")).sw_if_index
    await client.call("sw_interface_set_table", sw_if_index=a, vrf_id=10)
    await client.call("sw_interface_set_table", sw_if_index=a, vrf_id=10, is_ipv6=True)
    await client.call(
        "sw_interface_add_del_address", sw_if_index=a, is_add=True, prefix="10.1.0.1/24"
    )
    await client.call(
        "sw_interface_add_del_address", sw_if_index=b, is_add=True, prefix="10.2.0.1/24"
    )
    await client.call("sw_interface_set_l2_bridge", rx_sw_if_index=b, bd_id=3)
    add = "ip_route_add_del"
    await client.call(add, route=route("20.0.0.0/8", [route_path(a, "10.1.0.2")], 10))
    await client.call(add, route=route("30.0.0.0/8", [route_path(U32_MAX, "0.0.0.0", table_id=10)]))
    await client.call(add, route=route("2001:db8::/32", [route_path(a, "::", proto=1)], 10))
    # down, in reverse
    await client.call(add, is_add=False, route=route("2001:db8::/32", [], 10))
    await client.call(add, is_add=False, route=route("30.0.0.0/8", []))
    await client.call(add, is_add=False, route=route("20.0.0.0/8", [], 10))
    await client.call("sw_interface_set_l2_bridge", rx_sw_if_index=b, bd_id=3, enable=False)
    await client.call(
        "sw_interface_add_del_address", sw_if_index=a, del_all=True, prefix="0.0.0.0/0"
    )
    await client.call("sw_interface_set_table", sw_if_index=a, vrf_id=0)
    await client.call("sw_interface_set_table", sw_if_index=a, vrf_id=0, is_ipv6=True)
    await client.call("ip_table_add_del", is_add=False, table={"table_id": 10})
    await client.call("ip_table_add_del", is_add=False, table={"table_id": 10, "is_ip6": True})
    await client.call("delete_loopback", sw_if_index=a)
    await client.call("delete_loopback", sw_if_index=b)  # its address goes with it
    assert sim.counters()["violations"] == 0, violations(sim)
    assert sim.state._refs == {} or all(not users for users in sim.state._refs.values())
    assert sim.state.counters[("vrf", "delete")] == 2
