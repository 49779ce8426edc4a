"""Pure-Python twin of the C shared-memory ring (``csrc/shmring.c``, ``datasync._shmring``).

Same memory layout, same algorithm and same return codes as the C code, so a twin
endpoint can talk to a C endpoint over one segment. The C side is the reference:
read ``csrc/shmring.h`` for the layout and the contract.

Python has no atomics. The twin relies on what CPython and x86-64 give: item access
on a ``memoryview`` cast to "Q"/"I" copies with one aligned ``memcpy`` (a single store
or load, never torn; ``struct.pack_into`` is not usable for this, it zero-fills first),
x86 stores are release and loads acquire (TSO), and the one full fence the wake-up
protocol needs is taken from a lock acquire/release (a locked instruction). On weakly
ordered CPUs only the compiled backend is correct across processes.
"""

from __future__ import annotations

import itertools
import mmap
import os
import select
import struct
import threading
import time
from collections.abc import Sequence

SHMRING_MAGIC = 0x31474E5252485344
SHMRING_VERSION = 1
SHMRING_HEADER_SIZE = 4096
SHMRING_MIN_CAPACITY = 64
SHMRING_MAX_CAPACITY = 1 << 30
SHMRING_CLIENT = 0
SHMRING_SERVER = 1
SHMRING_F_POSIX_SHM = 1

SHMRING_OK = 0
SHMRING_EINTR = -4
SHMRING_EBADF = -9
SHMRING_EAGAIN = -11
SHMRING_ENOMEM = -12
SHMRING_EINVAL = -22
SHMRING_EPIPE = -32
SHMRING_EBADMSG = -74
SHMRING_EMSGSIZE = -90
SHMRING_ENOBUFS = -105
SHMRING_ETIMEDOUT = -110
SHMRING_ENODATA = -61

OFF_MAGIC = 0
OFF_VERSION = 8
OFF_HEADER_SIZE = 12
OFF_SEG_SIZE = 16
OFF_CAPACITY = 24
OFF_FLAGS = 28
OFF_CLOSED = 32
OFF_RING_A = 128
OFF_RING_B = 384
CTL_HEAD = 0
CTL_SPACE_WAITING = 8
CTL_TAIL = 128
CTL_DATA_WAITING = 136

_U32 = struct.Struct("@I")
_U64 = struct.Struct("@Q")
_HEADER = struct.Struct("@QIIQII")
_ONE = _U64.pack(1)
_FENCE = threading.Lock()
_NAMES = itertools.count()


def _fence() -> None:
    # store-load barrier for the arm/publish handshake (see module docstring)
    _FENCE.acquire()
    _FENCE.release()


def frame_size(length: int) -> int:
    """Bytes a frame with a body of ``length`` bytes takes in the ring."""
    return (length + 4 + 7) & ~7


def _valid_capacity(cap: int) -> bool:
    return SHMRING_MIN_CAPACITY <= cap <= SHMRING_MAX_CAPACITY and cap & (cap - 1) == 0


def _wake(fd: int) -> None:
    try:
        os.write(fd, _ONE)
    except BlockingIOError:  # counter saturated: the peer wakes anyway
        pass


def _make_shm_fd(size: int, flags: int) -> int:
    fd = -1
    if not flags & SHMRING_F_POSIX_SHM:
        try:
            fd = os.memfd_create("datasync-shmring", os.MFD_CLOEXEC)
        except (AttributeError, PermissionError):
            fd = -1
        except OSError as exc:
            if exc.errno != 38:  # ENOSYS
                raise
    if fd < 0:
        # what glibc's shm_open does on Linux; unlinked at once so only the fd refers to it
        while True:
            name = f"/dev/shm/datasync-shmring-{os.getpid()}-{time.monotonic_ns()}-{next(_NAMES)}"
            try:
                fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            os.unlink(name)
            break
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        raise
    return fd


