"""The agent reads its config from etcd; the store's own history is the ground truth."""

from __future__ import annotations

import json

import pytest

from datasync.testing.history import History
from datasync.testing.procs import AgentProcess, EtcdCluster, SimProcess, etcdctl, wait_for
from datasync.testing.recorders import EtcdTruthWatcher

IF = "/vnf-agent/vpp1/config/vpp/v2/interfaces/"


@pytest.fixture
def datasync_agent_config(datasync_etcd: EtcdCluster) -> str:
    return f"[sources.etcd]\nendpoints = {json.dumps(datasync_etcd.endpoints)}\n"


def test_a_killed_etcd_comes_back_and_the_agent_follows(
    datasync_etcd: EtcdCluster,
    datasync_agent: AgentProcess,
    datasync_vppsim: SimProcess,
    datasync_history: History,
) -> None:
    with EtcdTruthWatcher(datasync_etcd.endpoints, datasync_history) as truth:
        value = json.dumps({"name": "lo1", "type": "SOFTWARE_LOOPBACK"})
        etcdctl(datasync_etcd.endpoints, "put", IF + "lo1", value)
        member = datasync_etcd.members[0]
        member.kill()  # by PID
        member.restart()
        etcdctl(datasync_etcd.endpoints, "put", IF + "lo2", value.replace("lo1", "lo2"))
        tags = lambda: {i["tag"] for i in datasync_vppsim.state()["interfaces"]}  # noqa: E731
        wait_for(lambda: tags() >= {"lo1", "lo2"}, what="both interfaces")
        truth.wait_caught_up(3)
    assert [e.key for e in datasync_history.of("truth")] == [IF + "lo1", IF + "lo2"]
    assert datasync_history.store_at()[IF + "lo2"][1] == 3
