"""The shared-memory ring: C (cffi) and pure-Python twin, alone, together, across processes."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import datasync._extensions as _ext
import datasync._shmring as c_impl
from datasync.vpp import _shmring_py as twin_impl
from datasync.vpp import shm
from datasync.vpp.shm import (
    ShmClosedError,
    ShmError,
    ShmFullError,
    ShmMessageTooLargeError,
    ShmSegment,
    ShmSegmentError,
    ShmStream,
)

IMPLS = {"compiled": c_impl, "twin": twin_impl}


@pytest.fixture(params=["compiled", "twin"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return IMPLS[request.param]


@pytest.fixture
def seg(impl: ModuleType) -> Iterator[ShmSegment]:
    s = ShmSegment.create(256, impl=impl)
    yield s
    s.close()


def body(i: int, n: int) -> bytes:
    """A body whose bytes depend on its index, so reordering or tearing shows."""
    return bytes((i * 31 + k) & 0xFF for k in range(n))


def dup_fds(s: ShmSegment) -> list[int]:
    return [os.dup(fd) for fd in s.fds]


# -- the extension is really there ---------------------------------------------------------


def test_compiled_backend_is_active() -> None:
    if os.environ.get("DATASYNC_NO_EXTENSIONS", "") == "1":
        assert _ext.implementation()["shmring"] == "twin"
    else:
        assert _ext.implementation()["shmring"] == "compiled"
        with ShmSegment.create(4096) as s:
            assert s.backend == "compiled"


def test_constants_match_between_c_and_twin() -> None:
    names = [n for n in dir(twin_impl) if n.startswith("SHMRING_")]
    assert len(names) > 15
    for name in names:
        assert getattr(c_impl.lib, name) == getattr(twin_impl, name), name
    for n in (0, 1, 4, 5, 60, 61, 1000):
        assert c_impl.lib.shmring_frame_size(n) == twin_impl.frame_size(n)


# -- framing -------------------------------------------------------------------------------


def test_roundtrip_wraps_many_times(seg: ShmSegment) -> None:
    c, s = seg.client_end(), seg.server_end()
    # sizes co-prime with the 256-byte ring so frames start everywhere and wrap often
    for i in range(3000):
        b = body(i, (i * 37) % (c.max_body + 1))
        c.send(b)
        assert s.recv_many() == [b]
        s.send(b[::-1])
        assert c.recv_many() == [b[::-1]]


def test_empty_ring_reads_nothing(seg: ShmSegment) -> None:
    assert seg.server_end().recv_many() == []
    assert seg.client_end().recv_many() == []


def test_full_ring_then_room_again(seg: ShmSegment) -> None:
    c, s = seg.client_end(), seg.server_end()
    sent = []
    i = 0
    while c.try_send(body(i, 20)):  # 24-byte frames: 10 fit in 256 bytes
        sent.append(body(i, 20))
        i += 1
    assert len(sent) == 256 // 24
    with pytest.raises(ShmFullError) as ei:
        c.send(b"x" * 20)
    assert ei.value.retriable and ei.value.reason.endswith("ring full")
    assert c.send_many([b"y" * 20]) == 0
    assert s.recv_many(max_frames=1) == sent[:1]
    c.send(b"z" * 20)
    assert s.recv_many() == [*sent[1:], b"z" * 20]


def test_oversize_message_is_an_error(seg: ShmSegment) -> None:
    c, s = seg.client_end(), seg.server_end()
    assert c.max_body == 252
    with pytest.raises(ShmMessageTooLargeError) as ei:
        c.send(b"x" * 253)
    assert isinstance(ei.value, ValueError) and "larger than the ring" in str(ei.value)
    with pytest.raises(ShmMessageTooLargeError):
        c.send_many([b"x" * 1000])
    # the largest body fits an empty ring at any offset (it wraps instead of skipping)
    c.send(b"a" * 100)
    assert s.recv_many() == [b"a" * 100]
    big = body(7, 252)
    c.send(big)
    assert s.recv_many() == [big]


def test_send_many_stops_at_full_and_at_oversize(seg: ShmSegment) -> None:
    c, s = seg.client_end(), seg.server_end()
    assert c.send_many([b"a" * 60] * 10) == 4  # 64-byte frames
    assert s.recv_many() == [b"a" * 60] * 4
    assert c.send_many([b"b", b"x" * 300, b"c"]) == 1
    with pytest.raises(ShmMessageTooLargeError):
        c.send_many([b"x" * 300, b"c"])
    assert c.send_many([]) == 0
    assert c.send_many(iter([b"d", b"e"])) == 2
    assert s.recv_many() == [b"b", b"d", b"e"]


def test_recv_many_limits(seg: ShmSegment) -> None:
    c, s = seg.client_end(), seg.server_end()
    c.send_many([b"1" * 10, b"2" * 10, b"3" * 100, b"4"])
    assert s.recv_many(max_bytes=25) == [b"1" * 10, b"2" * 10]
    # a first frame bigger than max_bytes still comes, alone
    assert s.recv_many(max_bytes=5) == [b"3" * 100]
    assert s.recv_many(max_frames=1) == [b"4"]
    with pytest.raises(ShmError, match="max_frames"):
        s.recv_many(max_frames=0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(["compiled", "twin"]),
    sizes=st.lists(st.integers(0, 252), min_size=1, max_size=200),
    batch=st.integers(1, 16),
    read_bytes=st.integers(0, 600),
)
def test_random_sizes_arrive_intact_and_in_order(
    name: str, sizes: list[int], batch: int, read_bytes: int
) -> None:
    with ShmSegment.create(256, impl=IMPLS[name]) as s:
        c, srv = s.client_end(), s.server_end()
        want = [body(i, n) for i, n in enumerate(sizes)]
        got: list[bytes] = []
        i = 0
        while len(got) < len(want):
            if i < len(want):
                i += c.send_many(want[i : i + batch])
            got.extend(srv.recv_many(max_bytes=read_bytes))
        assert got == want


# -- differential: the twin does exactly what the C code does, byte for byte ---------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 130)),
        st.tuples(st.just("send_many"), st.lists(st.integers(0, 130), max_size=6)),
        st.tuples(st.just("recv"), st.integers(0, 300), st.integers(1, 5)),
        st.tuples(st.just("arm_recv"), st.just(0)),
        st.tuples(st.just("arm_send"), st.integers(0, 200)),
        st.tuples(st.just("send"), st.integers(0, 60)),
        st.tuples(st.just("recv"), st.integers(0, 300), st.integers(1, 5)),
        st.tuples(st.just("close"), st.just(0)),
    ),
    max_size=60,
)


def _apply(s: ShmSegment, ops: list[tuple]) -> list[object]:
    results: list[object] = []
    ends = (s.client_end(), s.server_end())
    for k, op in enumerate(ops):
        end = ends[k % 2]
        try:
            if op[0] == "send":
                results.append(end.send(body(k, op[1])))
            elif op[0] == "send_many":
                results.append(end.send_many([body(k + j, n) for j, n in enumerate(op[1])]))
            elif op[0] == "recv":
                results.append(end.recv_many(op[1], op[2]))
            elif op[0] == "close":
                results.append(end.close())
            elif op[0] == "arm_recv":
                results.append(end.arm_recv())
            else:
                results.append(end.arm_send(op[1]))
        except ShmError as exc:
            results.append((type(exc).__name__, exc.code))
    return results


@settings(max_examples=150, deadline=None)
@given(ops=_ops)
def test_differential_compiled_equals_twin(ops: list[tuple]) -> None:
    with (
        ShmSegment.create(128, impl=c_impl) as a,
        ShmSegment.create(128, impl=twin_impl) as b,
    ):
        assert _apply(a, ops) == _apply(b, ops)
        size = twin_impl.SHMRING_HEADER_SIZE + 2 * 128
        assert os.pread(a.fd, size, 0) == os.pread(b.fd, size, 0)


# -- one segment, both implementations ------------------------------------------------------


@pytest.mark.parametrize(("creator", "attacher"), [("compiled", "twin"), ("twin", "compiled")])
def test_c_and_twin_talk_over_one_segment(creator: str, attacher: str) -> None:
    a = ShmSegment.create(512, impl=IMPLS[creator])
    with a, ShmSegment.attach(dup_fds(a), impl=IMPLS[attacher]) as b:
        c, s = a.client_end(), b.server_end()
        for i in range(2000):
            msg = body(i, (i * 53) % 300)
            c.send(msg)
            assert s.recv_many() == [msg]
            s.send_many([msg, msg[:7]])
            assert c.recv_many() == [msg, msg[:7]]
        c.close()
        with pytest.raises(ShmClosedError):
            s.recv_many()


# -- closure ---------------------------------------------------------------------------------


def test_peer_close_delivers_queued_frames_then_closed(seg: ShmSegment) -> None:
    c, s = seg.client_end(), seg.server_end()
    c.send_many([b"one", b"two", b"three"])
    c.close()
    assert c.closed and s.peer_closed
    assert s.recv_many() == [b"one", b"two", b"three"]
    with pytest.raises(ShmClosedError) as ei:
        s.recv_many()
    assert "peer closed" in ei.value.reason and ei.value.retriable
    with pytest.raises(ShmClosedError, match="peer closed"):
        s.send(b"x")
    with pytest.raises(ShmClosedError, match="this end is closed"):
        c.send(b"x")
    with pytest.raises(ShmClosedError):
        c.recv_many()


def test_closed_segment_endpoints_error_not_crash(impl: ModuleType) -> None:
    s = ShmSegment.create(256, impl=impl)
    c = s.client_end()
    s.close()
    s.close()
    with pytest.raises(ShmClosedError):
        c.send(b"x")
    with pytest.raises(ShmClosedError):
        c.recv_many()
    with pytest.raises(ShmClosedError):
        s.client_end()


# -- segment validation ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 63, 100, 3000, 1 << 31, "4096"])
def test_bad_create_size(impl: ModuleType, size: object) -> None:
    with pytest.raises(ShmError, match="size must be a power of two"):
        ShmSegment.create(size, impl=impl)  # type: ignore[arg-type]


def _corrupt(fd: int, offset: int, fmt: str, value: int) -> None:
    os.pwrite(fd, struct.pack(fmt, value), offset)


@pytest.mark.parametrize(
    ("what", "offset", "fmt", "value"),
    [
        ("magic", 0, "@Q", 0x1234),
        ("version", 8, "@I", 99),
        ("header size", 12, "@I", 64),
        ("segment size", 16, "@Q", 1 << 40),
        ("capacity not a power of two", 24, "@I", 300),
        ("capacity too small", 24, "@I", 32),
    ],
)
def test_corrupt_header_rejected(
    impl: ModuleType, what: str, offset: int, fmt: str, value: int
) -> None:
    with ShmSegment.create(256, impl=c_impl) as good:
        fds = dup_fds(good)
        _corrupt(fds[0], offset, fmt, value)
        with pytest.raises(ShmSegmentError, match="invalid segment") as ei:
            ShmSegment.attach(fds, impl=impl)
        assert ei.value.code == twin_impl.SHMRING_EBADMSG
        # attach closed the fds it was given
        with pytest.raises(OSError):
            os.fstat(fds[1])


@pytest.mark.parametrize("length", [0, 100, 4096 + 256])
def test_truncated_segment_rejected(impl: ModuleType, length: int) -> None:
    with ShmSegment.create(256, impl=impl) as good:
        fds = dup_fds(good)
        os.ftruncate(fds[0], length)
        with pytest.raises(ShmSegmentError, match="truncated"):
            ShmSegment.attach(fds, impl=impl)


def test_attach_wrong_fd_count(impl: ModuleType) -> None:
    with (
        ShmSegment.create(256, impl=impl) as good,
        pytest.raises(ShmSegmentError, match="needs 3 fds"),
    ):
        ShmSegment.attach(dup_fds(good)[:2], impl=impl)


def test_corrupt_frame_length_is_an_error(seg: ShmSegment) -> None:
    c, s = seg.client_end(), seg.server_end()
    c.send(b"hello")
    # ring A data starts right after the 4 KiB header; the frame's length now lies
    os.pwrite(seg.fd, struct.pack("@I", 200), 4096)
    with pytest.raises(ShmSegmentError, match="corrupt frame"):
        s.recv_many()


def test_posix_shm_fallback(impl: ModuleType) -> None:
    with ShmSegment.create(1024, posix_shm=True, impl=impl) as s:
        target = os.readlink(f"/proc/self/fd/{s.fd}")
        assert target.startswith("/dev/shm/datasync-shmring-") and target.endswith("(deleted)")
        with ShmSegment.attach(dup_fds(s), impl=impl) as t:
            s.client_end().send(b"via posix shm")
            assert t.server_end().recv_many() == [b"via posix shm"]
    with ShmSegment.create(1024, impl=impl) as s:
        assert os.readlink(f"/proc/self/fd/{s.fd}").startswith("/memfd:")


# -- blocking wait and fd passing ----------------------------------------------------------


def test_wait_times_out_then_wakes_from_another_thread(seg: ShmSegment) -> None:
    c, s = seg.client_end(), seg.server_end()
    assert s.wait(timeout=0.01) is False
    t = threading.Timer(0.05, c.send, args=(b"late",))
    t.start()
    try:
        assert s.wait(timeout=30) is True
        assert s.recv_many() == [b"late"]
    finally:
        t.join()
    c.close()
    assert s.wait(timeout=30) is True
    with pytest.raises(ShmClosedError):
        s.recv_many()


def test_fd_passing_over_socketpair(impl: ModuleType) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b, ShmSegment.create(4096, impl=impl) as owner:
        shm.send_fds(a, owner.fds)
        a.sendall(b"next message")
        payload, fds = shm.recv_fds(b, 3)
        assert payload == b"fdmsg" and len(fds) == 3
        assert b.recv(100) == b"next message"  # nothing of it was eaten by recv_fds
        with ShmSegment.attach(fds, impl=impl) as peer:
            owner.server_end().send(b"hello client")
            assert peer.client_end().recv_many() == [b"hello client"]
        a.sendall(b"no fds")
        with pytest.raises(ShmError, match="no fds"):
            shm.recv_fds(b, 3, bufsize=6)


async def test_fd_passing_async() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setblocking(False)
    b.setblocking(False)
    with a, b, ShmSegment.create(4096) as owner:
        recv = asyncio.ensure_future(shm.recv_fds_async(b, 3))
        await asyncio.sleep(0)
        await shm.send_fds_async(a, owner.fds)
        payload, fds = await recv
        assert payload == b"fdmsg"
        ShmSegment.attach(fds).close()


_CHILD = textwrap.dedent(
    """
    import socket, sys
    from datasync.vpp import shm, _shmring_py
    import datasync._shmring
    impl = {"compiled": datasync._shmring, "twin": _shmring_py}[sys.argv[2]]
    sock = socket.socket(fileno=int(sys.argv[1]))
    _, fds = shm.recv_fds(sock, 3)
    seg = shm.ShmSegment.attach(fds, impl=impl)
    end = seg.server_end()
    while True:
        end.wait(spin_us=50)
        try:
            msgs = end.recv_many()
        except shm.ShmClosedError:
            break
        sent = 0
        while sent < len(msgs):
            sent += end.send_many(msgs[sent:])
    sock.sendall(b"bye")
    """
)


@pytest.mark.parametrize(
    ("parent", "child"),
    [("compiled", "compiled"), ("twin", "compiled"), ("compiled", "twin"), ("twin", "twin")],
)
def test_echo_across_processes(parent: str, child: str) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, ShmSegment.create(4096, impl=IMPLS[parent]) as s:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(b.fileno()), child], pass_fds=[b.fileno()]
        )
        b.close()
        try:
            shm.send_fds(a, s.fds)
            c = s.client_end()
            want = [body(i, i % 200) for i in range(5000)]
            got: list[bytes] = []
            i = 0
            while len(got) < len(want):
                if i < len(want):
                    i += c.send_many(want[i : i + 50])
                if not c.wait(timeout=0.001):
                    continue
                got.extend(c.recv_many())
            assert got == want
            # ping-pong: the reader polls head while the writer moves it (torn reads show here)
            for i in range(3000):
                msg = body(i, 64)
                c.send(msg)
                reply: list[bytes] = []
                while not reply:
                    assert c.wait(timeout=30, spin_us=50)
                    reply = c.recv_many()
                assert reply == [msg]
            c.close()
            assert a.recv(3) == b"bye"
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# -- asyncio adaptor -------------------------------------------------------------------------


async def test_stream_producer_consumer_100k(impl: ModuleType) -> None:
    n = 100_000
    with ShmSegment.create(1 << 14, impl=impl) as s:
        tx, rx = ShmStream(s.client_end()), ShmStream(s.server_end())
        assert type(asyncio.get_running_loop()).__module__.startswith(
            "uvloop" if os.environ.get("DATASYNC_TEST_LOOP", "uvloop") == "uvloop" else "asyncio"
        )

        async def produce() -> None:
            for i in range(n):
                tx.write(i.to_bytes(4, "little") * 16)  # 64-byte messages
                if tx.pending:
                    await tx.drain()
            await tx.drain()

        async def consume() -> int:
            expect = 0
            while expect < n:
                for msg in await rx.read_many():
                    assert msg == expect.to_bytes(4, "little") * 16
                    expect += 1
            return expect

        async with asyncio.timeout(120):
            _, count = await asyncio.gather(produce(), consume())
        assert count == n
        tx.close()
        with pytest.raises(ShmClosedError):
            await rx.read()
        rx.close()


async def test_stream_reader_sees_peer_close_instead_of_hanging(impl: ModuleType) -> None:
    with ShmSegment.create(4096, impl=impl) as s:
        rx = ShmStream(s.server_end())
        reader = asyncio.ensure_future(rx.read())
        await asyncio.sleep(0.01)
        assert not reader.done()
        c = s.client_end()
        c.send(b"last words")
        c.close()
        async with asyncio.timeout(30):
            assert await reader == b"last words"
            with pytest.raises(ShmClosedError):
                await rx.read()
        rx.close()


async def test_stream_drain_waits_for_room_and_fails_on_peer_close(impl: ModuleType) -> None:
    with ShmSegment.create(256, impl=impl) as s:
        tx, rx = ShmStream(s.client_end()), ShmStream(s.server_end())
        for i in range(30):  # 30 x 64-byte frames: only 4 fit
            tx.write(body(i, 60))
        assert tx.pending == 26
        drained = asyncio.ensure_future(tx.drain())
        got: list[bytes] = []
        async with asyncio.timeout(30):
            while len(got) < 30:
                got.extend(await rx.read_many())
            await drained
        assert got == [body(i, 60) for i in range(30)]
        with pytest.raises(ShmMessageTooLargeError):
            tx.write(b"x" * 253)
        for i in range(10):
            tx.write(body(i, 60))
        drained = asyncio.ensure_future(tx.drain())
        await asyncio.sleep(0)
        rx.close()
        async with asyncio.timeout(30):
            with pytest.raises(ShmClosedError, match="peer closed"):
                await drained
        with pytest.raises(ShmClosedError):
            tx.write(b"more")
        tx.close()
        with pytest.raises(ShmClosedError):
            tx.write(b"more")


async def test_stream_close_wakes_own_reader(impl: ModuleType) -> None:
    with ShmSegment.create(256, impl=impl) as s:
        rx = ShmStream(s.server_end())
        reader = asyncio.ensure_future(rx.read_many())
        await asyncio.sleep(0)
        rx.close()
        async with asyncio.timeout(30):
            with pytest.raises(ShmClosedError):
                await reader


async def test_stream_polling_reader_and_single_reader_rule(impl: ModuleType) -> None:
    with ShmSegment.create(4096, impl=impl) as s:
        tx, rx = ShmStream(s.client_end()), ShmStream(s.server_end(), poll_us=1000)
        reader = asyncio.ensure_future(rx.read())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already reading"):
            await rx.read_many()
        tx.write(b"polled")
        async with asyncio.timeout(30):
            assert await reader == b"polled"
            # past the polling budget the reader sleeps on the eventfd and still wakes
            reader = asyncio.ensure_future(rx.read())
            await asyncio.sleep(0.05)
            tx.write(b"woken")
            assert await reader == b"woken"
        tx.close()
        rx.close()


def test_fork_child_uses_inherited_mapping(impl: ModuleType) -> None:
    with ShmSegment.create(1024, impl=impl) as s:
        c, srv = s.client_end(), s.server_end()
        pid = os.fork()
        if pid == 0:  # child: echo until the parent closes, then leave without cleanup
            code = 1
            try:
                while True:
                    srv.wait(timeout=30)
                    try:
                        msgs = srv.recv_many()
                    except ShmClosedError:
                        code = 0
                        break
                    sent = 0
                    while sent < len(msgs):
                        sent += srv.send_many(msgs[sent:])
            finally:
                os._exit(code)
        want = [body(i, i % 300) for i in range(2000)]
        got: list[bytes] = []
        i = 0
        while len(got) < len(want):
            if i < len(want):
                i += c.send_many(want[i : i + 20])
            if c.wait(timeout=0.001):
                got.extend(c.recv_many())
        assert got == want
        c.close()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


async def test_stream_writelines_batches_in_order(impl: ModuleType) -> None:
    with ShmSegment.create(256, impl=impl) as s:
        tx, rx = ShmStream(s.client_end()), ShmStream(s.server_end())
        with pytest.raises(ShmMessageTooLargeError):
            tx.writelines([b"ok", b"x" * 300])
        assert tx.pending == 0
        want = [body(i, 40) for i in range(50)]
        tx.writelines(want[:30])  # 48-byte frames: 5 fit, the rest waits
        tx.write(want[30])
        tx.writelines(iter(want[31:]))
        tx.writelines([])
        got: list[bytes] = []
        async with asyncio.timeout(30):
            while len(got) < len(want):
                got.extend(await rx.read_many())
            await tx.drain()
        assert got == want
        tx.close()
        rx.close()


@settings(max_examples=120, deadline=None)
@given(
    name=st.sampled_from(["compiled", "twin"]),
    garbage=st.lists(
        st.tuples(st.integers(0, 4096 + 2 * 128 - 8), st.binary(min_size=1, max_size=8)),
        min_size=1,
        max_size=8,
    ),
    ctl=st.lists(
        st.tuples(st.sampled_from([128, 256, 384, 512]), st.integers(0, 2**64 - 1)),
        max_size=3,
    ),
)
def test_peer_scribbling_over_the_segment_never_crashes(
    name: str, garbage: list[tuple[int, bytes]], ctl: list[tuple[int, int]]
) -> None:
    """A buggy or hostile peer can write anything into the shared memory: every call
    still returns a result or raises ShmError, and never reads or writes out of bounds."""
    with ShmSegment.create(128, impl=IMPLS[name]) as s:
        c, srv = s.client_end(), s.server_end()
        c.send_many([b"abc", b"defgh" * 5])
        for offset, data in garbage:
            if offset >= 64:  # the header is checked at attach time only
                os.pwrite(s.fd, data, offset)
        for offset, value in ctl:  # head / tail counters of both rings
            os.pwrite(s.fd, struct.pack("@Q", value), offset)
        calls: list[tuple[str, tuple[object, ...]]] = [
            ("send", (b"x" * 30,)),
            ("send_many", ([b"y" * 10, b"z" * 50],)),
            ("recv_many", (64, 8)),
            ("recv_many", ()),
            ("arm_recv", ()),
            ("arm_send", (40,)),
        ]
        for end in (c, srv, c, srv):
            for method, args in calls:
                try:
                    getattr(end, method)(*args)
                except ShmError:
                    pass


def test_bytes_like_bodies(seg: ShmSegment) -> None:
    c, s = seg.client_end(), seg.server_end()
    c.send(bytearray(b"ba"))
    c.send(memoryview(b"xxmv")[2:])
    assert c.send_many([bytearray(b"a"), memoryview(b"b")]) == 2
    assert s.recv_many() == [b"ba", b"mv", b"a", b"b"]
