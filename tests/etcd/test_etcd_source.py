"""EtcdSource against a real etcd: the shared contract plus etcd specifics."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from aetcd import rpc

from datasync.api import MAX_KEY_BYTES, Op, SourceState
from datasync.errors import CompactedError, SourceUnavailableError
from datasync.transport.etcd import EtcdSource, _cover, _ranges, prefix_range_end
from tests.source_contract import SourceContract, aclose, collect


@dataclass
class Harness:
    source: EtcdSource
    publisher: EtcdSource
    name: str = "etcd"
    atomic_txn: bool = True
    prev_values: bool = True


class TestEtcdContract(SourceContract):
    @pytest.fixture
    async def harness(
        self, etcd_endpoints: list[str], make_source: Callable[..., EtcdSource]
    ) -> Harness:
        src = make_source(etcd_endpoints)
        return Harness(source=src, publisher=src)


@pytest.fixture
def prefix() -> str:
    return f"/t/{uuid.uuid4().hex[:10]}/"


def test_prefix_ranges() -> None:
    assert prefix_range_end(b"/a/") == b"/a0"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"\xff\xff") == b"\0"
    assert _ranges(["/a/b/", "/a/", "/c/"]) == [(b"/a/", b"/a0"), (b"/c/", b"/c0")]
    assert _cover(["/c/", "/a/"]) == (b"/a/", b"/c0")
    with pytest.raises(ValueError, match="empty prefix"):
        _ranges([""])


async def test_paginated_snapshot_is_pinned_at_one_revision(
    etcd_endpoints: list[str], make_source: Callable[..., EtcdSource], prefix: str
) -> None:
    src = make_source(etcd_endpoints, page_size=7, max_page_bytes=1)
    pub = make_source(etcd_endpoints, name="pub")
    for i in range(0, 50, 10):
        await pub.txn({f"{prefix}k{j:03d}": b"v1" for j in range(i, i + 10)})
    r_before = await pub.current_revision()
    # The writer overtakes the reader: once the first page is read (R is fixed), it
    # rewrites every key from the END of the range, which later pages have not reached.
    # Unpinned pages would return those new values; pinned ones must not.
    written: list[int] = []

    async def writer() -> None:
        while src.stats.pages < 1:
            await asyncio.sleep(0.001)
        for j in range(49, -1, -1):
            written.append(await pub.put(f"{prefix}k{j:03d}", b"v2"))

    w = asyncio.create_task(writer())
    snap = await src.snapshot([prefix])
    await w
    assert snap.revision >= r_before
    assert any(r > snap.revision for r in written), "the writer did not overtake the reader"
    assert all(kv.revision <= snap.revision for kv in snap.kvs)
    # Equal to the store at R, read in one go.
    resp = await pub._call(
        "check",
        pub._ranger(
            rpc.RangeRequest(
                key=prefix.encode(),
                range_end=prefix_range_end(prefix.encode()),
                revision=snap.revision,
            )
        ),
    )
    assert [(kv.key, kv.value, kv.revision) for kv in snap.kvs] == [
        (kv.key.decode(), kv.value, kv.mod_revision) for kv in resp.kvs
    ]
    assert len(snap.kvs) == 50
    assert src.stats.pages >= 8


async def test_oversized_values_are_delivered_counted_and_logged_once(
    etcd_endpoints: list[str],
    make_source: Callable[..., EtcdSource],
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """max_value_bytes only counts and logs: dropping would make the key look deleted in
    a snapshot and unchanged in a watch. Validation downstream marks it INVALID."""
    src = make_source(etcd_endpoints, max_value_bytes=100)
    await src.put(prefix + "small", b"x" * 10)
    await src.put(prefix + "big", b"x" * 101)
    snap = await src.snapshot([prefix])
    assert [(kv.key, kv.value) for kv in snap.kvs] == [
        (prefix + "big", b"x" * 101),
        (prefix + "small", b"x" * 10),
    ]
    assert src.stats.oversized == 1
    await src.snapshot([prefix])
    assert src.stats.oversized == 2
    assert caplog.text.count(prefix + "big") == 1, "logged once per key"
    it = src.watch([prefix], snap.revision + 1)
    try:
        await src.put(prefix + "big2", b"y" * 500)
        await src.put(prefix + "ok", b"y")
        changes = await collect(it, 2)
    finally:
        await aclose(it)
    assert [(c.key, c.value) for c in changes] == [
        (prefix + "big2", b"y" * 500),
        (prefix + "ok", b"y"),
    ]
    assert src.stats.oversized == 3


async def test_over_long_keys_are_skipped_and_counted(
    etcd_endpoints: list[str],
    make_source: Callable[..., EtcdSource],
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A key over MAX_KEY_BYTES (written by another client) is a bad key: the snapshot's
    bulk check and the watch skip it, count it and log it; the keys around it arrive."""
    src = make_source(etcd_endpoints, recycle_interval=None)
    await src.put(prefix + "good", b"1")
    snap0 = await src.snapshot([prefix])
    it = src.watch([prefix], snap0.revision + 1)
    long = prefix.encode() + b"k" * MAX_KEY_BYTES
    try:
        req = rpc.PutRequest(key=long, value=b"x")
        await src._call("raw put", lambda ep: ep.kv.Put(req))
        await src.put(prefix + "late", b"2")
        changes = await collect(it, 1)
    finally:
        await aclose(it)
    assert [c.key for c in changes] == [prefix + "late"]
    snap = await src.snapshot([prefix])
    assert [kv.key for kv in snap.kvs] == [prefix + "good", prefix + "late"]
    assert src.stats.bad_key == 2  # once by the watch, once by the snapshot
    assert "exceeds MAX_KEY_BYTES" in caplog.text


