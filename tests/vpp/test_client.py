"""The asyncio VPP client against the simulator and against misbehaving fake servers."""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from datasync.errors import ClosedError
from datasync.vpp.client import (
    VppApiError,
    VppClient,
    VppConnectionError,
    VppMessageError,
    VppProtocolError,
    VppTimeoutError,
)
from datasync.vpp.defs import ApiDefinitions, CodecError, builtin_definitions
from datasync.vpp.sim import Simulator

from .helpers import Faults, eventually

DEFS = builtin_definitions()


# -- calls -----------------------------------------------------------------------------


async def test_call_dump_and_api_error(client: VppClient, task_baseline: Any) -> None:
    loop = await client.call("create_loopback", mac_address="02:00:00:00:00:01")
    assert loop.retval == 0
    details = await client.dump("sw_interface_dump", sw_if_index=loop.sw_if_index)
    assert [d.interface_name for d in details] == ["loop0"]
    with pytest.raises(VppApiError) as err:
        await client.call("delete_loopback", sw_if_index=99)
    assert err.value.retval == -2
    assert err.value.name == "INVALID_SW_IF_INDEX"
    assert isinstance(err.value.retriable, bool)  # policy: retvals.classify
    reply = await client.call("delete_loopback", sw_if_index=99, check=False)
    assert reply.retval == -2
    assert await client.dump("sw_interface_dump", sw_if_index=1234) == []
    task_baseline()


async def test_unknown_messages(client: VppClient) -> None:
    with pytest.raises(VppMessageError, match="no_such_thing"):
        await client.call("no_such_thing")
    with pytest.raises(VppMessageError, match="not a dump"):
        await client.dump("create_loopback")
    with pytest.raises(VppMessageError, match="reply, not an event"):
        client.subscribe("create_loopback_reply", print)
    with pytest.raises(CodecError, match="bogus_field"):
        await client.call("create_loopback", bogus_field=1)
    # the client still works after the refused calls
    assert (await client.call("control_ping")).retval == 0


async def test_pipelining_respects_window(sim: Simulator, make_client: Any) -> None:
    c = await make_client(max_in_flight=8)
    sim.set_latency(0.0005, "show_version")
    replies = await asyncio.gather(*(c.call("show_version") for _ in range(200)))
    assert len({r.context for r in replies}) == 200
    assert c.stats["max_in_flight_seen"] == 8
    sim.clear_faults()
    big = await make_client(max_in_flight=1024)
    replies = await big.call_many("control_ping", [None] * 3000)
    assert len({r.context for r in replies}) == 3000
    assert big.stats["max_in_flight_seen"] > 8


async def test_timeout_and_late_reply_dropped(sim: Simulator, client: VppClient) -> None:
    sim.set_latency(0.2, "show_version")
    with pytest.raises(VppTimeoutError) as err:
        await client.call("show_version", timeout=0.05)
    assert err.value.retriable and "show_version" in str(err.value)
    # the late reply arrives while the next call waits: it must not be delivered to it
    reply = await client.call("create_loopback")
    assert type(reply).__name__ == "create_loopback_reply"
    await eventually(lambda: client.stats["late_replies"] == 1)
    assert client.stats["timeouts"] == 1
    sim.clear_faults()
    # a dump that times out: its details and ping reply are dropped too
    sim.set_latency(0.2, "sw_interface_dump")
    with pytest.raises(VppTimeoutError):
        await client.dump("sw_interface_dump", timeout=0.05)
    sim.clear_faults()
    assert (await client.call("control_ping")).retval == 0
    assert client.stats["late_replies"] >= 2
    assert client._in_flight == 0


async def test_default_timeout_expires_calls(sim: Simulator, make_client: Any) -> None:
    c = await make_client(timeout=0.05, max_in_flight=4)
    sim.set_latency(0.1, "show_version")
    results = await asyncio.gather(
        *(c.call("show_version") for _ in range(6)), return_exceptions=True
    )
    assert all(isinstance(r, VppTimeoutError) for r in results)
    assert c.stats["timeouts"] == 6 and c._in_flight == 0
    sim.clear_faults()
    await eventually(lambda: c.stats["late_replies"] == 6, limit=5)
    assert (await c.call("control_ping")).retval == 0
    assert not c._deadlines


