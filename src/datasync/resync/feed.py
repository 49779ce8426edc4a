"""One source's feed: its watch, event buffer, revision filter, state and watermark.

The feed is the only writer of its source's state. The source reports its connection
(``on_source_state``); the round reports what it does with the source (``reading``,
``read_failed``, ``restart_at``); while the round reads a snapshot the feed shows
RESYNCING, and a source's "connected" then waits for the read's outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from ..api import Ack, Change, Snapshot, Source, SourceState
from ..buffer import EventBuffer, RevisionFilter
from ..errors import SourceUnavailableError
from ..testing import failpoints as _fp
from .config import ResyncConfig
from .status import SourceStatus

__all__ = ["SourceFeed"]

log = logging.getLogger("datasync.resync")


class SourceFeed:
    """Per-source bookkeeping: buffer, filter, watch task, revisions, state.

    ``deliver(feed, changes)`` takes the accepted changes of a running watch (in
    revision order) while the feed is not ``buffering``; ``request_resync(reason)``
    is called when the watch fails or ends.
    """

    def __init__(
        self,
        source: Source,
        config: ResyncConfig,
        deliver: Callable[[SourceFeed, Sequence[Change]], None],
        request_resync: Callable[[str], object],
        stopped: asyncio.Event,
    ) -> None:
        self.source = source
        self.name = source.name
        self._config = config
        self._deliver = deliver
        self._request_resync = request_resync
        self._stopped = stopped
        self.buffer = EventBuffer(config.buffer_coalesce_above)
        self.filter = RevisionFilter()
        #: the snapshot's revision, then the highest one the watch delivered (held or
        #: handed out): how far the agent has heard of the store, applied or not
        self.received_revision = 0
        #: changes are held in the buffer (a round is running) rather than delivered
        self.buffering = True
        self.watch_task: asyncio.Task[None] | None = None
        #: old watches that did not stop in time: stop() waits for them
        self.leftover: set[asyncio.Task[None]] = set()
        self.snapshot: Snapshot | None = None
        self.state = SourceState.DISCONNECTED
        self.since = time.time()
        self.error: str | None = None
        # Delivered change acks not yet done, in delivery order, for the applied watermark.
        self.outstanding: deque[tuple[int, Ack]] = deque()
        self.applied_revision = 0
        # Highest revision accepted by the filter and handed to deliver.
        self.seen_revision = 0
        #: a snapshot was taken and the round that took it has not succeeded yet
        self.snapshot_pending = False
        # Consecutive rounds this source was stale (silent while others were read).
        self.stale_rounds = 0

    # --- state ---------------------------------------------------------------------------

    def _set_state(self, state: SourceState, error: str | None = None) -> None:
        if state != self.state:
            self.state = state
            self.since = time.time()
        self.error = error

    def on_source_state(self, state: SourceState, reason: str) -> bool:
        """The source reports its connection (it resumes its watch by itself); True when
        that may bring the agent in sync. A "connected" during a snapshot read waits for
        the read: the round decides then."""
        if self.state is SourceState.RESYNCING and state is SourceState.CONNECTED:
            return False
        self._set_state(state, None if state is SourceState.CONNECTED else reason)
        return state is SourceState.CONNECTED

    def status(self) -> SourceStatus:
        return SourceStatus(
            self.state, self.since, self.filter.snapshot_revision, self.applied_revision, self.error
        )

    def stats(self) -> dict[str, int]:
        return {
            "buffered": len(self.buffer),
            "coalesced": self.buffer.coalesced,
            "filtered": self.filter.dropped,
            "received_revision": self.received_revision,
        }

    # --- snapshots -----------------------------------------------------------------------

    def reading(self) -> None:
        """The round is about to read the snapshot: RESYNCING until it knows the outcome."""
        self._set_state(SourceState.RESYNCING)

    async def read(self, prefixes: list[str]) -> Snapshot | BaseException:
        """Read the source's snapshot; the error instead of raising it."""
        timeout = self._config.snapshot_timeout
        try:
            async with asyncio.timeout(timeout):
                snap = await self.source.snapshot(prefixes)
            if _fp.ENABLED:
                await _fp.hit("resync.after_snapshot_page")
            return snap
        except TimeoutError:
            return SourceUnavailableError(
                f"source {self.name}: snapshot timed out after {timeout:g} s"
            )
        except Exception as exc:
            return exc

    def read_failed(self, exc: BaseException) -> None:
        self._set_state(SourceState.DISCONNECTED, f"{type(exc).__name__}: {exc}")

    async def restart_at(self, snap: Snapshot, prefixes: list[str]) -> None:
        """Adopt ``snap`` (revision R) and restart the watch from R+1."""
        await self.stop_watch()
        self.snapshot = snap
        self.stale_rounds = 0
        # The new watch replays everything after R: what the old one buffered is redundant.
        self.buffer.clear()
        self.filter.reset(snap.revision, [(kv.key, kv.revision) for kv in snap.kvs])
        self.outstanding.clear()
        # R is applied once the round succeeds (the plugins applied the snapshot), not
        # now; a store reset may lower the watermark, nothing else does
        self.seen_revision = self.received_revision = snap.revision
        self.applied_revision = min(self.applied_revision, snap.revision)
        self.snapshot_pending = True
        if _fp.ENABLED:
            await _fp.hit("resync.before_watch")
        self.start_watch(prefixes, snap.revision + 1)
        self._set_state(SourceState.CONNECTED)

    def applied(self) -> None:
        """The round that took the snapshot succeeded: the plugins applied it."""
        self.snapshot_pending = False

    def drain(self) -> None:
        """Deliver what the buffer held through the filter; deliver directly from now on."""
        self._deliver(self, self.buffer.drain(self.filter))
        self.buffering = False

    # --- the watch -----------------------------------------------------------------------

    def start_watch(self, prefixes: list[str], start: int) -> None:
        self.watch_task = asyncio.ensure_future(self._watch(prefixes, start))

    async def stop_watch(self) -> None:
        """Cancel the watch; one that will not end in time is left for stop()."""
        task, self.watch_task = self.watch_task, None
        if task is None:
            return
        task.cancel()
        # asyncio.wait neither raises the task's error nor swallows our own cancellation.
        done, _ = await asyncio.wait({task}, timeout=self._config.snapshot_timeout)
        if not done:
            log.warning("datasync: the old watch of source %s did not stop in time", self.name)
            self.leftover.add(task)
            task.add_done_callback(self.leftover.discard)

    async def _watch(self, prefixes: list[str], start: int) -> None:
        changes: AsyncIterator[list[Change]] | None = None
        try:
            changes = self.source.watch(prefixes, start)  # may raise at once (store closed)
            async for batch in changes:
                if not batch:
                    continue
                last = batch[-1].revision
                if last > self.received_revision:
                    self.received_revision = last
                if self.buffering:
                    self.buffer.extend(batch)
                else:
                    self._deliver(self, self.filter.filter(batch))
        except asyncio.CancelledError as cancel:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Ours (the round restarts the watch, or stop()). It landed in the stream's
                # own __anext__, the only await here, which is where a stream cleans up.
                raise
            # A cancellation the source let escape is a failed watch, not a stop.
            self._failed(SourceUnavailableError(f"watch cancelled: {cancel!r}"))
        except Exception as exc:
            self._failed(exc)
        else:
            # The watch ended without error (source closed): resync once it is back.
            self._set_state(SourceState.DISCONNECTED, "watch ended")
            if not self._stopped.is_set():
                self._request_resync(f"source {self.name}: watch ended")
        # Reported first, closed after: a stream slow to close delays nothing.
        if changes is not None:
            await self._close_stream(changes)

    async def _close_stream(self, changes: AsyncIterator[Any]) -> None:
        """Release a watch stream now, not whenever the collector finalizes it (a stream
        left at a yield because our side raised). Bounded, and its own errors are only
        logged: the watch's outcome, already reported, is what counts."""
        aclose = getattr(changes, "aclose", None)
        if aclose is None:
            return
        try:
            async with asyncio.timeout(self._config.snapshot_timeout):
                await aclose()
        except Exception as exc:  # TimeoutError included
            log.warning("datasync: closing the watch of source %s failed: %r", self.name, exc)

    def _failed(self, exc: BaseException) -> None:
        """Compaction, store reset, lost source: only a fresh snapshot is safe now."""
        kind = type(exc).__name__
        self._set_state(SourceState.DISCONNECTED, f"{kind}: {exc}")
        self._request_resync(f"source {self.name}: watch failed ({kind}: {exc})")

    # --- the applied watermark -----------------------------------------------------------

    def sent(self, revision: int, ack: Ack) -> None:
        """A change event of ``revision`` went out: the watermark waits for its ack."""
        self.outstanding.append((revision, ack))

    def advance_watermark(self) -> None:
        """Applied = every accepted change at or below it is acknowledged or needed no ack.

        Changes nobody had to apply (shadowed by another source, under no registered
        prefix) count as applied as soon as they are seen.
        """
        if self.snapshot_pending:
            return  # a snapshot the plugins have not applied yet: nothing past it is applied
        q = self.outstanding
        # A change that failed (or timed out) holds the watermark until a snapshot.
        while q and q[0][1].is_done and q[0][1].error is None:
            q.popleft()
        # Acks are queued in revision order: everything before the oldest pending one is done.
        done_through = q[0][0] - 1 if q else self.seen_revision
        if _fp.ENABLED and done_through > self.applied_revision:
            _fp.hit_sync("checkpoint.before_commit_rev")
        self.applied_revision = max(self.applied_revision, done_through)
