"""The simulator's injected faults: error retvals instead of handling, and latency.

A :class:`FaultPlan` validates what tests (and the admin HTTP API) ask for, so a typo
is an error naming the field rather than a fault that never fires: a message the
simulator does not serve, a retval that is not VPP's i32, a latency past any client's
timeout, a count or deadline that is not a number.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_LATENCY", "FaultPlan", "InjectedError", "strict_int"]

#: the longest injected latency (seconds): past any client's call timeout, longer is a typo
MAX_LATENCY = 600.0
_I32 = (-(1 << 31), (1 << 31) - 1)  # VPP's retval is an i32


def strict_int(name: str, value: object) -> int:
    """``value`` if it is an int (not a bool, a float or a str): a clear error otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}"[:200])
    return int(value)


class InjectedError:
    """Answer ``message`` requests (matching ``match``) with ``retval``, ``remaining``
    more times (None: until cleared or ``until``, a ``time.time()`` value)."""

    __slots__ = ("match", "message", "remaining", "retval", "until")

    def __init__(
        self,
        message: str,
        retval: int,
        count: int | None,
        match: Mapping[str, Any] | None,
        until: float | None = None,
    ) -> None:
        self.message = message
        self.retval = retval
        self.remaining = count
        self.match = dict(match or {})
        self.until = until


class FaultPlan:
    """The faults in force; ``ids`` are the messages the simulator serves (name -> id)."""

    def __init__(self, ids: Mapping[str, int]) -> None:
        self._ids = ids
        #: injected errors, first match wins
        self.errors: list[InjectedError] = []
        self._latency = 0.0
        self._latency_by_id: dict[int, float] = {}

    # -- errors ------------------------------------------------------------------------

    def inject_error(
        self,
        message: str,
        retval: int,
        count: int | None = 1,
        match: Mapping[str, Any] | None = None,
        until: float | None = None,
    ) -> None:
        if message not in self._ids:
            raise ValueError(f"inject_error: the simulator does not handle {message!r}")
        retval = strict_int("retval", retval)
        if not _I32[0] <= retval <= _I32[1]:
            raise ValueError(f"inject_error: retval {retval} is not an i32 (VPP's retval)")
        if count is not None and strict_int("count", count) <= 0:
            raise ValueError("inject_error: count must be positive (or None for unlimited)")
        if until is not None and not math.isfinite(until):
            raise ValueError(f"inject_error: until must be a finite time, got {until}")
        self.errors.append(InjectedError(message, retval, count, match, until))

    def retval_for(self, name: str, msg: Any) -> int | None:
        """The retval to answer request ``name`` (decoded as ``msg``) with, or None:
        handle it. Each answer counts against its fault; expired faults are removed."""
        for fault in list(self.errors):
            if fault.message != name:
                continue
            if fault.until is not None and time.time() >= fault.until:
                self.errors.remove(fault)
                continue
            if any(getattr(msg, k, None) != v for k, v in fault.match.items()):
                continue
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.errors.remove(fault)
            return fault.retval
        return None

    # -- latency -----------------------------------------------------------------------

    def set_latency(self, seconds: float, message: str | None = None) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ValueError(f"latency: seconds must be a number, got {type(seconds).__name__}")
        if not (math.isfinite(seconds) and 0 <= seconds <= MAX_LATENCY):
            raise ValueError(f"latency: seconds must be within 0..{MAX_LATENCY:g}, got {seconds}")
        if message is None:
            self._latency = float(seconds)
            return
        if message not in self._ids:
            raise ValueError(f"set_latency: the simulator does not handle {message!r}")
        if seconds:
            self._latency_by_id[self._ids[message]] = float(seconds)
        else:
            self._latency_by_id.pop(self._ids[message], None)

    @property
    def delaying(self) -> bool:
        """True while some latency is set (messages are then handled one at a time)."""
        return self._latency > 0 or bool(self._latency_by_id)

    def latency_for(self, body: bytes) -> float:
        if len(body) >= 2:
            delay = self._latency_by_id.get((body[0] << 8) | body[1])
            if delay is not None:
                return delay
        return self._latency

    def clear(self) -> None:
        """Remove injected errors and latency."""
        self.errors.clear()
        self._latency = 0.0
        self._latency_by_id.clear()
