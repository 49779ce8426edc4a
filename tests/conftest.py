"""Shared fixtures: uvloop for every async test, loop exceptions fail the test, failpoints
off around every test, and the strict VPP simulator in the test's loop (``sim``, on
``sock_path``), which the VPP, plugin and fault suites share."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any

import pytest
import uvloop
from hypothesis import settings

import datasync._extensions as _ext
from datasync.testing import failpoints as fp
from datasync.vpp.sim import Simulator

# No deadlines on a shared 2-core machine; CI draws the same examples every run, so a
# red CI is reproducible (developers keep random draws to find new cases).
settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, database=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# Tests run on uvloop, as the agent does; DATASYNC_TEST_LOOP=asyncio runs them on stock asyncio.
_LOOP = os.environ.get("DATASYNC_TEST_LOOP", "uvloop")

# A task that only a garbage cycle references is destroyed while pending whenever the
# collector happens to run. DATASYNC_TEST_GC=1 collects after every test, so the test that
# leaked it is the one that fails; DATASYNC_TEST_GC=stress also collects every 10 ms of loop
# time, so such leaks show up on every run instead of once in a while. Both are slower.
_GC_MODE = os.environ.get("DATASYNC_TEST_GC", "")


def _collect_often(loop: asyncio.AbstractEventLoop) -> None:
    gc.collect()
    loop.call_later(0.01, _collect_often, loop)


# Unhandled exceptions reported by the loop of the running test (see _fail_on_loop_exceptions).
_LOOP_ERRORS: list[dict[str, Any]] = []


_PACKAGE_DIR = os.path.dirname(os.path.abspath(_ext.__file__)) + os.sep
_ASYNCIO_DIR = os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep
#: appended to the name of every task the package creates (see _is_foreign_leak)
_MADE_BY_PACKAGE = " [datasync]"


def _in_package(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR)


def _task_factory(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kw: Any
) -> asyncio.Task[Any]:
    """Tasks as usual, named so that a leaked one tells who made it: the first caller
    outside asyncio (gather, ensure_future, ...) and outside this file."""
    task = asyncio.Task(coro, loop=loop, **kw)
    frame = sys._getframe(1)
    while frame is not None and (
        frame.f_code.co_filename.startswith(_ASYNCIO_DIR) or frame.f_code.co_filename == __file__
    ):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is not None and _in_package(frame.f_code.co_filename):
        task.set_name(task.get_name() + _MADE_BY_PACKAGE)
    return task


def _new_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop() if _LOOP == "asyncio" else uvloop.new_event_loop()
    loop.set_exception_handler(lambda _loop, ctx: _LOOP_ERRORS.append(ctx))
    loop.set_task_factory(_task_factory)  # type: ignore[arg-type]
    if _GC_MODE == "stress":
        loop.call_soon(_collect_often, loop)
    return loop


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by the service they need, so ``-m "not etcd and not kafka"`` works; leave
    ``slow`` tests out unless the ``-m`` expression names them (``-m slow``) or
    ``DATASYNC_TEST_SLOW=1`` is set."""
    for item in items:
        parts = item.path.parts
        for service in ("etcd", "kafka"):
            if service in parts[-2:-1]:
                item.add_marker(getattr(pytest.mark, service))
    if "slow" in (config.option.markexpr or "") or os.environ.get("DATASYNC_TEST_SLOW"):
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    return {_LOOP: _new_loop}


def _package_task(task: object) -> bool:
    """True when the package made ``task`` or it runs a coroutine defined in the package
    (the outermost one: by the time the collector destroys a task, its coroutine may
    already be closed, with no await chain left)."""
    get_name = getattr(task, "get_name", None)
    if get_name is not None and get_name().endswith(_MADE_BY_PACKAGE):
        return True
    get_coro = getattr(task, "get_coro", None)
    code = getattr(get_coro(), "cr_code", None) if get_coro is not None else None
    return code is not None and _in_package(code.co_filename)


def _is_foreign_leak(ctx: dict[str, Any]) -> bool:
    """A pending task the collector destroyed that neither the package made nor runs
    package code: a test helper's or a library's (grpc, say). The collector runs at
    arbitrary times, so such a report may land in any later test; it is a warning with the
    task's repr, not that test's failure. A leaked task of the package still fails."""
    return ctx.get("message") == "Task was destroyed but it is pending!" and not (
        _package_task(ctx.get("task"))
    )


@pytest.fixture(autouse=True)
def _fail_on_loop_exceptions() -> Iterator[None]:
    """An exception nobody retrieved (a crashed task, a failing callback) fails the test."""
    _LOOP_ERRORS.clear()
    yield
    if _GC_MODE:
        gc.collect()  # a leaked pending task is reported by the test that leaked it
    reports, _LOOP_ERRORS[:] = list(_LOOP_ERRORS), []
    for ctx in reports:
        if _is_foreign_leak(ctx):
            warnings.warn(
                f"leaked pending task (not datasync code): {ctx.get('task')}", stacklevel=1
            )
    errors = [
        # The task (or future, or handle) names the coroutine and where it waits.
        f"{ctx.get('message')}: {ctx.get('exception')!r}"
        f" {ctx.get('task') or ctx.get('future') or ctx.get('handle') or ''}"
        for ctx in reports
        if not _is_foreign_leak(ctx)
    ]
    if errors:
        pytest.fail("unhandled event-loop exceptions: " + "; ".join(errors))


def extensions_enabled() -> bool:
    """True unless DATASYNC_NO_EXTENSIONS=1 selected the pure-Python twins."""
    return not _ext.NO_EXTENSIONS


@pytest.fixture(autouse=True)
def failpoints_off() -> Iterator[None]:
    """No failpoint armed by one test is left for the next."""
    fp.reset()
    yield
    fp.reset()


@pytest.fixture
def sock_dir() -> Iterator[str]:
    # AF_UNIX paths are limited to 108 bytes: pytest's tmp_path can be longer
    path = tempfile.mkdtemp(prefix="dstest-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sock_path(sock_dir: str) -> str:
    return os.path.join(sock_dir, "api.sock")


@pytest.fixture
async def sim(sock_path: str) -> AsyncIterator[Simulator]:
    """The strict simulator serving ``sock_path`` in the test's event loop: a call that
    references a missing object is refused and counted, as a real VPP refuses it."""
    s = Simulator(seed=1, strict=True)
    await s.start(sock_path)
    yield s
    await s.stop()
