"""The test harness itself: an unhandled event-loop exception fails the test."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

INNER = """
import asyncio

async def test_callback_blows_up():
    asyncio.get_running_loop().call_soon(lambda: 1 / 0)
    await asyncio.sleep(0.01)

async def test_quiet():
    await asyncio.sleep(0)
"""


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_loop_exception_fails_the_test_that_caused_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    monkeypatch.setenv("DATASYNC_TEST_LOOP", loop)
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    # The culprit's call passes and its teardown errors; the quiet test is untouched.
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        ["ERROR test_inner.py::test_callback_blows_up - Failed: unhandled event-loop*"]
    )
    result.stdout.fnmatch_lines(["*ZeroDivisionError*"])


LEAKS = """
import asyncio
import gc
import os

import datasync
from datasync.api import Channel


async def test_leaks_a_helper_task():
    async def hang():
        await asyncio.get_running_loop().create_future()  # only this task holds it

    task = asyncio.ensure_future(hang())
    await asyncio.sleep(0)
    del task
    gc.collect()


async def test_leaks_a_package_task():
    task = asyncio.ensure_future(Channel().__anext__())
    await asyncio.sleep(0)
    del task
    gc.collect()


# As if the package made a task of a stdlib coroutine (e.g. ensure_future(event.wait())):
# a function whose code says it lives in the package.
_SPAWN = (
    "import asyncio\\n"
    "def spawn():\\n"
    "    return asyncio.ensure_future(asyncio.Event().wait())\\n"
)
_ns = {}
exec(compile(_SPAWN, os.path.join(os.path.dirname(datasync.__file__), "_spawn.py"), "exec"), _ns)


async def test_leaks_a_task_the_package_made():
    task = _ns["spawn"]()
    await asyncio.sleep(0)
    del task
    gc.collect()
"""


def test_leaked_pending_task_fails_only_when_it_runs_package_code(
    pytester: pytest.Pytester,
) -> None:
    """A pending task destroyed by the collector is reported when it happens, which may be
    during a later test: one the package made, or that runs package code, fails; a test
    helper's is a warning."""
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(test_leaks=LEAKS)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(["ERROR test_leaks.py::test_leaks_a_package_task - Failed*"])
    result.stdout.fnmatch_lines(["*Failed: *destroyed but it is pending*Channel.__anext__*"])
    result.stdout.fnmatch_lines(
        ["ERROR test_leaks.py::test_leaks_a_task_the_package_made - Failed*"]
    )
    result.stdout.fnmatch_lines(["*Failed: *destroyed but it is pending*[[]datasync]*Event.wait*"])
    result.stdout.fnmatch_lines(["*leaked pending task (not datasync code)*hang()*"])


# -- history and invariants (datasync.testing.history / .invariants) ----------------------

from datasync.testing import invariants as inv  # noqa: E402
from datasync.testing.history import History  # noqa: E402


def _converged_run() -> tuple[History, inv.Final]:
    h = History(seed=7)
    for rev, (key, value) in enumerate([("/a", b"1"), ("/b", b"2"), ("/a", b"3")], start=2):
        h.truth(key, "put", rev, value)
        h.received("etcd", key, "put", rev)
        h.decision(key, "applied", revision=rev, plugin="p")
        h.sb("create_loopback", retval=0, epoch=11)
    h.sb("sw_interface_dump", retval=None, epoch=11)
    h.status(in_sync=True, round_running=False, applied_revision=4)
    final = inv.Final(store={"/a": b"3", "/b": b"2"}, store_revision=4, in_sync=True,
                      applied_revision=4, plan=[], writes_after_resync=0)  # fmt: skip
    return h, final


def test_a_converged_run_passes_and_survives_a_round_trip(tmp_path: Path) -> None:
    h, final = _converged_run()
    loaded = History.load(h.save(tmp_path / "h.jsonl"))
    assert loaded.events == h.events  # retval 0 and None both survive
    report = inv.check(loaded, final)
    assert report.ok, str(report)
    assert report.seed == 7
    assert {v.id for v in report.unchecked} >= {"I7", "I9", "I13", "I15"}
    assert h.store_at() == {"/a": (b"3", 4), "/b": (b"2", 3)}
    assert h.store_at(2) == {"/a": (b"1", 2)}


def test_i9_names_what_grew() -> None:
    """A task count past its bound fails I9, and the verdict names the new tasks."""
    h, final = _converged_run()
    grown = replace(final, resources={"tasks": (17.0, 21.0), "threads": (3.0, 3.0)},
                    resources_new=["SourceFeed._watch", "Lost.wait x3"])  # fmt: skip
    verdict = next(v for v in inv.check(h, grown).verdicts if v.id == "I9")
    assert not verdict.ok
    assert verdict.detail == "tasks: 17 -> 21; new: SourceFeed._watch, Lost.wait x3"
    within = replace(grown, resources={"tasks": (17.0, 19.0)})
    assert next(v for v in inv.check(h, within).verdicts if v.id == "I9").ok