class RingEnd:
    """One side of a segment: produces on one ring, consumes the other."""

    def __init__(self, seg: RingSegment, role: int) -> None:
        cap = seg.capacity
        tx_ctl, rx_ctl = (
            (OFF_RING_A, OFF_RING_B) if role == SHMRING_CLIENT else (OFF_RING_B, OFF_RING_A)
        )
        a_data, b_data = SHMRING_HEADER_SIZE, SHMRING_HEADER_SIZE + cap
        self._mm = seg.mm
        self._q = seg.q
        self._i = seg.i
        self._cap = cap
        self._mask = cap - 1
        self._tx_head = (tx_ctl + CTL_HEAD) >> 3
        self._tx_tail = (tx_ctl + CTL_TAIL) >> 3
        self._tx_space_waiting = (tx_ctl + CTL_SPACE_WAITING) >> 2
        self._tx_data_waiting = (tx_ctl + CTL_DATA_WAITING) >> 2
        self._tx_data = a_data if role == SHMRING_CLIENT else b_data
        self._rx_head = (rx_ctl + CTL_HEAD) >> 3
        self._rx_tail = (rx_ctl + CTL_TAIL) >> 3
        self._rx_space_waiting = (rx_ctl + CTL_SPACE_WAITING) >> 2
        self._rx_data_waiting = (rx_ctl + CTL_DATA_WAITING) >> 2
        self._rx_data = b_data if role == SHMRING_CLIENT else a_data
        self._my_closed = (OFF_CLOSED + 4 * role) >> 2
        self._peer_closed = (OFF_CLOSED + 4 * (1 - role)) >> 2
        self.fd = seg.fds[1 + role]
        self._peer_efd = seg.fds[2 - role]
        self.max_body = cap - 4
        self.closed = False
        self.used = False

    # -- helpers ------------------------------------------------------------------------

    def _put(self, base: int, pos: int, body: bytes | memoryview) -> None:
        idx = pos & self._mask
        n = len(body)
        first = self._cap - idx
        if n <= first:
            self._mm[base + idx : base + idx + n] = body
        else:
            self._mm[base + idx : base + self._cap] = body[:first]
            self._mm[base : base + n - first] = body[first:]

    def _get(self, base: int, pos: int, n: int) -> bytes:
        idx = pos & self._mask
        first = self._cap - idx
        if n <= first:
            return self._mm[base + idx : base + idx + n]
        return self._mm[base + idx : base + self._cap] + self._mm[base : base + n - first]

    def _publish_head(self, head: int) -> None:
        self._q[self._tx_head] = head
        _fence()
        if self._i[self._tx_data_waiting]:
            # the C side uses an atomic exchange; a double wake is harmless
            self._i[self._tx_data_waiting] = 0
            _wake(self._peer_efd)

    def _publish_tail(self, tail: int) -> None:
        self._q[self._rx_tail] = tail
        _fence()
        if self._i[self._rx_space_waiting]:
            self._i[self._rx_space_waiting] = 0
            _wake(self._peer_efd)

    def _send_check(self, length: int) -> int:
        if self.closed:
            return SHMRING_EBADF
        if self._i[self._peer_closed]:
            return SHMRING_EPIPE
        if length + 4 > self._cap:
            return SHMRING_EMSGSIZE
        return SHMRING_OK

    # -- the C API, one method per function ---------------------------------------------

    def close(self) -> None:
        """Mark this end closed and wake the peer. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._i[self._my_closed] = 1
        _fence()
        _wake(self._peer_efd)

    def peer_closed(self) -> bool:
        """True when the peer closed its end."""
        return bool(self._i[self._peer_closed])

    def send(self, body: bytes) -> int:
        """Send one frame: 0 or a negative SHMRING_E* code."""
        n = len(body)
        rc = self._send_check(n)
        if rc < 0:
            return rc
        head = self._q[self._tx_head]
        tail = self._q[self._tx_tail]
        fsize = (n + 11) & ~7
        if head - tail + fsize > self._cap:
            return SHMRING_EAGAIN
        self._i[(self._tx_data + (head & self._mask)) >> 2] = n
        self._put(self._tx_data, head + 4, body)
        self._publish_head(head + fsize)
        return SHMRING_OK

    def send_many(self, bodies: Sequence[bytes]) -> int:
        """Send frames in order until one does not fit; the count sent, or a negative code."""
        if not bodies:
            return SHMRING_EBADF if self.closed else 0
        rc = self._send_check(len(bodies[0]))
        if rc < 0:
            return rc
        cap = self._cap
        start = head = self._q[self._tx_head]
        tail = self._q[self._tx_tail]
        sent = 0
        for body in bodies:
            n = len(body)
            fsize = (n + 11) & ~7
            if n + 4 > cap:
                break
            if head - tail + fsize > cap:
                tail = self._q[self._tx_tail]
                if head - tail + fsize > cap:
                    break
            self._i[(self._tx_data + (head & self._mask)) >> 2] = n
            self._put(self._tx_data, head + 4, body)
            head += fsize
            sent += 1
        if head != start:
            self._publish_head(head)
        return sent

    def recv_many(self, max_bytes: int, max_frames: int) -> list[bytes] | int:
        """Frames whose bodies total at most ``max_bytes`` (the first one always, whatever
        its size), up to ``max_frames``; [] when empty; SHMRING_EPIPE when empty and closed."""
        if self.closed:
            return SHMRING_EBADF
        mm = self._mm
        start = tail = self._q[self._rx_tail]
        head = self._q[self._rx_head]
        if head == tail:
            if not self._i[self._peer_closed]:
                return []
            head = self._q[self._rx_head]
            if head == tail:
                return SHMRING_EPIPE
        out: list[bytes] = []
        used = 0
        cap = self._cap
        mask = self._mask
        data = self._rx_data
        while tail != head and len(out) < max_frames:
            n = self._i[(data + (tail & mask)) >> 2]
            fsize = (n + 11) & ~7
            if n + 4 > cap or fsize > head - tail:
                return SHMRING_EBADMSG
            if out and n > max_bytes - used:
                break
            idx = (tail + 4) & mask
            if idx + n <= cap:
                out.append(mm[data + idx : data + idx + n])
            else:
                out.append(self._get(data, tail + 4, n))
            used += n
            tail += fsize
        if tail != start:
            self._publish_tail(tail)
        return out

    def arm_recv(self) -> int:
        """Arm the data-waiting flag; 1 when there is already something to read."""
        self._i[self._rx_data_waiting] = 1
        _fence()
        if (
            self._q[self._rx_head] != self._q[self._rx_tail]
            or self._i[self._peer_closed]
            or self.closed
        ):
            self._i[self._rx_data_waiting] = 0
            return 1
        return 0

    def arm_send(self, need: int) -> int:
        """Arm the space-waiting flag; 1 when ``need`` bytes are already free."""
        self._i[self._tx_space_waiting] = 1
        _fence()
        used = self._q[self._tx_head] - self._q[self._tx_tail]
        if used + need <= self._cap or self._i[self._peer_closed] or self.closed:
            self._i[self._tx_space_waiting] = 0
            return 1
        return 0

    def ack(self) -> None:
        """Clear this end's eventfd."""
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass

    def _recv_ready(self) -> bool:
        return bool(self._q[self._rx_head] != self._q[self._rx_tail] or self._i[self._peer_closed])

    def wait_recv(self, timeout_ms: int, spin_us: int) -> int:
        """Block until a frame can be read or the peer closed (polling up to ``spin_us``
        microseconds first): 0 or SHMRING_ETIMEDOUT."""
        if self.closed:
            return SHMRING_EBADF
        if spin_us > 0:
            until = time.monotonic_ns() + spin_us * 1000
            while True:
                if self._recv_ready():
                    return SHMRING_OK
                if time.monotonic_ns() >= until:
                    break
        deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while True:
            if self.arm_recv():
                return SHMRING_OK
            left = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            ready = poller.poll(left)
            if ready:
                self.ack()
            if self._recv_ready():
                self._i[self._rx_data_waiting] = 0
                return SHMRING_OK
            if not ready and left == 0:
                self._i[self._rx_data_waiting] = 0
                return SHMRING_ETIMEDOUT


