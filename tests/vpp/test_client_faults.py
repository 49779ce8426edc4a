"""VppClient fault handling found in review: close() ends waiters, reconnect never stops,
the health probe tolerates the client's own backlog, an oversized shm message fails alone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from datasync.errors import ClosedError
from datasync.vpp.client import (
    VppClient,
    VppConnectionError,
    VppMessageTooLargeError,
    VppTimeoutError,
)
from datasync.vpp.defs import load_api_dir
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
    await eventually(lambda: len(sim._conns) == 1)  # the half-made connection was not leaked


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


async def test_probe_queued_behind_own_work_is_not_a_failure(
    sim: Simulator, make_client: Any
) -> None:
    faults = Faults()
    c = await make_client(on_fault=faults, probe_interval=0.02, probe_timeout=0.3, probe_failures=1)
    # a slow but alive VPP: replies keep coming, every 10 ms, for about a second; the
    # probe's ping waits behind all of them, far longer than probe_timeout (which is still
    # 30 reply intervals, so a busy test machine's pauses are not a silent VPP)
    sim.set_latency(0.01)
    replies = await c.call_many("show_version", [None] * 100)
    sim.clear_faults()
    assert len(replies) == 100
    assert faults.kinds() == []
    assert c.stats["disconnects"] == 0


async def test_probe_abort_is_reported_as_a_probe_failure(sim: Simulator, make_client: Any) -> None:
    faults = Faults()
    c = await make_client(on_fault=faults, probe_interval=0.05, probe_timeout=0.05, reconnect=False)
    sim.set_latency(10.0)  # VPP hangs: nothing comes back at all
    call = asyncio.ensure_future(c.call("show_version"))
    with pytest.raises(VppConnectionError, match="health probe failed"):
        await asyncio.wait_for(call, 5)
    assert faults.kinds() == ["unresponsive", "disconnected"]
    assert faults.seen[0][1]["misses"] == 2  # the default: two misses in a row
    assert "health probe failed" in faults.seen[1][1]["error"]
    sim.clear_faults()


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
