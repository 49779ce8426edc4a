"""The source contract suite: every northbound source passes these same tests.

A source's test module subclasses ``SourceContract`` and provides a ``harness``
fixture returning an object with:

- ``source``: the ``datasync.api.Source`` under test;
- ``publisher``: a ``datasync.api.Publisher`` writing to the same store;
- ``atomic_txn``: True when a txn's changes share one revision;
- ``prev_values``: True when watch changes carry the previous value.

Each test works under its own random prefix, so one store can serve the whole suite.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from datasync.api import Change, Op
from datasync.errors import InvalidKeyError

WAIT = 15.0  # generous: a safety net against hangs, not a timing goal


async def collect(it: AsyncIterator[list[Change]], count: int) -> list[Change]:
    """Read batches until ``count`` changes arrived (fails on a hang)."""
    out: list[Change] = []
    async with asyncio.timeout(WAIT):
        while len(out) < count:
            batch = await anext(it)
            out.extend(batch)
    return out


async def aclose(it: AsyncIterator[Any]) -> None:
    closer = getattr(it, "aclose", None)
    if closer is not None:
        await closer()


class SourceContract:
    """Behaviour every ``Source`` must have. Subclasses provide ``harness``."""

    @pytest.fixture
    def prefix(self) -> str:
        return f"/contract/{uuid.uuid4().hex[:12]}/"

    async def test_empty_snapshot(self, harness: Any, prefix: str) -> None:
        snap = await harness.source.snapshot([prefix])
        assert list(snap.kvs) == []
        assert snap.revision >= 0

    async def test_snapshot_holds_only_watched_prefixes_with_mod_revisions(
        self, harness: Any, prefix: str
    ) -> None:
        pub = harness.publisher
        r1 = await pub.put(prefix + "a/1", b'{"n": 1}')
        r2 = await pub.put(prefix + "b/1", b'{"n": 2}')
        await pub.put(prefix + "c/outside", b"{}")
        r3 = await pub.put(prefix + "a/1", b'{"n": 3}')
        assert r1 < r2 < r3
        snap = await harness.source.snapshot([prefix + "a/", prefix + "b/"])
        got = {kv.key: (kv.value, kv.revision) for kv in snap.kvs}
        assert got == {prefix + "a/1": (b'{"n": 3}', r3), prefix + "b/1": (b'{"n": 2}', r2)}
        assert snap.revision >= r3

    async def test_deleted_key_leaves_snapshot(self, harness: Any, prefix: str) -> None:
        await harness.publisher.put(prefix + "x", b"1")
        await harness.publisher.put(prefix + "y", b"2")
        await harness.publisher.delete(prefix + "x")
        snap = await harness.source.snapshot([prefix])
        assert [kv.key for kv in snap.kvs] == [prefix + "y"]

    async def test_watch_after_snapshot_sees_later_changes_in_order(
        self, harness: Any, prefix: str
    ) -> None:
        await harness.publisher.put(prefix + "k1", b"old")
        snap = await harness.source.snapshot([prefix])
        it = harness.source.watch([prefix], snap.revision + 1)
        try:
            r1 = await harness.publisher.put(prefix + "k1", b"new")
            r2 = await harness.publisher.put(prefix + "k2", b"v2")
            r3 = await harness.publisher.delete(prefix + "k1")
            changes = await collect(it, 3)
        finally:
            await aclose(it)
        assert [(c.key, c.op, c.value, c.revision) for c in changes] == [
            (prefix + "k1", Op.PUT, b"new", r1),
            (prefix + "k2", Op.PUT, b"v2", r2),
            (prefix + "k1", Op.DELETE, None, r3),
        ]
        assert all(c.source == harness.source.name for c in changes)
        if harness.prev_values:
            assert changes[0].prev_value == b"old"
            assert changes[2].prev_value == b"new"

    async def test_write_between_snapshot_and_watch_is_not_lost(
        self, harness: Any, prefix: str
    ) -> None:
        """The list-then-watch gap: a watch from R+1 sees what came after R."""
        await harness.publisher.put(prefix + "g", b"1")
        snap = await harness.source.snapshot([prefix])
        r = await harness.publisher.put(prefix + "g", b"2")  # after the list, before the watch
        it = harness.source.watch([prefix], snap.revision + 1)
        try:
            changes = await collect(it, 1)
        finally:
            await aclose(it)
        assert [(c.key, c.value, c.revision) for c in changes] == [(prefix + "g", b"2", r)]

    async def test_watch_from_past_revision_replays_history(
        self, harness: Any, prefix: str
    ) -> None:
        r1 = await harness.publisher.put(prefix + "h", b"1")
        await harness.publisher.put(prefix + "h", b"2")
        await harness.publisher.put(prefix + "h", b"3")
        it = harness.source.watch([prefix], r1)
        try:
            changes = await collect(it, 3)
        finally:
            await aclose(it)
        assert [c.value for c in changes] == [b"1", b"2", b"3"]
        revs = [c.revision for c in changes]
        assert revs == sorted(revs) and len(set(revs)) == 3 and revs[0] == r1

    async def test_watch_skips_keys_outside_prefixes(self, harness: Any, prefix: str) -> None:
        snap = await harness.source.snapshot([prefix + "in/"])
        it = harness.source.watch([prefix + "in/"], snap.revision + 1)
        try:
            await harness.publisher.put(prefix + "out/1", b"x")
            await harness.publisher.put(prefix + "in/1", b"y")
            changes = await collect(it, 1)
        finally:
            await aclose(it)
        assert [c.key for c in changes] == [prefix + "in/1"]

    async def test_watch_merges_several_prefixes_in_revision_order(
        self, harness: Any, prefix: str
    ) -> None:
        snap = await harness.source.snapshot([prefix + "a/", prefix + "b/"])
        it = harness.source.watch([prefix + "a/", prefix + "b/"], snap.revision + 1)
        try:
            expected = []
            for i in range(6):
                key = prefix + ("a/" if i % 2 else "b/") + str(i)
                expected.append((key, await harness.publisher.put(key, b"%d" % i)))
            changes = await collect(it, 6)
        finally:
            await aclose(it)
        assert [(c.key, c.revision) for c in changes] == expected

    async def test_txn_changes_arrive_together(self, harness: Any, prefix: str) -> None:
        await harness.publisher.put(prefix + "t/gone", b"0")
        snap = await harness.source.snapshot([prefix])
        it = harness.source.watch([prefix], snap.revision + 1)
        try:
            rev = await harness.publisher.txn(
                {prefix + "t/1": b"1", prefix + "t/2": b"2"}, [prefix + "t/gone"]
            )
            changes = await collect(it, 3)
        finally:
            await aclose(it)
        assert {(c.key, c.op) for c in changes} == {
            (prefix + "t/1", Op.PUT),
            (prefix + "t/2", Op.PUT),
            (prefix + "t/gone", Op.DELETE),
        }
        if harness.atomic_txn:
            assert {c.revision for c in changes} == {rev}
        else:
            assert max(c.revision for c in changes) == rev
        final = await harness.source.snapshot([prefix])
        assert sorted(kv.key for kv in final.kvs) == [prefix + "t/1", prefix + "t/2"]

    async def test_snapshot_of_many_keys_is_consistent(self, harness: Any, prefix: str) -> None:
        puts = {f"{prefix}bulk/{i:04d}": b"v%d" % i for i in range(300)}
        for i in range(0, 300, 50):
            chunk = dict(list(puts.items())[i : i + 50])
            await harness.publisher.txn(chunk)
        snap = await harness.source.snapshot([prefix + "bulk/"])
        assert {kv.key: kv.value for kv in snap.kvs} == puts
        assert all(0 < kv.revision <= snap.revision for kv in snap.kvs)

    async def test_revisions_only_grow(self, harness: Any, prefix: str) -> None:
        revs = [await harness.publisher.put(prefix + "g", b"%d" % i) for i in range(5)]
        assert revs == sorted(revs) and len(set(revs)) == 5
        snap = await harness.source.snapshot([prefix])
        assert snap.revision >= revs[-1]

    async def test_a_str_where_prefixes_are_expected_is_an_error(
        self, harness: Any, prefix: str
    ) -> None:
        """``snapshot("/a/")`` iterated would read the prefix ``/``: every key of the store."""
        await harness.publisher.put(prefix + "a/1", b"1")
        await harness.publisher.put(prefix + "secret", b"2")
        with pytest.raises(InvalidKeyError, match=r"prefixes must be a list.*not a single str"):
            await harness.source.snapshot(prefix + "a/")
        # at the call or at the first step (a str read as "/" replays all history at once)
        it = None
        with pytest.raises(InvalidKeyError, match=r"prefixes must be a list"):
            it = harness.source.watch(prefix + "a/", 1)
            async with asyncio.timeout(WAIT):
                await anext(it)
        if it is not None:
            await aclose(it)
