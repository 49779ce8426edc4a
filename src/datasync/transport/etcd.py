"""The etcd northbound source and publisher, over aetcd's gRPC stubs.

aetcd 1.0.0's high-level client cannot range at a past revision, drops progress
notifications, flattens watch responses into single events and talks to one
host:port. This module therefore uses only its generated stubs (``aetcd.rpc``) on
``grpc.aio`` channels of its own, one per endpoint, and keeps:

- snapshots consistent: every prefix at ONE revision R, paginated with ``revision=R``;
- watches resumable: one range watch covering all prefixes (so revisions can never
  interleave out of order), resumed from the last delivered revision + 1 on another
  endpoint after a failure, with capped, jittered backoff;
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
from typing import Any

import grpc
import grpc.aio
from aetcd import rpc

from ..api import Change, KeyVal, Op, Snapshot, SourceState
from ..errors import (
    ClosedError,
    CompactedError,
    DatasyncError,
    SourceError,
    SourceUnavailableError,
    StoreResetError,
)

__all__ = ["EtcdLease", "EtcdRequestError", "EtcdSource", "prefix_range_end"]

log = logging.getLogger("datasync.transport.etcd")

StateListener = Callable[[str, SourceState, str], None]

_PUT = rpc.Event.EventType.PUT
_tnew = tuple.__new__


class EtcdRequestError(SourceError):
    """etcd refused a request for good (too large, no space, bad argument): not retriable."""


class _StreamEnded(Exception):
    """The watch stream ended or was canceled by the server: reconnect."""


class _Recycle(Exception):
    """Time to replace a healthy watch stream (M6: recycle every 5-10 min)."""


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

    def __init__(self, address: str, options: list[tuple[str, Any]]) -> None:
        self.address = address
        self._options = options
        self._channel: grpc.aio.Channel | None = None
        self.kv: Any = None
        self.watch: Any = None
        self.lease: Any = None
        self.maintenance: Any = None

    def open(self) -> _Endpoint:
        if self._channel is None:
            ch = grpc.aio.insecure_channel(self.address, options=self._options)
            self._channel = ch
            self.kv = rpc.KVStub(ch)
            self.watch = rpc.WatchStub(ch)
            self.lease = rpc.LeaseStub(ch)
            self.maintenance = rpc.MaintenanceStub(ch)
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


class EtcdSource:
    """An etcd cluster as a datasync ``Source`` and ``Publisher``.

    ``endpoints`` are ``host:port`` client URLs of the members; the source moves to
    the next one when the current one fails or stalls. Timeouts are in seconds:

    - ``connect_timeout``: for a watch to be created; ``request_timeout``: per request;
    - ``progress_interval``: a quiet watch asks for progress this often;
      ``stall_timeout``: a watch that hears nothing for this long is STALLED and moved;
    - ``keepalive_time`` / ``keepalive_timeout``: gRPC HTTP/2 pings (etcd refuses pings
      more often than every 5 s);
    - ``backoff_base`` / ``backoff_cap``: reconnect backoff (exponential, equal jitter);
    - ``max_retries``: None (the default) never gives up on a watch; with a number the
      watch raises ``SourceUnavailableError`` after that many failed reconnects in a row;
    - ``page_size``: keys in the first snapshot page (and the least per page);
      ``max_page_bytes``: target size of later pages; ``max_receive_bytes``: gRPC limit;
    - ``max_value_bytes``: larger values are dropped, logged and counted (``stats``);
    - ``recycle_interval``: a healthy watch is replaced after a random time in this range;
    - ``require_leader``: members without a leader refuse and cancel our requests.

    State changes (CONNECTED, DISCONNECTED, STALLED) go to ``add_state_listener``
    callbacks; they are informational: a watch that resumes by itself loses nothing, and
    only an exception from ``watch`` calls for a relist.
    Publisher requests that fail as unavailable are retried once on each other endpoint,
    so a put may apply twice around a failover (at-least-once).
    """

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
        page_size: int = 1000,
        max_page_bytes: int = 4 << 20,
        max_value_bytes: int = 1 << 20,
        max_receive_bytes: int = 256 << 20,
        recycle_interval: tuple[float, float] | None = (300.0, 600.0),
        require_leader: bool = True,
    ) -> None:
        if not endpoints:
            raise ValueError("EtcdSource needs at least one endpoint")
        self.name = name
        self.endpoints = [e.removeprefix("http://") for e in endpoints]
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.progress_interval = progress_interval
        self.stall_timeout = stall_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_retries = max_retries
        self.page_size = page_size
        self.max_page_bytes = max_page_bytes
        self.max_value_bytes = max_value_bytes
        self.recycle_interval = recycle_interval
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
        self._eps = [_Endpoint(a, options) for a in self.endpoints]
        self._current = 0
        # WithRequireLeader: a member cut off from its leader cancels our watch.
        self._md = (("hasleader", "true"),) if require_leader else None
        self._cluster_id: int | None = None
        self._handed_out = 0  # highest revision this source handed out
        self._state = SourceState.DISCONNECTED
        self._listeners: list[StateListener] = []
        self._closed = False
        self._leases: set[EtcdLease] = set()
        self._retiring: set[asyncio.Task[None]] = set()
        #: counters: dropped values and keys, reconnects, stalls, pages, batches...
        self.stats: dict[str, int] = {
            "oversized": 0,
            "outside_prefix": 0,
            "duplicate": 0,
            "reconnects": 0,
            "stalls": 0,
            "snapshots": 0,
            "pages": 0,
            "batches": 0,
            "events": 0,
            "resets": 0,
            "compacted": 0,
            "recycles": 0,
        }

    # --- state ---------------------------------------------------------------------------

    @property
    def state(self) -> SourceState:
        """CONNECTED, DISCONNECTED or STALLED, as last seen."""
        return self._state

    @property
    def cluster_id(self) -> str:
        """The etcd cluster id (hex) last seen, or "" before the first contact."""
        return "" if self._cluster_id is None else f"{self._cluster_id:x}"

    @property
    def endpoint(self) -> str:
        """The endpoint the source currently talks to."""
        return self.endpoints[self._current]

    def add_state_listener(self, cb: StateListener) -> None:
        """Call ``cb(source_name, state, reason)`` on every state change."""
        self._listeners.append(cb)

    def remove_state_listener(self, cb: StateListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(cb)

    def _set_state(self, state: SourceState, reason: str) -> None:
        if state == self._state:
            return
        self._state = state
        log.info("etcd source %s: %s (%s)", self.name, state.value, reason)
        for cb in list(self._listeners):
            try:
                cb(self.name, state, reason)
            except Exception:
                log.exception("etcd source %s: state listener failed", self.name)

    # --- endpoints -----------------------------------------------------------------------

    def _ep(self) -> _Endpoint:
        if self._closed:
            raise ClosedError(f"etcd source {self.name} is closed")
        return self._eps[self._current].open()

    def _fail_over(self, ep: _Endpoint) -> None:
        ep.reset(self.request_timeout + 1.0, self._retiring)
        if self._eps[self._current] is ep:
            self._current = (self._current + 1) % len(self._eps)

    def _backoff(self, attempt: int) -> float:
        # "Equal jitter": never shorter than half the exponential step.
        step = min(self.backoff_cap, self.backoff_base * float(2 ** min(attempt, 30)))
        return step / 2 + random.uniform(0, step / 2)

    def _note_cluster(self, header: Any, *, adopt: bool) -> None:
        cid = header.cluster_id
        if self._cluster_id is None or adopt:
            self._cluster_id = cid
        elif cid != self._cluster_id:
            self.stats["resets"] += 1
            raise StoreResetError(
                f"etcd source {self.name}: cluster id changed {self._cluster_id:x} -> {cid:x}"
            )

    async def _call(self, what: str, fn: Callable[[_Endpoint], Any], revision: int = 0) -> Any:
        """Run one unary request, failing over to the next endpoints on unavailability."""
        last: DatasyncError | None = None
        for _ in range(len(self._eps)):
            ep = self._ep()
            try:
                with _mapped(what, ep.address, revision):
                    return await fn(ep)
            except SourceUnavailableError as exc:
                last = exc
                self._fail_over(ep)
        assert last is not None
        raise last

    # --- snapshot ------------------------------------------------------------------------

    async def snapshot(self, prefixes: Sequence[str]) -> Snapshot:
        """Every key under ``prefixes`` at one revision R, paginated at R.

        A failure midway raises (``SourceUnavailableError``, ``CompactedError``...);
        a partial result is never returned. Values over ``max_value_bytes`` are dropped
        and counted in ``stats["oversized"]``.
        """
        ranges = _ranges(prefixes)
        kvs: list[KeyVal] = []
        maxv = self.max_value_bytes
        revision = 0
        header: Any = None
        i = 0
        key = ranges[0][0]
        limit = self.page_size
        pending: asyncio.Task[Any] | None = None
        try:
            while True:
                if pending is None:
                    req = rpc.RangeRequest(
                        key=key, range_end=ranges[i][1], limit=self.page_size, revision=revision
                    )
                    resp = await self._call("snapshot range", self._ranger(req), revision)
                else:
                    resp, pending = await pending, None
                self.stats["pages"] += 1
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
                    # for every limited request, so few large pages beat many small ones.
                    # (ByteSize() would walk the whole message: sample a few entries instead.)
                    n = min(len(page), 64)
                    size = sum(len(page[j].key) + len(page[j].value) for j in range(n)) + 16 * n
                    limit = max(self.page_size, self.max_page_bytes * n // size)
                if resp.more and page:
                    key = page[-1].key + b"\0"
                elif i + 1 < len(ranges):
                    i += 1
                    key = ranges[i][0]
                else:
                    key = b""
                if key:
                    # Ask for the next page now: etcd works on it while we convert this one.
                    nxt = rpc.RangeRequest(
                        key=key, range_end=ranges[i][1], limit=limit, revision=revision
                    )
                    pending = asyncio.create_task(
                        self._call("snapshot range", self._ranger(nxt), revision)
                    )
                # The hot loop: tuple.__new__ skips KeyVal's Python-level __new__.
                got = [
                    _tnew(KeyVal, (kv.key.decode(), v, kv.mod_revision))
                    for kv in page
                    if len(v := kv.value) <= maxv
                ]
                if len(got) != len(page):
                    for kv in page:
                        if len(kv.value) > maxv:
                            self._drop_oversized(kv.key, len(kv.value), kv.mod_revision)
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
        extra: dict[str, object] = {}
        if revision < self._handed_out:
            extra["revision_regressed_from"] = self._handed_out
        self._note_cluster(header, adopt=True)
        self._handed_out = revision
        self.stats["snapshots"] += 1
        self._set_state(SourceState.CONNECTED, "snapshot read")
        return Snapshot(revision=revision, kvs=kvs, store_id=self.cluster_id, extra=extra)

    def _ranger(self, req: Any) -> Callable[[_Endpoint], Any]:
        return lambda ep: ep.kv.Range(req, timeout=self.request_timeout, metadata=self._md)

    def _drop_oversized(self, key: bytes, size: int, revision: int) -> None:
        self.stats["oversized"] += 1
        log.warning(
            "etcd source %s: dropped value of key %r at revision %d: %d bytes > max_value_bytes %d",
            self.name,
            key.decode(errors="replace"),
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
        ``max_retries`` is set and exhausted.
        """
        if start_revision < 1:
            raise ValueError(f"start_revision must be >= 1, got {start_revision}")
        return self._watch(list(prefixes), start_revision)

    async def _watch(self, prefixes: list[str], start_revision: int) -> AsyncIterator[list[Change]]:
        bprefixes = tuple(p.encode() for p in prefixes)
        lo, hi = _cover(prefixes)
        next_rev = start_revision
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            ep = self._ep()
            call: Any = None
            dog: asyncio.Task[None] | None = None
            tr = _Tracker(loop.time())
            created_at = None
            recycle_at = (
                loop.time() + random.uniform(*self.recycle_interval)
                if self.recycle_interval
                else float("inf")
            )
            try:
                try:
                    with _mapped("watch", ep.address, next_rev):
                        call = ep.watch.Watch(metadata=self._md)
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
                            await self._check_created(ep, resp, next_rev)
                    created_at = loop.time()
                    self._set_state(SourceState.CONNECTED, f"watching on {ep.address}")
                    dog = asyncio.create_task(self._watchdog(call, tr))
                    maxv = self.max_value_bytes
                    name = self.name
                    while True:
                        tr.waiting_since = loop.time()
                        with _mapped("watch", ep.address, next_rev):
                            try:
                                resp = await call.read()
                            except asyncio.CancelledError:
                                # grpc cancels the read when the watchdog cancels the call or
                                # close() closes the channel; our own cancellation propagates.
                                task = asyncio.current_task()
                                if task is not None and not task.cancelling():
                                    if self._closed:
                                        raise ClosedError(
                                            f"etcd source {self.name} is closed"
                                        ) from None
                                    if tr.stalled:
                                        raise _StreamEnded("watch stalled") from None
                                raise
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
                                self.stats["duplicate"] += 1
                                continue
                            key = kv.key
                            if not key.startswith(bprefixes):
                                # Inside the covering range, outside every prefix: expected.
                                self.stats["outside_prefix"] += 1
                                log.debug("etcd source %s: skipped key %r", name, key)
                                continue
                            if ev.type == _PUT:
                                if len(kv.value) > maxv:
                                    self._drop_oversized(key, len(kv.value), rev)
                                    continue
                                op, value = Op.PUT, kv.value
                            else:
                                op, value = Op.DELETE, None
                            prev = ev.prev_kv.value if ev.HasField("prev_kv") else None
                            batch.append(Change(key.decode(), op, value, rev, prev, name))
                        last = events[-1].kv.mod_revision
                        if last >= next_rev:
                            next_rev = last + 1
                            if last > self._handed_out:
                                self._handed_out = last
                        if batch:
                            self.stats["batches"] += 1
                            self.stats["events"] += len(batch)
                            yield batch
                        if loop.time() > recycle_at:
                            raise _Recycle
                except _Recycle:
                    # Not a failure: no state change, same endpoint, no backoff.
                    self.stats["recycles"] += 1
                except (SourceUnavailableError, _StreamEnded) as exc:
                    err = _translate(exc, "watch", ep.address, next_rev)
                    if tr.stalled:
                        self.stats["stalls"] += 1
                        self._set_state(SourceState.STALLED, str(err))
                    else:
                        self._set_state(SourceState.DISCONNECTED, str(err))
                    # A watch that lived a while earns a fresh backoff; one that dies right
                    # after its creation (a member without leader, say) keeps backing off.
                    if created_at is not None and loop.time() - created_at > 1.0:
                        failures = 0
                    failures += 1
                    self.stats["reconnects"] += 1
                    if self.max_retries is not None and failures > self.max_retries:
                        raise SourceUnavailableError(
                            f"etcd source {self.name}: gave up after {failures - 1} "
                            f"reconnects: {err}"
                        ) from exc
                    log.info(
                        "etcd source %s: watch lost (%s); resuming at %d", self.name, err, next_rev
                    )
                    self._fail_over(ep)
                    await asyncio.sleep(self._backoff(failures))
            finally:
                if dog is not None:
                    dog.cancel()
                if call is not None:
                    call.cancel()

    async def _check_created(self, ep: _Endpoint, resp: Any, next_rev: int) -> None:
        if resp.canceled or not resp.created:
            self._raise_if_compacted(resp, next_rev)
            raise _StreamEnded(f"watch not created: {resp.cancel_reason or 'no created reply'}")
        self._note_cluster(resp.header, adopt=False)
        baseline = next_rev - 1
        if resp.header.revision < baseline:
            # A lagging follower also answers with an older header; a linearizable read
            # waits for it to catch up, so only a store that truly went back fails this.
            r = await ep.kv.Range(
                rpc.RangeRequest(key=b"\0", count_only=True, limit=1),
                timeout=self.request_timeout,
                metadata=self._md,
            )
            if r.header.revision < baseline:
                self.stats["resets"] += 1
                raise StoreResetError(
                    f"etcd source {self.name}: store revision {r.header.revision} on "
                    f"{ep.address} is below revision {baseline} already handed out"
                )

    def _raise_if_compacted(self, resp: Any, next_rev: int) -> None:
        if resp.compact_revision:
            self.stats["compacted"] += 1
            raise CompactedError(
                f"etcd source {self.name}: revision {next_rev} is compacted "
                f"(compact revision {resp.compact_revision})",
                resp.compact_revision,
            )

    async def _watchdog(self, call: Any, tr: _Tracker) -> None:
        """Ask for progress when the stream is quiet; cancel it when nothing answers."""
        loop = asyncio.get_running_loop()
        tick = min(self.progress_interval, self.stall_timeout) / 2
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
            if idle >= self.stall_timeout:
                tr.stalled = True
                call.cancel()
                return
            if (
                idle >= self.progress_interval
                and now - tr.last_progress_req >= self.progress_interval
            ):
                tr.last_progress_req = now
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.stall_timeout):
                        await call.write(req)

    # --- publisher -----------------------------------------------------------------------

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Put one key; returns its revision."""
        req = rpc.PutRequest(key=key.encode(), value=value, lease=lease)
        resp = await self._call(
            f"put {key!r}",
            lambda ep: ep.kv.Put(req, timeout=self.request_timeout, metadata=self._md),
        )
        return int(resp.header.revision)

    async def delete(self, key: str) -> int:
        """Delete one key; returns the store revision after it."""
        req = rpc.DeleteRangeRequest(key=key.encode())
        resp = await self._call(
            f"delete {key!r}",
            lambda ep: ep.kv.DeleteRange(req, timeout=self.request_timeout, metadata=self._md),
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
            "txn", lambda ep: ep.kv.Txn(req, timeout=self.request_timeout, metadata=self._md)
        )
        return int(resp.header.revision)

    async def current_revision(self) -> int:
        """The store's current revision (a linearizable read)."""
        req = rpc.RangeRequest(key=b"\0", count_only=True, limit=1)
        resp = await self._call(
            "revision", lambda ep: ep.kv.Range(req, timeout=self.request_timeout, metadata=self._md)
        )
        return int(resp.header.revision)

    async def compact(self, revision: int, physical: bool = True) -> None:
        """Compact the store's history up to ``revision`` (tests and maintenance)."""
        req = rpc.CompactionRequest(revision=revision, physical=physical)
        await self._call(
            "compact",
            lambda ep: ep.kv.Compact(req, timeout=self.request_timeout, metadata=self._md),
        )

    async def lease(self, ttl: int) -> EtcdLease:
        """Grant a lease kept alive until ``revoke()`` or ``close()``; keys put with it vanish
        with this process."""
        req = rpc.LeaseGrantRequest(TTL=ttl)
        resp = await self._call(
            "lease grant", lambda ep: ep.lease.LeaseGrant(req, timeout=self.request_timeout)
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
        for ep in self._eps:
            await ep.close()
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
                    call = ep.lease.LeaseKeepAlive(timeout=src.request_timeout)
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
            lambda ep: ep.lease.LeaseRevoke(req, timeout=self.source.request_timeout),
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
