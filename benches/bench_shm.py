"""Shared-memory ring vs. a socketpair: ping-pong round trips and one-way throughput.

The peer is a separate process (it attaches the segment received over SCM_RIGHTS), so
both ends run in parallel as they do between the agent and VPP. Ids read
``[compiled]`` (C ring through cffi), ``[twin]`` (pure-Python ring on both sides) and
``[socketpair]`` (u32-length-framed messages over an AF_UNIX stream socketpair).

    .venv/bin/python -m pytest benches/bench_shm.py --benchmark-only \\
        --benchmark-columns=min,median,mean,ops,rounds

``python benches/bench_shm.py`` instead compares the client's CPU per message over the
socket and the ring against one simulator (``... shm`` or ``... socket``: a profile of
that client), ``... client-only`` the client's own Python path with no VPP at all,
``... sim-only`` the simulator's with no client.
"""

from __future__ import annotations

import select
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from datasync.vpp import shm

MSG = bytes(range(64))
THROUGHPUT_MSGS = 20_480  # a multiple of BATCH
BATCH = 64
SPIN = 50  # microseconds of polling before sleeping on the eventfd
POLL_US = 50  # ShmStream(poll_us=...) for the "-poll" case

_PEER = textwrap.dedent(
    """
    import socket, struct, sys
    from datasync.vpp import shm, _shmring_py
    import datasync._shmring
    sock = socket.socket(fileno=int(sys.argv[1]))
    kind, mode = sys.argv[2], sys.argv[3]

    def recv_exact(n):
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = sock.recv_into(view[got:])
            if not k:
                raise SystemExit(0)
            got += k
        return bytes(buf)

    if kind == "socketpair" and mode == "echo":
        while True:
            n = struct.unpack("<I", recv_exact(4))[0]
            sock.sendall(struct.pack("<I", n) + recv_exact(n))
    if kind == "socketpair":  # sink: parse every frame into bytes, as a transport would
        buf, count = bytearray(), 0
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise SystemExit(0)
            buf += chunk
            off = 0
            while off + 4 <= len(buf):
                n = struct.unpack_from("<I", buf, off)[0]
                if off + 4 + n > len(buf):
                    break
                m = bytes(buf[off + 4 : off + 4 + n])
                off += 4 + n
                if m == b"FLUSH":
                    sock.sendall(str(count).encode().ljust(8))
                    count = 0
                else:
                    count += 1
            del buf[:off]
    impl = {"compiled": datasync._shmring, "twin": _shmring_py}[kind]
    _, fds = shm.recv_fds(sock, 3)
    seg = shm.ShmSegment.attach(fds, impl=impl)
    end = seg.server_end()
    count = 0
    while True:
        end.wait(spin_us=int(sys.argv[4]))
        try:
            msgs = end.recv_many(1 << 16)
        except shm.ShmClosedError:
            break
        if mode == "echo":
            sent = 0
            while sent < len(msgs):
                sent += end.send_many(msgs[sent:])
        else:
            for m in msgs:
                if m == b"FLUSH":
                    end.send(str(count).encode())
                    count = 0
                else:
                    count += 1
    """
)


@dataclass
class Peer:
    kind: str
    sock: socket.socket
    proc: subprocess.Popen[bytes]
    seg: shm.ShmSegment | None
    end: shm.ShmEndpoint | None
    spin: int


def _start(kind: str, mode: str) -> Peer:
    spin = 0 if kind.endswith("-nospin") else SPIN
    kind = kind.removesuffix("-nospin")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen(
        [sys.executable, "-c", _PEER, str(b.fileno()), kind, mode, str(spin)],
        pass_fds=[b.fileno()],
    )
    b.close()
    if kind == "socketpair":
        return Peer(kind, a, proc, None, None, 0)
    import datasync._shmring
    from datasync.vpp import _shmring_py

    impl = {"compiled": datasync._shmring, "twin": _shmring_py}[kind]
    seg = shm.ShmSegment.create(1 << 20, impl=impl)
    shm.send_fds(a, seg.fds)
    return Peer(kind, a, proc, seg, seg.client_end(), spin)


