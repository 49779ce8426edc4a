"""Review of the orchestrator split (datasync.resync as a package) and the source changes
that came with it: behaviour the old single-module orchestrator and the old sources had.

Each test is a behaviour callers relied on before the split that the first version of
the package broke, fixed since.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from datasync.api import Change, ChangeEvent, Op, ResyncEvent, Snapshot
from datasync.errors import ConfigError
from datasync.resync import Orchestrator, ResyncConfig
from datasync.transport.local import LocalStore

WAIT = 10.0  # safety net against hangs only


async def eventually(pred: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not pred():
            await asyncio.sleep(0.005)


class Recorder:
    """A plugin that keeps the state it was told."""

    def __init__(self, name: str, prefixes: Sequence[str]) -> None:
        self.name = name
        self.prefixes = prefixes
        self.depends_on: Sequence[str] = ()
        self.state: dict[str, bytes] = {}

    async def resync(self, ev: ResyncEvent) -> None:
        self.state = {k: kv.value for k, kv in ev.kvs.items()}

    async def change(self, ev: ChangeEvent) -> None:
        for ch in ev.changes:
            if ch.op is Op.PUT:
                assert ch.value is not None
                self.state[ch.key] = ch.value
            else:
                self.state.pop(ch.key, None)


class BareSource:
    """A source with the three members the Source contract had before the split (name,
    snapshot, watch): a connection-state hook was optional then."""

    def __init__(self, inner: LocalStore) -> None:
        self.inner = inner
        self.name = inner.name

    async def snapshot(self, prefixes: Sequence[str]) -> Snapshot:
        return await self.inner.snapshot(prefixes)

    def watch(self, prefixes: Sequence[str], start: int) -> AsyncIterator[list[Change]]:
        return self.inner.watch(prefixes, start)


async def test_a_source_without_a_state_listener_hook_is_a_config_error_naming_it() -> None:
    store = LocalStore(poll_interval=0.02)
    try:
        with pytest.raises(ConfigError, match=r"source 'local' \(BareSource\).*add_state_listener"):
            Orchestrator([BareSource(store)], ResyncConfig())  # type: ignore[list-item]
    finally:
        await store.close()


# --- source counters: the shapes callers read before SourceStats --------------------------


async def test_etcd_stats_still_read_as_a_mapping() -> None:
    from datasync.transport.etcd import EtcdSource

    src = EtcdSource(endpoints=["127.0.0.1:1"])
    stats: Any = src.stats  # read as the dict it was
    try:
        assert stats["reconnects"] == 0 and stats["events"] == 0
        assert "pages" in stats
        assert stats.get("stalls", -1) == 0
        assert dict(stats)["compacted"] == 0
    finally:
        await src.close()


async def test_local_store_stats_still_read_as_a_mapping() -> None:
    store = LocalStore()
    stats: Any = store.stats  # read as the dict it was
    try:
        assert stats["bad_key"] == 0
        assert stats.get("bad_key", -1) == 0
        assert "bad_key" in stats
    finally:
        await store.close()


async def test_kafka_stats_keep_their_old_counter_names() -> None:
    from datasync.transport.kafka import KafkaSource

    src = KafkaSource("kafka", "127.0.0.1:1", "t")
    stats: Any = src.stats  # read by the names it had
    try:
        assert stats.dropped_bad_key == 0
        assert stats.dropped_outside_prefix == 0
        counters = stats.as_dict()
        assert counters["dropped_bad_key"] == 0 and counters["dropped_outside_prefix"] == 0
    finally:
        await src.close()
