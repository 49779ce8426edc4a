"""Invariant checkers I1-I15 over a :class:`~datasync.testing.history.History` and the final
dumps of a fault test.

Each checker returns a :class:`Verdict`: ``ok``, ``detail`` (what broke, naming keys and
revisions), or ``checked=False`` when the run did not record what it needs (a checker never
passes on missing data silently: :meth:`Report.unchecked` lists those). I15 is special: when
it fails the test is *void* (the fault missed the phase it was meant to hit), not failed and
not passed.

Usage::

    from datasync.testing import invariants as inv

    final = inv.Final.from_status(agent_status_doc, store=store_dump, store_revision=rev,
                                  plan=agent_plan)
    report = inv.check(history, final, inv.Expect(relists=1, t_conv=10.0,
                                                  fault="fault.etcd_killed",
                                                  during="round"))
    report.raise_for_failures()   # VoidTest (I15), InvariantViolation (any other)

``inv.check(..., only=("I1", "I3"))`` runs a subset. The checkers are plain functions
(:data:`CHECKS` maps ids to them) so a suite can call one directly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .history import Event, History

__all__ = [
    "CHECKS",
    "Expect",
    "Final",
    "InvariantViolation",
    "Report",
    "Verdict",
    "VoidTest",
    "check",
]

#: the decisions that end with nothing applied until the input changes
TERMINAL = ("invalid", "failed")
#: VPP messages that only read
_READS = ("_dump", "_get", "control_ping", "show_", "sockclnt_", "get_", "want_")


class InvariantViolation(AssertionError):
    """An invariant failed; the message lists every failed one."""


class VoidTest(Exception):
    """The fault missed its intended phase (I15): the run proves nothing either way."""


@dataclass(frozen=True)
class Verdict:
    id: str
    ok: bool
    detail: str = ""
    checked: bool = True

    def __str__(self) -> str:
        state = "ok" if self.ok else "FAILED"
        if not self.checked:
            state = "not checked"
        return f"{self.id} {state}" + (f": {self.detail}" if self.detail else "")


@dataclass
class Final:
    """What holds at the end of a run.

    ``store`` is the store at ``store_revision`` under the agent's prefixes (key -> value);
    ``keys`` the agent's non-CONFIGURED keys (key -> (state, reason)), as ``/status``
    lists them; ``plan`` the VPP writes a downstream resync would make now (``/plan``);
    ``desired`` and ``dataplane`` the rendered store and the owned dataplane objects
    (key -> canonical object) when the test can build them; ``violations`` the
    simulator's dangling-reference count; ``writes_after_resync`` the VPP write ops a
    forced no-op resync made (I2) and ``writes_after_replay`` those a replay made (I13).
    """

    store: Mapping[str, bytes] = field(default_factory=dict)
    store_revision: int = 0
    in_sync: bool = False
    applied_revision: int = 0
    keys: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    plan: Sequence[Any] | None = None
    desired: Mapping[str, Any] | None = None
    dataplane: Mapping[str, Any] | None = None
    violations: int | None = None
    writes_after_resync: int | None = None
    writes_after_replay: int | None = None
    resources: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    #: what the growth is made of (the new asyncio tasks' coroutines), named in I9's verdict
    resources_new: Sequence[str] = ()

    @classmethod
    def from_status(
        cls,
        status: Mapping[str, Any],
        *,
        store: Mapping[str, bytes],
        store_revision: int,
        source: str | None = None,
        **kw: Any,
    ) -> Final:
        """From the agent's ``/status`` document (``source``: the one whose applied
        revision counts; the first one when None)."""
        sources = status.get("sources", {})
        src = sources.get(source) if source else next(iter(sources.values()), None)
        return cls(
            store=store,
            store_revision=store_revision,
            in_sync=bool(status.get("agent", {}).get("in_sync")),
            applied_revision=int((src or {}).get("applied_revision", 0)),
            keys={k["key"]: (k["state"], k.get("reason", "")) for k in status.get("keys", [])},
            **kw,
        )


@dataclass
class Expect:
    """What the row expects. ``relists``: full relists (``round.started`` markers with a
    ``relist`` flag, or every round after the first when unflagged) exactly, or at most
    ``max_relists``; ``t_conv``: seconds from the last ``fault.healed`` (or the last store
    change) to the first in-sync status sample; ``fault`` and ``during``: the marker that
    must have hit while ``during`` (``round`` or a marker pair ``<name>.begin/.end``) was
    in progress (I15); ``min_rate``: store changes per second before the fault (I15);
    ``faulty``: keys the fault targets, left out of I11; ``max_resource_growth``: I9's
    bound, a fraction."""

    relists: int | None = None
    max_relists: int | None = None
    t_conv: float | None = None
    fault: str | None = None
    during: str | None = None
    min_rate: float | None = None
    faulty: frozenset[str] = frozenset()
    max_resource_growth: float = 0.10


Check = Callable[[History, Final, Expect], Verdict]


def _unchecked(id_: str, why: str) -> Verdict:
    return Verdict(id_, True, why, checked=False)


def _is_write(message: str) -> bool:
    return not any(m in message for m in _READS)


def i1_convergence(h: History, f: Final, e: Expect) -> Verdict:
    problems = []
    if not f.in_sync:
        problems.append("the agent is not in sync")
    if f.applied_revision < f.store_revision:
        problems.append(
            f"applied_revision {f.applied_revision} < store revision {f.store_revision}"
        )
    if f.plan:
        problems.append(f"a downstream resync would still write {len(f.plan)} op(s): {f.plan[:3]}")
    if f.desired is not None and f.dataplane is not None and dict(f.desired) != dict(f.dataplane):
        missing = sorted(set(f.desired) - set(f.dataplane))[:5]
        extra = sorted(set(f.dataplane) - set(f.desired))[:5]
        differ = sorted(k for k in f.desired if k in f.dataplane and f.desired[k] != f.dataplane[k])
        problems.append(f"dataplane != render(store): missing {missing}, extra {extra}, "
                        f"different {differ[:5]}")  # fmt: skip
    return Verdict("I1", not problems, "; ".join(problems))


def i2_noop_resync(h: History, f: Final, e: Expect) -> Verdict:
    if f.writes_after_resync is None:
        return _unchecked("I2", "no forced resync recorded (Final.writes_after_resync)")
    n = f.writes_after_resync
    return Verdict("I2", n == 0, f"a no-op resync made {n} VPP write(s)" if n else "")


def i3_per_key_order(h: History, f: Final, e: Expect) -> Verdict:
    truth: dict[str, set[int]] = defaultdict(set)
    for ev in h.of("truth"):
        truth[ev.key].add(ev.revision)
    last: dict[str, int] = {}
    bad = []
    for ev in h.of("decision"):
        if ev.decision != "applied" or not ev.revision:
            continue
        prev = last.get(ev.key, 0)
        if ev.revision < prev:
            bad.append(f"{ev.key}: revision {ev.revision} applied after {prev}")
        if truth and ev.revision not in truth[ev.key]:
            bad.append(f"{ev.key}: applied revision {ev.revision} is not in the store's history")
        last[ev.key] = max(prev, ev.revision)
    if not last:
        return _unchecked("I3", "no applied decision with a revision was recorded")
    return Verdict("I3", not bad, "; ".join(bad[:10]))


def i4_no_phantoms(h: History, f: Final, e: Expect) -> Verdict:
    bad = [f"{k}: {state} without a reason" for k, (state, why) in f.keys.items() if not why]
    if f.dataplane is not None:
        desired = set(f.desired) if f.desired is not None else set(f.store)
        phantoms = sorted(set(f.dataplane) - desired)
        if phantoms:
            bad.append(f"owned objects no key asks for: {phantoms[:10]}")
    return Verdict("I4", not bad, "; ".join(bad[:10]))


def _epoch_at(sb: list[Event], t: float) -> int:
    epoch = 0
    for ev in sb:
        if ev.t > t:
            break
        if ev.epoch:
            epoch = ev.epoch
    return epoch


def i5_no_duplicate_effect(h: History, f: Final, e: Expect) -> Verdict:
    sb = h.of("sb")
    seen: dict[tuple[str, int, int], int] = defaultdict(int)
    errored: set[str] = set()
    bad = []
    for ev in h.of("decision"):
        if ev.decision in ("failed", "retrying"):
            errored.add(ev.key)
        if ev.decision != "applied" or not ev.revision:
            continue
        group = (ev.key, ev.revision, ev.epoch or _epoch_at(sb, ev.t))
        seen[group] += 1
        if seen[group] > 1 and ev.key not in errored:
            bad.append(f"{ev.key}@{ev.revision} applied {seen[group]}x in epoch {group[2]}")
    if not seen:
        return _unchecked("I5", "no applied decision with a revision was recorded")
    return Verdict("I5", not bad, "; ".join(bad[:10]))


#: markers after which an applied revision may be lower: the store was reset (its
#: revisions start again) or a new agent process started (it counts from its checkpoint)
RESTART_MARKS = ("store.reset", "agent.started")


def i6_watermark(h: History, f: Final, e: Expect) -> Verdict:
    resets = [m.t for m in h.events if m.kind == "phase" and m.op in RESTART_MARKS]
    last: dict[str, int] = {}
    bad = []
    for ev in h.of("status"):
        revs = dict(ev.extra.get("sources") or {})
        if not revs and "applied_revision" in ev.extra:
            revs = {"": ev.extra["applied_revision"]}
        for source, rev in revs.items():
            prev = last.get(source, 0)
            if rev < prev and not any(r <= ev.t for r in resets):
                bad.append(f"{source or 'applied'}_revision went {prev} -> {rev} at t={ev.t:.3f}")
            last[source] = rev
    if not last:
        return _unchecked("I6", "no status samples with applied_revision")
    return Verdict("I6", not bad, "; ".join(bad[:5]))


def i7_dependency_safety(h: History, f: Final, e: Expect) -> Verdict:
    if f.violations is None:
        return _unchecked("I7", "no dangling-reference count (simulator strict mode)")
    return Verdict("I7", f.violations == 0, f"{f.violations} dangling reference(s)")


def _relists(h: History) -> int:
    rounds = h.marks("round.started")
    flagged = [m for m in rounds if "relist" in m.extra]
    if flagged:
        return sum(bool(m.extra["relist"]) for m in flagged)
    return max(0, len(rounds) - 1)


def convergence_time(h: History, f: Final) -> float | None:
    """Seconds from the last ``fault.healed`` (else the last store change) to the first
    later status sample that is in sync at the final revision; None if never."""
    healed = h.marks("fault.healed")
    truth = h.of("truth")
    start = healed[-1].t if healed else (truth[-1].t if truth else None)
    if start is None:
        return None
    for ev in h.of("status"):
        if (
            ev.t >= start
            and ev.extra.get("in_sync")
            and ev.extra.get("applied_revision", 0) >= f.store_revision
        ):
            return ev.t - start
    return None


def i8_bounded_work(h: History, f: Final, e: Expect) -> Verdict:
    bad, checked = [], False
    if e.relists is not None or e.max_relists is not None:
        checked = True
        n = _relists(h)
        if e.relists is not None and n != e.relists:
            bad.append(f"{n} full relist(s), expected {e.relists}")
        if e.max_relists is not None and n > e.max_relists:
            bad.append(f"{n} full relist(s), expected at most {e.max_relists}")
    if e.t_conv is not None:
        checked = True
        t = convergence_time(h, f)
        if t is None:
            bad.append("never converged (no in-sync status sample at the final revision)")
        elif t > e.t_conv:
            bad.append(f"converged in {t:.2f}s, goal {e.t_conv}s")
    if not checked:
        return _unchecked("I8", "no relist count or T_conv expected")
    return Verdict("I8", not bad, "; ".join(bad))


def i9_bounded_resources(h: History, f: Final, e: Expect) -> Verdict:
    if not f.resources:
        return _unchecked("I9", "no resource samples (Final.resources)")
    bad = [
        f"{name}: {before:g} -> {after:g}"
        for name, (before, after) in f.resources.items()
        if after > before * (1 + e.max_resource_growth) + 1
    ]
    if bad and f.resources_new:
        bad.append("new: " + ", ".join(f.resources_new))
    return Verdict("I9", not bad, "; ".join(bad))


def i10_honest_health(h: History, f: Final, e: Expect) -> Verdict:
    samples = h.of("status")
    if not samples:
        return _unchecked("I10", "no status samples")
    bad = [
        f"in_sync while a round ran at t={s.t:.3f}"
        for s in samples
        if s.extra.get("in_sync") and s.extra.get("round_running")
    ]
    return Verdict("I10", not bad, "; ".join(bad[:5]))


def i11_isolation(h: History, f: Final, e: Expect) -> Verdict:
    bad = [
        f"{k}: {state} ({why})" for k, (state, why) in f.keys.items()
        if k in f.store and k not in e.faulty and state != "CONFIGURED"
    ]  # fmt: skip
    return Verdict("I11", not bad, "; ".join(bad[:10]))


def i12_stream_sanity(h: History, f: Final, e: Expect) -> Verdict:
    nb = h.of("nb")
    if not nb:
        return _unchecked("I12", "no NB events recorded")
    dropped = {(d.key, d.revision) for d in h.of("decision") if d.decision == "dropped"}
    truth = h.of("truth")
    sessions: dict[tuple[str, Any], list[Event]] = defaultdict(list)
    for ev in nb:
        sessions[(ev.source, ev.extra.get("session"))].append(ev)
    bad = []
    for (source, session), evs in sessions.items():
        seen: set[tuple[str, int]] = set()
        last = 0
        for ev in evs:
            tolerated = (ev.key, ev.revision) in dropped
            if ev.revision < last and not tolerated:
                bad.append(f"{source}/{session}: {ev.key}@{ev.revision} after revision {last}")
            if (ev.key, ev.revision) in seen and not tolerated:
                bad.append(f"{source}/{session}: {ev.key}@{ev.revision} twice")
            seen.add((ev.key, ev.revision))
            last = max(last, ev.revision)
        if truth and not any(ev.extra.get("snapshot") for ev in evs):
            lo, hi = min(ev.revision for ev in evs), max(ev.revision for ev in evs)
            lost = [
                (t.key, t.revision) for t in truth
                if lo <= t.revision <= hi and (t.key, t.revision) not in seen
            ]  # fmt: skip
            if lost:
                bad.append(f"{source}/{session}: lost {lost[:5]}")
    return Verdict("I12", not bad, "; ".join(bad[:10]))


def i13_replay(h: History, f: Final, e: Expect) -> Verdict:
    if f.writes_after_replay is None:
        return _unchecked("I13", "no replay recorded (Final.writes_after_replay)")
    n = f.writes_after_replay
    return Verdict("I13", n == 0, f"a replay made {n} VPP write(s)" if n else "")


def i14_retry_discipline(h: History, f: Final, e: Expect) -> Verdict:
    terminal_at: dict[str, float] = {}
    changed_at: dict[str, float] = defaultdict(float)
    for ev in h.of("nb", "truth"):
        changed_at[ev.key] = max(changed_at[ev.key], ev.t)
    bad = []
    for ev in h.of("decision"):
        since = terminal_at.get(ev.key)
        if since is not None and ev.decision in ("applied", "retrying", "failed"):
            changes = [x.t for x in h.of("nb", "truth", key=ev.key) if since < x.t <= ev.t]
            if not changes and ev.decision != "failed":
                bad.append(f"{ev.key}: {ev.decision} after a terminal state, input unchanged")
        if ev.decision in TERMINAL:
            terminal_at[ev.key] = ev.t
        elif ev.decision == "applied":
            terminal_at.pop(ev.key, None)
    return Verdict("I14", not bad, "; ".join(bad[:10]))


def _in_progress(h: History, during: str, t: float) -> bool:
    if during == "round":
        begin, end = h.marks("round.started"), h.marks("round.finished")
    else:
        begin, end = h.marks(during + ".begin"), h.marks(during + ".end")
    opened = [b.t for b in begin if b.t <= t]
    if not opened:
        return False
    return not any(opened[-1] <= x.t <= t for x in end)


def i15_validity(h: History, f: Final, e: Expect) -> Verdict:
    bad = []
    if e.fault is not None:
        hits = h.marks(e.fault)
        if not hits:
            bad.append(f"fault {e.fault!r} never happened")
        elif e.during is not None and not any(_in_progress(h, e.during, m.t) for m in hits):
            bad.append(f"fault {e.fault!r} did not hit while {e.during} was in progress")
    if e.min_rate is not None:
        cut = h.marks(e.fault)[0].t if e.fault and h.marks(e.fault) else float("inf")
        before = [ev.t for ev in h.of("truth") if ev.t < cut]
        rate = (len(before) - 1) / (before[-1] - before[0]) if len(before) > 1 else 0.0
        if before and before[-1] > before[0] and rate < e.min_rate:
            bad.append(f"background load {rate:.1f}/s before the fault, minimum {e.min_rate}/s")
        elif len(before) < 2:
            bad.append("no background load before the fault")
    if e.fault is None and e.min_rate is None:
        return _unchecked("I15", "no fault phase or load expected")
    return Verdict("I15", not bad, "; ".join(bad))


CHECKS: dict[str, Check] = {
    "I1": i1_convergence,
    "I2": i2_noop_resync,
    "I3": i3_per_key_order,
    "I4": i4_no_phantoms,
    "I5": i5_no_duplicate_effect,
    "I6": i6_watermark,
    "I7": i7_dependency_safety,
    "I8": i8_bounded_work,
    "I9": i9_bounded_resources,
    "I10": i10_honest_health,
    "I11": i11_isolation,
    "I12": i12_stream_sanity,
    "I13": i13_replay,
    "I14": i14_retry_discipline,
    "I15": i15_validity,
}


@dataclass
class Report:
    verdicts: list[Verdict]
    seed: int | None = None

    @property
    def void(self) -> bool:
        return any(v.id == "I15" and not v.ok for v in self.verdicts)

    @property
    def failed(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.ok and v.id != "I15"]

    @property
    def unchecked(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.checked]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.void

    def __str__(self) -> str:
        head = f"seed {self.seed}: " if self.seed is not None else ""
        return head + "; ".join(str(v) for v in self.verdicts if not v.ok or not v.checked)

    def raise_for_failures(self) -> None:
        """:class:`VoidTest` when I15 failed, else :class:`InvariantViolation` when any
        other did."""
        if self.void:
            i15 = next(v for v in self.verdicts if v.id == "I15")
            raise VoidTest(f"void run (seed {self.seed}): {i15.detail}")
        if self.failed:
            raise InvariantViolation(f"seed {self.seed}: " + "; ".join(str(v) for v in self.failed))


def check(
    history: History,
    final: Final,
    expect: Expect | None = None,
    only: Sequence[str] | None = None,
) -> Report:
    """Run the checkers (all, or the ids in ``only``) and collect their verdicts."""
    expect = expect or Expect()
    ids = list(only) if only is not None else list(CHECKS)
    unknown = [i for i in ids if i not in CHECKS]
    if unknown:
        raise ValueError(f"unknown invariant id(s) {unknown}: expected I1..I15")
    return Report([CHECKS[i](history, final, expect) for i in ids], seed=history.seed)
