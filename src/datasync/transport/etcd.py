"""The etcd northbound source and publisher, over aetcd's gRPC stubs.

aetcd 1.0.0's high-level client cannot range at a past revision, drops progress
notifications, flattens watch responses into single events and talks to one
host:port. This module therefore uses only its generated stubs (``aetcd.rpc``) on
``grpc.aio`` channels of its own, one per endpoint, and keeps:

- snapshots consistent: every prefix at ONE revision R, paginated with ``revision=R``;
- watches resumable: one range watch covering all prefixes (so revisions can never
  interleave out of order), resumed from the last delivered revision + 1 on another
  endpoint after a failure, with capped, jittered backoff; each watch attempt runs on a
  channel of its own, so that a failed unary request, which retires the shared channel
  of its endpoint, never ends a healthy watch;
- watches honest: a watchdog sends ``RequestProgress`` when the stream is quiet and
  declares it stalled when even that gets no answer (a SIGSTOPped or blackholed
  member), plus gRPC keepalive for the transport;
- errors translated into ``datasync.errors`` in one place (``_translate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc
import grpc.aio
from aetcd import rpc

from ..api import (
    MAX_KEY_BYTES,
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
    CompactedError,
    ConfigError,
    DatasyncError,
    InvalidKeyError,
    SourceError,
    SourceUnavailableError,
    StoreResetError,
)
from ._state import StateListener as StateListener
from ._state import StateReporter

__all__ = ["EtcdLease", "EtcdRequestError", "EtcdSource", "EtcdSourceStats", "prefix_range_end"]

log = logging.getLogger("datasync.transport.etcd")

_PUT = rpc.Event.EventType.PUT
_MAX_GROWTH = 8  # cap on the growth of a watch's stall and ping timeouts
_tnew = tuple.__new__
_FIRST_PAGE = 100  # keys in the first snapshot page at most: value sizes are unknown yet
_LOGGED_KEYS = 10_000  # oversized keys remembered to log each once


class EtcdRequestError(SourceError):
    """etcd refused a request for good (too large, no space, bad argument): not retriable."""


class _PageTooLarge(EtcdRequestError):
    """A response over ``max_receive_bytes`` (RESOURCE_EXHAUSTED): ask for fewer keys."""


class _StreamEnded(Exception):
    """The watch stream ended or was canceled by the server: reconnect."""


class _Recycle(Exception):
    """Time to replace a healthy watch stream (after a random time in ``recycle_interval``)."""


def prefix_range_end(prefix: bytes) -> bytes:
    """The etcd ``range_end`` that covers every key starting with ``prefix``."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\0"  # all keys >= prefix


