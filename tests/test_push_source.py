"""The push source (REST and gRPC keep their pushes in one): the source contract, and the
push semantics without an agent (retries, generations, replace, wait without a binding)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from datasync.errors import InvalidKeyError
from datasync.transport.push import PushSource
from tests.source_contract import SourceContract

IF = "/vnf-agent/a/config/vpp/v2/interfaces/"


@dataclass
class Harness:
    source: PushSource
    publisher: PushSource
    atomic_txn: bool = True
    prev_values: bool = True


class TestPushSourceContract(SourceContract):
    @pytest.fixture
    async def harness(self) -> AsyncIterator[Harness]:
        src = PushSource(name="rest", prefixes=[IF])
        yield Harness(src, src)
        await src.close()


@pytest.fixture
async def src() -> AsyncIterator[PushSource]:
    s = PushSource(name="rest", prefixes=[IF])
    yield s
    await s.close()


async def test_a_retry_returns_the_first_reply_and_writes_nothing(src: PushSource) -> None:
    first = await src.push({IF + "a": b"1"}, request_id="r")
    again = await src.push({IF + "a": b"2"}, request_id="r")
    assert again.duplicate and again.revision == first.revision
    snap = await src.snapshot([IF])
    assert [(kv.key, kv.value) for kv in snap.kvs] == [(IF + "a", b"1")]


async def test_generations_decide_not_arrival(src: PushSource) -> None:
    await src.push({IF + "a": b"new"}, generation=7)
    reply = await src.push({IF + "a": b"old"}, generation=6)
    assert [(r.key, r.state) for r in reply.results] == [(IF + "a", "STALE")]
    assert (await src.content()) == {IF + "a": b"new"}  # the bookkeeping stays hidden


async def test_replace_deletes_only_its_kinds_not_in_the_push(src: PushSource) -> None:
    await src.push({IF + "a": b"1", IF + "b": b"2", "/other/x": b"3"})
    reply = await src.push({IF + "a": b"1"}, replace=True)
    assert {(r.key, r.state) for r in reply.results} == {
        (IF + "a", "PENDING"),
        (IF + "b", "DELETED"),
    }
    assert set(await src.content()) == {IF + "a"}
    snap = await src.snapshot(["/other/"])
    assert [kv.key for kv in snap.kvs] == ["/other/x"]


async def test_bad_keys_are_refused_and_nothing_is_written(src: PushSource) -> None:
    rev = (await src.snapshot([IF])).revision
    with pytest.raises(InvalidKeyError):
        await src.push({IF + "a": b"1", " bad": b"2"})
    with pytest.raises(InvalidKeyError):
        await src.push({}, IF + "a")  # a str where a list of keys is expected
    with pytest.raises(InvalidKeyError):
        await src.push({"/_datasync/generation/x": b"1"})
    assert (await src.snapshot([IF])).revision == rev
