"""The embedded store: a SQLite key-value store with etcd-like revisions.

It is datasync's default northbound source. Every write transaction gets the next
store revision; each key keeps its create and mod revisions; a history table keeps
every change so that ``watch`` can start from any revision not yet compacted.

SQLite calls run on the event-loop thread: they are short (one indexed row per key),
and keeping one connection on one thread keeps SQLite's locking simple. Writers in
other processes sharing the file are noticed by polling (``poll_interval``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..api import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    Change,
    KeyVal,
    Op,
    Snapshot,
    SourceStats,
    StateListener,
    validate_key,
    validate_keys,
    validate_prefixes,
)
from ..errors import (
    ClosedError,
    CompactedError,
    InvalidKeyError,
    InvalidValueError,
    SourceUnavailableError,
    StoreResetError,
)

__all__ = ["DEFAULT_MAX_VALUE_BYTES", "LocalStore"]

log = logging.getLogger("datasync.transport.local")

#: the default ``max_value_bytes``: the plugins' limit
DEFAULT_MAX_VALUE_BYTES = MAX_VALUE_BYTES

# How long one SQLite call may wait for another process's lock. Calls run on the event
# loop, so this stays short; a store that stays locked is reported unavailable.
_BUSY_TIMEOUT = 0.05

# Revisions read per watch step, so a long catch-up never loads all history at once.
_WATCH_WINDOW = 4096

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    rev INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    key TEXT NOT NULL,
    op INTEGER NOT NULL,
    value BLOB,
    prev BLOB,
    PRIMARY KEY (rev, seq)
) WITHOUT ROWID;
"""