def _translate(exc: BaseException, what: str, endpoint: str, revision: int = 0) -> DatasyncError:
    """Map a grpc / transport failure to a ``datasync.errors`` class. The only such place."""
    if isinstance(exc, DatasyncError):
        return exc
    where = f"etcd {endpoint}: {what}"
    if isinstance(exc, grpc.aio.AioRpcError):
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
            # A range at a compacted revision says not where compaction is; it is above R.
            return CompactedError(f"{where}: {details}", revision + 1)
        if code == grpc.StatusCode.OUT_OF_RANGE and "future revision" in details:
            return StoreResetError(f"{where}: revision {revision} is in the store's future")
        if code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED,
            grpc.StatusCode.UNKNOWN,
            grpc.StatusCode.INTERNAL,
            grpc.StatusCode.ABORTED,
        ):
            return SourceUnavailableError(f"{where}: {code.name}: {details}")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
            return _PageTooLarge(f"{where}: {code.name}: {details}")
        return EtcdRequestError(f"{where}: {code.name}: {details}")
    if isinstance(exc, (TimeoutError, OSError, _StreamEnded)):
        return SourceUnavailableError(f"{where}: {type(exc).__name__}: {exc}")
    return SourceError(f"{where}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _mapped(what: str, endpoint: str, revision: int = 0) -> Iterator[None]:
    try:
        yield
    except (grpc.aio.AioRpcError, TimeoutError, OSError, _StreamEnded) as exc:
        raise _translate(exc, what, endpoint, revision) from exc


class _Endpoint:
    """One etcd member: a lazily opened channel and the stubs on it."""

    def __init__(
        self,
        address: str,
        options: list[tuple[str, Any]],
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.address = address
        self._options = options
        self._credentials = credentials
        self._channel: grpc.aio.Channel | None = None
        self.kv: Any = None
        self.watch: Any = None
        self.lease: Any = None
        self.maintenance: Any = None
        self.auth: Any = None
        #: the auth token this member gave us (simple tokens are per member)
        self.token: str | None = None

    def open(self) -> _Endpoint:
        if self._channel is None:
            if self._credentials is not None:
                ch = grpc.aio.secure_channel(self.address, self._credentials, options=self._options)
            else:
                ch = grpc.aio.insecure_channel(self.address, options=self._options)
            self._channel = ch
            self.kv = rpc.KVStub(ch)
            self.watch = rpc.WatchStub(ch)
            self.lease = rpc.LeaseStub(ch)
            self.maintenance = rpc.MaintenanceStub(ch)
            self.auth = rpc.AuthStub(ch)
            self.token = None
        return self

    def reset(self, grace: float, retiring: set[asyncio.Task[None]]) -> None:
        """Swap in a fresh channel on next use: it connects at once, not after grpc's backoff.

        The old channel is closed only after ``grace`` seconds, so that requests other
        tasks still have in flight on it end on their own timeouts, not in a cancel.
        The closing task is kept in ``retiring`` so that the owner can finish it early.
        """
        ch, self._channel = self._channel, None
        if ch is not None:
            task = asyncio.get_running_loop().create_task(_close_later(ch, grace))
            retiring.add(task)
            task.add_done_callback(retiring.discard)

    async def close(self) -> None:
        ch, self._channel = self._channel, None
        if ch is not None:
            await ch.close(grace=None)


def _tls_credentials(tls: tuple[str, str, str]) -> grpc.ChannelCredentials:
    """gRPC channel credentials from PEM files (a missing file is a ConfigError naming it)."""

    def read(path: str) -> bytes | None:
        if not path:
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise ConfigError(f"etcd TLS: cannot read {path}: {exc.strerror or exc}") from None

    ca, cert, key = (read(p) for p in tls)
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


async def _close_later(ch: grpc.aio.Channel, grace: float) -> None:
    try:
        await asyncio.sleep(grace)
    finally:
        await ch.close(grace=None)


class _Tracker:
    __slots__ = ("last_progress_req", "last_response", "stalled", "waiting_since")

    def __init__(self, now: float) -> None:
        self.waiting_since: float | None = None
        self.last_response = now
        self.last_progress_req = 0.0
        self.stalled = False


@dataclass(slots=True)
class EtcdSourceStats(SourceStats):
    """``SourceStats`` and the etcd watch's own counters."""

    #: events at a revision already delivered (etcd 3.4 can repeat or time-travel)
    duplicate: int = 0
    #: reconnects that followed a stall (no response, not even to a progress request)
    stalls: int = 0
    #: snapshot pages read
    pages: int = 0
    #: non-empty watch batches yielded
    batches: int = 0
    #: watches that found their start revision compacted
    compacted: int = 0
    #: healthy watches replaced after ``recycle_interval``
    recycles: int = 0

    #: the counters' names before they were shared with the other sources
    _aliases: ClassVar[dict[str, str]] = {"events": "changes", "resets": "store_resets"}


class EtcdSource(StateReporter):
    """An etcd cluster as a datasync ``Source`` and ``Publisher``.

    ``endpoints`` are ``host:port`` client URLs of the members; the source moves to
    the next one when the current one fails or stalls. Timeouts are in seconds:

    - ``connect_timeout``: for a watch to be created; ``request_timeout``: per request;
    - ``progress_interval``: a quiet watch asks for progress this often;
      ``stall_timeout``: a watch that hears nothing for this long is STALLED and moved;
    - ``keepalive_time`` / ``keepalive_timeout``: gRPC HTTP/2 pings (etcd refuses pings
      more often than every 5 s);
    - ``backoff_base`` / ``backoff_cap``: reconnect backoff: the first retry waits about
      twice ``backoff_base``, doubling up to ``backoff_cap``, with equal jitter (``backoff``);
    - ``max_retries``: None (the default) never gives up on a watch; with a number the
      watch raises ``SourceUnavailableError`` after that many failed reconnects in a row
      (a reconnect counts as failed unless the attempt delivered changes or progress);
    - ``stall_reconnects``: after this many watches in a row that were created but made
      no progress the source reports STALLED (not in sync) and keeps retrying with backoff;
      each such attempt doubles the next one's ``stall_timeout`` and ``keepalive_timeout``
      (up to 8x, back to the configured values after progress), so that a catch-up
      response too big for the link within those timeouts gets through in the end;
    - ``page_size``: keys in the first snapshot page (at most 100) and the least per later
      page, unless the gRPC receive limit calls for fewer; ``max_page_bytes``: target
      size of later pages; ``max_receive_bytes``: gRPC limit (a page over it is asked
      again for half as many keys, at the same revision);
    - ``max_value_bytes``: a threshold for counting and logging only: larger values are
      delivered unchanged, counted in ``stats.oversized`` and logged once per key; the
      size limit is enforced where values are validated (the key becomes INVALID there);
    - ``recycle_interval``: a healthy watch is replaced after a random time in this range;
    - ``require_leader``: members without a leader refuse and cancel our requests.

    State changes (CONNECTED, DISCONNECTED, STALLED) go to ``add_state_listener``
    callbacks; they are informational: a watch that resumes by itself loses nothing, and
    only an exception from ``watch`` calls for a relist.
    Publisher requests that fail as unavailable are retried once on each other endpoint,
    so a put may apply twice around a failover (at-least-once).
    """

    _STATE_LOG = "%(kind)s source %(name)s: %(new)s (%(reason)s)"

    def __init__(
        self,
        name: str = "etcd",
        endpoints: Sequence[str] = ("127.0.0.1:2379",),
        *,
        connect_timeout: float = 3.0,
        request_timeout: float = 10.0,
        progress_interval: float = 1.0,
        stall_timeout: float = 3.0,
        keepalive_time: float = 5.0,
        keepalive_timeout: float = 2.0,
        backoff_base: float = 0.05,
        backoff_cap: float = 2.0,
        max_retries: int | None = None,
        stall_reconnects: int = 5,
        page_size: int = 1000,
        max_page_bytes: int = 4 << 20,
        max_value_bytes: int = MAX_VALUE_BYTES,
        max_receive_bytes: int = 256 << 20,
        recycle_interval: tuple[float, float] | None = (300.0, 600.0),
        require_leader: bool = True,
        tls: tuple[str, str, str] | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("EtcdSource needs at least one endpoint")
        self.name = name
        self.endpoints = [e.removeprefix("http://") for e in endpoints]
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.progress_interval = progress_interval
        self.stall_timeout = stall_timeout
        Backoff.check_range(
            f"EtcdSource {name}", ("backoff_base", backoff_base), ("backoff_cap", backoff_cap)
        )
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_retries = max_retries
        self.stall_reconnects = stall_reconnects
        self.page_size = page_size
        self.max_page_bytes = max_page_bytes
        self.max_value_bytes = max_value_bytes
        self._max_receive = max_receive_bytes
        self._oversized_logged: set[str] = set()
        self.recycle_interval = recycle_interval
        self.keepalive_timeout = keepalive_timeout
        # etcd enforces a 5 s minimum ping interval (--grpc-keepalive-min-time) and
        # GOAWAYs clients that ping faster; the 2 s ping timeout is what finds a hung peer.
        options: list[tuple[str, Any]] = [
            ("grpc.keepalive_time_ms", int(keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(keepalive_timeout * 1000)),
            ("grpc.http2.ping_timeout_ms", int(keepalive_timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_receive_message_length", max_receive_bytes),
            ("grpc.max_send_message_length", 8 << 20),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(backoff_cap * 1000)),
            ("grpc.enable_retries", 0),
        ]
        self._options = options
        #: TLS: (CA file, client cert file, client key file); empty strings are omitted
        self._credentials = _tls_credentials(tls) if tls is not None else None
        self._eps = [_Endpoint(a, options, self._credentials) for a in self.endpoints]
        # The channels of running watches, one each: closed by close() only.
        self._watch_eps: set[_Endpoint] = set()
        self._closed_event: asyncio.Event | None = None
        self._current = 0
        # WithRequireLeader: a member cut off from its leader cancels our watch.
        self._md = (("hasleader", "true"),) if require_leader else None
        #: etcd user and password: every member is asked for a token before first use
        self._user = (username, password or "") if username else None
        self._cluster_id: int | None = None
        self._handed_out = 0  # highest revision this source handed out
        self._init_state("etcd", name, log)
        self._closed = False
        self._leases: set[EtcdLease] = set()
        self._retiring: set[asyncio.Task[None]] = set()
        #: counters: oversized values, dropped keys, reconnects, stalls, pages, batches...
        self.stats = EtcdSourceStats()

    # --- state ---------------------------------------------------------------------------

    @property
    def backoff(self) -> Backoff:
        """The reconnect delays: before retry n, ``min(cap, base * 2**n)`` times [0.5, 1]
        (read from ``backoff_base`` and ``backoff_cap`` at each retry)."""
        return Backoff(
            initial=min(2 * self.backoff_base, self.backoff_cap),
            multiplier=2.0,
            maximum=self.backoff_cap,
            jitter=0.5,
        )

    @property
    def cluster_id(self) -> str:
        """The etcd cluster id (hex) last seen, or "" before the first contact."""
        return "" if self._cluster_id is None else f"{self._cluster_id:x}"

    @property
    def endpoint(self) -> str:
        """The endpoint the source currently talks to."""
        return self.endpoints[self._current]

    # --- endpoints -----------------------------------------------------------------------

    def _ep(self) -> _Endpoint:
        if self._closed:
            raise ClosedError(f"etcd source {self.name} is closed")
        return self._eps[self._current].open()

    def _fail_over(self, ep: _Endpoint) -> None:
        ep.reset(self.request_timeout + 1.0, self._retiring)
        if self._eps[self._current] is ep:
            self._current = (self._current + 1) % len(self._eps)

    def _note_cluster(self, header: Any, *, adopt: bool) -> None:
        cid = header.cluster_id
        if self._cluster_id is None or adopt:
            self._cluster_id = cid
        elif cid != self._cluster_id:
            self.stats.store_resets += 1
            raise StoreResetError(
                f"etcd source {self.name}: cluster id changed {self._cluster_id:x} -> {cid:x}"
            )

    def _meta(self, ep: _Endpoint) -> tuple[tuple[str, str], ...] | None:
        """The call metadata for ``ep``: require-leader, and the auth token."""
        if ep.token is None:
            return self._md
        return (*(self._md or ()), ("token", ep.token))

    async def _login(self, ep: _Endpoint) -> None:
        """Get ``ep``'s auth token when a user is configured and it has none (yet)."""
        if self._user is None or ep.token is not None:
            return
        name, password = self._user
        with _mapped("authenticate", ep.address):
            resp = await ep.auth.Authenticate(
                rpc.AuthenticateRequest(name=name, password=password),
                timeout=self.request_timeout,
            )
        ep.token = resp.token

    async def _call(self, what: str, fn: Callable[[_Endpoint], Any], revision: int = 0) -> Any:
        """Run one unary request, failing over to the next endpoints on unavailability."""
        last: DatasyncError | None = None
        for _ in range(len(self._eps)):
            ep = self._ep()
            try:
                for again in (True, False):
                    await self._login(ep)
                    try:
                        with _mapped(what, ep.address, revision):
                            return await fn(ep)
                    except DatasyncError as exc:
                        # a token expires when unused for a while: one new login, then fail
                        if not (again and self._user and "auth token" in str(exc)):
                            raise
                        ep.token = None
            except SourceUnavailableError as exc:
                last = exc
                self._fail_over(ep)
        assert last is not None
        raise last

    # --- snapshot ------------------------------------------------------------------------

    async def snapshot(self, prefixes: Sequence[str]) -> Snapshot:
        """Every key under ``prefixes`` at one revision R, paginated at R.

        A failure midway raises (``SourceUnavailableError``, ``CompactedError``...);
        a partial result is never returned. No prefixes: an empty snapshot at the current
        revision. Values over ``max_value_bytes`` are delivered unchanged, counted in
        ``stats.oversized`` and logged once per key (validation downstream decides);
        keys that are not valid UTF-8, not valid keys or longer than ``MAX_KEY_BYTES`` are
        dropped, counted in ``stats.bad_key`` and logged. ``prefixes`` is a sequence: a
        single str is an ``InvalidKeyError``.
        """
        ranges = _ranges(validate_prefixes(prefixes))
        if not ranges:
            return await self._empty_snapshot()
        kvs: list[KeyVal] = []
        maxv = self.max_value_bytes
        revision = 0
        header: Any = None
        i = 0
        key = ranges[0][0]
        # A small first page: nothing is known of the value sizes yet.
        limit = min(self.page_size, _FIRST_PAGE)
        pending: asyncio.Task[Any] | None = None
        keyof = self._key_of
        try:
            while True:
                if pending is None:
                    resp, limit = await self._page(key, ranges[i][1], limit, revision)
                else:
                    (resp, limit), pending = await pending, None
                self.stats.pages += 1
                if header is None:
                    header = resp.header
                    revision = resp.header.revision  # R: every later page is pinned to it
                elif resp.header.cluster_id != header.cluster_id:
                    raise StoreResetError(
                        f"etcd source {self.name}: cluster id changed during the snapshot"
                    )
                page = resp.kvs
                if page:
                    # Size the next page by bytes: etcd 3.4 scans the whole remaining range
                    # for every limited request, so few large pages beat many small ones;
                    # but never past half the gRPC receive limit, even below page_size.
                    # (ByteSize() would walk the whole message: sample a few entries instead.)
                    n = min(len(page), 64)
                    size = sum(len(page[j].key) + len(page[j].value) for j in range(n)) + 16 * n
                    limit = max(self.page_size, self.max_page_bytes * n // size)
                    limit = max(1, min(limit, self._max_receive // 2 * n // size))
                if resp.more and page:
                    key = page[-1].key + b"\0"
                elif i + 1 < len(ranges):
                    i += 1
                    key = ranges[i][0]
                else:
                    key = b""
                if key:
                    # Ask for the next page now: etcd works on it while we convert this one.
                    pending = asyncio.create_task(self._page(key, ranges[i][1], limit, revision))
                # The hot loop: tuple.__new__ skips KeyVal's Python-level __new__; keys are
                # checked in bulk, one by one only when some key is bad.
                try:
                    keys: list[str] | None = [kv.key.decode() for kv in page]
                except UnicodeDecodeError:
                    keys = None
                if keys is not None and _all_valid(keys, page):
                    got = [
                        _tnew(KeyVal, (k, kv.value, kv.mod_revision))
                        for k, kv in zip(keys, page, strict=True)
                    ]
                else:
                    got = [
                        _tnew(KeyVal, (k, kv.value, kv.mod_revision))
                        for kv in page
                        if (k := keyof(kv.key, kv.mod_revision)) is not None
                    ]
                for kv in got:
                    if len(kv[1]) > maxv:
                        self._note_oversized(kv[0], len(kv[1]), kv[2])
                kvs += got
                if not key:
                    break
        except SourceUnavailableError as exc:
            self._set_state(SourceState.DISCONNECTED, str(exc))
            raise
        finally:
            if pending is not None:
                # Abandoned after a failure: cancel, and retrieve its outcome so it is not
                # reported as never retrieved.
                pending.cancel()
                pending.add_done_callback(_consume)
        return self._snapshot_done(header, revision, kvs)

    async def _empty_snapshot(self) -> Snapshot:
        req = rpc.RangeRequest(key=b"\0", count_only=True, limit=1)
        try:
            resp = await self._call("revision", self._ranger(req))
        except SourceUnavailableError as exc:
            self._set_state(SourceState.DISCONNECTED, str(exc))
            raise
        return self._snapshot_done(resp.header, resp.header.revision, [])

    def _snapshot_done(self, header: Any, revision: int, kvs: list[KeyVal]) -> Snapshot:
        extra: dict[str, object] = {}
        if revision < self._handed_out:
            extra["revision_regressed_from"] = self._handed_out
        self._note_cluster(header, adopt=True)
        self._handed_out = revision
        self.stats.snapshots += 1
        self._set_state(SourceState.CONNECTED, "snapshot read")
        return Snapshot(revision=revision, kvs=kvs, store_id=self.cluster_id, extra=extra)

    async def _page(self, key: bytes, end: bytes, limit: int, revision: int) -> tuple[Any, int]:
        """One snapshot page and the limit that fit: a response over the gRPC receive limit
        is asked again, at the same revision, for half as many keys."""
        while True:
            req = rpc.RangeRequest(key=key, range_end=end, limit=limit, revision=revision)
            try:
                return await self._call("snapshot range", self._ranger(req), revision), limit
            except _PageTooLarge:
                if limit <= 1:
                    raise  # one value over max_receive_bytes: nothing to halve
                limit //= 2
                log.info("etcd source %s: snapshot page too large, %d keys next", self.name, limit)

    def _ranger(self, req: Any) -> Callable[[_Endpoint], Any]:
        return lambda ep: ep.kv.Range(req, timeout=self.request_timeout, metadata=self._meta(ep))

    def _key_of(self, raw: bytes, revision: int) -> str | None:
        """The key of ``raw``, or None (counted, logged) when it is not a valid key."""
        try:
            return validate_key(raw.decode())
        except (UnicodeDecodeError, InvalidKeyError) as exc:
            self.stats.bad_key += 1
            log.warning(
                "etcd source %s: dropped bad key %r at revision %d: %s",
                self.name,
                raw,
                revision,
                exc,
            )
            return None

    def _note_oversized(self, key: str, size: int, revision: int) -> None:
        self.stats.oversized += 1
        if key in self._oversized_logged or len(self._oversized_logged) >= _LOGGED_KEYS:
            return
        self._oversized_logged.add(key)
        log.warning(
            "etcd source %s: value of key %r at revision %d is %d bytes > max_value_bytes %d "
            "(delivered; validation decides)",
            self.name,
            key,
            revision,
            size,
            self.max_value_bytes,
        )

    # --- watch ---------------------------------------------------------------------------

    def watch(self, prefixes: Sequence[str], start_revision: int) -> AsyncIterator[list[Change]]:
        """Batches of changes under ``prefixes`` from ``start_revision`` on, in revision order.

        One batch is one etcd watch response (whole revisions, ascending). Survives
        member loss by resuming elsewhere from the last delivered revision + 1. Raises
        ``CompactedError`` or ``StoreResetError``; ``SourceUnavailableError`` only when
        ``max_retries`` is set and exhausted; ``ClosedError`` once the source is closed.
        No prefixes: yields nothing until the source is closed. Keys and values are
        screened as in ``snapshot``.
        """
        if start_revision < 1:
            raise ValueError(f"start_revision must be >= 1, got {start_revision}")
        prefixes = validate_prefixes(prefixes)  # bad prefixes fail here, not when iterated
        _ranges(prefixes)
        if not prefixes:
            return self._idle()
        return self._watch(prefixes, start_revision)

    async def _idle(self) -> AsyncIterator[list[Change]]:
        if self._closed_event is None:
            self._closed_event = asyncio.Event()
        if not self._closed:
            await self._closed_event.wait()
        for _ in ():
            yield []  # an async generator that yields nothing
        raise ClosedError(f"etcd source {self.name} is closed")

    async def _watch(self, prefixes: list[str], start_revision: int) -> AsyncIterator[list[Change]]:
        bprefixes = tuple(p.encode() for p in prefixes)
        lo, hi = _cover(prefixes)
        next_rev = start_revision
        loop = asyncio.get_running_loop()
        failures = 0
        # Timeouts of the next attempt, in multiples of the configured ones: etcd 3.4
        # sends up to ~1000 revisions in one response, which a slow link may not carry
        # within stall_timeout, nor a ping ack queued behind it within keepalive_timeout.
        grow = 1
        keyof = self._key_of
        name = self.name
        while True:
            ep = self._ep()
            # A channel of this attempt's own: a failed unary request retires the shared
            # channel of its endpoint, which must not end this stream.
            wep = _Endpoint(ep.address, self._grown_options(grow), self._credentials).open()
            self._watch_eps.add(wep)
            stall_timeout = self.stall_timeout * grow
            call: Any = None
            dog: asyncio.Task[None] | None = None
            tr = _Tracker(loop.time())
            created = False
            progressed = False  # changes delivered or caught up (a progress notification)
            lost: BaseException | None = None
            recycle_at = (
                loop.time() + random.uniform(*self.recycle_interval)
                if self.recycle_interval
                else float("inf")
            )
            try:
                try:
                    with _mapped("watch", ep.address, next_rev):
                        await self._login(wep)
                        call = wep.watch.Watch(metadata=self._meta(wep))
                        await call.write(
                            rpc.WatchRequest(
                                create_request=rpc.WatchCreateRequest(
                                    key=lo,
                                    range_end=hi,
                                    start_revision=next_rev,
                                    prev_kv=True,
                                    progress_notify=True,
                                )
                            )
                        )
                        async with asyncio.timeout(self.connect_timeout):
                            resp = await call.read()
                            if resp is grpc.aio.EOF:
                                raise _StreamEnded("stream ended before the watch was created")
                            await self._check_created(wep, resp, next_rev)
                    created = True
                    if failures < self.stall_reconnects:
                        self._set_state(SourceState.CONNECTED, f"watching on {ep.address}")
                    # else: STALLED until this attempt shows progress
                    dog = asyncio.create_task(self._watchdog(call, tr, stall_timeout))
                    maxv = self.max_value_bytes
                    while True:
                        tr.waiting_since = loop.time()
                        with _mapped("watch", ep.address, next_rev):
                            resp = await call.read()
                        now = loop.time()
                        tr.waiting_since = None
                        tr.last_response = now
                        if resp is grpc.aio.EOF:
                            raise _StreamEnded("stream closed by the server")
                        if resp.canceled:
                            self._raise_if_compacted(resp, next_rev)
                            raise _StreamEnded(f"watch canceled: {resp.cancel_reason}")
                        if tr.stalled:
                            raise _StreamEnded("watch stalled")
                        if not progressed:
                            progressed = True
                            self._set_state(SourceState.CONNECTED, f"watching on {ep.address}")
                        events = resp.events
                        if not events:
                            if now > recycle_at:
                                raise _Recycle
                            continue  # progress notification: liveness only
                        batch: list[Change] = []
                        floor = next_rev
                        for ev in events:
                            kv = ev.kv
                            rev = kv.mod_revision
                            if rev < floor:
                                # etcd 3.4.23 can repeat or time-travel (#15275, #15271).
                                self.stats.duplicate += 1
                                continue
                            raw = kv.key
                            if not raw.startswith(bprefixes):
                                # Inside the covering range, outside every prefix: expected.
                                self.stats.outside_prefix += 1
                                log.debug("etcd source %s: skipped key %r", name, raw)
                                continue
                            key = keyof(raw, rev)
                            if key is None:
                                continue
                            if ev.type == _PUT:
                                op, value = Op.PUT, kv.value
                                if len(value) > maxv:
                                    self._note_oversized(key, len(value), rev)
                            else:
                                op, value = Op.DELETE, None
                            prev = ev.prev_kv.value if ev.HasField("prev_kv") else None
                            batch.append(Change(key, op, value, rev, prev, name))
                        last = events[-1].kv.mod_revision
                        if last >= next_rev:
                            next_rev = last + 1
                            if last > self._handed_out:
                                self._handed_out = last
                        if batch:
                            self.stats.batches += 1
                            self.stats.changes += len(batch)
                            yield batch
                        if loop.time() > recycle_at:
                            raise _Recycle
                except _Recycle:
                    # Not a failure: no state change, same endpoint, no backoff.
                    self.stats.recycles += 1
                except (SourceUnavailableError, _StreamEnded) as exc:
                    lost = exc
                except asyncio.CancelledError:
                    # Our own cancellation propagates. Any other is grpc canceling the read
                    # because the watchdog canceled a stalled call or the channel was closed
                    # under us: the stream ended, resume from next_rev.
                    task = asyncio.current_task()
                    if task is None or task.cancelling():
                        raise
                    if self._closed:
                        raise ClosedError(f"etcd source {self.name} is closed") from None
                    lost = _StreamEnded("watch stalled" if tr.stalled else "watch call canceled")
            finally:
                if dog is not None:
                    dog.cancel()
                if call is not None:
                    call.cancel()
                self._watch_eps.discard(wep)
                with contextlib.suppress(RuntimeError):  # no loop left to close it on
                    wep.reset(0.0, self._retiring)
            if lost is None:
                continue
            err = _translate(lost, "watch", ep.address, next_rev)
            # Only an attempt that got somewhere earns a fresh backoff: one that dies
            # right after its creation (a member without leader) or before its first
            # response (a backlog too slow for stall_timeout) keeps backing off.
            if progressed:
                failures = 0
                grow = 1
            elif created:
                grow = min(grow * 2, _MAX_GROWTH)
            failures += 1
            self.stats.reconnects += 1
            if tr.stalled:
                self.stats.stalls += 1
            if created and failures >= self.stall_reconnects:
                # Connected again and again, never further: not in sync, say so.
                self._set_state(
                    SourceState.STALLED, f"no progress after {failures} reconnects: {err}"
                )
            elif tr.stalled:
                self._set_state(SourceState.STALLED, str(err))
            else:
                self._set_state(SourceState.DISCONNECTED, str(err))
            if self.max_retries is not None and failures > self.max_retries:
                raise SourceUnavailableError(
                    f"etcd source {self.name}: gave up after {failures - 1} reconnects: {err}"
                ) from lost
            log.info("etcd source %s: watch lost (%s); resuming at %d", self.name, err, next_rev)
            self._fail_over(ep)
            await asyncio.sleep(self.backoff.delay(failures))

    async def _check_created(self, ep: _Endpoint, resp: Any, next_rev: int) -> None:
        if resp.canceled or not resp.created:
            self._raise_if_compacted(resp, next_rev)
            raise _StreamEnded(f"watch not created: {resp.cancel_reason or 'no created reply'}")
        self._note_cluster(resp.header, adopt=False)
        baseline = next_rev - 1
        if resp.header.revision < baseline:
            # A lagging follower also answers with an older header; a linearizable read
            # waits for it to catch up, so only a store that truly went back fails this.
            await self._login(ep)
            r = await ep.kv.Range(
                rpc.RangeRequest(key=b"\0", count_only=True, limit=1),
                timeout=self.request_timeout,
                metadata=self._meta(ep),
            )
            if r.header.revision < baseline:
                self.stats.store_resets += 1
                raise StoreResetError(
                    f"etcd source {self.name}: store revision {r.header.revision} on "
                    f"{ep.address} is below revision {baseline} already handed out"
                )

    def _raise_if_compacted(self, resp: Any, next_rev: int) -> None:
        if resp.compact_revision:
            self.stats.compacted += 1
            raise CompactedError(
                f"etcd source {self.name}: revision {next_rev} is compacted "
                f"(compact revision {resp.compact_revision})",
                resp.compact_revision,
            )

    def _grown_options(self, grow: int) -> list[tuple[str, Any]]:
        """Channel options with the ping timeouts ``grow`` times the configured one."""
        if grow == 1:
            return self._options
        ms = int(self.keepalive_timeout * grow * 1000)
        timeouts = ("grpc.keepalive_timeout_ms", "grpc.http2.ping_timeout_ms")
        return [(k, ms if k in timeouts else v) for k, v in self._options]

    async def _watchdog(self, call: Any, tr: _Tracker, stall_timeout: float) -> None:
        """Ask for progress when the stream is quiet; cancel it when nothing answers."""
        loop = asyncio.get_running_loop()
        tick = min(self.progress_interval, stall_timeout) / 2
        req = rpc.WatchRequest(progress_request=rpc.WatchProgressRequest())
        due = loop.time() + tick
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            lag, due = now - due, now + tick
            if lag > tick:
                # Our own loop was blocked: responses could not be read either. Grant a
                # fresh window instead of blaming the server.
                tr.last_response = max(tr.last_response, now)
                continue
            since = tr.waiting_since
            if since is None:
                continue  # the consumer is busy: our silence is not the server's
            idle = now - max(since, tr.last_response)
            if idle >= stall_timeout:
                tr.stalled = True
                call.cancel()
                return
            if (
                idle >= self.progress_interval
                and now - tr.last_progress_req >= self.progress_interval
            ):
                tr.last_progress_req = now
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(stall_timeout):
                        await call.write(req)

    # --- publisher -----------------------------------------------------------------------

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Put one key; returns its revision."""
        req = rpc.PutRequest(key=key.encode(), value=value, lease=lease)
        resp = await self._call(
            f"put {key!r}",
            lambda ep: ep.kv.Put(req, timeout=self.request_timeout, metadata=self._meta(ep)),
        )
        return int(resp.header.revision)

    async def delete(self, key: str) -> int:
        """Delete one key; returns the store revision after it."""
        req = rpc.DeleteRangeRequest(key=key.encode())
        resp = await self._call(
            f"delete {key!r}",
            lambda ep: ep.kv.DeleteRange(
                req, timeout=self.request_timeout, metadata=self._meta(ep)
            ),
        )
        return int(resp.header.revision)

    async def txn(self, puts: Mapping[str, bytes], deletes: Iterable[str] = ()) -> int:
        """Several puts and deletes at one revision; returns it."""
        ops = [
            rpc.RequestOp(request_put=rpc.PutRequest(key=k.encode(), value=v))
            for k, v in puts.items()
        ]
        ops += [
            rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k.encode()))
            for k in deletes
        ]
        req = rpc.TxnRequest(success=ops)
        resp = await self._call(
            "txn", lambda ep: ep.kv.Txn(req, timeout=self.request_timeout, metadata=self._meta(ep))
        )
        return int(resp.header.revision)

    async def current_revision(self) -> int:
        """The store's current revision (a linearizable read)."""
        req = rpc.RangeRequest(key=b"\0", count_only=True, limit=1)
        resp = await self._call(
            "revision",
            lambda ep: ep.kv.Range(req, timeout=self.request_timeout, metadata=self._meta(ep)),
        )
        return int(resp.header.revision)

    async def compact(self, revision: int, physical: bool = True) -> None:
        """Compact the store's history up to ``revision`` (tests and maintenance)."""
        req = rpc.CompactionRequest(revision=revision, physical=physical)
        await self._call(
            "compact",
            lambda ep: ep.kv.Compact(req, timeout=self.request_timeout, metadata=self._meta(ep)),
        )

    async def lease(self, ttl: int) -> EtcdLease:
        """Grant a lease kept alive until ``revoke()`` or ``close()``; keys put with it vanish
        with this process."""
        req = rpc.LeaseGrantRequest(TTL=ttl)
        resp = await self._call(
            "lease grant",
            lambda ep: ep.lease.LeaseGrant(
                req, timeout=self.request_timeout, metadata=self._meta(ep)
            ),
        )
        lease = EtcdLease(self, int(resp.ID), ttl)
        self._leases.add(lease)
        return lease

    async def put_with_lease(self, key: str, value: bytes, ttl: int) -> EtcdLease:
        """Put a key that disappears ``ttl`` seconds after this process stops refreshing it."""
        lease = await self.lease(ttl)
        await lease.put(key, value)
        return lease

    async def close(self) -> None:
        """Revoke leases, close the channels. Open watches end with ``ClosedError``."""
        if self._closed:
            return
        for lease in list(self._leases):
            with contextlib.suppress(DatasyncError):
                await lease.revoke()
        self._closed = True
        if self._closed_event is not None:
            self._closed_event.set()
        for ep in self._eps:
            await ep.close()
        # Watch channels: their reads end in a cancel that the watches turn into ClosedError.
        for wep in list(self._watch_eps):
            await wep.close()
        # Channels of failed endpoints: close them now, within the caller's loop.
        retiring = list(self._retiring)
        for task in retiring:
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)
        # grpc completes the canceled operations of closed calls from its poller thread a
        # moment later, on the loop that started them: let them land while it still runs.
        await asyncio.sleep(0.05)
        self._set_state(SourceState.DISCONNECTED, "closed")


class EtcdLease:
    """A granted lease with a keep-alive task; ``revoke()`` deletes its keys at once."""

    def __init__(self, source: EtcdSource, lease_id: int, ttl: int) -> None:
        self.source = source
        self.id = lease_id
        self.ttl = ttl
        self._task = asyncio.create_task(self._keepalive())

    async def put(self, key: str, value: bytes) -> int:
        """Put ``key`` attached to this lease."""
        return await self.source.put(key, value, lease=self.id)

    async def _keepalive(self) -> None:
        src = self.source
        req = rpc.LeaseKeepAliveRequest(ID=self.id)
        while True:
            await asyncio.sleep(max(self.ttl / 3, 0.2))
            with contextlib.suppress(DatasyncError):

                async def one(ep: _Endpoint) -> None:
                    call = ep.lease.LeaseKeepAlive(
                        timeout=src.request_timeout, metadata=src._meta(ep)
                    )
                    await call.write(req)
                    await call.read()
                    call.cancel()

                await src._call("lease keepalive", one)

    async def revoke(self) -> None:
        """Stop refreshing and revoke the lease (its keys are deleted)."""
        self._task.cancel()
        self.source._leases.discard(self)
        req = rpc.LeaseRevokeRequest(ID=self.id)
        await self.source._call(
            "lease revoke",
            lambda ep: ep.lease.LeaseRevoke(
                req, timeout=self.source.request_timeout, metadata=self.source._meta(ep)
            ),
        )


def _all_valid(keys: list[str], page: Any) -> bool:
    """``validate_key`` on every key of a page at once, in C loops: non-empty, no NUL, no
    blank ends, none longer than ``MAX_KEY_BYTES`` (measured on the raw bytes)."""
    return (
        all(keys)
        and "\0" not in "".join(keys)
        and list(map(str.strip, keys)) == keys
        and max((len(kv.key) for kv in page), default=0) <= MAX_KEY_BYTES
    )


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _ranges(prefixes: Sequence[str]) -> list[tuple[bytes, bytes]]:
    """The key ranges of ``prefixes``, nested prefixes folded into their parent."""
    out: list[tuple[bytes, bytes]] = []
    for p in sorted(set(prefixes)):
        if not p:
            raise ValueError("empty prefix")
        b = p.encode()
        if out and b.startswith(out[-1][0]) and out[-1][1] != b"\0":
            continue
        out.append((b, prefix_range_end(b)))
    return out


def _cover(prefixes: Sequence[str]) -> tuple[bytes, bytes]:
    """One range covering every prefix: a single watch keeps revisions in order."""
    ranges = _ranges(prefixes)
    if not ranges:
        raise ValueError("watch needs at least one prefix")
    ends = [e for _, e in ranges]
    hi = b"\0" if b"\0" in ends else max(ends)
    return ranges[0][0], hi
