"""VPP message bodies over the project's shared-memory ring, the socket kept for liveness.

``transport, table = await open(path, sink, defs)`` handshakes on VPP's API socket,
negotiates the ring with ``sock_init_shm`` (the simulator offers it; a real VPP's shm is
not this ring) and returns the connected transport and the message table.
:class:`ShmPipe` drives one ring endpoint from the event loop; the simulator uses it too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from .defs import ApiDefinitions
from .errors import ShmError, VppConnectionError, VppMessageTooLargeError, VppProtocolError
from .framing import HEADER_LEN, MAX_FRAME, frame
from .link import HANDSHAKE_CONTEXT, FrameSink, MessageTable, create_request, parse_create_reply
from .socket_link import FrameProtocol

__all__ = ["RawSocket", "ShmPipe", "ShmTransport", "open"]

log = logging.getLogger("datasync.vpp.shm_link")


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
        from .shm import recv_fds_async

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
        if bodies and max(map(len, bodies)) > limit:  # one pass in C, mostly a no
            body = next(b for b in bodies if len(b) > limit)
            too_large = VppMessageTooLargeError(len(body), limit)
            kept = [b for b in bodies if len(b) <= limit]
            too_large.dropped = len(bodies) - len(kept)
            bodies = kept
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
    max_in_flight: int | None = None
    hold_abandoned = False
    says_goodbye = False

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
        from .shm import ShmSegment

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

    async def wait_closed(self) -> None:
        return None


async def open(
    path: str | os.PathLike[str],
    sink: FrameSink,
    defs: ApiDefinitions,
    *,
    name: str = "datasync",
    connect_timeout: float = 5.0,
    require: Iterable[str] = (),
    shm_size: int = 4 << 20,
) -> tuple[ShmTransport, MessageTable]:
    """Connect to VPP's API socket ``path``, handshake, and move the bodies to the
    shared-memory ring that ``sock_init_shm`` (asking for ``shm_size`` bytes) sets up.

    The handshake runs on a raw socket with exact reads: the ring's fds arrive with
    SCM_RIGHTS after ``sock_init_shm_reply``, and a stream transport would drop them.
    """
    path = os.fspath(path)
    raw = await RawSocket.connect(path)
    try:
        async with asyncio.timeout(connect_timeout):
            await raw.send(create_request(defs, name))
            table = parse_create_reply(
                defs, await raw.recv(), (*require, "sock_init_shm", "sock_init_shm_reply")
            )
            init_id = table.name_to_id["sock_init_shm"]
            await raw.send(
                table.by_id[init_id][1].encode(
                    init_id,
                    {
                        "client_index": table.client_index,
                        "context": HANDSHAKE_CONTEXT,
                        "requested_size": shm_size,
                    },
                )
            )
            body = await raw.recv()
            entry = table.by_id.get((body[0] << 8) | body[1]) if len(body) >= 2 else None
            if entry is None or entry[0] != "sock_init_shm_reply":
                raise VppProtocolError("expected sock_init_shm_reply")
            reply = entry[1].decode(body)
            if reply.retval != 0:
                raise VppConnectionError(
                    f"VPP refused shared memory (sock_init_shm retval {reply.retval})"
                )
            _payload, fds = await raw.recv_fds(3)
            transport = await ShmTransport.start(raw, fds, sink)
    except BaseException as exc:
        raw.close()
        if isinstance(exc, TimeoutError):
            raise VppConnectionError(
                f"shared memory handshake with {path} took over {connect_timeout:g} s"
            ) from exc
        raise
    return transport, table
