"""vpp-agent's REST configuration API on a running agent: per-key results, wait and its
deadline, replace isolated to the REST source, retries and generations, bad documents,
and intent that survives an agent restart."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .conftest import BD, IF, AgentProcess, SimProcess, js, on_simulator, papi_dump, wait_for

DOC = """\
vppConfig:
  interfaces:
    - name: loop0
      type: SOFTWARE_LOOPBACK
      enabled: true
      ipAddresses: [10.0.0.1/24]
    - name: bad0
      type: SOFTWARE_LOOPBACK
      mtu: 70000
  bridgeDomains:
    - name: bd1
      interfaces: [{name: loop0}, {name: loop9}]
"""


def request(
    agent: AgentProcess, method: str, path: str, body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:  # fmt: skip
    req = urllib.request.Request(f"http://{agent.http}{path}", data=body, method=method,
                                 headers=headers or {})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read()
            return resp.status, json.loads(text) if text.startswith(b"{") else text.decode()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def results(reply: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {r["key"]: (r["state"], r.get("reason", "")) for r in reply["results"]}


def test_put_with_wait_answers_per_key_results(agent: AgentProcess) -> None:
    agent.start()
    code, reply = request(agent, "PUT", "/configuration?wait=10", DOC.encode())
    assert code == 200 and reply["complete"], reply
    got = results(reply)
    assert got[IF + "loop0"][0] == "CONFIGURED"
    assert got[IF + "bad0"][0] == "INVALID" and "mtu" in got[IF + "bad0"][1]
    assert got[BD + "bd1"][0] == "PENDING" and "loop9" in got[BD + "bd1"][1]
    assert "loop0" in {d.tag for d in papi_dump(agent.data_dir / "vpp-api.sock")}
    code, doc = request(agent, "GET", "/configuration")
    assert code == 200 and [i["name"] for i in doc["vppConfig"]["interfaces"]] == ["bad0", "loop0"]


def test_validate_applies_nothing(agent: AgentProcess) -> None:
    agent.start()
    code, reply = request(agent, "POST", "/configuration/validate", DOC.encode())
    assert code == 200
    assert results(reply)[IF + "bad0"][0] == "INVALID"
    assert results(reply)[IF + "loop0"][0] == "VALID"
    assert request(agent, "GET", "/configuration")[1] == {"vppConfig": {}}


def test_a_malformed_or_oversized_document_is_refused_and_nothing_applied(
    agent: AgentProcess,
) -> None:
    agent.start()
    request(agent, "PUT", "/configuration?wait=10", DOC.encode())
    code, reply = request(agent, "PUT", "/configuration", b"vppConfig:\n  interfaces: [\n")
    assert code == 400 and "line" in reply["error"]
    bad_route = b"vppConfig:\n  routes:\n    - {dstNetwork: 10.0.0.0/33, vrfId: 0}\n"
    code, reply = request(agent, "PUT", "/configuration", bad_route)
    assert code == 400 and "vppConfig.routes[0]" in reply["error"]
    assert "dst_network" in reply["error"]
    code, reply = request(agent, "PUT", "/configuration", b"#" * (2 << 20))
    assert code == 413 and "1048576" in reply["error"]
    names = [
        i["name"] for i in request(agent, "GET", "/configuration")[1]["vppConfig"]["interfaces"]
    ]
    assert names == ["bad0", "loop0"]


def test_replace_removes_only_the_rest_sources_keys(agent: AgentProcess) -> None:
    agent.start()
    agent.cli("put", IF + "local0x", js({"name": "local0x", "type": "SOFTWARE_LOOPBACK"}))
    request(agent, "PUT", "/configuration?wait=10", DOC.encode())
    small = b"vppConfig:\n  interfaces:\n    - {name: loop0, type: SOFTWARE_LOOPBACK}\n"
    code, reply = request(agent, "PUT", "/configuration?replace&wait=10", small)
    assert code == 200
    assert {k: s for k, (s, _r) in results(reply).items()} == {
        IF + "loop0": "CONFIGURED",
        IF + "bad0": "DELETED",
        BD + "bd1": "DELETED",
    }
    tags = {d.tag for d in papi_dump(agent.data_dir / "vpp-api.sock") if d.tag}
    assert tags == {"loop0", "local0x"}  # the embedded store's key stays


def test_a_retry_is_a_no_op_and_an_older_generation_loses(agent: AgentProcess) -> None:
    agent.start()
    one = b"vppConfig:\n  interfaces:\n    - {name: g0, type: SOFTWARE_LOOPBACK, mtu: 1500}\n"
    two = one.replace(b"1500", b"1400")
    hdr = {"X-Request-Id": "req-1"}
    _, first = request(agent, "PUT", "/configuration?wait=10&generation=2", one, hdr)
    _, again = request(agent, "PUT", "/configuration?wait=10&generation=2", two, hdr)
    assert again["duplicate"] and again["revision"] == first["revision"]
    _, old = request(agent, "PUT", "/configuration?wait=10&generation=1", two)
    assert results(old)[IF + "g0"][0] == "STALE"
    mtu = {d.tag: d.mtu[0] for d in papi_dump(agent.data_dir / "vpp-api.sock")}["g0"]
    assert mtu == 1500


def test_pushed_intent_survives_an_agent_restart_with_zero_writes(
    agent: AgentProcess, vppsim: SimProcess
) -> None:
    on_simulator(agent, vppsim)
    agent.start()
    request(agent, "PUT", "/configuration?wait=10", DOC.encode())
    assert agent.stop() == 0
    vppsim.post("/counters/reset")
    agent.start()
    wait_for(lambda: agent.status()["agent"]["in_sync"], what="in sync after the restart")
    assert vppsim.writes() == {}
    doc = request(agent, "GET", "/configuration")[1]
    assert [i["name"] for i in doc["vppConfig"]["interfaces"]] == ["bad0", "loop0"]


def test_wait_deadline_is_reported_and_a_push_during_a_round_is_applied_after_it(
    agent: AgentProcess, vppsim: SimProcess
) -> None:
    """VPP made slow: a push whose wait runs out is answered 504 with every key PENDING
    (never success); a push made while a round runs is held and applied after it."""
    on_simulator(agent, vppsim, "timeout = 30\n")
    agent.start()
    agent.wait_in_sync()
    vppsim.post("/fault/latency", {"seconds": 0.5})
    one = b"vppConfig:\n  interfaces:\n    - {name: slow0, type: SOFTWARE_LOOPBACK}\n"
    code, reply = request(agent, "PUT", "/configuration?wait=0.2", one)
    assert code == 504 and not reply["complete"]
    pending = ("PENDING", f"not applied yet (revision {reply['revision']})")
    assert results(reply)[IF + "slow0"] == pending
    agent.cli("resync")
    wait_for(lambda: agent.status()["agent"]["round_running"], what="a round running")
    two = b"vppConfig:\n  interfaces:\n    - {name: during0, type: SOFTWARE_LOOPBACK}\n"
    vppsim.post("/fault/latency", {"seconds": 0.0})
    code, reply = request(agent, "PUT", "/configuration?wait=30", two)
    assert code == 200 and results(reply)[IF + "during0"][0] == "CONFIGURED", reply
    assert "during0" in {d.tag for d in papi_dump(Path(vppsim.path)) if d.tag}