def test_checkers_name_what_broke() -> None:
    h, final = _converged_run()
    h.decision("/a", "applied", revision=4)  # the same revision again, same epoch
    h.decision("/a", "applied", revision=2)  # an older value after a newer one
    h.received("etcd", "/b", "put", 3)  # the same event twice
    h.status(in_sync=True, round_running=True, applied_revision=3)  # regressed, dishonest
    final.keys = {"/b": ("PENDING", "")}
    final.plan = [{"key": "/b", "op": "create"}]
    report = inv.check(h, final)
    failed = {v.id: v.detail for v in report.failed}
    assert set(failed) == {"I1", "I3", "I4", "I5", "I6", "I10", "I11", "I12"}, failed
    assert "/a: revision 2 applied after 4" in failed["I3"]
    assert "/b@3 twice" in failed["I12"]
    assert "applied_revision went 4 -> 3" in failed["I6"]
    with pytest.raises(inv.InvariantViolation, match="seed 7: I1 FAILED"):
        report.raise_for_failures()


def test_i6_forgives_a_lower_revision_after_an_agent_restart() -> None:
    t = iter(range(100))
    h = History(clock=lambda: float(next(t)))
    h.status(applied_revision=9)
    h.status(applied_revision=5)
    assert not inv.check(h, inv.Final(), only=["I6"]).ok
    h = History(clock=lambda: float(next(t)))
    h.status(applied_revision=9)
    h.mark("agent.started")  # a new process counts from its checkpoint
    h.status(applied_revision=5)
    assert inv.check(h, inv.Final(), only=["I6"]).ok


def test_a_fault_that_missed_its_phase_makes_the_run_void() -> None:
    h, final = _converged_run()
    h.mark("round.started")
    h.mark("round.finished")
    h.mark("fault.etcd_killed")  # after the round: missed
    expect = inv.Expect(fault="fault.etcd_killed", during="round")
    report = inv.check(h, final, expect, only=["I1", "I15"])
    assert report.void and not report.failed
    with pytest.raises(inv.VoidTest, match="did not hit while round was in progress"):
        report.raise_for_failures()
    h.mark("round.started")
    h.mark("fault.etcd_killed")
    assert inv.check(h, final, expect, only=["I15"]).ok


def test_terminal_states_are_not_retried_until_the_input_changes() -> None:
    h = History()
    h.decision("/k", "invalid", reason="bad json")
    h.decision("/k", "retrying", reason="again?")
    assert not inv.i14_retry_discipline(h, inv.Final(), inv.Expect()).ok
    h2 = History()
    h2.decision("/k", "invalid", reason="bad json")
    h2.received("etcd", "/k", "put", 9)
    h2.decision("/k", "applied", revision=9)
    assert inv.i14_retry_discipline(h2, inv.Final(), inv.Expect()).ok
    with pytest.raises(ValueError, match="decision 'done' for key /k"):
        h2.decision("/k", "done")


# -- recorders against real processes ------------------------------------------------------

import json  # noqa: E402
import tempfile  # noqa: E402

from datasync.testing.procs import AgentProcess, SimProcess, wait_for  # noqa: E402
from datasync.testing.recorders import AgentRecorder, VppWireRecorder  # noqa: E402

IF = "/vnf-agent/vpp1/config/vpp/v2/interfaces/"


def test_an_agent_process_is_recorded_from_its_http_api_and_the_vpp_wire(tmp_path: Path) -> None:
    h = History(seed=1)
    short = Path(tempfile.mkdtemp(prefix="dsh-", dir="/tmp"))
    with SimProcess.started(tmp_path / "sim") as sim, VppWireRecorder(sim.path, h) as wire:
        agent = AgentProcess(short / "data")
        agent.configure(f'[agent]\ntest_mode = true\n[vpp]\nconnect = "socket"\n'
                        f'socket = "{wire.path}"\n')  # fmt: skip
        try:
            with AgentRecorder(agent.http, h):
                agent.start().wait_in_sync()
                agent.put(IF + "loop1", json.dumps({"name": "loop1", "type": "SOFTWARE_LOOPBACK"}))
                agent.put(IF + "bad", "{not json")
                agent.wait_in_sync()
                wait_for(lambda: h.of("decision", key=IF + "bad"), what="the bad key's decision")
        finally:
            agent.close()
            _shutil.rmtree(short, ignore_errors=True)
        vpe_pid = sim.counters()["vpe_pid"]
    calls = h.of("sb")
    creates = [c for c in calls if c.op.startswith("create_loopback")]
    assert [(c.retval, c.epoch) for c in creates] == [(0, vpe_pid)]
    assert any(c.op == "sw_interface_dump" and c.retval is None for c in calls)
    assert [d.decision for d in h.of("decision", key=IF + "loop1")] == ["applied"]
    # test mode: /test/history gives what the plugins were handed, with source and
    # revision, and the revision each decision concerns
    (got,) = h.of("nb", key=IF + "loop1")
    assert (got.source, got.op) == ("local", "put") and got.revision >= 1
    assert h.of("decision", key=IF + "loop1")[0].revision == got.revision
    (bad,) = h.of("decision", key=IF + "bad")
    assert bad.decision == "invalid" and bad.reason
    assert h.marks("round.started") and h.marks("round.finished")
    samples = [s.extra for s in h.of("status")]
    assert samples[-1]["in_sync"] and samples[-1]["sources"]["local"] >= 2
    assert inv.check(h, inv.Final(), only=["I6", "I10", "I14"]).ok