async def test_large_snapshot_over_grpc_default_limit(
    etcd_endpoints: list[str], make_source: Callable[..., EtcdSource], prefix: str
) -> None:
    # 6 MiB of values: more than gRPC's 4 MiB default receive limit in one range.
    src = make_source(etcd_endpoints)
    value = b"v" * 60_000
    for i in range(0, 100, 20):
        await src.txn({f"{prefix}{j:03d}": value for j in range(i, i + 20)})
    snap = await src.snapshot([prefix])
    assert len(snap.kvs) == 100
    assert src.stats.pages == 1
    # Pages are sized by bytes after the first one.
    small = make_source(etcd_endpoints, page_size=10, max_page_bytes=1 << 20)
    snap2 = await small.snapshot([prefix])
    assert snap2.kvs == snap.kvs
    assert small.stats.pages >= 6


async def test_watch_from_compacted_revision_raises(
    etcd_endpoints: list[str], make_source: Callable[..., EtcdSource], prefix: str
) -> None:
    src = make_source(etcd_endpoints)
    r1 = await src.put(prefix + "a", b"1")
    r2 = await src.put(prefix + "a", b"2")
    await src.compact(r2)
    it = src.watch([prefix], r1)
    with pytest.raises(CompactedError) as info:
        await anext(it)
    assert info.value.compact_revision == r2
    # A snapshot pinned below the compaction fails the same way, never partially.
    assert src.stats.compacted == 1


async def test_state_listener_and_give_up(make_source: Callable[..., EtcdSource]) -> None:
    from tests.etcd.etcdserver import free_port

    src = make_source([f"127.0.0.1:{free_port()}"], max_retries=2, connect_timeout=0.5)
    seen: list[tuple[str, SourceState]] = []
    src.add_state_listener(lambda name, st, reason: seen.append((name, st)))
    with pytest.raises(SourceUnavailableError):
        await src.snapshot(["/x/"])
    it = src.watch(["/x/"], 1)
    with pytest.raises(SourceUnavailableError, match="gave up after 2 reconnects"):
        await anext(it)
    assert src.state == SourceState.DISCONNECTED
    assert src.stats.reconnects == 3


async def test_state_listener_sees_connect(
    etcd_endpoints: list[str], make_source: Callable[..., EtcdSource], prefix: str
) -> None:
    src = make_source(etcd_endpoints)
    seen: list[tuple[str, SourceState, str]] = []
    src.add_state_listener(lambda *a: seen.append(a))
    await src.snapshot([prefix])
    assert seen and seen[-1][:2] == ("etcd", SourceState.CONNECTED)
    assert src.cluster_id


