"""What the orchestrator reports: plugin, source and southbound states, and its events.

``Health`` holds the plugin and southbound states, tells listeners of every transition
and wakes whoever waits for the agent to be in sync.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..api import SourceState

__all__ = [
    "AgentStatus",
    "Escalated",
    "Health",
    "OrchestratorEvent",
    "PluginState",
    "PluginStateChanged",
    "PluginStatus",
    "RoundFinished",
    "RoundStarted",
    "SourceStatus",
    "SouthboundStateChanged",
    "SouthboundStatus",
]

log = logging.getLogger("datasync.resync")


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


class Health:
    """Plugin and southbound states, the event listeners, and the in-sync wake-up.

    ``changed`` is set on every transition that may bring the agent in sync (or end a
    wait for it); a waiter clears it, re-checks the status and waits again.
    """

    def __init__(self) -> None:
        self.plugins: dict[str, PluginStatus] = {}
        self.southbound: dict[str, SouthboundStatus] = {}
        self.listeners: list[Callable[[OrchestratorEvent], None]] = []
        self.changed = asyncio.Event()
        #: ``done()`` calls that came after their waiter gave up
        self.late_dones = 0
        self.failed_rounds = 0

    def count_late(self) -> None:
        self.late_dones += 1

    def emit(self, ev: OrchestratorEvent) -> None:
        for cb in list(self.listeners):
            try:
                cb(ev)
            except Exception:  # a broken listener must not break resync
                log.exception("datasync listener failed on %r", ev)

    def add_plugin(self, name: str) -> None:
        """A new registration starts in INIT (without an event: it had no state before)."""
        self.plugins[name] = PluginStatus(PluginState.INIT, time.time())

    def remove_plugin(self, name: str) -> None:
        self.plugins.pop(name, None)

    def set_plugin(self, name: str, state: PluginState, err: BaseException | None = None) -> None:
        """Record a plugin's state; a plugin no longer registered is ignored."""
        old = self.plugins.get(name)
        if old is None:
            return
        error = None if err is None else f"{type(err).__name__}: {err}"
        if old.state is state and old.error == error:
            return
        self.plugins[name] = PluginStatus(state, time.time(), error)
        self.emit(PluginStateChanged(name, old.state, state, error))
        if state is PluginState.IN_SYNC:
            self.changed.set()

    def worst(self) -> PluginState:
        return max((p.state for p in self.plugins.values()), default=PluginState.IN_SYNC)

    def set_southbound(self, name: str, up: bool, reason: str | None) -> bool:
        """Record a dataplane connection's state; True when it is newly up (or changed up)."""
        old = self.southbound.get(name)
        if old is not None and old.up == up and old.reason == reason:
            return False
        since = old.since if old is not None and old.up == up else time.time()
        self.southbound[name] = SouthboundStatus(up, since, reason)
        if old is None or old.up != up:
            log.info("datasync: southbound %s is %s (%s)", name, "up" if up else "down", reason)
            self.emit(SouthboundStateChanged(name, up, reason))
        if up:
            self.changed.set()  # wait_in_sync callers look again
        return up

    def southbound_down(self) -> bool:
        return any(not sb.up for sb in self.southbound.values())
