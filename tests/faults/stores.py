"""Store-side helpers of the fault rows: etcd's own history as ground truth, the store
as a fresh client reads it, and a background writer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from datasync.errors import SourceError
from datasync.testing.history import History
from datasync.transport.etcd import EtcdSource

from .harness import AGENT_PREFIX, WAIT, Writer, loop_if


async def store_now(
    endpoints: Sequence[str], prefix: str = AGENT_PREFIX
) -> tuple[dict[str, bytes], int]:
    """The store under ``prefix`` and its revision, read by a fresh client (retrying
    through an election)."""
    src = EtcdSource(name="check", endpoints=list(endpoints), recycle_interval=None,
                     connect_timeout=2.0, request_timeout=5.0)  # fmt: skip
    try:
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    snap = await src.snapshot([prefix])
                    return {kv.key: kv.value for kv in snap.kvs}, snap.revision
                except SourceError:
                    await asyncio.sleep(0.1)
    finally:
        await src.close()


async def etcd_truth(endpoints: Sequence[str], history: History, head: int,
                     prefix: str = AGENT_PREFIX) -> None:  # fmt: skip
    """Add to ``history`` every store change of ``prefix`` from revision 1 to ``head`` that
    the test's writer did not record (a write whose answer was lost in a fault still
    happened): etcd's own history is the ground truth. Only for stores with nothing
    compacted."""
    known = {(e.key, e.revision) for e in history.of("truth")}
    src = EtcdSource(name="truth", endpoints=list(endpoints), recycle_interval=None)
    it = src.watch([prefix], 1)
    try:
        async with asyncio.timeout(WAIT):
            last = 0
            while last < head:
                for ch in await anext(it):
                    last = max(last, ch.revision)
                    if (ch.key, ch.revision) not in known:
                        op = "put" if ch.value is not None else "delete"
                        history.truth(ch.key, op, ch.revision, ch.value)
    except TimeoutError:
        pass  # the head revision was another prefix's write: nothing more of ours
    finally:
        with contextlib.suppress(Exception):
            await it.aclose()  # type: ignore[attr-defined]
        await src.close()


async def put_retrying(w: Writer, puts: dict[str, bytes], deletes: Sequence[str] = ()) -> int:
    """One write that keeps trying through an outage; returns the acknowledged revision."""
    async with asyncio.timeout(WAIT):
        while True:
            try:
                return await w.txn(puts, deletes)
            except SourceError:
                await asyncio.sleep(0.05)


class Load:
    """Background NB traffic: puts spread over ``n`` interfaces until stopped; ``store``
    is what the writes acknowledged so far made of the key space."""

    def __init__(self, w: Writer, store: dict[str, bytes], n: int = 20, pause: float = 0.01,
                 name: Callable[[int], str] = lambda i: f"lo{i}") -> None:  # fmt: skip
        self.w, self.store, self.n, self.pause, self.name = w, store, n, pause, name
        self.count = 0
        self.errors = 0
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            key, value = loop_if(self.name(i % self.n), f"10.{200 + i % 50}.{i % 250}.1/32")
            try:
                await self.w.txn({key: value})
                self.store[key] = value
                self.count += 1
            except SourceError:
                self.errors += 1
                await asyncio.sleep(0.05)
            i += 1
            await asyncio.sleep(self.pause)

    async def wait_count(self, n: int) -> None:
        async with asyncio.timeout(WAIT):
            while self.count < n:
                await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._stop.set()
        await self.task
