"""VppClient fault handling found in review: close() ends waiters, reconnect never stops,
the health probe tells a VPP busy with our backlog from a hung one, call_many fails with
the connection's loss, an oversized shm message fails alone."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import sys
from collections.abc import Callable
from typing import Any

import pytest

from datasync.errors import ClosedError
from datasync.vpp.client import (
    VppClient,
    VppConnectionError,
    VppMessageTooLargeError,
    VppTimeoutError,
)
from datasync.vpp.codec import codec_for
from datasync.vpp.defs import builtin_definitions, load_api_dir
from datasync.vpp.shm import ShmClosedError, ShmSegment
from datasync.vpp.sim import Simulator
from datasync.vpp.transport import ShmPipe
from tests.paths import VPP_API_REFERENCE

from .helpers import Faults, eventually

# -- close() ends everything that waits on the client ----------------------------------


async def test_close_ends_events_iteration(make_client: Any, task_baseline: Any) -> None:
    c = await make_client()
    got: list[Any] = []

    async def consume() -> str:
        async for ev in c.events("sw_interface_event"):
            got.append(ev)
        return "ended"

    consumer = asyncio.ensure_future(consume())
    await c.want("want_interface_events")
    await c.call("create_loopback")
    await eventually(lambda: len(got) == 1)
    await c.close()
    assert await asyncio.wait_for(consumer, 2) == "ended"
    assert not any(c._subscribers.values())
    # an iteration started after close() ends at once
    assert [ev async for ev in c.events("sw_interface_event")] == []
    task_baseline()


async def test_close_fails_wait_connected(sim: Simulator, make_client: Any) -> None:
    c = await make_client()
    sim.set_latency(10.0)  # keep the reconnect from completing
    sim.drop_connections()
    await eventually(lambda: not c.connected)
    waiter = asyncio.ensure_future(c.wait_connected())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await c.close()
    with pytest.raises(ClosedError):
        await asyncio.wait_for(waiter, 2)
    with pytest.raises(ClosedError):
        await c.wait_connected()
    sim.clear_faults()


# -- the reconnect loop never ends while disconnected ----------------------------------


async def test_lost_again_during_want_replay_keeps_reconnecting(
    sim: Simulator, make_client: Any
) -> None:
    faults = Faults()
    c = await make_client(on_fault=faults)
    await c.want("want_interface_events")
    sim.set_latency(0.3, "want_interface_events")  # the replay after reconnecting is slow ...
    sim.drop_connections()
    # reconnected, the replay in progress
    await eventually(lambda: any(p.name == "want_interface_events" for p in c._pending.values()))
    sim.drop_connections()  # ... and VPP drops us again in the middle of it
    sim.clear_faults()
    await eventually(lambda: "reconnected" in faults.kinds())
    assert c.connected
    assert faults.kinds() == ["disconnected", "disconnected", "reconnected"]
    # the registration was replayed on the connection that stayed up
    events: list[Any] = []
    c.subscribe("sw_interface_event", events.append)
    await c.call("create_loopback")
    await eventually(lambda: len(events) == 1)


async def test_reconnect_loop_survives_unexpected_errors(
    sim: Simulator, make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults = Faults()
    c = await make_client(on_fault=faults)
    await c.want("want_interface_events")
    replay = c._replay_wants
    failures = [RuntimeError("a bug in the replay")]

    async def flaky_replay() -> None:
        if failures:
            raise failures.pop()
        await replay()

    monkeypatch.setattr(c, "_replay_wants", flaky_replay)
    sim.drop_connections()
    await eventually(lambda: "reconnected" in faults.kinds())
    assert not failures and c.connected
    await eventually(lambda: len(sim.connections) == 1)  # the half-made connection was not leaked


async def test_probe_restarts_a_missing_reconnect_loop(sim: Simulator, make_client: Any) -> None:
    faults = Faults()
    c = await make_client(on_fault=faults, probe_interval=0.05)
    sim.set_latency(10.0, "control_ping")  # the reconnect loop cannot finish ...
    sim.drop_connections()
    await eventually(lambda: c._reconnect_task is not None)
    task = c._reconnect_task
    assert task is not None
    task.cancel()  # ... and dies (as a bug would make it)
    await asyncio.gather(task, return_exceptions=True)
    sim.clear_faults()
    await eventually(lambda: "reconnected" in faults.kinds())
    assert c.connected


# -- the health probe: any frame is proof of life --------------------------------------

DEFS = builtin_definitions()


class InOrderVpp:
    """A VPP that handles each connection strictly in order, one request at a time, and
    answers as it goes: ``cost(n)`` is how long the n-th request takes (a slow operation
    such as a tap creation), ``hang()`` (or ``hang_at``, a count of requests) stops it
    answering anything (SIGSTOP), and ``drop_at`` closes the connection after that many
    requests."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.ids: dict[str, int] = {"sockclnt_create": 15, "sockclnt_create_reply": 16}
        for name in sorted(DEFS.messages):
            self.ids.setdefault(name, 100 + len(self.ids))
        self.names = {i: n for n, i in self.ids.items()}
        self.cost: Callable[[int], float] = lambda n: 0.0
        self.running = asyncio.Event()
        self.running.set()
        self.drop_at: int | None = None
        self.hang_at: int | None = None
        #: while hung, send an interface event this often (VPP's other work goes on)
        self.chatter: float | None = None
        self.handled = 0  # requests answered, over all connections
        self.pings = 0
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def hang(self) -> None:
        self.running.clear()

    def resume(self) -> None:
        self.running.set()

    async def __aenter__(self) -> InOrderVpp:
        self.server = await asyncio.start_unix_server(self._conn, self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server
        self.server.close()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    def _encode(self, name: str, fields: dict[str, Any]) -> bytes:
        body = codec_for(DEFS, name).encode(self.ids[name], fields)
        return struct.pack(">QII", 0, len(body), 0) + body

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        worker = asyncio.ensure_future(self._work(queue, w))
        self.tasks.add(worker)
        self.tasks.add(asyncio.ensure_future(self._chat(w)))
        try:
            while True:
                hdr = await r.readexactly(16)
                queue.put_nowait(await r.readexactly(struct.unpack(">I", hdr[8:12])[0]))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            worker.cancel()
            w.close()

    async def _chat(self, w: asyncio.StreamWriter) -> None:
        while not w.is_closing():
            if self.chatter is not None and not self.running.is_set():
                w.write(self._encode("sw_interface_event", {"sw_if_index": 1, "flags": 1}))
            await asyncio.sleep(self.chatter or 0.01)

    async def _work(self, queue: asyncio.Queue[bytes], w: asyncio.StreamWriter) -> None:
        while True:
            body = await queue.get()
            name = self.names[(body[0] << 8) | body[1]]
            if name == "sockclnt_create":
                table = [{"index": i, "name": DEFS.name_crc(n)} for n, i in self.ids.items()]
                w.write(
                    self._encode(
                        "sockclnt_create_reply",
                        {
                            "context": 124,
                            "response": 0,
                            "index": 1,
                            "count": len(table),
                            "message_table": table,
                        },
                    )
                )
                continue
            if self.hang_at is not None and self.handled >= self.hang_at:
                self.hang_at = None
                self.hang()
            await self.running.wait()
            cost = self.cost(self.handled)
            if cost:
                await asyncio.sleep(cost)  # VPP at work on this one request
            await self.running.wait()
            if self.drop_at is not None and self.handled >= self.drop_at:
                w.transport.abort()
                return
            self.handled += 1
            ctx = int.from_bytes(body[6:10], "big")
            if name == "control_ping":
                self.pings += 1
                w.write(self._encode("control_ping_reply", {"context": ctx, "vpe_pid": 77}))
            else:
                reply = DEFS.reply_of(name)
                assert reply is not None and not DEFS.is_dump(name)
                w.write(self._encode(reply, {"context": ctx, "retval": 0}))


def _addresses(n: int) -> list[dict[str, Any]]:
    return [
        {"sw_if_index": 1, "is_add": True, "prefix": f"10.{i >> 8}.{i & 255}.1/32"}
        for i in range(n)
    ]


async def test_probe_lets_a_slow_in_order_burst_finish(sock_path: str) -> None:
    faults = Faults()
    async with InOrderVpp(sock_path) as vpp:
        c = VppClient(
            sock_path, on_fault=faults, probe_interval=0.01, probe_timeout=0.03, probe_failures=1
        )
        await c.connect()
        try:
            # 2000 address adds with the default window (1024): every 200th one is a slow
            # operation (0.15 s, five probe_timeouts of silence with our requests queued
            # ahead of the probe's ping); the rest are answered as VPP goes
            vpp.cost = lambda n: 0.15 if n % 200 == 199 else 0.0
            pings = vpp.pings
            replies = await c.call_many("sw_interface_add_del_address", _addresses(2000))
            assert len(replies) == 2000 and all(r.retval == 0 for r in replies)
            assert faults.kinds() == [] and c.stats["disconnects"] == 0
            assert c.stats["max_in_flight_seen"] == c.max_in_flight
            assert vpp.pings > pings  # the probe ran all along, queued behind the burst
        finally:
            await c.close()


async def test_probe_finds_a_vpp_that_hangs_in_a_burst(sock_path: str) -> None:
    faults = Faults()
    async with InOrderVpp(sock_path) as vpp:
        c = VppClient(
            sock_path,
            on_fault=faults,
            probe_interval=0.02,
            probe_timeout=0.05,
            busy_timeout=0.5,
            backoff_initial=0.01,
            backoff_max=0.05,
        )
        await c.connect()
        try:
            vpp.hang_at = 600  # VPP hangs (SIGSTOP) in the middle of the burst
            burst = asyncio.ensure_future(
                c.call_many("sw_interface_add_del_address", _addresses(2000), timeout=60)
            )
            with pytest.raises(VppConnectionError, match="health probe failed") as err:
                await asyncio.wait_for(burst, 30)
            assert "requests outstanding" in str(err.value)
            kind, detail = faults.seen[0]
            assert kind == "unresponsive" and detail["outstanding"] > 0
            assert detail["silent_for"] >= 0.5 and detail["timeout"] == 0.5
            assert faults.kinds()[1] == "disconnected"
            vpp.resume()  # VPP is back: the client reconnects
            await eventually(lambda: "reconnected" in faults.kinds())
            assert (await c.call("control_ping")).vpe_pid == 77
        finally:
            await c.close()


async def test_call_many_losing_vpp_raises_the_loss(sock_path: str) -> None:
    async with InOrderVpp(sock_path) as vpp:
        c = VppClient(sock_path, probe_interval=None, reconnect=False)
        await c.connect()
        try:
            vpp.drop_at = vpp.handled + 300  # VPP goes away in the middle of the window
            single = asyncio.ensure_future(c.call("control_ping"))
            with pytest.raises(VppConnectionError) as err:
                await c.call_many("sw_interface_add_del_address", _addresses(2000))
            with pytest.raises(VppConnectionError) as other:
                await single
            # the error every other call got, not "not connected" from a later request
            assert "connection lost" in str(err.value)
            assert str(err.value) == str(other.value)
            assert c._pending == {} and c._in_flight == 0 and not c._window_waiters
            with pytest.raises(VppConnectionError, match="not connected"):
                await c.call_many("control_ping", [None] * 3)
        finally:
            await c.close()


async def test_probe_queued_behind_own_work_is_not_a_failure(
    sim: Simulator, make_client: Any
) -> None:
    faults = Faults()
    c = await make_client(on_fault=faults, probe_interval=0.02, probe_timeout=0.3, probe_failures=1)
    # a slow but alive VPP: replies keep coming, every 10 ms, for about a second; the
    # probe's ping waits behind all of them, far longer than probe_timeout (which is still
    # 30 reply intervals, so a busy test machine's pauses are not a silent VPP)
    sim.set_latency(0.01)
    # (a wide call timeout: this is about the probe, and a stressed GC slows the run)
    replies = await c.call_many("show_version", [None] * 100, timeout=60)
    sim.clear_faults()
    assert len(replies) == 100
    assert faults.kinds() == []
    assert c.stats["disconnects"] == 0


async def test_probe_abort_is_reported_as_a_probe_failure(sim: Simulator, make_client: Any) -> None:
    faults = Faults()
    c = await make_client(
        on_fault=faults, probe_interval=0.05, probe_timeout=0.05, busy_timeout=0.3, reconnect=False
    )
    sim.set_latency(10.0)  # VPP hangs: nothing comes back at all
    call = asyncio.ensure_future(c.call("show_version", timeout=30))
    with pytest.raises(VppConnectionError, match="health probe failed"):
        await asyncio.wait_for(call, 10)
    assert faults.kinds() == ["unresponsive", "disconnected"]
    # our call was ahead of the ping: VPP got busy_timeout, not two probe_timeouts
    assert faults.seen[0][1]["outstanding"] >= 1
    assert "health probe failed" in faults.seen[1][1]["error"]
    sim.clear_faults()


async def test_idle_hang_is_two_silent_probes(sock_path: str) -> None:
    faults = Faults()
    async with InOrderVpp(sock_path) as vpp:
        c = VppClient(
            sock_path, on_fault=faults, probe_interval=0.02, probe_timeout=0.05, reconnect=False
        )
        await c.connect()
        try:
            vpp.hang()  # nothing of ours outstanding but the probe's own ping
            await eventually(lambda: "disconnected" in faults.kinds())
            assert faults.kinds() == ["unresponsive", "disconnected"]
            assert faults.seen[0][1]["misses"] == 2  # the default: two misses in a row
        finally:
            vpp.resume()
            await c.close()


# -- shm: one message larger than the ring fails alone ---------------------------------


async def test_shm_request_larger_than_the_ring_fails_alone(
    sim: Simulator, make_client: Any
) -> None:
    faults = Faults()
    c = await make_client(transport="shm", shm_size=1 << 16, reconnect=False, on_fault=faults)
    other = asyncio.ensure_future(c.call("show_version"))
    with pytest.raises(VppMessageTooLargeError, match="tap_create_v3") as info:
        await c.call("tap_create_v3", tag="t" * 70000)
    assert info.value.size > info.value.limit
    assert str(info.value.size) in str(info.value)
    assert (await other).retval == 0
    assert (await c.call("show_version")).retval == 0
    assert c.connected and faults.kinds() == []
    # the window slot was given back
    assert c._in_flight == 0


async def test_shm_reply_larger_than_the_ring_is_dropped_alone(sock_path: str) -> None:
    # the full API set makes get_api_json's reply (~270 KB) larger than a 64 KB ring
    sim = Simulator(load_api_dir(VPP_API_REFERENCE), seed=1)
    await sim.start(sock_path)
    faults = Faults()
    c = VppClient(
        sock_path,
        transport="shm",
        shm_size=1 << 16,
        probe_interval=None,
        reconnect=False,
        on_fault=faults,
    )
    try:
        await c.connect()
        big = asyncio.ensure_future(c.call("get_api_json", timeout=0.5))
        other = asyncio.ensure_future(c.call("show_version"))
        with pytest.raises(VppTimeoutError):
            await big
        assert (await other).retval == 0
        assert sim.stats["dropped_too_large"] == 1
        assert (await c.call("show_version")).retval == 0
        assert c.connected and faults.kinds() == []
    finally:
        await c.close()
        await sim.stop()


class _EndClosingMidWrite:
    """A real ring endpoint whose peer goes away between two writes of one batch (the
    race a single process cannot produce on its own): the second write fails."""

    def __init__(self, end: Any) -> None:
        self._end = end
        self.max_body = end.max_body
        self._writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._end, name)

    def send_many(self, bodies: list[bytes]) -> int:
        self._writes += 1
        if self._writes > 1:
            raise ShmClosedError("the peer closed")
        return int(self._end.send_many(bodies[:1]))  # the ring takes only the first