async def test_cancelled_call_frees_its_slot(sim: Simulator, make_client: Any) -> None:
    c = await make_client(max_in_flight=1)
    sim.set_latency(0.1, "show_version")
    sent = c.stats["requests"]
    task = asyncio.ensure_future(c.call("show_version"))
    await eventually(lambda: c.stats["requests"] == sent + 1)  # it holds the only slot
    waiting = asyncio.ensure_future(c.call("control_ping"))
    await eventually(lambda: len(c._window_waiters) == 1)  # queued behind it, not sent
    assert not waiting.done() and c.stats["requests"] == sent + 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await waiting).retval == 0
    sim.clear_faults()


# -- events ----------------------------------------------------------------------------


async def test_events_callback_and_iterator(sim: Simulator, client: VppClient) -> None:
    got: list[Any] = []
    sub = client.subscribe("sw_interface_event", got.append)
    client.subscribe("sw_interface_event", lambda e: 1 / 0)  # a buggy subscriber is contained
    await client.want("want_interface_events")
    it = client.events("sw_interface_event")
    first = asyncio.ensure_future(it.__anext__())
    loop = (await client.call("create_loopback")).sw_if_index
    event = await asyncio.wait_for(first, 2)
    assert (event.sw_if_index, event.deleted, event.pid) == (loop, False, os.getpid())
    await eventually(lambda: len(got) == 1)
    assert client.stats["event_callback_errors"] == 1
    sub.close()
    sub.close()
    await client.call("delete_loopback", sw_if_index=loop)
    event = await asyncio.wait_for(it.__anext__(), 2)
    assert event.deleted
    assert len(got) == 1
    await it.aclose()


# -- faults and reconnect --------------------------------------------------------------


async def test_disconnect_then_reconnect(sim: Simulator, make_client: Any) -> None:
    faults = Faults()
    c = await make_client(on_fault=faults)
    await c.want("want_interface_events")
    pid = c.vpe_pid
    sim.drop_connections()
    await eventually(lambda: "reconnected" in faults.kinds())
    assert faults.kinds()[0] == "disconnected"
    assert faults.seen[-1][1]["vpp_restarted"] is False
    assert "vpp_restarted" not in faults.kinds()
    assert c.vpe_pid == pid
    # the event registration was replayed on the new connection
    events: list[Any] = []
    c.subscribe("sw_interface_event", events.append)
    await c.call("create_loopback")
    await eventually(lambda: len(events) == 1)


async def test_restart_detected_by_vpe_pid(sim: Simulator, make_client: Any) -> None:
    faults = Faults()
    c = await make_client(on_fault=faults)
    await c.call("create_loopback")
    old = c.vpe_pid
    new = sim.restart()
    await eventually(lambda: "reconnected" in faults.kinds())
    assert faults.kinds() == ["disconnected", "vpp_restarted", "reconnected"]
    assert faults.seen[1][1] == {"old_vpe_pid": old, "vpe_pid": new}
    assert faults.seen[2][1]["vpp_restarted"] is True
    assert [d.interface_name for d in await c.dump("sw_interface_dump")] == ["local0"]


async def test_calls_in_flight_fail_on_disconnect(sim: Simulator, make_client: Any) -> None:
    c = await make_client(reconnect=False)
    sim.set_latency(0.5, "show_version")
    task = asyncio.ensure_future(c.call("show_version"))
    await eventually(lambda: c._in_flight == 1)  # sent, its reply 0.5 s away
    sim.drop_connections()
    with pytest.raises(VppConnectionError):
        await task
    with pytest.raises(VppConnectionError, match="not connected"):
        await c.call("control_ping")
    sim.clear_faults()


async def test_probe_detects_unresponsive_vpp(sim: Simulator, make_client: Any) -> None:
    faults = Faults()
    c = await make_client(on_fault=faults, probe_interval=0.05, probe_timeout=0.05)
    sim.set_latency(0.3, "control_ping")
    await eventually(lambda: "unresponsive" in faults.kinds())
    sim.clear_faults()
    await eventually(lambda: "reconnected" in faults.kinds())
    assert c.connected


