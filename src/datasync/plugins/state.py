"""Key states: every key a plugin is given has one, with the reason.

A bad key is a state of that key, never a failed round: INVALID and FAILED stay until the
key's value changes, RETRYING carries the next attempt time (per-key backoff), PENDING
names the dependency it waits for. The agent's status, CLI and metrics read them here.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from ..backoff import Backoff

__all__ = ["KeyState", "KeyStates", "KeyStatus", "RetryPolicy", "StateRegistry"]


class KeyState(enum.Enum):
    """Where a key stands against the dataplane."""

    CONFIGURED = "CONFIGURED"
    PENDING = "PENDING"
    INVALID = "INVALID"
    FAILED = "FAILED"
    RETRYING = "RETRYING"

    @property
    def terminal(self) -> bool:
        """Not retried until the key's value changes."""
        return self in (KeyState.INVALID, KeyState.FAILED)


@dataclass(frozen=True)
class KeyStatus:
    """One key's state. ``retval`` is VPP's error name (FAILED, RETRYING); ``next_attempt``
    is a ``time.time()`` (RETRYING); ``since`` when the key entered this state."""

    key: str
    state: KeyState
    reason: str = ""
    since: float = 0.0
    retval: str | None = None
    next_attempt: float | None = None
    attempts: int = 0

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"key": self.key, "state": self.state.value, "since": self.since}
        if self.reason:
            out["reason"] = self.reason
        if self.retval is not None:
            out["retval"] = self.retval
        if self.next_attempt is not None:
            out["next_attempt"] = self.next_attempt
        if self.attempts:
            out["attempts"] = self.attempts
        return out


class KeyStates:
    """The key states of one plugin; listeners hear of every change (see :meth:`add_listener`)."""

    def __init__(self, plugin: str, clock: Callable[[], float] = time.time) -> None:
        self.plugin = plugin
        self._clock = clock
        self._states: dict[str, KeyStatus] = {}
        self._counts = dict.fromkeys(KeyState, 0)  # kept as states change: metrics read it
        self._listeners: list[Callable[[str, str, KeyStatus | None], None]] = []

    def set(
        self,
        key: str,
        state: KeyState,
        reason: str = "",
        *,
        retval: str | None = None,
        next_attempt: float | None = None,
        attempts: int = 0,
    ) -> KeyStatus:
        old = self._states.get(key)
        if (
            old is not None
            and old.state is state
            and old.reason == reason
            and old.retval == retval
            and old.next_attempt == next_attempt
            and old.attempts == attempts
        ):
            return old
        since = old.since if old is not None and old.state is state else self._clock()
        status = KeyStatus(key, state, reason, since, retval, next_attempt, attempts)
        self._states[key] = status
        if old is not None:
            self._counts[old.state] -= 1
        self._counts[state] += 1
        self._notify(key, status)
        return status

    def remove(self, key: str) -> None:
        """The key is gone from the desired state and from the dataplane."""
        old = self._states.pop(key, None)
        if old is not None:
            self._counts[old.state] -= 1
            self._notify(key, None)

    def get(self, key: str) -> KeyStatus | None:
        return self._states.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._states

    def __iter__(self) -> Iterator[KeyStatus]:
        return iter(list(self._states.values()))

    def __len__(self) -> int:
        return len(self._states)

    def keys(self) -> list[str]:
        return list(self._states)

    def counts(self) -> dict[KeyState, int]:
        return dict(self._counts)

    def not_configured(self) -> list[KeyStatus]:
        """Every key that is not CONFIGURED, with its reason."""
        return [s for s in self._states.values() if s.state is not KeyState.CONFIGURED]

    def add_listener(self, fn: Callable[[str, str, KeyStatus | None], None]) -> None:
        """``fn(plugin, key, status)``; ``status`` is None when the key was removed."""
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[str, str, KeyStatus | None], None]) -> None:
        self._listeners.remove(fn)

    def _notify(self, key: str, status: KeyStatus | None) -> None:
        for fn in list(self._listeners):
            fn(self.plugin, key, status)


class StateRegistry:
    """The key states of every plugin of an agent: one place to read them all."""

    def __init__(self) -> None:
        self._plugins: dict[str, KeyStates] = {}

    def add(self, states: KeyStates) -> None:
        self._plugins[states.plugin] = states

    def plugins(self) -> Mapping[str, KeyStates]:
        return dict(self._plugins)

    def get(self, key: str) -> KeyStatus | None:
        for states in self._plugins.values():
            found = states.get(key)
            if found is not None:
                return found
        return None

    def __iter__(self) -> Iterator[KeyStatus]:
        for states in self._plugins.values():
            yield from states

    def counts(self) -> dict[str, dict[KeyState, int]]:
        return {name: s.counts() for name, s in self._plugins.items()}


#: Per-key backoff for retriable VPP errors (the package's one ``Backoff``).
RetryPolicy = Backoff
