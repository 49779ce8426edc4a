"""The resync orchestrator against the real embedded store."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import pytest

from datasync.api import Change, ChangeEvent, Op, ResyncEvent, Snapshot, SourceState
from datasync.errors import (
    ClosedError,
    CompactedError,
    ConfigError,
    DependencyCycleError,
    DependencyFailedError,
    DuplicateNameError,
    EscalationError,
    InvalidKeyError,
    ResyncTimeoutError,
    SourceUnavailableError,
)
from datasync.resync import (
    Escalated,
    Orchestrator,
    PluginState,
    PluginStateChanged,
    ResyncConfig,
    RoundFinished,
    RoundStarted,
    SouthboundStateChanged,
    topological_levels,
)
from datasync.transport.local import LocalStore
from tests.orchestrator_helpers import Recorder as GatedRecorder

WAIT = 10.0  # safety net against hangs only


@dataclass
class Recorder:
    """A high-level plugin that records what it is asked to do."""

    name: str
    prefixes: Sequence[str]
    depends_on: Sequence[str] = ()
    log: list[tuple[str, str]] = field(default_factory=list)
    fail_resync: int = 0
    resync_delay: float = 0.0
    fail_change: int = 0
    resyncs: list[ResyncEvent] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    state: dict[str, bytes] = field(default_factory=dict)

    async def resync(self, ev: ResyncEvent) -> None:
        self.log.append(("resync-start", self.name))
        if self.resync_delay:
            await asyncio.sleep(self.resync_delay)
        if self.fail_resync:
            self.fail_resync -= 1
            self.log.append(("resync-fail", self.name))
            raise RuntimeError(f"{self.name} cannot resync")
        self.resyncs.append(ev)
        self.state = {k: kv.value for k, kv in ev.kvs.items()}
        self.log.append(("resync-done", self.name))

    async def change(self, ev: ChangeEvent) -> None:
        if self.fail_change:
            self.fail_change -= 1
            raise RuntimeError(f"{self.name} cannot apply {ev.changes[0].key}")
        for ch in ev.changes:
            self.changes.append(ch)
            if ch.op is Op.PUT:
                assert ch.value is not None
                self.state[ch.key] = ch.value
            else:
                self.state.pop(ch.key, None)


class Events:
    """Collects orchestrator events and waits for them."""

    def __init__(self, orch: Orchestrator) -> None:
        self.items: list[object] = []
        self._changed = asyncio.Event()
        orch.add_listener(self._add)

    def _add(self, ev: object) -> None:
        self.items.append(ev)
        self._changed.set()

    def rounds(self) -> list[RoundFinished]:
        return [e for e in self.items if isinstance(e, RoundFinished)]

    async def until(self, pred: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not pred():
                self._changed.clear()
                await self._changed.wait()


async def eventually(pred: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not pred():
            await asyncio.sleep(0.005)


class NoSleep:
    """Records backoff delays instead of sleeping them."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


@pytest.fixture
async def store() -> AsyncIterator[LocalStore]:
    s = LocalStore(poll_interval=0.02)
    yield s
    await s.close()


@pytest.fixture
async def orch_factory(store: LocalStore) -> AsyncIterator[Callable[..., Orchestrator]]:
    made: list[Orchestrator] = []

    def make(sources: Sequence[object] | None = None, **cfg: object) -> Orchestrator:
        sleep = cfg.pop("sleep", None)
        o = Orchestrator(
            sources or [store],  # type: ignore[arg-type]
            ResyncConfig(**cfg),  # type: ignore[arg-type]
            rng=random.Random(7),
            sleep=sleep,  # type: ignore[arg-type]
        )
        made.append(o)
        return o

    yield make
    for o in made:
        await o.stop()


# --- ordering ------------------------------------------------------------------------------


def test_levels_follow_dependencies() -> None:
    levels = topological_levels({"l3": ["if"], "l2": ["if"], "if": [], "acl": ["l2", "l3"]})
    assert levels == [["if"], ["l2", "l3"], ["acl"]]


def test_cycle_is_named() -> None:
    with pytest.raises(DependencyCycleError) as info:
        topological_levels({"a": ["b"], "b": ["c"], "c": ["a"], "d": []})
    assert info.value.cycle == ["a", "b", "c", "a"]
    assert "a -> b -> c -> a" in str(info.value)


def test_unknown_dependency_is_named() -> None:
    with pytest.raises(ConfigError, match="'l2' depends on unknown plugin 'ifs'"):
        topological_levels({"l2": ["ifs"]})


async def test_cycle_found_at_start_up(orch_factory: Callable[..., Orchestrator]) -> None:
    orch = orch_factory()
    orch.add_plugin(Recorder("a", ["/a/"], ["b"]))
    orch.add_plugin(Recorder("b", ["/b/"], ["a"]))
    with pytest.raises(DependencyCycleError, match="a -> b -> a"):
        await orch.start()


async def test_config_rejects_nonsense() -> None:
    with pytest.raises(ConfigError, match="resync_timeout"):
        ResyncConfig(resync_timeout=0)
    with pytest.raises(ConfigError, match="escalation"):
        ResyncConfig(escalation="panic")  # type: ignore[arg-type]


async def test_duplicate_and_bad_registrations(orch_factory: Callable[..., Orchestrator]) -> None:
    orch = orch_factory()
    orch.watch("x", ["/x/"])
    with pytest.raises(DuplicateNameError, match="'x'"):
        orch.watch("x", ["/y/"])
    with pytest.raises(InvalidKeyError, match="empty key"):
        orch.watch("y", [""])


async def test_a_str_where_prefixes_are_expected_is_an_error(
    store: LocalStore, orch_factory: Callable[..., Orchestrator]
) -> None:
    """``watch("p", "/a/")`` iterated would watch ``/``: every key, ``/b/secret`` included."""
    orch = orch_factory()
    with pytest.raises(InvalidKeyError, match=r"'/a/'.*prefixes must be a list.*single str"):
        orch.watch("p", "/a/")
    with pytest.raises(InvalidKeyError, match=r"prefixes must be a list"):
        orch.add_plugin(Recorder("q", "/a/"))
    assert orch.status().plugins == {}


