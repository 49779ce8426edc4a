"""The orchestrator's configuration: timeouts, backoff and escalation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..backoff import Backoff
from ..errors import ConfigError

__all__ = ["EXIT_RESTART_REQUIRED", "ResyncConfig"]

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
    # 1 s doubling to a 60 s cap: with the defaults below the agent escalates after
    # about two minutes of failing rounds, not on a short store outage.
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
    #: the event buffer coalesces per key (latest wins) above this many held changes;
    #: 0, the default, coalesces from the first: after a round each key changed meanwhile
    #: is applied once, at its newest value. A larger value delivers every change below
    #: it in arrival order, for watchers that want each one.
    buffer_coalesce_above: int = 0
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

    @property
    def backoff(self) -> Backoff:
        """The delay policy of failed rounds and stale-source retries."""
        return Backoff(self.backoff_initial, self.backoff_multiplier, self.backoff_max, self.jitter)
