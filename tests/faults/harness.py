"""One fault row end to end, in the test's loop: a real store's source, the orchestrator,
the four VPP plugins, the real VppClient and the strict simulator, with a
:class:`~datasync.testing.history.History` recorded as the run goes.

What is recorded, and from where:

* ``truth``: every write the test makes through :class:`Writer` (the store's revision of
  the write, as the store acknowledged it);
* ``nb``: every change and snapshot entry the orchestrator hands out, seen by a passive
  plugin (``Tap``) registered on the agent's whole key space;
* ``decision``: every key-state change of the plugins (CONFIGURED is ``applied``, with the
  revision the tap saw last for that key);
* ``phase``: ``round.started`` (``relist`` is False for the start-up round only) and
  ``round.finished`` from the orchestrator's events; ``fault.injected`` and
  ``fault.healed`` from the test;
* ``status``: the orchestrator's ``in_sync``, ``round_running`` and applied revision,
  sampled every 50 ms, so convergence time is measured, not asserted.

``Rig.verify`` builds the final dumps (the plugins' intent against the store, the
interfaces read back from the simulator against the store, the plan a downstream resync
would write, the simulator's dangling-reference count, the writes of a forced no-op
resync) and runs the invariant checkers; the row's measurements go to the test report
(``record_property``) for ``scripts/faults_report.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasync.agent.wiring import follow_vpp_faults
from datasync.api import ChangeEvent, Op, ResyncEvent
from datasync.plugins import KeyState, RetryPolicy, VppPlugins
from datasync.plugins.models import IF_PREFIX
from datasync.resync import Orchestrator, ResyncConfig, RoundFinished, RoundStarted
from datasync.testing import invariants as inv
from datasync.testing import netproxy
from datasync.testing.history import History
from datasync.vpp.client import VppClient
from datasync.vpp.sim import Simulator

LABEL = "t"
AGENT_PREFIX = f"/vnf-agent/{LABEL}/"
IF = IF_PREFIX.format(label=LABEL)
WAIT = 30.0  # a safety net against hangs, never a timing goal

#: the plugin states as history decisions
DECISION = {
    KeyState.CONFIGURED: "applied",
    KeyState.PENDING: "pending",
    KeyState.INVALID: "invalid",
    KeyState.FAILED: "failed",
    KeyState.RETRYING: "retrying",
}

FAST_RETRY = RetryPolicy(initial=0.05, maximum=0.5)

#: a round's reason that says the store was reset (restored, re-created, log emptied)
_RESET = re.compile(r"StoreReset|Truncated|Recreated|OutOfRange|store reset|cluster id", re.I)


def loop_if(name: str, *addrs: str, enabled: bool = True, **kw: Any) -> tuple[str, bytes]:
    """A loopback interface's key and value."""
    doc = {"name": name, "type": "SOFTWARE_LOOPBACK", "enabled": enabled,
           "ip_addresses": list(addrs), **kw}  # fmt: skip
    return IF + name, json.dumps(doc).encode()


def interfaces(n: int, start: int = 0, tag: str = "") -> dict[str, bytes]:
    """``n`` loopbacks ``lo<i>`` with one address each (``tag`` varies the MTU)."""
    mtu = 1500 + (sum(map(ord, tag)) % 500 if tag else 0)
    return dict(
        loop_if(f"lo{i}", f"10.{i // 250}.{i % 250}.1/32", mtu=mtu) for i in range(start, start + n)
    )


def render_interfaces(store: Mapping[str, bytes]) -> dict[str, Any]:
    """What the store asks VPP to hold, per interface name: (admin up, sorted addresses).
    Values the model would refuse are left out (they are INVALID, not desired)."""
    out: dict[str, Any] = {}
    for key, value in store.items():
        if not key.startswith(IF):
            continue
        try:
            doc = json.loads(value)
        except ValueError:
            continue
        if not isinstance(doc, dict) or doc.get("name") != key[len(IF) :]:
            continue
        out[doc["name"]] = (bool(doc.get("enabled")), sorted(doc.get("ip_addresses", [])))
    return out


def dataplane_interfaces(sim: Simulator) -> dict[str, Any]:
    """The owned (tagged) interfaces VPP holds, read back from the simulator."""
    return {
        i["tag"]: (bool(i["admin_up"]), sorted(i["addresses"]))
        for i in sim.dump_state()["interfaces"]
        if i["tag"]
    }


def sim_writes(sim: Simulator) -> int:
    """Non-noop VPP write ops since the simulator's counters were last reset."""
    return int(sim.counters()["changes"])