# --- rounds --------------------------------------------------------------------------------


async def test_startup_resync_in_dependency_order(
    store: LocalStore, orch_factory: Callable[..., Orchestrator]
) -> None:
    await store.txn({"/if/a": b"1", "/if/b": b"2", "/bd/x": b"3", "/other/z": b"4"})
    log: list[tuple[str, str]] = []
    bd = Recorder("bd", ["/bd/"], ["if"], log=log)
    ifs = Recorder("if", ["/if/"], log=log, resync_delay=0.05)
    orch = orch_factory()
    orch.add_plugin(bd)
    orch.add_plugin(ifs)
    await orch.start()
    await orch.wait_in_sync(WAIT)
    assert log == [("resync-start", "if"), ("resync-done", "if"), ("resync-start", "bd"),
                   ("resync-done", "bd")]  # fmt: skip
    assert ifs.state == {"/if/a": b"1", "/if/b": b"2"}
    assert bd.state == {"/bd/x": b"3"}
    assert ifs.resyncs[0].revisions == {"local": 1}
    assert ifs.resyncs[0].kvs["/if/a"].revision == 1
    st = orch.status()
    assert st.in_sync and st.state is PluginState.IN_SYNC
    assert st.sources["local"].snapshot_revision == 1


async def test_one_level_runs_together_unless_configured(
    orch_factory: Callable[..., Orchestrator],
) -> None:
    for parallel, expected in ((True, ["start", "start"]), (False, ["start", "done"])):
        log: list[tuple[str, str]] = []
        orch = orch_factory(parallel=parallel)
        orch.add_plugin(Recorder("p1", ["/p1/"], log=log, resync_delay=0.05))
        orch.add_plugin(Recorder("p2", ["/p2/"], log=log, resync_delay=0.05))
        await orch.start()
        await orch.wait_in_sync(WAIT)
        assert [step.split("-")[1] for step, _ in log[:2]] == expected
        await orch.stop()


async def test_dependent_never_starts_after_failed_dependency(
    orch_factory: Callable[..., Orchestrator],
) -> None:
    sleep = NoSleep()
    log: list[tuple[str, str]] = []
    ifs = Recorder("if", ["/if/"], log=log, fail_resync=2)
    bd = Recorder("bd", ["/bd/"], ["if"], log=log)
    orch = orch_factory(sleep=sleep)
    events = Events(orch)
    orch.add_plugin(ifs)
    orch.add_plugin(bd)
    await orch.start()
    await orch.wait_in_sync(WAIT)
    rounds = events.rounds()
    assert [r.ok for r in rounds] == [False, False, True]
    assert "DependencyFailedError" not in rounds[0].errors["if"]
    assert "skipped: dependency if failed" in rounds[0].errors["bd"]
    # bd started only in the third round, after if finished.
    assert log.index(("resync-start", "bd")) > log.index(("resync-done", "if"))
    assert log.count(("resync-start", "bd")) == 1
    failed = [
        e for e in events.items if isinstance(e, PluginStateChanged) and e.new is PluginState.FAILED
    ]
    assert {e.plugin for e in failed} == {"if", "bd"}
    assert any("DependencyFailedError" in (e.error or "") for e in failed if e.plugin == "bd")


async def test_timeout_is_a_failure_and_late_done_is_counted(
    orch_factory: Callable[..., Orchestrator],
) -> None:
    sleep = NoSleep()
    orch = orch_factory(resync_timeout=0.05, sleep=sleep)
    events = Events(orch)
    reg = orch.watch("slow", ["/s/"])
    await orch.start()
    first = await anext(reg.resync_events)  # never acknowledged in time
    await events.until(lambda: len(events.rounds()) >= 1)
    assert not events.rounds()[0].ok
    assert "did not finish its resync within 0.05 s" in events.rounds()[0].errors["slow"]
    st = orch.status()
    assert not st.in_sync
    assert st.plugins["slow"].state is PluginState.FAILED
    assert "ResyncTimeoutError" in (st.plugins["slow"].error or "")
    first.done()  # late: counted, ignored
    first.done()
    assert orch.status().late_dones == 2
    second = await anext(reg.resync_events)
    second.done()
    second.done(RuntimeError("ignored: the first call wins"))
    await orch.wait_in_sync(WAIT)
    assert second.ack.error is None


async def test_failed_rounds_back_off_exponentially_with_jitter(
    orch_factory: Callable[..., Orchestrator],
) -> None:
    sleep = NoSleep()
    orch = orch_factory(
        sleep=sleep, backoff_initial=1.0, backoff_max=8.0, jitter=0.25, escalation="retry"
    )
    orch.add_plugin(Recorder("p", ["/p/"], fail_resync=6))
    await orch.start()
    await orch.wait_in_sync(WAIT)
    bases = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert len(sleep.delays) == 6
    for delay, base in zip(sleep.delays, bases, strict=True):
        assert base * 0.75 <= delay <= base
    assert len(set(sleep.delays)) > 1  # jitter actually varies


async def test_escalation_exits_with_restart_code(
    orch_factory: Callable[..., Orchestrator],
) -> None:
    orch = orch_factory(sleep=NoSleep(), escalate_after=3, exit_code=75)
    events = Events(orch)
    orch.add_plugin(Recorder("p", ["/p/"], fail_resync=100))
    await orch.start()
    with pytest.raises(EscalationError) as info:
        await asyncio.wait_for(orch.run_until_stopped(), WAIT)
    assert info.value.exit_code == 75
    assert [r.ok for r in events.rounds()] == [False, False, False]
    with pytest.raises(EscalationError):
        await orch.wait_in_sync(WAIT)


