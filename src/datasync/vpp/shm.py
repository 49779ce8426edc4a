"""The project's own shared-memory transport: two SPSC byte rings in one memfd segment.

VPP's own shm transport (svm queues of raw pointers, process-shared pthread objects,
fixed mapping addresses) is not re-created here; this is option (b) of the wire notes:
our own ring between our client and our simulator, carrying the same VPP message
bodies as the socket transport (without the 16-byte socket header).

* :class:`ShmSegment` creates or attaches a segment (memfd, POSIX shm fallback) and
  hands out the :meth:`~ShmSegment.client_end` and :meth:`~ShmSegment.server_end`.
* :class:`ShmEndpoint` sends and receives frames without blocking (batch calls too).
* :class:`ShmStream` is the asyncio adaptor: ``write`` / ``drain`` / ``read`` /
  ``read_many`` over the endpoint's eventfd.
* :func:`send_fds` / :func:`recv_fds` pass the segment's fds over an AF_UNIX socket
  (SCM_RIGHTS, payload ``b"fdmsg"`` as VPP does after ``sock_init_shm_reply``).

Closure: closing an end sets its "closed" flag in the segment header and wakes the peer;
the peer still receives every frame written before, then :class:`ShmClosedError`. A peer
that dies without closing is not seen here: the control socket carries liveness.

The ring is C (``csrc/shmring.c`` through cffi, ``datasync._shmring``) or its pure-Python
twin (``datasync.vpp._shmring_py``), chosen by ``datasync._extensions.select``.
"""

from __future__ import annotations

import array
import asyncio
import os
import socket
import time
from collections import deque
from collections.abc import Iterable, Sequence
from itertools import accumulate, chain
from types import ModuleType, TracebackType
from typing import Any, Protocol

from datasync import _extensions
from datasync.vpp import _shmring_py as _twin
from datasync.vpp._shmring_py import SHMRING_CLIENT, SHMRING_SERVER, frame_size
from datasync.vpp.errors import (
    ShmClosedError,
    ShmError,
    ShmFullError,
    ShmMessageTooLargeError,
    ShmSegmentError,
)

__all__ = [
    "DEFAULT_CAPACITY",
    "ShmClosedError",
    "ShmEndpoint",
    "ShmError",
    "ShmFullError",
    "ShmMessageTooLargeError",
    "ShmSegment",
    "ShmSegmentError",
    "ShmStream",
    "frame_size",
    "recv_fds",
    "recv_fds_async",
    "send_fds",
    "send_fds_async",
]

#: Default bytes per ring (each direction).
DEFAULT_CAPACITY = 1 << 20
#: The payload VPP sends with the memfd after sock_init_shm_reply.
FD_PAYLOAD = b"fdmsg"


_REASONS = {
    _twin.SHMRING_EBADF: (ShmClosedError, "this end is closed"),
    _twin.SHMRING_EAGAIN: (ShmFullError, "ring full"),
    _twin.SHMRING_ENOMEM: (ShmSegmentError, "out of memory"),
    _twin.SHMRING_EINVAL: (ShmError, "invalid argument"),
    _twin.SHMRING_EPIPE: (ShmClosedError, "peer closed"),
    _twin.SHMRING_EBADMSG: (
        ShmSegmentError,
        "invalid segment (bad magic, version, sizes, or a corrupt frame)",
    ),
    _twin.SHMRING_EMSGSIZE: (ShmMessageTooLargeError, "message larger than the ring"),
    _twin.SHMRING_ENODATA: (ShmSegmentError, "segment truncated (file smaller than its header)"),
    _twin.SHMRING_ETIMEDOUT: (ShmError, "timed out"),
}


def _error(code: int, what: str = "") -> ShmError:
    cls, reason = _REASONS.get(code, (ShmError, os.strerror(-code) if code < 0 else str(code)))
    return cls(f"{what}: {reason}" if what else reason, code)


# -- backends: the twin module as is, the cffi module behind a small adaptor -------------