class RingSegment:
    """A mapped segment and its two ends (see ``csrc/shmring.h`` for the layout)."""

    def __init__(self, mm: mmap.mmap, capacity: int, fds: tuple[int, int, int]) -> None:
        self.mm = mm
        # the shared counters and flags go through these views, never through struct:
        # pack_into zero-fills its target before it writes, so a reader could see a torn 0
        self.q = memoryview(mm).cast("Q")
        self.i = memoryview(mm).cast("I")
        self.capacity = capacity
        self.fds = fds
        self._ends = (RingEnd(self, SHMRING_CLIENT), RingEnd(self, SHMRING_SERVER))
        self._freed = False

    def end(self, role: int) -> RingEnd | None:
        """The end for ``role`` (SHMRING_CLIENT / SHMRING_SERVER), None for a bad role."""
        if role not in (SHMRING_CLIENT, SHMRING_SERVER):
            return None
        end = self._ends[role]
        end.used = True
        return end

    def free(self) -> None:
        """Close the ends this process used, unmap, close the fds."""
        if self._freed:
            return
        self._freed = True
        for end in self._ends:
            if end.used:
                end.close()
        self.q.release()
        self.i.release()
        self.mm.close()
        for fd in self.fds:
            os.close(fd)


def create(capacity: int, flags: int = 0) -> tuple[int, RingSegment | None]:
    """Create a segment: (0, segment) or (negative code, None)."""
    if not _valid_capacity(capacity):
        return SHMRING_EINVAL, None
    size = SHMRING_HEADER_SIZE + 2 * capacity
    fds: list[int] = []
    try:
        fds.append(_make_shm_fd(size, flags))
        for _ in range(2):
            fds.append(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))
        mm = mmap.mmap(fds[0], size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        return -(exc.errno or 12), None
    _HEADER.pack_into(mm, 0, 0, SHMRING_VERSION, SHMRING_HEADER_SIZE, size, capacity, 0)
    _U64.pack_into(mm, OFF_MAGIC, SHMRING_MAGIC)  # magic last: set means initialised
    return SHMRING_OK, RingSegment(mm, capacity, (fds[0], fds[1], fds[2]))


def attach(memfd: int, efd_client: int, efd_server: int) -> tuple[int, RingSegment | None]:
    """Validate and map a received segment: (0, segment) or (negative code, None).

    Takes ownership of the fds only on success."""
    if memfd < 0 or efd_client < 0 or efd_server < 0:
        return SHMRING_EBADF, None
    try:
        st_size = os.fstat(memfd).st_size
        if st_size < SHMRING_HEADER_SIZE:
            return SHMRING_ENODATA, None
        raw = os.pread(memfd, _HEADER.size, 0)
    except OSError as exc:
        return -(exc.errno or 9), None
    magic, version, hsize, seg_size, cap, _flags = _HEADER.unpack(raw)
    if (
        magic != SHMRING_MAGIC
        or version != SHMRING_VERSION
        or hsize != SHMRING_HEADER_SIZE
        or not _valid_capacity(cap)
        or seg_size != SHMRING_HEADER_SIZE + 2 * cap
    ):
        return SHMRING_EBADMSG, None
    if st_size < seg_size:
        return SHMRING_ENODATA, None
    try:
        mm = mmap.mmap(memfd, seg_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as exc:
        return -(exc.errno or 12), None
    return SHMRING_OK, RingSegment(mm, cap, (memfd, efd_client, efd_server))