async def test_report_error_and_change_failure_start_new_rounds(
    store: LocalStore, orch_factory: Callable[..., Orchestrator]
) -> None:
    p = Recorder("p", ["/p/"], fail_change=1)
    orch = orch_factory(sleep=NoSleep())
    events = Events(orch)
    orch.add_plugin(p)
    await orch.start()
    await orch.wait_in_sync(WAIT)
    await store.put("/p/a", b"1")  # the change fails -> a new round resyncs it
    await events.until(lambda: len(events.rounds()) >= 2)
    await orch.wait_in_sync(WAIT)
    assert p.state == {"/p/a": b"1"}
    assert len(p.resyncs) == 2
    started = [e for e in events.items if isinstance(e, RoundStarted)]
    assert "cannot apply /p/a" in started[1].reasons[0]
    orch.report_error("p", RuntimeError("lost VPP"))
    assert orch.status().plugins["p"].state is PluginState.FAILED
    await events.until(lambda: len(events.rounds()) >= 3)
    await orch.wait_in_sync(WAIT)
    assert len(p.resyncs) == 3


@pytest.mark.parametrize(
    ("coalesce_above", "expected"),
    [
        # the default: each key changed during the round once, at its newest value
        (0, [("/p/b", Op.PUT, 3), ("/p/a", Op.DELETE, 4)]),
        # below a configured limit every change, in arrival order
        (100, [("/p/a", Op.PUT, 2), ("/p/b", Op.PUT, 3), ("/p/a", Op.DELETE, 4)]),
    ],
)
async def test_changes_during_resync_are_buffered_and_applied_after(
    store: LocalStore,
    orch_factory: Callable[..., Orchestrator],
    coalesce_above: int,
    expected: list[tuple[str, Op, int]],
) -> None:
    await store.put("/p/a", b"0")
    orch = orch_factory(buffer_coalesce_above=coalesce_above)
    reg = orch.watch("p", ["/p/"])
    await orch.start()
    ev = await anext(reg.resync_events)
    assert {k: kv.value for k, kv in ev.kvs.items()} == {"/p/a": b"0"}
    # While the plugin is still resyncing, the store moves on.
    await store.put("/p/a", b"1")
    await store.put("/p/b", b"2")
    await store.delete("/p/a")
    held = lambda: orch.buffer_stats()["local"]  # noqa: E731
    await eventually(lambda: held()["buffered"] + held()["coalesced"] == 3)
    assert len(reg.change_events) == 0  # held back until the round is done
    ev.done()
    got: list[tuple[str, Op, int]] = []
    async with asyncio.timeout(WAIT):
        while len(got) < len(expected):
            cev = await anext(reg.change_events)
            got += [(c.key, c.op, c.revision) for c in cev.changes]
            cev.done()
    assert got == expected
    await eventually(lambda: orch.applied_revision("local") == 4)


class Stuttering:
    """A test-only source wrapper that delivers every batch twice and replays old ones."""

    def __init__(self, inner: LocalStore) -> None:
        self.inner = inner
        self.name = inner.name

    def add_state_listener(self, cb: Callable[[str, SourceState, str], None]) -> None:
        pass  # always connected

    async def snapshot(self, prefixes: Sequence[str]) -> Snapshot:
        return await self.inner.snapshot(prefixes)

    async def watch(self, prefixes: Sequence[str], start: int) -> AsyncIterator[list[Change]]:
        seen: list[list[Change]] = []
        async for batch in self.inner.watch(prefixes, start):
            yield batch
            yield batch  # duplicate
            if seen:
                yield seen[0]  # time travel: an older revision after newer ones
            seen.append(batch)

    async def close(self) -> None:
        await self.inner.close()


async def test_duplicates_and_time_travel_are_dropped(
    store: LocalStore, orch_factory: Callable[..., Orchestrator]
) -> None:
    await store.put("/p/a", b"0")
    p = Recorder("p", ["/p/"])
    orch = orch_factory([Stuttering(store)])
    orch.add_plugin(p)
    await orch.start()
    await orch.wait_in_sync(WAIT)
    for i in range(1, 4):
        await store.put("/p/a", b"%d" % i)
    await eventually(lambda: p.state.get("/p/a") == b"3")
    await asyncio.sleep(0.1)
    assert [(c.value, c.revision) for c in p.changes] == [(b"1", 2), (b"2", 3), (b"3", 4)]
    assert p.state == {"/p/a": b"3"}


class Flaky:
    """A source whose snapshot fails while ``down`` is set."""

    def __init__(self, inner: LocalStore) -> None:
        self.inner = inner
        self.name = inner.name
        self.down = False

    def add_state_listener(self, cb: Callable[[str, SourceState, str], None]) -> None:
        pass  # its snapshot fails, its connection state never changes

    async def snapshot(self, prefixes: Sequence[str]) -> Snapshot:
        if self.down:
            raise SourceUnavailableError("store is down")
        return await self.inner.snapshot(prefixes)

    def watch(self, prefixes: Sequence[str], start: int) -> AsyncIterator[list[Change]]:
        return self.inner.watch(prefixes, start)

    async def close(self) -> None:
        await self.inner.close()


async def test_failed_snapshot_delivers_nothing(
    store: LocalStore, orch_factory: Callable[..., Orchestrator]
) -> None:
    await store.put("/p/a", b"1")
    flaky = Flaky(store)
    flaky.down = True
    sleep_calls = NoSleep()

    async def sleep(delay: float) -> None:
        await sleep_calls(delay)
        flaky.down = False  # the store comes back before the retry

    p = Recorder("p", ["/p/"])
    orch = orch_factory([flaky], sleep=sleep)
    events = Events(orch)
    orch.add_plugin(p)
    await orch.start()
    await orch.wait_in_sync(WAIT)
    first = events.rounds()[0]
    assert not first.ok and "store is down" in first.errors["source:local"]
    assert len(p.resyncs) == 1  # only the successful round reached the plugin
    assert p.state == {"/p/a": b"1"}


