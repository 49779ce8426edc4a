"""One bad key never hurts the others: invalid values, permanent and transient VPP errors
are states of that key, and no round fails."""

from __future__ import annotations

import ipaddress

import pytest

from datasync.plugins import KeyState
from datasync.vpp.retvals import RETVAL_NAMES

from .conftest import BD, IF, ROUTE, VRF, Agent, bd, js, loop

RV = {name: value for value, name in RETVAL_NAMES.items()}

BAD_VALUES = [
    # (value, words the reason must contain)
    (b"[" * 100_000, ["nested too deeply"]),
    (js({"name": "x", "ip_addresses": ["10.0.0.1/24"] * 2000}), ["ip_addresses"]),
    (js({"name": "x", "enabled": "yes"}), ["enabled"]),
    (js({"name": "x", "type": "SOFTWARE_LOOPBACK", "mtu": 70000}), ["mtu"]),
    (js({"name": "x", "type": 2, "ip_addresses": ["10.0.0.1/33"]}), ["ip_addresses[0]"]),
    (js({"name": "other", "type": "SOFTWARE_LOOPBACK"}), ["name", "other"]),
    (js({"name": "x", "type": "DPDK"}), ["type", "DPDK", "not supported"]),
    (js({"name": "x", "type": "SOFTWARE_LOOPBACK", "bogus": 1}), ["bogus", "unknown field"]),
    (b"{not json", ["not valid JSON"]),
    (b"x" * (1 << 20 | 1), ["exceeds"]),
]  # fmt: skip


@pytest.mark.parametrize(("value", "words"), BAD_VALUES, ids=range(len(BAD_VALUES)))
async def test_invalid_value_is_a_key_state_naming_key_and_field(
    agent: Agent, value: bytes, words: list[str]
) -> None:
    await agent.put((IF + "x", value), loop("good", "10.5.0.1/24"))
    await agent.orch.start()
    await agent.settle()
    assert agent.state(IF + "x") is KeyState.INVALID
    for word in words:
        assert word in agent.reason(IF + "x")
    assert "x" not in agent.tagged()
    assert agent.state(IF + "good") is KeyState.CONFIGURED
    assert agent.orch.status().failed_rounds == 0
    # the same key made valid converges
    await agent.put(loop("x", "10.6.0.1/24"))
    await agent.settle()
    await agent.wait_state(IF + "x", KeyState.CONFIGURED)
    assert agent.tagged()["x"]["addresses"] == ["10.6.0.1/24"]


async def test_invalid_values_of_every_plugin(agent: Agent) -> None:
    bad = {
        BD + "b1": js({"name": "b1", "interfaces": [{"name": "a", "split_horizon_group": 300}]}),
        ROUTE + "vrf/0/dst/10.0.0.0/33/": js({"dst_network": "10.0.0.0/33"}),
        ROUTE + "vrf/0/dst/10.0.0.0/8/gw/1.2.3.4": js(
            {"dst_network": "10.0.0.0/8", "next_hop_addr": "1.2.3.5"}
        ),
        VRF + "id/5/protocol/IPV4": js({"id": 6, "protocol": "IPV4"}),
    }  # fmt: skip
    await agent.put(*bad.items())
    await agent.orch.start()
    await agent.settle()
    assert {k: agent.state(k) for k in bad} == dict.fromkeys(bad, KeyState.INVALID)
    assert "split_horizon_group" in agent.reason(BD + "b1")
    assert "dst_network" in agent.reason(ROUTE + "vrf/0/dst/10.0.0.0/33/")
    assert "1.2.3.5" in agent.reason(ROUTE + "vrf/0/dst/10.0.0.0/8/gw/1.2.3.4")
    assert "id/6/protocol/IPV4" in agent.reason(VRF + "id/5/protocol/IPV4")


async def test_invalid_value_leaves_what_vpp_has_alone(agent: Agent) -> None:
    await agent.put(loop("x", "10.6.0.1/24"))
    await agent.orch.start()
    await agent.settle()
    await agent.put((IF + "x", b"{broken"))
    await agent.settle()
    assert agent.state(IF + "x") is KeyState.INVALID
    assert agent.tagged()["x"]["addresses"] == ["10.6.0.1/24"]
    agent.orch.request_resync("test")
    await agent.settle()
    assert "x" in agent.tagged()


async def test_a_permanent_vpp_error_fails_one_key_and_is_not_retried(agent: Agent) -> None:
    bad = ipaddress.ip_interface("10.9.0.1/24")
    agent.sim.inject_error(
        "sw_interface_add_del_address", RV["UNSUPPORTED"], count=None, match={"prefix": bad}
    )
    await agent.put(loop("bad", str(bad)), loop("good", "10.8.0.1/24"), bd("bd1", "good", "bad"))
    await agent.orch.start()
    await agent.settle()
    status = agent.plugins.states.get(IF + "bad")
    assert status is not None and status.state is KeyState.FAILED
    assert status.retval == "UNSUPPORTED" and "10.9.0.1/24" in status.reason
    assert agent.state(IF + "good") is KeyState.CONFIGURED
    assert agent.state(BD + "bd1") is KeyState.CONFIGURED
    st = agent.orch.status()
    assert st.failed_rounds == 0 and st.in_sync
    calls = agent.sim.message_counts["sw_interface_add_del_address"]
    agent.orch.request_resync("test: again")
    await agent.settle()
    assert agent.sim.message_counts["sw_interface_add_del_address"] == calls  # not retried
    assert agent.state(IF + "bad") is KeyState.FAILED
    # a new value is tried again
    agent.sim.clear_faults()
    await agent.put(loop("bad", "10.9.0.1/24", mtu=1400))
    await agent.settle()
    await agent.wait_state(IF + "bad", KeyState.CONFIGURED)


