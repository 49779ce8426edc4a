"""EtcdSource against a scripted etcd gRPC server that misbehaves on purpose (F19).

Real etcd 3.4.23 can deliver duplicate and time-travelling watch events (#15275, #15271)
but not on demand, so these cases run against a tiny server speaking etcd's Watch and KV
protocol (aetcd's generated servicers) that sends exactly the responses a test scripts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from aetcd import rpc
from aetcd.rpc import rpc_pb2_grpc

from datasync.api import Op
from datasync.errors import CompactedError, StoreResetError
from datasync.transport.etcd import EtcdSource
from tests.source_contract import aclose

CLUSTER = 0xC1
PUT, DELETE = rpc.Event.EventType.PUT, rpc.Event.EventType.DELETE


def ev(kind: int, key: str, rev: int, value: bytes = b"") -> Any:
    return rpc.Event(type=kind, kv=rpc.KeyValue(key=key.encode(), value=value, mod_revision=rev))


def resp(revision: int, *events: Any, **kw: Any) -> Any:
    header = rpc.ResponseHeader(cluster_id=kw.pop("cluster_id", CLUSTER), revision=revision)
    return rpc.WatchResponse(header=header, watch_id=kw.pop("watch_id", 0), events=events, **kw)


class ScriptedEtcd(rpc_pb2_grpc.WatchServicer, rpc_pb2_grpc.KVServicer):  # type: ignore[misc]
    """Answers a watch create with ``created`` (header ``revision``), then the script."""

    def __init__(self) -> None:
        self.revision = 10
        self.script: list[Any] = []
        # Scripts for the following watch creates, one list each, taken in order.
        self.later: list[list[Any]] = []
        self.creates: list[int] = []  # start revisions asked for

    async def Watch(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for req in request_iterator:
            if req.HasField("create_request"):
                self.creates.append(req.create_request.start_revision)
                # Take this create's script before yielding: a test may set up the next
                # one while this stream is still being read.
                script = self.script
                self.script = self.later.pop(0) if self.later else []
                yield resp(self.revision, created=True)
                for r in script:
                    yield r
            elif req.HasField("progress_request"):
                yield resp(self.revision, watch_id=-1)

    async def Range(self, request: Any, context: Any) -> Any:
        header = rpc.ResponseHeader(cluster_id=CLUSTER, revision=self.revision)
        return rpc.RangeResponse(header=header)


@pytest.fixture
async def server() -> AsyncIterator[tuple[ScriptedEtcd, str]]:
    srv = grpc.aio.server()
    impl = ScriptedEtcd()
    rpc_pb2_grpc.add_WatchServicer_to_server(impl, srv)
    rpc_pb2_grpc.add_KVServicer_to_server(impl, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    yield impl, f"127.0.0.1:{port}"
    await srv.stop(None)


async def test_duplicates_and_time_travel_are_dropped(
    server: tuple[ScriptedEtcd, str], make_source: Callable[..., EtcdSource]
) -> None:
    impl, addr = server
    impl.script = [
        resp(12, ev(PUT, "/p/a", 11, b"1"), ev(PUT, "/p/b", 12, b"2")),
        resp(12, watch_id=-1),  # a progress notification: no batch
        # Repeats rev 12, travels back to 9, then a new revision: only rev 13 survives.
        resp(13, ev(PUT, "/p/b", 12, b"2"), ev(PUT, "/p/a", 9, b"0"), ev(DELETE, "/p/a", 13)),
    ]
    src = make_source([addr])
    it = src.watch(["/p/"], 11)
    try:
        async with asyncio.timeout(10):
            b1, b2 = await anext(it), await anext(it)
    finally:
        await aclose(it)
    assert [(c.key, c.op, c.revision) for c in b1] == [("/p/a", Op.PUT, 11), ("/p/b", Op.PUT, 12)]
    assert [(c.key, c.op, c.revision) for c in b2] == [("/p/a", Op.DELETE, 13)]
    assert src.stats["duplicate"] == 2


async def test_keys_outside_prefixes_in_the_covering_range_are_dropped(
    server: tuple[ScriptedEtcd, str], make_source: Callable[..., EtcdSource]
) -> None:
    impl, addr = server
    # Watching /a/ and /c/ covers [/a/, /c0): /b/x is inside the range, not in a prefix.
    impl.script = [resp(12, ev(PUT, "/b/x", 11), ev(PUT, "/c/y", 12))]
    src = make_source([addr])
    it = src.watch(["/a/", "/c/"], 11)
    try:
        async with asyncio.timeout(10):
            batch = await anext(it)
    finally:
        await aclose(it)
    assert [c.key for c in batch] == ["/c/y"]
    assert src.stats["outside_prefix"] == 1


async def test_compaction_cancel_mid_stream_raises(
    server: tuple[ScriptedEtcd, str], make_source: Callable[..., EtcdSource]
) -> None:
    impl, addr = server
    impl.script = [resp(20, canceled=True, compact_revision=15)]
    src = make_source([addr])
    it = src.watch(["/p/"], 11)
    with pytest.raises(CompactedError) as info:
        async with asyncio.timeout(10):
            await anext(it)
    assert info.value.compact_revision == 15


async def test_header_revision_below_handed_out_is_a_store_reset(
    server: tuple[ScriptedEtcd, str], make_source: Callable[..., EtcdSource]
) -> None:
    impl, addr = server
    impl.revision = 5  # the store says 5; we already handed out up to 10
    src = make_source([addr])
    it = src.watch(["/p/"], 11)
    with pytest.raises(StoreResetError, match="below revision 10"):
        async with asyncio.timeout(10):
            await anext(it)
    assert impl.creates == [11]


async def test_server_cancel_without_compaction_resumes_from_last_delivered(
    server: tuple[ScriptedEtcd, str], make_source: Callable[..., EtcdSource]
) -> None:
    impl, addr = server
    impl.revision = 14
    impl.script = [
        resp(12, ev(PUT, "/p/a", 12, b"1")),
        resp(12, canceled=True, cancel_reason="etcdserver: no leader"),
    ]
    impl.later = [[resp(14, ev(PUT, "/p/b", 14, b"2"))]]  # for the resumed watch
    src = make_source([addr])
    it = src.watch(["/p/"], 11)
    try:
        async with asyncio.timeout(10):
            batch = await anext(it)
            batch2 = await anext(it)
    finally:
        await aclose(it)
    assert [c.revision for c in batch] == [12]
    assert [c.revision for c in batch2] == [14]
    assert impl.creates == [11, 13]  # resumed at last delivered + 1, not from the start
    assert src.stats["reconnects"] == 1
