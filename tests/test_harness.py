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
