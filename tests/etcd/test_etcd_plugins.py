"""The VPP plugins from a real etcd: convergence, a live change, a second resync that
writes nothing, and a VPP restart, through the real VppClient into the strict simulator."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from datasync.plugins import KeyState
from datasync.transport.etcd import EtcdSource
from datasync.vpp.sim import Simulator
from tests.plugins.conftest import IF, bd, loop, route, running_agent, vrf
from tests.vpp.helpers import eventually

from .etcdserver import EtcdCluster

pytestmark = pytest.mark.etcd


async def test_plugins_converge_from_etcd(
    etcd1: EtcdCluster, make_source: Callable[..., EtcdSource], tmp_path: Path
) -> None:
    sock_dir = tempfile.mkdtemp(prefix="dsetcdp-", dir="/tmp")
    sim = Simulator(seed=1, strict=True)
    await sim.start(os.path.join(sock_dir, "api.sock"))
    source = make_source(etcd1.endpoints)
    try:
        async with running_agent(source, sim, tmp_path) as agent:
            await agent.put(
                vrf(3),
                loop("loop0", "10.0.0.1/24"),
                loop("loop1", "10.1.0.1/24", vrf=3),
                bd("bd1", "loop0", "loop1"),
                route("20.0.0.0/8", gw="10.0.0.2", iface="loop0"),
            )
            await agent.orch.start()
            await agent.settle(20)
            assert [s for s in agent.plugins.states if s.state is not KeyState.CONFIGURED] == []
            assert set(agent.tagged()) == {"loop0", "loop1"}
            await agent.put(loop("loop2", "10.2.0.1/24"), bd("bd1", "loop0", "loop1", "loop2"))
            await agent.settle(20)
            assert "loop2" in agent.tagged()
            before = agent.writes()
            agent.orch.request_resync("test: nothing changed")
            await agent.settle(20)
            assert agent.writes() == before
            rounds = agent.orch.status().rounds
            sim.restart()
            await eventually(lambda: agent.orch.status().rounds > rounds, 20)
            await agent.settle(20)
            assert set(agent.tagged()) == {"loop0", "loop1", "loop2"}
            assert agent.state(IF + "loop1") is KeyState.CONFIGURED
            assert agent.violations() == 0
    finally:
        await sim.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
