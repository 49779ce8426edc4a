"""Regressions of review findings on EtcdSource: a failed request retiring the channel
under a watch, non-UTF-8 keys, pages over the gRPC receive limit, empty prefix lists, and
reconnects that never make progress."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aetcd import rpc

from datasync.api import Change, SourceState
from datasync.errors import ClosedError, SourceUnavailableError
from datasync.transport.etcd import EtcdSource
from tests.netproxy import TCPProxy
from tests.source_contract import aclose

from .etcdserver import EtcdCluster

WAIT = 30.0  # safety net against hangs only


@pytest.fixture
def prefix() -> str:
    return f"/r/{uuid.uuid4().hex[:10]}/"


class Reader:
    """Reads a watch in a task and keeps what it got, or how it ended."""

    def __init__(self, it: Any) -> None:
        self.it = it
        self.changes: list[Change] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for batch in self.it:
            self.changes.extend(batch)

    async def until_key(self, key: str) -> None:
        async with asyncio.timeout(WAIT):
            while not any(c.key == key for c in self.changes):
                assert not self.task.done(), f"the watch ended: {self.task!r}"
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await aclose(self.it)


async def test_failed_unary_request_does_not_end_the_watch(
    etcd_endpoints: list[str], make_source: Callable[..., EtcdSource], prefix: str
) -> None:
    """A unary request that fails as unavailable retires its endpoint's channel (closed
    request_timeout + 1 s later). A watch of the same source must not die with it."""
    src = make_source(etcd_endpoints, request_timeout=0.2, recycle_interval=None)
    pub = make_source(etcd_endpoints, name="pub")
    snap = await src.snapshot([prefix])
    reader = Reader(src.watch([prefix], snap.revision + 1))
    try:
        await pub.put(prefix + "a", b"1")
        await reader.until_key(prefix + "a")

        async def unavailable(ep: Any) -> None:
            raise TimeoutError("simulated UNAVAILABLE")

        with pytest.raises(SourceUnavailableError):
            await src._call("simulated", unavailable)
        await asyncio.sleep(src.request_timeout + 1.5)  # the retired channel is closed now
        await pub.put(prefix + "b", b"2")
        await reader.until_key(prefix + "b")
    finally:
        await reader.stop()
    assert [c.key for c in reader.changes] == [prefix + "a", prefix + "b"]


async def test_channel_closed_under_the_watch_resumes_it(
    etcd_endpoints: list[str], make_source: Callable[..., EtcdSource], prefix: str
) -> None:
    """A CancelledError the watch task did not ask for (grpc cancels the read when the
    channel closes) is a stream end: resume from the last delivered revision + 1."""
    src = make_source(etcd_endpoints, recycle_interval=None)
    pub = make_source(etcd_endpoints, name="pub")
    snap = await src.snapshot([prefix])
    reader = Reader(src.watch([prefix], snap.revision + 1))
    try:
        await pub.put(prefix + "a", b"1")
        await reader.until_key(prefix + "a")
        # Every channel the source has, the watch's included.
        for ep in [*src._eps, *getattr(src, "_watch_eps", ())]:
            await ep.close()
        await pub.put(prefix + "b", b"2")
        await reader.until_key(prefix + "b")
    finally:
        await reader.stop()
    assert [c.key for c in reader.changes] == [prefix + "a", prefix + "b"]
    assert src.stats["reconnects"] == 1


async def test_bad_keys_are_dropped_counted_and_logged(
    etcd_endpoints: list[str],
    make_source: Callable[..., EtcdSource],
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    src = make_source(etcd_endpoints, recycle_interval=None)
    await src.put(prefix + "good", b"1")
    snap0 = await src.snapshot([prefix])
    it = src.watch([prefix], snap0.revision + 1)
    try:
        bad = prefix.encode() + b"\xff\xfe"
        blank = prefix.encode() + b"blank "  # UTF-8, but not a valid key
        for raw in (bad, blank):
            req = rpc.PutRequest(key=raw, value=b"x")
            await src._call("raw put", lambda ep, req=req: ep.kv.Put(req))
        await src.put(prefix + "late", b"2")
        async with asyncio.timeout(WAIT):
            batch = await anext(it)
    finally:
        await aclose(it)
    assert [c.key for c in batch] == [prefix + "late"]
    snap = await src.snapshot([prefix])
    assert [kv.key for kv in snap.kvs] == [prefix + "good", prefix + "late"]
    assert src.stats["bad_key"] == 4  # each once by the watch, once by the snapshot
    assert repr(bad) in caplog.text and repr(blank) in caplog.text


async def test_pages_shrink_below_page_size_for_the_receive_limit(
    etcd_endpoints: list[str], make_source: Callable[..., EtcdSource], prefix: str
) -> None:
    """30 values of 100 kB, page_size 20, a 1 MiB receive limit: a page of 20 keys would
    never fit. Pages go below page_size, and a page too large is asked again smaller."""
    pub = make_source(etcd_endpoints, name="pub")
    for i in range(0, 30, 10):
        await pub.txn({f"{prefix}{j:03d}": b"x" * 100_000 for j in range(i, i + 10)})
    r = await pub.current_revision()
    src = make_source(
        etcd_endpoints, page_size=20, max_receive_bytes=1 << 20, max_value_bytes=200_000
    )
    snap = await src.snapshot([prefix])
    assert [kv.key for kv in snap.kvs] == [f"{prefix}{j:03d}" for j in range(30)]
    assert snap.revision >= r
    assert src.stats["pages"] >= 3  # at most page_size keys could not be 2 pages


async def test_empty_prefix_list_watches_nothing(
    etcd_endpoints: list[str], make_source: Callable[..., EtcdSource], prefix: str
) -> None:
    src = make_source(etcd_endpoints)
    await src.put(prefix + "k", b"v")
    r = await src.current_revision()
    snap = await src.snapshot([])
    assert snap.kvs == [] and snap.revision == r and snap.store_id == src.cluster_id
    it = src.watch([], r)
    nxt = asyncio.ensure_future(anext(it))
    await src.put(prefix + "k", b"v2")
    await asyncio.sleep(0.3)
    assert not nxt.done(), "a watch of no prefixes yielded something"
    await src.close()
    with pytest.raises(ClosedError):
        async with asyncio.timeout(WAIT):
            await nxt
    await aclose(it)


async def test_reconnects_without_progress_report_stalled(
    etcd1: EtcdCluster, make_source: Callable[..., EtcdSource], prefix: str
) -> None:
    """A backlog slower to arrive than stall_timeout: every attempt is created and then
    declared stalled before its first response. That is not in sync: after
    ``stall_reconnects`` such attempts the source says STALLED, and stays so until the
    watch makes progress again."""
    pub = make_source(etcd1.endpoints, name="pub")
    r0 = await pub.current_revision()
    for i in range(0, 20, 10):
        await pub.txn({f"{prefix}{j:03d}": b"x" * 100_000 for j in range(i, i + 10)})
    member = etcd1.members[0]
    async with TCPProxy("127.0.0.1", member.client_port) as proxy:
        # ~640 kB/s: the first response (1 MB, one revision) takes ~1.6 s. (Slower links
        # also slow the connection setup past grpc's connect timeout.)
        proxy.set_mode("delay", delay=0.1)
        src = make_source(
            [proxy.address],
            stall_timeout=0.4,
            progress_interval=0.1,
            stall_reconnects=2,
            backoff_cap=0.2,
            recycle_interval=None,
        )
        seen: list[tuple[SourceState, str]] = []
        src.add_state_listener(lambda _n, st, why: seen.append((st, why)))
        reader = Reader(src.watch([prefix], r0 + 1))
        try:
            async with asyncio.timeout(WAIT):
                while not any("no progress" in why for _st, why in seen):
                    assert not reader.task.done()
                    await asyncio.sleep(0.05)
            assert src.state == SourceState.STALLED
            assert reader.changes == []
            proxy.set_mode("pass")
            async with asyncio.timeout(WAIT):
                while len(reader.changes) < 20:
                    assert not reader.task.done()
                    await asyncio.sleep(0.05)
            assert src.state == SourceState.CONNECTED
        finally:
            await reader.stop()


async def test_backlog_slower_than_stall_timeout_converges(
    etcd1: EtcdCluster, make_source: Callable[..., EtcdSource], prefix: str
) -> None:
    """The first response of a catch-up (up to ~1000 revisions in one message) takes
    longer to arrive than stall_timeout: each attempt that was created but made no
    progress grows the next one's stall and keepalive timeouts, so the watch gets there,
    in revision order, without anyone changing the link."""
    pub = make_source(etcd1.endpoints, name="pub")
    r0 = await pub.current_revision()
    for i in range(0, 20, 10):
        await pub.txn({f"{prefix}{j:03d}": b"x" * 100_000 for j in range(i, i + 10)})
    member = etcd1.members[0]
    async with TCPProxy("127.0.0.1", member.client_port) as proxy:
        # ~900 kB/s: the 1 MB first response takes ~1.1 s, about 2.8x the first stall
        # timeout of 0.4 s and 1/2.8 of its 8x cap, so a loaded machine stays inside both.
        proxy.set_mode("delay", delay=0.07)
        src = make_source(
            [proxy.address],
            stall_timeout=0.4,
            progress_interval=0.1,
            backoff_cap=0.2,
            recycle_interval=None,
        )
        reader = Reader(src.watch([prefix], r0 + 1))
        try:
            async with asyncio.timeout(15.0):
                while len(reader.changes) < 20:
                    assert not reader.task.done(), f"the watch ended: {reader.task!r}"
                    await asyncio.sleep(0.05)
            revs = [c.revision for c in reader.changes]
            assert revs == sorted(revs) and len(set(revs)) == 2
            assert [c.key for c in reader.changes] == [f"{prefix}{j:03d}" for j in range(20)]
            assert src.stats["stalls"] >= 1
            assert src.state == SourceState.CONNECTED
        finally:
            await reader.stop()
