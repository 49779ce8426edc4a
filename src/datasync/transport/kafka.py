"""Kafka as a northbound source: one config topic partition read as a key-value log.

Layout: records keyed by the config key (UTF-8), the value is the JSON config, an
empty or null value is a tombstone (delete). The partition offset is the revision:
``revision = offset + 1``, so revisions start at 1 and 0 means "nothing yet".

- ``snapshot`` reads the partition from its beginning up to the high watermark (the
  end-of-partition signal carries it): last value per key wins, tombstoned keys are
  absent, the snapshot revision is the high watermark (last offset + 1).
- ``watch(start_revision)`` tails from offset ``start_revision - 1``.

Choices forced by Kafka and by the test broker (tansu):

- ``assign()`` only, never consumer groups, and offsets are never committed to the
  broker: the orchestrator persists the applied revision and resumes with
  ``watch(start_revision=applied + 1)``.
- "Caught up" and "log end" come from the fetch high watermark (cached from fetch
  responses). tansu's ListOffsets(latest) answers the base offset of the last batch
  plus one, which is wrong for multi-record batches, so it is never used.
- A broker that lost its log (tansu keeps it in memory; a real cluster restored or a
  topic deleted and re-created) shows up as a high watermark below our position, as
  an offset out of range, or as a new topic id: all raise ``StoreResetError``. The
  consumer runs with ``auto.offset.reset=error``: it never jumps to "latest" silently.
- A "transaction" of the publisher is several records, not atomic: tansu accepts the
  Kafka transaction API but shows aborted records to ``read_committed`` readers, so
  transactions would buy nothing. Each record gets its own revision.
- A producer that resends a record (retry after a lost ack without idempotence)
  writes it at a NEW offset: the source yields it again as a change with a new
  revision and the same value. Idempotency is the revision filter's and the
  plugins' job (compare values), not the source's.
- Revisions can have gaps (transaction markers take offsets); they only grow.
- A snapshot reads from the earliest offset the broker still has. Give the config
  topic ``cleanup.policy=compact`` on a real cluster (tansu has no compaction, its log
  only grows): with time-based retention, keys whose last record expired vanish.

confluent-kafka is blocking and poll-driven: every consumer lives on its own
one-thread executor (librdkafka handles are not to be shared across threads
concurrently), polled with short timeouts, so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, TypeVar

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from ..api import (
    MAX_VALUE_BYTES,
    Change,
    KeyVal,
    Op,
    Snapshot,
    SourceState,
    SourceStats,
    validate_key,
    validate_prefixes,
)
from ..backoff import Backoff
from ..errors import (
    ClosedError,
    DatasyncError,
    InvalidValueError,
    SourceError,
    SourceUnavailableError,
    StoreResetError,
)
from ._state import StateListener, StateReporter

__all__ = [
    "DEFAULT_MAX_VALUE_BYTES",
    "KafkaLogTruncatedError",
    "KafkaOffsetOutOfRangeError",
    "KafkaPublisher",
    "KafkaSource",
    "KafkaSourceError",
    "KafkaSourceStats",
    "KafkaTopicMissingError",
    "KafkaTopicRecreatedError",
    "StateListener",
]

log = logging.getLogger(__name__)
# librdkafka's own log lines go here (through the client's `logger` option), not stderr.
_rdlog = logging.getLogger(__name__ + ".librdkafka")

#: the default ``max_value_bytes``: the plugins' limit
DEFAULT_MAX_VALUE_BYTES = MAX_VALUE_BYTES

T = TypeVar("T")


# --- errors --------------------------------------------------------------------------------


class KafkaSourceError(SourceError):
    """A Kafka error that retrying will not fix; ``code`` is librdkafka's error code."""

    def __init__(self, message: str, code: int | None = None) -> None:
        self.code = code
        super().__init__(message)


class KafkaTopicMissingError(SourceUnavailableError):
    """The config topic (or its partition) does not exist on the broker."""


class KafkaLogTruncatedError(StoreResetError):
    """Our position is past the log end: the broker lost its log (tansu restart, restore)."""


class KafkaOffsetOutOfRangeError(StoreResetError):
    """The broker no longer has the offset we read from (retention, truncation)."""


