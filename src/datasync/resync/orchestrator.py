"""The ``Orchestrator`` facade: the watcher API, the round loop, backoff and escalation."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any

from ..api import Plugin, Source, SourceState
from ..errors import ClosedError, ConfigError, DuplicateNameError, EscalationError
from .config import ResyncConfig
from .fanout import Fanout
from .feed import SourceFeed
from .plan import topological_levels
from .registry import Registry, WatcherRegistration
from .round import Round
from .status import AgentStatus, Escalated, Health, OrchestratorEvent, PluginState

__all__ = ["Orchestrator"]

log = logging.getLogger("datasync.resync")


class Orchestrator:
    """Runs resync rounds between northbound sources and plugins (a ``Watcher``)."""

    def __init__(
        self,
        sources: Sequence[Source],
        config: ResyncConfig | None = None,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not sources:
            raise ConfigError("at least one source is needed")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise DuplicateNameError(f"source names must be unique, got {names}")
        self.config = config or ResyncConfig()
        self._rng = rng or random.Random()
        self._sleep = sleep or asyncio.sleep
        self._clock = clock
        self._stopped = asyncio.Event()
        self._health = Health()
        self._registry = Registry(self.config, self._health, self.request_resync)
        # Earlier sources take precedence when two sources assert one key.
        self._fanout = Fanout(names, self.config, self._registry, self._health, self.report_error)
        self._feeds = [
            SourceFeed(s, self.config, self._fanout.deliver, self.request_resync, self._stopped)
            for s in sources
        ]
        for feed in self._feeds:
            add_listener = getattr(feed.source, "add_state_listener", None)
            if add_listener is None:  # part of the Source protocol since it was declared
                raise ConfigError(
                    f"source {feed.source.name!r} ({type(feed.source).__name__}) has no "
                    "add_state_listener(cb): every Source reports its connection state"
                )
            add_listener(self._on_source_state)
        self._pending: list[str] = []
        self._wakeup = asyncio.Event()
        self._round: Round | None = None
        self._failure_times: deque[float] = deque()
        self._consecutive_failures = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._escalation: EscalationError | None = None
        self._started = False

    # --- watcher API --------------------------------------------------------------------

    def watch(
        self, name: str, prefixes: Iterable[str], depends_on: Iterable[str] = ()
    ) -> WatcherRegistration:
        """Register a watcher: its resync and change channels, ordered by ``depends_on``."""
        reg = self._registry.add(name, prefixes, depends_on, started=self._started)
        if self._started:
            self.request_resync(f"{name}: registered")
        return reg

    def add_plugin(self, plugin: Plugin) -> WatcherRegistration:
        """Register a high-level plugin: its callbacks run on their own task."""
        reg = self.watch(plugin.name, plugin.prefixes, plugin.depends_on)
        self._registry.run(plugin, reg)
        return reg

    def add_listener(self, callback: Callable[[OrchestratorEvent], None]) -> None:
        """Call ``callback`` with every structured event (round started/finished, states)."""
        self._health.listeners.append(callback)

    def _on_source_state(self, source: str, state: SourceState, reason: str) -> None:
        """A source reports its connection state (it resumes its watch by itself).

        Losing the store makes the agent "not in sync" until the source is back;
        whatever the source cannot resume ends its watch with an error, and that
        starts a round.
        """
        if self._feed(source).on_source_state(state, reason):
            self._health.changed.set()

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Check the plugin graph (cycles are errors here) and start the first round."""
        if self._started:
            return
        topological_levels(self._registry.deps())  # unknown dependencies and cycles fail here
        self._started = True
        self._spawn(self._run())
        if self.config.anti_entropy_interval:
            self._spawn(self._anti_entropy_loop(self.config.anti_entropy_interval))
        self.request_resync("start-up")

    async def stop(self) -> None:
        """Stop rounds and watches; registrations are closed."""
        self._stopped.set()
        self._wakeup.set()
        self._health.changed.set()  # wake wait_in_sync callers: they raise ClosedError
        tasks = list(self._tasks)
        tasks += [f.watch_task for f in self._feeds if f.watch_task is not None]
        await self._registry.close_all()
        tasks += self._registry.tasks
        tasks += [t for f in self._feeds for t in f.leftover]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_in_sync(self, timeout: float | None = None) -> None:
        """Wait until every plugin is in sync (raises TimeoutError, or EscalationError)."""
        changed = self._health.changed
        async with asyncio.timeout(timeout):
            while not self.status().in_sync:
                if self._escalation is not None:
                    raise self._escalation
                if self._stopped.is_set():
                    raise ClosedError("the orchestrator is stopped")
                changed.clear()
                await changed.wait()

    async def run_until_stopped(self) -> None:
        """Block until ``stop()``; raise ``EscalationError`` when the escalation fires."""
        await self._stopped.wait()
        if self._escalation is not None:
            raise self._escalation

    def request_resync(self, reason: str) -> int:
        """Schedule a resync round; requests made while one is pending coalesce. Returns
        the number of the round that will carry ``reason`` (its ``RoundStarted.round``):
        the next one to start, since a running round took its reasons when it began."""
        self._pending.append(reason)
        self._wakeup.set()
        return 1 if self._round is None else self._round.number + 1

    def report_error(self, plugin: str, err: BaseException) -> None:
        """A plugin reports a fault: it is marked failed and a new round is scheduled."""
        self._health.set_plugin(plugin, PluginState.FAILED, err)
        self.request_resync(f"{plugin}: {err}")

    def set_southbound(self, name: str, up: bool, reason: str | None = None) -> None:
        """Report a dataplane connection (e.g. the VPP client's) up or down.

        While any is down the agent is not in sync (what the plugins applied may be gone
        with it) and rounds are held, since nothing can be applied: requests made meanwhile
        wait, and a round that failed while it went down is neither backed off from nor
        counted towards escalation (restarting the agent does not bring VPP back). Whoever
        reports it up again requests the resync that a reconnect needs.
        """
        if self._health.set_southbound(name, up, reason):
            self._wakeup.set()  # rounds held while it was down may run now

    # --- status -------------------------------------------------------------------------

    def status(self) -> AgentStatus:
        """A consistent snapshot of plugin and source health."""
        h = self._health
        worst = h.worst()
        running = self._round is not None and self._round.running
        rounds = 0 if self._round is None else self._round.number
        stale = any(f.state is not SourceState.CONNECTED for f in self._feeds)
        return AgentStatus(
            state=worst,
            in_sync=(
                not self._stopped.is_set()
                and worst is PluginState.IN_SYNC
                and not running
                and not self._pending
                and not stale
                and not h.southbound_down()
                and rounds > 0
            ),
            round_running=running,
            rounds=rounds,
            failed_rounds=h.failed_rounds,
            late_dones=h.late_dones,
            plugins=dict(h.plugins),
            sources={f.name: f.status() for f in self._feeds},
            southbound=dict(h.southbound),
        )

    def buffer_stats(self) -> dict[str, dict[str, int]]:
        """Per source: changes buffered now, coalesced and filtered (dropped) so far, and
        the highest revision its watch delivered."""
        return {f.name: f.stats() for f in self._feeds}

    def applied_revision(self, source: str) -> int:
        """Highest revision of ``source`` whose changes are all acknowledged."""
        feed = self._feed(source)
        feed.advance_watermark()
        return feed.applied_revision

    def conflicts(self) -> dict[str, list[str]]:
        """Keys asserted by several sources, with the sources in precedence order."""
        return self._fanout.conflicts()

    def _feed(self, name: str) -> SourceFeed:
        for f in self._feeds:
            if f.name == name:
                return f
        raise KeyError(name)

    # --- the round loop -----------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopped.is_set():
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._stopped.is_set() or not self._pending:
                continue
            if self._health.southbound_down():
                continue  # held: nothing can be applied; set_southbound(up) wakes us
            reasons, self._pending = tuple(self._pending), []
            number = 1 if self._round is None else self._round.number + 1
            self._round = Round(
                number,
                reasons,
                self._registry.regs,
                config=self.config,
                feeds=self._feeds,
                fanout=self._fanout,
                registry=self._registry,
                health=self._health,
                clock=self._clock,
                retry_later=self._retry_later,
            )
            try:
                ok = await self._round.run()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let a bug end the round loop: that would end resync
                log.exception("datasync: resync round loop failed")
                ok = False
            if ok:
                self._consecutive_failures = 0
                continue
            if self._health.southbound_down():
                # The dataplane went away under the round: not a failure to back off from
                # or escalate (restarting the agent does not bring VPP back). The round is
                # held until the connection is reported up again.
                if not self._pending:
                    self._pending.append(f"retry of round {number} (southbound was down)")
                continue
            self._consecutive_failures += 1
            if self._should_escalate():
                return
            delay = self.config.backoff.delay(self._consecutive_failures, self._rng)
            if not self._pending:
                self._pending.append(f"retry after failed round {number}")
            await self._sleep(delay)
            self._wakeup.set()

    def _should_escalate(self) -> bool:
        c = self.config
        now = self._clock()
        self._failure_times.append(now)
        while self._failure_times and now - self._failure_times[0] > c.escalate_window:
            self._failure_times.popleft()
        if len(self._failure_times) < c.escalate_after or c.escalation == "retry":
            return False
        self._escalation = EscalationError(
            f"{len(self._failure_times)} failed resync rounds within {c.escalate_window:g} s: "
            f"restart required (exit code {c.exit_code})",
            c.exit_code,
        )
        log.error("datasync: %s", self._escalation)
        self._health.emit(Escalated(len(self._failure_times), c.exit_code))
        self._stopped.set()
        self._health.changed.set()  # wake wait_in_sync so it raises
        return True

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _retry_later(self, reason: str, attempt: int) -> None:
        self._spawn(self._request_after(reason, self.config.backoff.delay(attempt, self._rng)))

    async def _request_after(self, reason: str, delay: float) -> None:
        await self._sleep(delay)
        self.request_resync(reason)

    async def _anti_entropy_loop(self, interval: float) -> None:
        while not self._stopped.is_set():
            await self._sleep(interval)
            self.request_resync("periodic anti-entropy")
