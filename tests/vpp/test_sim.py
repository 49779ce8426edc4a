"""The simulator: wire protocol, VPP's semantics and retvals, fault API, admin HTTP, CLI."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest

from datasync.vpp.client import VppClient
from datasync.vpp.codec import codec_for
from datasync.vpp.defs import builtin_definitions
from datasync.vpp.retvals import RETVAL_NAMES
from datasync.vpp.sim import Simulator
from datasync.vpp.sim.admin import AdminServer

from .helpers import eventually

U32_MAX = 0xFFFFFFFF
DEFS = builtin_definitions()
RV = {name: value for value, name in RETVAL_NAMES.items()}
UNSUPPORTED = RV["UNSUPPORTED"]


async def rv(client: VppClient, name: str, **kw: Any) -> int:
    return int((await client.call(name, check=False, **kw)).retval)


async def names(client: VppClient) -> dict[str, int]:
    return {d.interface_name: d.sw_if_index for d in await client.dump("sw_interface_dump")}


def route_path(sw_if_index: int = U32_MAX, nh: str = "0.0.0.0", **kw: Any) -> dict[str, Any]:
    addr = ipaddress.ip_address(nh)
    arm = "ip6" if addr.version == 6 else "ip4"
    return {"sw_if_index": sw_if_index, "nh": {"address": {arm: addr.packed}}, **kw}


def route(prefix: str, paths: list[dict[str, Any]], table_id: int = 0) -> dict[str, Any]:
    return {"table_id": table_id, "prefix": prefix, "n_paths": len(paths), "paths": paths}


# -- raw wire helpers ------------------------------------------------------------------


class Raw:
    """A bare socket client speaking VPP framing, to test what a real client would not send."""

    def __init__(self, sim: Simulator, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.sim = sim
        self.r = r
        self.w = w
        self.index = 0

    @classmethod
    async def open(cls, sim: Simulator) -> Raw:
        assert sim.path
        r, w = await asyncio.open_unix_connection(sim.path)
        return cls(sim, r, w)

    def send(self, body: bytes, q: int = 0) -> None:
        self.w.write(struct.pack(">QII", q, len(body), 0) + body)

    def enc(self, name: str, **fields: Any) -> bytes:
        fields.setdefault("client_index", self.index)
        return codec_for(DEFS, name).encode(self.sim.msg_id(name), fields)

    async def recv(self, wait: float = 2.0) -> tuple[str, Any]:
        async with asyncio.timeout(wait):
            hdr = await self.r.readexactly(16)
            (length,) = struct.unpack(">I", hdr[8:12])
            body = await self.r.readexactly(length)
        name = self.sim.names[(body[0] << 8) | body[1]]
        return name, codec_for(DEFS, name).decode(body)

    async def handshake(self) -> Any:
        self.send(codec_for(DEFS, "sockclnt_create").encode(15, {"context": 124, "name": "raw"}))
        name, reply = await self.recv()
        assert name == "sockclnt_create_reply"
        self.index = reply.index
        return reply

    async def close(self) -> None:
        self.w.close()
        await self.w.wait_closed()


# -- protocol --------------------------------------------------------------------------


async def test_handshake_ids_and_message_table(sim: Simulator) -> None:
    raw = await Raw.open(sim)
    reply = await raw.handshake()
    assert reply.response == 0
    assert reply.index & 0x80000000
    table = {e.name: e.index for e in reply.message_table}
    assert reply.count == len(table)
    # memclnt is numbered 1..28 in file order: papi hard-codes 15/16
    assert table[DEFS.name_crc("sockclnt_create")] == 15
    assert table[DEFS.name_crc("sockclnt_create_reply")] == 16
    assert table[DEFS.name_crc("control_ping")] == 23
    assert table[DEFS.name_crc("control_ping_reply")] == 24
    assert table[DEFS.name_crc("get_api_json")] == 27
    for name in ("sw_interface_dump", "sw_interface_details", "sw_interface_event"):
        assert DEFS.name_crc(name) in table
    assert all(i > 28 for n, i in table.items() if n.startswith("sw_interface"))
    await raw.close()


async def test_control_ping_echoes_client_index_and_vpe_pid(sim: Simulator) -> None:
    raw = await Raw.open(sim)
    await raw.handshake()
    raw.send(raw.enc("control_ping", context=7))
    name, reply = await raw.recv()
    assert name == "control_ping_reply"
    assert (reply.context, reply.retval, reply.client_index) == (7, 0, raw.index)
    assert reply.vpe_pid == sim.state.vpe_pid
    await raw.close()


async def test_bad_input_is_dropped_without_reply(sim: Simulator) -> None:
    raw = await Raw.open(sim)
    await raw.handshake()
    stats = sim.stats
    raw.send(raw.enc("control_ping", context=1, client_index=0x80000999))  # unknown client
    raw.send(b"\x7f\xf0" + bytes(20))  # unknown id
    raw.send(b"\x00")  # too short for an id
    raw.send(raw.enc("show_version", context=2)[:5])  # too short for the header fields
    trunc = raw.enc("sw_interface_set_flags", context=3, sw_if_index=0, flags=1)
    raw.send(trunc[:-2])  # shorter than the message: VPP's size check drops it
    # garbage in the header's first 8 bytes is ignored, like VPP's msgbuf pointer
    raw.send(raw.enc("control_ping", context=4), q=0x40E5043001000000)
    name, reply = await raw.recv()
    assert (name, reply.context) == ("control_ping_reply", 4)
    assert stats["dropped_unknown_client"] == 1
    assert stats["dropped_unknown_id"] == 1
    assert stats["dropped_short"] == 2
    assert stats["dropped_malformed"] == 1
    await raw.close()


async def test_one_slice_of_every_kind_is_answered_in_order_and_counted(
    sim: Simulator,
) -> None:
    """A burst in one write, so one slice handles it all: what is dropped is counted and
    gets nothing, what a handler rejects is answered INVALID_VALUE, the rest in order."""
    raw = await Raw.open(sim)
    await raw.handshake()
    requests, counts = sim.stats["requests"], sim.message_counts
    bad_af = bytearray(raw.enc("sw_interface_add_del_address", context=2, sw_if_index=0,
                               is_add=True, prefix={"address": {"af": 0}, "len": 8}))  # fmt: skip
    bad_af[16] = 9  # the prefix's address family: no such family (the model's ValueError)
    burst = [
        raw.enc("control_ping", context=1),
        raw.enc("control_ping", context=9, client_index=0x80000999),  # unknown client
        bytes(bad_af),
        b"\x00",  # too short for an id
        raw.enc("show_version", context=3),
        raw.enc("control_ping", context=4),
    ]
    raw.w.write(b"".join(struct.pack(">QII", 0, len(b), 0) + b for b in burst))
    got = [await raw.recv() for _ in range(4)]
    assert [(n, r.context) for n, r in got] == [
        ("control_ping_reply", 1),
        ("sw_interface_add_del_address_reply", 2),
        ("show_version_reply", 3),
        ("control_ping_reply", 4),
    ]
    assert got[1][1].retval == RV["INVALID_VALUE"]
    assert sim.stats["requests"] == requests + 4
    assert sim.message_counts["control_ping"] == counts.get("control_ping", 0) + 2
    assert sim.message_counts["sw_interface_add_del_address"] == 1
    assert sim.stats["dropped_unknown_client"] == 1 and sim.stats["dropped_short"] == 1
    await raw.close()


async def test_frames_split_and_coalesced(sim: Simulator) -> None:
    raw = await Raw.open(sim)
    await raw.handshake()
    data = b"".join(
        struct.pack(">QII", 0, len(b), 0) + b
        for b in (raw.enc("control_ping", context=c) for c in range(10, 20))
    )
    for i in range(len(data)):  # one byte per write
        raw.w.write(data[i : i + 1])
        if i % 7 == 0:
            await raw.w.drain()
    got = [(await raw.recv())[1].context for _ in range(10)]
    assert got == list(range(10, 20))
    await raw.close()


async def test_dump_then_ping_in_order(sim: Simulator) -> None:
    raw = await Raw.open(sim)
    await raw.handshake()
    raw.send(raw.enc("create_loopback", context=1))
    raw.send(raw.enc("sw_interface_dump", context=2, sw_if_index=U32_MAX))
    raw.send(raw.enc("control_ping", context=2))
    seen = [(await raw.recv())[0] for _ in range(4)]
    assert seen == [
        "create_loopback_reply",
        "sw_interface_details",
        "sw_interface_details",
        "control_ping_reply",
    ]
    await raw.close()


async def test_sockclnt_delete_replies_one_and_closes(sim: Simulator) -> None:
    raw = await Raw.open(sim)
    await raw.handshake()
    raw.send(raw.enc("sockclnt_delete", context=9, index=0x80000777))
    name, reply = await raw.recv()
    assert (name, reply.response) == ("sockclnt_delete_reply", -1)
    raw.send(raw.enc("sockclnt_delete", context=10, index=raw.index))
    name, reply = await raw.recv()
    assert (name, reply.response) == ("sockclnt_delete_reply", 1)
    assert await raw.r.read() == b""  # VPP closes the socket after the reply
    await raw.close()


async def test_get_api_json_serves_modules(client: VppClient) -> None:
    reply = await client.call("get_api_json")
    modules = json.loads(reply.json)
    assert isinstance(modules, list)
    names = {m["module"] for m in modules}
    assert {"memclnt", "interface", "ip", "l2"} <= names


async def test_show_version(client: VppClient) -> None:
    reply = await client.call("show_version")
    assert reply.program == "vpe"
    assert reply.version


# -- interfaces ------------------------------------------------------------------------


async def test_local0_dump(client: VppClient) -> None:
    for idx in (U32_MAX, 0):
        details = await client.dump("sw_interface_dump", sw_if_index=idx)
        assert [(d.sw_if_index, d.interface_name, d.interface_dev_type) for d in details] == [
            (0, "local0", "local")
        ]
    assert await client.dump("sw_interface_dump", sw_if_index=42) == []


async def test_loopback_names_macs_and_index_reuse(client: VppClient) -> None:
    idx = [(await client.call("create_loopback")).sw_if_index for _ in range(3)]
    assert idx == [1, 2, 3]
    got = await names(client)
    assert got["loop0"] == 1 and got["loop2"] == 3
    details = {d.interface_name: d for d in await client.dump("sw_interface_dump")}
    assert bytes(details["loop1"].l2_address) == bytes.fromhex("dead00000001")
    assert details["loop1"].interface_dev_type == "Loopback"
    assert details["loop1"].link_mtu == 9000
    assert list(details["loop1"].mtu) == [9000, 0, 0, 0]
    await client.call("delete_loopback", sw_if_index=1)
    await client.call("delete_loopback", sw_if_index=3)
    # freed indices come back most recently freed first; instances take the lowest free bit
    a = await client.call("create_loopback")
    b = await client.call("create_loopback")
    assert (a.sw_if_index, b.sw_if_index) == (3, 1)
    got = await names(client)
    assert got["loop0"] == 3 and got["loop2"] == 1


async def test_loopback_instance_and_errors(client: VppClient) -> None:
    r = await client.call(
        "create_loopback_instance",
        is_specified=True,
        user_instance=7,
        mac_address="02:00:00:00:00:07",
    )
    assert "loop7" in await names(client)
    details = await client.dump("sw_interface_dump", sw_if_index=r.sw_if_index)
    assert str(details[0].l2_address) == "02:00:00:00:00:07"
    assert await rv(client, "create_loopback_instance", is_specified=True, user_instance=7) == -31
    assert await rv(client, "delete_loopback", sw_if_index=99) == -2
    assert await rv(client, "delete_loopback", sw_if_index=0) == -2  # local0 is not a loopback


async def test_flags_mtu_tag_mac(client: VppClient) -> None:
    loop = (await client.call("create_loopback")).sw_if_index
    assert await rv(client, "sw_interface_set_flags", sw_if_index=loop, flags=1) == 0
    d = (await client.dump("sw_interface_dump", sw_if_index=loop))[0]
    assert d.flags == 3  # a loopback's link follows admin up
    assert await rv(client, "sw_interface_set_flags", sw_if_index=99, flags=1) == -2
    assert await rv(client, "sw_interface_set_mtu", sw_if_index=loop, mtu=[1500, 0, 1400, 0]) == 0
    # the real VPP: a loopback cannot change its hardware MTU (it stays 9000)
    assert await rv(client, "hw_interface_set_mtu", sw_if_index=loop, mtu=8000) == UNSUPPORTED
    assert await rv(client, "hw_interface_set_mtu", sw_if_index=99, mtu=8000) == -2
    assert (
        await rv(client, "sw_interface_tag_add_del", is_add=True, sw_if_index=loop, tag="t1") == 0
    )
    assert await rv(client, "sw_interface_tag_add_del", is_add=True, sw_if_index=77, tag="x") == -2
    mac = "02:11:22:33:44:55"
    assert await rv(client, "sw_interface_set_mac_address", sw_if_index=loop, mac_address=mac) == 0
    d = (await client.dump("sw_interface_dump", sw_if_index=loop))[0]
    assert (d.link_mtu, list(d.mtu), d.tag, str(d.l2_address)) == (
        9000,
        [1500, 0, 1400, 0],
        "t1",
        mac,
    )
    await client.call("sw_interface_tag_add_del", is_add=False, sw_if_index=loop)
    await client.call("sw_interface_set_flags", sw_if_index=loop, flags=0)
    d = (await client.dump("sw_interface_dump", sw_if_index=loop))[0]
    assert (d.tag, d.flags) == ("", 0)


async def test_name_filter(client: VppClient) -> None:
    await client.call("create_loopback")
    got = await client.dump("sw_interface_dump", name_filter_valid=True, name_filter="LOOP")
    assert [d.interface_name for d in got] == ["loop0"]


async def test_addresses(client: VppClient) -> None:
    a = (await client.call("create_loopback")).sw_if_index
    b = (await client.call("create_loopback")).sw_if_index
    add = "sw_interface_add_del_address"
    assert await rv(client, add, sw_if_index=a, is_add=True, prefix="10.0.0.1/24") == 0
    assert await rv(client, add, sw_if_index=a, is_add=True, prefix="10.0.0.1/24") == -105
    assert await rv(client, add, sw_if_index=b, is_add=True, prefix="10.0.0.2/24") == -105
    assert await rv(client, add, sw_if_index=a, is_add=True, prefix="2001:db8::1/64") == 0
    assert await rv(client, add, sw_if_index=a, is_add=False, prefix="10.9.9.9/24") == -60
    assert await rv(client, add, sw_if_index=99, is_add=True, prefix="10.1.0.1/24") == -2
    v4 = await client.dump("ip_address_dump", sw_if_index=a, is_ipv6=False)
    v6 = await client.dump("ip_address_dump", sw_if_index=a, is_ipv6=True)
    assert [str(d.prefix) for d in v4] == ["10.0.0.1/24"]
    assert [str(d.prefix) for d in v6] == ["2001:db8::1/64"]
    assert await rv(client, add, sw_if_index=a, is_add=False, prefix="10.0.0.1/24") == 0
    assert await rv(client, add, sw_if_index=a, del_all=True, prefix="0.0.0.0/0") == 0
    assert await client.dump("ip_address_dump", sw_if_index=a, is_ipv6=True) == []


async def test_second_address_from_the_same_subnet(client: VppClient) -> None:
    # VPP: "an intf may have >1 addr from the same prefix"; only another interface (or a
    # different length, or the same address) conflicts
    a = (await client.call("create_loopback")).sw_if_index
    b = (await client.call("create_loopback")).sw_if_index
    add = "sw_interface_add_del_address"
    assert await rv(client, add, sw_if_index=a, is_add=True, prefix="10.0.0.1/24") == 0
    assert await rv(client, add, sw_if_index=a, is_add=True, prefix="10.0.0.2/24") == 0
    assert await rv(client, add, sw_if_index=a, is_add=True, prefix="10.0.0.2/24") == -105
    assert await rv(client, add, sw_if_index=a, is_add=True, prefix="10.0.0.3/16") == -105
    assert await rv(client, add, sw_if_index=b, is_add=True, prefix="10.0.0.9/24") == -105
    assert await rv(client, add, sw_if_index=a, is_add=True, prefix="2001:db8::1/64") == 0
    assert await rv(client, add, sw_if_index=a, is_add=True, prefix="2001:db8::2/64") == 0
    assert await rv(client, add, sw_if_index=b, is_add=True, prefix="2001:db8::3/64") == -105
    v4 = await client.dump("ip_address_dump", sw_if_index=a, is_ipv6=False)
    assert [str(d.prefix) for d in v4] == ["10.0.0.1/24", "10.0.0.2/24"]
    assert await rv(client, add, sw_if_index=a, is_add=False, prefix="10.0.0.1/24") == 0
    v4 = await client.dump("ip_address_dump", sw_if_index=a, is_ipv6=False)
    assert [str(d.prefix) for d in v4] == ["10.0.0.2/24"]


async def test_vrf_tables(client: VppClient) -> None:
    a = (await client.call("create_loopback")).sw_if_index
    assert await rv(client, "sw_interface_set_table", sw_if_index=a, vrf_id=5) == -3
    assert await rv(client, "ip_table_add_del", is_add=True, table={"table_id": 5}) == 0
    assert await rv(client, "sw_interface_set_table", sw_if_index=a, vrf_id=5) == 0
    await client.call(
        "sw_interface_add_del_address", sw_if_index=a, is_add=True, prefix="1.1.1.1/24"
    )
    assert await rv(client, "sw_interface_set_table", sw_if_index=a, vrf_id=0) == -114
    assert await rv(client, "sw_interface_set_table", sw_if_index=99, vrf_id=0) == -2
    # the address lives in VRF 5: the same subnet is free in VRF 0
    b = (await client.call("create_loopback")).sw_if_index
    add = "sw_interface_add_del_address"
    assert await rv(client, add, sw_if_index=b, is_add=True, prefix="1.1.1.2/24") == 0
    # the connected entries live in the table the interface is bound to
    in_5 = await client.dump("ip_route_dump", table={"table_id": 5, "is_ip6": False})
    assert {"1.1.1.0/24", "1.1.1.1/32"} <= {str(d.route.prefix) for d in in_5}
    in_0 = await client.dump("ip_route_dump", table={"table_id": 0, "is_ip6": False})
    assert "1.1.1.1/32" not in {str(d.route.prefix) for d in in_0}
    # read back: the tables and the bindings
    tables = {(d.table.table_id, d.table.is_ip6) for d in await client.dump("ip_table_dump")}
    assert tables == {(0, False), (0, True), (5, False)}
    assert (await client.call("sw_interface_get_table", sw_if_index=a)).vrf_id == 5
    assert (await client.call("sw_interface_get_table", sw_if_index=b)).vrf_id == 0
    assert await rv(client, "sw_interface_get_table", sw_if_index=99) == -2


# -- tap and memif ---------------------------------------------------------------------


async def test_tap(client: VppClient) -> None:
    t0 = await client.call("tap_create_v3", tag="x")
    t1 = await client.call("tap_create_v3", host_if_name_set=True, host_if_name="veth-a")
    assert await rv(client, "tap_create_v3", id=1) == -71
    got = await names(client)
    assert got["tap0"] == t0.sw_if_index and got["tap1"] == t1.sw_if_index
    details = await client.dump("sw_interface_dump", sw_if_index=t0.sw_if_index)
    assert (details[0].interface_dev_type, details[0].tag) == ("tap", "x")
    taps = await client.dump("sw_interface_tap_v2_dump")
    assert [(t.id, t.dev_name) for t in taps] == [(0, "tap0"), (1, "tap1")]
    assert taps[1].host_if_name == "veth-a"
    assert await rv(client, "tap_delete_v2", sw_if_index=t0.sw_if_index) == 0
    assert await rv(client, "tap_delete_v2", sw_if_index=t0.sw_if_index) == -2
    assert [t.id for t in await client.dump("sw_interface_tap_v2_dump")] == [1]


async def test_memif(client: VppClient) -> None:
    sock = "memif_socket_filename_add_del_v2"
    r1 = await client.call(sock, is_add=True, socket_filename="/tmp/m1.sock")
    r2 = await client.call(sock, is_add=True, socket_filename="/tmp/m2.sock")
    assert r1.socket_id not in (0, U32_MAX) and r2.socket_id != r1.socket_id + 1
    assert await rv(client, sock, is_add=True, socket_id=0, socket_filename="/tmp/x") == -73
    m = await client.call(
        "memif_create_v2", socket_id=r1.socket_id, id=3, role=1, ring_size=2048, buffer_size=4096
    )
    # a duplicate id, as the real VPP answers it (not ENTRY_ALREADY_EXISTS)
    dup = await rv(client, "memif_create_v2", socket_id=r1.socket_id, id=3)
    assert dup == RV["SUBIF_ALREADY_EXISTS"]
    # the same id on another socket is another memif
    other = await client.call("memif_create_v2", socket_id=r2.socket_id, id=3)
    assert await rv(client, "memif_create_v2", socket_id=12345, id=3) == -73
    got = await names(client)
    assert got[f"memif{r1.socket_id}/3"] == m.sw_if_index
    dumped = {d.sw_if_index: d for d in await client.dump("memif_dump")}
    d = dumped[m.sw_if_index]
    assert (d.id, d.socket_id, d.role, d.if_name) == (3, r1.socket_id, 1, f"memif{r1.socket_id}/3")
    # never connected: no rings yet, whatever was asked for (the real VPP's values)
    assert (d.ring_size, d.buffer_size, d.zero_copy) == (1, 0, False)
    # deleting a socket filename a memif still uses, as the real VPP answers it
    in_use = await rv(client, sock, is_add=False, socket_id=r1.socket_id)
    assert in_use == RV["UNEXPECTED_INTF_STATE"]
    assert await rv(client, "memif_delete", sw_if_index=0) == -2
    assert await rv(client, "memif_delete", sw_if_index=m.sw_if_index) == 0
    assert [d.sw_if_index for d in await client.dump("memif_dump")] == [other.sw_if_index]
    assert await rv(client, sock, is_add=False, socket_id=r1.socket_id) == 0
    # an id is free again once its memif is gone
    assert await rv(client, "memif_delete", sw_if_index=other.sw_if_index) == 0
    assert await rv(client, "memif_create_v2", socket_id=r2.socket_id, id=3) == 0


# -- events ----------------------------------------------------------------------------


async def events_flushed(client: VppClient) -> None:
    """Every event of the calls answered so far has reached ``client``'s subscribers: the
    simulator sends an event batch before the replies to requests that come after it."""
    await client.call("control_ping")


async def test_interface_events_batched(sim: Simulator, client: VppClient) -> None:
    events: list[tuple[int, int, bool]] = []
    client.subscribe(
        "sw_interface_event", lambda e: events.append((e.sw_if_index, e.flags, e.deleted))
    )
    assert await rv(client, "want_interface_events", enable_disable=True, pid=99) == 0
    assert await rv(client, "want_interface_events", enable_disable=True, pid=99) == -31
    # each call in a batch of its own: its events are flushed before the next one
    loop = (await client.call("create_loopback")).sw_if_index
    await events_flushed(client)
    await client.call("sw_interface_set_flags", sw_if_index=loop, flags=1)
    await events_flushed(client)
    m = (await client.call("memif_create_v2", socket_id=0, id=0)).sw_if_index
    await events_flushed(client)
    await client.call("memif_delete", sw_if_index=m)
    await events_flushed(client)
    await client.call("delete_loopback", sw_if_index=loop)
    await events_flushed(client)
    # the real VPP's sequence (README 1.5)
    assert events == [(1, 0, False), (1, 3, False), (2, 0, False), (2, 0, True), (1, 0, True)]
    assert await rv(client, "want_interface_events", enable_disable=False) == 0
    assert await rv(client, "want_interface_events", enable_disable=False) == -31


async def test_events_within_one_batch_merge(sim: Simulator, client: VppClient) -> None:
    events: list[Any] = []
    client.subscribe("sw_interface_event", events.append)
    await client.call("want_interface_events", enable_disable=True, pid=5)
    loop = (await client.call("create_loopback")).sw_if_index
    await events_flushed(client)
    assert [e.sw_if_index for e in events] == [loop]
    events.clear()
    await client.call_many(
        "sw_interface_set_flags",
        [{"sw_if_index": loop, "flags": 1}, {"sw_if_index": loop, "flags": 0}],
    )
    await events_flushed(client)
    # admin up + admin down in one batch: one event carrying the bits that happened
    assert [(e.sw_if_index, e.flags, e.pid) for e in events] == [(loop, 3, 5)]


async def test_event_registration_dropped_on_disconnect(sim: Simulator) -> None:
    assert sim.path
    c = VppClient(sim.path, probe_interval=None)
    await c.connect()
    await c.call("want_interface_events", enable_disable=True, pid=1)
    assert len(sim.registrations) == 1
    await c.close()
    await eventually(lambda: not sim.registrations)
    other = VppClient(sim.path, probe_interval=None)
    await other.connect()
    sent = sim.stats["events_sent"]
    await other.call("create_loopback")
    await events_flushed(other)
    assert sim.stats["events_sent"] == sent
    await other.close()


@pytest.mark.parametrize("transport", ["socket", "shm"])
async def test_event_registration_dropped_on_abort(sim: Simulator, transport: str) -> None:
    # no sockclnt_delete: the socket just goes away (a crashed client), so the simulator
    # must drop the registration from connection_lost alone
    assert sim.path
    c = VppClient(sim.path, probe_interval=None, reconnect=False, transport=transport)
    await c.connect()
    await c.call("want_interface_events", enable_disable=True, pid=1)
    assert len(sim.registrations) == 1
    assert c._transport is not None
    c._transport.abort()
    async with asyncio.timeout(5):
        while sim.connections or sim.registrations:
            await asyncio.sleep(0.01)
    other = VppClient(sim.path, probe_interval=None)
    await other.connect()
    sent = sim.stats["events_sent"]
    await other.call("create_loopback")
    await other.call("control_ping")  # events are sent before the replies that follow
    assert sim.stats["events_sent"] == sent
    await other.close()
    await c.close()


# -- bridge domains --------------------------------------------------------------------


async def test_bridge_domains(client: VppClient) -> None:
    add = "bridge_domain_add_del_v2"
    r = await client.call(add, bd_id=10, flood=True, learn=True, bd_tag="blue", mac_age=5)
    assert r.bd_id == 10
    assert await rv(client, add, bd_id=10) == -119
    assert await rv(client, add, bd_id=1 << 24) == -122
    assert await rv(client, add, bd_id=11, is_add=False) == -6
    assert await rv(client, add, bd_id=0, is_add=False) == -121
    auto1 = (await client.call(add, bd_id=U32_MAX)).bd_id
    auto2 = (await client.call(add, bd_id=U32_MAX)).bd_id
    assert auto1 != auto2 and abs(auto2 - auto1) != 1 and auto1 < (1 << 24)

    a = (await client.call("create_loopback")).sw_if_index
    b = (await client.call("create_loopback")).sw_if_index
    l2 = "sw_interface_set_l2_bridge"
    assert await rv(client, l2, rx_sw_if_index=a, bd_id=10, port_type=1) == 0
    assert await rv(client, l2, rx_sw_if_index=b, bd_id=10, port_type=1) == -152
    assert await rv(client, l2, rx_sw_if_index=b, bd_id=10, port_type=9) == -7
    assert await rv(client, l2, rx_sw_if_index=99, bd_id=10) == -2
    assert await rv(client, l2, rx_sw_if_index=b, bd_id=20, shg=2) == 0  # auto-creates bd 20
    assert await rv(client, add, bd_id=10, is_add=False) == -120

    bds = {d.bd_id: d for d in await client.dump("bridge_domain_dump")}
    assert set(bds) == {10, 20, auto1, auto2}
    assert (bds[10].bd_tag, bds[10].mac_age, bds[10].bvi_sw_if_index) == ("blue", 5, a)
    assert [(m.sw_if_index, m.shg) for m in bds[20].sw_if_details] == [(b, 2)]
    assert bds[20].flood and bds[20].learn and bds[20].forward
    assert bds[20].uu_fwd_sw_if_index == U32_MAX
    assert await client.dump("bridge_domain_dump", bd_id=0) == []
    assert await client.dump("bridge_domain_dump", sw_if_index=a) == []
    assert [d.bd_id for d in await client.dump("bridge_domain_dump", bd_id=20)] == [20]

    assert await rv(client, l2, rx_sw_if_index=a, bd_id=10, enable=False) == 0
    assert await rv(client, add, bd_id=10, is_add=False) == 0


# -- routes ----------------------------------------------------------------------------


async def dump_routes(client: VppClient, table_id: int = 0, v6: bool = False) -> dict[str, Any]:
    details = await client.dump("ip_route_dump", table={"table_id": table_id, "is_ip6": v6})
    return {str(d.route.prefix): d.route for d in details}


async def test_builtin_and_connected_routes(client: VppClient) -> None:
    base = await dump_routes(client)
    assert set(base) == {
        "0.0.0.0/0",
        "0.0.0.0/32",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "255.255.255.255/32",
    }
    assert all(r.paths[0].type == 2 and r.paths[0].sw_if_index == U32_MAX for r in base.values())
    loop = (await client.call("create_loopback")).sw_if_index
    await client.call(
        "sw_interface_add_del_address", sw_if_index=loop, is_add=True, prefix="10.0.0.1/24"
    )
    await client.call("ip_route_add_del", route=route("20.0.0.0/8", [route_path(loop, "10.0.0.2")]))
    routes = await dump_routes(client)
    assert len(routes) == 10  # as on the real VPP after one address and one route
    assert routes["10.0.0.1/32"].paths[0].type == 1
    assert routes["10.0.0.0/24"].paths[0].sw_if_index == loop
    assert routes["10.0.0.255/32"].paths[0].type == 2
    assert str(routes["20.0.0.0/8"].paths[0].nh.address.ip4) == "10.0.0.2"
    assert await client.dump("ip_route_dump", table={"table_id": 77}) == []


async def test_route_retvals_and_multipath(client: VppClient) -> None:
    a = (await client.call("create_loopback")).sw_if_index
    b = (await client.call("create_loopback")).sw_if_index
    add = "ip_route_add_del"
    assert await rv(client, add, route=route("5.0.0.0/8", [route_path(a)], table_id=9)) == -3
    assert await rv(client, add, route=route("5.0.0.0/8", [])) == -52
    assert await rv(client, add, is_add=False, route=route("6.0.0.0/8", [])) == 0  # missing: ok
    await client.call(add, route=route("5.0.0.0/8", [route_path(a, "1.1.1.1")]))
    await client.call(
        add, is_multipath=True, route=route("5.0.0.0/8", [route_path(b, "2.2.2.2", weight=3)])
    )
    paths = (await dump_routes(client))["5.0.0.0/8"].paths
    assert sorted((p.sw_if_index, p.weight) for p in paths) == [(a, 1), (b, 3)]
    await client.call(
        add, is_add=False, is_multipath=True, route=route("5.0.0.0/8", [route_path(a, "1.1.1.1")])
    )
    assert [p.sw_if_index for p in (await dump_routes(client))["5.0.0.0/8"].paths] == [b]
    # without is_multipath, add replaces the whole path set
    await client.call(add, route=route("5.0.0.0/8", [route_path(a, "3.3.3.3")]))
    paths = (await dump_routes(client))["5.0.0.0/8"].paths
    assert [(p.sw_if_index, str(p.nh.address.ip4)) for p in paths] == [(a, "3.3.3.3")]
    await client.call(add, is_add=False, route=route("5.0.0.0/8", []))
    assert "5.0.0.0/8" not in await dump_routes(client)


async def test_route_bad_prefix_length(sim: Simulator, client: VppClient) -> None:
    # the prefix length travels as a plain u8: build the body by hand to send /40
    body = bytearray(
        codec_for(DEFS, "ip_route_add_del").encode(
            sim.msg_id("ip_route_add_del"),
            {
                "client_index": 0,
                "context": 0,
                "is_add": True,
                "route": route("7.0.0.0/8", [route_path(0)]),
            },
        )
    )
    plen_at = 2 + 4 + 4 + 1 + 1 + 4 + 4 + 17  # header, is_add, is_multipath, table, stats, addr
    assert body[plen_at] == 8
    raw = await Raw.open(sim)
    await raw.handshake()
    body[plen_at] = 40
    body[2:6] = raw.index.to_bytes(4, "big")
    body[6:10] = (55).to_bytes(4, "big")
    raw.send(bytes(body))
    name, reply = await raw.recv()
    assert (name, reply.context, reply.retval) == ("ip_route_add_del_reply", 55, -171)
    await raw.close()


async def test_ipv6_routes(client: VppClient) -> None:
    loop = (await client.call("create_loopback")).sw_if_index
    path = route_path(loop, "2001:db8::2", proto=1)
    await client.call("ip_route_add_del", route=route("2001:db8:1::/48", [path]))
    routes = await dump_routes(client, v6=True)
    assert "::/0" in routes and "2001:db8:1::/48" in routes


# -- fault API, strict mode, counters --------------------------------------------------


async def test_restart_wipes_state_and_changes_pid(sim: Simulator) -> None:
    assert sim.path
    c = VppClient(sim.path, probe_interval=None, reconnect=False)
    await c.connect()
    await c.call("create_loopback")
    old = sim.state.vpe_pid
    new = sim.restart()
    assert new != old
    await eventually(lambda: not c.connected)
    await c.close()
    c = VppClient(sim.path, probe_interval=None)
    await c.connect()
    assert c.vpe_pid == new
    assert [d.interface_name for d in await c.dump("sw_interface_dump")] == ["local0"]
    loop = (await c.call("create_loopback")).sw_if_index
    assert loop >= 1  # renumbered: may start anywhere after local0
    await c.close()


async def test_inject_error_and_latency(sim: Simulator, client: VppClient) -> None:
    sim.inject_error("create_loopback", -126, count=2)
    assert await rv(client, "create_loopback") == -126
    assert await rv(client, "create_loopback") == -126
    assert await rv(client, "create_loopback") == 0
    assert sim.stats["injected_errors"] == 2
    sim.inject_error("sw_interface_set_flags", -2, count=None, match={"sw_if_index": 5})
    assert await rv(client, "sw_interface_set_flags", sw_if_index=5, flags=1) == -2
    assert await rv(client, "sw_interface_set_flags", sw_if_index=1, flags=1) == 0
    with pytest.raises(ValueError, match="does not handle"):
        sim.inject_error("no_such_message", -1)
    until = time.time() + 0.5
    sim.inject_error("show_version", -1, count=None, until=until)
    assert await rv(client, "show_version") == -1
    async with asyncio.timeout(10):  # answered with the error until the fault's end
        while (got := await rv(client, "show_version")) == -1:
            await asyncio.sleep(0.05)
    assert got == 0 and time.time() >= until
    assert await rv(client, "show_version") == 0
    sim.clear_faults()
    # latency keeps per-connection order
    sim.set_latency(0.02, "show_version")
    results = await asyncio.gather(
        client.call("show_version"), client.call("control_ping"), client.call("show_version")
    )
    assert [type(r).__name__ for r in results] == [
        "show_version_reply",
        "control_ping_reply",
        "show_version_reply",
    ]
    sim.set_latency(0)
    sim.clear_faults()


async def test_drift_and_strict_violations(sim: Simulator, client: VppClient) -> None:
    events: list[Any] = []
    client.subscribe("sw_interface_event", events.append)
    await client.call("want_interface_events", enable_disable=True, pid=3)
    a = (await client.call("create_loopback")).sw_if_index
    b = (await client.call("create_loopback")).sw_if_index
    await client.call("sw_interface_set_l2_bridge", rx_sw_if_index=a, bd_id=3)
    await client.call("ip_route_add_del", route=route("9.0.0.0/8", [route_path(b, "1.2.3.4")]))
    assert sim.counters()["violations"] == 0
    await client.call("delete_loopback", sw_if_index=a)  # still in bd 3
    sim.drift("delete_interface", name="loop1")  # route 9/8 goes through it
    assert sim.counters()["violations"] == 2
    assert any("bridge domain" in v for v in sim.dump_state()["violations"])
    await eventually(lambda: (b, 0, True) in [(e.sw_if_index, e.flags, e.deleted) for e in events])
    assert "loop1" not in await names(client)
    with pytest.raises(ValueError, match="no such interface"):
        sim.drift("delete_interface", name="nope")
    with pytest.raises(ValueError, match="unknown drift action"):
        sim.drift("explode")


async def test_write_counters(sim: Simulator, client: VppClient) -> None:
    sim.reset_counters()
    loop = (await client.call("create_loopback")).sw_if_index
    await client.call("sw_interface_set_flags", sw_if_index=loop, flags=1)
    await client.call("sw_interface_set_flags", sw_if_index=loop, flags=1)  # no change
    await client.call("bridge_domain_add_del_v2", bd_id=4)
    await client.call("ip_route_add_del", is_add=False, route=route("8.0.0.0/8", []))
    await client.dump("sw_interface_dump")
    c = sim.counters()
    assert c["writes"]["interface"] == {"create": 1, "update": 1, "delete": 0, "noop": 1}
    assert c["writes"]["bridge_domain"]["create"] == 1
    assert c["writes"]["route"]["noop"] == 1
    assert c["write_ops"] == 5 and c["changes"] == 3
    json.dumps(sim.dump_state())  # JSON-able


# -- admin HTTP and command line -------------------------------------------------------


def _http(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_admin_http(sim: Simulator, client: VppClient) -> None:
    admin = AdminServer(sim)
    host, port = await admin.start("127.0.0.1", 0)
    base = f"http://{host}:{port}"
    try:
        await client.call("create_loopback")
        status, state = await asyncio.to_thread(_http, base + "/state")
        assert status == 200 and [i["name"] for i in state["interfaces"]] == ["local0", "loop0"]
        status, _ = await asyncio.to_thread(
            _http, base + "/fault/item", {"message": "create_loopback", "retval": -126}
        )
        assert status == 200
        assert await rv(client, "create_loopback") == -126
        status, err = await asyncio.to_thread(_http, base + "/fault/item", {"retval": 1})
        assert status == 400 and "message" in err["error"]
        status, _ = await asyncio.to_thread(
            _http, base + "/fault/drift", {"action": "set_admin", "name": "loop0", "up": True}
        )
        assert status == 200 and sim.state.by_name("loop0").admin_up  # type: ignore[union-attr]
        status, _ = await asyncio.to_thread(_http, base + "/fault/latency", {"seconds": 0})
        assert status == 200
        status, counters = await asyncio.to_thread(_http, base + "/counters")
        assert counters["writes"]["interface"]["create"] == 1
        status, _ = await asyncio.to_thread(_http, base + "/nope")
        assert status == 404
        old = sim.state.vpe_pid
        status, out = await asyncio.to_thread(_http, base + "/fault/restart", {})
        assert status == 200 and out["vpe_pid"] != old
        status, out = await asyncio.to_thread(_http, base + "/fault/drop", {})
        assert status == 200
    finally:
        await admin.stop()


async def test_vppsim_command(sock_path: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "datasync.agent.cli",
        "vppsim",
        "--socket",
        sock_path,
        "--http",
        "127.0.0.1:0",
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        lines = []
        async with asyncio.timeout(20):
            while not any("listening on" in line for line in lines):
                lines.append((await proc.stderr.readline()).decode())
        assert any("admin HTTP on http://127.0.0.1:" in line for line in lines)
        c = VppClient(sock_path, probe_interval=None)
        await c.connect()
        assert (await c.call("show_version")).program == "vpe"
        await c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            rc = await proc.wait()
    assert rc == 0
    assert not os.path.exists(sock_path)  # noqa: ASYNC240 - the process has exited


async def test_random_garbage_never_breaks_the_server(sim: Simulator) -> None:
    import random

    rng = random.Random(7)
    raw = await Raw.open(sim)
    await raw.handshake()
    # every handled request but those that legitimately end or move the connection
    skip = {"sockclnt_create", "sockclnt_delete", "sock_init_shm"}
    names = [n for n in sim.ids if sim.handles(n) and n not in skip]
    for _ in range(300):
        name = rng.choice(names)
        body = bytearray(raw.enc(name, context=rng.randrange(1 << 32)))
        # keep id and client_index, scramble the rest: every handler must cope
        for i in range(10, len(body)):
            if rng.random() < 0.3:
                body[i] = rng.randrange(256)
        if rng.random() < 0.3:
            body = body[: rng.randrange(2, len(body) + 1)]
        raw.send(bytes(body))
    raw.send(raw.enc("control_ping", context=0xABC))
    async with asyncio.timeout(10):
        while True:
            name, reply = await raw.recv(wait=5)
            if name == "control_ping_reply" and reply.context == 0xABC:
                break
    await raw.close()
    # and a fresh client is served normally
    c = VppClient(sim.path or "", probe_interval=None)
    await c.connect()
    assert (await c.call("show_version")).retval == 0
    await c.close()