async def test_reconnect_never_gives_up(sock_path: str, caplog: pytest.LogCaptureFixture) -> None:
    sim = Simulator(vpe_pid=1111)
    await sim.start(sock_path)
    faults = Faults()
    c = VppClient(
        sock_path, probe_interval=None, backoff_initial=0.01, backoff_max=0.03, on_fault=faults
    )
    await c.connect()
    await sim.stop()
    await eventually(lambda: "disconnected" in faults.kinds())
    caplog.set_level(logging.DEBUG, "datasync.vpp.client")
    failed = lambda: sum("reconnect attempt" in r.getMessage() for r in caplog.records)  # noqa: E731
    await eventually(lambda: failed() >= 3)  # several failed attempts
    sim2 = Simulator(vpe_pid=2222)
    await sim2.start(sock_path)
    await eventually(lambda: "reconnected" in faults.kinds())
    assert faults.seen[-1][1]["attempts"] > 2
    assert faults.seen[-1][1]["vpp_restarted"] is True  # a new simulator: a new vpe_pid
    await c.close()
    await sim2.stop()


async def test_close_says_goodbye_and_leaks_nothing(sim: Simulator, task_baseline: Any) -> None:
    assert sim.path
    c = VppClient(sim.path, probe_interval=0.01)
    await c.connect()
    pings = sim.message_counts.get("control_ping", 0)
    await eventually(lambda: sim.message_counts.get("control_ping", 0) >= pings + 2)  # probing
    assert len(sim.registrations) == 1
    await c.close()
    await c.close()  # idempotent
    await eventually(lambda: not sim.registrations)
    assert sim.message_counts["sockclnt_delete"] == 1
    with pytest.raises(ClosedError):
        await c.call("control_ping")
    task_baseline()


async def test_connect_errors(sock_dir: str, sim: Simulator) -> None:
    with pytest.raises(VppConnectionError, match="cannot connect"):
        await VppClient(os.path.join(sock_dir, "missing.sock")).connect()
    assert sim.path
    with pytest.raises(VppMessageError, match="not offered"):
        await VppClient(sim.path, require=["want_ip_neighbor_events"]).connect()


async def test_crc_mismatch_is_named(sim: Simulator) -> None:
    modules = []
    for m in DEFS.modules.values():
        raw = copy.deepcopy(dict(m.raw))
        for msg in raw["messages"]:
            if msg[0] == "create_loopback":
                msg[-1] = {**msg[-1], "crc": "0xdeadbeef"}
        modules.append(raw)
    defs = ApiDefinitions(modules)
    assert sim.path
    c = VppClient(sim.path, defs=defs, probe_interval=None, require=["create_loopback"])
    with pytest.raises(VppMessageError, match=r"CRC mismatch.*create_loopback_deadbeef"):
        await c.connect()
    c = VppClient(sim.path, defs=defs, probe_interval=None)
    await c.connect()
    with pytest.raises(VppMessageError, match="CRC mismatch"):
        await c.call("create_loopback")
    await c.close()


# -- misbehaving servers ---------------------------------------------------------------