class _End(Protocol):
    fd: int
    max_body: int
    closed: bool

    def close(self) -> None: ...
    def peer_closed(self) -> bool: ...
    def send(self, body: bytes) -> int: ...
    def send_many(self, bodies: Sequence[bytes]) -> int: ...
    def recv_many(self, max_bytes: int, max_frames: int) -> list[bytes] | int: ...
    def arm_recv(self) -> int: ...
    def arm_send(self, need: int) -> int: ...
    def ack(self) -> None: ...
    def wait_recv(self, timeout_ms: int, spin_us: int) -> int: ...


class _Seg(Protocol):
    capacity: int
    fds: tuple[int, int, int]

    def end(self, role: int) -> _End | None: ...
    def free(self) -> None: ...


class _Backend(Protocol):
    name: str

    def create(self, capacity: int, flags: int) -> tuple[int, _Seg | None]: ...
    def attach(self, memfd: int, efd_client: int, efd_server: int) -> tuple[int, _Seg | None]: ...


class _TwinBackend:
    name = "twin"

    def create(self, capacity: int, flags: int) -> tuple[int, _Seg | None]:
        return _twin.create(capacity, flags)

    def attach(self, memfd: int, efd_client: int, efd_server: int) -> tuple[int, _Seg | None]:
        return _twin.attach(memfd, efd_client, efd_server)


class _CffiEnd:
    """The C end through cffi: same methods and return values as the twin's RingEnd."""

    def __init__(self, seg: _CffiSeg, ptr: Any) -> None:
        ffi, lib = seg.ffi, seg.lib
        self._seg = seg  # keeps the segment (and its mapping) alive
        self._ffi = ffi
        self._lib = lib
        self._p = ptr
        self.fd: int = lib.shmring_end_fd(ptr)
        self.max_body: int = lib.shmring_max_body(ptr)
        self.closed = False
        self._bufcap = 0
        self._buf: Any = None
        self._lencap = 0
        self._lens: Any = None
        self._grow(1 << 16, 64)
        # bound once: attribute lookups on a cffi lib cost as much as the copy
        self._recv = lib.shmring_recv_many
        self._send = lib.shmring_send
        self._unpack = ffi.unpack
        self._buffer = ffi.buffer
        self._nbytes = ffi.new("size_t *")
        self._need = ffi.new("uint32_t *")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._lib.shmring_end_close(self._p)

    def peer_closed(self) -> bool:
        return bool(self._lib.shmring_peer_closed(self._p))

    def send(self, body: bytes) -> int:
        try:
            return self._send(self._p, body, len(body))  # type: ignore[no-any-return]
        except TypeError:
            # bytearray / memoryview: cffi passes only bytes straight to a char *
            buf = self._ffi.from_buffer(body)
            return self._send(self._p, buf, len(buf))  # type: ignore[no-any-return]

    def send_many(self, bodies: Sequence[bytes]) -> int:
        lens = array.array("I", map(len, bodies))
        data = b"".join(bodies)
        return int(
            self._lib.shmring_send_many(
                self._p, data, self._ffi.from_buffer("uint32_t[]", lens), len(lens)
            )
        )

    def _grow(self, max_bytes: int, max_frames: int) -> None:
        if max_bytes > self._bufcap or self._buf is None:
            self._bufcap = max(max_bytes, 4096)
            self._buf = self._ffi.new("char[]", self._bufcap)
        if max_frames > self._lencap:
            self._lencap = max(max_frames, 64)
            self._lens = self._ffi.new("uint32_t[]", self._lencap)

    def recv_many(self, max_bytes: int, max_frames: int) -> list[bytes] | int:
        if max_bytes > self._bufcap or max_frames > self._lencap:
            self._grow(max_bytes, max_frames)
        buf = self._buf
        n = self._recv(self._p, buf, max_bytes, self._lens, max_frames, self._nbytes, self._need)
        if n == 1:
            return [self._unpack(buf, self._nbytes[0])]
        if n == 0:
            return []
        if n == _twin.SHMRING_ENOBUFS:
            # the next frame alone is bigger than max_bytes: it is returned alone
            size = self._need[0]
            buf = self._ffi.new("char[]", size)
            n = self._recv(self._p, buf, size, self._lens, 1, self._nbytes, self._need)
        if n < 0:
            return int(n)
        if n == 1:
            return [self._unpack(buf, self._nbytes[0])]
        # one copy per frame, straight out of the receive buffer (slicing a cffi buffer
        # gives bytes), not a copy of the whole batch first
        view = self._buffer(buf, self._nbytes[0])
        stops = list(accumulate(self._unpack(self._lens, n)))
        return list(map(view.__getitem__, map(slice, chain((0,), stops), stops)))

    def arm_recv(self) -> int:
        return int(self._lib.shmring_arm_recv(self._p))

    def arm_send(self, need: int) -> int:
        return int(self._lib.shmring_arm_send(self._p, need))

    def ack(self) -> None:
        self._lib.shmring_ack(self._p)

    def wait_recv(self, timeout_ms: int, spin_us: int) -> int:
        return int(self._lib.shmring_wait_recv(self._p, timeout_ms, spin_us))