async def test_shm_flush_error_stays_in_write_many() -> None:
    seg = ShmSegment.create(1 << 16)
    closed: list[BaseException] = []
    pipe = ShmPipe(_EndClosingMidWrite(seg.server_end()), lambda bodies: None, closed.append)
    try:
        # the second write happens in _flush: its ShmError must become the pipe's
        # VppConnectionError, not escape to the event loop's exception handler
        with pytest.raises(VppConnectionError, match="peer closed"):
            pipe.write_many([b"a" * 10, b"b" * 10])
        assert pipe.closed and len(closed) == 1
    finally:
        pipe.close()
        seg.close()


async def test_call_many_refused_request_lets_the_sent_ones_settle(
    sim: Simulator, make_client: Any
) -> None:
    c = await make_client(transport="shm", shm_size=1 << 16, reconnect=False)
    tags = [{"tag": "a"}, {"tag": "b"}, {"tag": "t" * 70000}, {"tag": "c"}]
    with pytest.raises(VppMessageTooLargeError, match="tap_create_v3"):
        await c.call_many("tap_create_v3", tags)
    # the two requests before the refused one were answered, none after it was sent
    assert c._pending == {} and c._in_flight == 0
    ifaces = await c.dump("sw_interface_dump")
    assert sorted(i.tag for i in ifaces if i.tag) == ["a", "b"]
    assert c.connected