# -- in-process recording and the store's ground truth ---------------------------------------

import shutil as _shutil  # noqa: E402

from datasync.resync import Orchestrator  # noqa: E402
from datasync.testing.recorders import (  # noqa: E402
    EtcdTruthWatcher,
    RecordingPlugin,
    record_orchestrator,
)
from datasync.transport.local import LocalStore  # noqa: E402
from tests.orchestrator_helpers import Recorder, eventually  # noqa: E402


async def test_an_in_process_orchestrator_is_recorded() -> None:
    h = History()
    store = LocalStore(poll_interval=0.02)
    orch = Orchestrator([store])
    record_orchestrator(orch, h)
    plugin = Recorder("p", ["/cfg/"])
    orch.add_plugin(RecordingPlugin(plugin, h))  # type: ignore[arg-type]
    try:
        await store.put("/cfg/a", b"1")
        await orch.start()
        await orch.wait_in_sync(10)
        rev = await store.put("/cfg/a", b"2")
        await eventually(lambda: plugin.state.get("/cfg/a") == b"2", "the change", 10)
    finally:
        await orch.stop()
        await store.close()
    (snap,) = [e for e in h.of("nb") if e.extra.get("snapshot")]
    assert (snap.source, snap.key, snap.revision) == ("local", "/cfg/a", 1)
    assert [(e.key, e.decision, e.revision) for e in h.of("decision")] == [
        ("/cfg/a", "applied", rev)
    ]
    assert h.marks("round.started") and h.of("status")[-1].extra["in_sync"]
    assert inv.check(h, inv.Final(), only=["I3", "I5", "I6", "I10", "I12"]).ok


@pytest.mark.skipif(not _shutil.which("etcd") and not __import__("os").environ.get("CI"),
                    reason="etcd is not installed")  # fmt: skip
def test_the_ground_truth_watcher_outlives_an_etcd_restart(tmp_path: Path) -> None:
    from datasync.testing.procs import EtcdCluster, etcdctl

    h = History()
    with EtcdCluster(1, root=tmp_path) as etcd, EtcdTruthWatcher(etcd.endpoints, h) as truth:
        etcdctl(etcd.endpoints, "put", "/a", "1")
        truth.wait_caught_up(2)
        etcd.members[0].restart()  # kill -9 by PID, same data dir
        etcdctl(etcd.endpoints, "put", "/b", "2")
        etcdctl(etcd.endpoints, "del", "/a")
        truth.wait_caught_up(4)
    assert [(e.key, e.op, e.revision) for e in h.of("truth")] == [
        ("/a", "put", 2), ("/b", "put", 3), ("/a", "delete", 4)
    ]  # fmt: skip
    assert h.store_at() == {"/b": (b"2", 3)}


def test_processes_are_paused_killed_and_restarted_by_pid(tmp_path: Path) -> None:
    short = Path(tempfile.mkdtemp(prefix="dsh-", dir="/tmp"))
    with SimProcess.started(tmp_path / "sim") as sim:
        agent = AgentProcess(short / "data")
        agent.configure(f'[vpp]\nconnect = "socket"\nsocket = "{sim.path}"\n')
        try:
            agent.start().wait_in_sync()
            agent.put(IF + "loop1", json.dumps({"name": "loop1", "type": "SOFTWARE_LOOPBACK"}))
            tags = lambda: {i["tag"] for i in sim.state()["interfaces"]}  # noqa: E731
            wait_for(lambda: "loop1" in tags(), what="loop1 in VPP")
            old_pid, old_vpe = sim.pid, sim.counters()["vpe_pid"]
            sim.restart()  # kill -9 of that PID, a new process on the same socket
            assert sim.pid != old_pid and sim.counters()["vpe_pid"] != old_vpe
            wait_for(lambda: "loop1" in tags(), what="loop1 reprogrammed after the crash")
            agent.pause()
            assert agent.get("/healthz", timeout=0.3) is None  # SIGSTOP: no answer
            agent.resume()
            assert agent.get("/healthz") == {"ok": True}
            assert agent.kill() == -9 and not agent.running
        finally:
            agent.close()
            _shutil.rmtree(short, ignore_errors=True)