class _CffiSeg:
    def __init__(self, ffi: Any, lib: Any, ptr: Any) -> None:
        self.ffi = ffi
        self.lib = lib
        self._p = ptr
        self.freed = False
        self.capacity: int = lib.shmring_capacity(ptr)
        fds = ffi.new("int[3]")
        lib.shmring_fds(ptr, fds)
        self.fds = (fds[0], fds[1], fds[2])
        self._ends: dict[int, _CffiEnd] = {}

    def end(self, role: int) -> _End | None:
        if role in self._ends:
            return self._ends[role]
        ptr = self.lib.shmring_end_get(self._p, role)
        if ptr == self.ffi.NULL:
            return None
        self._ends[role] = end = _CffiEnd(self, ptr)
        return end

    def free(self) -> None:
        if not self.freed:
            for end in self._ends.values():
                end.close()
            self.freed = True
            self.lib.shmring_free(self._p)


class _CffiBackend:
    name = "compiled"

    def __init__(self, module: ModuleType) -> None:
        self.ffi = module.ffi
        self.lib = module.lib

    def create(self, capacity: int, flags: int) -> tuple[int, _Seg | None]:
        out = self.ffi.new("shmring_seg **")
        rc = self.lib.shmring_create(capacity, flags, out)
        return (rc, None) if rc < 0 else (0, _CffiSeg(self.ffi, self.lib, out[0]))

    def attach(self, memfd: int, efd_client: int, efd_server: int) -> tuple[int, _Seg | None]:
        out = self.ffi.new("shmring_seg **")
        rc = self.lib.shmring_attach(memfd, efd_client, efd_server, out)
        return (rc, None) if rc < 0 else (0, _CffiSeg(self.ffi, self.lib, out[0]))


class _DeadEnd:
    """Stands in for an end whose segment was unmapped: every call reports "closed"."""

    fd = -1
    max_body = 0
    closed = True

    def close(self) -> None:
        pass

    def peer_closed(self) -> bool:
        return True

    def send(self, body: bytes) -> int:
        return _twin.SHMRING_EBADF

    def send_many(self, bodies: Sequence[bytes]) -> int:
        return _twin.SHMRING_EBADF

    def recv_many(self, max_bytes: int, max_frames: int) -> list[bytes] | int:
        return _twin.SHMRING_EBADF

    def arm_recv(self) -> int:
        return 1

    def arm_send(self, need: int) -> int:
        return 1

    def ack(self) -> None:
        pass

    def wait_recv(self, timeout_ms: int, spin_us: int) -> int:
        return _twin.SHMRING_EBADF


_DEAD_END = _DeadEnd()


def _backend_for(module: ModuleType) -> _Backend:
    if hasattr(module, "ffi") and hasattr(module, "lib"):
        return _CffiBackend(module)
    if module is _twin:
        return _TwinBackend()
    raise TypeError(f"not a shm ring implementation: {module!r}")


_DEFAULT_BACKEND = _backend_for(
    _extensions.select("shmring", "datasync._shmring", "datasync.vpp._shmring_py")
)


# -- public API ---------------------------------------------------------------------------


