"""call_many's batch of requests (no future per request): replies settled in request
order whatever order they come in, a connection lost or a timeout with the batch half
answered, cancellation, API errors raised once everything settled, dumps in a batch, and
the window shared with plain calls. The VPP here is hung (it answers nothing) and the
tests hand the client its replies, so every interleaving is exact."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from datasync.vpp.client import (
    VppApiError,
    VppClient,
    VppConnectionError,
    VppTimeoutError,
    _batch_of,
)
from datasync.vpp.codec import codec_for
from datasync.vpp.sim import Simulator

from .helpers import eventually
from .test_client_faults import DEFS, InOrderVpp


def _reply(vpp: InOrderVpp, ctx: int, name: str = "control_ping_reply", **fields: Any) -> bytes:
    return codec_for(DEFS, name).encode(vpp.ids[name], {"context": ctx, **fields})


async def _hung_client(vpp: InOrderVpp, path: str, **kw: Any) -> VppClient:
    c = VppClient(path, probe_interval=None, reconnect=False, **kw)
    await c.connect()
    vpp.hang()
    return c


def _settled(c: VppClient) -> bool:
    return c._pending == {} and c._in_flight == 0 and not c._window_waiters


async def test_replies_in_any_order_come_back_in_request_order(sock_path: str) -> None:
    async with InOrderVpp(sock_path) as vpp:
        c = await _hung_client(vpp, sock_path)
        try:
            batch = asyncio.ensure_future(c.call_many("control_ping", [None] * 5))
            await eventually(lambda: len(c._pending) == 5)
            ctxs = list(c._pending)
            # answered backwards, in two batches of frames
            c.frames_received([_reply(vpp, ctx, vpe_pid=ctx) for ctx in ctxs[:1:-1]])
            assert not batch.done() and c._in_flight == 2
            c.frames_received([_reply(vpp, ctx, vpe_pid=ctx) for ctx in ctxs[1::-1]])
            assert [r.vpe_pid for r in await batch] == ctxs
            assert _settled(c) and c.stats["replies"] >= 5
        finally:
            vpp.resume()
            await c.close()


async def test_window_full_batch_half_answered_then_lost_fails_with_the_loss(
    sock_path: str,
) -> None:
    async with InOrderVpp(sock_path) as vpp:
        c = await _hung_client(vpp, sock_path, max_in_flight=4)
        try:
            batch = asyncio.ensure_future(c.call_many("control_ping", [None] * 10))
            await eventually(lambda: len(c._pending) == 4 and len(c._window_waiters) == 1)
            first = list(c._pending)
            c.frames_received([_reply(vpp, ctx) for ctx in first[:3]])
            # three slots freed: the batch goes on with three more requests
            await eventually(lambda: len(c._pending) == 4 and len(c._window_waiters) == 1)
            assert not batch.done()
            transport = c._transport
            assert transport is not None
            c.transport_lost(ConnectionResetError("peer reset"))
            transport.abort()
            with pytest.raises(VppConnectionError, match="connection lost: peer reset"):
                await batch
            assert _settled(c)
        finally:
            vpp.resume()
            await c.close()


async def test_all_sent_half_answered_then_lost_fails_with_the_loss(sock_path: str) -> None:
    async with InOrderVpp(sock_path) as vpp:
        c = await _hung_client(vpp, sock_path)
        try:
            single = asyncio.ensure_future(c.call("control_ping"))
            batch = asyncio.ensure_future(c.call_many("control_ping", [None] * 6))
            await eventually(lambda: len(c._pending) == 7)
            ctxs = list(c._pending)
            c.frames_received([_reply(vpp, ctx) for ctx in ctxs[1:4]])
            transport = c._transport
            assert transport is not None
            c.transport_lost(ConnectionResetError("peer reset"))
            transport.abort()
            with pytest.raises(VppConnectionError) as err:
                await batch
            with pytest.raises(VppConnectionError) as other:
                await single
            assert str(err.value) == str(other.value)
            assert _settled(c)
            with pytest.raises(VppConnectionError, match="not connected"):
                await c.call_many("control_ping", [None] * 2)
        finally:
            vpp.resume()
            await c.close()


async def test_timeout_in_the_middle_abandons_the_rest(sock_path: str) -> None:
    async with InOrderVpp(sock_path) as vpp:
        c = await _hung_client(vpp, sock_path, max_in_flight=4)
        try:
            batch = asyncio.ensure_future(c.call_many("control_ping", [None] * 8, timeout=0.3))
            await eventually(lambda: len(c._pending) == 4)
            ctxs = list(c._pending)
            c.frames_received([_reply(vpp, ctx) for ctx in ctxs[:2]])
            with pytest.raises(VppTimeoutError, match="control_ping"):
                await batch
            assert _settled(c) and c.stats["timeouts"] == 1
            late = list(c._timed_out)
            assert len(late) == 4  # two of the first run, two sent when their slots freed
            c.frames_received([_reply(vpp, ctx) for ctx in late])
            assert c.stats["late_replies"] == 4 and not c._timed_out
            vpp.resume()
            assert len(await c.call_many("control_ping", [None] * 3)) == 3
        finally:
            vpp.resume()
            await c.close()


async def test_cancelled_batch_gives_back_its_slots(sock_path: str) -> None:
    async with InOrderVpp(sock_path) as vpp:
        c = await _hung_client(vpp, sock_path, max_in_flight=3)
        try:
            batch = asyncio.ensure_future(c.call_many("control_ping", [None] * 5))
            await eventually(lambda: len(c._pending) == 3 and len(c._window_waiters) == 1)
            c.frames_received([_reply(vpp, next(iter(c._pending)))])
            batch.cancel()
            with pytest.raises(asyncio.CancelledError):
                await batch
            assert _settled(c) and len(c._timed_out) >= 2
            vpp.resume()
            assert (await c.call("control_ping")).retval == 0
        finally:
            vpp.resume()
            await c.close()


async def test_api_error_and_decode_error_are_raised_once_all_settled(sock_path: str) -> None:
    async with InOrderVpp(sock_path) as vpp:
        c = await _hung_client(vpp, sock_path)
        try:
            batch = asyncio.ensure_future(c.call_many("control_ping", [None] * 4))
            await eventually(lambda: len(c._pending) == 4)
            ctxs = list(c._pending)
            c.frames_received(
                [_reply(vpp, ctxs[0]), _reply(vpp, ctxs[2], retval=-2), _reply(vpp, ctxs[1])]
            )
            await asyncio.sleep(0)
            assert not batch.done()  # one still outstanding
            c.frames_received([_reply(vpp, ctxs[3], retval=-3)])
            with pytest.raises(VppApiError) as err:
                await batch
            assert err.value.retval == -2  # the first in request order
            # check=False: the replies as they are
            batch = asyncio.ensure_future(c.call_many("control_ping", [None] * 2, check=False))
            await eventually(lambda: len(c._pending) == 2)
            ctxs = list(c._pending)
            c.frames_received([_reply(vpp, ctx, retval=-1) for ctx in ctxs])
            assert [r.retval for r in await batch] == [-1, -1]
            # a reply that does not decode fails its request; ahead of a later API error
            batch = asyncio.ensure_future(c.call_many("control_ping", [None] * 3))
            await eventually(lambda: len(c._pending) == 3)
            ctxs = list(c._pending)
            truncated = _reply(vpp, ctxs[1])[:8]
            c.frames_received([_reply(vpp, ctxs[2], retval=-1), truncated, _reply(vpp, ctxs[0])])
            with pytest.raises(Exception, match="control_ping_reply") as bad:
                await batch
            assert not isinstance(bad.value, VppApiError)
            assert c.stats["decode_errors"] == 1 and _settled(c)
        finally:
            vpp.resume()
            await c.close()


async def test_plain_call_waiting_for_the_window_keeps_its_place(sock_path: str) -> None:
    async with InOrderVpp(sock_path) as vpp:
        c = await _hung_client(vpp, sock_path, max_in_flight=2)
        try:
            batch = asyncio.ensure_future(c.call_many("control_ping", [None] * 4))
            await eventually(lambda: len(c._pending) == 2 and len(c._window_waiters) == 1)
            single = asyncio.ensure_future(c.call("control_ping"))
            await eventually(lambda: len(c._window_waiters) == 2)
            ctxs = list(c._pending)
            c.frames_received([_reply(vpp, ctx) for ctx in ctxs])
            # the batch waited first: it gets the first slot, the call the second
            await eventually(lambda: len(c._pending) == 2 and len(c._window_waiters) == 1)
            batch_ctx, call_ctx = list(c._pending)
            assert _batch_of(c._pending[batch_ctx]) is not None
            assert _batch_of(c._pending[call_ctx]) is None
            c.frames_received([_reply(vpp, call_ctx, vpe_pid=9)])
            assert (await single).vpe_pid == 9
            await eventually(lambda: len(c._pending) == 2)
            while c._pending:
                c.frames_received([_reply(vpp, ctx) for ctx in list(c._pending)])
                await asyncio.sleep(0)
            assert len(await batch) == 4 and _settled(c)
        finally:
            vpp.resume()
            await c.close()


async def test_dumps_and_fields_in_a_batch(sim: Simulator, make_client: Any) -> None:
    c = await make_client()
    loops = await c.call_many("create_loopback", [None, {"mac_address": "02:00:00:00:00:07"}])
    assert len(loops) == 2
    dumps = await c.call_many("sw_interface_dump", [None, {"sw_if_index": loops[1].sw_if_index}])
    assert len(dumps[0]) >= 3 and [d.sw_if_index for d in dumps[1]] == [loops[1].sw_if_index]
    # a caller's context or client_index does not replace ours
    [pong] = await c.call_many("control_ping", [{"context": 5, "client_index": 99}])
    assert pong.retval == 0
    assert _settled(c) and not c._out
    assert await c.call_many("control_ping", []) == []


async def test_one_batch_of_frames_mixing_replies_events_and_garbage(sock_path: str) -> None:
    async with InOrderVpp(sock_path) as vpp:
        c = await _hung_client(vpp, sock_path)
        try:
            got: list[Any] = []
            c.subscribe("sw_interface_event", got.append)
            batch = asyncio.ensure_future(c.call_many("control_ping", [None] * 3))
            await eventually(lambda: len(c._pending) == 3)
            ctxs = list(c._pending)
            event = codec_for(DEFS, "sw_interface_event").encode(
                vpp.ids["sw_interface_event"], {"sw_if_index": 4, "flags": 1}
            )
            unknown = b"\xff\xf0" + _reply(vpp, ctxs[1])[2:]
            c.frames_received(
                [
                    _reply(vpp, ctxs[0], vpe_pid=1),
                    unknown,
                    _reply(vpp, ctxs[1], vpe_pid=2),
                    event,
                    b"\x00\x01",
                    _reply(vpp, ctxs[2], vpe_pid=3),
                    _reply(vpp, 0xFFFF0000),
                ]
            )
            assert [r.vpe_pid for r in await batch] == [1, 2, 3]
            assert [e.sw_if_index for e in got] == [4]
            stats = c.stats
            assert stats["unknown_msg_id"] == 1 and stats["decode_errors"] == 1
            assert stats["unsolicited"] == 1 and _settled(c)
        finally:
            vpp.resume()
            await c.close()
