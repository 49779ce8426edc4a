"""The VPP client's fault events: what happened to the connection, as typed values.

``client.add_fault_listener(callback)`` calls ``callback(event)`` with one of these;
``match`` on the class, so a misspelt case is a name error rather than a branch that
never runs. The older ``on_fault(kind, detail)`` callback still gets ``event.kind`` and
``event.detail()``, and :func:`fault_from_kind` turns those back into the event.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "FAULT_KINDS",
    "Disconnected",
    "FaultCallback",
    "FaultListener",
    "Reconnected",
    "Unresponsive",
    "VppFault",
    "VppRestarted",
    "fault_from_kind",
]


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection was lost (calls in flight failed); a reconnect loop follows."""

    kind: ClassVar[str] = "disconnected"
    #: why, as the transport or the health probe said it
    error: str

    def detail(self) -> dict[str, Any]:
        return {"error": self.error}


@dataclass(frozen=True, slots=True)
class Unresponsive:
    """The health probe found VPP hung; the connection is aborted (``Disconnected`` follows).

    Either VPP left ``misses`` pings in a row unanswered for ``timeout`` each while idle, or,
    busy with ``outstanding`` requests of ours, sent nothing for ``silent_for`` seconds
    (``timeout`` is then the busy timeout; ``events_only``: events kept coming, replies not).
    """

    kind: ClassVar[str] = "unresponsive"
    timeout: float
    misses: int | None = None
    silent_for: float | None = None
    outstanding: int | None = None
    events_only: bool = False

    def detail(self) -> dict[str, Any]:
        if self.silent_for is None:
            return {"timeout": self.timeout, "misses": self.misses}
        return {
            "timeout": self.timeout,
            "silent_for": self.silent_for,
            "outstanding": self.outstanding,
            "events_only": self.events_only,
        }


@dataclass(frozen=True, slots=True)
class VppRestarted:
    """VPP's pid changed: it restarted and lost every object (indices are renumbered)."""

    kind: ClassVar[str] = "vpp_restarted"
    old_vpe_pid: int
    vpe_pid: int

    def detail(self) -> dict[str, Any]:
        return {"old_vpe_pid": self.old_vpe_pid, "vpe_pid": self.vpe_pid}


@dataclass(frozen=True, slots=True)
class Reconnected:
    """The reconnect loop connected again after ``attempts`` tries."""

    kind: ClassVar[str] = "reconnected"
    attempts: int
    vpe_pid: int | None
    #: VPP's pid differs from the one before the loss
    vpp_restarted: bool

    def detail(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "vpe_pid": self.vpe_pid,
            "vpp_restarted": self.vpp_restarted,
        }


VppFault = Disconnected | Unresponsive | VppRestarted | Reconnected
#: a typed listener: ``callback(event)`` (a coroutine result is awaited in a task)
FaultListener = Callable[[VppFault], Any]
#: the older callback: ``callback(kind, detail)``
FaultCallback = Callable[[str, Mapping[str, Any]], Any]

FAULT_KINDS: Mapping[str, type[VppFault]] = {
    cls.kind: cls for cls in (Disconnected, Unresponsive, VppRestarted, Reconnected)
}


def fault_from_kind(kind: str, detail: Mapping[str, Any]) -> VppFault:
    """The event an ``on_fault(kind, detail)`` call stands for; an unknown ``kind`` or a
    ``detail`` without the event's fields is a ``ValueError`` naming it."""
    cls = FAULT_KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown VPP fault kind {kind!r} (known: {', '.join(FAULT_KINDS)})")
    try:
        return cls(**dict(detail))
    except TypeError as exc:
        raise ValueError(f"VPP fault {kind!r}: bad detail {dict(detail)!r}: {exc}") from None