def _stop(peer: Peer) -> None:
    if peer.seg is not None:
        peer.seg.close()
    peer.sock.close()
    try:
        peer.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        peer.proc.kill()
        peer.proc.wait()


# "-nospin": both sides sleep on the eventfd at once, the path ShmStream takes
@pytest.fixture(scope="module", params=["compiled", "compiled-nospin", "twin", "socketpair"])
def echo_peer(request: pytest.FixtureRequest) -> Iterator[Peer]:
    peer = _start(request.param, "echo")
    yield peer
    _stop(peer)


@pytest.fixture(scope="module", params=["compiled", "twin", "socketpair"])
def sink_peer(request: pytest.FixtureRequest) -> Iterator[Peer]:
    peer = _start(request.param, "sink")
    yield peer
    _stop(peer)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise EOFError("peer closed")
        got += k
    return bytes(buf)


def _wait_room(end: shm.ShmEndpoint, need: int) -> None:
    # a synchronous producer sleeps on the eventfd until the consumer frees space
    if not end.arm_send(need):
        select.select([end.fileno()], [], [], 0.05)
        end.ack()


def test_ping_pong_64b(benchmark, echo_peer: Peer) -> None:  # type: ignore[no-untyped-def]
    """One 64-byte message to the peer process and back."""
    if echo_peer.end is None:
        sock = echo_peer.sock
        frame = struct.pack("<I", len(MSG)) + MSG

        def round_trip() -> bytes:
            sock.sendall(frame)
            n = struct.unpack("<I", _recv_exact(sock, 4))[0]
            return _recv_exact(sock, n)

    else:
        end = echo_peer.end
        spin = echo_peer.spin

        def round_trip() -> bytes:
            end.send(MSG)
            while True:
                end.wait(spin_us=spin)
                got = end.recv_many()
                if got:
                    return got[0]

    assert benchmark.pedantic(round_trip, rounds=3000, warmup_rounds=100) == MSG


