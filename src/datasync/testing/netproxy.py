"""A loopback TCP proxy for fault tests, modelled on asyncpg's TCPFuzzingProxy and etcd's
peer proxy.

Modes, switchable at any time with ``set_mode``:

- ``pass``: forward both ways;
- ``delay``: forward each chunk after ``delay`` seconds (± ``jitter``), order kept;
- ``stall``: hold everything, forward nothing, close nothing; ``pass`` flushes what was held
  (a paused network: no byte is lost);
- ``blackhole``: accept and read, never forward, never close (a silent network that loses
  bytes); connections that lived through it are reset when connectivity is restored, because
  their byte streams have holes;
- ``reset``: every open connection and every new one is closed with a TCP RST (SO_LINGER 0).

``TCPProxy`` runs on the loop of the coroutine that starts it (use it from async tests).
``ThreadedTCPProxy`` runs the same proxy on its own loop in a background thread, for code
that blocks its loop (synchronous clients) or for sync tests; its methods are synchronous.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any

MODES = ("pass", "delay", "stall", "blackhole", "reset")


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Conn:
    def __init__(
        self,
        proxy: TCPProxy,
        cr: asyncio.StreamReader,
        cw: asyncio.StreamWriter,
        ur: asyncio.StreamReader,
        uw: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.cw, self.uw = cw, uw
        self.holed = False  # bytes were dropped: the stream is corrupt, reset on restore
        self.tasks = [proxy._spawn(self._pump(cr, uw)), proxy._spawn(self._pump(ur, cw))]

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        p = self.proxy
        held: list[bytes] = []
        try:
            while True:
                data = await r.read(65536)
                if not data:
                    break
                p.bytes_seen += len(data)
                mode = p.mode
                if mode == "blackhole":
                    self.holed = True
                    continue
                if mode == "stall":
                    held.append(data)
                    # Wake when the mode changes; more reads keep queueing meanwhile.
                    if len(held) == 1:
                        self.tasks.append(p._spawn(self._flush_when_resumed(held, w)))
                    continue
                if held:
                    held.append(data)
                    continue
                if mode == "delay":
                    await asyncio.sleep(max(0.0, p.delay + random.uniform(-p.jitter, p.jitter)))
                w.write(data)
                await w.drain()
        except (OSError, RuntimeError, asyncio.IncompleteReadError):
            # The peer went away (uvloop raises RuntimeError on a closed transport).
            pass
        finally:
            if p.mode not in ("blackhole", "stall"):
                self.close()

    async def _flush_when_resumed(self, held: list[bytes], w: asyncio.StreamWriter) -> None:
        await self.proxy._resumed.wait()
        with contextlib.suppress(OSError, RuntimeError):
            while held:
                w.write(held.pop(0))
            await w.drain()

    def reset(self) -> None:
        _rst(self.cw)
        _rst(self.uw)
        for t in self.tasks:
            t.cancel()
        self.proxy._conns.discard(self)

    def close(self) -> None:
        for w in (self.cw, self.uw):
            with contextlib.suppress(Exception):
                w.close()
        self.proxy._conns.discard(self)


def is_proxy_task(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` is a proxy's own (accepting or pumping a connection): a test that
    counts the tasks of the code under test leaves these out (the network is not it)."""
    return getattr(task.get_coro(), "cr_code", None) in _PROXY_CODE


class TCPProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port`` with injectable faults."""

    def __init__(self, target_host: str, target_port: int, listen_port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_port = listen_port
        self.mode = "pass"
        self.delay = 0.0
        self.jitter = 0.0
        self.bytes_seen = 0
        self.connections_total = 0
        self._conns: set[_Conn] = set()
        # Every pump task, until it ends. A closed connection is dropped from _conns while
        # its other pump still waits on a reader that only that task references: without
        # this set the garbage collector may destroy the pending task.
        self._tasks: set[asyncio.Task[None]] = set()
        self._held_clients: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        self._resumed = asyncio.Event()
        self._resumed.set()

    @property
    def address(self) -> str:
        """``127.0.0.1:port`` for clients."""
        return f"127.0.0.1:{self.listen_port}"

    async def start(self) -> TCPProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)
        self.listen_port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aenter__(self) -> TCPProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _accept(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.connections_total += 1
        if self.mode == "reset":
            _rst(cw)
            return
        if self.mode in ("blackhole", "stall"):
            # Hold the client, read and discard until connectivity comes back, then reset it.
            self._held_clients.add(cw)
            try:
                while await cr.read(65536):
                    pass
            except OSError:
                pass
            return
        try:
            ur, uw = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            _rst(cw)
            return
        self._conns.add(_Conn(self, cr, cw, ur, uw))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def set_mode(self, mode: str, delay: float = 0.0, jitter: float = 0.0) -> None:
        """Switch mode; see the module docstring."""
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}; one of {MODES}")
        old, self.mode = self.mode, mode
        self.delay, self.jitter = delay, jitter
        if mode in ("stall", "blackhole"):
            self._resumed.clear()
        else:
            self._resumed.set()
        if mode == "reset" or (old == "blackhole" and mode != "blackhole"):
            self._reset_all(only_holed=mode != "reset")
        if old in ("blackhole", "stall") and mode not in ("blackhole", "stall"):
            for cw in list(self._held_clients):
                _rst(cw)
            self._held_clients.clear()

    def _reset_all(self, only_holed: bool = False) -> None:
        for c in list(self._conns):
            if not only_holed or c.holed:
                c.reset()

    def trigger_connectivity_loss(self, mode: str = "blackhole") -> None:
        """Cut the link: ``blackhole`` (silent, default), ``stall`` or ``reset``."""
        self.set_mode(mode)

    def restore_connectivity(self) -> None:
        """Forward again (connections that lost bytes in a blackhole are reset)."""
        self.set_mode("pass")

    def reset_connections(self) -> None:
        """RST every open connection; the mode stays."""
        self._reset_all()

    @property
    def connections(self) -> int:
        """Open forwarded connections."""
        return len(self._conns)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._reset_all()
            for cw in list(self._held_clients):
                _rst(cw)
            self._held_clients.clear()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.sleep(0.01)  # let the reset connections' handlers finish


class ThreadedTCPProxy:
    """A ``TCPProxy`` on its own event loop in a daemon thread; synchronous methods."""

    def __init__(self, target_host: str, target_port: int, listen_port: int = 0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="netproxy")  # fmt: skip
        self._thread.start()
        self.proxy: TCPProxy = self._run(self._make(target_host, target_port, listen_port))

    async def _make(self, host: str, port: int, listen: int) -> TCPProxy:
        return await TCPProxy(host, port, listen).start()

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def _call(self, fn: Any, *args: Any) -> Any:
        async def go() -> Any:
            return fn(*args)

        return self._run(go())

    @property
    def address(self) -> str:
        return self.proxy.address

    @property
    def listen_port(self) -> int:
        return self.proxy.listen_port

    def set_mode(self, mode: str, delay: float = 0.0, jitter: float = 0.0) -> None:
        self._call(self.proxy.set_mode, mode, delay, jitter)

    def trigger_connectivity_loss(self, mode: str = "blackhole") -> None:
        self._call(self.proxy.trigger_connectivity_loss, mode)

    def restore_connectivity(self) -> None:
        self._call(self.proxy.restore_connectivity)

    def reset_connections(self) -> None:
        self._call(self.proxy.reset_connections)

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self.proxy.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> ThreadedTCPProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: the code of the proxy's task coroutines (``is_proxy_task``)
_PROXY_CODE = frozenset(f.__code__ for f in (TCPProxy._accept, _Conn._pump))
