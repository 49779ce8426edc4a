"""Capped exponential backoff with jitter: the one retry-delay policy of the package.

The orchestrator's failed rounds, the VPP client's reconnects, the etcd and Kafka
sources' reconnects and the plugins' per-key retries all wait ``Backoff.delay(n)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Backoff:
    """Delay before retry number ``attempt`` (1 = the first retry):
    ``initial * multiplier^(attempt-1)`` capped at ``maximum``, then scaled by a random
    factor in ``[1 - jitter, 1]``. ``jitter=0.5`` is "equal jitter": never shorter than
    half the step, so a herd of retriers spreads out without any of them hammering."""

    initial: float = 1.0
    multiplier: float = 2.0
    maximum: float = 60.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not self.initial > 0:
            raise ConfigError(f"backoff initial must be > 0, not {self.initial!r}")
        if not self.maximum >= self.initial:
            raise ConfigError(
                f"backoff maximum ({self.maximum!r}) must be >= initial ({self.initial!r})"
            )
        if not self.multiplier >= 1:
            raise ConfigError(f"backoff multiplier must be >= 1, not {self.multiplier!r}")
        if not 0 <= self.jitter < 1:
            raise ConfigError(f"backoff jitter must be in [0, 1), not {self.jitter!r}")

    def step(self, attempt: int) -> float:
        """The capped delay before jitter."""
        exp = min(max(attempt - 1, 0), 64)  # bounded: no float overflow after many attempts
        return min(self.maximum, self.initial * self.multiplier**exp)

    @staticmethod
    def check_range(owner: str, first: tuple[str, float], cap: tuple[str, float]) -> None:
        """``ValueError`` unless ``0 < first <= cap``, in the names the caller's own
        parameters have (``first`` and ``cap`` are ``(name, value)``)."""
        (first_name, first_value), (cap_name, cap_value) = first, cap
        if not 0 < first_value <= cap_value:
            raise ValueError(
                f"{owner}: need 0 < {first_name} <= {cap_name}, got "
                f"{first_name}={first_value!r}, {cap_name}={cap_value!r}"
            )

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        r = (rng or random).random()
        return self.step(attempt) * (1 - self.jitter * r)