def test_one_way_throughput_64b(benchmark, sink_peer: Peer) -> None:  # type: ignore[no-untyped-def]
    """THROUGHPUT_MSGS messages of 64 bytes into the peer process, sent in batches."""
    if sink_peer.end is None:
        sock = sink_peer.sock
        pack = struct.Struct("<I").pack
        msgs = [MSG] * BATCH

        def run() -> int:
            for _ in range(THROUGHPUT_MSGS // BATCH):
                # framing per message, as the socket transport does
                sock.sendall(b"".join([pack(len(m)) + m for m in msgs]))
            sock.sendall(pack(5) + b"FLUSH")
            return int(_recv_exact(sock, 8))

    else:
        end = sink_peer.end
        msgs = [MSG] * BATCH
        need = shm.frame_size(len(MSG))

        def run() -> int:
            sent = 0
            while sent < THROUGHPUT_MSGS:
                k = end.send_many(msgs[: min(BATCH, THROUGHPUT_MSGS - sent)])
                if k == 0:
                    _wait_room(end, need)
                sent += k
            while not end.try_send(b"FLUSH"):
                _wait_room(end, need)
            while True:
                end.wait(spin_us=SPIN)
                got = end.recv_many()
                if got:
                    return int(got[0])

    count = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    assert count == THROUGHPUT_MSGS
    benchmark.extra_info["messages_per_round"] = count


STREAM_ROUND_TRIPS = 500


@pytest.fixture(scope="module", params=["compiled-stream", "compiled-stream-poll", "socket-stream"])
def stream_case(request: pytest.FixtureRequest) -> Iterator[tuple[str, Peer]]:
    # the echo peer polls only when the stream does, as an asyncio server with poll_us would
    kind = {"socket-stream": "socketpair", "compiled-stream": "compiled-nospin"}.get(
        request.param, "compiled"
    )
    peer = _start(kind, "echo")
    yield request.param, peer
    _stop(peer)


def test_asyncio_ping_pong_64b(benchmark, stream_case: tuple[str, Peer]) -> None:  # type: ignore[no-untyped-def]
    """STREAM_ROUND_TRIPS sequential request/replies on uvloop: ShmStream vs asyncio streams."""
    import asyncio

    import uvloop

    kind, peer = stream_case
    loop = uvloop.new_event_loop()
    try:
        if kind == "socket-stream":
            peer.sock.setblocking(False)
            reader, writer = loop.run_until_complete(asyncio.open_unix_connection(sock=peer.sock))
            frame = struct.pack("<I", len(MSG)) + MSG

            async def run() -> int:
                for _ in range(STREAM_ROUND_TRIPS):
                    writer.write(frame)
                    n = struct.unpack("<I", await reader.readexactly(4))[0]
                    assert await reader.readexactly(n) == MSG
                return STREAM_ROUND_TRIPS

        else:
            assert peer.end is not None
            end = peer.end

            async def make() -> shm.ShmStream:
                return shm.ShmStream(end, poll_us=POLL_US if kind.endswith("-poll") else 0)

            stream = loop.run_until_complete(make())

            async def run() -> int:
                for _ in range(STREAM_ROUND_TRIPS):
                    stream.write(MSG)
                    assert await stream.read() == MSG
                return STREAM_ROUND_TRIPS

        count = benchmark.pedantic(
            lambda: loop.run_until_complete(run()), rounds=5, warmup_rounds=1
        )
        assert count == STREAM_ROUND_TRIPS
        if kind == "socket-stream":
            writer.transport.abort()  # the peer socket is closed by _stop
    finally:
        loop.close()


# --- the client's CPU per message, socket vs shm (python benches/bench_shm.py) -----------


def client_cpu_per_message(rounds: int = 6, n: int = 20_000, profile: str | None = None) -> None:
    """One socket and one shm ``VppClient`` on one simulator process, alternating
    ``call_many("control_ping", [None] * n)``: the best round's rate and the CPU per
    message of the client (``time.process_time``) and of the simulator (``/proc``).
    ``profile``: instead, a CPU-time ``cProfile`` of that transport's client."""
    import cProfile
    import os
    import pstats
    import time
    from pathlib import Path

    import uvloop

    from datasync.testing.procs import SimProcess
    from datasync.vpp.client import VppClient

    tick = os.sysconf("SC_CLK_TCK")

    def cpu(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    async def main(path: str, pid: int) -> None:
        clients = {}
        for transport in ("socket", "shm"):
            clients[transport] = VppClient(path, probe_interval=None, transport=transport)
            await clients[transport].connect()
        for client in clients.values():
            await client.call_many("control_ping", [None] * n)  # warm
        if profile is not None:
            prof = cProfile.Profile(time.thread_time)
            prof.enable()
            for _ in range(rounds):
                await clients[profile].call_many("control_ping", [None] * n)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        else:
            rows: dict[str, list[tuple[float, float, float]]] = {t: [] for t in clients}
            for _ in range(rounds):
                for transport, client in clients.items():
                    c0, s0, w0 = time.process_time(), cpu(pid), time.perf_counter()
                    await client.call_many("control_ping", [None] * n)
                    wall = time.perf_counter() - w0
                    rows[transport].append((wall, time.process_time() - c0, cpu(pid) - s0))
            for transport, got in rows.items():
                msgs = n * len(got)
                print(
                    f"{transport:6s} best {n / min(r[0] for r in got):8.0f} req/s, "
                    f"client CPU {sum(r[1] for r in got) / msgs * 1e6:5.2f} us/msg, "
                    f"simulator CPU {sum(r[2] for r in got) / msgs * 1e6:5.2f} us/msg"
                )
        for client in clients.values():
            await client.close()

    with SimProcess.started(admin=False) as sim:
        uvloop.run(main(sim.path, sim.pid))


def client_only_cpu_per_message(rounds: int = 20, n: int = 20_000) -> None:
    """The client's own CPU per message of ``call_many("control_ping", [None] * n)``,
    with no VPP and no transport cost: a fake transport answers every request's body
    with a ``control_ping_reply`` of its context, delivered on the next loop iteration
    (what the real transports' receive side does). Steers the shared Python path."""
    import asyncio
    import time

    import uvloop

    from datasync.vpp.client import VppClient
    from datasync.vpp.codec import codec_for
    from datasync.vpp.defs import builtin_definitions
    from datasync.vpp.link import MessageTable

    defs = builtin_definitions()
    ids = {name: 100 + i for i, name in enumerate(sorted(defs.messages))}
    reply_id = ids["control_ping_reply"]
    # control_ping is id, client_index, context; its reply id, context, retval, vpe_pid
    template = codec_for(defs, "control_ping_reply").encode(reply_id, {"vpe_pid": 7})

    class Echo:
        kind = "echo"
        max_body = None
        max_in_flight = None
        hold_abandoned = False
        says_goodbye = True
        is_open = True

        def __init__(self, client: VppClient, loop: asyncio.AbstractEventLoop) -> None:
            self.client = client
            self.loop = loop

        def send_many(self, bodies: list[bytes]) -> None:
            head, tail = template[:2], template[6:]
            replies = [head + body[6:10] + tail for body in bodies]
            self.loop.call_soon(self.client.frames_received, replies)

        def send(self, body: bytes) -> None:
            self.send_many([body])

        def close(self) -> None:
            pass

        def abort(self) -> None:
            pass

    async def main() -> None:
        client = VppClient("/nonexistent", probe_interval=None, reconnect=False)
        loop = asyncio.get_running_loop()
        client._loop = loop
        client._transport = Echo(client, loop)  # type: ignore[assignment]
        client._conn = MessageTable({defs.name_crc(k): v for k, v in ids.items()}, defs, 1)
        await client.call_many("control_ping", [None] * n)  # warm
        c0 = time.process_time()
        for _ in range(rounds):
            replies = await client.call_many("control_ping", [None] * n)
            assert len(replies) == n and replies[-1].vpe_pid == 7
        cpu = time.process_time() - c0
        print(f"client only (echo transport): {cpu / (n * rounds) * 1e6:5.2f} us/msg client CPU")

    uvloop.run(main())


def sim_only_cpu_per_message(rounds: int = 7, n: int = 20_000, batch: int = 256) -> None:
    """The simulator's own CPU per ``control_ping``, with no client, no loop and no
    socket: framed batches of ``batch`` requests fed to one ``Connection`` in-process
    (the replies framed and handed to a transport that drops them). Steers ``vpp/sim``."""
    import time

    from datasync.vpp.framing import frames
    from datasync.vpp.sim import Simulator
    from datasync.vpp.sim.wire import Connection

    class Sink:
        def write(self, data: bytes) -> None:
            pass

    sim = Simulator()
    conn = Connection(sim)
    conn.connection_made(Sink())  # type: ignore[arg-type]
    reg = sim.register(conn)
    ping, codec = sim.msg_id("control_ping"), sim.codecs["control_ping"]
    bodies = [codec.encode(ping, {"client_index": reg.handle, "context": i}) for i in range(n)]
    chunks = [frames(bodies[i : i + batch]) for i in range(0, n, batch)]
    best = float("inf")
    for _ in range(rounds + 1):  # the first warms
        c0 = time.process_time()
        for chunk in chunks:
            conn.data_received(chunk)
        best = min(best, time.process_time() - c0)
    assert sim.message_counts["control_ping"] == n * (rounds + 1)
    print(f"simulator only (in-process): {best / n * 1e6:5.2f} us/msg simulator CPU (best round)")


if __name__ == "__main__":
    if sys.argv[1:] == ["client-only"]:
        client_only_cpu_per_message()
    elif sys.argv[1:] == ["sim-only"]:
        sim_only_cpu_per_message()
    else:
        client_cpu_per_message(profile=sys.argv[1] if len(sys.argv) > 1 else None)
