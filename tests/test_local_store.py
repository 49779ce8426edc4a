"""The embedded SQLite store: the source contract plus what is specific to it."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from datasync.api import Op
from datasync.errors import (
    ClosedError,
    CompactedError,
    InvalidKeyError,
    InvalidValueError,
    SourceUnavailableError,
    StoreResetError,
)
from datasync.transport.local import LocalStore
from tests.source_contract import SourceContract, aclose, collect


@dataclass
class LocalHarness:
    source: LocalStore
    publisher: LocalStore
    atomic_txn: bool = True
    prev_values: bool = True


@pytest.fixture(params=["memory", "file"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LocalStore]:
    path = ":memory:" if request.param == "memory" else tmp_path / "data" / "store.db"
    s = LocalStore(path, poll_interval=0.05)
    yield s
    await s.close()


class TestLocalContract(SourceContract):
    @pytest.fixture
    def harness(self, store: LocalStore) -> LocalHarness:
        return LocalHarness(store, store)


async def test_revision_counts_transactions_and_keys_keep_mod_revisions(store: LocalStore) -> None:
    assert store.revision == 0
    r1 = await store.txn({"/a": b"1", "/b": b"2"})
    r2 = await store.put("/a", b"3")
    assert (r1, r2) == (1, 2)
    assert await store.get("/a") == ("/a", b"3", 2)
    assert await store.get("/b") == ("/b", b"2", 1)


async def test_deleting_a_missing_key_changes_nothing(store: LocalStore) -> None:
    await store.put("/a", b"1")
    assert await store.delete("/missing") == 1
    assert store.revision == 1


async def test_bad_input_names_the_key_and_changes_nothing(store: LocalStore) -> None:
    await store.put("/ok", b"1")
    with pytest.raises(InvalidKeyError, match="empty key"):
        await store.put("", b"x")
    with pytest.raises(InvalidValueError, match=r"'/big'.*max_value_bytes"):
        await store.txn({"/fine": b"1", "/big": b"x" * (store.max_value_bytes + 1)})
    with pytest.raises(InvalidValueError, match="'/str'"):
        await store.put("/str", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError, match="both put and deleted"):
        await store.txn({"/k": b"1"}, ["/k"])
    assert store.revision == 1
    snap = await store.snapshot(["/"])
    assert [kv.key for kv in snap.kvs] == ["/ok"]


async def test_a_str_where_a_list_of_keys_is_expected_deletes_nothing(store: LocalStore) -> None:
    """``txn({}, "/a/1")`` iterated would delete the keys ``/``, ``a``, ``1``: ``a`` included."""
    await store.txn({"a": b"unrelated", "/a/1": b"1"})
    with pytest.raises(InvalidKeyError, match=r"deletes must be a list.*not a single str"):
        await store.txn({}, "/a/1")
    with pytest.raises(InvalidKeyError, match=r"deletes must be a list"):
        store.txn_sync({"/b": b"2"}, b"/a/1")  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError, match=r"puts must be a mapping"):
        await store.txn([("/b", b"2")])  # type: ignore[arg-type]
    assert store.revision == 1
    snap = await store.snapshot(["/", "a"])
    assert sorted(kv.key for kv in snap.kvs) == ["/a/1", "a"]


async def test_keys_longer_than_the_limit_are_refused_naming_them(store: LocalStore) -> None:
    from datasync.api import MAX_KEY_BYTES

    fits = "/k/" + "x" * (MAX_KEY_BYTES - 3)
    await store.put(fits, b"1")
    long = "/k/" + "y" * (10 << 20)  # 10 MB
    with pytest.raises(InvalidKeyError, match=rf"'/k/yyy.*exceeds MAX_KEY_BYTES={MAX_KEY_BYTES}"):
        await store.put(long, b"1")
    with pytest.raises(InvalidKeyError, match="exceeds MAX_KEY_BYTES") as err:
        await store.txn({}, ["/k/" + "é" * MAX_KEY_BYTES])  # 2 bytes per character
    assert len(str(err.value)) < 300  # one readable line, not the key
    with pytest.raises(InvalidKeyError, match="exceeds MAX_KEY_BYTES"):
        await store.snapshot(["/" + "p" * MAX_KEY_BYTES])
    assert store.revision == 1
    assert [kv.key for kv in (await store.snapshot(["/k/"])).kvs] == [fits]


async def test_a_non_utf8_key_from_another_writer_is_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = LocalStore(path, poll_interval=0.05)
    try:
        await store.put("/a/good", b"1")
        watch = store.watch(["/a/"], store.revision + 1)
        # another process writes a row whose key is not UTF-8 (and then a good one)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute(
            "INSERT INTO kv VALUES (CAST(? AS TEXT), ?, 2, 2, 1)", (b"/a/\xff\xfe", b"bad")
        )
        other.execute(
            "INSERT INTO history VALUES (2, 0, CAST(? AS TEXT), 1, ?, NULL)",
            (b"/a/\xff\xfe", b"bad"),
        )
        other.execute("INSERT INTO kv VALUES ('/a/later', ?, 3, 3, 1)", (b"3",))
        other.execute("INSERT INTO history VALUES (3, 0, '/a/later', 1, ?, NULL)", (b"3",))
        other.execute("UPDATE meta SET value = '3' WHERE name = 'revision'")
        other.execute("COMMIT")
        other.close()
        snap = await store.snapshot(["/a/"])
        assert [kv.key for kv in snap.kvs] == ["/a/good", "/a/later"]
        assert snap.revision == 3
        assert store.stats.bad_key == 1
        changes = await collect(watch, 1)
        assert [(c.key, c.revision) for c in changes] == [("/a/later", 3)]
        assert store.stats.bad_key == 2
        await aclose(watch)
    finally:
        await store.close()


async def test_an_invalid_utf8_key_from_another_writer_is_skipped_and_counted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    store = LocalStore(path, poll_interval=0.05)
    try:
        await store.put("/a/good", b"1")
        other = sqlite3.connect(path, isolation_level=None)
        for bad in ("/a/blank ", "/a/nul\x00", "/a/" + "x" * 5000):
            other.execute("INSERT INTO kv VALUES (?, ?, 1, 1, 1)", (bad, b"bad"))
        other.close()
        snap = await store.snapshot(["/a/"])
        assert [kv.key for kv in snap.kvs] == ["/a/good"]
        assert store.stats.bad_key == 3
    finally:
        await store.close()


async def test_watch_from_compacted_revision_raises(store: LocalStore) -> None:
    for i in range(5):
        await store.put("/c", b"%d" % i)
    store.compact(3)
    it = store.watch(["/"], 2)
    with pytest.raises(CompactedError) as info:
        await anext(it)
    assert info.value.compact_revision == 3
    it = store.watch(["/"], 4)
    changes = await collect(it, 2)
    assert [c.value for c in changes] == [b"3", b"4"]
    await aclose(it)


async def test_replaced_file_is_a_store_reset(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = LocalStore(path, poll_interval=0.02)
    await store.put("/a", b"1")
    it = store.watch(["/"], 2)
    # Another process re-creates the store from scratch under the same path.
    other = sqlite3.connect(path)
    other.execute("UPDATE meta SET value = 'fresh' WHERE name = 'store_id'")
    other.commit()
    other.close()
    with pytest.raises(StoreResetError, match="store id changed"):
        await anext(it)
    await store.close()


async def test_writes_from_another_process_are_polled(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    agent_side = LocalStore(path, poll_interval=0.02)
    writer = LocalStore(path)  # another connection: its writes do not notify ours
    it = agent_side.watch(["/"], 1)
    rev = writer.txn_sync({"/from/cli": b"1"})
    changes = await collect(it, 1)
    assert [(c.key, c.op, c.revision) for c in changes] == [("/from/cli", Op.PUT, rev)]
    await aclose(it)
    await writer.close()
    await agent_side.close()


async def test_data_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    s = LocalStore(path)
    await s.put("/keep", b"1")
    store_id = s.store_id
    await s.close()
    s = LocalStore(path)
    assert (await s.get("/keep")) == ("/keep", b"1", 1)
    assert s.store_id == store_id
    await s.close()
    with pytest.raises(ClosedError):
        await s.get("/keep")


async def test_file_removed_and_recreated_is_a_store_reset(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = LocalStore(path, poll_interval=0.02)
    await store.put("/a", b"1")
    it = store.watch(["/"], 2)
    path.unlink()
    fresh = LocalStore(path)  # a new store file at the same path
    await fresh.put("/b", b"1")
    with pytest.raises(StoreResetError, match="replaced"):
        await anext(it)
    await fresh.close()
    await store.close()


async def test_locked_store_is_unavailable_not_a_frozen_loop(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = LocalStore(path)
    await store.put("/a", b"1")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(SourceUnavailableError, match="local store local: write"):
            await store.put("/a", b"2")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await store.get("/a") == ("/a", b"1", 1)
    await store.close()


async def test_long_catch_up_is_read_in_windows(store: LocalStore) -> None:
    for i in range(0, 9000, 100):
        await store.txn({f"/w/{j}": b"x" for j in range(i, i + 100)})
    for i in range(5000):
        await store.put("/w/hot", b"%d" % i)
    it = store.watch(["/w/"], 1)
    changes = await collect(it, 9000 + 5000)
    await aclose(it)
    revs = [c.revision for c in changes]
    assert revs == sorted(revs) and revs[0] == 1 and revs[-1] == store.revision
    assert changes[-1].value == b"4999"
