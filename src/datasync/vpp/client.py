"""The asyncio VPP API client: pipelined calls, dumps, events, health probe, reconnect.

``client = VppClient(path); await client.connect()`` performs VPP's socket handshake
(``sockclnt_create``), resolves every message of our definitions by ``name_crc`` in the
table VPP returns, and then keeps up to ``max_in_flight`` requests outstanding, matched
to replies by ``context``. Dumps are sent together with a ``control_ping`` carrying the
same context; the ping's reply ends the dump (VPP processes one socket strictly in
order). Context-less messages (``sw_interface_event``) go to subscribers.

A ``control_ping`` every ``probe_interval`` is the health probe; its ``vpe_pid`` tells a
VPP restart from a mere reconnect. VPP answers one connection in order, so a ping queued
behind the client's own requests is answered after them: any frame arriving is proof of
life, an idle VPP that leaves ``probe_failures`` pings in a row unanswered for
``probe_timeout`` is hung, and a VPP busy with our outstanding requests is hung only once
it sent nothing at all for ``busy_timeout``. A lost connection fails the calls in flight with
:class:`VppConnectionError`, is reported as a typed fault event (see
:mod:`datasync.vpp.faults` and :meth:`VppClient.add_fault_listener`) and is followed by a
reconnect loop with capped, jittered backoff that only ``close()`` stops.

Settings come as one :class:`~datasync.vpp.config.VppClientConfig`; each transport is
opened by its own module (:mod:`datasync.vpp.socket_link`, :mod:`datasync.vpp.shm_link`,
:mod:`datasync.vpp.vac`), which returns the connected transport and its message table.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import operator
import os
import random
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

from ..errors import ClosedError, DatasyncError
from . import shm_link, socket_link, vac
from .config import VppClientConfig, VppConfigError
from .defs import ApiDefinitions, builtin_definitions
from .errors import (
    VppApiError,
    VppConnectionError,
    VppMessageError,
    VppMessageTooLargeError,
    VppProtocolError,
    VppTimeoutError,
)
from .faults import (
    Disconnected,
    FaultCallback,
    FaultListener,
    Reconnected,
    Unresponsive,
    VppFault,
    VppRestarted,
)
from .link import MessageTable, Transport

__all__ = [
    "FaultCallback",
    "FaultListener",
    "Subscription",
    "VppApiError",
    "VppClient",
    "VppClientConfig",
    "VppConfigError",
    "VppConnectionError",
    "VppFault",
    "VppMessageError",
    "VppMessageTooLargeError",
    "VppProtocolError",
    "VppTimeoutError",
]

log = logging.getLogger("datasync.vpp.client")

#: the head of a message body: its u16 message id and (in all but events) u32 context
_HEAD = struct.Struct(">HI")


_retval = operator.attrgetter("retval")


def _first_negative_retval(replies: list[Any], stop: int) -> int | None:
    """The index of the first of ``replies[:stop]`` with a negative ``retval`` (None: none)."""
    head = replies if stop == len(replies) else replies[:stop]
    try:
        if min(map(_retval, head), default=0) >= 0:
            return None
    except (AttributeError, TypeError):
        pass  # a reply without retval: look at each
    for i, reply in enumerate(head):
        if getattr(reply, "retval", 0) < 0:
            return i
    return None


class _Stalled(Exception):
    """The probe's verdict: VPP sent nothing for busy_timeout with our requests outstanding."""

    def __init__(self, silent_for: float, outstanding: int, events_only: bool = False) -> None:
        self.silent_for = silent_for
        self.outstanding = outstanding
        self.events_only = events_only
        what = "no reply (events only)" if events_only else "no message"
        super().__init__(f"{what} from VPP for {silent_for:.2f} s")


class _Call:
    """One request in flight: a plain call, or a dump collecting details until the ping."""

    __slots__ = ("details", "future", "name")

    batch = None  # a plain call, not a member of a call_many batch (see _Member)

    def __init__(self, name: str, future: asyncio.Future[Any], dump: bool) -> None:
        self.name = name
        self.future = future
        self.details: list[Any] | None = [] if dump else None


class _Batch:
    """The requests of one ``call_many``: their replies by position, the failures, how
    many are still outstanding, and the one future its caller waits on for all of them."""

    __slots__ = ("failures", "left", "name", "results", "waiter")

    def __init__(self, name: str) -> None:
        self.name = name
        self.results: list[Any] = []
        self.failures: dict[int, BaseException] = {}
        self.left = 0
        self.waiter: asyncio.Future[None] | None = None

    def settle(self, index: int, result: Any, exc: BaseException | None) -> None:
        if exc is not None:
            self.failures[index] = exc
        else:
            self.results[index] = result
        self.left -= 1
        if not self.left:
            self.wake()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Member:
    """One dump request of a ``call_many`` batch in flight: no future of its own, its
    details collect in ``details``, and go to the batch's list at ``index`` (any other
    request of a batch is just ``(batch, index)`` in ``_pending``: no object to make)."""

    __slots__ = ("batch", "details", "index")

    future = None

    def __init__(self, batch: _Batch, index: int, details: list[Any] | None) -> None:
        self.batch = batch
        self.index = index
        self.details = details

    @property
    def name(self) -> str:
        return self.batch.name


#: what _pending holds for a request in flight: a call (or dump) with its future, or a
#: member of a call_many batch, as ``(batch, index)`` (a dump's as a _Member)
_Pending = _Call | _Member | tuple[_Batch, int]