async def test_compaction_during_outage_triggers_a_fresh_snapshot(
    store: LocalStore, orch_factory: Callable[..., Orchestrator]
) -> None:
    p = Recorder("p", ["/p/"])
    orch = orch_factory()
    events = Events(orch)
    orch.add_plugin(p)
    await orch.start()
    await orch.wait_in_sync(WAIT)
    # Simulate a watch cut off and history compacted past it.
    feed = orch._feed("local")
    slot_task = feed.watch_task
    assert slot_task is not None
    slot_task.cancel()
    await store.put("/p/a", b"1")
    await store.put("/p/b", b"2")
    await store.delete("/p/a")
    store.compact(store.revision)
    feed.start_watch(["/p/"], 1)
    await events.until(lambda: len(events.rounds()) >= 2)
    await orch.wait_in_sync(WAIT)
    started = [e for e in events.items if isinstance(e, RoundStarted)]
    assert "CompactedError" in started[1].reasons[0]
    assert p.state == {"/p/b": b"2"}


async def test_closing_one_registration_leaves_others_alone(
    store: LocalStore, orch_factory: Callable[..., Orchestrator]
) -> None:
    orch = orch_factory()
    keep = Recorder("keep", ["/k/"])
    orch.add_plugin(keep)
    gone = orch.watch("gone", ["/g/"])
    await orch.start()
    ev = await anext(gone.resync_events)
    await gone.close()  # closed while the round waits on it: not a failure
    await orch.wait_in_sync(WAIT)
    assert ev.ack.is_done is False
    assert "gone" not in orch.status().plugins
    with pytest.raises(ClosedError):
        gone.register("/x/")
    await store.put("/k/1", b"1")
    await store.put("/g/1", b"1")
    await eventually(lambda: keep.state == {"/k/1": b"1"})
    orch.watch("gone", ["/g/"])  # the name is free again


async def test_register_prefix_resyncs_its_data(
    store: LocalStore, orch_factory: Callable[..., Orchestrator]
) -> None:
    await store.txn({"/a/1": b"1", "/b/1": b"2"})
    orch = orch_factory()
    reg = orch.watch("p", ["/a/"])
    await orch.start()
    ev = await anext(reg.resync_events)
    assert set(ev.kvs) == {"/a/1"}
    ev.done()
    reg.register("/b/")
    ev = await anext(reg.resync_events)
    assert set(ev.kvs) == {"/a/1", "/b/1"}
    ev.done()
    reg.unregister("/a/")
    ev = await anext(reg.resync_events)
    assert set(ev.kvs) == {"/b/1"}
    ev.done()
    await orch.wait_in_sync(WAIT)


async def test_health_is_the_worst_plugin_state(
    orch_factory: Callable[..., Orchestrator],
) -> None:
    release = asyncio.Event()
    backoffs: list[float] = []

    async def gate(delay: float) -> None:  # backoff that lasts until the test releases it
        backoffs.append(delay)
        await release.wait()

    orch = orch_factory(sleep=gate, escalation="retry")
    ok = orch.watch("ok", ["/ok/"])
    bad = orch.watch("bad", ["/bad/"])
    assert orch.status().state is PluginState.INIT
    await orch.start()
    ev_ok, ev_bad = await anext(ok.resync_events), await anext(bad.resync_events)
    assert orch.status().round_running and not orch.status().in_sync
    ev_ok.done()
    ev_bad.done(RuntimeError("boom"))
    await eventually(lambda: len(backoffs) == 1)
    st = orch.status()
    assert st.state is PluginState.FAILED and not st.in_sync
    assert st.plugins["bad"].error == "RuntimeError: boom"
    # ok finished, but its changes wait for a successful round: not in sync yet.
    assert st.plugins["ok"].state is PluginState.RESYNCING
    release.set()
    # The retry round succeeds for both: in sync again.
    (await anext(ok.resync_events)).done()
    (await anext(bad.resync_events)).done()
    await orch.wait_in_sync(WAIT)
    assert orch.status().failed_rounds == 1


async def test_precedence_between_sources(orch_factory: Callable[..., Orchestrator]) -> None:
    high, low = LocalStore(name="high"), LocalStore(name="low")
    await low.txn({"/p/shared": b"low", "/p/only-low": b"L"})
    await high.put("/p/shared", b"high")
    p = Recorder("p", ["/p/"])
    orch = orch_factory([high, low])
    orch.add_plugin(p)
    await orch.start()
    await orch.wait_in_sync(WAIT)
    assert p.state == {"/p/shared": b"high", "/p/only-low": b"L"}
    assert orch.conflicts() == {"/p/shared": ["high", "low"]}
    await low.put("/p/shared", b"low2")  # shadowed by high: plugins see nothing
    await high.delete("/p/shared")  # high lets go: low's value comes back, not a delete
    await eventually(lambda: p.state.get("/p/shared") == b"low2")
    await low.delete("/p/only-low")
    await eventually(lambda: "/p/only-low" not in p.state)
    assert all(not (c.key == "/p/shared" and c.op is Op.DELETE) for c in p.changes), (
        "a key another source asserts was deleted"
    )
    await high.close()
    await low.close()


async def test_change_timeout_reports_a_fault(
    store: LocalStore, orch_factory: Callable[..., Orchestrator]
) -> None:
    orch = orch_factory(change_timeout=0.05, sleep=NoSleep())
    events = Events(orch)
    reg = orch.watch("p", ["/p/"])
    await orch.start()
    (await anext(reg.resync_events)).done()
    await orch.wait_in_sync(WAIT)
    await store.put("/p/a", b"1")
    cev = await anext(reg.change_events)  # never acknowledged
    await events.until(lambda: any(isinstance(e, RoundStarted) and e.round == 2
                                   for e in events.items))  # fmt: skip
    assert isinstance(cev, ChangeEvent)
    started = [e for e in events.items if isinstance(e, RoundStarted)]
    assert "did not apply a change" in started[1].reasons[0]
    assert orch.applied_revision("local") == 0
    (await anext(reg.resync_events)).done()
    await orch.wait_in_sync(WAIT)
    cev.done()
    assert orch.status().late_dones == 1


