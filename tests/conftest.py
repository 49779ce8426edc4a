"""Shared fixtures: uvloop for every async test, and loop exceptions fail the test."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop

import datasync._extensions as _ext

# Tests run on uvloop, as the agent does; DATASYNC_TEST_LOOP=asyncio runs them on stock asyncio.
import os

_LOOP = os.environ.get("DATASYNC_TEST_LOOP", "uvloop")


@pytest.fixture(scope="session")
def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    if _LOOP == "asyncio":
        return asyncio.DefaultEventLoopPolicy()
    return uvloop.EventLoopPolicy()


@pytest.fixture(autouse=True)
def _fail_on_loop_exceptions(request: pytest.FixtureRequest) -> Iterator[None]:
    """Record unhandled exceptions of the test's event loop and fail the test on them."""
    errors: list[dict[str, Any]] = []
    if "asyncio" not in request.keywords and not request.node.get_closest_marker("asyncio"):
        yield
        return
    loop = asyncio.get_event_loop_policy().get_event_loop()
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    yield
    loop.set_exception_handler(None)
    if errors:
        pytest.fail(f"unhandled event-loop exceptions: {errors!r}")


def extensions_enabled() -> bool:
    return not _ext.NO_EXTENSIONS
