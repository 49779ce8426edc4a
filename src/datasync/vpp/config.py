"""The VPP client's configuration: one validated value instead of two dozen arguments."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from ..backoff import Backoff
from ..errors import ConfigError

__all__ = ["VppClientConfig", "VppConfigError"]

TransportKind = Literal["socket", "shm", "vac"]
VacMode = Literal["sync", "callback"]


class VppConfigError(ConfigError, ValueError):
    """A :class:`VppClientConfig` field is out of range; ``field`` names it."""

    def __init__(self, name: str, reason: str) -> None:
        self.field = name
        super().__init__(f"VppClientConfig.{name} {reason}")


@dataclass(frozen=True)
class VppClientConfig:
    """How a :class:`~datasync.vpp.client.VppClient` talks to VPP. Seconds throughout."""

    #: the client name VPP registers (at most 63 bytes are sent)
    name: str = "datasync"
    #: requests outstanding at once (the transport may allow fewer)
    max_in_flight: int = 1024
    #: the default per-call timeout
    timeout: float = 5.0
    #: the bound on one connect (handshake and first control_ping)
    connect_timeout: float = 5.0
    #: seconds between health probes (control_ping); None: no probe
    probe_interval: float | None = 1.0
    #: an idle VPP that leaves ``probe_failures`` pings in a row unanswered this long is hung
    probe_timeout: float = 0.25
    probe_failures: int = 2
    #: how long VPP may send nothing while our requests are outstanding before the probe
    #: calls it hung (None: the call timeout, when those calls fail anyway)
    busy_timeout: float | None = None
    #: reconnect after a loss (until closed), waiting the backoff between attempts
    reconnect: bool = True
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    #: messages VPP must offer with our CRC, or connecting fails naming the first missing
    require: tuple[str, ...] = ()
    #: events kept by an ``events()`` iterator (the oldest are dropped)
    event_queue_size: int = 10000
    #: "socket"; "shm": bodies over the project's shared-memory ring after sock_init_shm
    #: (the simulator offers it; a real VPP's shm is not this ring); "vac": a real VPP's
    #: shared memory through libvppapiclient (the socket path is unused)
    transport: TransportKind = "socket"
    #: bytes of the shm ring asked for
    shm_size: int = 4 << 20
    #: the libvppapiclient.so file (None: searched) and VPP's api-segment prefix
    vac_library: str | None = None
    vac_prefix: str | None = None
    #: "sync" (our reader polls vac_read) or "callback" (the library's rx thread
    #: delivers: no timeout-thread handshake per message)
    vac_mode: VacMode = "sync"
    #: the jitter of the reconnect backoff: each delay is scaled by [1 - jitter, 1]
    backoff_jitter: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.require, tuple):
            object.__setattr__(self, "require", tuple(self.require))
        if isinstance(self.max_in_flight, bool) or not isinstance(self.max_in_flight, int):
            raise VppConfigError("max_in_flight", f"must be an integer, not {self.max_in_flight!r}")
        if self.max_in_flight < 1:
            raise VppConfigError("max_in_flight", "must be >= 1")
        for name in ("timeout", "connect_timeout", "probe_timeout", "backoff_initial"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise VppConfigError(name, f"must be a finite number > 0, not {value!r}")
        for name in ("probe_interval", "busy_timeout"):
            value = getattr(self, name)
            if value is not None and not (
                isinstance(value, int | float) and math.isfinite(value) and value >= 0
            ):
                raise VppConfigError(name, f"must be a finite number >= 0 or None, not {value!r}")
        if self.probe_failures < 1:
            object.__setattr__(self, "probe_failures", 1)  # as many misses as it takes: one
        if not self.backoff_max >= self.backoff_initial:
            raise VppConfigError(
                "backoff_max", f"({self.backoff_max!r}) must be >= backoff_initial"
            )
        if not 0 <= self.backoff_jitter < 1:
            raise VppConfigError("backoff_jitter", "must be in [0, 1)")
        if self.event_queue_size < 1:
            raise VppConfigError("event_queue_size", "must be >= 1")
        if self.transport not in ("socket", "shm", "vac"):
            raise VppConfigError(
                "transport", f"must be 'socket', 'shm' or 'vac', got {self.transport!r}"
            )
        if self.vac_mode not in ("sync", "callback"):
            raise VppConfigError("vac_mode", f"must be 'sync' or 'callback', got {self.vac_mode!r}")
        if self.shm_size < 0:
            raise VppConfigError("shm_size", "must be >= 0 (0: the server's default)")

    @property
    def backoff(self) -> Backoff:
        """The delay between reconnect attempts."""
        return Backoff(self.backoff_initial, 2.0, self.backoff_max, self.backoff_jitter)

    @property
    def effective_busy_timeout(self) -> float:
        """``busy_timeout``, or its default: the call timeout (at least the probe's misses)."""
        if self.busy_timeout is not None:
            return self.busy_timeout
        return max(self.timeout, self.probe_timeout * self.probe_failures)

    def replace(self, **changes: Any) -> VppClientConfig:
        """A copy with ``changes`` (validated again); an unknown name is a ``TypeError``."""
        return dataclasses.replace(self, **changes)
