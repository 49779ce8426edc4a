"""docs/faults.md rows from a real etcd through the real VPP plugins into the strict
simulator, injected with agent failpoints: F3 (compaction inside the list->watch window) and F1
(etcd killed while a round holds a snapshot it has not used yet)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from datasync.plugins import KeyState
from datasync.resync import RoundStarted
from datasync.testing import failpoints as fp
from datasync.transport.etcd import EtcdSource
from datasync.vpp.sim import Simulator
from tests.plugins.conftest import IF, Agent, bd, loop, route, running_agent

from .etcdserver import EtcdCluster
from .test_etcd_faults import put_retrying

pytestmark = pytest.mark.etcd

WAIT = 30.0  # safety net against hangs, not a timing goal


def reasons(agent: Agent) -> list[tuple[str, ...]]:
    got: list[tuple[str, ...]] = []
    agent.orch.add_listener(
        lambda ev: got.append(ev.reasons) if isinstance(ev, RoundStarted) else None
    )
    return got


def assert_vpp_is_the_store(agent: Agent, interfaces: set[str]) -> None:
    """I1 at the final revision: every key CONFIGURED, VPP holds exactly those interfaces."""
    bad = [
        (s.key, s.state, s.reason)
        for s in agent.plugins.states
        if s.state is not KeyState.CONFIGURED
    ]
    assert not bad, bad
    assert set(agent.tagged()) == interfaces
    assert agent.violations() == 0


async def test_f3_compaction_in_the_list_watch_window_one_relist(
    etcd1: EtcdCluster,
    make_source: Callable[..., EtcdSource],
    sim: Simulator,
    tmp_path: Path,
) -> None:
    """F3: ``resync.before_watch=pause``; the harness deletes an interface, adds one and
    compacts to the head, then releases the failpoint. The watch from R+1 is refused as
    compacted, the agent relists once (no livelock) and VPP ends as the store."""
    pub = make_source(etcd1.endpoints, name="pub")
    source = make_source(etcd1.endpoints)
    async with running_agent(source, sim, tmp_path) as agent:
        started = reasons(agent)
        await agent.put(loop("loop0", "10.0.0.1/24"), loop("loop1", "10.1.0.1/24"),
                        bd("bd1", "loop0", bvi="loop1"))  # fmt: skip
        fp.enable("resync.before_watch", "1*pause")
        await agent.orch.start()
        await fp.wait_hit("resync.before_watch")
        # the round has its snapshot at R; the watch from R+1 is not running yet
        await pub.delete(IF + "loop1")
        await pub.put(*loop("loop2", "10.2.0.1/24"))
        agent.revision = await pub.put(*bd("bd1", "loop0", "loop2"))
        await pub.compact(agent.revision)
        fp.release("resync.before_watch")
        await agent.settle(WAIT)
        assert len(started) == 2, started  # the start-up round and exactly one relist
        assert "CompactedError" in " ".join(started[1])
        assert_vpp_is_the_store(agent, {"loop0", "loop2"})
        assert source.stats["compacted"] == 1
        members = sim.dump_state()["bridge_domains"][0]["members"]
        assert len(members) == 2


async def test_f1_etcd_killed_while_the_snapshot_waits_nothing_deleted(
    etcd1: EtcdCluster,
    make_source: Callable[..., EtcdSource],
    sim: Simulator,
    tmp_path: Path,
) -> None:
    """F1, the variant a failpoint reaches: the agent converged; a relist has read its
    snapshot and pauses before using it (``resync.after_snapshot_page=pause``); etcd is
    killed (-9) and restarted on its data meanwhile, then the round goes on and its watch
    meets the restarted etcd. No interface the store holds is deleted from VPP, and VPP
    ends as the store. (etcd killed while the source pages its snapshot:
    tests/etcd/test_etcd_faults.py.)"""
    member = etcd1.members[0]
    source = make_source(etcd1.endpoints)
    async with running_agent(source, sim, tmp_path, backoff_initial=0.1) as agent:
        await agent.put(loop("loop0", "10.0.0.1/24"), loop("loop1", "10.1.0.1/24"),
                        route("20.0.0.0/8", "10.0.0.2", "loop0"))  # fmt: skip
        await agent.orch.start()
        await agent.settle(WAIT)
        deletes_before = sim.counters()["writes"]["interface"]["delete"]
        fp.enable("resync.after_snapshot_page", "1*pause")
        agent.orch.request_resync("test: a relist")
        await fp.wait_hit("resync.after_snapshot_page")
        await asyncio.to_thread(member.restart)  # kill -9, start on its data, healthy
        fp.release("resync.after_snapshot_page")
        agent.revision = await put_retrying(source, *loop("loop2", "10.2.0.1/24"))
        await agent.settle(WAIT)
        assert sim.counters()["writes"]["interface"]["delete"] == deletes_before  # 0 wrong
        assert_vpp_is_the_store(agent, {"loop0", "loop1", "loop2"})