class KafkaTopicRecreatedError(StoreResetError):
    """The topic was deleted (and maybe re-created): its topic id changed or it is gone."""


_UNAVAILABLE = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError._WAIT_COORD,
        KafkaError._DESTROY_BROKER,  # a request in flight when the connection died
        KafkaError._NODE_UPDATE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.NETWORK_EXCEPTION,
    }
)
_MISSING = frozenset(
    {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION}
)
_OUT_OF_RANGE = frozenset({KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET})


def _translate(exc: BaseException | KafkaError, what: str) -> DatasyncError:
    """Map a confluent-kafka error to a datasync error: the only place that does it."""
    if isinstance(exc, DatasyncError):
        return exc
    kerr: KafkaError | None = None
    if isinstance(exc, KafkaError):
        kerr = exc
    elif isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        kerr = exc.args[0]
    if kerr is None:
        # Futures of the admin client time out with concurrent.futures.TimeoutError.
        if isinstance(exc, TimeoutError | OSError):
            return SourceUnavailableError(f"{what}: {exc!r}")
        return KafkaSourceError(f"{what}: {exc!r}")
    code = kerr.code()
    msg = f"{what}: {kerr.str()} ({kerr.name()})"
    if code in _UNAVAILABLE:
        return SourceUnavailableError(msg)
    if code in _MISSING:
        return KafkaTopicMissingError(msg)
    if code in _OUT_OF_RANGE:
        return KafkaOffsetOutOfRangeError(msg)
    if kerr.retriable() and not kerr.fatal():
        return SourceUnavailableError(msg)
    return KafkaSourceError(msg, code)


@contextlib.contextmanager
def _kafka_errors(what: str) -> Iterator[None]:
    """Raise confluent-kafka exceptions (and admin future timeouts) as datasync errors."""
    try:
        yield
    except (KafkaException, TimeoutError, OSError) as exc:
        raise _translate(exc, what) from exc


# --- stats ---------------------------------------------------------------------------------


@dataclass(slots=True)
class KafkaSourceStats(SourceStats):
    """``SourceStats`` of a ``KafkaSource`` and its own counters; dropped records are also
    logged with their key."""

    #: data records read (snapshot and watch)
    records: int = 0
    #: transitions to DISCONNECTED
    disconnects: int = 0

    #: the counters' names before they were shared with the other sources
    _aliases: ClassVar[dict[str, str]] = {
        "dropped_bad_key": "bad_key",
        "dropped_outside_prefix": "outside_prefix",
    }

    def as_dict(self) -> dict[str, int]:
        d = asdict(self)
        d.update((old, d[new]) for old, new in self._aliases.items())
        return d

    @property
    def dropped_bad_key(self) -> int:
        """The old name of ``bad_key``."""
        return self.bad_key

    @property
    def dropped_outside_prefix(self) -> int:
        """The old name of ``outside_prefix``."""
        return self.outside_prefix


# --- the thread-confined consumer ----------------------------------------------------------


class _Reader:
    """One assigned partition consumer, every call on its own single thread."""

    def __init__(self, conf: dict[str, Any], topic: str, partition: int) -> None:
        self._conf = conf
        self._topic = topic
        self._partition = partition
        self._consumer: Consumer | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="datasync-kafka")
        # error_cb runs on the executor thread during consume(); drained on the loop side.
        self.errors: deque[KafkaError] = deque()
        self._closing = False

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _open(self, offset: int) -> None:
        conf = dict(self._conf)
        conf["error_cb"] = self.errors.append
        self._consumer = Consumer(conf)
        self._consumer.assign([TopicPartition(self._topic, self._partition, offset)])

    async def open(self, offset: int) -> None:
        with _kafka_errors(f"assigning {self._topic}[{self._partition}]@{offset}"):
            await self._call(self._open, offset)

    def _fetch(self, batch: int, wait: float) -> tuple[list[Message], int]:
        assert self._consumer is not None
        # consume() waits for a full batch or the whole timeout: take what is there, and
        # block in poll() (returns on the first message) only when nothing is.
        msgs = self._consumer.consume(batch, 0)
        if not msgs:
            first = self._consumer.poll(wait)
            if first is not None:
                msgs = [first, *self._consumer.consume(batch - 1, 0)] if batch > 1 else [first]
        tp = TopicPartition(self._topic, self._partition)
        _lo, hi = self._consumer.get_watermark_offsets(tp, cached=True)
        return msgs, hi

    async def fetch(self, batch: int, wait: float) -> tuple[list[Message], int]:
        """Up to ``batch`` messages and the cached fetch high watermark (< 0: none yet)."""
        with _kafka_errors(f"reading {self._topic}[{self._partition}]"):
            return await self._call(self._fetch, batch, wait)

    def take_errors(self) -> list[KafkaError]:
        errs = []
        with contextlib.suppress(IndexError):
            while True:
                errs.append(self.errors.popleft())
        return errs

    def _close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            consumer.close()

    async def close(self) -> None:
        """Close the consumer after any call in flight (shielded: runs even when cancelled)."""
        if self._closing:
            return
        self._closing = True
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._executor, self._close)
        try:
            await asyncio.shield(fut)
        except Exception as exc:  # closing is best effort
            log.debug("kafka consumer close failed: %r", exc)
        finally:
            self._executor.shutdown(wait=False)


