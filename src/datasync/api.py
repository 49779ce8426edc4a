"""The datasync API: what plugins see of the northbound sources.

This is the brief's ``datasync_api.go`` as typed Python. Plugins never see a
transport: they get resync and change events through a ``Registration`` (the
low-level channels) or implement ``Plugin`` (the high-level callbacks).

Events carry ``done(err=None)``: idempotent, never blocking, first call wins; an
error is a fault report that schedules a new resync round.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Generic, NamedTuple, Protocol, TypeVar, runtime_checkable

from .errors import ClosedError, InvalidKeyError

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES",
    "Ack",
    "Change",
    "ChangeEvent",
    "Channel",
    "KeyVal",
    "Op",
    "Plugin",
    "Publisher",
    "Registration",
    "ResyncEvent",
    "Snapshot",
    "Source",
    "SourceState",
    "SourceStats",
    "StateListener",
    "Watcher",
    "validate_key",
    "validate_keys",
    "validate_prefix",
    "validate_prefixes",
]


#: the largest value the plugins accept, and the sources' default threshold for counting and
#: logging oversized values (sources deliver larger ones; validation rejects them)
MAX_VALUE_BYTES = 1 << 20

#: the longest key (and prefix) accepted, in UTF-8 bytes: vpp-agent's longest keys (routes
#: with an interface, a VRF and a gateway) are under 200 bytes
MAX_KEY_BYTES = 4096


class Op(enum.IntEnum):
    """What a change does to its key."""

    PUT = 1
    DELETE = 2


class KeyVal(NamedTuple):
    """One key of a snapshot: its value and the revision that last modified it."""

    key: str
    value: bytes
    revision: int


class Change(NamedTuple):
    """One change of one key at one revision of its source.

    A tuple on purpose: the compiled buffer and filter read its fields by index.
    Field order is part of the contract (key, op, value, revision, ...).
    """

    key: str
    op: Op
    value: bytes | None
    revision: int
    prev_value: bytes | None = None
    source: str = ""


def _shown(key: str) -> str:
    """``key`` as an error shows it: a long one is cut (the message stays one short line)."""
    return key if len(key) <= 80 else f"{key[:60]}...({len(key)} characters)"


def validate_key(key: str) -> str:
    """Return ``key`` if it is a usable key, else raise ``InvalidKeyError`` naming it."""
    if not isinstance(key, str):
        raise InvalidKeyError(repr(key)[:80], f"keys are str, got {type(key).__name__}")
    if not key:
        raise InvalidKeyError(key, "empty key")
    if "\x00" in key:
        raise InvalidKeyError(_shown(key), "NUL byte in key")
    if key != key.strip():
        raise InvalidKeyError(_shown(key), "leading or trailing whitespace")
    if not key.isascii():
        try:
            size = len(key.encode())
        except UnicodeEncodeError:
            raise InvalidKeyError(_shown(key), "not valid UTF-8 (a lone surrogate)") from None
    else:
        size = len(key)
    if size > MAX_KEY_BYTES:
        raise InvalidKeyError(
            _shown(key), f"key of {size} bytes exceeds MAX_KEY_BYTES={MAX_KEY_BYTES}"
        )
    return key


def validate_prefix(prefix: str) -> str:
    """Like ``validate_key``, for watched prefixes."""
    return validate_key(prefix)


def _not_one_string(items: object, what: str) -> None:
    if isinstance(items, (str, bytes, bytearray, memoryview)):
        shown = items if isinstance(items, str) else repr(bytes(items))
        raise InvalidKeyError(
            _shown(shown),
            f"{what} must be a list of {what} (a sequence), not a single "
            f"{type(items).__name__}: write [{shown!r}]"[:200],
        )


def validate_keys(keys: Iterable[str], what: str = "keys") -> list[str]:
    """``validate_key`` on each of ``keys``, as a list.

    A str (or bytes) where a sequence of keys is expected is an ``InvalidKeyError`` naming
    it: iterated, ``"/a/1"`` would be the keys ``/``, ``a``, ``1``.
    """
    _not_one_string(keys, what)
    return [validate_key(k) for k in keys]


def validate_prefixes(prefixes: Iterable[str], what: str = "prefixes") -> list[str]:
    """``validate_prefix`` on each of ``prefixes``, as a list; a single str is an error
    (iterated, ``"/a/"`` would be the prefix ``/``: every key)."""
    _not_one_string(prefixes, what)
    return [validate_prefix(p) for p in prefixes]


# --- acknowledgement -----------------------------------------------------------------------

_PENDING, _DONE, _EXPIRED = 0, 1, 2


class Ack:
    """A one-shot acknowledgement: ``done(err=None)`` is idempotent and never blocks.

    The first call wins. After the waiter gave up (``expire()``, on a timeout) a late
    ``done()`` is counted through ``on_late`` and otherwise ignored.
    """

    __slots__ = ("_err", "_on_done", "_on_late", "_state", "_waiter")

    def __init__(
        self,
        on_done: Callable[[BaseException | None], None] | None = None,
        on_late: Callable[[], None] | None = None,
    ) -> None:
        self._state = _PENDING
        self._err: BaseException | None = None
        self._waiter: asyncio.Future[BaseException | None] | None = None
        self._on_done = on_done
        self._on_late = on_late

    def done(self, err: BaseException | None = None) -> None:
        """Mark finished; ``err`` reports a fault. Calls after the first are ignored."""
        if self._state != _PENDING:
            if self._state == _EXPIRED and self._on_late is not None:
                self._on_late()
            return
        self._state = _DONE
        self._err = err
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(err)
        if self._on_done is not None:
            self._on_done(err)

    @property
    def is_done(self) -> bool:
        """True once ``done()`` was called in time."""
        return self._state == _DONE

    @property
    def expired(self) -> bool:
        """True when the waiter gave up (timeout, or the event was superseded)."""
        return self._state == _EXPIRED

    @property
    def error(self) -> BaseException | None:
        """The error passed to the first ``done()``."""
        return self._err

    def expire(self) -> None:
        """The waiter gave up: later ``done()`` calls count as late.

        Anyone still in ``wait()`` returns a ``TimeoutError`` (as the error, not raised).
        """
        if self._state == _PENDING:
            self._state = _EXPIRED
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(TimeoutError("acknowledgement expired"))

    async def wait(self) -> BaseException | None:
        """Wait for ``done()`` and return its error (None on success). No timeout here."""
        if self._state == _DONE:
            return self._err
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        return await asyncio.shield(self._waiter)


# --- events --------------------------------------------------------------------------------


class ResyncEvent:
    """The complete desired state of the prefixes a plugin watches, at revision(s) R.

    Empty ``kvs`` means "delete everything of mine". ``revisions`` maps each source
    name to its snapshot revision.
    """

    __slots__ = ("ack", "kvs", "revisions")

    def __init__(
        self,
        kvs: Mapping[str, KeyVal],
        revisions: Mapping[str, int],
        ack: Ack | None = None,
    ) -> None:
        self.kvs = kvs
        self.revisions = revisions
        self.ack = ack if ack is not None else Ack()

    def done(self, err: BaseException | None = None) -> None:
        """Report the resync finished (``err`` None) or failed."""
        self.ack.done(err)

    def __repr__(self) -> str:
        return f"ResyncEvent(keys={len(self.kvs)}, revisions={dict(self.revisions)})"


class ChangeEvent:
    """The changes of one revision (or transaction) of one source."""

    __slots__ = ("ack", "changes", "revision", "source")

    def __init__(
        self,
        changes: Sequence[Change],
        source: str,
        revision: int,
        ack: Ack | None = None,
    ) -> None:
        self.changes = changes
        self.source = source
        self.revision = revision
        self.ack = ack if ack is not None else Ack()

    def done(self, err: BaseException | None = None) -> None:
        """Report the changes applied (``err`` None) or failed."""
        self.ack.done(err)

    @property
    def superseded(self) -> bool:
        """True when a resync replaced this event before it was acknowledged: skip it."""
        return self.ack.expired

    def __repr__(self) -> str:
        return (
            f"ChangeEvent(source={self.source!r}, revision={self.revision}, n={len(self.changes)})"
        )


# --- channels ------------------------------------------------------------------------------

T = TypeVar("T")


class Channel(Generic[T], AsyncIterator[T]):
    """An unbounded FIFO async iterator that ends when closed.

    Unbounded on purpose: the producers (the orchestrator) bound what they put in
    (one resync at a time, coalesced changes), and a put must never block them.
    """

    __slots__ = ("_closed", "_items", "_notify", "_waiter")

    def __init__(self, notify: asyncio.Event | None = None) -> None:
        self._items: deque[T] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        # Set on every put and on close: lets one task wait on several channels.
        self._notify = notify

    def put(self, item: T) -> None:
        """Append an item; raises ``ClosedError`` after ``close()``."""
        if self._closed:
            raise ClosedError("channel is closed")
        self._items.append(item)
        self._wake()

    def close(self) -> None:
        """End the iteration once the items already put are consumed."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        if self._notify is not None:
            self._notify.set()

    def drain(self) -> list[T]:
        """Remove and return every item now held."""
        items = list(self._items)
        self._items.clear()
        return items

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)

    def get_nowait(self) -> T | None:
        """The next item, or None when there is none now."""
        return self._items.popleft() if self._items else None

    def __aiter__(self) -> Channel[T]:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


