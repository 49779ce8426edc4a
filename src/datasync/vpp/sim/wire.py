"""The simulator's side of the wire: one client connection, VPP's framing, pacing.

A :class:`Connection` reassembles frames (with the client's own
:class:`~datasync.vpp.framing.FrameReader`, so a header over the frame limit closes the
connection instead of waiting for gigabytes) and hands each body, in order, to its
:class:`Dispatcher`. A pipelined burst is answered as it goes, as VPP does: it is handled
in bounded slices and each slice's replies are written before the next one starts; a
long backlog pauses reading. After ``sock_init_shm`` the bodies travel over the
project's shared-memory ring; the socket stays open as the liveness channel.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

from ..errors import VppConnectionError, VppMessageTooLargeError
from ..framing import MAX_FRAME, FrameReader, frames
from ..shm_link import ShmPipe

__all__ = ["Connection", "Dispatcher", "Registration"]

log = logging.getLogger("datasync.vpp.sim")

# How much of a pipelined burst is handled before its replies are written and the loop
# runs again: a slice ends after this many messages or this much time, whichever first.
SLICE_MESSAGES = 256
SLICE_SECONDS = 0.005
# backlog (messages) above which the socket is not read, and below which it is again
BACKLOG_HIGH = 8192
BACKLOG_LOW = 2048


class Registration:
    """A client registered with sockclnt_create (VPP's api registration)."""

    __slots__ = ("conn", "handle", "interface_events_pid", "pool_index")

    def __init__(self, pool_index: int, conn: Connection) -> None:
        self.pool_index = pool_index
        self.handle = 0x80000000 | pool_index
        self.conn = conn
        self.interface_events_pid: int | None = None


class Dispatcher(Protocol):
    """What a connection needs of the server behind it."""

    stats: dict[str, int]

    def connection_opened(self, conn: Connection) -> None: ...

    def connection_closed(self, conn: Connection) -> None:
        """Forget ``conn`` and its registrations."""

    def process(self, conn: Connection, body: bytes) -> None:
        """Handle one request body (its replies are queued with ``conn.send``)."""

    def process_slice(
        self, conn: Connection, bodies: Sequence[bytes], start: int, end: int, deadline: float
    ) -> int:
        """Handle ``bodies[start:end]`` until ``conn`` closes or ``deadline``
        (``time.perf_counter``) passes; the index of the first body not handled."""

    def output_pending(self, conn: Connection) -> None:
        """``conn`` queued its first reply since the last flush."""

    def flush(self) -> None:
        """Write every connection's queued replies."""

    @property
    def delaying(self) -> bool:
        """True while latency is injected: bodies are then handled one at a time."""

    def latency_for(self, body: bytes) -> float: ...


class Connection(asyncio.Protocol):
    """One client socket: reassembles frames and feeds them to the dispatcher in order."""

    def __init__(self, server: Dispatcher) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader(MAX_FRAME)
        self.out: list[bytes] = []
        self.backlog: deque[bytes] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.registrations: list[Registration] = []
        self.closing = False
        self.shm: ShmPipe | None = None  # once shared memory is set up
        self.shm_segment: Any = None
        self.paused = False  # reading paused while the backlog is long

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.server.connection_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connection_closed(self)
        self.registrations.clear()
        if self.worker is not None and self.worker is not asyncio.current_task():
            self.worker.cancel()
        self.worker = None
        if self.shm is not None:
            self.shm.close()
            self.shm_segment.close()
            self.shm = self.shm_segment = None

    def close(self, abort: bool = False) -> None:
        """Stop handling this client's requests and close its socket."""
        self.closing = True
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # closed (for a bad frame, say): what the peer still sends is dropped
        reader = self.reader
        bodies = reader.feed(data)
        if bodies:
            self.bodies_received(bodies)  # the frames before a bad header, in order
        if reader.too_large:
            self.server.stats["frames_too_large"] += 1
            log.warning(
                "sim: frame of %d bytes exceeds %d: connection closed", reader.too_large, MAX_FRAME
            )
            self.close()

    def bodies_received(self, bodies: list[bytes]) -> None:
        if self.backlog or self.server.delaying:
            self._queue(bodies)
            return
        # Answer as we go, as VPP does: a window of pipelined requests is handled in
        # bounded slices, with the replies of each slice written (and the loop free to
        # run) before the next, so the client hears from us while a long burst runs.
        done = self._run_slice(bodies, 0)
        if done < len(bodies):
            self._queue(bodies[done:])

    def _run_slice(self, bodies: Sequence[bytes], start: int) -> int:
        """Process bodies from ``start`` until a slice's count or time is up; flush the
        replies; return the index of the first body not processed."""
        server = self.server
        end = min(len(bodies), start + SLICE_MESSAGES)
        i = server.process_slice(self, bodies, start, end, time.perf_counter() + SLICE_SECONDS)
        server.flush()
        return i if not self.closing else len(bodies)

    def _queue(self, bodies: Sequence[bytes]) -> None:
        self.backlog.extend(bodies)
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._drain())
        if (
            not self.paused
            and len(self.backlog) > BACKLOG_HIGH
            and self.shm is None
            and self.transport is not None
        ):
            # backpressure: stop reading until the backlog is worked off
            self.paused = True
            self.transport.pause_reading()

    async def _drain(self) -> None:
        # the backlog in order: in slices, or one message at a time while latency is set
        try:
            backlog = self.backlog
            server = self.server
            while backlog and not self.closing:
                if server.delaying:
                    body = backlog.popleft()
                    delay = server.latency_for(body)
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if self.closing:
                        return
                    server.process(self, body)
                    server.flush()
                else:
                    chunk = [backlog.popleft() for _ in range(min(len(backlog), SLICE_MESSAGES))]
                    done = self._run_slice(chunk, 0)
                    if done < len(chunk):
                        backlog.extendleft(reversed(chunk[done:]))
                    await asyncio.sleep(0)
                if self.paused and len(backlog) < BACKLOG_LOW and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
        finally:
            self.worker = None
            if self.paused and not self.closing and self.transport is not None:
                self.paused = False
                self.transport.resume_reading()

    def _shm_closed(self, exc: BaseException) -> None:
        # the ring closed or broke: drop the client as VPP drops a dead socket
        log.debug("sim: shm ring ends: %s", exc)
        if self.transport is not None:
            self.transport.abort()

    def send(self, body: bytes) -> None:
        """Queue one reply; it is written at the server's next flush."""
        if not self.out:
            self.server.output_pending(self)
        self.out.append(body)

    def flush(self) -> None:
        out, self.out = self.out, []
        if self.closing or not out:
            return
        if self.shm is not None:
            try:
                self.shm.write_many(out)
            except VppMessageTooLargeError as exc:
                # a reply the ring can never hold: drop it (that request gets no answer)
                # rather than break the ring for every other call of this client
                self.server.stats["dropped_too_large"] += exc.dropped
                log.warning("sim: shm reply dropped: %s", exc)
            except VppConnectionError:
                pass  # reported via _shm_closed
            return
        if self.transport is not None:
            self.transport.write(frames(out))

    def start_shm(self, size: int) -> None:
        """Create the segment and pass its fds (after the reply already written)."""
        from ..shm import ShmSegment, send_fds

        assert self.transport is not None
        seg = ShmSegment.create(size)
        sock_obj = self.transport.get_extra_info("socket")
        # uvloop hands out a pseudo socket: send the fds on a duplicate of its descriptor
        dup = socket.socket(fileno=os.dup(sock_obj.fileno()))
        try:
            dup.setblocking(True)
            send_fds(dup, seg.fds)
        finally:
            dup.setblocking(False)
            dup.close()
        self.shm_segment = seg
        self.shm = ShmPipe(seg.server_end(), self.bodies_received, self._shm_closed)
