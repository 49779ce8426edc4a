"""The resync orchestrator: snapshots, plugin order, buffering, fault reports, backoff.

One ``Orchestrator`` connects northbound sources to plugins. It hands out watcher
registrations (the brief's resync and change channels) and runs resync rounds:

1. changes arriving from now on are held in each source's event buffer;
2. every source is read at one revision R (a failed snapshot aborts the round
   before any plugin sees anything, so nothing is deleted on a partial view);
3. each source's watch is restarted from R+1 and its revision filter reset to R;
4. plugins get their ``ResyncEvent`` in dependency order; a dependent starts only
   after every dependency acknowledged success;
5. on success the buffers are drained in revision order through the filters and
   the changes delivered; on failure the round is retried with capped exponential
   backoff and jitter, and after too many failures the configured escalation runs.

Rounds are requested by start-up, ``report_error``/``done(err)``, a watch that
failed (compaction, store reset, lost source), registration changes and manual
requests; requests coalesce into the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, Literal

from .api import (
    Ack,
    Change,
    ChangeEvent,
    Channel,
    KeyVal,
    Plugin,
    ResyncEvent,
    Snapshot,
    Source,
    SourceState,
    validate_prefix,
    validate_prefixes,
)
from .buffer import EventBuffer, RevisionFilter
from .errors import (
    ClosedError,
    ConfigError,
    DependencyCycleError,
    DependencyFailedError,
    DuplicateNameError,
    EscalationError,
    ResyncTimeoutError,
    SourceUnavailableError,
)
from .mux import Ownership
from .testing import failpoints as _fp

__all__ = [
    "EXIT_RESTART_REQUIRED",
    "AgentStatus",
    "Escalated",
    "Orchestrator",
    "OrchestratorEvent",
    "PluginState",
    "PluginStateChanged",
    "PluginStatus",
    "ResyncConfig",
    "RoundFinished",
    "RoundStarted",
    "SourceStatus",
    "SouthboundStateChanged",
    "SouthboundStatus",
    "topological_levels",
]

log = logging.getLogger("datasync.resync")

#: Exit code of the "brute force" path: the supervisor restarts the agent (and VPP).
#: EX_TEMPFAIL from sysexits.h: "try again later".
EXIT_RESTART_REQUIRED = 75


@dataclass(frozen=True)
class ResyncConfig:
    """Timeouts, backoff and escalation of the orchestrator. Seconds throughout."""

    #: how long one plugin may take to acknowledge a resync event
    resync_timeout: float = 10.0
    #: how long a plugin may take to acknowledge a change event
    change_timeout: float = 10.0
    #: how long reading one source's snapshot may take
    snapshot_timeout: float = 30.0
    #: plugins of one dependency level resync concurrently
    parallel: bool = True
    # 1 s doubling to a 60 s cap (FAULTS.md F11): with the defaults below the agent
    # escalates after about two minutes of failing rounds, not on a short store outage.
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    backoff_multiplier: float = 2.0
    #: each delay is scaled by a random factor in [1 - jitter, 1]
    jitter: float = 0.2
    #: this many failed rounds within ``escalate_window`` trigger the escalation
    escalate_after: int = 8
    escalate_window: float = 600.0
    #: "exit": stop and raise EscalationError (the agent exits with ``exit_code`` so its
    #: supervisor restarts it and VPP); "retry": keep retrying at the backoff cap
    escalation: Literal["exit", "retry"] = "exit"
    exit_code: int = EXIT_RESTART_REQUIRED
    #: the event buffer coalesces per key above this many held changes
    buffer_coalesce_above: int = 65536
    #: periodic upstream anti-entropy round; None disables it
    anti_entropy_interval: float | None = None

    def __post_init__(self) -> None:
        for name in ("resync_timeout", "change_timeout", "snapshot_timeout", "backoff_initial"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"ResyncConfig.{name} must be > 0")
        if self.backoff_multiplier < 1:
            raise ConfigError("ResyncConfig.backoff_multiplier must be >= 1")
        if self.anti_entropy_interval is not None and self.anti_entropy_interval <= 0:
            raise ConfigError("ResyncConfig.anti_entropy_interval must be > 0 (or None)")
        if self.backoff_max < self.backoff_initial:
            raise ConfigError("ResyncConfig.backoff_max must be >= backoff_initial")
        if not 0 <= self.jitter < 1:
            raise ConfigError("ResyncConfig.jitter must be in [0, 1)")
        if self.escalate_after < 1:
            raise ConfigError("ResyncConfig.escalate_after must be >= 1")
        if self.escalation not in ("exit", "retry"):
            raise ConfigError("ResyncConfig.escalation must be 'exit' or 'retry'")


class PluginState(enum.IntEnum):
    """Per-plugin sync state; a higher value is worse."""

    IN_SYNC = 0
    RESYNCING = 1
    INIT = 2
    FAILED = 3


@dataclass(frozen=True)
class PluginStatus:
    state: PluginState
    since: float
    error: str | None = None


@dataclass(frozen=True)
class SourceStatus:
    state: SourceState
    since: float
    snapshot_revision: int = 0
    applied_revision: int = 0
    error: str | None = None


@dataclass(frozen=True)
class SouthboundStatus:
    """A dataplane connection (VPP) as its owner reported it last."""

    up: bool
    since: float
    reason: str | None = None


@dataclass(frozen=True)
class AgentStatus:
    """The agent's health: the worst plugin state, and in_sync only when all is settled."""

    state: PluginState
    in_sync: bool
    round_running: bool
    rounds: int
    failed_rounds: int
    late_dones: int
    plugins: Mapping[str, PluginStatus]
    sources: Mapping[str, SourceStatus]
    southbound: Mapping[str, SouthboundStatus] = field(default_factory=dict)


