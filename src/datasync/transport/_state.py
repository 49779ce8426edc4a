"""The connection state a source reports, and the listeners it tells (shared by the etcd and
Kafka sources)."""

from __future__ import annotations

import contextlib
import logging
from typing import ClassVar

from ..api import SourceState, StateListener

__all__ = ["StateListener", "StateReporter"]


class StateReporter:
    """Mixin for a source: ``state`` (and why, ``state_reason``), listeners of its changes.

    The source calls ``_init_state`` in its constructor and ``_set_state`` whenever it
    learns something about its connection; only real transitions are logged and passed on.
    A listener that raises is logged and does not stop the others.
    """

    #: The transition log line; keys: kind, name, old, new, reason.
    _STATE_LOG: ClassVar[str] = "%(kind)s source %(name)s: %(old)s -> %(new)s (%(reason)s)"

    def _init_state(
        self, kind: str, name: str, log: logging.Logger, reason: str = "not connected yet"
    ) -> None:
        self._state = SourceState.DISCONNECTED
        self._state_reason = reason
        self._state_listeners: list[StateListener] = []
        self._state_kind = kind
        self._state_name = name
        self._state_logger = log

    @property
    def state(self) -> SourceState:
        """The connection state, as last seen (and shown in status)."""
        return self._state

    @property
    def state_reason(self) -> str:
        """Why the source is in its ``state``."""
        return self._state_reason

    def add_state_listener(self, cb: StateListener) -> None:
        """Call ``cb(source_name, state, reason)`` on every state change."""
        self._state_listeners.append(cb)

    def remove_state_listener(self, cb: StateListener) -> None:
        """Stop calling ``cb``; a listener that was never added is ignored."""
        with contextlib.suppress(ValueError):
            self._state_listeners.remove(cb)

    def _set_state(self, state: SourceState, reason: str) -> None:
        if state == self._state:
            return
        old = self._state
        self._state, self._state_reason = state, reason
        self._state_logger.info(
            self._STATE_LOG,
            {
                "kind": self._state_kind,
                "name": self._state_name,
                "old": old.value,
                "new": state.value,
                "reason": reason,
            },
        )
        for cb in list(self._state_listeners):
            try:
                cb(self._state_name, state, reason)
            except Exception:
                self._state_logger.exception(
                    "%s source %s: state listener failed", self._state_kind, self._state_name
                )
