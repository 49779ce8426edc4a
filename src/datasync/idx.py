"""Name-to-index mappings with acknowledged change notifications (the brief's IDX).

A plugin owns a mapping (interface name -> VPP ``sw_if_index`` plus metadata) and
other plugins watch it. Every put or delete notifies each watcher with an event that
carries ``done()``; the owner can wait until every watcher acknowledged, with a
timeout that is an error. That is how the brief's example works: the interface
plugin announces a delete, the bridge-domain plugin detaches the interface and calls
``done()``, and only then the interface plugin deletes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .api import Ack, Channel, Op
from .errors import AckFailedError, AckTimeoutError, ClosedError, DuplicateNameError

__all__ = ["IdxEntry", "IdxEvent", "IdxSubscription", "NameToIndex", "Notification"]


@dataclass(frozen=True, slots=True)
class IdxEntry:
    """One mapping: a name, its index, and the owner's metadata."""

    name: str
    index: int
    metadata: Any = None


class IdxEvent:
    """A put or delete of one entry, as one watcher receives it."""

    __slots__ = ("ack", "entry", "op", "prev", "replay")

    def __init__(
        self, op: Op, entry: IdxEntry, prev: IdxEntry | None, ack: Ack, replay: bool = False
    ) -> None:
        self.op = op
        self.entry = entry
        self.prev = prev
        self.ack = ack
        #: True for the entries replayed to a late subscriber
        self.replay = replay

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def index(self) -> int:
        return self.entry.index

    def done(self, err: BaseException | None = None) -> None:
        """Acknowledge; idempotent, never blocks; an error is reported to the owner."""
        self.ack.done(err)

    def __repr__(self) -> str:
        return f"IdxEvent({self.op.name}, {self.entry!r})"


class Notification:
    """The owner's handle on one put/delete: wait until every watcher acknowledged."""

    def __init__(self, op: Op, entry: IdxEntry, acks: Mapping[str, Ack]) -> None:
        self.op = op
        self.entry = entry
        self._acks = dict(acks)

    @property
    def pending(self) -> list[str]:
        """Watchers that have not acknowledged yet."""
        return sorted(n for n, a in self._acks.items() if not a.is_done)

    async def wait(self, timeout: float | None = 10.0) -> None:
        """Wait for every acknowledgement.

        Raises ``AckTimeoutError`` naming the watchers still missing at the timeout
        (their late ``done()`` is then ignored), or ``AckFailedError`` when a watcher
        acknowledged with an error.
        """
        acks = list(self._acks.items())
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(a.wait() for _, a in acks))
        except TimeoutError:
            missing = self.pending
            for name in missing:
                self._acks[name].expire()
            raise AckTimeoutError(
                f"IDX {self.op.name.lower()} of {self.entry.name!r}: no acknowledgement from "
                f"{', '.join(missing)} within {timeout:g} s",
                missing,
            ) from None
        errors = {n: a.error for n, a in acks if a.error is not None}
        if errors:
            detail = "; ".join(f"{n}: {e}" for n, e in sorted(errors.items()))
            raise AckFailedError(
                f"IDX {self.op.name.lower()} of {self.entry.name!r} failed at {detail}",
                {n: e for n, e in errors.items() if e is not None},
            )


class IdxSubscription:
    """One watcher's stream of ``IdxEvent``s. ``close()`` affects only this watcher."""

    def __init__(self, owner: NameToIndex, name: str) -> None:
        self._owner = owner
        self.name = name
        self.events: Channel[IdxEvent] = Channel()
        # Acks handed to this watcher and not yet done: released when it closes.
        self.unacked: set[Ack] = set()

    def __aiter__(self) -> Channel[IdxEvent]:
        return self.events

    def close(self) -> None:
        """Stop watching; notifications waiting on this watcher no longer wait."""
        self._owner._unsubscribe(self)
        self.events.close()
        # Whatever it had not acknowledged (queued or taken) stops blocking the owner.
        self.events.drain()
        for ack in list(self.unacked):
            ack.done()


