"""The simulator answers as the real VPP does (issue 13 section 1) and as it goes (section 2).

Each test pins one difference that a run against a real VPP (v26.10-rc0) showed; the
values come from that run or from VPP's handler code (``fib_api_path_encode``,
``fib_api_path_decode``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from typing import Any

from datasync.vpp.client import VppClient
from datasync.vpp.codec import codec_for
from datasync.vpp.retvals import RETVAL_NAMES
from datasync.vpp.sim import Simulator

from .test_sim import DEFS, Raw, dump_routes, route, route_path

U32_MAX = 0xFFFFFFFF
RV = {name: value for value, name in RETVAL_NAMES.items()}


async def _loopback_with(client: VppClient, prefix: str) -> int:
    loop = int((await client.call("create_loopback")).sw_if_index)
    await client.call("sw_interface_add_del_address", sw_if_index=loop, is_add=True, prefix=prefix)
    return loop


# -- routes ----------------------------------------------------------------------------


async def test_own_route_entries_read_back_as_on_the_real_vpp(client: VppClient) -> None:
    loop = await _loopback_with(client, "10.0.0.1/24")
    await client.call("ip_route_add_del", route=route("20.0.0.0/8", [route_path(loop, "10.0.0.2")]))
    routes = await dump_routes(client)
    assert set(routes) == {
        "0.0.0.0/0",
        "0.0.0.0/32",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "255.255.255.255/32",
        "10.0.0.0/24",
        "10.0.0.0/32",
        "10.0.0.1/32",
        "10.0.0.255/32",
        "20.0.0.0/8",
    }
    for prefix, r in routes.items():
        for p in r.paths:
            # VPP zeroes the path before it fills it: never MPLS_LABEL_INVALID or ~0
            nh = p.nh
            assert (nh.via_label, nh.obj_id, nh.classify_table_index) == (0, 0, 0), prefix
    local = routes["10.0.0.1/32"].paths[0]
    assert (local.type, local.sw_if_index) == (1, loop)
    assert str(local.nh.address.ip4) == "10.0.0.1"  # the interface address, not 0.0.0.0
    connected = routes["10.0.0.0/24"].paths[0]
    assert (connected.type, connected.sw_if_index) == (0, loop)
    assert str(connected.nh.address.ip4) == "0.0.0.0"
    v6 = await dump_routes(client, v6=True)
    assert [p.type for p in v6["fe80::/10"].paths] == [0]
    assert [p.type for p in v6["::/0"].paths] == [2]


async def test_route_paths_drop_what_the_request_sent_in_nh(client: VppClient) -> None:
    loop = await _loopback_with(client, "10.0.0.1/24")
    path = route_path(loop, "10.0.0.2")
    path["nh"].update(via_label=0x100000, obj_id=U32_MAX, classify_table_index=U32_MAX)
    await client.call("ip_route_add_del", route=route("30.0.0.0/8", [path]))
    nh = (await dump_routes(client))["30.0.0.0/8"].paths[0].nh
    assert (nh.via_label, nh.obj_id, nh.classify_table_index) == (0, 0, 0)


async def test_stats_index_is_a_per_entry_index(sim: Simulator, client: VppClient) -> None:
    # every FIB entry takes one (VPP's own ones too): after 1000 loopbacks with a /24
    # each, the real VPP gave the next route 4008
    loops = await client.call_many("create_loopback", [None] * 1000)
    await client.call_many(
        "sw_interface_add_del_address",
        [
            {"sw_if_index": r.sw_if_index, "is_add": True, "prefix": f"10.{n >> 8}.{n & 255}.1/24"}
            for n, r in enumerate(loops)
        ],
    )
    add = "ip_route_add_del"
    first = await client.call(add, route=route("172.16.0.0/16", [route_path(loops[0].sw_if_index)]))
    assert first.stats_index == 4008
    second = await client.call(add, route=route("172.17.0.0/16", [route_path(U32_MAX, "10.0.0.9")]))
    assert second.stats_index == 4009
    # a route that changes keeps its index; the dump tells the same one
    again = await client.call(add, route=route("172.16.0.0/16", [route_path(U32_MAX, "10.0.0.8")]))
    assert again.stats_index == 4008
    routes = await dump_routes(client)
    assert routes["172.16.0.0/16"].stats_index == 4008
    assert len({r.stats_index for r in routes.values()}) == len(routes)


async def test_route_dump_order_is_not_insertion_order(sock_path: str) -> None:
    async def dumped_order(seed: int, backwards: bool = False) -> list[str]:
        sim = Simulator(seed=seed)
        await sim.start(sock_path)
        try:
            c = VppClient(sock_path, probe_interval=None)
            await c.connect()
            try:
                loop = (await c.call("create_loopback")).sw_if_index
                order = range(39, -1, -1) if backwards else range(40)
                await c.call_many(
                    "ip_route_add_del",
                    [{"route": route(f"20.{n}.0.0/16", [route_path(loop)])} for n in order],
                )
                details = await c.dump("ip_route_dump", table={"table_id": 0, "is_ip6": False})
                return [str(d.route.prefix) for d in details if str(d.route.prefix)[:3] == "20."]
            finally:
                await c.close()
        finally:
            await sim.stop()

    inserted = [f"20.{n}.0.0/16" for n in range(40)]
    first = await dumped_order(1)
    assert sorted(first) == sorted(inserted)
    assert first != inserted and first != sorted(inserted)
    assert await dumped_order(1) == first  # seeded: a run can be repeated
    # like a hash table's, the order follows the contents, not the order they came in
    assert await dumped_order(1, backwards=True) == first


async def test_route_path_retvals_of_fib_api_path_decode(client: VppClient) -> None:
    add = "ip_route_add_del"
    # an attached next hop through an interface that does not exist
    missing = await client.call(add, check=False, route=route("5.0.0.0/8", [route_path(77)]))
    assert missing.retval == RV["NO_MATCHING_INTERFACE"]
    # a recursive next hop to be resolved in a table that does not exist
    path = route_path(U32_MAX, "1.1.1.1", table_id=9)
    assert (await client.call(add, check=False, route=route("5.0.0.0/8", [path]))).retval == RV[
        "NO_SUCH_FIB"
    ]
    assert "5.0.0.0/8" not in await dump_routes(client)


# -- bridge domains and events ---------------------------------------------------------


async def test_bridge_domain_members_bvi_first_then_not_join_order(client: VppClient) -> None:
    loops = [r.sw_if_index for r in await client.call_many("create_loopback", [None] * 9)]
    l2 = "sw_interface_set_l2_bridge"
    await client.call_many(l2, [{"rx_sw_if_index": i, "bd_id": 5} for i in loops[:8]])
    await client.call(l2, rx_sw_if_index=loops[8], bd_id=5, port_type=1)  # the BVI joins last
    (bd,) = await client.dump("bridge_domain_dump", bd_id=5)
    members = [m.sw_if_index for m in bd.sw_if_details]
    assert bd.bvi_sw_if_index == loops[8]
    assert members[0] == loops[8]
    assert sorted(members[1:]) == loops[:8] and members[1:] != loops[:8]


async def test_bridge_domains_dump_in_bd_index_order_not_by_id(client: VppClient) -> None:
    add = "bridge_domain_add_del_v2"
    for bd_id in (30, 10, 20):
        await client.call(add, bd_id=bd_id)
    assert [d.bd_id for d in await client.dump("bridge_domain_dump")] == [30, 10, 20]
    # a freed bd_index is taken again, lowest first; a bd made by a member join takes one too
    await client.call(add, bd_id=10, is_add=False)
    await client.call(add, bd_id=5)
    loop = (await client.call("create_loopback")).sw_if_index
    await client.call("sw_interface_set_l2_bridge", rx_sw_if_index=loop, bd_id=1)
    assert [d.bd_id for d in await client.dump("bridge_domain_dump")] == [30, 5, 20, 1]


async def test_events_of_one_batch_come_in_varying_order(sim: Simulator, client: VppClient) -> None:
    events: list[Any] = []
    client.subscribe("sw_interface_event", events.append)
    await client.call("want_interface_events", enable_disable=True, pid=4)
    created = [r.sw_if_index for r in await client.call_many("create_loopback", [None] * 20)]
    await client.call("control_ping")  # events are sent before the replies that follow
    got = [e.sw_if_index for e in events]
    assert sorted(got) == created
    assert got != created  # one batch: VPP's order is not creation order


# -- answering as it goes --------------------------------------------------------------


def _address_adds(raw: Raw, sw_if_index: int, n: int) -> bytes:
    codec = codec_for(DEFS, "sw_interface_add_del_address")
    msg_id = raw.sim.msg_id("sw_interface_add_del_address")
    frames = []
    for i in range(n):
        body = codec.encode(
            msg_id,
            {
                "client_index": raw.index,
                "context": i + 1,
                "sw_if_index": sw_if_index,
                "is_add": True,
                "prefix": ipaddress.ip_interface(f"10.{i >> 8}.{i & 255}.1/24"),
            },
        )
        frames.append(struct.pack(">QII", 0, len(body), 0) + body)
    return b"".join(frames)


async def test_a_pipelined_burst_is_answered_as_it_goes(sim: Simulator) -> None:
    raw = await Raw.open(sim)
    await raw.handshake()
    loop = sim.state.create_loopback()[1]["sw_if_index"]
    n = 4000
    raw.w.write(_address_adds(raw, loop, n))  # the whole window in one write
    name, first = await raw.recv(wait=30)
    # the first reply left before the simulator had worked through the window
    handled_then = sim.message_counts["sw_interface_add_del_address"]
    assert (name, first.context, first.retval) == ("sw_interface_add_del_address_reply", 1, 0)
    assert handled_then < n
    contexts = [first.context]
    for _ in range(n - 1):
        contexts.append((await raw.recv(wait=30))[1].context)
    assert contexts == list(range(1, n + 1))  # still strictly in order
    await raw.close()


async def test_a_burst_beyond_the_backlog_limit_is_read_again(sim: Simulator) -> None:
    # more than the backlog holds: reading pauses, then resumes; nothing is lost
    raw = await Raw.open(sim)
    await raw.handshake()
    ping = codec_for(DEFS, "control_ping")
    n = 20_000
    frames = [
        ping.encode(sim.msg_id("control_ping"), {"client_index": raw.index, "context": i + 1})
        for i in range(n)
    ]
    raw.w.write(b"".join(struct.pack(">QII", 0, len(b), 0) + b for b in frames))
    seen = [(await raw.recv(wait=30))[1].context for _ in range(n)]
    assert seen == list(range(1, n + 1))
    assert not any(c.paused for c in sim.connections)
    await raw.close()


async def test_call_many_of_2000_addresses_with_the_health_probe_on(sim: Simulator) -> None:
    # the user run: the probe must keep hearing from the simulator meanwhile
    assert sim.path
    c = VppClient(sim.path, probe_interval=0.05, reconnect=False, timeout=30)
    await c.connect()
    try:
        loops = await c.call_many("create_loopback", [None] * 2000)
        replies = await c.call_many(
            "sw_interface_add_del_address",
            [
                {
                    "sw_if_index": r.sw_if_index,
                    "is_add": True,
                    "prefix": f"10.{n >> 8}.{n & 255}.1/24",
                }
                for n, r in enumerate(loops)
            ],
        )
        assert [r.retval for r in replies] == [0] * 2000
        assert c.connected
    finally:
        await c.close()
    await asyncio.sleep(0)