async def test_a_retriable_error_retries_the_key_until_it_clears(agent: Agent) -> None:
    agent.sim.inject_error(
        "sw_interface_set_flags", RV["QUEUE_FULL"], count=None, match={"flags": 1}
    )
    await agent.put(loop("slow"), loop("other", enabled=False))
    await agent.orch.start()
    await agent.settle()
    status = agent.plugins.states.get(IF + "slow")
    assert status is not None and status.state is KeyState.RETRYING
    assert status.retval == "QUEUE_FULL" and status.next_attempt is not None
    assert agent.state(IF + "other") is KeyState.CONFIGURED
    await agent.wait_state(IF + "slow", KeyState.RETRYING)
    first = status.attempts
    from tests.vpp.helpers import eventually

    await eventually(lambda: agent.plugins.states.get(IF + "slow").attempts > first)  # type: ignore[union-attr]
    assert agent.orch.status().failed_rounds == 0
    agent.sim.clear_faults()
    await agent.wait_state(IF + "slow", KeyState.CONFIGURED)
    assert agent.tagged()["slow"]["admin_up"]


async def test_vpp_agent_values_both_naming_styles_and_enums(agent: Agent) -> None:
    """Values exactly as vpp-agent users keep them: protojson (lowerCamelCase, enum names)
    and proto names with enum numbers."""
    await agent.put(
        (IF + "memif1", js({"name": "memif1", "type": "MEMIF", "enabled": True,
                            "physAddress": "02:00:00:00:00:aa", "ipAddresses": ["10.20.0.1/24"],
                            "memif": {"master": True, "id": 1, "socketFilename": "/run/x.sock",
                                      "mode": "ETHERNET", "ringSize": 1024}})),
        (IF + "tap1", js({"name": "tap1", "type": 5, "enabled": True,
                          "tap": {"version": 2, "host_if_name": "t1", "rx_ring_size": 256}})),
        (BD + "bd1", js({"name": "bd1", "flood": True, "unknownUnicastFlood": True,
                         "forward": True, "learn": True, "macAge": 0,
                         "interfaces": [{"name": "memif1", "bridgedVirtualInterface": False,
                                         "splitHorizonGroup": 1}]})),
        (ROUTE + "if/tap1/vrf/0/dst/30.0.0.0/8/gw/10.30.0.2",
         js({"type": "INTRA_VRF", "vrfId": 0, "dstNetwork": "30.0.0.0/8",
             "nextHopAddr": "10.30.0.2", "outgoingInterface": "tap1", "weight": 1})),
        (VRF + "id/3/protocol/IPV6", js({"id": 3, "protocol": "IPV6", "label": "v6"})),
        (VRF + "id/4/protocol/IPV4", js({"id": 4, "protocol": 0})),
    )  # fmt: skip
    await agent.orch.start()
    await agent.settle()
    assert [s for s in agent.plugins.states if s.state is not KeyState.CONFIGURED] == []
    tagged = agent.tagged()
    assert tagged["memif1"]["mac"] == "02:00:00:00:00:aa"
    assert tagged["memif1"]["addresses"] == ["10.20.0.1/24"]
    tables = {(t["table_id"], t["is_ip6"]) for t in agent.sim.dump_state()["tables"]}
    assert {(3, True), (4, False)} <= tables


def memif(name: str, memif_id: int) -> tuple[str, bytes]:
    doc = {"name": name, "type": "MEMIF", "enabled": True, "memif": {"id": memif_id}}
    return IF + name, js(doc)


async def test_an_untagged_memif_of_an_interrupted_create_is_adopted(agent: Agent) -> None:
    """A create whose tag was lost (a crash between the two calls) leaves an untagged
    memif; VPP answers the next create "already exists", and the read-back adopts it."""
    lost = (await agent.client.call("memif_create_v2", socket_id=0, id=4, role=1)).sw_if_index
    await agent.put(memif("memif4", 4))
    await agent.orch.start()
    await agent.settle()
    assert agent.state(IF + "memif4") is KeyState.CONFIGURED
    assert agent.tagged()["memif4"]["sw_if_index"] == lost
    assert [i["kind"] for i in agent.sim.dump_state()["interfaces"]].count("memif") == 1


async def test_two_keys_with_one_memif_id_the_second_fails(agent: Agent) -> None:
    await agent.put(memif("a", 5))
    await agent.orch.start()
    await agent.settle()
    await agent.put(memif("b", 5))
    await agent.settle()
    await agent.wait_state(IF + "b", KeyState.FAILED)
    assert "in use" in agent.reason(IF + "b") and "by a" in agent.reason(IF + "b")
    assert agent.state(IF + "a") is KeyState.CONFIGURED
    assert agent.orch.status().failed_rounds == 0


def test_key_state_counts_follow_every_change() -> None:
    from datasync.plugins import KeyStates

    states = KeyStates("p")
    states.set("a", KeyState.PENDING, "x")
    states.set("b", KeyState.PENDING, "y")
    states.set("a", KeyState.CONFIGURED)
    states.set("a", KeyState.CONFIGURED)
    states.remove("b")
    states.remove("missing")
    want = dict.fromkeys(KeyState, 0) | {KeyState.CONFIGURED: 1}
    assert states.counts() == want
    assert sum(states.counts().values()) == len(states)