def _batch_of(call: _Pending) -> _Batch | None:
    return call[0] if isinstance(call, tuple) else call.batch


class Subscription:
    """A handle on an event subscription; ``close()`` stops delivery (idempotent)."""

    def __init__(self, client: VppClient, name: str, callback: Callable[[Any], Any]) -> None:
        self._client = client
        self.name = name
        self.callback = callback
        self.closed = False
        #: called once on close (``events()`` uses it to end its iteration)
        self.on_close: Callable[[], None] | None = None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            subs = self._client._subscribers.get(self.name)
            if subs is not None and self in subs:
                subs.remove(self)
            if self.on_close is not None:
                self.on_close()


class VppClient:
    """An asyncio client of the VPP binary API over its AF_UNIX socket.

    ``call(name, **fields)`` returns the decoded reply and raises :class:`VppApiError`
    (with VPP's error name and ``retriable``) on a negative retval; ``dump(name, **fields)``
    returns the list of details. Both take a per-call ``timeout``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = "/run/vpp/api.sock",
        defs: ApiDefinitions | None = None,
        *,
        config: VppClientConfig | None = None,
        on_fault: FaultCallback | None = None,
        **options: Any,
    ) -> None:
        """``config`` says how to talk to VPP; keyword ``options`` (the fields of
        :class:`VppClientConfig`, e.g. ``timeout=10``) override it, as before it existed."""
        cfg = config if config is not None else VppClientConfig()
        if options:
            cfg = cfg.replace(**options)
        self.config = cfg
        self.path = os.fspath(path)
        self.defs = defs if defs is not None else builtin_definitions()
        self.name = cfg.name
        self.max_in_flight = cfg.max_in_flight
        #: the window in use: max_in_flight, or less when the transport needs it
        self._window = cfg.max_in_flight
        self.timeout = cfg.timeout
        self.connect_timeout = cfg.connect_timeout
        self.probe_interval = cfg.probe_interval
        self.probe_timeout = cfg.probe_timeout
        self.probe_failures = cfg.probe_failures
        self.busy_timeout = cfg.effective_busy_timeout
        self.reconnect = cfg.reconnect
        self.backoff = cfg.backoff
        self.require = cfg.require
        #: the older fault callback, ``on_fault(kind, detail)``; see add_fault_listener
        self.on_fault = on_fault
        self._fault_listeners: list[FaultListener] = []
        self.event_queue_size = cfg.event_queue_size
        self.transport_kind = cfg.transport
        # the older attribute names of the settings (read them from ``config``)
        self.backoff_initial = cfg.backoff_initial
        self.backoff_max = cfg.backoff_max
        self.shm_size = cfg.shm_size
        self.vac_library = cfg.vac_library
        self.vac_prefix = cfg.vac_prefix
        self.vac_mode = cfg.vac_mode
        self.vpe_pid: int | None = None
        self.stats: dict[str, int] = {
            "requests": 0,
            "replies": 0,
            "late_replies": 0,
            "unsolicited": 0,
            "unknown_msg_id": 0,
            "decode_errors": 0,
            "events": 0,
            "event_callback_errors": 0,
            "events_dropped": 0,
            "connects": 0,
            "disconnects": 0,
            "timeouts": 0,
            "max_in_flight_seen": 0,
        }
        self._transport: Transport | None = None
        self._conn: MessageTable | None = None
        self._pending: dict[int, _Pending] = {}
        self._timed_out: set[int] = set()
        #: abandoned requests still holding their window slot (vac), and whether to hold
        self._held: set[int] = set()
        self._hold_abandoned = False
        self._context = 0
        self._in_flight = 0
        self._window_waiters: deque[asyncio.Future[None]] = deque()
        self._subscribers: dict[str, list[Subscription]] = {}
        self._wants: dict[str, dict[str, Any]] = {}
        self._closed = False
        self._connected = asyncio.Event()
        self._probe_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        #: a loss was reported while the reconnect loop ran: it must not stop yet
        self._reconnect_again = False
        #: batches of frames received (any frame is proof of life for the health probe)
        self._rx_batches = 0
        #: loop time of the last frame, and since when requests are outstanding
        self._last_rx = 0.0
        self._busy_since = 0.0
        #: connection losses so far, and the error the last one failed its calls with
        self._losses = 0
        self._loss: BaseException | None = None
        #: why we aborted the connection ourselves (reported instead of the transport's error)
        self._abort_reason: VppConnectionError | None = None
        #: the largest request body the connection carries (the shm ring's limit; None: any)
        self._max_body: int | None = None
        self._fault_tasks: set[asyncio.Task[Any]] = set()
        self._rng = random.Random()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._deadlines: deque[tuple[float, int, _Call]] = deque()
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set on connect

    # -- connection ------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the handshake is done and the socket is up."""
        return self._conn is not None and self._transport is not None

    async def connect(self) -> None:
        """Connect and handshake; raises :class:`VppConnectionError` or :class:`VppMessageError`."""
        if self._closed:
            raise ClosedError("VppClient is closed")
        if self.connected:
            return
        if self._reconnect_task is not None and not self._reconnect_task.done():
            # the reconnect loop owns connecting: wait for it rather than race it
            await self.wait_connected(self.connect_timeout)
            return
        await self._connect_once()
        self._start_probe()

    async def _open(self) -> tuple[Transport, MessageTable]:
        """Open the configured transport: its module's ``open()`` handshakes."""
        cfg = self.config
        if cfg.transport == "vac":
            return await vac.open(
                self,
                self.defs,
                name=cfg.name,
                connect_timeout=cfg.connect_timeout,
                require=cfg.require,
                prefix=cfg.vac_prefix,
                library=cfg.vac_library,
                mode=cfg.vac_mode,
            )
        if cfg.transport == "shm":
            return await shm_link.open(
                self.path,
                self,
                self.defs,
                name=cfg.name,
                connect_timeout=cfg.connect_timeout,
                require=cfg.require,
                shm_size=cfg.shm_size,
            )
        return await socket_link.open(
            self.path,
            self,
            self.defs,
            name=cfg.name,
            connect_timeout=cfg.connect_timeout,
            require=cfg.require,
        )

    async def _connect_once(self) -> None:
        self._loop = asyncio.get_running_loop()
        transport, table = await self._open()
        if not transport.is_open:  # lost between the handshake's reply and now
            transport.abort()
            raise VppConnectionError("VPP closed the connection right after the handshake")
        # no await since open() returned: frames the transport delivers find the table
        self._transport, self._conn = transport, table
        self._max_body = transport.max_body
        # vac: fewer outstanding than VPP's input queue holds, or vac_write blocks
        self._window = min(self.max_in_flight, transport.max_in_flight or self.max_in_flight)
        self._hold_abandoned = transport.hold_abandoned
        self.stats["connects"] += 1
        self._connected.set()
        # learn vpe_pid at once, so a restart is detected even before the first probe
        try:
            reply = await self._request(
                "control_ping", None, timeout=self.connect_timeout, check=True
            )
        except BaseException:
            # half-made connection: close it quietly, the caller (or the loop) retries
            current = self._transport
            self._drop_connection(VppConnectionError("VPP did not answer control_ping"))
            if current is not None:
                current.abort()
            raise
        previous, self.vpe_pid = self.vpe_pid, int(reply.vpe_pid)
        if previous is not None and previous != self.vpe_pid:
            self._fault(VppRestarted(previous, self.vpe_pid))
        await self._replay_wants()

    async def close(self) -> None:
        """Say goodbye (sockclnt_delete), close the socket, stop probe and reconnect tasks."""
        if self._closed:
            return
        self._closed = True
        for task in (self._probe_task, self._reconnect_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._probe_task = self._reconnect_task = None
        transport = self._transport
        if self.connected and transport is not None and not transport.says_goodbye:
            assert self._conn is not None
            with contextlib.suppress(DatasyncError, OSError):
                await self._request(
                    "sockclnt_delete",
                    {"index": self._conn.client_index},
                    timeout=min(self.timeout, 1.0),
                    check=False,
                    closing_ok=True,
                )
        transport = self._transport
        self._drop_connection(ClosedError("VppClient closed"))
        if transport is not None:
            transport.close()
            # vac: the library is free (vac_disconnect returned) once the transport
            # reported its end, so the next connection need not wait for it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(transport.wait_closed(), self.timeout)
        for task in list(self._fault_tasks):
            task.cancel()
        for waiter in self._window_waiters:
            if not waiter.done():
                waiter.set_exception(ClosedError("VppClient closed"))
                waiter.exception()
        self._window_waiters.clear()
        # end every subscription (an events() iterator stops) ...
        for subs in list(self._subscribers.values()):
            for sub in list(subs):
                sub.close()
        self._subscribers.clear()
        # ... and wake wait_connected(), which raises ClosedError once it sees _closed
        self._connected.set()
        await asyncio.sleep(0)

    async def __aenter__(self) -> VppClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the sink interface the transport calls --------------------------------------

    def frames_received(self, bodies: list[bytes]) -> None:
        self._rx_batches += 1
        self._last_rx = self._loop.time()
        conn = self._conn
        if conn is None:
            self.stats["unsolicited"] += len(bodies)  # a transport delivers after open()
            return
        by_id = conn.by_id
        pending = self._pending
        stats = self.stats
        unpack_head = _HEAD.unpack_from
        # call_many replies settled inline: their slots are given back once, at the end
        freed = 0
        last_id = -1
        name, has_context = "", False
        codec: Any = None
        try:
            for body in bodies:
                try:
                    msg_id, ctx = unpack_head(body)
                except struct.error:  # shorter than a message id and a context
                    stats["decode_errors"] += 1
                    continue
                if msg_id != last_id:  # a batch of replies is mostly of one message
                    entry = by_id.get(msg_id)
                    if entry is None:
                        stats["unknown_msg_id"] += 1
                        continue
                    name, codec, has_context = entry
                    last_id = msg_id
                if not has_context:
                    if freed:
                        freed = self._free_slots(freed)  # a callback sees the true window
                    self._deliver_event(name, codec, body)
                    continue
                call = pending.get(ctx)
                if call is None:
                    if ctx in self._timed_out:
                        stats["late_replies"] += 1
                        if not name.endswith("_details"):
                            self._timed_out.discard(ctx)
                            if ctx in self._held:
                                self._held.discard(ctx)
                                self._release_slot()
                    else:
                        stats["unsolicited"] += 1
                    continue
                try:
                    msg = codec.decode(body)
                except Exception as exc:  # codec errors fail just that call
                    stats["decode_errors"] += 1
                    self._finish(ctx, call, exc=exc)
                    continue
                if call.__class__ is tuple:
                    # the common case, a call_many member: _finish and _Batch.settle inlined
                    batch, index = call
                    del pending[ctx]
                    batch.results[index] = msg
                    batch.left -= 1
                    if not batch.left:
                        batch.wake()
                    freed += 1
                    continue
                details = call.details  # type: ignore[union-attr]
                if details is not None:
                    if name == "control_ping_reply":
                        self._finish(ctx, call, result=details)
                    else:
                        details.append(msg)
                else:
                    self._finish(ctx, call, result=msg)
        finally:
            if freed:
                self._free_slots(freed)

    def _free_slots(self, n: int) -> int:
        """Count ``n`` replies and give back their ``n`` slots; returns 0 (none left to free)."""
        self.stats["replies"] += n
        self._in_flight -= n
        if self._window_waiters:
            self._wake_window()
        return 0

    def transport_lost(self, exc: BaseException | None) -> None:
        reason, self._abort_reason = self._abort_reason, None
        if reason is not None:
            exc = reason  # we aborted (e.g. the health probe): say so, not "peer closed"
        was_connected = self.connected
        self._drop_connection(
            exc
            if isinstance(exc, VppConnectionError)
            else VppConnectionError(f"VPP API connection lost{': ' + str(exc) if exc else ''}")
        )
        if was_connected and not self._closed:
            self.stats["disconnects"] += 1
            self._fault(Disconnected(str(exc) if exc else "closed by VPP"))
            self._start_reconnect()

    def _drop_connection(self, exc: BaseException) -> None:
        self._out = []
        self._deadlines.clear()
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        self._conn = None
        self._transport = None
        self._abort_reason = None
        self._connected.clear()
        pending, self._pending = self._pending, {}
        for call in pending.values():
            if isinstance(call, tuple):
                call[0].settle(call[1], None, exc)
            elif isinstance(call, _Member):
                call.batch.settle(call.index, None, exc)
            elif not call.future.done():
                call.future.set_exception(exc)
        self._in_flight = 0
        self._timed_out.clear()
        self._held.clear()
        self._losses += 1
        self._loss = exc
        # a request waiting for a window slot was meant for this connection: it fails
        # with the loss like the ones in flight (a slot would only meet "not connected")
        waiters, self._window_waiters = self._window_waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(exc)
                waiter.exception()  # retrieved here: its task may be cancelled meanwhile

    # -- requests ------------------------------------------------------------------

    def _next_context(self) -> int:
        ctx = self._context + 1
        if ctx > 0xFFFFFFFF:
            ctx = 1
        self._context = ctx
        return ctx

    def _finish(
        self, ctx: int, call: _Pending, result: Any = None, exc: BaseException | None = None
    ) -> None:
        del self._pending[ctx]
        self.stats["replies"] += 1
        if isinstance(call, tuple):
            call[0].settle(call[1], result, exc)
        elif isinstance(call, _Member):
            call.batch.settle(call.index, result, exc)
        else:
            fut = call.future
            if not fut.done():
                if exc is not None:
                    fut.set_exception(exc)
                else:
                    fut.set_result(result)
            dq = self._deadlines
            while dq and dq[0][2].future.done():
                dq.popleft()  # replies come mostly in order: the deadline queue stays short
        self._release_slot()

    def _wake_window(self) -> None:
        # hand free slots to waiters in FIFO order; the slot is taken on their behalf so
        # that replies arriving before a waiter runs cannot wake more waiters than slots
        waiters = self._window_waiters
        while waiters and self._in_flight < self._window:
            w = waiters.popleft()
            if not w.done():
                self._in_flight += 1
                w.set_result(None)

    async def _take_slot(self) -> None:
        """Take one in-flight slot, waiting (FIFO) while the window is full."""
        if self._in_flight < self._window and not self._window_waiters:
            self._in_flight += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._window_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # we were handed a slot: pass it on
            raise

    def _release_slot(self) -> None:
        self._in_flight -= 1
        if self._window_waiters:
            self._wake_window()

    def _resolve(self, conn: MessageTable, name: str) -> tuple[int, Any, bool]:
        """``name``'s message id on this connection, its codec, and whether it is a dump."""
        req = conn.requests.get(name)
        if req is None:
            msg_id = conn.name_to_id.get(name)
            if msg_id is None:
                if name not in self.defs.messages:
                    raise VppMessageError(name, "unknown message (not in our definitions)")
                raise VppMessageError(name, conn.why_missing([name]))
            req = conn.requests[name] = (msg_id, conn.by_id[msg_id][1], self.defs.is_dump(name))
        return req

    def _encode(self, name: str, fields: Mapping[str, Any] | None, ctx: int) -> tuple[bytes, bool]:
        conn = self._conn
        if conn is None:
            raise VppConnectionError(f"not connected to VPP (calling {name})")
        msg_id, codec, is_dump = self._resolve(conn, name)
        data = dict(fields) if fields else {}
        data["context"] = ctx
        data["client_index"] = conn.client_index
        return codec.encode(msg_id, data), is_dump

    async def call(
        self,
        name: str,
        fields: Mapping[str, Any] | None = None,
        /,
        *,
        timeout: float | None = None,
        check: bool = True,
        **kw: Any,
    ) -> Any:
        """Send request ``name`` and return its decoded reply (a dump returns its details).

        A negative ``retval`` raises :class:`VppApiError` unless ``check=False``.
        """
        if kw:
            fields = {**fields, **kw} if fields else kw
        return await self._request(name, fields, timeout=timeout, check=check)

    async def dump(
        self,
        name: str,
        fields: Mapping[str, Any] | None = None,
        /,
        *,
        timeout: float | None = None,
        **kw: Any,
    ) -> list[Any]:
        """Send dump request ``name`` and return its details (ends at the control_ping reply)."""
        if not self.defs.is_dump(name):
            raise VppMessageError(name, "not a dump request (use call())")
        if kw:
            fields = {**fields, **kw} if fields else kw
        result = await self._request(name, fields, timeout=timeout, check=False)
        assert isinstance(result, list)
        return result

    def _submit_since(
        self, name: str, fields: Mapping[str, Any] | None, losses: int
    ) -> tuple[int, _Call]:
        """``_submit``, but a connection lost since ``losses`` raises that loss's error."""
        try:
            return self._submit(name, fields)
        except VppConnectionError:
            loss = self._loss
            if self._conn is None and self._losses != losses and loss is not None:
                # lost while this caller waited: the error its requests in flight got
                raise loss from None
            raise

    def _submit(self, name: str, fields: Mapping[str, Any] | None) -> tuple[int, _Call]:
        """Encode and queue one request; the caller holds a window slot (released on error)."""
        ctx = self._next_context()
        try:
            body, is_dump = self._encode(name, fields, ctx)
            limit = self._max_body
            if limit is not None and len(body) > limit:
                # fail this call alone: sending it would break the ring for every call
                raise VppMessageTooLargeError(len(body), limit, name)
        except BaseException:
            self._release_slot()
            raise
        conn = self._conn
        assert conn is not None
        call = _Call(name, self._loop.create_future(), is_dump)
        pending = self._pending
        if not pending:
            self._busy_since = self._loop.time()
        pending[ctx] = call
        stats = self.stats
        stats["requests"] += 1
        if self._in_flight > stats["max_in_flight_seen"]:
            stats["max_in_flight_seen"] = self._in_flight
        out = self._out
        out.append(body)
        if is_dump:
            # VPP handles one socket in order: the ping's reply marks the end of the details
            ping = conn.name_to_id["control_ping"]
            out.append(
                conn.by_id[ping][1].encode(
                    ping, {"context": ctx, "client_index": conn.client_index}
                )
            )
        if self._in_flight == 1 and not self._flush_scheduled:
            self._flush_out()  # alone in flight: nothing to coalesce with, save the latency
        elif not self._flush_scheduled:
            # coalesce the writes of every request made in this loop iteration
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_out)
        return ctx, call

    def _flush_out(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        self._out = []
        transport = self._transport
        if transport is not None:
            transport.send_many(out)

    async def _request(
        self,
        name: str,
        fields: Mapping[str, Any] | None,
        *,
        timeout: float | None,
        check: bool,
        closing_ok: bool = False,
    ) -> Any:
        if self._closed and not closing_ok:
            raise ClosedError("VppClient is closed")
        losses = self._losses
        await self._take_slot()
        ctx, call = self._submit_since(name, fields, losses)
        # The deadline expires the call's future (a VppTimeoutError) rather than cancelling
        # the task: no cancel/uncancel race, and no per-call timer for the common timeout.
        limit = self.timeout if timeout is None else timeout
        handle = None
        deadline = self._loop.time() + limit
        if limit == self.timeout:
            self._deadlines.append((deadline, ctx, call))
            if self._sweep_handle is None:
                self._sweep_handle = self._loop.call_at(deadline, self._sweep)
        else:
            handle = self._loop.call_at(deadline, self._expire, ctx, call, limit)
        try:
            reply = await call.future
        except asyncio.CancelledError:
            self._abandon(ctx)
            raise
        finally:
            if handle is not None:
                handle.cancel()
        if check and call.details is None:
            rv = getattr(reply, "retval", 0)
            if rv < 0:
                raise VppApiError(rv, name)
        return reply

    def _sweep(self) -> None:
        self._sweep_handle = None
        dq = self._deadlines
        now = self._loop.time()
        pending = self._pending
        while dq and dq[0][0] <= now:
            _, ctx, call = dq.popleft()
            if pending.get(ctx) is call:
                self._expire(ctx, call, self.timeout)
        while dq and dq[0][2].future.done():
            dq.popleft()
        if dq:
            self._sweep_handle = self._loop.call_at(dq[0][0], self._sweep)

    def _expire(self, ctx: int, call: _Call, limit: float) -> None:
        if self._pending.get(ctx) is not call:
            return
        self._abandon(ctx)
        self.stats["timeouts"] += 1
        if not call.future.done():
            call.future.set_exception(VppTimeoutError(call.name, limit))

    def _abandon(self, ctx: int) -> None:
        call = self._pending.pop(ctx, None)
        if call is not None:
            self._timed_out.add(ctx)
            if len(self._timed_out) > 100_000:
                self._timed_out.clear()  # bounded: very old contexts are just "unsolicited"
                self._timed_out |= self._held  # (at most a window of them)
            if self._hold_abandoned:
                # the request still waits in VPP's queue: its slot is free once VPP
                # answered it, so our requests never fill that queue (vac_write blocks)
                self._held.add(ctx)
            else:
                self._release_slot()

    async def call_many(
        self,
        name: str,
        requests: Iterable[Mapping[str, Any] | None],
        *,
        timeout: float | None = None,
        check: bool = True,
    ) -> list[Any]:
        """Pipeline many ``name`` requests within ``max_in_flight``; replies in request order.

        No task per request: requests are written in batches as window slots free up.
        ``timeout`` bounds the wait for each batch of replies. The first failure (API error,
        timeout, lost connection) is raised once every request has settled or was abandoned.
        """
        if self._closed:
            raise ClosedError("VppClient is closed")
        limit = self.timeout if timeout is None else timeout
        # No future per request: each one is a (batch, index) in _pending (a dump's a
        # _Member, for its details), its
        # reply lands in batch.results, and the caller waits on one future for the lot.
        batch = _Batch(name)
        results = batch.results
        refused: BaseException | None = None
        losses = self._losses
        is_dump = False
        it = iter(requests)
        try:
            async with asyncio.timeout(limit) as scope:
                for first in it:
                    # a run: ``first`` and as many more as the window has room for, no await
                    held = 0
                    if self._in_flight >= self._window or self._window_waiters:
                        self._flush_out()
                        try:
                            await self._take_slot()
                        except (VppConnectionError, ClosedError) as exc:
                            refused = exc  # lost while waiting: the error the sent ones got
                            break
                        held = 1
                        scope.reschedule(self._loop.time() + limit)  # progress: a fresh deadline
                    conn = self._conn
                    try:
                        if conn is None:
                            raise self._not_connected(name, losses)
                        msg_id, codec, is_dump = self._resolve(conn, name)
                    except Exception as exc:
                        refused = exc
                        if held:
                            self._release_slot()
                        break
                    refused, more = self._submit_run(
                        conn, batch, msg_id, codec, is_dump, first, it, held
                    )
                    if refused is not None or not more:
                        break
                self._flush_out()
                if batch.left:
                    waiter = batch.waiter = self._loop.create_future()
                    await waiter
        except (TimeoutError, asyncio.CancelledError) as exc:
            pending = self._pending
            mine = [c for c, call in pending.items() if _batch_of(call) is batch]
            for ctx in mine:
                self._abandon(ctx)
            if isinstance(exc, asyncio.CancelledError):
                raise
            self.stats["timeouts"] += 1
            raise VppTimeoutError(name, limit) from None
        error = refused
        failures = batch.failures
        if error is None and (failures or check):
            stop = min(failures) if failures else len(results)
            if check and not is_dump:
                bad = _first_negative_retval(results, stop)
                if bad is not None:
                    error = VppApiError(results[bad].retval, name)
            if error is None and failures:
                error = failures[stop]
        if error is not None:
            raise error
        return results

    def _submit_run(
        self,
        conn: MessageTable,
        batch: _Batch,
        msg_id: int,
        codec: Any,
        is_dump: bool,
        first: Mapping[str, Any] | None,
        rest: Iterator[Mapping[str, Any] | None],
        held: int,
    ) -> tuple[BaseException | None, bool]:
        """Encode and queue ``first`` and then requests from ``rest`` while the window has
        room (``held``: a slot was taken for ``first`` already); returns the error that
        stopped it (the request it was raised for is not sent) and whether ``rest`` may
        hold more. :meth:`_submit` for a run of one batch's requests, with no await."""
        pending = self._pending
        if not pending:
            self._busy_since = self._loop.time()
        room = self._window - self._in_flight + held
        results = batch.results
        index = start = len(results)
        out = self._out
        max_body = self._max_body
        client_index = conn.client_index
        ping = ping_codec = None
        if is_dump:
            # VPP handles one socket in order: the ping's reply marks the end of the details
            ping = conn.name_to_id["control_ping"]
            ping_codec = conn.by_id[ping][1]
        ctx = self._context
        error: BaseException | None = None
        try:
            for fields in itertools.chain((first,), itertools.islice(rest, room - 1)):
                ctx += 1
                if ctx > 0xFFFFFFFF:
                    ctx = 1
                try:
                    if fields is None:
                        data = {"client_index": client_index, "context": ctx}
                    else:
                        # ours win over the caller's; in layout order, for the codec's fast path
                        data = {"client_index": client_index, "context": ctx, **fields}
                        data["client_index"] = client_index
                        data["context"] = ctx
                    body = codec.encode(msg_id, data)
                    if max_body is not None and len(body) > max_body:
                        # fail this call alone: sending it would break the ring for every call
                        raise VppMessageTooLargeError(len(body), max_body, batch.name)
                except Exception as exc:
                    # e.g. a field that does not encode, a body too large for the ring:
                    # send nothing more, let the requests already sent settle, then raise
                    error = exc
                    break
                out.append(body)
                if ping_codec is not None:
                    pending[ctx] = _Member(batch, index, [])
                    out.append(
                        ping_codec.encode(ping, {"client_index": client_index, "context": ctx})
                    )
                else:
                    pending[ctx] = (batch, index)
                index += 1
        finally:
            used = index - start
            results += [None] * used  # the replies' places (none arrives during the run)
            self._context = ctx
            batch.left += used
            self._in_flight += used - held
            if used < held and self._window_waiters:
                self._wake_window()
            stats = self.stats
            stats["requests"] += used
            if self._in_flight > stats["max_in_flight_seen"]:
                stats["max_in_flight_seen"] = self._in_flight
        return error, error is None and used == room

    def _not_connected(self, name: str, losses: int) -> BaseException:
        """The error for a request made with no connection: the loss's error when the
        connection was lost since ``losses`` (what the caller's requests in flight got)."""
        loss = self._loss
        if self._losses != losses and loss is not None:
            return loss
        return VppConnectionError(f"not connected to VPP (calling {name})")

    # -- events ------------------------------------------------------------------------

    def _deliver_event(self, name: str, codec: Any, body: bytes) -> None:
        self.stats["events"] += 1
        subs = self._subscribers.get(name)
        if not subs:
            return
        try:
            msg = codec.decode(body)
        except Exception:
            self.stats["decode_errors"] += 1
            return
        for sub in list(subs):
            try:
                result = sub.callback(msg)
                if inspect.isawaitable(result):
                    self._spawn(result)
            except Exception:  # a subscriber's bug must not kill the reader
                self.stats["event_callback_errors"] += 1
                log.exception("VPP event callback for %s failed", name)

    def subscribe(self, name: str, callback: Callable[[Any], Any]) -> Subscription:
        """Call ``callback(msg)`` for every context-less message ``name`` (e.g. an event).

        This only routes; VPP sends events after a ``want_*`` call (see :meth:`want`).
        """
        if name not in self.defs.messages:
            raise VppMessageError(name, "unknown message (not in our definitions)")
        if self.defs.message(name).has_context:
            raise VppMessageError(name, "has a context: it is a reply, not an event")
        sub = Subscription(self, name, callback)
        self._subscribers.setdefault(name, []).append(sub)
        return sub

    async def events(self, name: str) -> AsyncIterator[Any]:
        """Iterate over events ``name``; keeps at most ``event_queue_size`` (drops the oldest).

        The iteration ends when the client is closed (events queued before are delivered).
        """
        queue: deque[Any] = deque()
        wake: asyncio.Event = asyncio.Event()

        def put(msg: Any) -> None:
            if len(queue) >= self.event_queue_size:
                queue.popleft()
                self.stats["events_dropped"] += 1
            queue.append(msg)
            wake.set()

        if self._closed:
            return
        sub = self.subscribe(name, put)
        sub.on_close = wake.set
        try:
            while True:
                while queue:
                    yield queue.popleft()
                if sub.closed:
                    return
                wake.clear()
                await wake.wait()
        finally:
            sub.close()

    async def want(self, name: str, fields: Mapping[str, Any] | None = None, **kw: Any) -> Any:
        """Register for events with ``want_*`` (enable) and re-register after every reconnect."""
        data = {**(fields or {}), **kw}
        data.setdefault("enable_disable", True)
        data.setdefault("pid", os.getpid())
        reply = await self.call(name, data)
        if data["enable_disable"]:
            self._wants[name] = data
        else:
            self._wants.pop(name, None)
        return reply

    async def _replay_wants(self) -> None:
        for name, data in list(self._wants.items()):
            try:
                await self.call(name, data)
            except (VppConnectionError, ClosedError):
                raise  # the new connection is gone already: the reconnect loop goes on
            except DatasyncError as exc:
                log.warning("re-registering %s after reconnect failed: %s", name, exc)

    # -- faults, probe, reconnect ------------------------------------------------------

    def _spawn(self, aw: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(aw)
        self._fault_tasks.add(task)
        task.add_done_callback(self._fault_tasks.discard)

    def add_fault_listener(self, callback: FaultListener) -> None:
        """Call ``callback(event)`` with every :data:`~datasync.vpp.faults.VppFault`
        (a coroutine it returns runs in a task)."""
        self._fault_listeners.append(callback)

    def remove_fault_listener(self, callback: FaultListener) -> None:
        with contextlib.suppress(ValueError):
            self._fault_listeners.remove(callback)

    def _fault(self, event: VppFault) -> None:
        log.info("VPP fault %s: %s", event.kind, event.detail())
        for listener in list(self._fault_listeners):
            self._notify(event, listener, event)
        on_fault = self.on_fault
        if on_fault is not None:
            self._notify(event, on_fault, event.kind, event.detail())

    def _notify(self, event: VppFault, callback: Callable[..., Any], *args: Any) -> None:
        try:
            result = callback(*args)
            if inspect.isawaitable(result):
                self._spawn(result)
        except Exception:  # a listener's bug must not stop the others or the client
            log.exception("VPP fault callback failed for %s", event.kind)

    def _start_probe(self) -> None:
        if self.probe_interval and (self._probe_task is None or self._probe_task.done()):
            self._probe_task = asyncio.get_running_loop().create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        assert self.probe_interval
        failures = 0
        rx_at_miss = -1
        while not self._closed:
            await asyncio.sleep(self.probe_interval)
            if not self.connected:
                # backstop: a lost connection must always have a live reconnect loop
                task = self._reconnect_task
                if self.reconnect and (task is None or task.done()):
                    log.warning("VPP disconnected with no reconnect in progress: starting one")
                    self._start_reconnect()
                continue
            if self._rx_batches != rx_at_miss:
                failures = 0  # frames arrived since the last miss: VPP is alive
            transport = self._transport
            try:
                reply = await self._probe_once()
            except _Stalled as stall:
                failures = 0
                if transport is not None and transport is self._transport:
                    self._fault(
                        Unresponsive(
                            self.busy_timeout,
                            silent_for=round(stall.silent_for, 3),
                            outstanding=stall.outstanding,
                            events_only=stall.events_only,
                        )
                    )
                    self._abort_reason = VppConnectionError(
                        f"health probe failed: {stall} with {stall.outstanding} requests "
                        f"outstanding (busy_timeout {self.busy_timeout:g} s); connection aborted"
                    )
                    transport.abort()
                continue
            except DatasyncError:
                continue
            if reply is None:
                failures += 1
                rx_at_miss = self._rx_batches
                transport = self._transport
                if failures >= self.probe_failures and transport is not None:
                    self._fault(Unresponsive(self.probe_timeout, misses=failures))
                    # treat a hung VPP like a lost one: reconnect and let the pid tell
                    self._abort_reason = VppConnectionError(
                        f"health probe failed: no message from VPP within "
                        f"{self.probe_timeout:g} s, {failures} times in a row; connection aborted"
                    )
                    failures = 0
                    transport.abort()
                continue
            failures = 0
            pid = int(reply.vpe_pid)
            if self.vpe_pid is not None and pid != self.vpe_pid:
                old, self.vpe_pid = self.vpe_pid, pid
                self._fault(VppRestarted(old, pid))
            else:
                self.vpe_pid = pid

    def _check_stall(self) -> None:
        """Raise :class:`_Stalled` when VPP, busy with our requests, went silent too long."""
        silent_for = self._loop.time() - max(self._last_rx, self._busy_since)
        if silent_for >= self.busy_timeout:
            raise _Stalled(silent_for, len(self._pending))

    async def _probe_once(self) -> Any:
        """One health probe: the control_ping reply, or None for a silent miss.

        VPP answers in order, so while our own requests are ahead of the ping (or fill
        the window it waits for) a late ping only means VPP is busy: the probe keeps
        waiting as long as frames arrive, and raises :class:`_Stalled` once nothing at all
        arrived for ``busy_timeout``. With nothing of ours ahead, ``probe_timeout`` of
        silence is a miss.
        """
        slice_ = self.probe_timeout
        if self._in_flight < self._window and not self._window_waiters:
            self._in_flight += 1
        else:
            # one waiter for the whole wait keeps the ping's place in the FIFO
            waiter = self._loop.create_future()
            self._window_waiters.append(waiter)
            try:
                while True:
                    rx = self._rx_batches
                    done, _ = await asyncio.wait((waiter,), timeout=slice_)
                    if done:
                        waiter.result()  # the loss, if the connection went meanwhile
                        break
                    if self._rx_batches == rx:
                        self._check_stall()  # the window is full of our work: busy
            except BaseException:
                if not waiter.done():
                    waiter.cancel()
                elif not waiter.cancelled() and waiter.exception() is None:
                    self._release_slot()  # we were handed a slot: pass it on
                raise
        ctx, call = self._submit("control_ping", None)
        fut = call.future
        sent = self._loop.time()
        try:
            while True:
                rx = self._rx_batches
                done, _ = await asyncio.wait((fut,), timeout=slice_)
                if done:
                    return fut.result()
                first = next(iter(self._pending), ctx)
                if self._rx_batches != rx:
                    if first == ctx and self._loop.time() - sent >= self.busy_timeout:
                        # events keep coming, but the ping, first in line, is not answered
                        raise _Stalled(self._loop.time() - sent, len(self._pending), True)
                    continue  # progress: VPP is alive, the ping is still queued
                if first == ctx:
                    return None  # nothing of ours ahead of the ping and no word: a miss
                self._check_stall()
        finally:
            if self._pending.get(ctx) is call:
                self._abandon(ctx)

    def keep_connecting(self) -> None:
        """After a failed :meth:`connect`: go on connecting in the background with backoff
        (a ``Reconnected`` fault event says when it worked); a no-op while connected,
        closed, or with ``reconnect`` off."""
        if not self.connected:
            self._start_reconnect()

    def _start_reconnect(self) -> None:
        if not self.reconnect or self._closed:
            return
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_again = False
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect_loop())
        else:
            self._reconnect_again = True  # lost again while the loop connects: it goes on

    async def _reconnect_loop(self) -> None:
        # Only close() ends this loop early: every failure is logged and retried after a
        # backoff, and it reports "reconnected" only while actually connected.
        attempt = 0
        old_pid = self.vpe_pid
        while not self._closed:
            attempt += 1
            await asyncio.sleep(self.backoff.delay(attempt, self._rng))
            self._reconnect_again = False
            try:
                await self._connect_once()
            except Exception as exc:
                if isinstance(exc, (DatasyncError, OSError)):
                    log.debug("VPP reconnect attempt %d failed: %s", attempt, exc)
                else:
                    log.exception("VPP reconnect attempt %d failed unexpectedly", attempt)
                transport = self._transport
                if transport is not None:
                    # a half-made connection (e.g. the replay failed): start over cleanly
                    self._drop_connection(VppConnectionError(f"reconnect failed: {exc}"))
                    transport.abort()
                continue
            if not self.connected:
                # lost again (during the want_* replay, say): "reconnected" would be a lie
                log.debug(
                    "VPP connection lost again during reconnect attempt %d (reported: %s)",
                    attempt,
                    self._reconnect_again,
                )
                continue
            restarted = old_pid is not None and self.vpe_pid != old_pid
            self._fault(Reconnected(attempt, self.vpe_pid, restarted))
            self._start_probe()
            return

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until (re)connected; raises :class:`ClosedError` once the client is closed."""
        if self._closed:
            raise ClosedError("VppClient is closed")
        async with asyncio.timeout(timeout):
            await self._connected.wait()
        if self._closed:
            raise ClosedError("VppClient is closed")
