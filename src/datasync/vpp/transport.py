"""The VPP API socket transport: VPP's 16-byte framing over AF_UNIX, as an asyncio Protocol.

Every frame is a ``>QII`` header (only the big-endian ``data_len`` at bytes 8..11 means
anything; VPP sends garbage in the first 8 bytes) followed by the message body. Frames
are parsed in bulk from the receive buffer and handed up as a list of bodies per
``data_received``; outgoing bodies are framed and written in one ``write`` per batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ..errors import DatasyncError

log = logging.getLogger("datasync.vpp.transport")

__all__ = [
    "MAX_FRAME",
    "FrameProtocol",
    "FrameSink",
    "RawSocket",
    "ShmPipe",
    "ShmTransport",
    "SocketTransport",
    "VppConnectionError",
    "VppMessageTooLargeError",
    "VppProtocolError",
    "frame",
]

_HDR = struct.Struct(">QII")
HEADER_LEN = 16
#: a frame longer than this is treated as garbage (VPP's largest, get_api_json, is ~1.3 MB)
MAX_FRAME = 64 << 20


class VppConnectionError(DatasyncError, ConnectionError):
    """The VPP API connection is down, could not be made, or was lost mid-call."""

    retriable = True


class VppProtocolError(VppConnectionError):
    """The peer sent something that is not VPP's framing (the connection is dropped)."""


class VppMessageTooLargeError(DatasyncError, ValueError):
    """One message body is larger than the transport can ever carry (e.g. the shm ring).

    Only that message fails; the connection and every other call are unaffected.
    """

    def __init__(self, size: int, limit: int, name: str | None = None) -> None:
        self.size = size
        self.limit = limit
        self.name = name
        #: how many bodies of the batch were left out for being too large
        self.dropped = 1
        what = f"VPP message {name!r}" if name else "a VPP message"
        super().__init__(
            f"{what} of {size} bytes is larger than the transport carries ({limit} bytes max)"
        )


def frame(body: bytes) -> bytes:
    """One body with its 16-byte header."""
    return _HDR.pack(0, len(body), 0) + body


class FrameSink(Protocol):
    """What a transport hands frames and connection loss to."""

    def frames_received(self, bodies: list[bytes]) -> None: ...

    def transport_lost(self, exc: BaseException | None) -> None: ...


class FrameProtocol(asyncio.Protocol):
    """Reassembles frames from the byte stream; writes framed bodies with flow control."""

    def __init__(self, sink: FrameSink, max_frame: int = MAX_FRAME) -> None:
        self.sink = sink
        self.max_frame = max_frame
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._lost = False
        self.lost_error: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data  # common case: whole frames in one read, no copy into the buffer
        bodies = []
        pos = 0
        end = len(view)
        max_frame = self.max_frame
        while end - pos >= HEADER_LEN:
            length = int.from_bytes(view[pos + 8 : pos + 12], "big")
            if length > max_frame:
                self._fail(VppProtocolError(f"VPP API frame of {length} bytes exceeds {max_frame}"))
                return
            stop = pos + HEADER_LEN + length
            if stop > end:
                break
            bodies.append(bytes(view[pos + HEADER_LEN : stop]))
            pos = stop
        if view is buf:
            if pos:
                del buf[:pos]
        elif pos < end:
            buf += data[pos:]
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
        if err is None and self._buf:
            err = VppProtocolError(
                f"VPP closed the connection in the middle of a message ({len(self._buf)} bytes "
                "of an incomplete frame)"
            )
        self._buf.clear()
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
        self._transport.write(_HDR.pack(0, len(body), 0) + body)

    def send_many(self, bodies: Iterable[bytes]) -> None:
        """Queue several bodies with one write."""
        parts = []
        pack = _HDR.pack
        for body in bodies:
            parts.append(pack(0, len(body), 0))
            parts.append(body)
        self._transport.write(b"".join(parts))

    async def drain(self) -> None:
        await self._proto.drain()

    def close(self) -> None:
        """Close after flushing what is queued."""
        self._transport.close()

    def abort(self) -> None:
        self._transport.abort()

    @property
    def frame_sink(self) -> Callable[[list[bytes]], None]:
        return self._proto.sink.frames_received


