"""The plugin and harness pieces the end-to-end orchestrator tests share (etcd and Kafka).

``Recorder`` is a plugin that keeps the state it was told, every change it applied and a
count of effective changes; ``Rounds.rec`` (docs/faults.md I8) is the number of rounds after
start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from datasync.api import Change, ChangeEvent, Op, ResyncEvent
from datasync.errors import SourceError
from datasync.resync import Orchestrator, RoundFinished, RoundStarted


@dataclass
class Recorder:
    """A plugin that keeps the state it was told, as a dataplane would.

    ``effects`` counts changes that really changed the state (a put of a new value, a
    delete of a present key): an idempotent plugin does nothing for a repeated value.
    ``gate``, when set, holds every resync until it is opened.
    """

    name: str
    prefixes: Sequence[str]
    depends_on: Sequence[str] = ()
    state: dict[str, bytes] = field(default_factory=dict)
    resyncs: list[ResyncEvent] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    effects: int = 0
    gate: asyncio.Event | None = None
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def resync(self, ev: ResyncEvent) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        self.resyncs.append(ev)
        new = {k: kv.value for k, kv in ev.kvs.items()}
        gone = sorted(self.state.keys() - new.keys())
        self.deleted += gone
        self.effects += len(gone) + sum(self.state.get(k) != v for k, v in new.items())
        self.state = new

    async def change(self, ev: ChangeEvent) -> None:
        for ch in ev.changes:
            self.changes.append(ch)
            if ch.op is Op.PUT:
                assert ch.value is not None
                self.effects += self.state.get(ch.key) != ch.value
                self.state[ch.key] = ch.value
            elif ch.key in self.state:
                del self.state[ch.key]
                self.deleted.append(ch.key)
                self.effects += 1


class Rounds:
    """Round events of one orchestrator."""

    def __init__(self, orch: Orchestrator) -> None:
        self.started: list[RoundStarted] = []
        self.finished: list[RoundFinished] = []
        orch.add_listener(self._add)

    def _add(self, ev: object) -> None:
        if isinstance(ev, RoundStarted):
            self.started.append(ev)
        elif isinstance(ev, RoundFinished):
            self.finished.append(ev)

    @property
    def rec(self) -> int:
        """Full relists after the start-up round."""
        return max(0, len(self.started) - 1)


class RecordingSleep:
    """The orchestrator's backoff sleep: real, but the delays are kept for assertions."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(delay)


async def eventually(pred: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll ``pred`` until true (a hang fails after ``timeout`` seconds)."""
    try:
        async with asyncio.timeout(timeout):
            while not pred():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def converge_on(
    orch: Orchestrator,
    src_name: str,
    plugin: Recorder,
    truth: Any,
    prefixes: list[str],
    timeout: float,
    failure: Callable[[dict[str, bytes], int], str],
) -> int:
    """I1: wait until the plugin holds what a fresh ``truth`` source snapshots of
    ``prefixes`` at its revision R, the orchestrator reports applied_revision == R and
    in_sync; returns R. On timeout ``failure(want, R)`` is the assertion message; ``truth``
    is closed either way."""
    want: dict[str, bytes] = {}
    revision = -1
    try:
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(SourceError):
                    snap = await truth.snapshot(prefixes)
                    want = {kv.key: kv.value for kv in snap.kvs}
                    revision = snap.revision
                    if (
                        plugin.state == want
                        and orch.applied_revision(src_name) == revision
                        and orch.status().in_sync
                    ):
                        return revision
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(failure(want, revision)) from None
    finally:
        await truth.close()


def per_key_increasing(changes: list[Change]) -> bool:
    """I3: for every key, the applied revisions strictly increase."""
    last: dict[str, int] = {}
    for ch in changes:
        if ch.revision <= last.get(ch.key, 0):
            return False
        last[ch.key] = ch.revision
    return True


@contextlib.asynccontextmanager
async def background(coro: Awaitable[object]) -> AsyncIterator[asyncio.Future[object]]:
    """Run ``coro`` for the block; cancel it if the block fails first."""
    task = asyncio.ensure_future(coro)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def tasks_left(before: set[asyncio.Task[Any]], grace: float = 5.0) -> set[asyncio.Task[Any]]:
    """The tasks started since ``before`` that are still pending once they had up to
    ``grace`` seconds to end (a closed gRPC call's status task ends a moment after the
    call): what is left is a leak."""
    current = asyncio.current_task()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while True:
        left = {t for t in asyncio.all_tasks() - before if not t.done() and t is not current}
        if not left or loop.time() > deadline:
            return left
        await asyncio.sleep(0.02)
