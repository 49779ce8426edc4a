"""The simulator's public surfaces refuse bad input: the frame parser, the fault API (in
Python and over HTTP), and the socket path it is given."""

from __future__ import annotations

import asyncio
import math
import os
import socket
import stat
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasync.vpp.client import VppClient
from datasync.vpp.framing import MAX_FRAME
from datasync.vpp.sim import Simulator
from datasync.vpp.sim.admin import AdminServer
from tests.fuzz import examples

from .test_sim import Raw, _http, rv


async def test_a_frame_over_the_limit_closes_the_connection_unbuffered(sim: Simulator) -> None:
    raw = await Raw.open(sim)
    await raw.handshake()
    # a header claiming 4 GiB - 1, then some of its "body": nothing waits for the rest
    raw.w.write(struct.pack(">QII", 0, 0xFFFFFFFF, 0) + b"x" * 65536)
    async with asyncio.timeout(5):
        assert await raw.r.read() == b""  # closed by the simulator
    assert sim.stats["frames_too_large"] == 1
    assert not sim.connections
    # a frame at the limit's edge is still a frame: it is waited for, not refused
    raw2 = await Raw.open(sim)
    await raw2.handshake()
    raw2.w.write(struct.pack(">QII", 0, MAX_FRAME, 0))
    await raw2.w.drain()
    c = VppClient(sim.path or "", probe_interval=None, timeout=5.0)
    await c.connect()  # the server still serves everyone
    assert (await c.call("show_version")).program == "vpe"
    await c.close()
    assert sim.stats["frames_too_large"] == 1
    await raw2.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"retval": 99999999999999}, "not an i32"),
        ({"retval": -(1 << 31) - 1}, "not an i32"),
        ({"retval": "-126"}, "retval must be an integer"),
        ({"retval": 1.5}, "retval must be an integer"),
        ({"retval": True}, "retval must be an integer"),
        ({"retval": -1, "count": 0}, "count must be positive"),
        ({"retval": -1, "count": "3"}, "count must be an integer"),
        ({"retval": -1, "until": math.nan}, "until must be a finite"),
    ],
)
async def test_inject_error_refuses_what_vpp_cannot_answer(
    sim: Simulator, client: VppClient, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        sim.inject_error("show_version", **kwargs)
    assert not sim.faults.errors
    assert await rv(client, "show_version") == 0  # nothing injected, the connection lives


@pytest.mark.parametrize(
    ("seconds", "match"),
    [
        (1e9, "within 0..600"),
        (math.nan, "within 0..600"),
        (math.inf, "within 0..600"),
        (-1, "within 0..600"),
        ("0.1", "must be a number"),
    ],
)
async def test_latency_must_be_finite_and_bounded(sim: Simulator, seconds: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sim.set_latency(seconds)
    with pytest.raises(ValueError, match=match):
        sim.set_latency(seconds, "show_version")
    assert not sim.faults.delaying
    sim.set_latency(600)  # the bound itself is fine
    sim.set_latency(0)


def _raw_http(host: str, port: int, request: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


async def test_admin_api_validates_its_inputs(sim: Simulator, client: VppClient) -> None:
    admin = AdminServer(sim)
    host, port = await admin.start("127.0.0.1", 0)
    base = f"http://{host}:{port}"
    try:
        bad = [
            ("/fault/item", {"message": "show_version", "retval": 99999999999999}, "i32"),
            ("/fault/item", {"message": "show_version", "retval": "x"}, "retval"),
            ("/fault/item", {"message": "show_version", "retval": -1, "until": "soon"}, "until"),
            ("/fault/latency", {"seconds": 1e9}, "within 0..600"),
            ("/fault/latency", {"ms": "10"}, "'ms'"),
            ("/fault/latency", {"seconds": 1, "message": 7}, "'message'"),
        ]
        for path, body, word in bad:
            status, err = await asyncio.to_thread(_http, base + path, body)
            assert status == 400 and word in err["error"], (path, body, err)
        # NaN is not JSON, but Python's json reads it: refused all the same
        req = b'{"seconds": NaN}'
        head = (
            "POST /fault/latency HTTP/1.1\r\nConnection: close\r\n"
            f"Content-Length: {len(req)}\r\n\r\n"
        )
        out = await asyncio.to_thread(_raw_http, host, port, head.encode() + req)
        assert out.startswith(b"HTTP/1.1 400") and b"within 0..600" in out
        for length in (b"-5", b"+5", b"abc", b"99999999999999999999"):
            req = b"POST /fault/clear HTTP/1.1\r\nContent-Length: " + length + b"\r\n\r\n"
            out = await asyncio.to_thread(_raw_http, host, port, req)
            want = b"HTTP/1.1 413" if length.isdigit() else b"HTTP/1.1 400"
            assert out.startswith(want) and b"Content-Length" in out, (length, out)
        assert not sim.faults.errors and not sim.faults.delaying
        assert await rv(client, "show_version") == 0
    finally:
        await admin.stop()


async def test_socket_mode_is_0600_whatever_the_umask(sock_path: str) -> None:
    old = os.umask(0)
    try:
        sim = Simulator()
        await sim.start(sock_path)
    finally:
        os.umask(old)
    try:
        mode = os.stat(sock_path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    finally:
        await sim.stop()
    assert not os.path.exists(sock_path)  # noqa: ASYNC240


async def test_a_path_that_is_not_a_socket_is_never_unlinked(sock_path: str) -> None:
    with open(sock_path, "w") as f:  # noqa: ASYNC230 - a tiny local file
        f.write("precious")
    sim = Simulator()
    with pytest.raises(FileExistsError, match="not a socket; not removing it"):
        await sim.start(sock_path)
    with open(sock_path) as f:  # noqa: ASYNC230
        assert f.read() == "precious"
    os.unlink(sock_path)
    # a stale socket is replaced; one swapped for a file while serving is left at stop
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock_path)
    stale.close()
    await sim.start(sock_path)
    os.unlink(sock_path)
    with open(sock_path, "w") as f:  # noqa: ASYNC230
        f.write("precious")
    await sim.stop()
    with open(sock_path) as f:  # noqa: ASYNC230
        assert f.read() == "precious"


async def test_vppsim_on_a_path_that_is_not_a_socket_exits_2_in_one_line(sock_path: str) -> None:
    import sys

    with open(sock_path, "w") as f:  # noqa: ASYNC230
        f.write("precious")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "datasync.agent.cli", "vppsim", "--socket", sock_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        _out, err = await proc.communicate()
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "not a socket" in lines[0] and "Traceback" not in lines[0]
    with open(sock_path) as f:  # noqa: ASYNC230
        assert f.read() == "precious"


# -- the frame parser, fuzzed ----------------------------------------------------------


class _FakeTransport:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _parser() -> tuple[Any, list[bytes], _FakeTransport]:
    from datasync.vpp.sim.wire import Connection

    conn = Connection(Simulator())
    got: list[bytes] = []
    conn.bodies_received = got.extend  # type: ignore[method-assign]
    transport = _FakeTransport()
    conn.transport = transport  # type: ignore[assignment]
    return conn, got, transport


@settings(max_examples=examples(200), suppress_health_check=[HealthCheck.too_slow])
@given(
    bodies=st.lists(st.binary(max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=7000), max_size=12),
    garbage=st.binary(max_size=40),
)
def test_frames_split_anywhere_come_out_whole_and_in_order(
    bodies: list[bytes], cuts: list[int], garbage: bytes
) -> None:
    """Any framing split into any chunks yields the bodies in order; whatever follows
    (a partial frame, or a header over the limit) is buffered within bounds or closes."""
    stream = b"".join(struct.pack(">QII", 0, len(b), 0) + b for b in bodies) + garbage
    conn, got, transport = _parser()
    last = 0
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        conn.data_received(stream[last:cut])
        last = cut
        assert conn.reader.buffered <= MAX_FRAME + 16
    assert got[: len(bodies)] == bodies
    tail_len = int.from_bytes(garbage[8:12], "big") if len(garbage) >= 16 else 0
    if tail_len > MAX_FRAME:
        assert transport.closed and not conn.reader.buffered
    else:
        assert not transport.closed