_BAD_KEY, _OUTSIDE = 0, 1
_new_tuple = tuple.__new__
_KEY_CACHE_SIZE = 1 << 17
_LOGGED_KEYS = 10_000  # oversized keys remembered to log each once


def _under(key: str, prefixes: Sequence[str]) -> bool:
    return any(key.startswith(p) for p in prefixes)  # no prefixes: no key


# --- the source ----------------------------------------------------------------------------


class KafkaSource(StateReporter):
    """A ``datasync.api.Source`` reading one partition of a Kafka config topic.

    ``config`` adds or overrides librdkafka consumer/admin properties. Keys outside the
    watched prefixes (empty ``prefixes`` means no key: an empty snapshot, a watch that
    yields nothing), null, non-UTF-8, invalid or over-long (``MAX_KEY_BYTES``) keys are
    dropped, counted in ``stats`` and logged with the key: a dropped record leaves the key
    at its previous value.
    ``max_value_bytes`` is a threshold for counting and logging only: a larger value is
    delivered unchanged, counted in ``stats.oversized`` and logged once per key; the size
    limit is enforced where values are validated (the key becomes INVALID there).

    An unreachable broker is retried for ever (``backoff``: from ``backoff_initial``
    doubling to ``backoff_max``, each delay scaled by a random factor in [0.5, 1]; state
    ``DISCONNECTED``) unless ``give_up_after`` seconds are set, after which
    ``SourceUnavailableError`` is raised. A topic that does not exist yet is waited for
    (state ``STALLED``) the same way; a topic that existed and vanished or changed its
    id, and a log that went back below our position, raise ``StoreResetError``.

    ``store_id`` (``"<topic>:<topic id>"``) is set by ``snapshot``; pass the persisted
    one to the constructor so that a restarted agent resuming with ``watch`` notices a
    topic re-created while it was down.
    """

    def __init__(
        self,
        name: str = "kafka",
        bootstrap: str = "127.0.0.1:9092",
        topic: str = "datasync-config",
        partition: int = 0,
        *,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        batch_size: int = 1000,
        poll_timeout: float = 0.2,
        check_interval: float = 5.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        give_up_after: float | None = None,
        request_timeout: float = 5.0,
        fetch_wait_ms: int = 100,
        track_prev_values: bool = False,
        store_id: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if partition < 0:
            raise ValueError(f"partition must be >= 0, got {partition}")
        if max_value_bytes <= 0 or batch_size <= 0:
            raise ValueError("max_value_bytes and batch_size must be positive")
        Backoff.check_range(
            f"KafkaSource {name}",
            ("backoff_initial", backoff_initial),
            ("backoff_max", backoff_max),
        )
        self._name = name
        self._topic = topic
        self._partition = partition
        self._max_value_bytes = max_value_bytes
        self._oversized_logged: set[str] = set()
        self._batch = batch_size
        self._poll_timeout = poll_timeout
        self._check_interval = check_interval
        #: the delays between attempts to reach the broker
        self.backoff = Backoff(backoff_initial, 2.0, backoff_max, jitter=0.5)
        self._give_up_after = give_up_after
        self._request_timeout = request_timeout
        self._track_prev = track_prev_values
        self._store_id = store_id
        self._closed = False
        self._init_state("kafka", name, log)
        self._readers: set[_Reader] = set()
        self.stats = KafkaSourceStats()
        common: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "client.id": f"datasync-{name}",
            "reconnect.backoff.ms": max(1, int(backoff_initial * 1000)),
            "reconnect.backoff.max.ms": max(1, int(backoff_max * 1000)),
            "socket.connection.setup.timeout.ms": max(1000, int(request_timeout * 1000)),
            "logger": _rdlog,
        }
        self._admin_conf = {**common, **(config or {})}
        self._consumer_conf: dict[str, Any] = {
            **common,
            # A group id is mandatory for the client, but no group is ever joined:
            # partitions are assign()ed and offsets are never committed to the broker.
            "group.id": f"datasync-{name}-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "error",
            "allow.auto.create.topics": False,
            # The broker holds an idle fetch this long: it bounds the tail latency on
            # brokers that do not answer a waiting fetch early (tansu), at one request
            # per wait while idle.
            "fetch.wait.max.ms": fetch_wait_ms,
            "topic.metadata.refresh.interval.ms": max(1000, int(check_interval * 1000)),
            **(config or {}),
        }
        self._admin: AdminClient | None = None

    # -- identity and state

    @property
    def name(self) -> str:
        """The source name, stamped on every change."""
        return self._name

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def partition(self) -> int:
        return self._partition

    @property
    def store_id(self) -> str | None:
        """``"<topic>:<topic id>"`` of the last snapshot (or as given), None before."""
        return self._store_id

    def _set_state(self, state: SourceState, reason: str) -> None:
        if state != self._state and state == SourceState.DISCONNECTED and not self._closed:
            self.stats.disconnects += 1
        super()._set_state(state, reason)

    # -- topic metadata

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient(self._admin_conf)
        return self._admin

    async def _topic_id(self) -> str:
        """The topic id, after checking our partition exists; raises datasync errors."""
        what = f"describing topic {self._topic!r}"
        try:
            admin = self._admin_client()
        except KafkaException as exc:  # a bad client property in ``config``
            raise _translate(exc, what) from exc
        try:
            futs = admin.describe_topics(
                TopicCollection([self._topic]), request_timeout=self._request_timeout
            )
            fut = futs[self._topic]
            async with asyncio.timeout(self._request_timeout + 1.0):
                desc = await asyncio.wrap_future(fut)
        except (KafkaException, TimeoutError, OSError) as exc:
            raise _translate(exc, what) from exc
        finally:
            # Serve the admin client's log queue (it has no background poller of its own).
            admin.poll(0)
        if self._partition >= len(desc.partitions):
            raise KafkaTopicMissingError(
                f"{what}: partition {self._partition} does not exist "
                f"(topic has {len(desc.partitions)})"
            )
        return f"{self._topic}:{desc.topic_id}"

    async def _await_topic(self, deadline: float | None, vanished_is_reset: bool) -> str:
        """Describe the topic, retrying unavailability with backoff until ``deadline``.

        A missing topic is waited for (``STALLED``), unless ``vanished_is_reset`` and we
        knew it before: then its log is gone with it and that is a store reset.
        """
        attempt = 0
        while True:
            self._check_open()
            try:
                store_id = await self._topic_id()
            except KafkaTopicMissingError as exc:
                if vanished_is_reset and self._store_id is not None:
                    self.stats.store_resets += 1
                    raise KafkaTopicRecreatedError(
                        f"topic {self._topic!r} vanished: {exc}"
                    ) from exc
                self._set_state(SourceState.STALLED, str(exc))
            except SourceUnavailableError as exc:
                self._set_state(SourceState.DISCONNECTED, str(exc))
            else:
                self._set_state(SourceState.CONNECTED, "topic described")
                return store_id
            if deadline is not None and time.monotonic() >= deadline:
                raise SourceUnavailableError(
                    f"kafka source {self._name}: gave up after {self._give_up_after}s: "
                    f"{self._state_reason}"
                )
            attempt += 1
            await asyncio.sleep(self.backoff.delay(attempt))

    def _deadline(self) -> float | None:
        return None if self._give_up_after is None else time.monotonic() + self._give_up_after

    def _check_store(self, store_id: str) -> None:
        if self._store_id is not None and store_id != self._store_id:
            self.stats.store_resets += 1
            raise KafkaTopicRecreatedError(
                f"topic {self._topic!r} was re-created: id {self._store_id} -> {store_id}"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"kafka source {self._name} is closed")

    # -- records

    def _classify(self, raw: str | bytes | None, prefixes: Sequence[str]) -> str | int:
        """The key of a record, or why it is dropped (``_BAD_KEY``, ``_OUTSIDE``)."""
        if raw is None:
            return _BAD_KEY
        try:
            key = validate_key(raw.decode() if isinstance(raw, bytes) else raw)
        except (UnicodeDecodeError, ValueError):
            return _BAD_KEY
        return key if _under(key, prefixes) else _OUTSIDE

    def _decode(
        self, msg: Message, prefixes: Sequence[str], keys: dict[Any, str | int]
    ) -> tuple[str, bytes | None] | None:
        """(key, value or None for a tombstone) of a data record, or None when dropped.

        ``keys`` caches the verdict per raw key: config topics repeat a few keys often.
        """
        self.stats.records += 1
        raw = msg.key()
        verdict = keys.get(raw)
        if verdict is None:
            verdict = self._classify(raw, prefixes)
            if len(keys) < _KEY_CACHE_SIZE:
                keys[raw] = verdict
        if verdict.__class__ is int:
            if verdict == _OUTSIDE:
                self.stats.outside_prefix += 1
                log.debug(
                    "kafka %s@%s: key %r outside the prefixes", self._topic, msg.offset(), raw
                )
            else:
                self.stats.bad_key += 1
                log.warning("kafka %s@%s: bad key %r dropped", self._topic, msg.offset(), raw)
            return None
        key = str(verdict)
        value = msg.value()
        if not value:
            return key, None
        if not isinstance(value, bytes):
            value = bytes(value)
        if len(value) > self._max_value_bytes:
            self._note_oversized(key, len(value), msg.offset())
        return key, value

    def _note_oversized(self, key: str, size: int, offset: int | None) -> None:
        self.stats.oversized += 1
        if key in self._oversized_logged or len(self._oversized_logged) >= _LOGGED_KEYS:
            return
        self._oversized_logged.add(key)
        log.warning(
            "kafka %s@%s: value of key %r is %d bytes > max_value_bytes %d "
            "(delivered; validation decides)",
            self._topic,
            offset,
            key,
            size,
            self._max_value_bytes,
        )

    def _new_reader(self, snapshot: bool = False) -> _Reader:
        conf = self._consumer_conf
        if snapshot:
            # Start at offset 0 and let an out-of-range start (retention removed the head)
            # move to the earliest offset: a ListOffsets(earliest) lookup costs ~0.5 s in
            # librdkafka, and the log start is exactly what a snapshot wants. A short fetch
            # wait makes the end-of-partition signal come quickly.
            conf = {**conf, "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10}
        reader = _Reader(conf, self._topic, self._partition)
        self._readers.add(reader)
        return reader

    async def _drop_reader(self, reader: _Reader) -> None:
        self._readers.discard(reader)
        await reader.close()

    def _note_errors(self, reader: _Reader) -> bool:
        """Handle the client's error_cb reports; True when the broker looked unreachable."""
        down = False
        for kerr in reader.take_errors():
            err = _translate(kerr, f"kafka source {self._name}")
            if isinstance(err, SourceUnavailableError) and not isinstance(
                err, KafkaTopicMissingError
            ):
                down = True
                self._set_state(SourceState.DISCONNECTED, str(err))
            elif isinstance(err, StoreResetError):
                raise err
            else:
                log.warning("kafka source %s: %s", self._name, err)
        return down

    def _message_error(self, msg: Message) -> bool:
        """True for the end-of-partition signal, False for a transient error (probe the
        topic); raises on a store reset and on errors that retrying cannot fix."""
        kerr = msg.error()
        assert kerr is not None
        if kerr.code() == KafkaError._PARTITION_EOF:
            return True
        err = _translate(kerr, f"kafka source {self._name} reading {self._topic}")
        if isinstance(err, StoreResetError):
            self.stats.store_resets += 1
            raise err
        if isinstance(err, KafkaTopicMissingError):
            self._set_state(SourceState.STALLED, str(err))
        elif err.retriable:
            self._set_state(SourceState.DISCONNECTED, str(err))
        else:
            raise err
        return False

    def _check_position(self, hwm: int, position: int) -> None:
        if 0 <= hwm < position:
            self.stats.store_resets += 1
            raise KafkaLogTruncatedError(
                f"topic {self._topic!r}[{self._partition}] log end {hwm} is below our "
                f"position {position}: the broker lost its log"
            )

    # -- Source

    async def snapshot(self, prefixes: Sequence[str]) -> Snapshot:
        """Every live key under ``prefixes`` at one revision (the high watermark).

        ``prefixes`` is a sequence: a single str is an ``InvalidKeyError``."""
        prefixes = validate_prefixes(prefixes)
        deadline = self._deadline()
        for _attempt in range(3):
            store_id = await self._await_topic(deadline, vanished_is_reset=False)
            if self._store_id is not None and store_id != self._store_id:
                # A snapshot is the relist after a reset: it adopts the new topic.
                log.info(
                    "kafka source %s: topic is now %s (was %s)",
                    self._name,
                    store_id,
                    self._store_id,
                )
            try:
                result = await self._read_to_end(prefixes, store_id, deadline)
            except StoreResetError as exc:
                log.info("kafka source %s: snapshot restarts: %s", self._name, exc)
                result = None
            if result is None:  # the log was truncated or replaced under us: read it again
                continue
            revision, kvs = result
            self._store_id = store_id
            self.stats.snapshots += 1
            return Snapshot(
                revision=revision,
                kvs=kvs,
                store_id=store_id,
                extra={"topic": self._topic, "partition": self._partition},
            )
        raise StoreResetError(f"topic {self._topic!r} kept changing during the snapshot")

    async def _read_to_end(
        self, prefixes: Sequence[str], store_id: str, deadline: float | None
    ) -> tuple[int, list[KeyVal]] | None:
        """(high watermark, live keys) read from the log start, or None to start over."""
        latest: dict[str, tuple[bytes, int]] = {}
        keys: dict[Any, str | int] = {}
        reader = self._new_reader(snapshot=True)
        try:
            await reader.open(0)
            position = 0
            while True:
                self._check_open()
                msgs, hwm = await reader.fetch(self._batch, self._poll_timeout)
                probe = self._note_errors(reader)
                for msg in msgs:
                    if msg.error() is not None:
                        if not self._message_error(msg):
                            probe = True
                            continue
                        # Everything below the end-of-partition offset has been read;
                        # records after it in this batch belong to a later revision.
                        eof = msg.offset()
                        revision = eof if eof is not None and eof >= 0 else position
                        if await self._topic_id() != store_id:
                            return None
                        self._set_state(SourceState.CONNECTED, "read to the end")
                        return revision, [KeyVal(k, v, r) for k, (v, r) in latest.items()]
                    off = msg.offset()
                    if off is None:
                        continue
                    if off < position:
                        # The consumer went back (an out-of-range start reset to the log
                        # start of a new log): what was read so far is stale.
                        log.info(
                            "kafka source %s: offsets went back during the snapshot", self._name
                        )
                        return None
                    position = off + 1
                    kv = self._decode(msg, prefixes, keys)
                    if kv is None:
                        continue
                    if kv[1] is None:
                        latest.pop(kv[0], None)
                    else:
                        latest[kv[0]] = (kv[1], position)
                if 0 <= hwm < position:
                    log.info("kafka source %s: log truncated during the snapshot", self._name)
                    return None
                if probe:
                    try:
                        if await self._topic_id() != store_id:
                            return None
                    except KafkaTopicMissingError:
                        return None
                    except SourceUnavailableError:
                        if deadline is not None and time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(self.backoff.delay(1))
        finally:
            await self._drop_reader(reader)

    def watch(self, prefixes: Sequence[str], start_revision: int) -> AsyncIterator[list[Change]]:
        """Changes under ``prefixes`` from ``start_revision`` on (offset ``start_revision - 1``).

        Yields non-empty batches in offset order. Raises ``StoreResetError`` when the log
        went back or the topic was replaced, ``SourceUnavailableError`` only when
        ``give_up_after`` is set and exceeded.
        """
        prefixes = validate_prefixes(prefixes)
        if start_revision < 0:
            raise ValueError(f"start_revision must be >= 0, got {start_revision}")
        self._check_open()
        return self._watch(prefixes, max(start_revision, 1) - 1)

    async def _watch(self, prefixes: Sequence[str], offset: int) -> AsyncIterator[list[Change]]:
        store_id = await self._await_topic(self._deadline(), vanished_is_reset=True)
        self._check_store(store_id)
        self._store_id = store_id
        prev: dict[str, bytes] = {}
        keys: dict[Any, str | int] = {}
        name = self._name
        reader = self._new_reader()
        try:
            await reader.open(offset)
            position = offset
            next_check = time.monotonic() + self._check_interval
            failures = 0  # probes of the broker that failed in a row
            down_since: float | None = None
            while True:
                self._check_open()
                msgs, hwm = await reader.fetch(self._batch, self._poll_timeout)
                if self._note_errors(reader):
                    # Probe the broker now, and then with backoff until it answers.
                    next_check = min(next_check, time.monotonic())
                batch: list[Change] = []
                for msg in msgs:
                    if msg.error() is not None:
                        if self._message_error(msg):
                            self._set_state(SourceState.CONNECTED, "caught up")
                            down_since = None
                        else:
                            next_check = min(next_check, time.monotonic())
                        continue
                    off = msg.offset()
                    if off is None or off < position:
                        continue  # defensive: never yield a revision twice
                    position = off + 1
                    kv = self._decode(msg, prefixes, keys)
                    if kv is None:
                        continue
                    key, value = kv
                    old = None
                    if self._track_prev:
                        old = prev.pop(key, None) if value is None else prev.get(key)
                        if value is not None:
                            prev[key] = value
                    op = Op.DELETE if value is None else Op.PUT
                    # tuple.__new__ skips the NamedTuple's Python-level __new__ (hot loop).
                    batch.append(_new_tuple(Change, (key, op, value, position, old, name)))
                self._check_position(hwm, position)
                if batch:
                    self._set_state(SourceState.CONNECTED, "records arriving")
                    down_since = None
                    self.stats.changes += len(batch)
                    yield batch
                now = time.monotonic()
                if now < next_check:
                    continue
                try:
                    current = await self._topic_id()
                except KafkaTopicMissingError as exc:
                    self.stats.store_resets += 1
                    raise KafkaTopicRecreatedError(
                        f"topic {self._topic!r} vanished: {exc}"
                    ) from exc
                except SourceUnavailableError as exc:
                    self._set_state(SourceState.DISCONNECTED, str(exc))
                    down_since = down_since or now
                    if self._give_up_after is not None and now - down_since >= self._give_up_after:
                        raise SourceUnavailableError(
                            f"kafka source {self._name}: gave up after "
                            f"{self._give_up_after}s: {exc}"
                        ) from exc
                    failures += 1
                    next_check = now + self.backoff.delay(failures)
                else:
                    self._check_store(current)
                    self._set_state(SourceState.CONNECTED, "broker answers")
                    down_since = None
                    failures = 0
                    next_check = now + self._check_interval
        finally:
            await self._drop_reader(reader)

    async def close(self) -> None:
        """Stop every watch and snapshot in progress and release the clients."""
        if self._closed:
            return
        self._closed = True
        for reader in list(self._readers):
            await self._drop_reader(reader)
        self._admin = None
        self._set_state(SourceState.DISCONNECTED, "closed")


# --- the publisher -------------------------------------------------------------------------


class KafkaPublisher:
    """Writes config records to the topic partition; a ``datasync.api.Publisher``.

    ``put`` and ``delete`` (a tombstone) return the record's revision (offset + 1).
    ``txn`` writes several records in order and returns the last one's revision: it is
    NOT atomic (each record has its own revision and a reader can see a prefix of it),
    see the module docstring for why Kafka transactions are not used.

    Not idempotent by default (one request in flight keeps order): librdkafka's
    idempotent producer retries "unknown producer id" until the message times out
    when the broker lost its producer state (a tansu restart does that), so a lost
    ack can instead write a record twice, which the source yields as a duplicate.
    ``idempotent=True`` suits brokers that keep producer state.
    """

    def __init__(
        self,
        bootstrap: str = "127.0.0.1:9092",
        topic: str = "datasync-config",
        partition: int = 0,
        *,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        delivery_timeout: float = 10.0,
        idempotent: bool = False,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self._topic = topic
        self._partition = partition
        self._max_value_bytes = max_value_bytes
        self._delivery_timeout = delivery_timeout
        self._conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "client.id": "datasync-publisher",
            "acks": "all",
            "enable.idempotence": idempotent,
            # Without idempotence one request in flight keeps retries in order.
            **({} if idempotent else {"max.in.flight.requests.per.connection": 1}),
            "linger.ms": 0,
            "message.timeout.ms": max(1, int(delivery_timeout * 1000)),
            "allow.auto.create.topics": False,
            "logger": _rdlog,
            **(config or {}),
        }
        self._producer: Producer | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="datasync-kafka-pub")
        self._closed = False

    def _check(self, key: str, value: bytes) -> bytes:
        validate_key(key)
        if not isinstance(value, bytes | bytearray | memoryview):
            raise InvalidValueError(key, f"values are bytes, got {type(value).__name__}")
        value = bytes(value)
        if not value:
            raise InvalidValueError(key, "an empty value reads as a delete (tombstone) in Kafka")
        if len(value) > self._max_value_bytes:
            raise InvalidValueError(
                key, f"{len(value)} bytes > max_value_bytes {self._max_value_bytes}"
            )
        return value

    def _send(self, records: list[tuple[str, bytes | None]]) -> int:
        """Produce ``records`` in order and wait for their delivery (executor thread)."""
        if self._producer is None:
            self._producer = Producer(self._conf)
        producer = self._producer
        results: list[tuple[KafkaError | None, int]] = []

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            off = msg.offset()
            results.append((err, -1 if off is None else off))

        for key, value in records:
            while True:
                try:
                    producer.produce(
                        self._topic, value, key, self._partition, on_delivery=on_delivery
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain it
                    producer.poll(0.1)
        left = producer.flush(self._delivery_timeout + 1.0)
        if left:
            raise SourceUnavailableError(
                f"{left} record(s) to {self._topic!r} not delivered in time"
            )
        for err, _off in results:
            if err is not None:
                # Start the next call with a fresh producer: after a broker lost its state
                # an idempotent producer can stay stuck on "unknown producer id".
                self._producer = None
                raise _translate(err, f"publishing to {self._topic!r}")
        return max(off for _err, off in results) + 1

    async def _publish(self, records: list[tuple[str, bytes | None]]) -> int:
        if self._closed:
            raise ClosedError("kafka publisher is closed")
        if not records:
            raise ValueError("nothing to publish")
        loop = asyncio.get_running_loop()
        with _kafka_errors(f"publishing to {self._topic!r}"):
            return await loop.run_in_executor(self._executor, self._send, records)

    async def put(self, key: str, value: bytes) -> int:
        """Write ``key = value``; returns its revision."""
        return await self._publish([(key, self._check(key, value))])

    async def delete(self, key: str) -> int:
        """Write a tombstone for ``key``; returns its revision."""
        return await self._publish([(validate_key(key), None)])

    async def txn(self, puts: Mapping[str, bytes], deletes: Iterable[str] = ()) -> int:
        """Write puts then tombstones, in order; returns the revision of the last (not atomic)."""
        records: list[tuple[str, bytes | None]] = [(k, self._check(k, v)) for k, v in puts.items()]
        records += [(validate_key(k), None) for k in deletes]
        return await self._publish(records)

    async def close(self) -> None:
        """Deliver what is queued, then release the producer."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()

        def _flush() -> None:
            if self._producer is not None:
                self._producer.flush(self._delivery_timeout)
                self._producer = None

        try:
            await loop.run_in_executor(self._executor, _flush)
        finally:
            self._executor.shutdown(wait=False)