def test_dependency_error_type_is_retriable() -> None:
    assert DependencyFailedError.retriable and ResyncTimeoutError.retriable


class Reporting(Flaky):
    """A source that reports its connection state, like the etcd and Kafka sources."""

    def __init__(self, inner: LocalStore) -> None:
        super().__init__(inner)
        self.listeners: list[Callable[[str, SourceState, str], None]] = []

    def add_state_listener(self, cb: Callable[[str, SourceState, str], None]) -> None:
        self.listeners.append(cb)

    def report(self, state: SourceState, reason: str) -> None:
        for cb in self.listeners:
            cb(self.name, state, reason)


async def test_stalled_source_is_not_in_sync(
    store: LocalStore, orch_factory: Callable[..., Orchestrator]
) -> None:
    src = Reporting(store)
    orch = orch_factory([src])
    orch.add_plugin(Recorder("p", ["/p/"]))
    await orch.start()
    await orch.wait_in_sync(WAIT)
    src.report(SourceState.STALLED, "no watch progress for 15 s")
    st = orch.status()
    assert not st.in_sync and st.state is PluginState.IN_SYNC
    assert st.sources["local"].state is SourceState.STALLED
    assert st.sources["local"].error == "no watch progress for 15 s"
    src.report(SourceState.CONNECTED, "watch resumed")
    await orch.wait_in_sync(WAIT)
    assert orch.status().rounds == 1  # a resumed watch needs no relist


async def test_silent_source_does_not_block_the_others(
    orch_factory: Callable[..., Orchestrator],
) -> None:
    main, side = LocalStore(name="main"), Flaky(LocalStore(name="side"))
    await main.put("/p/m", b"1")
    await side.inner.put("/p/s", b"2")
    release = asyncio.Event()
    waits: list[float] = []

    async def gate(delay: float) -> None:
        waits.append(delay)
        await release.wait()

    p = Recorder("p", ["/p/"])
    orch = orch_factory([main, side], sleep=gate)
    events = Events(orch)
    orch.add_plugin(p)
    await orch.start()
    await orch.wait_in_sync(WAIT)
    side.down = True
    await main.put("/p/m2", b"3")
    orch.request_resync("operator asked")
    await events.until(lambda: len(events.rounds()) >= 2)
    assert events.rounds()[1].ok  # main's plugins were not held up by side
    # side's keys stay: it is stale, not empty.
    assert p.state == {"/p/m": b"1", "/p/m2": b"3", "/p/s": b"2"}
    st = orch.status()
    assert not st.in_sync and st.sources["side"].state is SourceState.DISCONNECTED
    assert "store is down" in (st.sources["side"].error or "")
    await eventually(lambda: len(waits) == 1)  # a re-read of side is scheduled
    side.down = False
    release.set()
    await events.until(lambda: len(events.rounds()) >= 3)
    await orch.wait_in_sync(WAIT)
    assert orch.status().sources["side"].state is SourceState.CONNECTED
    await main.close()
    await side.close()


async def test_applied_revision_follows_acks_across_registrations(
    store: LocalStore, orch_factory: Callable[..., Orchestrator]
) -> None:
    orch = orch_factory()
    a, b = orch.watch("a", ["/a/"]), orch.watch("b", ["/b/"])
    await orch.start()
    (await anext(a.resync_events)).done()
    (await anext(b.resync_events)).done()
    await orch.wait_in_sync(WAIT)
    await store.put("/a/1", b"x")  # rev 1 -> a
    await store.put("/b/1", b"x")  # rev 2 -> b
    await store.put("/a/2", b"x")  # rev 3 -> a
    a1, a3 = await anext(a.change_events), await anext(a.change_events)
    b2 = await anext(b.change_events)
    assert (a1.revision, b2.revision, a3.revision) == (1, 2, 3)
    a1.done()
    a3.done()
    assert orch.applied_revision("local") == 1  # rev 2 (b) is still being applied
    b2.done()
    assert orch.applied_revision("local") == 3


# --- regressions found in review --------------------------------------------------------


async def test_backlog_of_old_changes_is_not_applied_after_a_newer_resync(
    store: LocalStore, orch_factory: Callable[..., Orchestrator]
) -> None:
    """A slow plugin's queued changes are superseded by the resync of a later round."""
    release = asyncio.Event()

    class Slow(Recorder):
        async def change(self, ev: ChangeEvent) -> None:
            await release.wait()
            await super().change(ev)

    p = Slow("p", ["/p/"])
    orch = orch_factory(change_timeout=5.0)
    events = Events(orch)
    orch.add_plugin(p)
    await orch.start()
    await orch.wait_in_sync(WAIT)
    for i in range(1, 6):
        await store.put("/p/a", b"%d" % i)  # revisions 1..5 queue up behind the slow one
    await store.delete("/p/a")  # revision 6
    await eventually(lambda: orch._feed("local").seen_revision == 6)
    orch.request_resync("operator asked")
    await events.until(lambda: any(isinstance(e, RoundStarted) and e.round == 2
                                   for e in events.items))  # fmt: skip
    release.set()  # the change in progress finishes; the queued ones are superseded
    await events.until(lambda: len(events.rounds()) >= 2)
    await orch.wait_in_sync(WAIT)
    assert p.resyncs[-1].revisions == {"local": 6}
    assert "/p/a" not in p.state
    assert [c.revision for c in p.changes] == [1]  # only the one already in progress