async def test_events_alone_do_not_keep_a_hung_vpp_alive(sock_path: str) -> None:
    faults = Faults()
    async with InOrderVpp(sock_path) as vpp:
        c = VppClient(
            sock_path,
            on_fault=faults,
            probe_interval=0.02,
            probe_timeout=0.05,
            busy_timeout=0.4,
            reconnect=False,
        )
        await c.connect()
        try:
            vpp.chatter = 0.01  # requests go unanswered, but events keep coming
            vpp.hang()
            await eventually(lambda: "disconnected" in faults.kinds())
            kind, detail = faults.seen[0]
            assert kind == "unresponsive" and detail["events_only"] is True
            assert detail["silent_for"] >= 0.4
            assert "no reply (events only)" in faults.seen[1][1]["error"]
            assert c.stats["events"] > 0
        finally:
            vpp.resume()
            await c.close()


async def test_a_slot_handed_out_as_the_connection_dies_meets_the_loss(sock_path: str) -> None:
    # One read can carry the reply that frees a window slot and the end of the stream:
    # the waiter handed that slot resumes on a dead connection and must fail with the
    # loss its peers got, not "not connected to VPP (calling control_ping)".
    async with InOrderVpp(sock_path) as vpp:
        c = VppClient(sock_path, probe_interval=None, reconnect=False, max_in_flight=1)
        await c.connect()
        try:
            vpp.hang()
            first = asyncio.ensure_future(c.call("control_ping"))
            second = asyncio.ensure_future(c.call("control_ping"))
            await eventually(lambda: len(c._pending) == 1 and len(c._window_waiters) == 1)
            [ctx] = c._pending
            reply = codec_for(DEFS, "control_ping_reply").encode(
                vpp.ids["control_ping_reply"], {"context": ctx, "vpe_pid": 77}
            )
            transport = c._transport
            assert transport is not None
            c.frames_received([reply])  # the slot goes to the second call ...
            c.transport_lost(ConnectionResetError("peer reset"))  # ... and the stream ends
            transport.abort()
            assert (await first).vpe_pid == 77
            with pytest.raises(VppConnectionError, match="connection lost: peer reset"):
                await second
            assert c._in_flight == 0 and not c._window_waiters
        finally:
            vpp.resume()
            await c.close()


