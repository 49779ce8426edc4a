"""``datasync agent`` driven as a user does: the CLI, the HTTP API, vpp-papi."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.etcd.etcdserver import free_port

from .conftest import (
    BD,
    IF,
    AgentProcess,
    SimProcess,
    datasync,
    js,
    on_simulator,
    papi_dump,
    wait_for,
)

EXAMPLE = str(Path(__file__).parents[2] / "examples" / "config.yaml")


def test_converges_from_the_example_document_and_stops_on_sigterm(agent: AgentProcess) -> None:
    agent.start()
    out = agent.cli("apply", EXAMPLE)
    assert "keys put" in out.stdout
    st = agent.wait_in_sync()
    assert st["keys"] == []
    assert agent.get("/readyz") == {"ready": True}
    tags = {d.tag: d for d in papi_dump(agent.data_dir / "vpp-api.sock") if d.tag}
    assert set(tags) == {"loop0", "bvi0", "tap0", "memif0", "memif1"}
    assert tags["loop0"].mtu[0] == 1500
    status = agent.cli("status")
    assert "in_sync=True" in status.stdout
    metrics = subprocess.run(
        ["curl", "-s", f"http://{agent.http}/metrics"], capture_output=True, text=True
    ).stdout
    assert 'datasync_keys{plugin="interfaces",state="CONFIGURED"} 5.0' in metrics
    assert "datasync_in_sync 1.0" in metrics
    assert 'datasync_buffered_changes{source="local"} 0.0' in metrics
    assert 'datasync_filtered_changes_total{source="local"}' in metrics
    gauges = dict(
        line.rsplit(" ", 1) for line in metrics.splitlines() if line.startswith("datasync_source_")
    )
    applied = float(gauges['datasync_source_applied_revision{source="local"}'])
    assert applied > 0  # in sync: what the agent heard of is what it applied
    assert float(gauges['datasync_source_received_revision{source="local"}']) == applied
    assert 'datasync_vpp_batch_seconds_count{message="create_loopback_instance"}' in metrics
    assert 'datasync_vpp_plugin_requests_total{message="create_loopback_instance"} 2.0' in metrics
    assert agent.stop(signal.SIGTERM) == 0


def test_dependents_put_before_their_dependencies_wait_then_apply(agent: AgentProcess) -> None:
    agent.start()
    members = {"name": "bd1", "interfaces": [{"name": "loop7"}]}
    agent.cli("put", BD + "bd1", js(members))
    st = agent.wait_in_sync()
    (key,) = st["keys"]
    assert key["state"] == "PENDING" and "loop7" in key["reason"]
    explained = agent.cli("explain", BD + "bd1").stdout
    assert "PENDING" in explained and "depends on loop7: MISSING" in explained
    agent.cli("put", IF + "loop7", js({"name": "loop7", "type": "SOFTWARE_LOOPBACK"}))
    wait_for(lambda: agent.status()["keys"] == [], what="bd1 CONFIGURED")
    bds = papi_dump(agent.data_dir / "vpp-api.sock", "bridge_domain_dump", bd_id=0xFFFFFFFF)
    assert [b.n_sw_ifs for b in bds if b.bd_tag == "bd1"] == [1]


def test_invalid_value_is_named_by_status_and_explain(agent: AgentProcess) -> None:
    agent.start()
    agent.cli("put", IF + "bad", js({"name": "bad", "type": "SOFTWARE_LOOPBACK", "mtu": 70000}))
    st = agent.wait_in_sync()
    assert [(k["key"], k["state"]) for k in st["keys"]] == [(IF + "bad", "INVALID")]
    assert "mtu" in st["keys"][0]["reason"]
    assert "mtu" in agent.cli("explain", IF + "bad").stdout
    out = agent.cli("status", check=False)
    assert out.returncode == 0 and "INVALID" in out.stdout


def test_delete_detaches_first_and_apply_replace_removes_only_its_kinds(
    agent: AgentProcess,
) -> None:
    agent.start()
    agent.cli("apply", EXAMPLE)
    agent.wait_in_sync()
    agent.cli("put", "/other/key", js({"x": 1}))  # not a kind the document holds
    agent.cli("del", IF + "memif1")  # a bridge-domain member: detached first
    agent.wait_in_sync()
    tags = {d.tag for d in papi_dump(agent.data_dir / "vpp-api.sock") if d.tag}
    assert "memif1" not in tags
    smaller = agent.data_dir.parent / "small.yaml"
    smaller.write_text(
        "vppConfig:\n  interfaces:\n    - name: loop0\n      type: SOFTWARE_LOOPBACK\n"
        "      enabled: true\n"
    )
    out = agent.cli("apply", str(smaller), "--replace", "--json")
    assert '"deleted"' in out.stdout
    agent.wait_in_sync()
    tags = {d.tag for d in papi_dump(agent.data_dir / "vpp-api.sock") if d.tag}
    assert tags == {"loop0"}
    assert agent.get("/v1/kv/other/key")["value"] == js({"x": 1})
    assert agent.get("/status")["keys"] == []


def test_restart_with_nothing_changed_makes_zero_vpp_writes(
    agent: AgentProcess, vppsim: SimProcess
) -> None:
    """Against a simulator that outlives the agent (``vpp.connect = "socket"``)."""
    on_simulator(agent, vppsim)
    agent.start()
    agent.cli("apply", EXAMPLE)
    agent.wait_in_sync()
    assert agent.stop() == 0
    vppsim.post("/counters/reset")
    agent.start()
    agent.wait_in_sync()
    assert vppsim.writes() == {}


def test_a_bad_config_exits_2_naming_the_setting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[resync]\nescalation = "sometimes"\n')
    out = datasync("agent", "--config", str(bad))
    assert out.returncode == 2
    assert "resync.escalation" in out.stderr and "Traceback" not in out.stderr
    out = datasync("config", "check", str(bad))
    assert out.returncode == 2 and "resync.escalation" in out.stderr


def test_a_path_that_is_not_a_socket_is_never_unlinked(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    (data_dir / "vpp-api.sock").write_text("precious")
    out = datasync("agent", "--data-dir", str(data_dir), "--http", "")
    assert out.returncode == 2 and "not a socket" in out.stderr
    assert (data_dir / "vpp-api.sock").read_text() == "precious"


@pytest.mark.etcd
def test_escalation_exits_75(tmp_path: Path) -> None:
    """A source that never answers fails every round; after escalate_after of them
    the agent exits 75 so its supervisor restarts it (and VPP)."""
    config = tmp_path / "agent.toml"
    port = free_port()  # nobody listens there
    config.write_text(
        "[sources]\norder = ['etcd']\n[sources.local]\nenabled = false\n"
        f"[sources.etcd]\nendpoints = ['127.0.0.1:{port}']\nconnect_timeout = 0.2\n"
        "request_timeout = 0.5\n"
        "[resync]\nescalate_after = 2\nbackoff_initial = 0.05\nbackoff_max = 0.1\n"
        "snapshot_timeout = 1.0\n"
    )
    sock_dir = Path("/tmp") / f"dsesc-{port}"
    out = datasync("agent", "--config", str(config), "--data-dir", str(sock_dir), "--http", "",
                   timeout=60)  # fmt: skip
    shutil.rmtree(sock_dir, ignore_errors=True)
    assert out.returncode == 75, out.stdout + out.stderr
    assert "escalation" in out.stderr


def test_readyz_is_503_during_a_round_and_200_after(
    agent: AgentProcess, vppsim: SimProcess
) -> None:
    on_simulator(agent, vppsim, "timeout = 30\n")
    agent.start()
    agent.cli("put", IF + "loop0", js({"name": "loop0", "type": "SOFTWARE_LOOPBACK"}))
    agent.wait_in_sync()
    assert agent.get("/readyz") == {"ready": True}
    vppsim.post("/fault/latency", {"seconds": 0.3})
    rounds = agent.get("/status")["agent"]["rounds"]
    asked = json.loads(agent.cli("resync", "--json").stdout)
    assert asked["requested"] == "full" and asked["round"] == rounds + 1, asked
    busy = wait_for(lambda: (r := agent.get("/readyz")) and r.get("_status") == 503 and r,
                    what="readyz 503")  # fmt: skip
    assert any("round" in reason for reason in busy["reasons"]), busy
    vppsim.post("/fault/clear")
    wait_for(lambda: agent.get("/readyz") == {"ready": True}, what="readyz 200 again")


def test_watch_prints_changes_as_json_lines(agent: AgentProcess) -> None:
    agent.start()
    start = agent.get("/v1/kv?prefix=/")["revision"] + 1
    cmd = [sys.executable, "-m", "datasync.agent.cli", "watch", "--http", agent.http, IF,
           "--from", str(start)]  # fmt: skip

    # Ctrl-C as in a terminal, even when the test run itself ignores SIGINT (a background
    # job's children inherit SIG_IGN, and Python then installs no KeyboardInterrupt)
    def ctrl_c_works() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    watcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, preexec_fn=ctrl_c_works)
    try:
        out = watcher.stdout
        assert out is not None
        agent.cli("put", IF + "w0", js({"name": "w0", "type": "SOFTWARE_LOOPBACK"}))
        agent.cli("del", IF + "w0")
        seen = [json.loads(out.readline()) for _ in range(2)]
        assert [(s["key"], s["op"], s["revision"]) for s in seen] == [
            (IF + "w0", "PUT", start),
            (IF + "w0", "DELETE", start + 1),
        ]
    finally:
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(10) == 0


def test_plan_lists_what_a_downstream_resync_then_repairs(agent: AgentProcess) -> None:
    agent.start()
    agent.cli("apply", EXAMPLE)
    agent.wait_in_sync()
    assert "nothing to do" in agent.cli("plan").stdout
    # an operator deletes one of the agent's loopbacks behind its back (vpp-papi)
    from vpp_papi import VPPApiClient

    from tests.paths import vpp_api_files

    vpp = VPPApiClient(
        apifiles=vpp_api_files(), server_address=str(agent.data_dir / "vpp-api.sock")
    )
    vpp.connect("operator")
    try:
        loop0 = next(d for d in vpp.api.sw_interface_dump() if d.tag == "loop0")
        vpp.api.delete_loopback(sw_if_index=loop0.sw_if_index)
    finally:
        vpp.disconnect()
    plan = json.loads(agent.cli("plan", "--json").stdout)
    made = "create_loopback_instance"
    assert {c["message"] for c in plan} >= {made, "sw_interface_add_del_address"}
    assert {c["key"] for c in plan if c["message"] == made} == {IF + "loop0"}
    assert "loop0" not in {d.tag for d in papi_dump(agent.data_dir / "vpp-api.sock")}
    agent.cli("resync", "--downstream")
    assert "loop0" in {d.tag for d in papi_dump(agent.data_dir / "vpp-api.sock")}
    assert "nothing to do" in agent.cli("plan").stdout


def test_a_body_over_the_limit_is_413_naming_it_and_nothing_is_written(
    agent: AgentProcess,
) -> None:
    import urllib.error
    import urllib.request

    agent.start()
    req = urllib.request.Request(
        f"http://{agent.http}/v1/kv" + IF + "big", data=b"x" * (2 << 20), method="PUT"
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 413
    assert "1048576" in err.value.read().decode()
    assert agent.get("/v1/kv/" + IF.lstrip("/") + "big").get("_status") == 404


def test_a_watched_file_source_drives_vpp(agent: AgentProcess) -> None:
    doc = agent.data_dir.parent / "intent.yaml"
    doc.write_text(Path(EXAMPLE).read_text())
    config = agent.data_dir.parent / "agent.toml"
    config.write_text(f"[sources]\norder = ['file', 'local']\n[sources.file]\npath = '{doc}'\n")
    agent.args = ["--config", str(config)]
    agent.start()
    wait_for(lambda: agent.status()["agent"]["in_sync"], what="in sync from the file")
    tags = {d.tag for d in papi_dump(agent.data_dir / "vpp-api.sock") if d.tag}
    assert "memif1" in tags
    # an edit: memif1 goes (and leaves bd1 first)
    text = doc.read_text()
    start = text.index("    - name: memif1")
    end = text.index("  bridgeDomains:")
    doc.write_text(
        text[:start]
        + text[end:].replace("        - name: memif1\n          splitHorizonGroup: 1\n", "")
    )
    wait_for(
        lambda: "memif1" not in {d.tag for d in papi_dump(agent.data_dir / "vpp-api.sock")},
        what="memif1 gone",
    )
    doc.write_text("vppConfig: [broken\n")
    wait_for(lambda: agent.status()["sources"]["file"]["state"] == "STALLED", what="stalled")
    assert str(doc) in agent.status()["sources"]["file"]["error"]
    assert "loop0" in {d.tag for d in papi_dump(agent.data_dir / "vpp-api.sock")}


def test_a_data_dir_that_is_a_file_or_a_garbage_store_is_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = datasync("agent", "--data-dir", str(afile), "--http", "")
    assert out.returncode == 2 and "not a directory" in out.stderr
    assert "Traceback" not in out.stderr
    garbage = tmp_path / "d"
    garbage.mkdir()
    (garbage / "store.db").write_bytes(b"this is not a database" * 100)
    out = datasync("agent", "--data-dir", str(garbage), "--http", "")
    assert out.returncode == 1 and "cannot start" in out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1
