"""A deployment's own config against the agent and the VPP simulator, with faults."""

from __future__ import annotations

import json

from datasync.testing import invariants as inv
from datasync.testing.history import History
from datasync.testing.procs import AgentProcess, SimProcess, wait_for

IF = "/vnf-agent/vpp1/config/vpp/v2/interfaces/"
MY_CONFIG = {
    IF + "uplink": {"name": "uplink", "type": "SOFTWARE_LOOPBACK", "enabled": True,
                    "ipAddresses": ["192.0.2.1/24"]},
    IF + "mgmt": {"name": "mgmt", "type": "SOFTWARE_LOOPBACK", "mtu": 1500},
}  # fmt: skip


def vpp_interfaces(sim: SimProcess) -> set[str]:
    """The interfaces the agent created (it tags them with their names)."""
    return {i["tag"] for i in sim.state()["interfaces"] if i["tag"]}


def put_config(agent: AgentProcess) -> None:
    for key, value in MY_CONFIG.items():
        agent.put(key, json.dumps(value))


def test_my_config_converges(datasync_agent: AgentProcess, datasync_vppsim: SimProcess) -> None:
    put_config(datasync_agent)
    datasync_agent.wait_in_sync()
    assert vpp_interfaces(datasync_vppsim) == {"uplink", "mgmt"}


def test_my_config_survives_a_vpp_restart(
    datasync_agent: AgentProcess, datasync_vppsim: SimProcess, datasync_history: History
) -> None:
    put_config(datasync_agent)
    datasync_agent.wait_in_sync()
    datasync_history.mark("round.finished")  # the start-up round is behind us
    datasync_history.mark("fault.vpp_restart")
    datasync_vppsim.post("/fault/restart")  # state wiped, new boot epoch
    datasync_history.mark("fault.healed")  # the fault is over at once: recovery starts
    wait_for(lambda: vpp_interfaces(datasync_vppsim) == {"uplink", "mgmt"}, what="reprogrammed")
    datasync_agent.wait_in_sync()
    final = datasync_agent.final()  # status, plan and store, after one more sample
    expect = inv.Expect(t_conv=10.0, fault="fault.vpp_restart")
    report = inv.check(datasync_history, final, expect,
                       only=["I1", "I4", "I6", "I8", "I10", "I11", "I15"])  # fmt: skip
    report.raise_for_failures()
    creates = [c for c in datasync_history.of("sb") if c.op.startswith("create_loopback")]
    assert len(creates) == 4 and {c.retval for c in creates} == {0}
    assert len({c.epoch for c in creates}) == 2  # programmed once per boot epoch


def test_a_paused_apply_holds_my_change(
    datasync_agent: AgentProcess, datasync_vppsim: SimProcess
) -> None:
    datasync_agent.wait_in_sync()
    datasync_agent.failpoint("plugin.interfaces.apply", "pause")
    put_config(datasync_agent)
    wait_for(lambda: datasync_agent.failpoint_hits().get("plugin.interfaces.apply"),
             what="the apply paused")  # fmt: skip
    assert vpp_interfaces(datasync_vppsim) == set()
    datasync_agent.request("DELETE", "/test/failpoints/plugin.interfaces.apply")
    datasync_agent.wait_in_sync()
    assert vpp_interfaces(datasync_vppsim) == {"uplink", "mgmt"}
