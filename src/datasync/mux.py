"""Several sources at once: which source owns each key.

Each source owns the keys it asserts. When two sources assert one key, the earlier
source in the configured order wins and the conflict shows in status. A source's
delete or resync never removes a key that another source still asserts: the plugin
then sees the other source's value instead.

With a single source the orchestrator does not use this module at all, so the
common case pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .api import Change, KeyVal, Op

__all__ = ["Ownership"]


class Ownership:
    """Per-source assertions of keys, and the effective view across sources."""

    def __init__(self, order: Sequence[str]) -> None:
        self._order = list(order)
        self._rank = {name: i for i, name in enumerate(order)}
        self._values: dict[str, dict[str, KeyVal]] = {name: {} for name in order}

    def reset_source(self, source: str, kvs: Iterable[KeyVal]) -> None:
        """Replace everything ``source`` asserts (after its snapshot)."""
        self._values[source] = {kv.key: kv for kv in kvs}

    def merged(self) -> dict[str, KeyVal]:
        """Every asserted key at the value of its owner (the earliest source asserting it)."""
        out: dict[str, KeyVal] = {}
        for name in reversed(self._order):
            out.update(self._values[name])
        return out

    def owner(self, key: str) -> str | None:
        """The source whose value of ``key`` is in effect."""
        for name in self._order:
            if key in self._values[name]:
                return name
        return None

    def conflicts(self) -> dict[str, list[str]]:
        """Keys asserted by more than one source, with those sources in precedence order."""
        seen: dict[str, list[str]] = {}
        for name in self._order:
            for key in self._values[name]:
                seen.setdefault(key, []).append(name)
        return {k: v for k, v in seen.items() if len(v) > 1}

    def apply(self, source: str, change: Change) -> Change | None:
        """Record ``change`` and return what the plugins should see, or None if shadowed."""
        values = self._values[source]
        rank = self._rank[source]
        if change.op is Op.PUT:
            assert change.value is not None
            values[change.key] = KeyVal(change.key, change.value, change.revision)
        else:
            values.pop(change.key, None)
        for name in self._order[:rank]:
            if change.key in self._values[name]:
                return None  # a higher-precedence source asserts it: nothing changes
        if change.op is Op.DELETE:
            for name in self._order[rank + 1 :]:
                fallback = self._values[name].get(change.key)
                if fallback is not None:
                    # Another source still asserts the key: it stays, at that value.
                    return Change(
                        change.key,
                        Op.PUT,
                        fallback.value,
                        change.revision,
                        change.prev_value,
                        change.source,
                    )
        return change
