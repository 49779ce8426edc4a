"""Fixtures for the VPP southbound tests: the simulator in the test's loop or in a thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import uvloop

from datasync.vpp.client import VppClient
from datasync.vpp.sim import Simulator
from tests.paths import VPP_API_REFERENCE, vpp_api_files

from .helpers import client_factory

SHARED_API = str(VPP_API_REFERENCE)


def shared_api_files() -> list[str]:
    """The full .api.json files of a real VPP build (the reference set)."""
    return vpp_api_files()


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[VppClient]:
    """A connected client of ``sim`` (no health probe, so tests control all traffic)."""
    assert sim.path is not None
    c = VppClient(sim.path, probe_interval=None, timeout=5.0)
    await c.connect()
    yield c
    await c.close()


@pytest.fixture
async def make_client(sim: Simulator) -> AsyncIterator[Callable[..., Awaitable[VppClient]]]:
    """Makes connected clients of ``sim`` (see ``client_factory``), closed at teardown."""
    assert sim.path
    async with client_factory(sim.path) as make:
        yield make


@pytest.fixture
async def task_baseline() -> AsyncIterator[Callable[[], None]]:
    """Returns a checker that fails if tasks created during the test are still alive."""
    before = set(asyncio.all_tasks())

    def check() -> None:
        leaked = [t for t in asyncio.all_tasks() if t not in before and not t.done()]
        leaked = [t for t in leaked if t is not asyncio.current_task()]
        assert not leaked, f"leaked tasks: {leaked!r}"

    yield check


class ThreadedSim:
    """A simulator on its own uvloop in a background thread, for blocking clients (papi)."""

    def __init__(self, path: str, **kw: Any) -> None:
        self.path = path
        self._kw = kw
        self.loop = uvloop.new_event_loop()
        self.sim: Simulator | None = None
        self._thread = threading.Thread(target=self._run, name="vppsim", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.sim = Simulator(**self._kw)
            self.loop.run_until_complete(self.sim.start(self.path))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.sim.stop())
        self.loop.close()

    def start(self) -> ThreadedSim:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def run(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Run ``fn(*args)`` (or await it, if it returns a coroutine) in the simulator's loop."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def call() -> None:
            try:
                result = fn(*args, **kw)
            except BaseException as exc:
                fut.set_exception(exc)
                return
            if asyncio.iscoroutine(result):
                task = self.loop.create_task(result)
                task.add_done_callback(
                    lambda t: (
                        fut.set_exception(t.exception())  # type: ignore[arg-type]
                        if t.exception()
                        else fut.set_result(t.result())
                    )
                )
            else:
                fut.set_result(result)

        self.loop.call_soon_threadsafe(call)
        return fut.result(10)

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def threaded_sim(sock_path: str) -> Iterator[ThreadedSim]:
    ts = ThreadedSim(sock_path, seed=2).start()
    yield ts
    ts.stop()
