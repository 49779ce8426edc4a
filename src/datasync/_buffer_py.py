"""Pure-Python twin of the compiled event buffer and revision filter (``datasync._buffer_c``).

This module is the readable spec: the compiled module behaves identically, errors
included. ``datasync.buffer`` picks one of the two.

Validation (both classes): a change is a tuple (normally ``datasync.api.Change``) of at
least four fields ``(key, op, value, revision, ...)``. Its key must be a non-empty plain
``str``, not a subclass (else ``InvalidKeyError``); its revision an ``int``, not ``bool``
(else ``TypeError``), in ``0 .. 2**63-1`` (else ``ValueError``). Every error names the
key. Batch calls validate the whole batch first: a bad item raises and leaves the buffer
or filter untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from operator import itemgetter
from typing import Any, cast

from .api import Change
from .errors import InvalidKeyError

__all__ = ["EventBuffer", "RevisionFilter"]

#: revisions are C int64 in the compiled module; the twin enforces the same range.
MAX_REVISION = (1 << 63) - 1

#: the compiled module keeps sizes in Py_ssize_t.
MAX_COALESCE_ABOVE = (1 << 62) - 1

#: sort key: a change's revision (field 3).
_revision = cast("Callable[[Change], int]", itemgetter(3))


def _check(change: Any) -> tuple[str, int]:
    """Return ``(key, revision)`` of a valid change, else raise naming the key."""
    if not isinstance(change, tuple) or len(change) < 4:
        raise TypeError(
            f"expected a Change (key, op, value, revision, ...), got {type(change).__name__}"
        )
    return _check_pair(change[0], change[3])


def _check_all(batch: Sequence[Any]) -> None:
    for change in batch:
        _check(change)


def _check_pair(key: Any, revision: Any) -> tuple[str, int]:
    # Plain str only: a str subclass could run Python code inside the dict operations.
    if type(key) is not str:
        raise InvalidKeyError(repr(key), f"keys are str, got {type(key).__name__}")
    if not key:
        raise InvalidKeyError(key, "empty key")
    if not isinstance(revision, int) or isinstance(revision, bool):
        raise TypeError(f"key {key!r}: revision must be an int, got {type(revision).__name__}")
    if revision < 0 or revision > MAX_REVISION:
        raise ValueError(f"key {key!r}: revision {revision} out of range 0..2**63-1")
    return key, revision


def _check_int(name: str, value: Any, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0 or value > maximum:
        raise ValueError(f"{name} {value} out of range 0..{maximum}")
    return value


def _collect_key_revisions(key_revisions: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Validate ``(key, revision)`` pairs into a dict; the highest revision of a key wins."""
    last: dict[str, int] = {}
    for pair in key_revisions:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"key_revisions holds (key, revision) pairs, got {pair!r}")
        key, rev = _check_pair(pair[0], pair[1])
        old = last.get(key)
        if old is None or rev > old:
            last[key] = rev
    return last


class RevisionFilter:
    """Drops changes already applied: at or below the snapshot revision, or at or below
    the last applied revision of their key (duplicates and time-travelling events).

    Never drops a newer change. One instance per source: revisions are per source.
    """

    __slots__ = ("_dropped", "_last", "_snapshot")

    def __init__(self) -> None:
        self._snapshot = 0
        self._dropped = 0
        self._last: dict[str, int] = {}

    @property
    def snapshot_revision(self) -> int:
        """The revision R of the last resync snapshot (0 before any)."""
        return self._snapshot

    @property
    def dropped(self) -> int:
        """How many changes were dropped so far."""
        return self._dropped

    def reset(self, snapshot_revision: int, key_revisions: Iterable[tuple[str, int]] = ()) -> None:
        """Start over after a resync at ``snapshot_revision``.

        ``key_revisions`` are the snapshot's ``(key, mod_revision)`` pairs; they become the
        last applied revision of each key (the highest one wins if a key repeats). All
        previous per-key state is forgotten. Validated first: on error nothing changes.
        """
        _check_int("snapshot revision", snapshot_revision, MAX_REVISION)
        last = _collect_key_revisions(key_revisions)
        self._snapshot = snapshot_revision
        self._last = last

    def accept(self, change: Change) -> bool:
        """True (and remember its revision) if ``change`` is new, False (counted) if stale."""
        key, rev = _check(change)
        last = self._last.get(key)
        if rev <= self._snapshot or (last is not None and rev <= last):
            self._dropped += 1
            return False
        self._last[key] = rev
        return True

    def filter(self, changes: Sequence[Change]) -> list[Change]:
        """The new changes of ``changes``, in their order; the stale ones are dropped.

        Validates the whole batch before touching any state.
        """
        batch = changes if isinstance(changes, (list, tuple)) else list(changes)
        for change in batch:
            _check(change)
        return self._filter_valid(batch)

    def _filter_valid(self, changes: Sequence[Change]) -> list[Change]:
        snapshot = self._snapshot
        last_of = self._last
        out: list[Change] = []
        for change in changes:
            key = change[0]
            rev = change[3]
            last = last_of.get(key)
            if rev <= snapshot or (last is not None and rev <= last):
                continue
            last_of[key] = rev
            out.append(change)
        self._dropped += len(changes) - len(out)
        return out

    def last_applied(self, key: str) -> int | None:
        """The last applied revision of ``key``, or None if it is not tracked."""
        return self._last.get(key)

    def __len__(self) -> int:
        """Number of keys tracked."""
        return len(self._last)

    def __repr__(self) -> str:
        return (
            f"RevisionFilter(snapshot_revision={self._snapshot}, keys={len(self._last)}, "
            f"dropped={self._dropped})"
        )


