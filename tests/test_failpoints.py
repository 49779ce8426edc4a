"""Agent failpoints: the spec, the actions, and the points wired into the orchestrator."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from datasync.errors import SourceUnavailableError
from datasync.resync import Orchestrator, ResyncConfig
from datasync.testing import failpoints as fp
from datasync.transport.local import LocalStore
from tests.orchestrator_helpers import Recorder, Rounds, eventually

WAIT = 10.0


def test_off_by_default_and_one_flag() -> None:
    assert fp.ENABLED is False
    fp.enable("resync.started", "sleep(1)")
    assert fp.ENABLED is True
    fp.disable("resync.started")
    assert fp.ENABLED is False


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("resync.strated=pause", "unknown failpoint 'resync.strated'"),
        ("plugin.interfaces.aply=pause", "unknown failpoint"),
        ("resync.started", "expected name=action"),
        ("resync.started=crash", "expected"),
        ("resync.started=sleep(-1)", "milliseconds"),
        ("resync.started=sleep(x)", "milliseconds"),
        ("resync.started=exit(256)", "exit code"),
        ("resync.started=raise(NoSuchError)", "not an exception"),
        ("resync.started=raise(print)", "not an exception"),
        ("resync.started=pause(3)", "no argument"),
        ("resync.started=exit(1)@0", "counts hits from 1"),
    ],
)
def test_a_bad_spec_names_the_item_and_changes_nothing(spec: str, match: str) -> None:
    fp.enable("resync.before_watch", "pause")
    with pytest.raises(ValueError, match=match):
        fp.configure(f"sb.before_call=sleep(1);{spec}")
    assert fp.ENABLED and fp._points.keys() == {"resync.before_watch"}


async def test_actions() -> None:
    fp.configure(
        "plugin.interfaces.apply=2*raise(RuntimeError);"
        " plugin.routes.resync = raise(SourceUnavailableError: gone) ;"
        "sb.before_call=sleep(1)@3"
    )
    for _ in range(2):
        with pytest.raises(RuntimeError, match=r"failpoint plugin\.interfaces\.apply"):
            await fp.hit("plugin.interfaces.apply")
    await fp.hit("plugin.interfaces.apply")  # fired twice: off now
    assert fp.hits("plugin.interfaces.apply") == 2
    with pytest.raises(SourceUnavailableError, match="gone"):
        await fp.hit("plugin.routes.resync")
    for _ in range(4):
        await fp.hit("sb.before_call")
    assert fp.hits("sb.before_call") == 2  # the 3rd and 4th fired
    fp.configure("")
    assert not fp.ENABLED


async def test_pause_until_released() -> None:
    fp.enable("resync.before_watch", "1*pause")
    paused = asyncio.ensure_future(fp.hit("resync.before_watch"))
    await fp.wait_hit("resync.before_watch")
    assert not paused.done()
    fp.release("resync.before_watch")
    async with asyncio.timeout(WAIT):
        await paused
    await fp.hit("resync.before_watch")  # 1*: off after one hit


def test_sync_points_raise_and_ignore_pause() -> None:
    fp.enable("checkpoint.before_commit_rev", "raise(ValueError)")
    with pytest.raises(ValueError, match=r"failpoint checkpoint\.before_commit_rev"):
        fp.hit_sync("checkpoint.before_commit_rev")
    fp.enable("checkpoint.before_commit_rev", "pause")
    fp.hit_sync("checkpoint.before_commit_rev")  # cannot wait here: logged, goes on


def test_environment_and_exit() -> None:
    """An agent process takes its failpoints from DATASYNC_FAILPOINTS; exit is a crash."""
    code = (
        "import asyncio\n"
        "from datasync.testing import failpoints as fp\n"
        "assert fp.ENABLED\n"
        "asyncio.run(fp.hit('resync.started'))\n"
        "print('not reached')\n"
    )
    env = {**os.environ, fp.ENV: "resync.started=exit(137)"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 137
    assert "not reached" not in out.stdout
    assert "failpoint resync.started: exit(137)" in out.stderr
    env[fp.ENV] = "resync.started=explode"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1 and "DATASYNC_FAILPOINTS: resync.started='explode'" in out.stderr


# --- wired into the orchestrator -------------------------------------------------------------


@pytest.fixture
async def store() -> AsyncIterator[LocalStore]:
    s = LocalStore(poll_interval=0.02)
    yield s
    await s.close()


@pytest.fixture
async def orch(store: LocalStore) -> AsyncIterator[Orchestrator]:
    o = Orchestrator([store], ResyncConfig(backoff_initial=0.01, jitter=0), rng=random.Random(7))
    yield o
    await o.stop()


async def test_a_raise_at_round_start_fails_the_round_then_it_recovers(
    store: LocalStore, orch: Orchestrator
) -> None:
    await store.put("/a/1", b"1")
    fp.enable("resync.started", "1*raise(RuntimeError)")
    plugin = Recorder("a", ["/a/"])
    orch.add_plugin(plugin)
    rounds = Rounds(orch)
    await orch.start()
    await orch.wait_in_sync(timeout=WAIT)
    assert [r.ok for r in rounds.finished] == [False, True]
    assert "failpoint resync.started" in str(rounds.finished[0].errors)
    assert plugin.state == {"/a/1": b"1"}
    assert len(plugin.resyncs) == 1  # the failed round reached no plugin


async def test_a_raise_after_the_snapshot_aborts_the_round_before_any_plugin(
    store: LocalStore, orch: Orchestrator
) -> None:
    await store.put("/a/1", b"1")
    fp.enable("resync.after_snapshot_page", "1*raise(SourceUnavailableError: cut)")
    plugin = Recorder("a", ["/a/"])
    orch.add_plugin(plugin)
    rounds = Rounds(orch)
    await orch.start()
    await orch.wait_in_sync(timeout=WAIT)
    assert [r.ok for r in rounds.finished] == [False, True]
    assert "cut" in str(rounds.finished[0].errors)
    assert len(plugin.resyncs) == 1


async def test_a_write_while_paused_before_the_watch_is_not_lost(
    store: LocalStore, orch: Orchestrator
) -> None:
    """F3's window: the snapshot is read at R, the watch is not running yet."""
    await store.put("/a/1", b"1")
    fp.enable("resync.before_watch", "1*pause")
    plugin = Recorder("a", ["/a/"])
    orch.add_plugin(plugin)
    await orch.start()
    await fp.wait_hit("resync.before_watch")
    await store.put("/a/2", b"2")  # after R, before the watch from R+1
    fp.release("resync.before_watch")
    await orch.wait_in_sync(timeout=WAIT)
    await eventually(lambda: plugin.state.get("/a/2") == b"2", "the write in the window", WAIT)
    assert [kv.key for kv in plugin.resyncs[0].kvs.values()] == ["/a/1"]
    assert [c.key for c in plugin.changes] == ["/a/2"]


async def test_the_checkpoint_point_fires_as_the_applied_revision_advances(
    store: LocalStore, orch: Orchestrator
) -> None:
    plugin = Recorder("a", ["/a/"])
    orch.add_plugin(plugin)
    await orch.start()
    await orch.wait_in_sync(timeout=WAIT)
    fp.enable("checkpoint.before_commit_rev", "sleep(0)")
    rev = await store.put("/a/1", b"1")
    await eventually(lambda: orch.applied_revision("local") >= rev, "applied", WAIT)
    assert fp.hits("checkpoint.before_commit_rev") >= 1
