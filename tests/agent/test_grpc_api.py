"""The gRPC configuration API on a running agent, with a real grpc.aio client: per-key
results, wait, overwrite_all limited to the gRPC source, retries and generations,
message limits, health and reflection, and Subscribe under a slow reader. And the
generated code is not stale."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from datasync.transport.proto import config_pb2 as pb
from datasync.transport.proto import config_pb2_grpc as pb_grpc
from tests.etcd.etcdserver import free_port

from .conftest import BD, IF, AgentProcess, js, papi_dump

ROOT = Path(__file__).parents[2]


@pytest.fixture
def grpc_agent(agent: AgentProcess) -> Iterator[tuple[AgentProcess, str]]:
    port = free_port()
    config = agent.data_dir.parent / "agent.toml"
    config.write_text(
        "[sources.grpc]\nenabled = true\n"
        f"listen = '127.0.0.1:{port}'\nmax_message_bytes = 1048576\n"
    )
    agent.args = ["--config", str(config)]
    agent.start()
    yield agent, f"127.0.0.1:{port}"


def loop(name: str, **kw: object) -> pb.KeyValue:
    return pb.KeyValue(
        key=IF + name, value=js({"name": name, "type": "SOFTWARE_LOOPBACK", **kw}).encode()
    )


async def _call(target: str, fn: str, req: object) -> object:
    async with grpc.aio.insecure_channel(target) as ch:
        return await getattr(pb_grpc.ConfigStub(ch), fn)(req, timeout=30)


def call(target: str, fn: str, req: object) -> object:
    return asyncio.run(_call(target, fn, req))


def states(reply: object) -> dict[str, tuple[str, str]]:
    return {r.key: (pb.KeyState.Name(r.state), r.reason) for r in reply.results}  # type: ignore[attr-defined]


def test_set_config_with_wait_answers_per_key_results(grpc_agent: tuple[AgentProcess, str]) -> None:
    _agent, target = grpc_agent
    bd = pb.KeyValue(
        key=BD + "bd1", value=js({"name": "bd1", "interfaces": [{"name": "x9"}]}).encode()
    )
    updates = [loop("loop0", enabled=True), loop("bad0", mtu=70000), bd]
    req = pb.SetConfigRequest(updates=updates, wait=True, request_id="r1")
    reply = call(target, "SetConfig", req)
    got = states(reply)
    assert reply.complete  # type: ignore[attr-defined]
    assert got[IF + "loop0"][0] == "CONFIGURED"
    assert got[IF + "bad0"][0] == "INVALID" and "mtu" in got[IF + "bad0"][1]
    assert got[BD + "bd1"][0] == "PENDING" and "x9" in got[BD + "bd1"][1]
    again = call(
        target,
        "SetConfig",
        pb.SetConfigRequest(updates=[loop("loop0", mtu=1400)], wait=True, request_id="r1"),
    )
    assert again.duplicate and again.revision == reply.revision  # type: ignore[attr-defined]
    kvs = call(target, "GetConfig", pb.GetConfigRequest(prefix=IF))
    assert sorted(kv.key for kv in kvs.kvs) == [IF + "bad0", IF + "loop0"]  # type: ignore[attr-defined]
    st = call(target, "Status", pb.StatusRequest())
    assert json.loads(st.json)["agent"]["label"] == "vpp1"  # type: ignore[attr-defined]


def test_overwrite_all_leaves_other_sources_alone(
    grpc_agent: tuple[AgentProcess, str],
) -> None:
    agent, target = grpc_agent
    agent.cli("put", IF + "mine", js({"name": "mine", "type": "SOFTWARE_LOOPBACK"}))
    call(target, "SetConfig", pb.SetConfigRequest(updates=[loop("g1"), loop("g2")], wait=True))
    reply = call(
        target,
        "SetConfig",
        pb.SetConfigRequest(updates=[loop("g1")], overwrite_all=True, wait=True),
    )
    assert states(reply) == {IF + "g1": ("CONFIGURED", ""), IF + "g2": ("DELETED", "")}
    tags = {d.tag for d in papi_dump(agent.data_dir / "vpp-api.sock") if d.tag}
    assert tags == {"g1", "mine"}


def test_an_older_generation_is_stale(grpc_agent: tuple[AgentProcess, str]) -> None:
    _agent, target = grpc_agent
    call(
        target,
        "SetConfig",
        pb.SetConfigRequest(updates=[loop("g", mtu=1500)], generation=5, wait=True),
    )
    reply = call(
        target,
        "SetConfig",
        pb.SetConfigRequest(updates=[loop("g", mtu=1400)], generation=4, wait=True),
    )
    assert states(reply)[IF + "g"][0] == "STALE"


def test_bad_requests_are_refused_naming_why(grpc_agent: tuple[AgentProcess, str]) -> None:
    _agent, target = grpc_agent
    with pytest.raises(grpc.aio.AioRpcError) as err:
        call(
            target, "SetConfig", pb.SetConfigRequest(updates=[pb.KeyValue(key=" bad", value=b"{}")])
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "whitespace" in str(
        err.value.details()
    )
    big = pb.KeyValue(key=IF + "big", value=b"x" * (2 << 20))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        call(target, "SetConfig", pb.SetConfigRequest(updates=[big]))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_health_and_reflection(grpc_agent: tuple[AgentProcess, str]) -> None:
    _agent, target = grpc_agent

    async def go() -> tuple[object, list[str]]:
        async with grpc.aio.insecure_channel(target) as ch:
            h = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="datasync.v1.Config"), timeout=10
            )
            stream = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
            )
            names = []
            async for resp in stream:
                names = [s.name for s in resp.list_services_response.service]
                break
            return h, names

    h, names = asyncio.run(go())
    assert h.status == health_pb2.HealthCheckResponse.SERVING  # type: ignore[attr-defined]
    assert "datasync.v1.Config" in names


def test_subscribe_never_drops_silently(grpc_agent: tuple[AgentProcess, str]) -> None:
    """A reader that does not read while 1500 keys change gets a resynced marker and the
    current state of every key, then live events."""
    _agent, target = grpc_agent

    async def go() -> tuple[bool, set[str]]:
        # one bound for every wait, under pytest's 120 s: a stuck step fails naming its line
        async with asyncio.timeout(100), grpc.aio.insecure_channel(target) as ch:
            stub = pb_grpc.ConfigStub(ch)
            stream = stub.Subscribe(pb.SubscribeRequest(prefix=IF))
            # subscribed once the initial metadata is here: a SetConfig sent before that
            # may be applied before the server registered the stream, and its events
            # would never come (the first read waited forever under CPU load)
            await stream.initial_metadata()
            await stub.SetConfig(pb.SetConfigRequest(updates=[loop("first")], wait=True))
            first = await stream.read()  # events flow
            assert first.key == IF + "first"
            many = [loop(f"m{i}") for i in range(1500)]
            await stub.SetConfig(pb.SetConfigRequest(updates=many, wait=True, wait_seconds=60))
            seen: set[str] = set()
            resynced = False
            while len(seen) < 1500:
                ev = await stream.read()
                resynced = resynced or ev.resynced
                if ev.key.startswith(IF + "m") and pb.KeyState.Name(ev.state) == "CONFIGURED":
                    seen.add(ev.key)
            stream.cancel()
            return resynced, seen

    resynced, seen = asyncio.run(go())
    assert len(seen) == 1500
    assert resynced, "1500 changes must overflow a queue of 1000 that nobody read"


def test_the_generated_code_is_not_stale(tmp_path: Path) -> None:
    src = ROOT / "src"
    proto = "datasync/transport/proto/config.proto"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{src}", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", str(src / proto)],
        check=True,
    )  # fmt: skip
    for name in ("config_pb2.py", "config_pb2.pyi", "config_pb2_grpc.py"):
        fresh = (tmp_path / "datasync/transport/proto" / name).read_text()
        kept = (src / "datasync/transport/proto" / name).read_text()
        assert fresh == kept, f"{name} is stale: regenerate it (see config.proto)"