class FakeVpp:
    """A server that does the handshake like the simulator, then runs a script."""

    def __init__(self, path: str, script: Callable[[Any, asyncio.StreamWriter], Awaitable[None]]):
        self.path = path
        self.script = script
        self.sim = Simulator()  # only for its message table and encoders
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FakeVpp:
        self.server = await asyncio.start_unix_server(self._conn, self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server
        self.server.close()
        for t in self.tasks:
            t.cancel()
        # a cancelled handler still runs until its next await: let it end before the
        # test checks for leaked tasks (the stock asyncio loop is slower to get there)
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await self.script(self, (r, w))  # type: ignore[arg-type]
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    async def read(self, r: asyncio.StreamReader) -> bytes:
        hdr = await r.readexactly(16)
        return await r.readexactly(struct.unpack(">I", hdr[8:12])[0])

    def frame(self, body: bytes) -> bytes:
        return struct.pack(">QII", 0, len(body), 0) + body

    async def handshake(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await self.read(r)
        table = [{"index": i, "name": n} for n, i in self.sim.message_table]
        w.write(
            self.frame(
                self.sim.encode(
                    "sockclnt_create_reply",
                    {
                        "context": 124,
                        "response": 0,
                        "index": 0x80000001,
                        "count": len(table),
                        "message_table": table,
                    },
                )
            )
        )
        body = await self.read(r)  # the client's first control_ping
        ctx = int.from_bytes(body[6:10], "big")
        self.ping(w, ctx)

    def ping(self, w: asyncio.StreamWriter, ctx: int) -> None:
        w.write(
            self.frame(
                self.sim.encode("control_ping_reply", {"context": ctx, "retval": 0, "vpe_pid": 42})
            )
        )


async def _fake_client(path: str, faults: Faults, **kw: Any) -> VppClient:
    c = VppClient(path, probe_interval=None, reconnect=False, on_fault=faults, **kw)
    await c.connect()
    return c


async def test_garbage_frame_length(sock_path: str, task_baseline: Any) -> None:
    async def script(fake: FakeVpp, rw: Any) -> None:
        r, w = rw
        await fake.handshake(r, w)
        await fake.read(r)
        w.write(struct.pack(">QII", 0, 0xFFFFFFF0, 0) + b"x" * 32)
        await r.read()

    faults = Faults()
    async with FakeVpp(sock_path, script):
        c = await _fake_client(sock_path, faults)
        with pytest.raises(VppProtocolError, match="exceeds"):
            await c.call("show_version")
        await eventually(lambda: faults.kinds() == ["disconnected"])
        await c.close()
    task_baseline()


async def test_peer_closes_mid_message(sock_path: str) -> None:
    async def script(fake: FakeVpp, rw: Any) -> None:
        r, w = rw
        await fake.handshake(r, w)
        await fake.read(r)
        w.write(struct.pack(">QII", 0, 100, 0) + b"\x00" * 10)
        await w.drain()

    faults = Faults()
    async with FakeVpp(sock_path, script):
        c = await _fake_client(sock_path, faults)
        with pytest.raises(VppConnectionError, match="middle of a message"):
            await c.call("show_version")
        await c.close()
    assert "middle of a message" in faults.seen[0][1]["error"]


async def test_unknown_id_and_truncated_reply(sock_path: str) -> None:
    async def script(fake: FakeVpp, rw: Any) -> None:
        r, w = rw
        await fake.handshake(r, w)
        body = await fake.read(r)  # show_version
        ctx = int.from_bytes(body[6:10], "big")
        w.write(fake.frame(b"\x7f\x00" + bytes(30)))  # an id the table never announced
        w.write(fake.frame(b"\x01"))  # shorter than any header
        reply = fake.sim.encode("show_version_reply", {"context": ctx, "program": "x"})
        w.write(fake.frame(reply[:20]))  # the right id and context, cut short
        body = await fake.read(r)  # control_ping
        fake.ping(w, int.from_bytes(body[6:10], "big"))
        await r.read()

    faults = Faults()
    async with FakeVpp(sock_path, script):
        c = await _fake_client(sock_path, faults)
        with pytest.raises(CodecError, match="show_version_reply"):
            await c.call("show_version")
        assert (await c.call("control_ping")).vpe_pid == 42
        assert c.stats["unknown_msg_id"] == 1
        assert c.stats["decode_errors"] == 2
        await c.close()
    assert faults.seen == []


async def test_handshake_failures(sock_path: str) -> None:
    async def wrong_first(fake: FakeVpp, rw: Any) -> None:
        r, w = rw
        await fake.read(r)
        w.write(fake.frame(fake.sim.encode("control_ping_reply", {"context": 124})))
        await r.read()

    async with FakeVpp(sock_path, wrong_first):
        with pytest.raises(VppProtocolError, match="sockclnt_create_reply"):
            await VppClient(sock_path, probe_interval=None).connect()

    async def hang_up(fake: FakeVpp, rw: Any) -> None:
        r, _w = rw
        await fake.read(r)

    async with FakeVpp(sock_path, hang_up):
        with pytest.raises(VppConnectionError, match="handshake"):
            await VppClient(sock_path, probe_interval=None).connect()

    async def silent(fake: FakeVpp, rw: Any) -> None:
        r, _w = rw
        await r.read()

    async with FakeVpp(sock_path, silent):
        with pytest.raises(VppConnectionError, match="no sockclnt_create_reply"):
            await VppClient(sock_path, probe_interval=None, connect_timeout=0.1).connect()


# -- shared-memory transport -----------------------------------------------------------


async def test_shm_transport_calls_dumps_events(
    sim: Simulator, make_client: Any, task_baseline: Any
) -> None:
    c = await make_client(transport="shm", shm_size=1 << 20)
    assert c._transport is not None and c._transport.kind == "shm"
    events: list[Any] = []
    c.subscribe("sw_interface_event", events.append)
    await c.want("want_interface_events")
    loops = await c.call_many("create_loopback", [None] * 500)
    assert [r.sw_if_index for r in loops] == list(range(1, 501))
    details = await c.dump("sw_interface_dump")
    assert len(details) == 501
    big = await c.call("get_api_json")  # a large reply through the ring
    assert big.json.startswith("[")
    await eventually(lambda: len(events) == 500)
    with pytest.raises(VppApiError):
        await c.call("delete_loopback", sw_if_index=9999)
    await c.close()
    await eventually(lambda: not sim.registrations)
    task_baseline()


async def test_shm_reconnects_after_restart(sim: Simulator, make_client: Any) -> None:
    faults = Faults()
    c = await make_client(transport="shm", on_fault=faults)
    await c.call("create_loopback")
    sim.restart()
    await eventually(lambda: "reconnected" in faults.kinds())
    assert faults.kinds() == ["disconnected", "vpp_restarted", "reconnected"]
    assert c._transport is not None and c._transport.kind == "shm"
    assert [d.interface_name for d in await c.dump("sw_interface_dump")] == ["local0"]


async def test_shm_refused_is_a_clear_error(sock_path: str) -> None:
    sim = Simulator(allow_shm=False)
    await sim.start(sock_path)
    try:
        c = VppClient(sock_path, transport="shm", probe_interval=None)
        with pytest.raises(VppConnectionError, match="refused shared memory"):
            await c.connect()
        with pytest.raises(ValueError, match="transport"):
            VppClient(sock_path, transport="carrier-pigeon")
    finally:
        await sim.stop()


async def test_connect_fails_cleanly_when_ping_unanswered(sim: Simulator) -> None:
    sim.set_latency(1.0, "control_ping")
    assert sim.path
    c = VppClient(sim.path, probe_interval=None, connect_timeout=0.1)
    with pytest.raises(VppTimeoutError):
        await c.connect()
    assert not c.connected
    await eventually(lambda: not sim.connections)  # the half-made connection was closed
    sim.clear_faults()
    await c.connect()
    assert c.vpe_pid == sim.state.vpe_pid
    await c.close()


async def test_shm_small_ring_wraps_and_waits_for_room(sim: Simulator, make_client: Any) -> None:
    # 64 KiB rings: the requests and replies wrap many times and fill the ring, so
    # both sides queue writes until the peer made room
    c = await make_client(transport="shm", shm_size=1 << 16, max_in_flight=4096)
    replies = await c.call_many("control_ping", [None] * 20000)
    assert len({r.context for r in replies}) == 20000
    assert len(await c.dump("sw_interface_dump")) == 1


async def test_connect_during_reconnect_waits_for_the_loop(
    sim: Simulator, make_client: Any
) -> None:
    faults = Faults()
    c = await make_client(on_fault=faults, backoff_initial=0.05, backoff_max=0.05)
    sim.drop_connections()
    await eventually(lambda: "disconnected" in faults.kinds())
    await c.connect()  # joins the reconnect loop's attempt
    assert c.connected
    await eventually(lambda: c._reconnect_task is None or c._reconnect_task.done())
    assert (await c.call("control_ping")).retval == 0  # the server saw every connection
    assert sim.stats["connections"] == 2  # the first one and one reconnect, no duplicate