async def test_registering_during_a_round_waits_for_the_next_round(
    store: LocalStore, orch_factory: Callable[..., Orchestrator]
) -> None:
    await store.txn({"/a/1": b"1"})
    orch = orch_factory()
    a = orch.watch("a", ["/a/"])
    await orch.start()
    first = await anext(a.resync_events)
    late = orch.watch("late", ["/a/"])  # registers while round 1 runs
    await store.put("/a/2", b"2")  # buffered during round 1
    await eventually(lambda: len(orch._feed("local").buffer) == 1)
    first.done()
    # late gets no change before its own resync, which (round 2) holds everything.
    ev = await anext(late.resync_events)
    assert len(late.change_events) == 0
    assert {k: kv.value for k, kv in ev.kvs.items()} == {"/a/1": b"1", "/a/2": b"2"}
    ev.done()
    # a's change of round 1 was never taken: round 2's resync superseded it.
    assert len(a.change_events) == 0
    (await anext(a.resync_events)).done()
    await orch.wait_in_sync(WAIT)


async def test_closing_a_dependency_makes_dependents_wait_not_fail(
    store: LocalStore, orch_factory: Callable[..., Orchestrator]
) -> None:
    orch = orch_factory(sleep=NoSleep(), escalate_after=2)
    events = Events(orch)
    ifs = orch.add_plugin(Recorder("if", ["/if/"]))
    bd = Recorder("bd", ["/bd/"], ["if"])
    orch.add_plugin(bd)
    await orch.start()
    await orch.wait_in_sync(WAIT)
    await ifs.close()
    orch.request_resync("after close")
    await events.until(lambda: len(events.rounds()) >= 2)
    assert events.rounds()[1].ok
    st = orch.status()
    assert st.plugins["bd"].state is PluginState.INIT and not st.in_sync
    assert "waits for dependency 'if'" in (st.plugins["bd"].error or "")
    assert len(bd.resyncs) == 1  # not resynced without its dependency
    orch.add_plugin(Recorder("if", ["/if/"]))  # the dependency comes back
    await orch.wait_in_sync(WAIT)
    assert len(bd.resyncs) == 2


def test_the_package_exports_what_the_readme_example_imports() -> None:
    import datasync

    for name in datasync.__all__:
        assert getattr(datasync, name) is not None, name
    assert datasync.Orchestrator is Orchestrator and datasync.ResyncConfig is ResyncConfig
    assert datasync.LocalStore is LocalStore
    assert datasync.NameToIndex.__module__ == "datasync.idx"
    assert "AckFailedError" in datasync.__all__
    assert not {"RevisionError", "ResyncFailedError"} & set(dir(datasync))  # nothing raises them
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        datasync.Nope  # noqa: B018


def test_backoff_never_overflows() -> None:
    assert ResyncConfig(backoff_max=30.0, jitter=0.0).backoff.delay(5000) == 30.0
    with pytest.raises(ConfigError, match="backoff_multiplier"):
        ResyncConfig(backoff_multiplier=0.5)
    with pytest.raises(ConfigError, match="anti_entropy_interval"):
        ResyncConfig(anti_entropy_interval=-1)


async def test_anti_entropy_waits_with_the_injected_sleep(
    orch_factory: Callable[..., Orchestrator],
) -> None:
    waits: list[float] = []
    forever = asyncio.Event()

    async def sleep(delay: float) -> None:
        waits.append(delay)
        if len(waits) > 1:
            await forever.wait()  # the next period never ends here
        await asyncio.sleep(0)

    orch = orch_factory(sleep=sleep, anti_entropy_interval=3600.0)
    events = Events(orch)
    orch.add_plugin(Recorder("p", ["/p/"]))
    await orch.start()
    await events.until(lambda: len(events.rounds()) >= 2)
    assert waits[:2] == [3600.0, 3600.0]
    started = [e for e in events.items if isinstance(e, RoundStarted)]
    assert "periodic anti-entropy" in started[1].reasons
    await orch.wait_in_sync(WAIT)


async def test_stale_source_retries_back_off(orch_factory: Callable[..., Orchestrator]) -> None:
    main, side = LocalStore(name="main"), Flaky(LocalStore(name="side"))
    waits: list[float] = []

    async def record(delay: float) -> None:
        waits.append(delay)
        await asyncio.sleep(0)

    orch = orch_factory([main, side], sleep=record, jitter=0.0, backoff_initial=1.0)
    orch.add_plugin(Recorder("p", ["/p/"]))
    await orch.start()
    await orch.wait_in_sync(WAIT)
    side.down = True
    orch.request_resync("go")
    await eventually(lambda: len(waits) >= 4)
    assert waits[:4] == [1.0, 2.0, 4.0, 8.0]
    await main.close()
    await side.close()


async def test_closed_registration_does_not_hold_back_the_watermark(
    store: LocalStore, orch_factory: Callable[..., Orchestrator]
) -> None:
    orch = orch_factory()
    keep, gone = orch.watch("keep", ["/p/"]), orch.watch("gone", ["/p/"])
    await orch.start()
    (await anext(keep.resync_events)).done()
    (await anext(gone.resync_events)).done()
    await orch.wait_in_sync(WAIT)
    await store.put("/p/a", b"1")
    (await anext(keep.change_events)).done()
    await eventually(lambda: len(gone.change_events) == 1)
    assert orch.applied_revision("local") == 0  # gone has not acknowledged
    await gone.close()
    assert orch.applied_revision("local") == 1


async def test_expired_acks_do_not_stall_the_next_round(
    store: LocalStore, orch_factory: Callable[..., Orchestrator]
) -> None:
    orch = orch_factory(change_timeout=3600.0)
    reg = orch.watch("p", ["/p/"])
    await orch.start()
    (await anext(reg.resync_events)).done()
    await orch.wait_in_sync(WAIT)
    await store.put("/p/a", b"1")
    cev = await anext(reg.change_events)
    cev.ack.expire()  # as the change timeout does
    await orch._fanout.quiesce(orch._feeds)  # returns at once instead of waiting an hour
    assert cev.superseded


