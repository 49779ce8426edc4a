"""The history of one fault test: what the agent received, what it decided, what it asked
VPP, and what the store really held, on one timeline.

A :class:`History` is an append-only list of :class:`Event` records, safe to append to from
several threads (recorders run beside the test: a store watcher, a VPP wire recorder, an
agent poller). The invariant checkers of :mod:`datasync.testing.invariants` read it offline,
and on failure it is saved as JSON lines in the report bundle.

Kinds of event (``Event.kind``):

============ ============================================================================
``nb``       a change the agent received: ``source``, ``key``, ``op`` (``put``/``delete``),
             ``revision`` (etcd mod_revision, Kafka offset)
``decision`` what the agent made of a key: ``decision`` is one of :data:`DECISIONS`,
             ``reason`` says why, ``plugin`` names who decided
``sb``       one VPP API call: ``op`` is the message name, ``retval`` VPP's answer (None for
             dumps), ``epoch`` the dataplane's boot epoch (its vpe_pid) at call time
``truth``    the store's own history, from a watcher of the test's: ``key``, ``op``,
             ``revision``, ``value``
``phase``    a marker the test or harness sets: ``op`` names it (``fault.injected``,
             ``fault.healed``, ``round.started``, ``round.finished``, ``failpoint.hit``...)
``status``   a sample of the agent's status: ``extra`` holds ``in_sync``,
             ``round_running``, ``applied_revision``
============ ============================================================================

Usage::

    from datasync.testing.history import History
    from datasync.testing import invariants as inv

    h = History(seed=1234)
    # by hand, or by the recorders of datasync.testing.recorders (a store watcher, an
    # in-process orchestrator's or an agent process's events, a VPP wire recorder)
    h.truth("/cfg/a", "put", 5, b"1")
    h.received("etcd", "/cfg/a", "put", 5)
    h.decision("/cfg/a", "applied", revision=5, plugin="interfaces")
    h.sb("create_loopback", retval=0, epoch=4242)
    with h.phase("fault.etcd_killed"):           # markers around the fault window
        ...
    final = inv.Final(store={"/cfg/a": b"1"}, store_revision=5, in_sync=True,
                      applied_revision=5)
    inv.check(h, final, expect=inv.Expect(relists=0)).raise_for_failures()

``History.save(path)`` writes JSON lines; :meth:`History.load` reads them back.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["DECISIONS", "KINDS", "Event", "History"]

#: the kinds of event
KINDS = ("nb", "decision", "sb", "truth", "phase", "status")
#: what the agent can decide about a key's change
DECISIONS = (
    "dropped",  # the revision filter dropped it (at or below what was applied)
    "coalesced",  # replaced by a newer change of its key before it was applied
    "applied",  # configured in VPP
    "pending",  # waits for a dependency
    "invalid",  # a value the model rejects: not applied, not retried
    "failed",  # VPP refused it for good: not retried until the value changes
    "retrying",  # VPP refused it for now: retried with backoff
    "removed",  # the key is gone from the agent's intent
)


@dataclass(frozen=True, slots=True)
class Event:
    """One record of a :class:`History`; unused fields keep their defaults."""

    kind: str
    t: float
    key: str = ""
    source: str = ""
    op: str = ""
    revision: int = 0
    value: bytes | None = None
    decision: str = ""
    reason: str = ""
    plugin: str = ""
    retval: int | None = None
    epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc = {k: v for k, v in asdict(self).items() if v != _DEFAULTS.get(k, _NOTHING)}
        if self.value is not None:
            doc["value"] = base64.b64encode(self.value).decode()
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Event:
        doc = dict(doc)
        if doc.get("value") is not None:
            doc["value"] = base64.b64decode(doc["value"])
        return cls(**doc)


_NOTHING = object()
#: fields left out of an event's JSON when they hold their default
_DEFAULTS = {f.name: f.default for f in fields(Event) if f.default is not MISSING}
_DEFAULTS["extra"] = {}


class History:
    """Events in the order they were recorded; ``seed`` is the run's random seed."""

    def __init__(self, seed: int | None = None, clock: Any = time.time) -> None:
        self.seed = seed
        self._clock = clock
        self._events: list[Event] = []
        self._lock = threading.Lock()

    # -- recording ---------------------------------------------------------------------

    def add(self, kind: str, **fields: Any) -> Event:
        """Append one event of ``kind`` (one of :data:`KINDS`) and return it."""
        if kind not in KINDS:
            raise ValueError(f"event kind {kind!r}: expected one of {', '.join(KINDS)}")
        ev = Event(kind, fields.pop("t", None) or self._clock(), **fields)
        with self._lock:
            self._events.append(ev)
        return ev

    def received(self, source: str, key: str, op: str, revision: int, **kw: Any) -> Event:
        """The agent received a change of ``key`` at ``revision`` from ``source``."""
        return self.add("nb", source=source, key=key, op=op, revision=revision, **kw)

    def decision(self, key: str, decision: str, reason: str = "", **kw: Any) -> Event:
        """The agent decided ``decision`` (one of :data:`DECISIONS`) about ``key``."""
        if decision not in DECISIONS:
            raise ValueError(
                f"decision {decision!r} for key {key}: expected one of {', '.join(DECISIONS)}"
            )
        return self.add("decision", key=key, decision=decision, reason=reason, **kw)

    def sb(self, message: str, retval: int | None = None, epoch: int = 0, **kw: Any) -> Event:
        """One VPP call ``message`` and its ``retval``, in boot ``epoch``."""
        return self.add("sb", op=message, retval=retval, epoch=epoch, **kw)

    def truth(
        self, key: str, op: str, revision: int, value: bytes | None = None, **kw: Any
    ) -> Event:
        """The store changed ``key`` at ``revision`` (ground truth)."""
        return self.add("truth", key=key, op=op, revision=revision, value=value, **kw)

    def mark(self, name: str, **extra: Any) -> Event:
        """A phase marker: ``name`` such as ``fault.injected``."""
        return self.add("phase", op=name, extra=extra)

    @contextlib.contextmanager
    def phase(self, name: str, **extra: Any) -> Iterator[None]:
        """Markers ``<name>.begin`` and ``<name>.end`` around the block."""
        self.mark(name + ".begin", **extra)
        try:
            yield
        finally:
            self.mark(name + ".end", **extra)

    def status(self, **sample: Any) -> Event:
        """A sample of the agent's status (``in_sync``, ``round_running``, ...)."""
        return self.add("status", extra=sample)

    # -- reading -----------------------------------------------------------------------

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def since(self, seq: int) -> list[Event]:
        """The events recorded after the first ``seq`` (a poller's cursor: it passes the
        count it has seen, and adds the length of what it got)."""
        with self._lock:
            return self._events[max(seq, 0) :]

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def of(self, *kinds: str, key: str | None = None) -> list[Event]:
        """Events of the given kinds (all when none), of ``key`` when given."""
        return [
            e
            for e in self.events
            if (not kinds or e.kind in kinds) and (key is None or e.key == key)
        ]

    def marks(self, name: str) -> list[Event]:
        """Phase markers named ``name``."""
        return [e for e in self.events if e.kind == "phase" and e.op == name]

    def between(self, start: float, end: float, *kinds: str) -> list[Event]:
        return [e for e in self.of(*kinds) if start <= e.t <= end]

    def store_at(self, revision: int | None = None) -> dict[str, tuple[bytes | None, int]]:
        """The store by its ground truth, at ``revision`` (the last one when None):
        key -> (value, mod_revision) for every key present."""
        out: dict[str, tuple[bytes | None, int]] = {}
        for e in sorted(self.of("truth"), key=lambda e: e.revision):
            if revision is not None and e.revision > revision:
                break
            if e.op == "delete":
                out.pop(e.key, None)
            else:
                out[e.key] = (e.value, e.revision)
        return out

    # -- files -------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write JSON lines (a first line with the seed) and return the path."""
        path = Path(path)
        with path.open("w") as f:
            f.write(json.dumps({"seed": self.seed}) + "\n")
            for e in self.events:
                f.write(json.dumps(e.to_json()) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> History:
        lines = Path(path).read_text().splitlines()
        h = cls(seed=json.loads(lines[0]).get("seed") if lines else None)
        h.extend(Event.from_json(json.loads(line)) for line in lines[1:] if line)
        return h

    def extend(self, events: Iterable[Event]) -> None:
        with self._lock:
            self._events.extend(events)