async def eventually(pred: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not pred():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


@dataclass
class Tap:
    """A passive plugin on the agent's whole key space: records what the orchestrator
    hands out (the NB stream as the agent consumed it)."""

    history: History
    source: str
    prefixes: Sequence[str] = (AGENT_PREFIX,)
    depends_on: Sequence[str] = ()
    name: str = "nb-tap"
    last: dict[str, int] = field(default_factory=dict)
    #: per key, every (revision, value) handed out (None: a delete)
    seen: dict[str, list[tuple[int, bytes | None]]] = field(default_factory=dict)
    sessions: int = 0

    def revision_of(self, key: str, value: bytes | None) -> int:
        """The latest revision at which ``key`` was handed out with ``value`` (the tap
        runs ahead of the plugins: the latest revision it saw may not be applied yet)."""
        for rev, v in reversed(self.seen.get(key, ())):
            if v == value:
                return rev
        return self.last.get(key, 0)

    async def resync(self, ev: ResyncEvent) -> None:
        self.sessions += 1
        for key, kv in sorted(ev.kvs.items(), key=lambda item: item[1].revision):
            self.last[key] = kv.revision
            self.seen.setdefault(key, []).append((kv.revision, kv.value))
            self.history.received(self.source, key, "put", kv.revision,
                                  extra={"snapshot": True, "session": self.sessions})  # fmt: skip

    async def change(self, ev: ChangeEvent) -> None:
        for ch in ev.changes:
            self.last[ch.key] = ch.revision
            self.seen.setdefault(ch.key, []).append((ch.revision, ch.value))
            op = "put" if ch.op is Op.PUT else "delete"
            self.history.received(ch.source or self.source, ch.key, op, ch.revision,
                                  extra={"session": self.sessions})  # fmt: skip


class Writer:
    """The test's writes to a store (anything with ``txn(puts, deletes) -> revision``),
    each recorded as ground truth at the revision the store acknowledged."""

    def __init__(self, store: Any, history: History) -> None:
        self.store = store
        self.history = history
        self.revision = 0
        self.acked: list[int] = []

    async def txn(self, puts: Mapping[str, bytes], deletes: Sequence[str] = ()) -> int:
        rev = int(await self.store.txn(dict(puts), list(deletes)))
        for key, value in puts.items():
            self.history.truth(key, "put", rev, value)
        for key in deletes:
            self.history.truth(key, "delete", rev)
        self.revision = max(self.revision, rev)
        self.acked.append(rev)
        return rev

    async def put(self, key: str, value: bytes) -> int:
        return await self.txn({key: value})

    async def delete(self, *keys: str) -> int:
        return await self.txn({}, list(keys))


def task_names(tasks: set[asyncio.Task[Any]]) -> list[str]:
    """The tasks as I9 names them: their coroutine's qualified name (the count of each)."""
    names = Counter(getattr(t.get_coro(), "__qualname__", repr(t.get_coro())) for t in tasks)
    return [f"{n} x{c}" if c > 1 else n for n, c in sorted(names.items())]


def agent_tasks() -> set[asyncio.Task[Any]]:
    """The loop's tasks but the network stand-in's: a ``TCPProxy`` pumps each connection
    in two tasks, and after a cut the Kafka clients may hold one more connection than
    before (a coordinator's, a leader's), which is the broker's business, not a leak."""
    return {t for t in asyncio.all_tasks() if not netproxy.is_proxy_task(t)}


def resources() -> dict[str, float]:
    """I9's samples of this process: threads and the agent's asyncio tasks. File
    descriptors and RSS are left out: the test's own sockets, proxies and allocations
    share the process (an agent process is where they mean something)."""
    return {
        "threads": float(threading.active_count()),
        "tasks": float(len(agent_tasks())),
    }


@dataclass
class Rig:
    """A running agent in the test's loop, and the history of the run."""

    history: History
    source: Any
    sim: Simulator
    client: VppClient
    orch: Orchestrator
    plugins: VppPlugins
    tap: Tap
    rounds: list[RoundStarted] = field(default_factory=list)
    finished: list[RoundFinished] = field(default_factory=list)
    #: the simulator's write count when the fault was injected
    writes_at_fault: int | None = None
    #: the numbers of the rounds the harness itself ran to check I13 (not relists)
    replay_rounds: set[int] = field(default_factory=set)
    #: resources when the first round finished: the agent running, watches open (I9)
    resources_at_start: dict[str, float] = field(default_factory=dict)
    #: the asyncio tasks alive then; I9 names what is new at the end
    tasks_at_start: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def name(self) -> str:
        return str(self.source.name)

    @property
    def relists(self) -> int:
        """Full relists after the start-up round."""
        return sum(1 for r in self.rounds if r.round > 1 and r.round not in self.replay_rounds)

    def applied(self) -> int:
        return self.orch.applied_revision(self.name)

    def in_sync(self) -> bool:
        return self.orch.status().in_sync

    def state(self, key: str) -> KeyState | None:
        st = self.plugins.states.get(key)
        return None if st is None else st.state

    def mark(self, name: str, **extra: Any) -> None:
        """A phase marker; ``fault.injected`` also notes the VPP write count, so the row
        reports the writes the fault cost."""
        if name == "fault.injected" and self.writes_at_fault is None:
            self.writes_at_fault = sim_writes(self.sim)

        self.history.mark(name, **extra)

    def sample(self) -> None:
        """One status sample now (the sampler takes one every 50 ms)."""
        st = self.orch.status()
        self.history.status(in_sync=st.in_sync, round_running=st.round_running,
                            applied_revision=self.applied())  # fmt: skip

    async def settle(self, revision: int, timeout: float = WAIT) -> None:
        """Applied through ``revision``, and in sync."""
        await eventually(
            lambda: self.applied() >= revision and self.in_sync(),
            f"the agent in sync at revision {revision} (applied {self.applied()}, "
            f"status {self.orch.status()})",
            timeout,
        )

    async def converged(self, store: Mapping[str, bytes], revision: int,
                        timeout: float = WAIT) -> None:  # fmt: skip
        """In sync at ``revision`` and VPP's owned interfaces are what ``store`` asks."""
        want = self.desired(store)
        await eventually(
            lambda: self.applied() >= revision and self.in_sync()
            and dataplane_interfaces(self.sim) == want,
            f"VPP holding the store at revision {revision}",
            timeout,
        )  # fmt: skip
        self.sample()
        self.history.mark("converged", revision=revision)

    def convergence_time(self) -> float | None:
        """Seconds from the last ``fault.healed`` (or ``t_conv.start``, for a fault that stays
        on) to the first time after it that VPP held
        the store and the agent was in sync at its revision (``converged``); the
        invariants' measure (the first in-sync status sample) when never marked."""
        starts = sorted(m.t for m in self.history.marks("fault.healed")
                        + self.history.marks("t_conv.start"))  # fmt: skip
        if not starts:
            return None
        after = [m.t for m in self.history.marks("converged") if m.t >= starts[-1]]
        return after[0] - starts[-1] if after else None

    def desired(self, store: Mapping[str, bytes]) -> dict[str, Any]:
        """``render_interfaces`` of the values the interfaces model takes (the model's own
        validation: a value it refuses is INVALID, not desired)."""
        plugin = next(p for p in self.plugins.plugins if p.name == "interfaces")
        taken = {}
        for key, value in store.items():
            if key.startswith(IF):
                try:
                    plugin.validate(key, value)
                except Exception:
                    continue
                taken[key] = value
        return render_interfaces(taken)

    def _final_keys(self) -> dict[str, tuple[str, str]]:
        return {s.key: (s.state.value, s.reason) for s in self.plugins.states
                if s.state is not KeyState.CONFIGURED}  # fmt: skip

    async def final(self, store: Mapping[str, bytes], revision: int,
                    noop_resync: bool = True) -> inv.Final:  # fmt: skip
        """The final dumps; with ``noop_resync`` a forced downstream resync is run and its
        VPP writes counted (I2)."""
        plan = await self.plugins.plan()
        writes_after = replayed = None
        if noop_resync:
            before = sim_writes(self.sim)
            await self.plugins.reapply()
            writes_after = sim_writes(self.sim) - before
            replayed = await self.replay_snapshot()
        return inv.Final(
            store=dict(store),
            store_revision=revision,
            in_sync=self.in_sync(),
            applied_revision=self.applied(),
            keys=self._final_keys(),
            plan=plan,
            desired=self.desired(store),
            dataplane=dataplane_interfaces(self.sim),
            violations=int(self.sim.counters()["violations"]),
            writes_after_resync=writes_after,
            writes_after_replay=replayed,
            resources=await self.resources_after(),
            resources_new=task_names(agent_tasks() - self.tasks_at_start),
        )

    async def resources_after(self, settle: float = 10.0) -> dict[str, tuple[float, float]]:
        """I9: (at the first round, now) per resource, now being once they are back within
        10 % of the start (a replaced connection's tasks wind down over a grace period), or
        after ``settle`` seconds if they never are."""
        start = self.resources_at_start
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settle
        while True:
            now = resources()
            if all(now[k] <= v * 1.1 + 1 for k, v in start.items()) or loop.time() > deadline:
                return {k: (v, now[k]) for k, v in start.items()}
            await asyncio.sleep(0.1)

    async def replay_snapshot(self) -> int | None:
        """I13: the same snapshot fed again (a round of the harness's own, not a relist of
        the row): the VPP writes it made, or None when the rig is not in sync to begin."""
        if not self.in_sync():
            return None
        before, finished = sim_writes(self.sim), len(self.finished)
        self.replay_rounds.add(self.orch.request_resync("harness: the same snapshot again (I13)"))
        await eventually(lambda: len(self.finished) > finished and self.in_sync(),
                         "the replay round", timeout=60)  # fmt: skip
        return sim_writes(self.sim) - before

    async def verify(
        self,
        store: Mapping[str, bytes],
        revision: int,
        expect: inv.Expect,
        record: Callable[[str, object], None] | None = None,
        only: Sequence[str] | None = None,
        sb_writes: int | None = None,
    ) -> inv.Report:
        """Check the invariants at the end of a row; measurements go to ``record``."""
        final = await self.final(store, revision)
        report = inv.check(self.history, final, expect, only=only)
        if record is not None:
            t = self.convergence_time()
            if t is None:
                t = inv.convergence_time(self.history, final)
            record("t_conv", None if t is None else round(t, 3))
            record("relists", self.relists)
            if sb_writes is None:
                sb_writes = sim_writes(self.sim) - (self.writes_at_fault or 0)
            record("sb_writes", sb_writes)
            record("invariants", "; ".join(str(v) for v in report.verdicts if not v.ok) or "ok")
            record("unchecked", " ".join(v.id for v in report.unchecked))
            record("void", report.void)
        report.raise_for_failures()
        return report


@asynccontextmanager
async def running(
    source: Any,
    sim: Simulator,
    state_dir: Path,
    history: History,
    *,
    client_opts: Mapping[str, Any] | None = None,
    **config: Any,
) -> AsyncIterator[Rig]:
    """The orchestrator and the plugins on ``source``, driving ``sim``, recorded into
    ``history``; ``config`` overrides ``ResyncConfig`` fields."""
    cfg = {"resync_timeout": 20.0, "backoff_initial": 0.1, "backoff_max": 0.5,
           "escalation": "retry", **config}  # fmt: skip
    orch = Orchestrator([source], ResyncConfig(**cfg), rng=random.Random(history.seed))
    assert sim.path is not None
    client = VppClient(sim.path, timeout=10, backoff_max=0.2,
                       **{"probe_interval": None, **(client_opts or {})})  # fmt: skip
    plugins = VppPlugins(client, LABEL, retry=FAST_RETRY, ack_timeout=5,
                         ledger_path=state_dir / "ledger.json")  # fmt: skip
    client.add_fault_listener(follow_vpp_faults(orch, plugins))
    tap = Tap(history, source.name)
    rig = Rig(history, source, sim, client, orch, plugins, tap)

    def on_event(ev: object) -> None:
        if isinstance(ev, RoundStarted):
            if any(_RESET.search(r) for r in ev.reasons):
                # the store's revisions may start again below what was applied (I6)
                history.mark("store.reset", reasons=list(ev.reasons))
            rig.rounds.append(ev)
            replay = ev.round in rig.replay_rounds
            history.mark("round.started", relist=ev.round > 1 and not replay,
                         round=ev.round, reasons=list(ev.reasons))  # fmt: skip
        elif isinstance(ev, RoundFinished):
            rig.finished.append(ev)
            if ev.ok and not rig.resources_at_start:
                rig.resources_at_start = resources()
                rig.tasks_at_start = agent_tasks()
            history.mark("round.finished", round=ev.round, ok=ev.ok, errors=dict(ev.errors))

    last_decision: dict[str, tuple[str, int]] = {}
    by_name = {p.name: p for p in plugins.plugins}

    def on_key(plugin: str, key: str, status: Any) -> None:
        # a state change is a decision about the key's value at the revision the tap saw
        # last; a new reason for the same state and revision is not a new decision
        value = by_name[plugin].values.get(key) if plugin in by_name else None
        if status is None:
            decision, rev = "removed", tap.revision_of(key, None)
        else:
            decision, rev = DECISION[status.state], tap.revision_of(key, value)
        if last_decision.get(key) == (decision, rev):
            return
        last_decision[key] = (decision, rev)
        reason = "" if status is None else status.reason
        history.decision(key, decision, reason, plugin=plugin, revision=rev)

    async def sample() -> None:
        while True:
            rig.sample()
            await asyncio.sleep(0.05)

    orch.add_listener(on_event)
    sampler: asyncio.Task[None] | None = None
    try:
        await client.connect()
        plugins.add_to(orch)
        for states in plugins.states.plugins().values():
            states.add_listener(on_key)
        orch.add_plugin(tap)
        if hasattr(source, "bind"):  # a push source reports per-key results

            def state_of(key: str) -> tuple[str, str] | None:
                st = plugins.states.get(key)
                return None if st is None else (st.state.value, st.reason)

            source.bind(lambda: orch.applied_revision(source.name), state_of)
        sampler = asyncio.create_task(sample())
        yield rig
    finally:
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        await orch.stop()
        await plugins.close()
        await client.close()


def seed_of(name: str) -> int:
    """A stable per-test seed (the history records it; a failure names it)."""
    return sum(ord(c) * (i + 1) for i, c in enumerate(name)) % 100_000
