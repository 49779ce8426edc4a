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

The pieces, one concern each: ``config`` (``ResyncConfig``), ``status`` (states, events,
``Health``), ``plan`` (dependency levels), ``registry`` (registrations and the plugin
runner), ``feed`` (one source's watch, buffer, filter and watermark), ``fanout``
(changes to registrations, ack timers), ``round`` (one round's members and errors) and
``orchestrator`` (the facade and the round loop).
"""

from .config import EXIT_RESTART_REQUIRED, ResyncConfig
from .orchestrator import Orchestrator
from .plan import topological_levels
from .registry import WatcherRegistration
from .status import (
    AgentStatus,
    Escalated,
    OrchestratorEvent,
    PluginState,
    PluginStateChanged,
    PluginStatus,
    RoundFinished,
    RoundStarted,
    SourceStatus,
    SouthboundStateChanged,
    SouthboundStatus,
)

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
    "WatcherRegistration",
    "topological_levels",
]
