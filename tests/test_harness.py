"""The test harness itself: an unhandled event-loop exception fails the test."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

INNER = """
import asyncio

async def test_callback_blows_up():
    asyncio.get_running_loop().call_soon(lambda: 1 / 0)
    await asyncio.sleep(0.01)

async def test_quiet():
    await asyncio.sleep(0)
"""


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_loop_exception_fails_the_test_that_caused_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    monkeypatch.setenv("DATASYNC_TEST_LOOP", loop)
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    # The culprit's call passes and its teardown errors; the quiet test is untouched.
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        ["ERROR test_inner.py::test_callback_blows_up - Failed: unhandled event-loop*"]
    )
    result.stdout.fnmatch_lines(["*ZeroDivisionError*"])


LEAKS = """
import asyncio
import gc
import os

import datasync
from datasync.api import Channel


async def test_leaks_a_helper_task():
    async def hang():
        await asyncio.get_running_loop().create_future()  # only this task holds it

    task = asyncio.ensure_future(hang())
    await asyncio.sleep(0)
    del task
    gc.collect()


async def test_leaks_a_package_task():
    task = asyncio.ensure_future(Channel().__anext__())
    await asyncio.sleep(0)
    del task
    gc.collect()


# As if the package made a task of a stdlib coroutine (e.g. ensure_future(event.wait())):
# a function whose code says it lives in the package.
_SPAWN = (
    "import asyncio\\n"
    "def spawn():\\n"
    "    return asyncio.ensure_future(asyncio.Event().wait())\\n"
)
_ns = {}
exec(compile(_SPAWN, os.path.join(os.path.dirname(datasync.__file__), "_spawn.py"), "exec"), _ns)


async def test_leaks_a_task_the_package_made():
    task = _ns["spawn"]()
    await asyncio.sleep(0)
    del task
    gc.collect()
"""


def test_leaked_pending_task_fails_only_when_it_runs_package_code(
    pytester: pytest.Pytester,
) -> None:
    """A pending task destroyed by the collector is reported when it happens, which may be
    during a later test: one the package made, or that runs package code, fails; a test
    helper's is a warning."""
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(test_leaks=LEAKS)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(["ERROR test_leaks.py::test_leaks_a_package_task - Failed*"])
    result.stdout.fnmatch_lines(["*Failed: *destroyed but it is pending*Channel.__anext__*"])
    result.stdout.fnmatch_lines(
        ["ERROR test_leaks.py::test_leaks_a_task_the_package_made - Failed*"]
    )
    result.stdout.fnmatch_lines(["*Failed: *destroyed but it is pending*[[]datasync]*Event.wait*"])
    result.stdout.fnmatch_lines(["*leaked pending task (not datasync code)*hang()*"])
