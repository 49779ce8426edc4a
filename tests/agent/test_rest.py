"""vpp-agent's REST configuration API on a running agent: per-key results, wait and its
deadline, replace isolated to the REST source, retries and generations, bad documents,
and intent that survives an agent restart."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

from tests.etcd.etcdserver import free_port

from .conftest import BD, IF, AgentProcess, js, papi_dump, wait_for

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


def test_pushed_intent_survives_an_agent_restart_with_zero_writes(agent: AgentProcess) -> None:
    sock = agent.data_dir.parent / "vpp.sock"
    admin = f"127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "datasync.agent.cli", "vppsim", "--socket", str(sock)]
    sim = subprocess.Popen([*cmd, "--http", admin], stderr=subprocess.PIPE, text=True)
    try:
        err = sim.stderr
        assert err is not None
        wait_for(lambda: "listening on" in err.readline(), what="the simulator")
        config = agent.data_dir.parent / "agent.toml"
        config.write_text(f'[vpp]\nconnect = "socket"\nsocket = "{sock}"\n')
        agent.args = ["--config", str(config)]
        agent.start()
        request(agent, "PUT", "/configuration?wait=10", DOC.encode())
        assert agent.stop() == 0
        subprocess.run(["curl", "-s", "-X", "POST", f"http://{admin}/counters/reset"], check=True)
        agent.start()
        wait_for(lambda: agent.status()["agent"]["in_sync"], what="in sync after the restart")
        url = f"http://{admin}/counters"
        counters = json.loads(subprocess.run(["curl", "-s", url], capture_output=True).stdout)
        made = {k: {o: n for o, n in ops.items() if n and o != "noop"}
                for k, ops in counters["writes"].items()}  # fmt: skip
        assert {k: v for k, v in made.items() if v} == {}
        assert [
            i["name"] for i in request(agent, "GET", "/configuration")[1]["vppConfig"]["interfaces"]
        ] == ["bad0", "loop0"]
    finally:
        sim.terminate()
        sim.wait(10)


def test_wait_deadline_is_reported_and_a_push_during_a_round_is_applied_after_it(
    agent: AgentProcess,
) -> None:
    """VPP made slow: a push whose wait runs out is answered 504 with every key PENDING
    (never success); a push made while a round runs is held and applied after it."""
    sock = agent.data_dir.parent / "vpp.sock"
    admin = f"127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "datasync.agent.cli", "vppsim", "--socket", str(sock)]
    sim = subprocess.Popen([*cmd, "--http", admin], stderr=subprocess.PIPE, text=True)
    try:
        err = sim.stderr
        assert err is not None
        wait_for(lambda: "listening on" in err.readline(), what="the simulator")
        config = agent.data_dir.parent / "agent.toml"
        config.write_text(f'[vpp]\nconnect = "socket"\nsocket = "{sock}"\ntimeout = 30\n')
        agent.args = ["--config", str(config)]
        agent.start()
        agent.wait_in_sync()

        def latency(seconds: float) -> None:
            body = json.dumps({"seconds": seconds}).encode()
            url = f"http://{admin}/fault/latency"
            subprocess.run(["curl", "-s", "-X", "POST", "--data-binary", body, url], check=True)

        latency(0.5)
        one = b"vppConfig:\n  interfaces:\n    - {name: slow0, type: SOFTWARE_LOOPBACK}\n"
        code, reply = request(agent, "PUT", "/configuration?wait=0.2", one)
        assert code == 504 and not reply["complete"]
        assert results(reply)[IF + "slow0"] == (
            "PENDING",
            f"not applied yet (revision {reply['revision']})",
        )
        agent.cli("resync")
        wait_for(lambda: agent.status()["agent"]["round_running"], what="a round running")
        two = b"vppConfig:\n  interfaces:\n    - {name: during0, type: SOFTWARE_LOOPBACK}\n"
        latency(0.0)
        code, reply = request(agent, "PUT", "/configuration?wait=30", two)
        assert code == 200 and results(reply)[IF + "during0"][0] == "CONFIGURED", reply
        tags = {d.tag for d in papi_dump(sock) if d.tag}
        assert {"during0"} <= tags
    finally:
        sim.terminate()
        sim.wait(10)