# --- watcher side --------------------------------------------------------------------------


@runtime_checkable
class Registration(Protocol):
    """One watcher's registration: its own resync and change channels.

    A consumer takes a waiting resync event before waiting change events, and skips
    a change event whose ``superseded`` is true: a later resync already holds its
    effect. (The high-level ``Plugin`` adapter does both.)
    """

    @property
    def name(self) -> str: ...

    @property
    def prefixes(self) -> tuple[str, ...]: ...

    @property
    def resync_events(self) -> Channel[ResyncEvent]: ...

    @property
    def change_events(self) -> Channel[ChangeEvent]: ...

    def register(self, prefix: str) -> None:
        """Watch one more prefix; its data arrives through a resync."""

    def unregister(self, prefix: str) -> None:
        """Stop watching a prefix."""

    async def close(self) -> None:
        """Close this registration only; others keep running."""


class Watcher(Protocol):
    """Hands out registrations (the brief's KeyValProtoWatcher)."""

    def watch(
        self, name: str, prefixes: Iterable[str], depends_on: Iterable[str] = ()
    ) -> Registration: ...


class Publisher(Protocol):
    """Writes to a store."""

    async def put(self, key: str, value: bytes) -> int:
        """Put one key; returns the revision."""

    async def delete(self, key: str) -> int:
        """Delete one key; returns the revision."""

    async def txn(self, puts: Mapping[str, bytes], deletes: Iterable[str] = ()) -> int:
        """Several puts and deletes at one revision; returns it."""