class RawSocket:
    """A non-blocking AF_UNIX socket read frame by frame, exactly (used before shm is set up).

    Reads never run past the current frame, so the SCM_RIGHTS message that follows
    ``sock_init_shm_reply`` is received with its fds by :meth:`recv_fds`.
    """

    def __init__(self, sock: socket.socket, path: str) -> None:
        self.sock = sock
        self.path = path
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, path: str | os.PathLike[str]) -> RawSocket:
        path = os.fspath(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, path)
        except OSError as exc:
            sock.close()
            raise VppConnectionError(f"cannot connect to VPP API socket {path}: {exc}") from exc
        return cls(sock, path)

    async def send(self, body: bytes) -> None:
        try:
            await self._loop.sock_sendall(self.sock, frame(body))
        except OSError as exc:
            raise VppConnectionError(f"VPP API socket {self.path}: {exc}") from exc

    async def _exactly(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                k = await self._loop.sock_recv_into(self.sock, view[got:])
            except OSError as exc:
                raise VppConnectionError(f"VPP API socket {self.path}: {exc}") from exc
            if k == 0:
                raise VppConnectionError("VPP closed the connection during the handshake")
            got += k
        return bytes(buf)

    async def recv(self) -> bytes:
        """The next frame's body."""
        hdr = await self._exactly(HEADER_LEN)
        length = int.from_bytes(hdr[8:12], "big")
        if length > MAX_FRAME:
            raise VppProtocolError(f"VPP API frame of {length} bytes exceeds {MAX_FRAME}")
        return await self._exactly(length)

    async def recv_fds(self, maxfds: int) -> tuple[bytes, list[int]]:
        from .shm import ShmError, recv_fds_async

        try:
            return await recv_fds_async(self.sock, maxfds)
        except ShmError as exc:
            raise VppConnectionError(f"shared memory fds not received: {exc}") from exc

    def close(self) -> None:
        self.sock.close()


class ShmPipe:
    """Drives one shared-memory ring endpoint from the event loop, without a task.

    Frames read from the ring are handed to ``on_bodies`` straight from the eventfd
    callback (no task switch per batch: that hop is what makes a ring slower than a
    socket for request/reply). Writes go into the ring at once; when it is full they wait
    in order for the peer to make room. A broken or closed ring calls ``on_closed``.
    """

    #: ring reads per wake-up before yielding to the loop (a flood must not starve it)
    ROUNDS = 64

    def __init__(
        self,
        endpoint: Any,
        on_bodies: Callable[[list[bytes]], None],
        on_closed: Callable[[BaseException], None],
        *,
        max_bytes: int = 1 << 18,
    ) -> None:
        from .shm import frame_size

        self._ep = endpoint
        self._frame_size = frame_size
        self._on_bodies = on_bodies
        self._on_closed = on_closed
        self._max_bytes = max_bytes
        #: the largest body the ring can ever hold
        self.max_body: int = endpoint.max_body
        self._pending: deque[bytes] = deque()
        self._loop = asyncio.get_running_loop()
        self._fd = endpoint.fileno()
        self.closed = False
        self._loop.add_reader(self._fd, self._on_wake)
        self._loop.call_soon(self._pump)  # frames the peer wrote before we watched

    def _on_wake(self) -> None:
        self._ep.ack()
        self._pump()

    def _pump(self) -> None:
        if self.closed:
            return
        ep = self._ep
        try:
            if self._pending:
                self._flush()
            for _ in range(self.ROUNDS):
                msgs = ep.recv_many(self._max_bytes)
                if msgs:
                    self._on_bodies(msgs)
                    if self.closed:
                        return
                elif not ep.arm_recv():
                    return  # armed: the peer signals the eventfd on its next write
            self._loop.call_soon(self._pump)
        except Exception as exc:  # ShmClosedError and friends: the pipe is done
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if not self.closed:
            self.close()
            self._on_closed(exc)

    def write_many(self, bodies: list[bytes]) -> None:
        """Queue bodies in order; raises :class:`VppConnectionError` once the ring is gone.

        A body larger than the ring is left out (it would break the ring for everyone):
        the others are written, then :class:`VppMessageTooLargeError` names the first.
        """
        if self.closed:
            raise VppConnectionError("shared memory ring is closed")
        limit = self.max_body
        too_large: VppMessageTooLargeError | None = None
        for body in bodies:
            if len(body) > limit:
                too_large = VppMessageTooLargeError(len(body), limit)
                kept = [b for b in bodies if len(b) <= limit]
                too_large.dropped = len(bodies) - len(kept)
                bodies = kept
                break
        if bodies:
            self._write(bodies)
        if too_large is not None:
            raise too_large

    def _write(self, bodies: list[bytes]) -> None:
        if self._pending:
            self._pending.extend(bodies)
            return
        try:
            n = self._ep.send_many(bodies)
            if n < len(bodies):
                self._pending.extend(bodies[n:])
                self._flush()
        except Exception as exc:  # a ShmError from the ring (or its flush): the pipe is done
            self._fail(exc)
            raise VppConnectionError(f"shared memory ring: {exc}") from exc

    def _flush(self) -> None:
        pending = self._pending
        ep = self._ep
        while pending:
            batch = [pending[i] for i in range(min(256, len(pending)))]
            n = ep.send_many(batch)
            for _ in range(n):
                pending.popleft()
            if n == 0 and not ep.arm_send(self._frame_size(len(pending[0]))):
                return  # armed: the peer signals once it read enough

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._pending.clear()
        if not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._ep.close()


class _ShmControl(FrameProtocol):
    """The socket of an shm connection: carries liveness (and any stray frame)."""

    def __init__(self, sink: FrameSink, owner: ShmTransport) -> None:
        super().__init__(sink)
        self.owner = owner

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._teardown()
        if self.owner.lost_error is not None and self.lost_error is None:
            self.lost_error = self.owner.lost_error
        super().connection_lost(exc)


class ShmTransport:
    """VPP message bodies over the project's shared-memory ring, socket kept for liveness.

    Negotiated on the VPP socket with ``sock_init_shm``: the server answers
    ``sock_init_shm_reply`` and passes the segment fds with SCM_RIGHTS ("fdmsg").
    """

    kind = "shm"

    def __init__(self, segment: Any, path: str) -> None:
        self._segment = segment
        self._pipe: ShmPipe | None = None
        self.path = path
        self._transport: asyncio.Transport | None = None
        self.lost_error: BaseException | None = None
        self._down = False

    @classmethod
    async def start(cls, raw: RawSocket, fds: list[int], sink: FrameSink) -> ShmTransport:
        """Attach the segment from ``fds`` and move the socket under asyncio as control."""
        from .shm import ShmError, ShmSegment

        try:
            segment = ShmSegment.attach(fds)
            endpoint = segment.client_end()
        except ShmError as exc:
            raise VppConnectionError(f"cannot attach the shared memory segment: {exc}") from exc
        self = cls(segment, raw.path)
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_unix_connection(
                lambda: _ShmControl(sink, self), sock=raw.sock
            )
        except BaseException:
            self._teardown()
            raise
        self._transport = transport
        self._pipe = ShmPipe(endpoint, sink.frames_received, self._ring_closed)
        return self

    def _ring_closed(self, exc: BaseException) -> None:
        self.lost_error = VppConnectionError(f"shared memory ring closed: {exc}")
        if self._transport is not None:
            self._transport.abort()

    def _teardown(self) -> None:
        if self._down:
            return
        self._down = True
        if self._pipe is not None:
            self._pipe.close()
        self._segment.close()

    @property
    def is_open(self) -> bool:
        return not self._down

    def send(self, body: bytes) -> None:
        self.send_many([body])

    @property
    def max_body(self) -> int | None:
        """The largest body this connection carries (None once it is down)."""
        return None if self._down or self._pipe is None else self._pipe.max_body

    def send_many(self, bodies: Iterable[bytes]) -> None:
        if self._down or self._pipe is None:
            return
        try:
            self._pipe.write_many(list(bodies))
        except VppMessageTooLargeError as exc:
            # the client checks sizes before sending: this is a bug, but only that message's
            log.warning("shm transport dropped an outgoing message: %s", exc)
        except VppConnectionError:
            pass  # reported through _ring_closed

    async def drain(self) -> None:
        return None  # writes never block: a full ring queues them in order

    def close(self) -> None:
        self._teardown()
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self._teardown()
        if self._transport is not None:
            self._transport.abort()