# --- structured events for listeners ------------------------------------------------------


@dataclass(frozen=True)
class RoundStarted:
    round: int
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class RoundFinished:
    round: int
    ok: bool
    duration: float
    errors: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PluginStateChanged:
    plugin: str
    old: PluginState
    new: PluginState
    error: str | None


@dataclass(frozen=True)
class SouthboundStateChanged:
    name: str
    up: bool
    reason: str | None


@dataclass(frozen=True)
class Escalated:
    failed_rounds: int
    exit_code: int


OrchestratorEvent = (
    RoundStarted | RoundFinished | PluginStateChanged | SouthboundStateChanged | Escalated
)


def topological_levels(deps: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Group names into levels: each name only after every name it depends on.

    Unknown dependencies and cycles are ``ConfigError``s naming them.
    """
    for name, ds in deps.items():
        for d in ds:
            if d not in deps:
                raise ConfigError(f"plugin {name!r} depends on unknown plugin {d!r}")
    # Cycle search first, so the error names the cycle rather than "cannot order".
    color: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        color[n] = 1
        stack.append(n)
        for d in deps[n]:
            if color.get(d) == 1:
                raise DependencyCycleError([*stack[stack.index(d) :], d])
            if d not in color:
                visit(d)
        stack.pop()
        color[n] = 2

    for n in sorted(deps):
        if n not in color:
            visit(n)
    levels: list[list[str]] = []
    placed: set[str] = set()
    while len(placed) < len(deps):
        level = sorted(n for n in deps if n not in placed and all(d in placed for d in deps[n]))
        levels.append(level)
        placed.update(level)
    return levels


# --- registrations ------------------------------------------------------------------------


class _Registration:
    """A watcher's registration; implements ``datasync.api.Registration``."""

    def __init__(
        self, orch: Orchestrator, name: str, prefixes: Iterable[str], depends_on: Iterable[str]
    ) -> None:
        self._orch = orch
        self._name = name
        self._prefixes = tuple(dict.fromkeys(validate_prefixes(prefixes)))
        self.depends_on = tuple(depends_on)
        # One event for both channels: the plugin adapter waits on either with one task.
        self.ready = asyncio.Event()
        self._resync: Channel[ResyncEvent] = Channel(self.ready)
        self._changes: Channel[ChangeEvent] = Channel(self.ready)
        self.closed = asyncio.Event()
        #: True once a resync of this registration succeeded: only then do changes flow
        self.synced = False
        #: change acks handed out and not yet done (released when the registration closes)
        self.unacked: set[Ack] = set()

    @property
    def name(self) -> str:
        return self._name

    @property
    def prefixes(self) -> tuple[str, ...]:
        return self._prefixes

    @property
    def resync_events(self) -> Channel[ResyncEvent]:
        return self._resync

    @property
    def change_events(self) -> Channel[ChangeEvent]:
        return self._changes

    def matches(self, key: str) -> bool:
        return any(key.startswith(p) for p in self._prefixes)

    def register(self, prefix: str) -> None:
        """Watch one more prefix; a resync round delivers its current data."""
        self._check_open()
        prefix = validate_prefix(prefix)
        if prefix not in self._prefixes:
            self._prefixes += (prefix,)
            self._orch.request_resync(f"{self._name}: registered {prefix}")

    def unregister(self, prefix: str) -> None:
        """Stop watching a prefix (its keys leave the next resync event)."""
        self._check_open()
        if prefix in self._prefixes:
            self._prefixes = tuple(p for p in self._prefixes if p != prefix)
            self._orch.request_resync(f"{self._name}: unregistered {prefix}")

    async def close(self) -> None:
        """Close this registration only; pending waits on it stop counting."""
        if self.closed.is_set():
            return
        self.closed.set()
        self._resync.close()
        self._changes.close()
        self.ready.set()
        # Whatever it had not acknowledged stops holding back the others.
        for ev in self._changes.drain():
            ev.ack.done()
        for ack in list(self.unacked):
            ack.done()
        self._orch._remove_registration(self)

    def _check_open(self) -> None:
        if self.closed.is_set():
            raise ClosedError(f"registration {self._name!r} is closed")


class _SourceSlot:
    """Per-source bookkeeping: buffer, filter, watch task, revisions."""

    def __init__(self, source: Source, coalesce_above: int) -> None:
        self.source = source
        self.name = source.name
        self.buffer = EventBuffer(coalesce_above)
        self.filter = RevisionFilter()
        self.watch_task: asyncio.Task[None] | None = None
        self.snapshot: Snapshot | None = None
        self.state = SourceState.DISCONNECTED
        self.since = time.time()
        self.error: str | None = None
        # Delivered change acks not yet done, in delivery order, for the applied watermark.
        self.outstanding: deque[tuple[int, Ack]] = deque()
        self.applied_revision = 0
        # Highest revision accepted by the filter and handed to _deliver.
        self.seen_revision = 0
        #: a snapshot was taken and the round that took it has not succeeded yet
        self.snapshot_pending = False
        # Consecutive rounds this source was stale (silent while others were read).
        self.stale_rounds = 0

    def set_state(self, state: SourceState, error: str | None = None) -> None:
        if state != self.state:
            self.state = state
            self.since = time.time()
        self.error = error

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
        # Earlier sources take precedence when two sources assert one key.
        self._slots = [_SourceSlot(s, self.config.buffer_coalesce_above) for s in sources]
        self._ownership = Ownership(names) if len(names) > 1 else None
        for src in sources:
            add_listener = getattr(src, "add_state_listener", None)
            if add_listener is not None:  # optional part of the Source contract
                add_listener(self._on_source_state)
        self._regs: dict[str, _Registration] = {}
        self._plugin_state: dict[str, PluginStatus] = {}
        self._listeners: list[Callable[[OrchestratorEvent], None]] = []
        self._southbound: dict[str, SouthboundStatus] = {}
        self._rng = rng or random.Random()
        self._sleep = sleep or asyncio.sleep
        self._clock = clock
        self._pending: list[str] = []
        self._wakeup = asyncio.Event()
        self._buffering = True
        self._round = 0
        self._round_running = False
        self._failed_rounds = 0
        self._failure_times: deque[float] = deque()
        self._consecutive_failures = 0
        self._late_dones = 0
        self._runner: asyncio.Task[None] | None = None
        self._plugin_tasks: set[asyncio.Task[None]] = set()
        self._aux_tasks: set[asyncio.Task[None]] = set()
        self._anti_entropy: asyncio.Task[None] | None = None
        self._escalation: EscalationError | None = None
        self._stopped = asyncio.Event()
        self._in_sync = asyncio.Event()
        self._started = False

    # --- watcher API --------------------------------------------------------------------

    def watch(
        self, name: str, prefixes: Iterable[str], depends_on: Iterable[str] = ()
    ) -> _Registration:
        """Register a watcher: its resync and change channels, ordered by ``depends_on``."""
        if not name:
            raise ConfigError("a watcher needs a non-empty name")
        if name in self._regs:
            raise DuplicateNameError(f"watcher {name!r} is already registered")
        reg = _Registration(self, name, prefixes, depends_on)
        if self._started:
            # Reject cycles now; a dependency not registered yet only makes it wait.
            self._plan({**self._regs, name: reg})
        self._regs[name] = reg
        self._set_plugin_state(name, PluginState.INIT)
        if self._started:
            self.request_resync(f"{name}: registered")
        return reg

    def add_plugin(self, plugin: Plugin) -> _Registration:
        """Register a high-level plugin: its callbacks run on their own task."""
        reg = self.watch(plugin.name, plugin.prefixes, plugin.depends_on)
        task = asyncio.ensure_future(self._run_plugin(plugin, reg))
        self._plugin_tasks.add(task)
        task.add_done_callback(self._plugin_tasks.discard)
        return reg

    async def _run_plugin(self, plugin: Plugin, reg: _Registration) -> None:
        """Serve one plugin on one task, so its resync and changes never overlap.

        A waiting resync goes before waiting changes; a change superseded by a resync
        (its ack expired) is skipped.
        """
        while True:
            ev: ResyncEvent | ChangeEvent | None = reg.resync_events.get_nowait()
            if ev is None:
                ev = reg.change_events.get_nowait()
            if ev is None:
                if reg.closed.is_set():
                    return
                reg.ready.clear()
                await reg.ready.wait()
                continue
            if ev.ack.expired:
                continue
            try:
                if isinstance(ev, ResyncEvent):
                    async with asyncio.timeout(self.config.resync_timeout):
                        await plugin.resync(ev)
                else:
                    async with asyncio.timeout(self.config.change_timeout):
                        await plugin.change(ev)
            except Exception as exc:  # a plugin's failure is a fault report, not a crash
                ev.done(exc)
            else:
                ev.done()

    def _remove_registration(self, reg: _Registration) -> None:
        if self._regs.get(reg.name) is reg:
            del self._regs[reg.name]
            self._plugin_state.pop(reg.name, None)

    def _on_source_state(self, source: str, state: SourceState, reason: str) -> None:
        """A source reports its connection state (it resumes its watch by itself).

        Losing the store makes the agent "not in sync" until the source is back;
        whatever the source cannot resume ends its watch with an error, and that
        starts a round.
        """
        slot = self._slot(source)
        if slot.state is SourceState.RESYNCING and state is SourceState.CONNECTED:
            return
        slot.set_state(state, None if state is SourceState.CONNECTED else reason)
        if state is SourceState.CONNECTED:
            self._in_sync.set()

    def add_listener(self, callback: Callable[[OrchestratorEvent], None]) -> None:
        """Call ``callback`` with every structured event (round started/finished, states)."""
        self._listeners.append(callback)

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Check the plugin graph (cycles are errors here) and start the first round."""
        if self._started:
            return
        topological_levels(self._deps())  # unknown dependencies and cycles fail here
        self._started = True
        self._runner = asyncio.ensure_future(self._run())
        if self.config.anti_entropy_interval:
            self._anti_entropy = asyncio.ensure_future(self._anti_entropy_loop())
        self.request_resync("start-up")

    async def stop(self) -> None:
        """Stop rounds and watches; registrations are closed."""
        self._stopped.set()
        self._wakeup.set()
        self._in_sync.set()  # wake wait_in_sync callers: they raise ClosedError
        tasks = [t for t in (self._runner, self._anti_entropy) if t is not None]
        tasks += [s.watch_task for s in self._slots if s.watch_task is not None]
        for reg in list(self._regs.values()):
            await reg.close()
        tasks += self._plugin_tasks
        tasks += self._aux_tasks
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_in_sync(self, timeout: float | None = None) -> None:
        """Wait until every plugin is in sync (raises TimeoutError, or EscalationError)."""
        async with asyncio.timeout(timeout):
            while not self.status().in_sync:
                if self._escalation is not None:
                    raise self._escalation
                if self._stopped.is_set():
                    raise ClosedError("the orchestrator is stopped")
                self._in_sync.clear()
                await self._in_sync.wait()

    async def run_until_stopped(self) -> None:
        """Block until ``stop()``; raise ``EscalationError`` when the escalation fires."""
        await self._stopped.wait()
        if self._escalation is not None:
            raise self._escalation

    def request_resync(self, reason: str) -> None:
        """Schedule a resync round; requests made while one is pending coalesce."""
        self._pending.append(reason)
        self._wakeup.set()

    def report_error(self, plugin: str, err: BaseException) -> None:
        """A plugin reports a fault: it is marked failed and a new round is scheduled."""
        self._set_plugin_state(plugin, PluginState.FAILED, err)
        self.request_resync(f"{plugin}: {err}")

    def set_southbound(self, name: str, up: bool, reason: str | None = None) -> None:
        """Report a dataplane connection (e.g. the VPP client's) up or down.

        While any is down the agent is not in sync (what the plugins applied may be gone
        with it) and rounds are held, since nothing can be applied: requests made meanwhile
        wait, and a round that failed while it went down is neither backed off from nor
        counted towards escalation (restarting the agent does not bring VPP back). Whoever
        reports it up again requests the resync that a reconnect needs.
        """
        old = self._southbound.get(name)
        if old is not None and old.up == up and old.reason == reason:
            return
        since = old.since if old is not None and old.up == up else time.time()
        self._southbound[name] = SouthboundStatus(up, since, reason)
        if old is None or old.up != up:
            log.info("datasync: southbound %s is %s (%s)", name, "up" if up else "down", reason)
            self._emit(SouthboundStateChanged(name, up, reason))
        if up:
            self._in_sync.set()  # wait_in_sync callers look again
            self._wakeup.set()  # rounds held while it was down may run now

    def _southbound_down(self) -> bool:
        return any(not sb.up for sb in self._southbound.values())

    # --- status -------------------------------------------------------------------------

    def status(self) -> AgentStatus:
        """A consistent snapshot of plugin and source health."""
        plugins = dict(self._plugin_state)
        worst = max((p.state for p in plugins.values()), default=PluginState.IN_SYNC)
        stale = any(s.state is not SourceState.CONNECTED for s in self._slots)
        southbound = dict(self._southbound)
        return AgentStatus(
            state=worst,
            in_sync=(
                not self._stopped.is_set()
                and worst is PluginState.IN_SYNC
                and not self._round_running
                and not self._pending
                and not stale
                and all(sb.up for sb in southbound.values())
                and self._round > 0
            ),
            round_running=self._round_running,
            rounds=self._round,
            failed_rounds=self._failed_rounds,
            late_dones=self._late_dones,
            plugins=plugins,
            sources={
                s.name: SourceStatus(
                    s.state, s.since, s.filter.snapshot_revision, s.applied_revision, s.error
                )
                for s in self._slots
            },
            southbound=southbound,
        )

    def buffer_stats(self) -> dict[str, dict[str, int]]:
        """Per source: changes buffered now, coalesced and filtered (dropped) so far."""
        return {
            s.name: {
                "buffered": len(s.buffer),
                "coalesced": s.buffer.coalesced,
                "filtered": s.filter.dropped,
            }
            for s in self._slots
        }

    def applied_revision(self, source: str) -> int:
        """Highest revision of ``source`` whose changes are all acknowledged."""
        slot = self._slot(source)
        slot.advance_watermark()
        return slot.applied_revision

    def _slot(self, name: str) -> _SourceSlot:
        for s in self._slots:
            if s.name == name:
                return s
        raise KeyError(name)

    def _emit(self, ev: OrchestratorEvent) -> None:
        for cb in list(self._listeners):
            try:
                cb(ev)
            except Exception:  # a broken listener must not break resync
                log.exception("datasync listener failed on %r", ev)

    def _set_plugin_state(
        self, name: str, state: PluginState, err: BaseException | None = None
    ) -> None:
        old = self._plugin_state.get(name)
        error = None if err is None else f"{type(err).__name__}: {err}"
        if old is not None and old.state is state and old.error == error:
            return
        if old is None and name not in self._regs:
            return
        self._plugin_state[name] = PluginStatus(state, time.time(), error)
        if old is not None:
            self._emit(PluginStateChanged(name, old.state, state, error))
        if state is PluginState.IN_SYNC:
            self._in_sync.set()

    # --- graph --------------------------------------------------------------------------

    def _deps(self) -> dict[str, tuple[str, ...]]:
        return {n: r.depends_on for n, r in self._regs.items()}

    @staticmethod
    def _plan(members: Mapping[str, _Registration]) -> tuple[list[list[str]], dict[str, str]]:
        """Levels of the registrations that can run, and those waiting for a dependency.

        A registration whose dependency is not registered (closed, or not yet added)
        waits, and so does everything that depends on it; that is not a failure.
        """
        waiting: dict[str, str] = {}
        changed = True
        while changed:
            changed = False
            for name, reg in members.items():
                if name in waiting:
                    continue
                for dep in reg.depends_on:
                    if dep not in members or dep in waiting:
                        waiting[name] = dep
                        changed = True
                        break
        deps = {n: r.depends_on for n, r in members.items() if n not in waiting}
        return topological_levels(deps), waiting

    # --- the round loop -----------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopped.is_set():
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._stopped.is_set() or not self._pending:
                continue
            if self._southbound_down():
                continue  # held: nothing can be applied; set_southbound(up) wakes us
            reasons, self._pending = tuple(self._pending), []
            try:
                ok = await self._round_once(reasons)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let a bug end the round loop: that would end resync
                log.exception("datasync: resync round loop failed")
                ok = False
            if ok:
                self._consecutive_failures = 0
                continue
            if self._southbound_down():
                # The dataplane went away under the round: not a failure to back off from
                # or escalate (restarting the agent does not bring VPP back). The round is
                # held until the connection is reported up again.
                if not self._pending:
                    self._pending.append(f"retry of round {self._round} (southbound was down)")
                continue
            self._consecutive_failures += 1
            if self._should_escalate():
                return
            delay = self._backoff_delay(self._consecutive_failures)
            if not self._pending:
                self._pending.append(f"retry after failed round {self._round}")
            await self._sleep(delay)
            self._wakeup.set()

    def _backoff_delay(self, failures: int) -> float:
        c = self.config
        # The exponent stops growing once the cap is reached (no float overflow).
        exponent = min(max(failures - 1, 0), 64)
        base = min(c.backoff_max, c.backoff_initial * c.backoff_multiplier**exponent)
        return base * (1.0 - c.jitter * self._rng.random())

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
        self._emit(Escalated(len(self._failure_times), c.exit_code))
        self._stopped.set()
        self._in_sync.set()  # wake wait_in_sync so it raises
        return True

    async def _round_once(self, reasons: tuple[str, ...]) -> bool:
        self._round += 1
        rnd = self._round
        started = self._clock()
        self._round_running = True
        self._buffering = True
        self._emit(RoundStarted(rnd, reasons))
        log.info("datasync: resync round %d started (%s)", rnd, "; ".join(reasons))
        errors: dict[str, BaseException] = {}
        # The round works on the registrations and prefixes of its start: a watcher that
        # registers (or adds a prefix) meanwhile takes part in the next round.
        members = dict(self._regs)
        prefixes_of = {name: reg.prefixes for name, reg in members.items()}
        synced: list[_Registration] = []
        try:
            if _fp.ENABLED:
                await _fp.hit("resync.started")
            await self._quiesce()
            for name in members:
                self._set_plugin_state(name, PluginState.RESYNCING)
            prefixes = sorted({p for ps in prefixes_of.values() for p in ps})
            if not prefixes:  # nobody watches anything: nothing to read or deliver
                self._drain_buffers()
                return self._finish_round(rnd, started, errors, [])
            snapshots = await self._take_snapshots(prefixes, errors)
            if snapshots is not None:
                synced = await self._resync_plugins(members, prefixes_of, snapshots, errors)
            if not errors:
                for reg in synced:
                    reg.synced = True
                for slot in self._slots:
                    slot.snapshot_pending = False
                self._drain_buffers()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an orchestrator bug must fail the round, not kill the loop
            log.exception("datasync: resync round %d crashed", rnd)
            errors["<orchestrator>"] = exc
        finally:
            self._round_running = False
        return self._finish_round(rnd, started, errors, synced)

    def _finish_round(
        self,
        rnd: int,
        started: float,
        errors: dict[str, BaseException],
        synced: list[_Registration],
    ) -> bool:
        self._round_running = False
        ok = not errors
        if ok:
            for reg in synced:
                if self._regs.get(reg.name) is reg:
                    self._set_plugin_state(reg.name, PluginState.IN_SYNC)
        else:
            self._failed_rounds += 1
        self._emit(
            RoundFinished(rnd, ok, self._clock() - started, {k: f"{v}" for k, v in errors.items()})
        )
        log.info("datasync: resync round %d %s", rnd, "succeeded" if ok else f"failed: {errors}")
        self._in_sync.set()
        return ok

    async def _quiesce(self) -> None:
        """Let change events in progress finish, then withdraw the rest.

        The round's snapshot supersedes every change not yet applied: queued events are
        withdrawn and pending ones expire, so no older change is applied after the
        resync (a plugin skips a superseded event).
        """
        for reg in list(self._regs.values()):
            for ev in reg.change_events.drain():
                ev.ack.expire()
        acks = [a for s in self._slots for _, a in s.outstanding if not (a.is_done or a.expired)]
        if acks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.change_timeout):
                    await asyncio.gather(*(a.wait() for a in acks))
        for a in acks:
            a.expire()

    async def _take_snapshots(
        self, prefixes: list[str], errors: dict[str, BaseException]
    ) -> dict[str, Snapshot] | None:
        """Read every source at one revision and restart its watch from there.

        A failed read aborts the round (returns None): plugins never see a partial
        view, so nothing is deleted because a source could not be read. The one
        exception: with several sources, a source that was read before and is now
        silent is marked stale and the round goes on with what it last asserted
        (so none of its keys are deleted); it is read again after a backoff.
        """

        async def read(slot: _SourceSlot) -> Snapshot | BaseException:
            try:
                async with asyncio.timeout(self.config.snapshot_timeout):
                    snap = await slot.source.snapshot(prefixes)
                if _fp.ENABLED:
                    await _fp.hit("resync.after_snapshot_page")
                return snap
            except TimeoutError:
                return SourceUnavailableError(
                    f"source {slot.name}: snapshot timed out after "
                    f"{self.config.snapshot_timeout:g} s"
                )
            except Exception as exc:
                return exc

        for slot in self._slots:
            slot.set_state(SourceState.RESYNCING)
        results = await asyncio.gather(*(read(slot) for slot in self._slots))
        snapshots: dict[str, Snapshot] = {}
        stale: list[str] = []
        for slot, res in zip(self._slots, results, strict=True):
            if isinstance(res, BaseException):
                slot.set_state(SourceState.DISCONNECTED, f"{type(res).__name__}: {res}")
                if self._ownership is not None and slot.snapshot is not None:
                    stale.append(slot.name)
                else:
                    errors[f"source:{slot.name}"] = res
            else:
                snapshots[slot.name] = res
        if errors:
            return None
        for slot in self._slots:
            snap = snapshots.get(slot.name)
            if snap is None:
                continue  # stale: its watch, buffer and filter go on as they were
            await self._stop_watch(slot)
            slot.snapshot = snap
            slot.stale_rounds = 0
            # The new watch replays everything after R: what the old one buffered is redundant.
            slot.buffer.clear()
            slot.filter.reset(snap.revision, [(kv.key, kv.revision) for kv in snap.kvs])
            slot.outstanding.clear()
            # R is applied once the round succeeds (the plugins applied the snapshot), not
            # now; a store reset may lower the watermark, nothing else does
            slot.seen_revision = snap.revision
            slot.applied_revision = min(slot.applied_revision, snap.revision)
            slot.snapshot_pending = True
            if _fp.ENABLED:
                await _fp.hit("resync.before_watch")
            slot.watch_task = asyncio.ensure_future(
                self._watch_source(slot, prefixes, snap.revision + 1)
            )
            slot.set_state(SourceState.CONNECTED)
        if stale:
            # Back off per source: a source that stays silent is not re-read in a tight loop.
            rounds = 0
            for slot in self._slots:
                if slot.name in stale:
                    slot.stale_rounds += 1
                    rounds = max(rounds, slot.stale_rounds)
            self._spawn(
                self._retry_later(f"stale source {', '.join(stale)}", self._backoff_delay(rounds))
            )
        return snapshots

    async def _stop_watch(self, slot: _SourceSlot) -> None:
        """Cancel a source's watch; one that will not end in time is left for stop()."""
        task, slot.watch_task = slot.watch_task, None
        if task is None:
            return
        task.cancel()
        # asyncio.wait neither raises the task's error nor swallows our own cancellation.
        done, _ = await asyncio.wait({task}, timeout=self.config.snapshot_timeout)
        if not done:
            log.warning("datasync: the old watch of source %s did not stop in time", slot.name)
            self._aux_tasks.add(task)
            task.add_done_callback(self._aux_tasks.discard)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._aux_tasks.add(task)
        task.add_done_callback(self._aux_tasks.discard)

    async def _retry_later(self, reason: str, delay: float) -> None:
        await self._sleep(delay)
        self.request_resync(reason)

    def _merged_view(self, snapshots: Mapping[str, Snapshot]) -> dict[str, KeyVal]:
        """All keys of all sources; a key asserted by several goes to the earliest source."""
        if self._ownership is None:
            return {kv.key: kv for kv in snapshots[self._slots[0].name].kvs}
        for name, snap in snapshots.items():  # a stale source keeps its last assertions
            self._ownership.reset_source(name, snap.kvs)
        return self._ownership.merged()

    def conflicts(self) -> dict[str, list[str]]:
        """Keys asserted by several sources, with the sources in precedence order."""
        return {} if self._ownership is None else self._ownership.conflicts()

    async def _resync_plugins(
        self,
        members: Mapping[str, _Registration],
        prefixes_of: Mapping[str, tuple[str, ...]],
        snapshots: Mapping[str, Snapshot],
        errors: dict[str, BaseException],
    ) -> list[_Registration]:
        """Resync the round's registrations level by level; returns those that succeeded."""
        merged = self._merged_view(snapshots)
        revisions = {name: snap.revision for name, snap in snapshots.items()}
        levels, waiting = self._plan(members)
        for name, dep in waiting.items():
            self._set_plugin_state(
                name,
                PluginState.INIT,
                DependencyFailedError(f"plugin {name!r} waits for dependency {dep!r}"),
            )
        failed: set[str] = set()
        succeeded: list[_Registration] = []
        for level in levels:
            todo = []
            for name in level:
                reg = members[name]
                if reg.closed.is_set():
                    continue
                bad = [d for d in reg.depends_on if d in failed]
                if bad:
                    skipped = DependencyFailedError(
                        f"plugin {name!r} skipped: dependency {', '.join(bad)} failed"
                    )
                    errors[name] = skipped
                    failed.add(name)
                    self._set_plugin_state(name, PluginState.FAILED, skipped)
                    continue
                mine = prefixes_of[name]
                kvs = {k: kv for k, kv in merged.items() if any(k.startswith(p) for p in mine)}
                todo.append((reg, ResyncEvent(kvs, revisions, self._new_ack())))
            if self.config.parallel:
                results = await asyncio.gather(*(self._resync_one(r, ev) for r, ev in todo))
            else:
                results = [await self._resync_one(r, ev) for r, ev in todo]
            for (reg, _), err in zip(todo, results, strict=True):
                if err is not None:
                    errors[reg.name] = err
                    failed.add(reg.name)
                    self._set_plugin_state(reg.name, PluginState.FAILED, err)
                elif not reg.closed.is_set():
                    succeeded.append(reg)
        return succeeded

    def _new_ack(self) -> Ack:
        return Ack(on_late=self._count_late)

    def _count_late(self) -> None:
        self._late_dones += 1

    async def _resync_one(self, reg: _Registration, ev: ResyncEvent) -> BaseException | None:
        """Deliver one resync event and wait for its ack; a timeout is a failure."""
        try:
            reg.resync_events.put(ev)
        except ClosedError:
            return None  # closed meanwhile: it no longer takes part
        closed = asyncio.ensure_future(reg.closed.wait())
        acked = asyncio.ensure_future(ev.ack.wait())
        try:
            done, _ = await asyncio.wait(
                {acked, closed},
                timeout=self.config.resync_timeout,
                return_when=asyncio.FIRST_COMPLETED,
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
            f"plugin {reg.name!r} did not finish its resync within {self.config.resync_timeout:g} s"
        )

    # --- changes ------------------------------------------------------------------------

    async def _watch_source(self, slot: _SourceSlot, prefixes: list[str], start: int) -> None:
        changes: AsyncIterator[list[Change]] | None = None
        try:
            changes = slot.source.watch(prefixes, start)  # may raise at once (store closed)
            async for batch in changes:
                if not batch:
                    continue
                if self._buffering:
                    slot.buffer.extend(batch)
                else:
                    self._deliver(slot, slot.filter.filter(batch))
        except asyncio.CancelledError as cancel:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Ours (the round restarts the watch, or stop()). It landed in the stream's
                # own __anext__, the only await here, which is where a stream cleans up.
                raise
            # A cancellation the source let escape is a failed watch, not a stop.
            self._watch_failed(slot, SourceUnavailableError(f"watch cancelled: {cancel!r}"))
        except Exception as exc:
            self._watch_failed(slot, exc)
        else:
            # The watch ended without error (source closed): resync once it is back.
            slot.set_state(SourceState.DISCONNECTED, "watch ended")
            if not self._stopped.is_set():
                self.request_resync(f"source {slot.name}: watch ended")
        # Reported first, closed after: a stream slow to close delays nothing.
        if changes is not None:
            await self._close_stream(slot, changes)

    async def _close_stream(self, slot: _SourceSlot, changes: AsyncIterator[Any]) -> None:
        """Release a watch stream now, not whenever the collector finalizes it (a stream
        left at a yield because our side raised). Bounded, and its own errors are only
        logged: the watch's outcome, already reported, is what counts."""
        aclose = getattr(changes, "aclose", None)
        if aclose is None:
            return
        try:
            async with asyncio.timeout(self.config.snapshot_timeout):
                await aclose()
        except Exception as exc:  # TimeoutError included
            log.warning("datasync: closing the watch of source %s failed: %r", slot.name, exc)

    def _watch_failed(self, slot: _SourceSlot, exc: BaseException) -> None:
        """Compaction, store reset, lost source: only a fresh snapshot is safe now."""
        kind = type(exc).__name__
        slot.set_state(SourceState.DISCONNECTED, f"{kind}: {exc}")
        self.request_resync(f"source {slot.name}: watch failed ({kind}: {exc})")

    def _drain_buffers(self) -> None:
        for slot in self._slots:
            self._deliver(slot, slot.buffer.drain(slot.filter))
        self._buffering = False

    def _deliver(self, slot: _SourceSlot, changes: Sequence[Change]) -> None:
        """Hand accepted changes (in revision order) to the registrations watching them.

        One ``ChangeEvent`` per registration and revision, queued in revision order so
        that the applied watermark can follow the acknowledgements.
        """
        if changes:
            slot.seen_revision = max(slot.seen_revision, changes[-1].revision)
        own = self._ownership
        if own is not None:
            changes = [c for c in (own.apply(slot.name, ch) for ch in changes) if c is not None]
        regs = [r for r in self._regs.values() if r.synced]
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
                    self._send(slot, reg, mine)
            i = j
        slot.advance_watermark()

    def _send(self, slot: _SourceSlot, reg: _Registration, group: list[Change]) -> None:
        rev = group[0].revision
        timer: list[asyncio.TimerHandle] = []

        def on_done(err: BaseException | None) -> None:
            reg.unacked.discard(ack)
            if timer:
                timer[0].cancel()
            slot.advance_watermark()
            if err is not None and self._regs.get(reg.name) is reg:
                self.report_error(reg.name, err)

        ack = Ack(on_done=on_done, on_late=self._count_late)
        ev = ChangeEvent(group, slot.name, rev, ack)
        try:
            reg.change_events.put(ev)
        except ClosedError:
            return
        reg.unacked.add(ack)
        slot.outstanding.append((rev, ack))
        loop = asyncio.get_running_loop()
        timer.append(loop.call_later(self.config.change_timeout, self._change_timed_out, reg, ack))

    def _change_timed_out(self, reg: _Registration, ack: Ack) -> None:
        if ack.is_done or ack.expired or self._regs.get(reg.name) is not reg:
            return
        ack.expire()
        reg.unacked.discard(ack)
        self.report_error(
            reg.name,
            ResyncTimeoutError(
                f"plugin {reg.name!r} did not apply a change within "
                f"{self.config.change_timeout:g} s"
            ),
        )

    async def _anti_entropy_loop(self) -> None:
        interval = self.config.anti_entropy_interval
        assert interval is not None
        while not self._stopped.is_set():
            await asyncio.sleep(interval)
            self.request_resync("periodic anti-entropy")