class NameToIndex:
    """A name -> index mapping with reverse lookup, secondary indexes and watchers.

    ``secondary`` maps an index name to a function of an entry's metadata giving
    the values it is found under (e.g. ``{"ip": lambda md: md["addresses"]}``).
    """

    def __init__(
        self,
        title: str,
        secondary: Mapping[str, Callable[[Any], Iterable[Hashable]]] | None = None,
    ) -> None:
        self.title = title
        self._by_name: dict[str, IdxEntry] = {}
        self._by_index: dict[int, str] = {}
        self._secondary_fns = dict(secondary or {})
        self._secondary: dict[str, dict[Hashable, set[str]]] = {k: {} for k in self._secondary_fns}
        self._subs: dict[str, IdxSubscription] = {}
        #: late ``done()`` calls after a timeout, counted
        self.late_acks = 0

    # --- lookups --------------------------------------------------------------------------

    def lookup(self, name: str) -> IdxEntry | None:
        """The entry of ``name``."""
        return self._by_name.get(name)

    def lookup_index(self, index: int) -> IdxEntry | None:
        """The entry holding ``index``."""
        name = self._by_index.get(index)
        return None if name is None else self._by_name[name]

    def lookup_by(self, secondary: str, value: Hashable) -> list[str]:
        """Names whose metadata gives ``value`` under the ``secondary`` index."""
        try:
            table = self._secondary[secondary]
        except KeyError:
            raise KeyError(f"IDX {self.title}: no secondary index {secondary!r}") from None
        return sorted(table.get(value, ()))

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[IdxEntry]:
        return iter(list(self._by_name.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    # --- changes --------------------------------------------------------------------------

    def put(self, name: str, index: int, metadata: Any = None) -> Notification:
        """Add or update ``name``; every watcher is notified."""
        if not name:
            raise ValueError(f"IDX {self.title}: empty name")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"IDX {self.title}: index of {name!r} must be an int >= 0")
        holder = self._by_index.get(index)
        if holder is not None and holder != name:
            raise ValueError(
                f"IDX {self.title}: index {index} of {name!r} is already held by {holder!r}"
            )
        prev = self._by_name.get(name)
        entry = IdxEntry(name, index, metadata)
        if prev is not None:
            self._unindex(prev)
        self._by_name[name] = entry
        self._by_index[index] = name
        for sec, fn in self._secondary_fns.items():
            for value in fn(metadata) if metadata is not None else ():
                self._secondary[sec].setdefault(value, set()).add(name)
        return self._notify(Op.PUT, entry, prev)

    def delete(self, name: str) -> Notification | None:
        """Remove ``name`` (None when it was not there); every watcher is notified."""
        prev = self._by_name.pop(name, None)
        if prev is None:
            return None
        self._unindex(prev)
        return self._notify(Op.DELETE, prev, prev)

    def clear(self) -> list[Notification]:
        """Remove every entry (e.g. after a VPP restart renumbered all indices)."""
        return [n for name in list(self._by_name) if (n := self.delete(name)) is not None]

    def _unindex(self, entry: IdxEntry) -> None:
        if self._by_index.get(entry.index) == entry.name:
            del self._by_index[entry.index]
        for sec, fn in self._secondary_fns.items():
            for value in fn(entry.metadata) if entry.metadata is not None else ():
                names = self._secondary[sec].get(value)
                if names is not None:
                    names.discard(entry.name)
                    if not names:
                        del self._secondary[sec][value]

    def _count_late(self) -> None:
        self.late_acks += 1

    def _new_ack(self, sub: IdxSubscription) -> Ack:
        def on_done(_err: BaseException | None) -> None:
            sub.unacked.discard(ack)

        ack = Ack(on_done=on_done, on_late=self._count_late)
        sub.unacked.add(ack)
        return ack

    def _notify(self, op: Op, entry: IdxEntry, prev: IdxEntry | None) -> Notification:
        acks: dict[str, Ack] = {}
        for sub_name, sub in self._subs.items():
            ack = self._new_ack(sub)
            acks[sub_name] = ack
            sub.events.put(IdxEvent(op, entry, prev, ack))
        return Notification(op, entry, acks)

    # --- watchers -------------------------------------------------------------------------

    def watch(self, subscriber: str, replay: bool = False) -> IdxSubscription:
        """Subscribe ``subscriber``; with ``replay`` the current entries come first as puts."""
        if subscriber in self._subs:
            raise DuplicateNameError(f"IDX {self.title}: {subscriber!r} is already watching")
        sub = IdxSubscription(self, subscriber)
        self._subs[subscriber] = sub
        if replay:
            for entry in self._by_name.values():
                sub.events.put(IdxEvent(Op.PUT, entry, None, self._new_ack(sub), replay=True))
        return sub

    def _unsubscribe(self, sub: IdxSubscription) -> None:
        if self._subs.get(sub.name) is not sub:
            if sub.events.closed:
                return
            raise ClosedError(f"IDX {self.title}: {sub.name!r} is not subscribed")
        del self._subs[sub.name]