class ShmEndpoint:
    """One end of a segment. Non-blocking; bodies are VPP message bodies (bytes, bytearray or
    a byte memoryview); frames come back as bytes."""

    def __init__(self, segment: ShmSegment, end: _End, role: int) -> None:
        self._segment = segment
        self._end = end
        self.role = role
        #: Largest body :meth:`send` accepts.
        self.max_body: int = end.max_body

    def fileno(self) -> int:
        """The eventfd that becomes readable when this end should look again."""
        return self._end.fd

    @property
    def closed(self) -> bool:
        """True once this end was closed."""
        return self._end.closed

    @property
    def peer_closed(self) -> bool:
        """True once the peer closed its end (frames it wrote before may still be queued)."""
        return self._end.peer_closed()

    def send(self, body: bytes) -> None:
        """Send one frame; raises :class:`ShmFullError` when it does not fit now."""
        rc = self._end.send(body)
        if rc:
            raise _error(rc, f"send of {len(body)} bytes")

    def try_send(self, body: bytes) -> bool:
        """Send one frame; False (nothing sent) when the ring is full."""
        rc = self._end.send(body)
        if rc == 0:
            return True
        if rc == _twin.SHMRING_EAGAIN:
            return False
        raise _error(rc, f"send of {len(body)} bytes")

    def send_many(self, bodies: Sequence[bytes]) -> int:
        """Send frames in order, as many as fit now, with one wake-up; returns how many.

        Raises when the first one cannot be sent for a reason other than lack of space
        (too large, closed); a later bad one stops the batch and raises on the next call.
        """
        if not isinstance(bodies, list | tuple):
            bodies = list(bodies)
        rc = self._end.send_many(bodies)
        if rc < 0:
            raise _error(rc, f"send of {len(bodies[0])} bytes" if bodies else "send")
        return rc

    def recv_many(self, max_bytes: int = 1 << 16, max_frames: int = 4096) -> list[bytes]:
        """Every queued frame that fits in ``max_bytes`` (a bigger first frame comes alone),
        at most ``max_frames``; [] when none. Raises :class:`ShmClosedError` once the peer
        closed and every frame it wrote was read."""
        if max_bytes < 0 or max_frames < 1:
            raise ShmError(
                f"recv_many: max_bytes must be >= 0 and max_frames >= 1, got "
                f"{max_bytes}, {max_frames}",
                _twin.SHMRING_EINVAL,
            )
        out = self._end.recv_many(max_bytes, max_frames)
        if isinstance(out, int):
            raise _error(out, "recv")
        return out

    def wait(self, timeout: float | None = None, spin_us: int = 0) -> bool:
        """Block until a frame can be read or the peer closed; False on timeout.

        Blocking: for threads and child processes, not for the event loop (use
        :class:`ShmStream` there). ``spin_us``: poll the ring that many microseconds
        before sleeping on the eventfd (a wake-up costs more than a short poll)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ms = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            rc = self._end.wait_recv(ms, spin_us)
            # back in Python after EINTR: a signal handler (KeyboardInterrupt) runs here
            if rc != _twin.SHMRING_EINTR:
                break
        if rc == _twin.SHMRING_ETIMEDOUT:
            return False
        if rc:
            raise _error(rc, "wait")
        return True

    def arm_recv(self) -> bool:
        """Ask the peer to signal :meth:`fileno` on its next write; True means "read now"."""
        return bool(self._end.arm_recv())

    def arm_send(self, need: int) -> bool:
        """Ask the peer to signal once it freed space; True means ``need`` bytes are free now."""
        return bool(self._end.arm_send(need))

    def ack(self) -> None:
        """Clear the eventfd after it signalled."""
        self._end.ack()

    def close(self) -> None:
        """Close this end: the peer reads what is queued, then sees :class:`ShmClosedError`."""
        self._end.close()


class ShmSegment:
    """A shared segment holding both rings, plus its two eventfds.

    The creator passes :attr:`fds` to the peer (see :func:`send_fds`), which calls
    :meth:`attach`. Each process then uses one end, from one thread at a time (the rings
    are single-producer single-consumer). Closing the segment, or dropping the last
    reference to it, closes the ends this process used (the peer sees them closed), unmaps
    it and closes the fds. A forked child that inherited the object must leave with
    ``os._exit`` or attach its own copy, or its exit closes the parent's end.
    """

    def __init__(self, seg: _Seg, backend: _Backend) -> None:
        self._seg = seg
        #: "compiled" or "twin".
        self.backend = backend.name
        #: Bytes per ring.
        self.capacity: int = seg.capacity
        self._ends: dict[int, ShmEndpoint] = {}
        self._closed = False

    @classmethod
    def create(
        cls,
        size: int = DEFAULT_CAPACITY,
        *,
        posix_shm: bool = False,
        impl: ModuleType | None = None,
    ) -> ShmSegment:
        """A new segment whose rings hold ``size`` bytes each (a power of two, 64 B to 1 GiB).

        ``posix_shm`` forces the POSIX shm fallback used where memfd_create is missing;
        ``impl`` picks a ring module (``datasync._shmring`` or the twin) instead of the
        selected one."""
        if (
            not isinstance(size, int)
            or not _twin.SHMRING_MIN_CAPACITY <= size <= _twin.SHMRING_MAX_CAPACITY
            or size & (size - 1)
        ):
            raise ShmError(
                f"size must be a power of two between {_twin.SHMRING_MIN_CAPACITY} and "
                f"{_twin.SHMRING_MAX_CAPACITY}, got {size!r}",
                _twin.SHMRING_EINVAL,
            )
        backend = _DEFAULT_BACKEND if impl is None else _backend_for(impl)
        rc, seg = backend.create(size, _twin.SHMRING_F_POSIX_SHM if posix_shm else 0)
        if seg is None:
            raise _error(rc, "create segment")
        return cls(seg, backend)

    @classmethod
    def attach(cls, fds: Sequence[int], *, impl: ModuleType | None = None) -> ShmSegment:
        """Map a segment from the peer's (memfd, client eventfd, server eventfd).

        The segment owns the fds from then on; when the segment is invalid or truncated
        they are closed and :class:`ShmSegmentError` is raised."""
        fds = list(fds)
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            raise ShmSegmentError(
                f"attach needs 3 fds (memfd, client eventfd, server eventfd), got {len(fds)}",
                _twin.SHMRING_EINVAL,
            )
        backend = _DEFAULT_BACKEND if impl is None else _backend_for(impl)
        rc, seg = backend.attach(fds[0], fds[1], fds[2])
        if seg is None:
            for fd in fds:
                os.close(fd)
            raise _error(rc, "attach segment")
        return cls(seg, backend)

    @property
    def fd(self) -> int:
        """The memfd (or POSIX shm fd) holding the segment."""
        return self._seg.fds[0]

    @property
    def fds(self) -> tuple[int, int, int]:
        """(memfd, client eventfd, server eventfd): what the peer needs to attach."""
        return self._seg.fds

    def _end(self, role: int) -> ShmEndpoint:
        if self._closed:
            raise ShmClosedError("segment is closed", _twin.SHMRING_EBADF)
        ep = self._ends.get(role)
        if ep is None:
            end = self._seg.end(role)
            assert end is not None
            ep = self._ends[role] = ShmEndpoint(self, end, role)
        return ep

    def client_end(self) -> ShmEndpoint:
        """The client's end: sends on ring A, receives from ring B."""
        return self._end(SHMRING_CLIENT)

    def server_end(self) -> ShmEndpoint:
        """The server's end: sends on ring B, receives from ring A."""
        return self._end(SHMRING_SERVER)

    def close(self) -> None:
        """Close the ends used here (waking the peer), unmap, close the fds. Idempotent."""
        if not self._closed:
            self._closed = True
            self._seg.free()
            # the mapping is gone: endpoints still held elsewhere must not touch it
            for ep in self._ends.values():
                ep._end = _DEAD_END

    def __del__(self) -> None:
        # an unreferenced segment releases its mapping and fds (and tells the peer)
        if not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:  # interpreter shutdown: modules may be half torn down
                pass

    def __enter__(self) -> ShmSegment:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ShmStream:
    """asyncio adaptor over an endpoint: ``write`` never blocks, ``drain`` waits for room.

    The endpoint's eventfd is registered with ``loop.add_reader``; the peer writes it only
    when this side armed a flag (waiting for data or for space), so a busy stream costs no
    syscall per message. One reader task at a time.

    ``poll_us``: how long (microseconds) a reader polls the ring through the event loop
    (``sleep(0)``, other tasks keep running) before it arms the eventfd and sleeps. A
    wake-up through the eventfd crosses CPUs and costs tens of microseconds on a VM;
    polling keeps request/reply latency low when the peer answers quickly, at the price
    of CPU while waiting (harmful when there are fewer free cores than pollers).
    """

    def __init__(
        self, endpoint: ShmEndpoint, *, max_bytes: int = 1 << 18, poll_us: int = 0
    ) -> None:
        self._ep = endpoint
        self._loop = asyncio.get_running_loop()
        self._max_bytes = max_bytes
        self._poll_ns = poll_us * 1000
        self._reading = False
        self._pending: deque[bytes] = deque()
        self._rx: deque[bytes] = deque()
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_error: ShmError | None = None
        self._closed = False
        self._fd = endpoint.fileno()
        self._loop.add_reader(self._fd, self._on_wake)

    @property
    def endpoint(self) -> ShmEndpoint:
        """The endpoint this stream drives."""
        return self._ep

    @property
    def pending(self) -> int:
        """Frames written but not yet in the ring."""
        return len(self._pending)

    def _on_wake(self) -> None:
        self._ep.ack()
        if self._pending:
            self._flush()
        w = self._read_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _flush(self) -> None:
        pending = self._pending
        while pending:
            try:
                n = self._ep.send_many(
                    list(pending) if len(pending) <= 256 else [pending[i] for i in range(256)]
                )
            except ShmError as exc:
                self._write_error = exc
                pending.clear()
                break
            for _ in range(n):
                pending.popleft()
            # ring full: arm, and if room appeared meanwhile go round again
            if pending and n == 0 and not self._ep.arm_send(frame_size(len(pending[0]))):
                return
        w = self._drain_waiter
        if w is not None and not w.done():
            if self._write_error is not None:
                w.set_exception(self._write_error)
            else:
                w.set_result(None)

    def write(self, body: bytes) -> None:
        """Queue one frame; it goes into the ring now if it fits, else when room appears."""
        if self._closed:
            raise ShmClosedError("stream is closed", _twin.SHMRING_EBADF)
        if self._write_error is not None:
            raise self._write_error
        if len(body) > self._ep.max_body:
            raise ShmMessageTooLargeError(
                f"send of {len(body)} bytes: message larger than the ring "
                f"(max {self._ep.max_body})",
                _twin.SHMRING_EMSGSIZE,
            )
        if self._pending:
            self._pending.append(body)
        elif not self._ep.try_send(body):
            self._pending.append(body)
            self._flush()

    def writelines(self, bodies: Iterable[bytes]) -> None:
        """Queue several frames: one batch call and at most one wake-up for the peer.

        All or nothing: a body too large for the ring raises before any is queued."""
        if self._closed:
            raise ShmClosedError("stream is closed", _twin.SHMRING_EBADF)
        if self._write_error is not None:
            raise self._write_error
        batch = list(bodies)
        limit = self._ep.max_body
        for body in batch:
            if len(body) > limit:
                raise ShmMessageTooLargeError(
                    f"send of {len(body)} bytes: message larger than the ring (max {limit})",
                    _twin.SHMRING_EMSGSIZE,
                )
        if not batch:
            return
        sent = 0 if self._pending else self._ep.send_many(batch)
        if sent < len(batch):
            self._pending.extend(batch[sent:])
            self._flush()

    async def drain(self) -> None:
        """Wait until every written frame is in the ring; raises if the peer closed first."""
        if self._write_error is not None:
            raise self._write_error
        if not self._pending:
            return
        if self._drain_waiter is None or self._drain_waiter.done():
            self._drain_waiter = self._loop.create_future()
        await asyncio.shield(self._drain_waiter)

    async def read_many(self) -> list[bytes]:
        """Every frame available (at least one); waits when none. Raises
        :class:`ShmClosedError` after the peer closed and everything it sent was read."""
        if self._rx:
            out = list(self._rx)
            self._rx.clear()
            return out
        if self._reading:
            raise RuntimeError("ShmStream: another task is already reading")
        self._reading = True
        try:
            return await self._read_many()
        finally:
            self._reading = False

    async def _read_many(self) -> list[bytes]:
        ep = self._ep
        poll_until = time.monotonic_ns() + self._poll_ns if self._poll_ns else 0
        while True:
            if self._closed:
                raise ShmClosedError("stream is closed", _twin.SHMRING_EBADF)
            msgs = ep.recv_many(self._max_bytes)
            if msgs:
                return msgs
            if poll_until and time.monotonic_ns() < poll_until:
                # poll through the loop (other tasks run) before paying for a wake-up
                await asyncio.sleep(0)
                continue
            if ep.arm_recv():
                continue
            self._read_waiter = fut = self._loop.create_future()
            try:
                await fut
            finally:
                self._read_waiter = None

    async def read(self) -> bytes:
        """The next frame; waits when none (see :meth:`read_many`)."""
        if not self._rx:
            self._rx.extend(await self.read_many())
        return self._rx.popleft()

    def close(self) -> None:
        """Stop watching the eventfd and close the endpoint (the peer sees it closed)."""
        if self._closed:
            return
        self._closed = True
        if not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._ep.close()
        exc = ShmClosedError("stream is closed", _twin.SHMRING_EBADF)
        for w in (self._read_waiter, self._drain_waiter):
            if w is not None and not w.done():
                w.set_exception(exc)
                # retrieved here so an unawaited waiter does not log "never retrieved"
                w.exception()