class EventBuffer:
    """Holds the changes of one source while a resync round runs.

    Changes are kept in arrival order. When holding one more would exceed
    ``coalesce_above``, the buffer coalesces per key: only each key's newest revision stays
    (the first to arrive among equal revisions; an older revision arriving later never
    replaces a newer one, and a DELETE that is newest stays). If that left the buffer more
    than half full, it stays keyed: from then on each change replaces its key's held
    change at once, so ``len(buffer) <= max(coalesce_above, distinct keys)`` always holds.
    Nothing is lost: each coalesced key is still applied at its newest value.
    """

    __slots__ = ("_coalesce_above", "_coalesced", "_index", "_items", "_live")

    def __init__(self, coalesce_above: int = 65536) -> None:
        self._coalesce_above = _check_int("coalesce_above", coalesce_above, MAX_COALESCE_ABOVE)
        self._coalesced = 0
        # Arrival order; None marks a slot whose change a newer one replaced (keyed mode).
        self._items: list[Change | None] = []
        self._live = 0
        # key -> slot of its held change; None while not coalescing (plain appends).
        self._index: dict[str, int] | None = None

    @property
    def coalesced(self) -> int:
        """How many changes were replaced by (or discarded for) a newer one of their key."""
        return self._coalesced

    @property
    def coalesce_above(self) -> int:
        """The size past which the buffer coalesces per key."""
        return self._coalesce_above

    def __len__(self) -> int:
        """Number of changes held."""
        return self._live

    def append(self, change: Change) -> None:
        """Hold one change (validated; raises naming its key)."""
        _check(change)
        self._push(change)

    def extend(self, changes: Iterable[Change]) -> None:
        """Hold a batch, as ``append`` of each in order.

        The whole batch is validated first: a bad item raises and nothing of the batch is
        held (what was held before stays).
        """
        batch = changes if isinstance(changes, (list, tuple)) else list(changes)
        # Changes that only the batch holds (the caller passed an iterator) are released
        # with the batch list, last first, as the compiled buffer releases them: their
        # finalizers may append to the buffer, so the order is behaviour. The loops run in
        # helpers so that no loop variable holds the last change past the list.
        _check_all(batch)
        if self._index is None and self._live + len(batch) <= self._coalesce_above:
            self._items.extend(batch)
            self._live += len(batch)
            return
        # Coalescing frees changes, whose finalizers may change the caller's list: the
        # batch is read from a copy of it.
        self._push_all(list(batch) if batch is changes and isinstance(batch, list) else batch)

    def _push_all(self, batch: Sequence[Change]) -> None:
        for change in batch:
            self._push(change)

    def _push(self, change: Change) -> None:
        index = self._index
        if index is None:
            self._items.append(change)
            self._live += 1
            if self._live > self._coalesce_above:
                self._coalesce()
            return
        key = change[0]
        slot = index.get(key)
        if slot is not None:
            held = self._items[slot]
            assert held is not None
            self._coalesced += 1
            if change[3] <= held[3]:
                return  # older or duplicate: the held change is newer (or arrived first)
        index[key] = len(self._items)
        self._items.append(change)
        if slot is None:
            self._live += 1
        else:
            self._items[slot] = None  # the state is whole before the replaced one goes
        if len(self._items) > 2 * self._live + 16:
            self._compact()

    def _coalesce(self) -> None:
        """Keep each key's newest change, in arrival order; pick the mode to continue in."""
        best: dict[str, int] = {}
        items = self._items
        for slot, change in enumerate(items):
            if change is None:
                continue
            key = change[0]
            held = best.get(key)
            if held is None:
                best[key] = slot
                continue
            held_change = items[held]
            assert held_change is not None
            if change[3] > held_change[3]:
                best[key] = slot
        kept = sorted(best.values())
        self._coalesced += self._live - len(kept)
        self._items = [items[slot] for slot in kept]
        self._live = len(kept)
        if self._live * 2 <= self._coalesce_above:
            # Mostly duplicates: back to cheap plain appends until the next overflow.
            self._index = None
        else:
            self._index = {c[0]: slot for slot, c in enumerate(self._items) if c is not None}

    def _compact(self) -> None:
        """Drop the empty slots left by replaced changes."""
        self._items = [c for c in self._items if c is not None]
        self._index = {c[0]: slot for slot, c in enumerate(self._items) if c is not None}

    def drain(self, filt: RevisionFilter) -> list[Change]:
        """Everything held, sorted by revision (equal revisions in arrival order), through
        ``filt`` (its state is updated, stale changes dropped); the buffer is emptied."""
        if not isinstance(filt, RevisionFilter):
            raise TypeError(f"drain needs a RevisionFilter, got {type(filt).__name__}")
        held: list[Change]
        if self._index is None:
            held = cast("list[Change]", self._items)  # empty slots exist only in keyed mode
        else:
            held = [c for c in self._items if c is not None]
        held.sort(key=_revision)  # stable: equal revisions keep arrival order
        self.clear()
        return filt._filter_valid(held)

    def clear(self) -> None:
        """Forget everything held (the ``coalesced`` counter stays)."""
        self._live = 0
        self._index = None
        self._items = []  # last: releasing the changes may run finalizers

    def __repr__(self) -> str:
        return (
            f"EventBuffer(len={self._live}, coalesce_above={self._coalesce_above}, "
            f"coalesced={self._coalesced})"
        )