class Plugin(Protocol):
    """The high-level API: return from a callback to mark it done, raise to report the error."""

    @property
    def name(self) -> str: ...

    @property
    def prefixes(self) -> Sequence[str]: ...

    @property
    def depends_on(self) -> Sequence[str]: ...

    async def resync(self, ev: ResyncEvent) -> None: ...

    async def change(self, ev: ChangeEvent) -> None: ...


# --- source side ---------------------------------------------------------------------------


class SourceState(enum.Enum):
    """Connection state of a northbound source, as shown in status."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    STALLED = "stalled"
    RESYNCING = "resyncing"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every key under some prefixes at one revision, with each key's own mod revision."""

    revision: int
    kvs: Sequence[KeyVal]
    #: store identity (etcd cluster id, Kafka topic id...): a change means the store was reset.
    store_id: str = ""
    extra: Mapping[str, object] = field(default_factory=dict)


@dataclass(slots=True)
class SourceStats(Mapping[str, int]):
    """A source's counters, since it was made; each source counts what applies to it.

    Transports add their own counters in a subclass (``EtcdSourceStats``...). Read them as
    attributes, or as a read-only mapping of counter name to value (``stats["bad_key"]``,
    ``stats.get(...)``, ``dict(stats)``), where a subclass's old name for a counter
    (``_aliases``) reads too; ``as_dict()`` gives them all.
    """

    _aliases: ClassVar[dict[str, str]] = {}

    #: snapshots read
    snapshots: int = 0
    #: changes yielded by watches
    changes: int = 0
    #: records skipped because their key is null, not UTF-8, not a valid key or longer than
    #: ``MAX_KEY_BYTES`` (logged with the key); the key keeps its previous value
    bad_key: int = 0
    #: records skipped because their key is under no watched prefix
    outside_prefix: int = 0
    #: values over the source's ``max_value_bytes``: delivered, counted, logged once per key
    oversized: int = 0
    #: the store went back in time or was replaced (a relist follows)
    store_resets: int = 0
    #: watch connections lost (and resumed, or given up)
    reconnects: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __getitem__(self, name: str) -> int:
        if not isinstance(name, str) or name.startswith("_"):
            raise KeyError(name)
        value = getattr(self, self._aliases.get(name, name), None)
        if not isinstance(value, int):
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())


#: ``cb(source_name, state, reason)``: a source's connection changed state.
StateListener = Callable[[str, "SourceState", str], None]


class Source(Protocol):
    """A northbound store, as the orchestrator uses it.

    ``watch`` yields batches of changes in revision order, all strictly above
    ``start_revision - 1``. It raises ``CompactedError`` when history from
    ``start_revision`` is gone, ``StoreResetError`` when the store went back in time,
    and ``SourceUnavailableError`` when it lost the store for good; a source that can
    resume by itself (etcd after a leader change) does so without raising.

    ``add_state_listener(cb)`` registers ``cb(name, state, reason)`` for the source's
    connection state (CONNECTED, DISCONNECTED, STALLED); a source whose connection never
    changes (an embedded store) keeps the callback and never calls it.
    """

    @property
    def name(self) -> str: ...

    def add_state_listener(self, cb: StateListener) -> None: ...

    async def snapshot(self, prefixes: Sequence[str]) -> Snapshot: ...

    def watch(
        self, prefixes: Sequence[str], start_revision: int
    ) -> AsyncIterator[list[Change]]: ...

    async def close(self) -> None: ...