async def test_stop_is_honest(orch_factory: Callable[..., Orchestrator]) -> None:
    orch = orch_factory()
    orch.watch("p", ["/p/"])  # never acknowledges
    await orch.start()
    waiter = asyncio.ensure_future(orch.wait_in_sync())
    await asyncio.sleep(0.01)
    await orch.stop()
    with pytest.raises(ClosedError):
        await asyncio.wait_for(waiter, WAIT)
    assert not orch.status().in_sync


async def test_failed_change_holds_the_watermark(
    store: LocalStore, orch_factory: Callable[..., Orchestrator]
) -> None:
    release = asyncio.Event()

    async def gate(delay: float) -> None:
        await release.wait()

    orch = orch_factory(sleep=gate)
    reg = orch.watch("p", ["/p/"])
    await orch.start()
    (await anext(reg.resync_events)).done()
    await orch.wait_in_sync(WAIT)
    await store.put("/p/a", b"1")
    await store.put("/p/b", b"2")
    (await anext(reg.change_events)).done(RuntimeError("vpp said no"))
    assert orch.applied_revision("local") == 0  # revision 1 failed: not applied
    release.set()


async def test_round_without_watchers_reads_no_source(
    orch_factory: Callable[..., Orchestrator],
) -> None:
    class Untouchable(Flaky):
        async def snapshot(self, prefixes: Sequence[str]) -> Snapshot:
            raise AssertionError("no prefix is watched: nothing to read")

    orch = orch_factory([Untouchable(LocalStore())])
    events = Events(orch)
    await orch.start()
    await events.until(lambda: len(events.rounds()) == 1)
    assert events.rounds()[0].ok


async def test_a_cancellation_escaping_a_source_is_a_failed_watch(
    store: LocalStore, orch_factory: Callable[..., Orchestrator]
) -> None:
    class Leaky(Flaky):
        armed = True

        async def watch(self, prefixes: Sequence[str], start: int) -> AsyncIterator[list[Change]]:
            if self.armed:
                self.armed = False
                raise asyncio.CancelledError  # e.g. a gRPC channel closed under the stream
            async for batch in self.inner.watch(prefixes, start):
                yield batch

    p = Recorder("p", ["/p/"])
    orch = orch_factory([Leaky(store)])
    events = Events(orch)
    orch.add_plugin(p)
    await orch.start()
    await events.until(lambda: len(events.rounds()) >= 2)
    started = [e for e in events.items if isinstance(e, RoundStarted)]
    assert "watch cancelled" in started[1].reasons[0]
    await orch.wait_in_sync(WAIT)
    await store.put("/p/a", b"1")
    await eventually(lambda: p.state == {"/p/a": b"1"})


async def test_a_watch_our_side_gave_up_on_is_closed_at_once(
    store: LocalStore, orch_factory: Callable[..., Orchestrator]
) -> None:
    """A batch the orchestrator cannot take (here not a list of changes) fails the watch;
    the source's stream is closed then, before the next round's snapshot, not left to the
    garbage collector: this source, like one that closes its open streams on close(), keeps
    a reference to each, so the collector would never release it."""
    log: list[str] = []

    class Garbled(Flaky):
        armed = True
        streams: list[AsyncIterator[list[Change]]] = []

        async def snapshot(self, prefixes: Sequence[str]) -> Snapshot:
            log.append("snapshot")
            return await self.inner.snapshot(prefixes)

        def watch(self, prefixes: Sequence[str], start: int) -> AsyncIterator[list[Change]]:
            stream = self._stream(prefixes, start)
            self.streams.append(stream)
            return stream

        async def _stream(self, prefixes: Sequence[str], start: int) -> AsyncIterator[list[Change]]:
            try:
                if self.armed:
                    self.armed = False
                    yield [object()]  # type: ignore[list-item]
                async for batch in self.inner.watch(prefixes, start):
                    yield batch
            finally:
                log.append("watch closed")

    p = Recorder("p", ["/p/"])
    orch = orch_factory([Garbled(store)])
    events = Events(orch)
    orch.add_plugin(p)
    await orch.start()
    await events.until(lambda: len(events.rounds()) >= 2)
    assert log[:3] == ["snapshot", "watch closed", "snapshot"]
    await orch.wait_in_sync(WAIT)
    await store.put("/p/a", b"1")
    await eventually(lambda: p.state == {"/p/a": b"1"})


async def test_a_southbound_down_is_not_in_sync_and_not_a_failed_round(
    store: LocalStore, orch_factory: Callable[..., Orchestrator]
) -> None:
    """A dataplane connection reported down makes the agent not in sync, with the reason in
    status; it fails no round and no plugin (no backoff, no escalation). Reported up again,
    the agent is in sync once no round is pending."""
    p = Recorder("p", ["/p/"])
    orch = orch_factory()
    events = Events(orch)
    orch.add_plugin(p)
    await orch.start()
    await orch.wait_in_sync(WAIT)
    orch.set_southbound("vpp", False, "VPP disconnected")
    orch.set_southbound("vpp", False, "VPP disconnected")  # repeated: one event
    st = orch.status()
    assert not st.in_sync and st.state is PluginState.IN_SYNC
    assert not st.southbound["vpp"].up and st.southbound["vpp"].reason == "VPP disconnected"
    with pytest.raises(TimeoutError):
        await orch.wait_in_sync(0.05)
    waiter = asyncio.ensure_future(orch.wait_in_sync(WAIT))
    await asyncio.sleep(0)
    orch.set_southbound("vpp", True)
    await waiter
    assert orch.status().in_sync and orch.status().failed_rounds == 0
    changes = [e for e in events.items if isinstance(e, SouthboundStateChanged)]
    assert changes == [
        SouthboundStateChanged("vpp", False, "VPP disconnected"),
        SouthboundStateChanged("vpp", True, None),
    ]
    assert len(events.rounds()) == 1  # the start-up round only


