"""One resync round: its members, their prefixes, the snapshots and the errors.

A round works on the registrations and prefixes of its start: a watcher that registers
(or adds a prefix) meanwhile takes part in the next round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence

from ..api import Ack, ResyncEvent, Snapshot
from ..errors import ClosedError, DependencyFailedError, ResyncTimeoutError
from ..testing import failpoints as _fp
from .config import ResyncConfig
from .fanout import Fanout
from .feed import SourceFeed
from .plan import plan
from .registry import Registry, WatcherRegistration
from .status import Health, PluginState, RoundFinished, RoundStarted

__all__ = ["Round"]

log = logging.getLogger("datasync.resync")


class Round:
    """Quiesce, read every source at one revision, resync the plugins in order, drain.

    ``errors`` maps a plugin name (or ``source:<name>``) to what failed; the round
    succeeded when it stays empty. ``retry_later(reason, attempt)`` schedules a
    backed-off round for a stale source.
    """

    def __init__(
        self,
        number: int,
        reasons: tuple[str, ...],
        members: Mapping[str, WatcherRegistration],
        *,
        config: ResyncConfig,
        feeds: Sequence[SourceFeed],
        fanout: Fanout,
        registry: Registry,
        health: Health,
        clock: Callable[[], float],
        retry_later: Callable[[str, int], None],
    ) -> None:
        self.number = number
        self.reasons = reasons
        self.members = dict(members)
        self.prefixes_of = {name: reg.prefixes for name, reg in self.members.items()}
        self.errors: dict[str, BaseException] = {}
        self.running = False
        self._config = config
        self._feeds = feeds
        self._fanout = fanout
        self._registry = registry
        self._health = health
        self._clock = clock
        self._retry_later = retry_later
        self._started = 0.0
        self._synced: list[WatcherRegistration] = []

    async def run(self) -> bool:
        """Run the round to its end; True when it succeeded."""
        self._started = self._clock()
        self.running = True
        for feed in self._feeds:
            feed.buffering = True
        self._health.emit(RoundStarted(self.number, self.reasons))
        log.info("datasync: resync round %d started (%s)", self.number, "; ".join(self.reasons))
        try:
            if _fp.ENABLED:
                await _fp.hit("resync.started")
            await self._fanout.quiesce(self._feeds)
            for name in self.members:
                self._health.set_plugin(name, PluginState.RESYNCING)
            prefixes = sorted({p for ps in self.prefixes_of.values() for p in ps})
            if not prefixes:  # nobody watches anything: nothing to read or deliver
                self._drain()
                return self._finish()
            snapshots = await self._take_snapshots(prefixes)
            if snapshots is not None:
                await self._resync_plugins(snapshots)
            if not self.errors:
                for reg in self._synced:
                    reg.synced = True
                for feed in self._feeds:
                    feed.applied()
                self._drain()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an orchestrator bug must fail the round, not kill the loop
            log.exception("datasync: resync round %d crashed", self.number)
            self.errors["<orchestrator>"] = exc
        finally:
            self.running = False
        return self._finish()

    def _drain(self) -> None:
        for feed in self._feeds:
            feed.drain()

    def _finish(self) -> bool:
        self.running = False
        ok = not self.errors
        if ok:
            for reg in self._synced:
                if self._registry.is_current(reg):
                    self._health.set_plugin(reg.name, PluginState.IN_SYNC)
        else:
            self._health.failed_rounds += 1
        errors = {k: f"{v}" for k, v in self.errors.items()}
        self._health.emit(RoundFinished(self.number, ok, self._clock() - self._started, errors))
        log.info(
            "datasync: resync round %d %s",
            self.number,
            "succeeded" if ok else f"failed: {self.errors}",
        )
        self._health.changed.set()
        return ok

    async def _take_snapshots(self, prefixes: list[str]) -> dict[str, Snapshot] | None:
        """Read every source at one revision and restart its watch from there.

        A failed read aborts the round (returns None): plugins never see a partial
        view, so nothing is deleted because a source could not be read. The one
        exception: with several sources, a source that was read before and is now
        silent is marked stale and the round goes on with what it last asserted
        (so none of its keys are deleted); it is read again after a backoff.
        """
        for feed in self._feeds:
            feed.reading()
        results = await asyncio.gather(*(feed.read(prefixes) for feed in self._feeds))
        snapshots: dict[str, Snapshot] = {}
        stale: list[SourceFeed] = []
        for feed, res in zip(self._feeds, results, strict=True):
            if isinstance(res, BaseException):
                feed.read_failed(res)
                if self._fanout.multi_source and feed.snapshot is not None:
                    stale.append(feed)
                else:
                    self.errors[f"source:{feed.name}"] = res
            else:
                snapshots[feed.name] = res
        if self.errors:
            return None
        for feed in self._feeds:
            snap = snapshots.get(feed.name)
            if snap is not None:  # a stale one: its watch, buffer and filter go on as they were
                await feed.restart_at(snap, prefixes)
        if stale:
            # Back off per source: a source that stays silent is not re-read in a tight loop.
            for feed in stale:
                feed.stale_rounds += 1
            names = ", ".join(f.name for f in stale)
            self._retry_later(f"stale source {names}", max(f.stale_rounds for f in stale))
        return snapshots

    async def _resync_plugins(self, snapshots: Mapping[str, Snapshot]) -> None:
        """Resync the members level by level; a dependent runs only after its dependencies
        succeeded, and one whose dependency failed is skipped (and fails)."""
        merged = self._fanout.merged(snapshots)
        revisions = {name: snap.revision for name, snap in snapshots.items()}
        levels, waiting = plan({n: r.depends_on for n, r in self.members.items()})
        for name, dep in waiting.items():
            self._health.set_plugin(
                name,
                PluginState.INIT,
                DependencyFailedError(f"plugin {name!r} waits for dependency {dep!r}"),
            )
        failed: set[str] = set()
        for level in levels:
            todo = []
            for name in level:
                reg = self.members[name]
                if reg.closed.is_set():
                    continue
                bad = [d for d in reg.depends_on if d in failed]
                if bad:
                    skipped = DependencyFailedError(
                        f"plugin {name!r} skipped: dependency {', '.join(bad)} failed"
                    )
                    self.errors[name] = skipped
                    failed.add(name)
                    self._health.set_plugin(name, PluginState.FAILED, skipped)
                    continue
                mine = self.prefixes_of[name]
                kvs = {k: kv for k, kv in merged.items() if any(k.startswith(p) for p in mine)}
                ack = Ack(on_late=self._health.count_late)
                todo.append((reg, ResyncEvent(kvs, revisions, ack)))
            if self._config.parallel:
                results = await asyncio.gather(*(self._resync_one(r, ev) for r, ev in todo))
            else:
                results = [await self._resync_one(r, ev) for r, ev in todo]
            for (reg, _), err in zip(todo, results, strict=True):
                if err is not None:
                    self.errors[reg.name] = err
                    failed.add(reg.name)
                    self._health.set_plugin(reg.name, PluginState.FAILED, err)
                elif not reg.closed.is_set():
                    self._synced.append(reg)

    async def _resync_one(self, reg: WatcherRegistration, ev: ResyncEvent) -> BaseException | None:
        """Deliver one resync event and wait for its ack; a timeout is a failure."""
        try:
            reg.resync_events.put(ev)
        except ClosedError:
            return None  # closed meanwhile: it no longer takes part
        timeout = self._config.resync_timeout
        closed = asyncio.ensure_future(reg.closed.wait())
        acked = asyncio.ensure_future(ev.ack.wait())
        try:
            done, _ = await asyncio.wait(
                {acked, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            closed.cancel()
            acked.cancel()
        if acked in done:
            return acked.result()
        if closed in done:
            return None
        ev.ack.expire()
        return ResyncTimeoutError(
            f"plugin {reg.name!r} did not finish its resync within {timeout:g} s"
        )
