"""Failpoints over the HTTP API of an agent in test mode: a point set at run time holds
the plugin where the test wants it, and releasing it lets the change through."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from .conftest import IF, AgentProcess, js, papi_dump, wait_for
from .test_rest import request


def _test_mode(agent: AgentProcess) -> None:
    config = agent.data_dir.parent / "agent.toml"
    config.write_text("[agent]\ntest_mode = true\n")
    agent.args = ["--config", str(config)]


def _tags(agent: AgentProcess) -> set[str]:
    return {d.tag for d in papi_dump(agent.data_dir / "vpp-api.sock")}


def test_a_paused_apply_holds_the_change_until_released(agent: AgentProcess) -> None:
    _test_mode(agent)
    agent.start()
    agent.wait_in_sync()
    code, reply = request(agent, "PUT", "/test/failpoints/plugin.interfaces.apply", b"pause")
    assert code == 200, reply
    agent.cli("put", IF + "loop1", js({"name": "loop1", "type": "SOFTWARE_LOOPBACK"}))
    wait_for(lambda: (agent.get("/test/failpoints") or {}).get("hits", {})
             .get("plugin.interfaces.apply") == 1, what="the apply paused")  # fmt: skip
    assert "loop1" not in _tags(agent)
    # the change is received but not applied: its revision is not checkpointed
    applied = agent.status()["sources"]["local"]["applied_revision"]
    assert applied < agent.get("/v1/kv?prefix=/")["revision"]
    code, _ = request(agent, "DELETE", "/test/failpoints/plugin.interfaces.apply")
    assert code == 200
    agent.wait_in_sync()
    assert "loop1" in _tags(agent)
    assert agent.get("/test/failpoints")["enabled"] is False


def test_test_history_pages_the_agents_own_events_by_cursor(agent: AgentProcess) -> None:
    _test_mode(agent)
    agent.start()
    agent.wait_in_sync()
    agent.cli("put", IF + "loop2", js({"name": "loop2", "type": "SOFTWARE_LOOPBACK"}))
    agent.wait_in_sync()
    code, first = request(agent, "GET", "/test/history?since=0")
    assert code == 200 and first["next"] == len(first["events"]) > 0
    nb = [e for e in first["events"] if e["kind"] == "nb" and e["key"] == IF + "loop2"]
    assert [(e["source"], e["op"]) for e in nb] == [("local", "put")]
    code, rest = request(agent, "GET", f"/test/history?since={first['next']}")
    assert code == 200 and rest["next"] >= first["next"]
    assert len(rest["events"]) == rest["next"] - first["next"]
    code, reply = request(agent, "GET", "/test/history?since=x")
    assert code == 400 and "since" in reply["error"]


def test_a_bad_action_is_400_naming_the_point_and_changes_nothing(agent: AgentProcess) -> None:
    _test_mode(agent)
    agent.start()
    code, reply = request(agent, "PUT", "/test/failpoints/resync.before_watch", b"explode")
    assert code == 400 and "resync.before_watch" in reply["error"], reply
    code, reply = request(agent, "PUT", "/test/failpoints/no.such.point", b"pause")
    assert code == 400 and "unknown failpoint" in reply["error"], reply
    assert agent.get("/test/failpoints") == {"enabled": False, "hits": {}}


def test_without_test_mode_there_are_no_failpoint_routes(agent: AgentProcess) -> None:
    agent.start()
    for method, body in (("PUT", b"pause"), ("GET", None), ("DELETE", None)):
        req = urllib.request.Request(f"http://{agent.http}/test/failpoints/resync.started",
                                     data=body, method=method)  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code in (404, 405), method
