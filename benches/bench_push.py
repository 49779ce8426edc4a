"""Push sources side by side in one run, against one agent and its built-in simulator:
push-to-applied latency (a request with ``wait``, answered once VPP applied it) for a
single key and for 1000 keys, over gRPC and REST."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import uvloop

from datasync.agent.config import AgentConfig
from datasync.agent.runtime import Agent
from datasync.transport.proto import config_pb2 as pb
from datasync.transport.proto import config_pb2_grpc as pb_grpc

_SCALE = 10 if "--benchmark-disable" in sys.argv else 1
N_SINGLE = 200 // _SCALE
N_BATCHES = 10 // _SCALE or 1
IF = "/vnf-agent/bench/config/vpp/v2/interfaces/"


def _value(name: str, mtu: int) -> bytes:
    return json.dumps({"name": name, "type": "SOFTWARE_LOOPBACK", "mtu": mtu}).encode()


async def _run(kind: str, batch: int) -> list[float]:
    d = Path(tempfile.mkdtemp(prefix="dsbpush-", dir="/tmp"))
    config = AgentConfig()
    config.agent.data_dir = str(d / "data")
    config.agent.label = "bench"
    config.http.listen = "127.0.0.1:0"
    config.http.max_body_bytes = 16 << 20
    config.sources.grpc.enabled = True
    config.sources.grpc.listen = "127.0.0.1:0"
    config.sources.grpc.max_message_bytes = 16 << 20
    agent = Agent(config)
    await agent.start()
    out = []
    try:
        await agent.orch.wait_in_sync(30)
        rounds = N_SINGLE if batch == 1 else N_BATCHES
        if kind == "grpc":
            async with grpc.aio.insecure_channel(f"127.0.0.1:{agent.grpc.port}") as ch:
                stub = pb_grpc.ConfigStub(ch)
                for r in range(rounds):
                    kvs = [pb.KeyValue(key=f"{IF}k{i}", value=_value(f"k{i}", 1000 + r))
                           for i in range(batch)]  # fmt: skip
                    t0 = time.perf_counter()
                    reply = await stub.SetConfig(pb.SetConfigRequest(updates=kvs, wait=True,
                                                                      wait_seconds=60))  # fmt: skip
                    out.append(time.perf_counter() - t0)
                    assert reply.complete
        else:
            url = f"http://127.0.0.1:{agent.http.port}/configuration?wait=60"
            async with aiohttp.ClientSession() as session:
                for r in range(rounds):
                    items = [{"name": f"k{i}", "type": "SOFTWARE_LOOPBACK", "mtu": 1000 + r}
                             for i in range(batch)]  # fmt: skip
                    body = json.dumps({"vppConfig": {"interfaces": items}})
                    t0 = time.perf_counter()
                    async with session.put(url, data=body) as resp:
                        doc = await resp.json()
                    out.append(time.perf_counter() - t0)
                    assert doc["complete"], doc
    finally:
        await agent.stop()
        shutil.rmtree(d, ignore_errors=True)
    return out


@pytest.mark.parametrize("batch", [1, 1000], ids=["1-key", "1000-keys"])
@pytest.mark.parametrize("kind", ["grpc", "rest"])
def test_push_to_applied(benchmark: Any, kind: str, batch: int) -> None:
    benchmark.group = f"push until applied ({batch} key{'s' if batch > 1 else ''} a request)"
    benchmark.name = f"test_push[{kind}-{batch}]"
    lat: list[float] = []
    benchmark.pedantic(lambda: lat.extend(uvloop.run(_run(kind, batch))), rounds=1, iterations=1)
    lat.sort()
    benchmark.extra_info["p50_ms"] = round(lat[len(lat) // 2] * 1000, 3)
    benchmark.extra_info["p99_ms"] = round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 3)
    benchmark.extra_info["keys_per_s"] = round(batch * len(lat) / sum(lat))
