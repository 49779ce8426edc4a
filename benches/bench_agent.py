"""The agent as it runs (``datasync.agent.runtime.Agent``, its built-in simulator): a put
through the HTTP API until VPP applied it, and what the HTTP server and /metrics cost on
a full resync (with /metrics scraped every 100 ms by another process, against no HTTP)."""

from __future__ import annotations

import asyncio
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop

from datasync.agent.config import AgentConfig
from datasync.agent.runtime import Agent
from datasync.transport.local import LocalStore

_SCALE = 10 if "--benchmark-disable" in sys.argv else 1
N_PUTS = 300 // _SCALE
N_IF = 10_000 // _SCALE


def _config(data_dir: Path, http: str) -> AgentConfig:
    config = AgentConfig()
    config.agent.data_dir = str(data_dir)
    config.agent.label = "bench"
    config.http.listen = http
    config.vpp.probe_interval = 5.0
    config.resync.resync_timeout = 600
    return config


async def _put_latency(data_dir: Path) -> list[float]:
    agent = Agent(_config(data_dir, "127.0.0.1:0"))
    await agent.start()
    done: dict[str, asyncio.Future[float]] = {}

    def on_key(_plugin: str, key: str, status: Any) -> None:
        fut = done.get(key)
        if fut is not None and not fut.done() and status is not None:
            fut.set_result(time.perf_counter())

    agent.plugins.interfaces.states.add_listener(on_key)
    out = []
    try:
        await agent.orch.wait_in_sync(30)
        base = f"http://127.0.0.1:{agent.http.port}/v1/kv"
        async with aiohttp.ClientSession() as session:
            for i in range(N_PUTS):
                key = f"/vnf-agent/bench/config/vpp/v2/interfaces/p{i}"
                done[key] = asyncio.get_running_loop().create_future()
                body = json.dumps({"name": f"p{i}", "type": "SOFTWARE_LOOPBACK", "enabled": True})
                t0 = time.perf_counter()
                async with session.put(base + key, data=body) as resp:
                    assert resp.status == 200, await resp.text()
                out.append(await asyncio.wait_for(done[key], 10) - t0)
    finally:
        await agent.stop()
    return out


def test_put_over_http_until_applied(benchmark: Any) -> None:
    benchmark.group = "agent: HTTP put until VPP applied"
    benchmark.name = "test_http_put_latency"
    lat: list[float] = []

    def run() -> None:
        d = Path(tempfile.mkdtemp(prefix="dsbag-", dir="/tmp"))
        try:
            lat.extend(uvloop.run(_put_latency(d / "data")))
        finally:
            shutil.rmtree(d, ignore_errors=True)

    benchmark.pedantic(run, rounds=1, iterations=1)
    lat.sort()
    benchmark.extra_info["p50_ms"] = round(lat[len(lat) // 2] * 1000, 3)
    benchmark.extra_info["p99_ms"] = round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 3)


def _load(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    store = LocalStore(data_dir / "store.db")
    kvs = {}
    for i in range(N_IF):
        doc = {"name": f"l{i}", "type": "SOFTWARE_LOOPBACK", "enabled": True,
               "ipAddresses": [f"10.{i >> 8 & 255}.{i & 255}.1/32"]}  # fmt: skip
        kvs[f"/vnf-agent/bench/config/vpp/v2/interfaces/l{i}"] = json.dumps(doc).encode()
    store.txn_sync(kvs)
    uvloop.run(store.close())


#: a Prometheus stand-in in its own process: GET /metrics every 100 ms
_SCRAPER = """
import sys, time, urllib.request
url = sys.argv[1]
while True:
    try:
        urllib.request.urlopen(url, timeout=5).read()
    except OSError:
        pass
    time.sleep(0.1)
"""


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _resync(data_dir: Path, http: bool) -> tuple[float, float]:
    """Wall and CPU seconds of this process (the agent and its built-in simulator)."""
    import subprocess

    import datasync.agent.http  # noqa: F401 - imported before timing, as in a running agent

    agent = Agent(_config(data_dir, "127.0.0.1:0" if http else ""))
    t0, c0 = time.perf_counter(), _cpu()
    await agent.start()
    scraper = None
    if http:
        url = f"http://127.0.0.1:{agent.http.port}/metrics"
        scraper = subprocess.Popen([sys.executable, "-c", _SCRAPER, url])  # noqa: ASYNC220
    try:
        await agent.orch.wait_in_sync(600)
        return time.perf_counter() - t0, _cpu() - c0
    finally:
        if scraper is not None:
            scraper.kill()
            scraper.wait()
        await agent.stop()


@pytest.mark.parametrize("http", [False, True], ids=["no-http", "http-and-metrics"])
def test_full_resync_with_and_without_http(benchmark: Any, http: bool) -> None:
    benchmark.group = f"agent: full resync of {N_IF} interfaces"
    benchmark.name = f"test_full_resync[{'http-and-metrics' if http else 'no-http'}]"

    cpu: list[float] = []

    def run() -> None:
        d = Path(tempfile.mkdtemp(prefix="dsbag-", dir="/tmp"))
        try:
            _load(d / "data")
            cpu.append(uvloop.run(_resync(d / "data", http))[1])
        finally:
            shutil.rmtree(d, ignore_errors=True)

    benchmark.pedantic(run, rounds=5 if _SCALE == 1 else 1, iterations=1)
    # CPU time is steadier than wall time on a shared machine: the cost is in here
    benchmark.extra_info["cpu_seconds_min"] = round(min(cpu), 3)
    benchmark.extra_info["cpu_seconds_median"] = round(sorted(cpu)[len(cpu) // 2], 3)
