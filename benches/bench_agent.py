"""The agent as it runs (``datasync.agent.runtime.Agent``, its built-in simulator): a put
through the HTTP API until VPP applied it, and what the HTTP server and /metrics cost on
the plugins' full resync (with /metrics scraped every 100 ms, against no HTTP at all)."""

from __future__ import annotations

import asyncio
import json
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


async def _resync(data_dir: Path, http: bool) -> float:
    agent = Agent(_config(data_dir, "127.0.0.1:0" if http else ""))
    t0 = time.perf_counter()
    await agent.start()
    scraper = None
    if http:

        async def scrape() -> None:
            async with aiohttp.ClientSession() as session:
                while True:
                    async with session.get(f"http://127.0.0.1:{agent.http.port}/metrics") as r:
                        await r.read()
                    await asyncio.sleep(0.1)

        scraper = asyncio.ensure_future(scrape())
    try:
        await agent.orch.wait_in_sync(600)
        return time.perf_counter() - t0
    finally:
        if scraper is not None:
            scraper.cancel()
            await asyncio.gather(scraper, return_exceptions=True)
        await agent.stop()


@pytest.mark.parametrize("http", [False, True], ids=["no-http", "http-and-metrics"])
def test_full_resync_with_and_without_http(benchmark: Any, http: bool) -> None:
    benchmark.group = f"agent: full resync of {N_IF} interfaces"
    benchmark.name = f"test_full_resync[{'http-and-metrics' if http else 'no-http'}]"

    def run() -> None:
        d = Path(tempfile.mkdtemp(prefix="dsbag-", dir="/tmp"))
        try:
            _load(d / "data")
            uvloop.run(_resync(d / "data", http))
        finally:
            shutil.rmtree(d, ignore_errors=True)

    benchmark.pedantic(run, rounds=3 if _SCALE == 1 else 1, iterations=1)