# -- fd passing ---------------------------------------------------------------------------


def send_fds(sock: socket.socket, fds: Sequence[int], payload: bytes = FD_PAYLOAD) -> None:
    """Send ``fds`` with SCM_RIGHTS over a blocking AF_UNIX socket, with ``payload`` as data."""
    try:
        socket.send_fds(sock, [payload], list(fds))
    except OSError as exc:
        raise ShmError(f"send_fds: {exc.strerror or exc}", -(exc.errno or 0)) from exc


def recv_fds(
    sock: socket.socket, maxfds: int, bufsize: int = len(FD_PAYLOAD)
) -> tuple[bytes, list[int]]:
    """Receive (payload, fds) sent by :func:`send_fds` on a blocking AF_UNIX socket.

    ``bufsize`` defaults to the length of ``b"fdmsg"`` so no byte of the next message is
    read. Raises :class:`ShmError` when no fd came, or the control data was truncated."""
    try:
        data, fds, flags, _addr = socket.recv_fds(sock, bufsize, maxfds)
    except BlockingIOError:
        raise
    except OSError as exc:
        raise ShmError(f"recv_fds: {exc.strerror or exc}", -(exc.errno or 0)) from exc
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise ShmError(f"recv_fds: more than {maxfds} fds sent (control data truncated)")
    if not data and not fds:
        raise ShmClosedError("recv_fds: peer closed the socket", _twin.SHMRING_EPIPE)
    if not fds:
        raise ShmError(f"recv_fds: no fds came with {data!r}")
    return data, fds


async def send_fds_async(
    sock: socket.socket, fds: Sequence[int], payload: bytes = FD_PAYLOAD
) -> None:
    """:func:`send_fds` on a non-blocking socket, waiting on the running loop."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return send_fds(sock, fds, payload)
        except ShmError as exc:
            if exc.code != -11:  # EAGAIN
                raise
        await _wait_fd(loop, sock.fileno(), writable=True)


async def recv_fds_async(
    sock: socket.socket, maxfds: int, bufsize: int = len(FD_PAYLOAD)
) -> tuple[bytes, list[int]]:
    """:func:`recv_fds` on a non-blocking socket, waiting on the running loop."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return recv_fds(sock, maxfds, bufsize)
        except BlockingIOError:
            pass
        await _wait_fd(loop, sock.fileno(), writable=False)


async def _wait_fd(loop: asyncio.AbstractEventLoop, fd: int, writable: bool) -> None:
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    (loop.add_writer if writable else loop.add_reader)(fd, ready)
    try:
        await fut
    finally:
        (loop.remove_writer if writable else loop.remove_reader)(fd)