def _prefix_end(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _under(key: str, prefixes: Sequence[str]) -> bool:
    return any(key.startswith(p) for p in prefixes)


class LocalStore:
    """SQLite-backed store with revisions, transactions, snapshots and watches.

    ``path`` is a file (created with its directory) or ``":memory:"``. The store is
    both a ``Source`` and a ``Publisher``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = ":memory:",
        *,
        name: str = "local",
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        poll_interval: float = 0.5,
    ) -> None:
        self._name = name
        self._path = str(path)
        self.max_value_bytes = max_value_bytes
        self.poll_interval = poll_interval
        #: counters: ``bad_key``, rows whose key is not valid UTF-8 or not a valid key (written
        #: by another process or tool), skipped in snapshots and watches alike
        self.stats = SourceStats()
        self._bad_keys_logged: set[bytes] = set()
        try:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            self._db: sqlite3.Connection | None = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT
            )
            self._db.executescript(_SCHEMA)
            if self._path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._write():
                self._db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('revision', '0'), ('compacted', '0'),"
                    " ('store_id', ?)",
                    (uuid.uuid4().hex,),
                )
        except (sqlite3.Error, OSError) as exc:
            db = getattr(self, "_db", None)
            if db is not None:
                db.close()
            raise SourceUnavailableError(f"local store {self._path}: {exc}") from exc
        self._changed = asyncio.Event()
        self._closed = False
        self._file_id = self._stat_file()

    def _stat_file(self) -> tuple[int, int] | None:
        if self._path == ":memory:":
            return None
        st = os.stat(self._path)
        return (st.st_dev, st.st_ino)

    @contextlib.contextmanager
    def _db_errors(self, what: str) -> Iterator[None]:
        """Translate SQLite errors (locked, I/O, corrupt) into ``SourceUnavailableError``."""
        try:
            yield
        except sqlite3.Error as exc:
            raise SourceUnavailableError(f"local store {self._name}: {what}: {exc}") from exc

    # --- helpers ----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The source name shown in status and carried by its changes."""
        return self._name

    def add_state_listener(self, cb: StateListener) -> None:
        """Part of the ``Source`` contract: an embedded store has no connection to lose,
        so ``cb`` is never called."""

    @property
    def path(self) -> str:
        return self._path

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise ClosedError(f"local store {self._name} is closed")
        return self._db

    def _write(self) -> _WriteTxn:
        return _WriteTxn(self._conn())

    def _meta(self, name: str) -> str:
        row = self._conn().execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return str(row[0])

    def _notify(self) -> None:
        self._changed.set()

    @property
    def revision(self) -> int:
        """The store's current revision (0 when nothing was ever written)."""
        return int(self._meta("revision"))

    @property
    def store_id(self) -> str:
        """A random id made when the store file was created; a change means a reset."""
        return self._meta("store_id")

    @property
    def compacted_revision(self) -> int:
        """History at or below this revision is gone."""
        return int(self._meta("compacted"))

    def _check_value(self, key: str, value: bytes) -> bytes:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise InvalidValueError(key, f"values are bytes, got {type(value).__name__}")
        if len(value) > self.max_value_bytes:
            raise InvalidValueError(
                key, f"value of {len(value)} bytes exceeds max_value_bytes={self.max_value_bytes}"
            )
        return bytes(value)

    # --- publisher --------------------------------------------------------------------------

    async def put(self, key: str, value: bytes) -> int:
        """Put one key; returns the new store revision."""
        return self.txn_sync({key: value})

    async def delete(self, key: str) -> int:
        """Delete one key; returns the revision (unchanged when the key did not exist)."""
        return self.txn_sync({}, (key,))

    async def txn(self, puts: Mapping[str, bytes], deletes: Iterable[str] = ()) -> int:
        """Several puts and deletes at one revision; returns it."""
        return self.txn_sync(puts, deletes)

    def txn_sync(self, puts: Mapping[str, bytes], deletes: Iterable[str] = ()) -> int:
        """The synchronous form of ``txn``, for scripts and the CLI."""
        if not isinstance(puts, Mapping):
            raise InvalidKeyError(
                repr(puts)[:80],
                f"puts must be a mapping of key to value, got {type(puts).__name__}",
            )
        deletes = validate_keys(deletes, "deletes")
        checked = {validate_key(k): self._check_value(k, v) for k, v in puts.items()}
        for k in deletes:
            if k in checked:
                raise InvalidKeyError(k, "key is both put and deleted in one transaction")
        with self._db_errors("write"):
            return self._apply_txn(checked, deletes)

    def _apply_txn(self, checked: dict[str, bytes], deletes: list[str]) -> int:
        db = self._conn()
        with self._write():
            rev = int(self._meta("revision")) + 1
            seq = 0
            for key, value in checked.items():
                row = db.execute(
                    "SELECT value, create_rev, version FROM kv WHERE key = ?", (key,)
                ).fetchone()
                prev, create_rev, version = (row[0], row[1], row[2] + 1) if row else (None, rev, 1)
                db.execute(
                    "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?)",
                    (key, value, create_rev, rev, version),
                )
                db.execute(
                    "INSERT INTO history VALUES (?, ?, ?, ?, ?, ?)",
                    (rev, seq, key, int(Op.PUT), value, prev),
                )
                seq += 1
            for key in deletes:
                row = db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
                if row is None:
                    continue  # like etcd: deleting a missing key is no change
                db.execute("DELETE FROM kv WHERE key = ?", (key,))
                db.execute(
                    "INSERT INTO history VALUES (?, ?, ?, ?, NULL, ?)",
                    (rev, seq, key, int(Op.DELETE), row[0]),
                )
                seq += 1
            if seq == 0:
                return rev - 1
            db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (str(rev),))
        self._notify()
        return rev

    async def get(self, key: str) -> KeyVal | None:
        """The current value of one key."""
        with self._db_errors("read"):
            row = (
                self._conn()
                .execute("SELECT value, mod_rev FROM kv WHERE key = ?", (validate_key(key),))
                .fetchone()
            )
        return KeyVal(key, bytes(row[0]), int(row[1])) if row else None

    def compact(self, revision: int) -> None:
        """Forget history at or below ``revision`` (watches from there raise CompactedError)."""
        with self._db_errors("compact"), self._write():
            current = int(self._meta("revision"))
            revision = min(revision, current)
            self._conn().execute("DELETE FROM history WHERE rev <= ?", (revision,))
            self._conn().execute(
                "UPDATE meta SET value = ? WHERE name = 'compacted'",
                (str(max(revision, self.compacted_revision)),),
            )

    # --- source -----------------------------------------------------------------------------

    async def snapshot(self, prefixes: Sequence[str]) -> Snapshot:
        """Every key under ``prefixes`` at one revision (one read transaction)."""
        prefixes = validate_prefixes(prefixes)
        db = self._conn()
        with self._db_errors("snapshot"), _ReadTxn(db):
            rev = int(self._meta("revision"))
            store_id = self._meta("store_id")
            kvs: dict[str, KeyVal] = {}
            for p in prefixes:
                for key, value, mod in self._snapshot_rows(db, p, rev):
                    kvs[key] = KeyVal(key, bytes(value), int(mod))
        return Snapshot(revision=rev, kvs=list(kvs.values()), store_id=store_id)

    def _snapshot_rows(self, db: sqlite3.Connection, prefix: str, rev: int) -> list[Any]:
        """The rows under ``prefix`` whose key is a valid key; the others are skipped and
        counted (another process or tool wrote them)."""
        span = (prefix, _prefix_end(prefix))
        try:
            rows = db.execute(
                "SELECT key, value, mod_rev FROM kv WHERE key >= ? AND key < ? ORDER BY key", span
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if "decode" not in str(exc):  # "Could not decode to UTF-8 column 'key'"
                raise
            rows = []  # again with the keys as bytes, so one bad row does not fail them all
            for raw, value, mod in db.execute(
                "SELECT CAST(key AS BLOB), value, mod_rev FROM kv"
                " WHERE key >= ? AND key < ? ORDER BY key",
                span,
            ):
                key = self._key_of(raw, rev)
                if key is not None:
                    rows.append((key, value, mod))
            return rows
        keys = [r[0] for r in rows]
        # every key checked at once in C loops (non-empty, no NUL, no blank ends, short)
        if (
            all(keys)
            and "\0" not in "".join(keys)
            and list(map(str.strip, keys)) == keys
            and max(map(len, keys), default=0) * 4 <= MAX_KEY_BYTES
        ):
            return rows
        return [r for r in rows if self._key_of(r[0].encode(), rev) is not None]

    def watch(self, prefixes: Sequence[str], start_revision: int) -> AsyncIterator[list[Change]]:
        """Changes under ``prefixes`` from ``start_revision`` on, one list per revision.

        The store identity is taken now, so a store replaced before the first read is
        still reported as a reset.
        """
        checked = validate_prefixes(prefixes)
        return self._watch(checked, max(start_revision, 1), self.store_id)

    async def _watch(
        self, prefixes: list[str], next_rev: int, store_id: str
    ) -> AsyncIterator[list[Change]]:
        file_id = self._file_id
        while True:
            if self._closed:
                return
            with self._db_errors("watch"):
                self._check_same_file(file_id)
                # One read transaction: meta checks and history agree even while another
                # process writes or compacts.
                with _ReadTxn(self._conn()):
                    current = self._check_watch_position(store_id, next_rev)
                    upto = min(current, next_rev + _WATCH_WINDOW - 1)
                    rows = (
                        self._conn()
                        .execute(
                            "SELECT rev, CAST(key AS BLOB), op, value, prev FROM history"
                            " WHERE rev >= ? AND rev <= ? ORDER BY rev, seq",
                            (next_rev, upto),
                        )
                        .fetchall()
                        if upto >= next_rev
                        else []
                    )
            if upto < next_rev:
                await self._wait_for_change()
                continue
            batch: list[Change] = []
            for rev, raw, op, value, prev in rows:
                if batch and batch[0].revision != rev:
                    yield batch
                    batch = []
                key = self._key_of(raw, rev)
                if key is not None and _under(key, prefixes):
                    batch.append(
                        Change(
                            key,
                            Op(op),
                            None if value is None else bytes(value),
                            int(rev),
                            None if prev is None else bytes(prev),
                            self._name,
                        )
                    )
            if batch:
                yield batch
            next_rev = upto + 1

    def _key_of(self, raw: bytes, revision: int) -> str | None:
        """The key of a row read as bytes, or None (counted, logged once per key) when it is
        not valid UTF-8 or not a valid key: another process or tool wrote it."""
        try:
            return validate_key(raw.decode())
        except (UnicodeDecodeError, InvalidKeyError) as exc:
            self.stats.bad_key += 1
            if raw not in self._bad_keys_logged and len(self._bad_keys_logged) < 100:
                self._bad_keys_logged.add(raw)
                log.warning(
                    "local store %s: skipped bad key %r at revision %d: %s",
                    self._name,
                    raw[:80],
                    revision,
                    exc,
                )
            return None

    def _check_same_file(self, file_id: tuple[int, int] | None) -> None:
        if file_id is None:
            return
        try:
            now = self._stat_file()
        except FileNotFoundError:
            raise StoreResetError(f"local store {self._name}: store file was removed") from None
        if now != file_id:
            raise StoreResetError(f"local store {self._name}: store file was replaced")

    def _check_watch_position(self, store_id: str, next_rev: int) -> int:
        """The current revision, after checking that history from ``next_rev`` is intact."""
        if self._meta("store_id") != store_id:
            raise StoreResetError(f"local store {self._name}: store id changed")
        current = int(self._meta("revision"))
        if current < next_rev - 1:
            raise StoreResetError(
                f"local store {self._name}: revision went back to {current} "
                f"after {next_rev - 1} was delivered"
            )
        compacted = int(self._meta("compacted"))
        if next_rev <= compacted:
            raise CompactedError(
                f"local store {self._name}: revision {next_rev} is compacted "
                f"(compacted through {compacted})",
                compacted,
            )
        return current

    async def _wait_for_change(self) -> None:
        self._changed.clear()
        try:
            async with asyncio.timeout(self.poll_interval):
                await self._changed.wait()
        except TimeoutError:
            pass  # poll: another process may have written to the file

    async def close(self) -> None:
        """Close the database; running watches end."""
        self._closed = True
        self._notify()
        if self._db is not None:
            self._db.close()
            self._db = None


class _WriteTxn:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


class _ReadTxn(_WriteTxn):
    def __enter__(self) -> None:
        self._db.execute("BEGIN")
