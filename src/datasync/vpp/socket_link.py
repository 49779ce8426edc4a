"""VPP's API socket as a transport: its framing over AF_UNIX, as an asyncio Protocol.

``transport, table = await open(path, sink, defs)`` connects, performs the
``sockclnt_create`` handshake and returns the connected transport and the message
table. Frames are parsed in bulk from the receive buffer and handed to the sink as a
list of bodies per ``data_received``; outgoing bodies are framed and written in one
``write`` per batch.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable

from .defs import ApiDefinitions
from .errors import VppConnectionError, VppProtocolError
from .framing import MAX_FRAME, FrameReader, frame, frames
from .link import FrameSink, MessageTable, create_request, parse_create_reply

__all__ = ["FrameProtocol", "SocketTransport", "open"]


class FrameProtocol(asyncio.Protocol):
    """Reassembles frames from the byte stream; writes framed bodies with flow control."""

    def __init__(self, sink: FrameSink, max_frame: int = MAX_FRAME) -> None:
        self.sink = sink
        self.max_frame = max_frame
        self.transport: asyncio.Transport | None = None
        self._reader = FrameReader(max_frame)
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._lost = False
        self.lost_error: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        bodies = reader.feed(data)
        if reader.too_large:
            if not self._lost and self.lost_error is None:
                self._fail(
                    VppProtocolError(
                        f"VPP API frame of {reader.too_large} bytes exceeds {self.max_frame}"
                    )
                )
            return
        if bodies:
            self.sink.frames_received(bodies)

    def _fail(self, exc: BaseException) -> None:
        self.lost_error = exc
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        err: BaseException | None = self.lost_error or exc
        if err is None and self._reader.buffered:
            err = VppProtocolError(
                f"VPP closed the connection in the middle of a message ({self._reader.buffered} "
                "bytes of an incomplete frame)"
            )
        self._reader.clear()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(VppConnectionError("VPP API connection lost"))
                waiter.exception()  # retrieved: nobody may be waiting any more
        self._drain_waiters.clear()
        self.sink.transport_lost(err)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    async def drain(self) -> None:
        """Wait until the kernel buffer has room again (back-pressure from a slow peer)."""
        if self._lost:
            raise VppConnectionError("VPP API connection lost")
        if not self._paused:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        await waiter


class SocketTransport:
    """A connected VPP API socket: send framed bodies, receive them through a sink."""

    kind = "socket"
    max_body: int | None = None
    max_in_flight: int | None = None
    hold_abandoned = False
    says_goodbye = False

    def __init__(self, proto: FrameProtocol, transport: asyncio.Transport, path: str) -> None:
        self._proto = proto
        self._transport = transport
        self.path = path

    @classmethod
    async def connect(cls, path: str | os.PathLike[str], sink: FrameSink) -> SocketTransport:
        """Connect to the AF_UNIX socket ``path``; errors become :class:`VppConnectionError`."""
        path = os.fspath(path)
        loop = asyncio.get_running_loop()
        try:
            transport, proto = await loop.create_unix_connection(lambda: FrameProtocol(sink), path)
        except OSError as exc:
            raise VppConnectionError(f"cannot connect to VPP API socket {path}: {exc}") from exc
        return cls(proto, transport, path)

    @property
    def is_open(self) -> bool:
        return not self._transport.is_closing()

    def send(self, body: bytes) -> None:
        """Queue one body (framed) for writing."""
        self._transport.write(frame(body))

    def send_many(self, bodies: Iterable[bytes]) -> None:
        """Queue several bodies with one write."""
        self._transport.write(frames(bodies))

    async def drain(self) -> None:
        await self._proto.drain()

    def close(self) -> None:
        """Close after flushing what is queued."""
        self._transport.close()

    def abort(self) -> None:
        self._transport.abort()

    async def wait_closed(self) -> None:
        return None

    @property
    def frame_sink(self) -> Callable[[list[bytes]], None]:
        return self._proto.sink.frames_received


class _Handshake:
    """The sink until ``sockclnt_create_reply`` arrived; then frames go to ``sink``."""

    def __init__(self, sink: FrameSink, fut: asyncio.Future[bytes]) -> None:
        self.sink = sink
        self.fut = fut

    def frames_received(self, bodies: list[bytes]) -> None:
        if not self.fut.done():
            self.fut.set_result(bodies[0])
            bodies = bodies[1:]
        if bodies:
            self.sink.frames_received(bodies)

    def transport_lost(self, exc: BaseException | None) -> None:
        # lost after the reply: open() still returns, and the caller sees is_open False
        if not self.fut.done():
            self.fut.set_exception(
                VppConnectionError(f"VPP closed the connection during the handshake ({exc})")
            )


async def open(
    path: str | os.PathLike[str],
    sink: FrameSink,
    defs: ApiDefinitions,
    *,
    name: str = "datasync",
    connect_timeout: float = 5.0,
    require: Iterable[str] = (),
) -> tuple[SocketTransport, MessageTable]:
    """Connect to VPP's API socket ``path`` as client ``name`` and handshake.

    Frames after the handshake go to ``sink``. Raises :class:`VppConnectionError` (no
    socket, refused, no reply within ``connect_timeout``) or
    :class:`~datasync.vpp.errors.VppMessageError` (a message of ``require`` missing).
    """
    path = os.fspath(path)
    fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    # A connect cancelled just after the socket connected has asyncio close it, and its
    # loss then fails ``fut`` with nobody left to await it: mark it retrieved up front
    # (an await of it still raises).
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())
    handshake = _Handshake(sink, fut)
    transport = await SocketTransport.connect(path, handshake)
    try:
        transport.send(create_request(defs, name))
        async with asyncio.timeout(connect_timeout):
            body = await fut
        table = parse_create_reply(defs, body, require)
    except BaseException as exc:
        transport.abort()
        if not fut.done():
            fut.cancel()
        if isinstance(exc, TimeoutError):
            raise VppConnectionError(
                f"no sockclnt_create_reply from {path} within {connect_timeout:g} s"
            ) from exc
        raise
    transport._proto.sink = sink  # the handshake is over: no detour per frame
    return transport, table