async def test_lease_keys_vanish_on_revoke(
    etcd_endpoints: list[str], make_source: Callable[..., EtcdSource], prefix: str
) -> None:
    src = make_source(etcd_endpoints)
    snap = await src.snapshot([prefix])
    it = src.watch([prefix], snap.revision + 1)
    try:
        lease = await src.put_with_lease(prefix + "alive", b"1", ttl=5)
        await lease.revoke()
        changes = await collect(it, 2)
    finally:
        await aclose(it)
    assert [(c.key, c.op) for c in changes] == [
        (prefix + "alive", Op.PUT),
        (prefix + "alive", Op.DELETE),
    ]


async def test_idle_watch_and_blocked_loop_are_not_stalls(
    etcd_endpoints: list[str], make_source: Callable[..., EtcdSource], prefix: str
) -> None:
    """Progress requests keep a quiet watch alive; a blocked event loop is not the server's
    silence."""
    import time

    src = make_source(etcd_endpoints, stall_timeout=0.6, progress_interval=0.2)
    snap = await src.snapshot([prefix])
    it = src.watch([prefix], snap.revision + 1)
    try:
        first = asyncio.ensure_future(anext(it))
        await asyncio.sleep(2 * src.stall_timeout)  # quiet, but etcd answers progress requests
        time.sleep(1.5 * src.stall_timeout)  # noqa: ASYNC251 - blocking the loop on purpose
        await asyncio.sleep(0.3)
        r = await src.put(prefix + "k", b"v")
        async with asyncio.timeout(10):
            batch = await first
    finally:
        await aclose(it)
    assert [(c.key, c.revision) for c in batch] == [(prefix + "k", r)]
    assert src.stats.stalls == 0 and src.stats.reconnects == 0


async def test_periodic_recycle_is_invisible(
    etcd_endpoints: list[str], make_source: Callable[..., EtcdSource], prefix: str
) -> None:
    """The watch is recycled now and then: no change is lost or repeated, and no state
    change is reported (an orchestrator would take one for an outage)."""
    src = make_source(etcd_endpoints, recycle_interval=(0.2, 0.3), progress_interval=0.1)
    snap = await src.snapshot([prefix])
    seen: list[SourceState] = []
    src.add_state_listener(lambda _n, st, _r: seen.append(st))
    it = src.watch([prefix], snap.revision + 1)
    try:
        reader = asyncio.ensure_future(collect(it, 8))  # reads while we write
        revs = []
        for i in range(8):
            revs.append(await src.put(prefix + "k", b"%d" % i))
            await asyncio.sleep(0.1)
        changes = await reader
    finally:
        await aclose(it)
    assert [c.revision for c in changes] == revs
    assert src.stats.recycles >= 1
    assert src.stats.reconnects == 0
    assert seen == []


async def test_close_ends_open_watches_with_closed_error(
    etcd_endpoints: list[str], make_source: Callable[..., EtcdSource], prefix: str
) -> None:
    from datasync.errors import ClosedError

    src = make_source(etcd_endpoints)
    it = src.watch([prefix], (await src.current_revision()) + 1)
    reader = asyncio.ensure_future(anext(it))
    await asyncio.sleep(0.3)  # the watch is created and waiting
    await src.close()
    with pytest.raises(ClosedError):
        async with asyncio.timeout(10):
            await reader
    await aclose(it)


async def test_lease_is_kept_alive_past_its_ttl(
    etcd_endpoints: list[str], make_source: Callable[..., EtcdSource], prefix: str
) -> None:
    src = make_source(etcd_endpoints)
    lease = await src.put_with_lease(prefix + "agent", b"alive", ttl=2)
    await asyncio.sleep(3.5)  # past the TTL: only the keep-alive task holds the key
    snap = await src.snapshot([prefix])
    assert [kv.key for kv in snap.kvs] == [prefix + "agent"]
    await lease.revoke()
    assert (await src.snapshot([prefix])).kvs == []