async def test_a_watch_that_fails_when_called_is_a_failed_watch(
    store: LocalStore, orch_factory: Callable[..., Orchestrator]
) -> None:
    """``source.watch()`` may raise before it returns a stream (a closed store, say): that
    is a failed watch like any other, never a silently dead one."""

    class Refusing(Flaky):
        armed = True

        def watch(self, prefixes: Sequence[str], start: int) -> AsyncIterator[list[Change]]:
            if self.armed:
                self.armed = False
                raise SourceUnavailableError("store closed under us")
            return self.inner.watch(prefixes, start)

    p = Recorder("p", ["/p/"])
    orch = orch_factory([Refusing(store)])
    events = Events(orch)
    orch.add_plugin(p)
    await orch.start()
    await events.until(lambda: len(events.rounds()) >= 2)
    started = [e for e in events.items if isinstance(e, RoundStarted)]
    assert "store closed under us" in started[1].reasons[0]
    await orch.wait_in_sync(WAIT)
    await store.put("/p/a", b"1")
    await eventually(lambda: p.state == {"/p/a": b"1"})


class _Stream:
    """A watch stream that is not a generator: its first batch fails, and its aclose()
    hangs or raises (a close handshake with a peer that is gone)."""

    def __init__(self, inner: AsyncIterator[list[Change]], fail: bool, close: str) -> None:
        self.inner, self.fail, self.close = inner, fail, close

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> list[Change]:
        batch = await self.inner.__anext__()
        if self.fail:
            raise CompactedError("history compacted")
        return batch

    async def aclose(self) -> None:
        await self.inner.aclose()  # type: ignore[attr-defined]
        if self.close == "hangs":
            await asyncio.Event().wait()
        raise ConnectionResetError("cancel-watch request failed")


@pytest.mark.parametrize("close", ["hangs", "raises"])
async def test_a_stream_that_will_not_close_delays_neither_the_report_nor_stop(
    store: LocalStore, orch_factory: Callable[..., Orchestrator], close: str
) -> None:
    calls: list[int] = []

    class Closing(Flaky):
        def watch(self, prefixes: Sequence[str], start: int) -> AsyncIterator[list[Change]]:
            calls.append(start)
            return _Stream(self.inner.watch(prefixes, start), len(calls) == 1, close)

    p = Recorder("p", ["/p/"])
    orch = orch_factory([Closing(store)])
    events = Events(orch)
    orch.add_plugin(p)
    await orch.start()
    await orch.wait_in_sync(WAIT)
    await store.put("/p/a", b"1")  # the first stream fails on it: a relist brings it
    await events.until(lambda: len(events.rounds()) >= 2)
    started = [e for e in events.items if isinstance(e, RoundStarted)]
    assert "CompactedError" in started[1].reasons[0]
    await orch.wait_in_sync(WAIT)
    assert p.state == {"/p/a": b"1"}
    await store.put("/p/b", b"2")
    await eventually(lambda: p.state.get("/p/b") == b"2")
    assert len(events.rounds()) == 2  # a close that fails starts no round of its own
    async with asyncio.timeout(WAIT):
        await orch.stop()


async def test_rounds_wait_for_a_southbound_that_is_down_and_never_escalate(
    store: LocalStore, orch_factory: Callable[..., Orchestrator]
) -> None:
    """While the dataplane connection is down, rounds are held (nothing can be applied),
    and a round that fails because it went down mid-way is not backed off from or counted
    towards escalation: the agent must not restart itself over a VPP outage."""
    sleeps = NoSleep()
    state = {"up": True}

    class Dataplane(Recorder):
        async def resync(self, ev: ResyncEvent) -> None:
            if not state["up"]:
                raise ConnectionError("VPP is gone")
            await super().resync(ev)

    p = Dataplane("p", ["/p/"])
    orch = orch_factory(escalate_after=2, sleep=sleeps)
    events = Events(orch)
    orch.add_plugin(p)
    await orch.start()
    await orch.wait_in_sync(WAIT)

    # Down mid-round: the plugin's call fails and the connection is reported down.
    state["up"] = False

    def vpp_lost(_ev: object) -> None:
        if isinstance(_ev, RoundStarted) and _ev.round == 2:
            orch.set_southbound("vpp", False, "VPP disconnected")

    orch.add_listener(vpp_lost)
    orch.request_resync("manual")
    await events.until(lambda: len(events.rounds()) >= 2)
    assert not events.rounds()[1].ok
    for i in range(5):  # more requests meanwhile: held, not run
        orch.report_error("p", ConnectionError(f"change {i} failed"))
    await asyncio.sleep(0.05)
    assert len(events.rounds()) == 2 and sleeps.delays == []
    assert not orch.status().in_sync
    state["up"] = True
    orch.set_southbound("vpp", True)
    await orch.wait_in_sync(WAIT)
    assert len(events.rounds()) == 3 and events.rounds()[2].ok
    assert not any(isinstance(e, Escalated) for e in events.items)
    assert sleeps.delays == []


async def test_request_resync_names_the_round_that_carries_it(
    orch_factory: Callable[..., Orchestrator],
) -> None:
    """Requests made while a round runs go to the next one, coalesced: each is told that
    round's number, which is the ``round`` of the RoundStarted that lists its reason."""
    gate = asyncio.Event()
    p = GatedRecorder("p", ["/p/"], gate=gate)
    orch = orch_factory()
    events = Events(orch)
    orch.add_plugin(p)
    await orch.start()
    await p.entered.wait()  # round 1 (start-up) is running, held in the plugin
    assert orch.request_resync("first") == 2
    assert orch.request_resync("second") == 2
    gate.set()
    await events.until(lambda: len(events.rounds()) >= 2)
    await orch.wait_in_sync(WAIT)
    started = {e.round: e.reasons for e in events.items if isinstance(e, RoundStarted)}
    assert started[2] == ("first", "second")
    assert orch.request_resync("third") == 3
    await events.until(lambda: len(events.rounds()) >= 3)
    started = {e.round: e.reasons for e in events.items if isinstance(e, RoundStarted)}
    assert started[3] == ("third",)
