"""EtcdSource vs raw aetcd against one real etcd, side by side in one run.

Groups (ids ``[datasync]`` / ``[aetcd]``):

- ``etcd-snapshot``: every key under a prefix (100k keys of 200 B, about 26 MB) into
  ``KeyVal`` records. datasync pages at a pinned revision; aetcd reads one range (its
  receive limit raised, or gRPC's 4 MiB default refuses it). ``[aetcd-tuples]`` builds
  plain tuples without checks: the floor of any Python client, not the same work.
- ``etcd-watch-catchup``: a watch from the first revision of that data set until every
  event arrived (the catch-up after a reconnect).
- ``etcd-latency``: one put, then wait until the watch delivers it. Both watches are live
  all along and rounds alternate between them; p50/p99 of each are in ``extra_info`` and
  printed (``-s``).

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

from datasync.api import KeyVal
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
    # The same output as datasync's snapshot: KeyVal records.
    resp = await e.aetcd.get_prefix((e.prefix + "data/").encode())
    records = [KeyVal(kv.key.decode(), kv.value, kv.mod_revision) for kv in resp.kvs]
    return len(records)


async def _snapshot_aetcd_tuples(e: Env) -> int:
    # A floor, not a fair rival: plain tuples, no size check, no revision pinning.
    resp = await e.aetcd.get_prefix((e.prefix + "data/").encode())
    records = [(kv.key.decode(), kv.value, kv.mod_revision) for kv in resp.kvs]
    return len(records)


SNAPSHOTS = {
    "datasync": _snapshot_datasync,
    "aetcd": _snapshot_aetcd,
    "aetcd-tuples": _snapshot_aetcd_tuples,
}


@pytest.mark.benchmark(group="etcd-snapshot")
@pytest.mark.parametrize("impl", list(SNAPSHOTS))
def test_snapshot(benchmark: Any, env: Env, impl: str) -> None:
    fn = SNAPSHOTS[impl]
    n = benchmark.pedantic(lambda: env.run(fn(env)), rounds=9, warmup_rounds=1)
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
    n = benchmark.pedantic(lambda: env.run(fn(env)), rounds=5, warmup_rounds=1)
    assert n == env.n
    benchmark.extra_info["events"] = env.n


# --- put -> delivered latency --------------------------------------------------------------


class _Deliveries:
    """Resolves the future waiting for a value when a watch delivers it."""

    def __init__(self) -> None:
        self.waiting: dict[bytes, asyncio.Future[float]] = {}

    def arrived(self, value: bytes | None) -> None:
        fut = self.waiting.pop(value or b"", None)
        if fut is not None and not fut.done():
            fut.set_result(time.perf_counter())


async def _start_watches(e: Env, d: _Deliveries) -> list[tuple[asyncio.Task[None], Any]]:
    """Both watches run for the whole test, each on its own prefix."""
    rev = await e.src.current_revision() + 1
    it = e.src.watch([e.prefix + "lat/datasync/"], rev)

    async def run_datasync() -> None:
        async for batch in it:
            for c in batch:
                d.arrived(c.value)

    watch = await e.aetcd.watch_prefix(
        (e.prefix + "lat/aetcd/").encode(), start_revision=rev, prev_kv=True
    )

    async def run_aetcd() -> None:
        async for ev in watch:
            d.arrived(ev.kv.value)

    loop = asyncio.get_running_loop()
    return [
        (loop.create_task(run_datasync()), it.aclose),  # type: ignore[attr-defined]
        (loop.create_task(run_aetcd()), watch.cancel),
    ]


@pytest.mark.benchmark(group="etcd-latency")
def test_put_to_delivered_latency(benchmark: Any, env: Env, request: pytest.FixtureRequest) -> None:
    """Rounds alternate between the two watches (both live all along), so that both see the
    same etcd and the same machine load; one round is one put + delivery for each."""
    d = _Deliveries()
    watches = env.run(_start_watches(env, d))
    samples: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    counter = iter(range(10**9))

    async def one() -> None:
        i = next(counter)
        # Alternate which goes first: the first put of a round pays for the loop restart.
        for impl in IMPLS if i % 2 else IMPLS[::-1]:
            value = b"%s-%d" % (impl.encode(), i)
            fut = asyncio.get_running_loop().create_future()
            d.waiting[value] = fut
            t0 = time.perf_counter()
            await env.src.put(f"{env.prefix}lat/{impl}/k", value)
            samples[impl].append(await asyncio.wait_for(fut, 10) - t0)

    rounds = 1000 if _scale(request.config) >= 0.5 else 30
    try:
        benchmark.pedantic(lambda: env.run(one()), rounds=rounds, warmup_rounds=5)
    finally:
        for task, stop in watches:
            task.cancel()
            env.run(asyncio.wait([task]))
            env.run(stop())
    print()
    for impl in IMPLS:
        xs = sorted(samples[impl])
        p50 = statistics.median(xs)
        p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
        benchmark.extra_info[f"{impl}_p50_ms"] = round(p50 * 1000, 3)
        benchmark.extra_info[f"{impl}_p99_ms"] = round(p99 * 1000, 3)
        print(f"{impl}: put->delivered p50 {p50 * 1000:.3f} ms, p99 {p99 * 1000:.3f} ms")
