"""EtcdSource vs raw aetcd against one real etcd, side by side in one run.

Groups (ids ``[datasync]`` / ``[aetcd]``):

- ``etcd-snapshot``: every key under a prefix (100k keys of 200 B, about 26 MB) into Python
  (key, value, mod revision) records. datasync pages at a pinned revision; aetcd reads one
  range (its receive limit raised, or gRPC's 4 MiB default refuses it).
- ``etcd-watch-catchup``: a watch from the first revision of that data set until every
  event arrived (the catch-up after a reconnect).
- ``etcd-latency``: one put, then wait until the watch delivers it; p50 is the median,
  p99 is in ``extra_info`` and printed.

``DATASYNC_BENCH_SCALE`` scales the key counts (default 1.0; 0.02 with
``--benchmark-disable``, the CI quick mode). ``DATASYNC_ETCD_ENDPOINTS`` uses an external
etcd instead of starting one.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aetcd
import pytest
import uvloop

from datasync.transport.etcd import EtcdSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.etcd.etcdserver import ENV_ENDPOINTS, EtcdCluster

VALUE = b"v" * 200
TXN_OPS = 128  # etcd's default --max-txn-ops
IMPLS = ["datasync", "aetcd"]


def _scale(config: pytest.Config) -> float:
    env = os.environ.get("DATASYNC_BENCH_SCALE")
    if env:
        return float(env)
    return 0.02 if config.getoption("benchmark_disable", False) else 1.0


class Env:
    """One etcd, one event loop, the loaded data set."""

    def __init__(self, endpoints: list[str], n: int) -> None:
        self.endpoints = endpoints
        self.n = n
        self.loop = uvloop.new_event_loop()
        self.prefix = f"/bench/{uuid.uuid4().hex[:8]}/"
        self.src = EtcdSource(name="bench", endpoints=endpoints, recycle_interval=None)
        host, port = endpoints[0].rsplit(":", 1)
        self.aetcd = aetcd.Client(
            host=host, port=int(port), options={"grpc.max_receive_message_length": 256 << 20}
        )
        self.first_rev = 0
        self.last_rev = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def load(self) -> None:
        keys = [f"{self.prefix}data/{i:07d}" for i in range(self.n)]
        for i in range(0, self.n, TXN_OPS):
            rev = await self.src.txn({k: VALUE for k in keys[i : i + TXN_OPS]})
            self.first_rev = self.first_rev or rev
            self.last_rev = rev

    async def close(self) -> None:
        await self.src.close()
        await self.aetcd.close()


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    n = max(200, int(100_000 * _scale(request.config)))
    external = [e for e in os.environ.get(ENV_ENDPOINTS, "").split(",") if e]
    cluster = None
    if not external:
        cluster = EtcdCluster(1)
        # 100k x 200 B is ~26 MB of history; keep etcd's default 2 GB quota and no compaction.
        cluster.start()
    e = Env(external or cluster.endpoints, n)  # type: ignore[union-attr]
    try:
        e.run(e.load())
        yield e
    finally:
        e.run(e.close())
        e.loop.close()
        if cluster is not None:
            cluster.close()


# --- snapshot ------------------------------------------------------------------------------


async def _snapshot_datasync(e: Env) -> int:
    snap = await e.src.snapshot([e.prefix + "data/"])
    return len(snap.kvs)


async def _snapshot_aetcd(e: Env) -> int:
    resp = await e.aetcd.get_prefix((e.prefix + "data/").encode())
    records = [(kv.key.decode(), kv.value, kv.mod_revision) for kv in resp.kvs]
    return len(records)


@pytest.mark.benchmark(group="etcd-snapshot")
@pytest.mark.parametrize("impl", IMPLS)
def test_snapshot(benchmark: Any, env: Env, impl: str) -> None:
    fn = _snapshot_datasync if impl == "datasync" else _snapshot_aetcd
    n = benchmark.pedantic(lambda: env.run(fn(env)), rounds=5, warmup_rounds=1)
    assert n == env.n
    benchmark.extra_info["keys"] = env.n


# --- watch catch-up ------------------------------------------------------------------------


async def _catchup_datasync(e: Env) -> int:
    it = e.src.watch([e.prefix + "data/"], e.first_rev)
    count = 0
    try:
        async for batch in it:
            count += len(batch)
            if batch[-1].revision >= e.last_rev:
                break
    finally:
        await it.aclose()  # type: ignore[attr-defined]
    return count


async def _catchup_aetcd(e: Env) -> int:
    watch = await e.aetcd.watch_prefix(
        (e.prefix + "data/").encode(), start_revision=e.first_rev, prev_kv=True
    )
    count = 0
    try:
        async for ev in watch:
            count += 1
            if ev.kv.mod_revision >= e.last_rev and count >= e.n:
                break
    finally:
        await watch.cancel()
    return count


@pytest.mark.benchmark(group="etcd-watch-catchup")
@pytest.mark.parametrize("impl", IMPLS)
def test_watch_catchup(benchmark: Any, env: Env, impl: str) -> None:
    fn = _catchup_datasync if impl == "datasync" else _catchup_aetcd
    n = benchmark.pedantic(lambda: env.run(fn(env)), rounds=3, warmup_rounds=1)
    assert n == env.n
    benchmark.extra_info["events"] = env.n


# --- put -> delivered latency --------------------------------------------------------------


class _Deliveries:
    """Runs a watch in the background and resolves a future when a value arrives."""

    def __init__(self) -> None:
        self.waiting: dict[bytes, asyncio.Future[float]] = {}

    def arrived(self, value: bytes | None) -> None:
        fut = self.waiting.pop(value or b"", None)
        if fut is not None and not fut.done():
            fut.set_result(time.perf_counter())


async def _start_watch(e: Env, impl: str, d: _Deliveries) -> tuple[asyncio.Task[None], Any]:
    prefix = e.prefix + "lat/"
    rev = await e.src.current_revision() + 1
    if impl == "datasync":
        it = e.src.watch([prefix], rev)

        async def run() -> None:
            async for batch in it:
                for c in batch:
                    d.arrived(c.value)

        return asyncio.get_running_loop().create_task(run()), it.aclose  # type: ignore[attr-defined]
    watch = await e.aetcd.watch_prefix(prefix.encode(), start_revision=rev, prev_kv=True)

    async def run_aetcd() -> None:
        async for ev in watch:
            d.arrived(ev.kv.value)

    return asyncio.get_running_loop().create_task(run_aetcd()), watch.cancel


@pytest.mark.benchmark(group="etcd-latency")
@pytest.mark.parametrize("impl", IMPLS)
def test_put_to_delivered_latency(
    benchmark: Any, env: Env, impl: str, request: pytest.FixtureRequest
) -> None:
    d = _Deliveries()
    task, stop = env.run(_start_watch(env, impl, d))
    samples: list[float] = []
    counter = iter(range(10**9))

    async def one() -> None:
        value = b"%s-%d" % (impl.encode(), next(counter))
        fut = asyncio.get_running_loop().create_future()
        d.waiting[value] = fut
        t0 = time.perf_counter()
        await env.src.put(env.prefix + "lat/k", value)
        t1 = await asyncio.wait_for(fut, 10)
        samples.append(t1 - t0)

    rounds = 400 if _scale(request.config) >= 0.5 else 30
    try:
        benchmark.pedantic(lambda: env.run(one()), rounds=rounds, warmup_rounds=5)
    finally:
        task.cancel()
        env.run(asyncio.wait([task]))
        env.run(stop())
    samples.sort()
    p50 = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    benchmark.extra_info["p50_ms"] = round(p50 * 1000, 3)
    benchmark.extra_info["p99_ms"] = round(p99 * 1000, 3)
    print(f"\n{impl}: put->delivered p50 {p50 * 1000:.3f} ms, p99 {p99 * 1000:.3f} ms")