async def test_a_sigstopped_vpp_is_found_under_load_and_a_sigcont_one_reconnects(
    sock_path: str,
) -> None:
    # the simulator as its own process: SIGSTOP hangs it as it would a real VPP
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "datasync.agent.cli",
        "vppsim",
        "--socket",
        sock_path,
        stderr=asyncio.subprocess.PIPE,
    )
    faults = Faults()
    c = VppClient(
        sock_path,
        on_fault=faults,
        probe_interval=0.02,
        probe_timeout=0.05,
        busy_timeout=0.5,
        backoff_initial=0.01,
        backoff_max=0.05,
    )
    try:
        assert proc.stderr is not None
        line = await proc.stderr.readline()
        assert b"listening on" in line, line
        await c.connect()
        loop0 = await c.call("create_loopback")
        os.kill(proc.pid, signal.SIGSTOP)
        requests = [
            {
                "sw_if_index": loop0.sw_if_index,
                "is_add": True,
                "prefix": f"10.{i >> 8}.{i & 255}.1/32",
            }
            for i in range(2000)
        ]
        with pytest.raises(VppConnectionError, match="health probe failed"):
            await asyncio.wait_for(
                c.call_many("sw_interface_add_del_address", requests, timeout=60), 30
            )
        assert faults.kinds()[:2] == ["unresponsive", "disconnected"]
        assert faults.seen[0][1]["outstanding"] > 0
        os.kill(proc.pid, signal.SIGCONT)
        await eventually(lambda: "reconnected" in faults.kinds(), 20)
        assert faults.seen[-1][1]["vpp_restarted"] is False  # the same VPP, back again
        assert (await c.call("control_ping")).retval == 0
    finally:
        await c.close()
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)
