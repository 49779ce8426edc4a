"""Helpers the VPP client tests share (the fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from datasync.vpp.client import VppClient


async def eventually(pred: Callable[[], bool], limit: float = 5.0, poll: float = 0.01) -> None:
    """Poll ``pred`` until it holds (state changes here come from callbacks or another
    thread, not events)."""
    async with asyncio.timeout(limit):
        while not pred():
            await asyncio.sleep(poll)


class Faults:
    """An ``on_fault`` callback that keeps every (kind, detail) it is told."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, kind: str, detail: Any) -> None:
        self.seen.append((kind, dict(detail)))

    def kinds(self) -> list[str]:
        return [k for k, _ in self.seen]


@asynccontextmanager
async def client_factory(
    *args: Any, **base: Any
) -> AsyncIterator[Callable[..., Awaitable[VppClient]]]:
    """Yields ``make(**kw)``: a connected ``VppClient(*args, **base, **kw)`` with no health
    probe and short backoffs unless ``kw`` says otherwise; every client made is closed on
    exit."""
    made: list[VppClient] = []

    async def make(**kw: Any) -> VppClient:
        kw.setdefault("probe_interval", None)
        kw.setdefault("backoff_initial", 0.01)
        kw.setdefault("backoff_max", 0.05)
        c = VppClient(*args, **base, **kw)
        made.append(c)
        await c.connect()
        return c

    yield make
    for c in made:
        await c.close()
