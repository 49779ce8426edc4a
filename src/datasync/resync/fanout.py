"""Fan-out: changes of the feeds to the registrations watching them, with ack timers.

With several sources a key asserted by more than one goes to the earliest (``Ownership``);
the same precedence builds the merged view a round hands out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence

from ..api import Ack, Change, ChangeEvent, KeyVal, Snapshot
from ..errors import ClosedError, ResyncTimeoutError
from ..mux import Ownership
from .config import ResyncConfig
from .feed import SourceFeed
from .registry import Registry, WatcherRegistration
from .status import Health

__all__ = ["Fanout"]


class Fanout:
    """Hands accepted changes to the synced registrations and follows their acks.

    ``report_error(plugin, err)`` is called for a change acknowledged with an error or
    not acknowledged within ``change_timeout``.
    """

    def __init__(
        self,
        sources: Sequence[str],
        config: ResyncConfig,
        registry: Registry,
        health: Health,
        report_error: Callable[[str, BaseException], None],
    ) -> None:
        self._first = sources[0]
        self._ownership = Ownership(list(sources)) if len(sources) > 1 else None
        self._config = config
        self._registry = registry
        self._health = health
        self._report_error = report_error

    def merged(self, snapshots: Mapping[str, Snapshot]) -> dict[str, KeyVal]:
        """All keys of all sources; a key asserted by several goes to the earliest source."""
        if self._ownership is None:
            return {kv.key: kv for kv in snapshots[self._first].kvs}
        for name, snap in snapshots.items():  # a stale source keeps its last assertions
            self._ownership.reset_source(name, snap.kvs)
        return self._ownership.merged()

    @property
    def multi_source(self) -> bool:
        return self._ownership is not None

    def conflicts(self) -> dict[str, list[str]]:
        """Keys asserted by several sources, with the sources in precedence order."""
        return {} if self._ownership is None else self._ownership.conflicts()

    def deliver(self, feed: SourceFeed, changes: Sequence[Change]) -> None:
        """Hand accepted changes (in revision order) to the registrations watching them.

        One ``ChangeEvent`` per registration and revision, queued in revision order so
        that the applied watermark can follow the acknowledgements.
        """
        if changes:
            feed.seen_revision = max(feed.seen_revision, changes[-1].revision)
        own = self._ownership
        if own is not None:
            changes = [c for c in (own.apply(feed.name, ch) for ch in changes) if c is not None]
        regs = self._registry.synced()
        i, n = 0, len(changes)
        while i < n:
            rev = changes[i].revision
            j = i + 1
            while j < n and changes[j].revision == rev:
                j += 1
            group = changes[i:j]
            for reg in regs:
                mine = [c for c in group if reg.matches(c.key)]
                if mine:
                    self._send(feed, reg, mine)
            i = j
        feed.advance_watermark()

    def _send(self, feed: SourceFeed, reg: WatcherRegistration, group: list[Change]) -> None:
        rev = group[0].revision
        timer: list[asyncio.TimerHandle] = []

        def on_done(err: BaseException | None) -> None:
            reg.unacked.discard(ack)
            if timer:
                timer[0].cancel()
            feed.advance_watermark()
            if err is not None and self._registry.is_current(reg):
                self._report_error(reg.name, err)

        ack = Ack(on_done=on_done, on_late=self._health.count_late)
        ev = ChangeEvent(group, feed.name, rev, ack)
        try:
            reg.change_events.put(ev)
        except ClosedError:
            return
        reg.unacked.add(ack)
        feed.sent(rev, ack)
        loop = asyncio.get_running_loop()
        timer.append(loop.call_later(self._config.change_timeout, self._timed_out, reg, ack))

    def _timed_out(self, reg: WatcherRegistration, ack: Ack) -> None:
        if ack.is_done or ack.expired or not self._registry.is_current(reg):
            return
        ack.expire()
        reg.unacked.discard(ack)
        self._report_error(
            reg.name,
            ResyncTimeoutError(
                f"plugin {reg.name!r} did not apply a change within "
                f"{self._config.change_timeout:g} s"
            ),
        )

    async def quiesce(self, feeds: Sequence[SourceFeed]) -> None:
        """Let change events in progress finish, then withdraw the rest.

        The round's snapshot supersedes every change not yet applied: queued events are
        withdrawn and pending ones expire, so no older change is applied after the
        resync (a plugin skips a superseded event).
        """
        for reg in list(self._registry.regs.values()):
            for ev in reg.change_events.drain():
                ev.ack.expire()
        acks = [a for f in feeds for _, a in f.outstanding if not (a.is_done or a.expired)]
        if acks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config.change_timeout):
                    await asyncio.gather(*(a.wait() for a in acks))
        for a in acks:
            a.expire()
