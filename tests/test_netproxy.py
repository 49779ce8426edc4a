"""The fault-injection proxy itself, against a real loopback echo server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from datasync.testing.netproxy import is_proxy_task
from tests.netproxy import TCPProxy, ThreadedTCPProxy

_WRITERS: set[asyncio.StreamWriter] = set()


async def _echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    _WRITERS.add(w)
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except OSError:
        pass
    finally:
        _WRITERS.discard(w)
        w.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    # End the handlers with EOF rather than leaving them to the loop's final cancel.
    for w in list(_WRITERS):
        w.transport.abort()
    await asyncio.sleep(0.05)


@pytest.fixture
async def proxy(echo_port: int) -> AsyncIterator[TCPProxy]:
    async with TCPProxy("127.0.0.1", echo_port) as p:
        yield p


async def _roundtrip(r: asyncio.StreamReader, w: asyncio.StreamWriter, data: bytes) -> bytes:
    w.write(data)
    await w.drain()
    return await r.readexactly(len(data))


async def _connect(p: TCPProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", p.listen_port)


async def _silent(r: asyncio.StreamReader, seconds: float = 0.3) -> bool:
    """True when nothing (not even EOF) arrives for ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            await r.read(1)
    except TimeoutError:
        return True
    return False


async def test_pass_and_delay_forward(proxy: TCPProxy) -> None:
    r, w = await _connect(proxy)
    assert await _roundtrip(r, w, b"hello") == b"hello"
    proxy.set_mode("delay", delay=0.05, jitter=0.01)
    assert await _roundtrip(r, w, b"x" * 100_000) == b"x" * 100_000
    w.close()


async def test_its_tasks_are_told_from_the_code_under_test(proxy: TCPProxy) -> None:
    """The fault harness counts the agent's tasks (I9) and leaves the proxy's out."""
    r, w = await _connect(proxy)
    assert await _roundtrip(r, w, b"x") == b"x"  # the connection's two pumps run now
    mine = asyncio.current_task()
    assert mine is not None and not is_proxy_task(mine)
    pumps = [t for t in asyncio.all_tasks() if is_proxy_task(t)]
    assert len(pumps) == 2
    w.close()


async def test_stall_holds_bytes_and_restore_delivers_them(proxy: TCPProxy) -> None:
    r, w = await _connect(proxy)
    assert await _roundtrip(r, w, b"a") == b"a"
    proxy.trigger_connectivity_loss("stall")
    w.write(b"held")
    await w.drain()
    assert await _silent(r)
    proxy.restore_connectivity()
    async with asyncio.timeout(5):
        assert await r.readexactly(4) == b"held"
    w.close()


async def test_blackhole_is_silent_then_reset_on_restore(proxy: TCPProxy) -> None:
    r, w = await _connect(proxy)
    assert await _roundtrip(r, w, b"a") == b"a"
    proxy.trigger_connectivity_loss()  # blackhole
    w.write(b"lost")
    await w.drain()
    assert await _silent(r)
    # New connections are accepted but never answered either.
    r2, w2 = await _connect(proxy)
    w2.write(b"x")
    assert await _silent(r2)
    proxy.restore_connectivity()
    async with asyncio.timeout(5):
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await r.readexactly(1)
    # And the link works again for new connections.
    r3, w3 = await _connect(proxy)
    assert await _roundtrip(r3, w3, b"ok") == b"ok"
    for x in (w, w2, w3):
        x.close()


async def test_reset_sends_rst(proxy: TCPProxy) -> None:
    r, w = await _connect(proxy)
    assert await _roundtrip(r, w, b"a") == b"a"
    proxy.trigger_connectivity_loss("reset")
    async with asyncio.timeout(5):
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await r.readexactly(1)
    # New connections are reset at once.
    r2, w2 = await _connect(proxy)
    async with asyncio.timeout(5):
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            w2.write(b"x")
            await r2.readexactly(1)
    proxy.restore_connectivity()
    r3, w3 = await _connect(proxy)
    assert await _roundtrip(r3, w3, b"ok") == b"ok"
    w3.close()


def test_unknown_mode_is_a_clear_error() -> None:
    p = TCPProxy("127.0.0.1", 1)
    with pytest.raises(ValueError, match="unknown proxy mode 'nope'"):
        p.set_mode("nope")


def test_threaded_proxy_with_blocking_client() -> None:
    # A blocking echo server in a thread is not needed: the target is a plain listening
    # socket that the test drives synchronously.
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    with ThreadedTCPProxy("127.0.0.1", port) as p:
        c = socket.create_connection(("127.0.0.1", p.listen_port), timeout=5)
        s, _ = srv.accept()
        c.sendall(b"ping")
        assert s.recv(4) == b"ping"
        p.trigger_connectivity_loss("reset")
        c.settimeout(5)
        with pytest.raises(OSError):
            c.sendall(b"x")
            if not c.recv(1):
                raise ConnectionResetError("closed")
        c.close()
        s.close()
    srv.close()
