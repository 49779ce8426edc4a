"""The simulator's socket server: VPP's framing, handshake, dispatch and fault API.

Wire behaviour follows ``shared/vpp-api/README.md``: 16-byte ``>QII`` headers (only
``data_len`` matters), memclnt messages numbered 1..28 in file order so that
``sockclnt_create`` is 15 and its reply 16, other modules numbered in blocks after,
replies routed by the ``client_index`` inside each request, strictly in-order processing
per connection, dumps answered by details and terminated by the client's control_ping.
A pipelined burst is answered as it goes, as VPP does: it is handled in bounded slices
and each slice's replies are written before the next one starts.
Malformed input (short bodies, unknown ids, unknown client_index, undecodable bodies)
is dropped without a reply and counted, as VPP does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import logging
import math
import os
import random
import signal
import socket
import stat
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ..codec import codec_for
from ..defs import ApiDefinitions, builtin_definitions, load_api_dir
from ..transport import MAX_FRAME, ShmPipe, VppConnectionError, VppMessageTooLargeError
from . import state as st
from .state import U32_MAX, Dataplane, Path

log = logging.getLogger("datasync.vpp.sim")

_HDR = struct.Struct(">QII")
_REQ_HEAD = struct.Struct(">HII")  # _vl_msg_id, client_index, context
_HDR_LEN = 16
_SHM_DEFAULT = 4 << 20  # bytes per ring: room for get_api_json of a full API dir
# How much of a pipelined burst is handled before its replies are written and the loop
# runs again: a slice ends after this many messages or this much time, whichever first.
_SLICE_MESSAGES = 256
_SLICE_SECONDS = 0.005
# backlog (messages) above which the socket is not read, and below which it is again
_BACKLOG_HIGH = 8192
_BACKLOG_LOW = 2048
#: the longest injected latency (seconds): past any client's call timeout, longer is a typo
MAX_LATENCY = 600.0
_I32 = (-(1 << 31), (1 << 31) - 1)  # VPP's retval is an i32

#: messages the simulator handles (requests); their replies/details/events follow.
HANDLED = (
    "sockclnt_create",
    "sockclnt_delete",
    "control_ping",
    "get_api_json",
    "sock_init_shm",
    "show_version",
    "create_loopback",
    "create_loopback_instance",
    "delete_loopback",
    "sw_interface_set_flags",
    "sw_interface_set_mtu",
    "hw_interface_set_mtu",
    "sw_interface_add_del_address",
    "sw_interface_tag_add_del",
    "sw_interface_set_mac_address",
    "sw_interface_set_table",
    "sw_interface_get_table",
    "sw_interface_dump",
    "want_interface_events",
    "ip_address_dump",
    "ip_table_add_del",
    "ip_table_dump",
    "ip_route_add_del",
    "ip_route_dump",
    "tap_create_v3",
    "tap_delete_v2",
    "sw_interface_tap_v2_dump",
    "memif_socket_filename_add_del_v2",
    "memif_create_v2",
    "memif_delete",
    "memif_dump",
    "bridge_domain_add_del_v2",
    "sw_interface_set_l2_bridge",
    "bridge_domain_dump",
)
EVENTS = ("sw_interface_event",)


class _Registration:
    """A client registered with sockclnt_create (VPP's api registration)."""

    __slots__ = ("conn", "handle", "interface_events_pid", "pool_index")

    def __init__(self, pool_index: int, conn: _Connection) -> None:
        self.pool_index = pool_index
        self.handle = 0x80000000 | pool_index
        self.conn = conn
        self.interface_events_pid: int | None = None


class _Connection(asyncio.Protocol):
    """One client socket: reassembles frames and feeds them to the simulator in order.

    After ``sock_init_shm`` the connection's messages travel over the project's shared
    memory ring (``shm``); the socket stays open as the liveness channel.
    """

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.out: list[bytes] = []
        self.backlog: deque[bytes] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.registrations: list[_Registration] = []
        self.closing = False
        self.shm: ShmPipe | None = None  # once shared memory is set up
        self.shm_segment: Any = None
        self.paused = False  # reading paused while the backlog is long

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.sim._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.sim._conns.discard(self)
        for reg in self.registrations:
            self.sim._regs.pop(reg.handle, None)
            self.sim._free_pool.append(reg.pool_index)
        self.registrations.clear()
        if self.worker is not None and self.worker is not asyncio.current_task():
            self.worker.cancel()
        self.worker = None
        if self.shm is not None:
            self.shm.close()
            self.shm_segment.close()
            self.shm = self.shm_segment = None

    def data_received(self, data: bytes) -> None:
        if self.closing and not self.buf:
            return  # closed for a bad frame: what the peer still sends is dropped
        buf = self.buf
        buf += data
        bodies = []
        pos = 0
        end = len(buf)
        too_large = 0
        while end - pos >= _HDR_LEN:
            length = int.from_bytes(buf[pos + 8 : pos + 12], "big")
            if length > MAX_FRAME:
                too_large = length  # the client's limit: garbage, not a frame to wait for
                break
            if end - pos - _HDR_LEN < length:
                break
            bodies.append(bytes(buf[pos + _HDR_LEN : pos + _HDR_LEN + length]))
            pos += _HDR_LEN + length
        if too_large:
            buf.clear()
        elif pos:
            del buf[:pos]
        if bodies:
            self.bodies_received(bodies)  # the frames before a bad header, in order
        if too_large:
            self.sim.stats["frames_too_large"] += 1
            log.warning(
                "sim: frame of %d bytes exceeds %d: connection closed", too_large, MAX_FRAME
            )
            self.closing = True
            if self.transport is not None:
                self.transport.close()

    def bodies_received(self, bodies: list[bytes]) -> None:
        sim = self.sim
        if self.backlog or sim._latency_active():
            self._queue(bodies)
            return
        # Answer as we go, as VPP does: a window of pipelined requests is handled in
        # bounded slices, with the replies of each slice written (and the loop free to
        # run) before the next, so the client hears from us while a long burst runs.
        done = self._run_slice(bodies, 0)
        if done < len(bodies):
            self._queue(bodies[done:])

    def _run_slice(self, bodies: Sequence[bytes], start: int) -> int:
        """Process bodies from ``start`` until a slice's count or time is up; flush the
        replies; return the index of the first body not processed."""
        sim = self.sim
        end = min(len(bodies), start + _SLICE_MESSAGES)
        deadline = time.perf_counter() + _SLICE_SECONDS
        i = start
        while i < end and not self.closing:
            sim._process(self, bodies[i])
            i += 1
            if time.perf_counter() > deadline:
                break
        sim._flush()
        return i if not self.closing else len(bodies)

    def _queue(self, bodies: Sequence[bytes]) -> None:
        self.backlog.extend(bodies)
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._drain())
        if (
            not self.paused
            and len(self.backlog) > _BACKLOG_HIGH
            and self.shm is None
            and self.transport is not None
        ):
            # backpressure: stop reading until the backlog is worked off
            self.paused = True
            self.transport.pause_reading()

    async def _drain(self) -> None:
        # the backlog in order: in slices, or one message at a time while latency is set
        try:
            backlog = self.backlog
            sim = self.sim
            while backlog and not self.closing:
                if sim._latency_active():
                    body = backlog.popleft()
                    delay = sim._latency_for(body)
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if self.closing:
                        return
                    sim._process(self, body)
                    sim._flush()
                else:
                    chunk = [backlog.popleft() for _ in range(min(len(backlog), _SLICE_MESSAGES))]
                    done = self._run_slice(chunk, 0)
                    if done < len(chunk):
                        backlog.extendleft(reversed(chunk[done:]))
                    await asyncio.sleep(0)
                if self.paused and len(backlog) < _BACKLOG_LOW and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
        finally:
            self.worker = None
            if self.paused and not self.closing and self.transport is not None:
                self.paused = False
                self.transport.resume_reading()

    def _shm_closed(self, exc: BaseException) -> None:
        # the ring closed or broke: drop the client as VPP drops a dead socket
        log.debug("sim: shm ring ends: %s", exc)
        if self.transport is not None:
            self.transport.abort()

    def send(self, body: bytes) -> None:
        if not self.out:
            self.sim._dirty.append(self)
        self.out.append(body)

    def flush(self) -> None:
        out, self.out = self.out, []
        if self.closing or not out:
            return
        if self.shm is not None:
            try:
                self.shm.write_many(out)
            except VppMessageTooLargeError as exc:
                # a reply the ring can never hold: drop it (that request gets no answer)
                # rather than break the ring for every other call of this client
                self.sim.stats["dropped_too_large"] += exc.dropped
                log.warning("sim: shm reply dropped: %s", exc)
            except VppConnectionError:
                pass  # reported via _shm_closed
            return
        if self.transport is not None:
            parts = []
            pack = _HDR.pack
            for body in out:
                parts.append(pack(0, len(body), 0))
                parts.append(body)
            self.transport.write(b"".join(parts))

    def start_shm(self, size: int) -> None:
        """Create the segment and pass its fds (after the reply already written)."""
        from ..shm import ShmSegment, send_fds

        assert self.transport is not None
        seg = ShmSegment.create(size)
        sock_obj = self.transport.get_extra_info("socket")
        # uvloop hands out a pseudo socket: send the fds on a duplicate of its descriptor
        dup = socket.socket(fileno=os.dup(sock_obj.fileno()))
        try:
            dup.setblocking(True)
            send_fds(dup, seg.fds)
        finally:
            dup.setblocking(False)
            dup.close()
        self.shm_segment = seg
        self.shm = ShmPipe(seg.server_end(), self.bodies_received, self._shm_closed)


class _LazyCodecs(dict[str, Any]):
    """Message name -> codec, compiled on first use (a full API dir has hundreds)."""

    def __init__(self, defs: ApiDefinitions) -> None:
        super().__init__()
        self.defs = defs

    def __missing__(self, name: str) -> Any:
        codec = self[name] = codec_for(self.defs, name)
        return codec


class _Fault:
    __slots__ = ("match", "message", "remaining", "retval", "until")

    def __init__(
        self,
        message: str,
        retval: int,
        count: int | None,
        match: dict[str, Any] | None,
        until: float | None = None,
    ) -> None:
        self.message = message
        self.retval = retval
        self.remaining = count
        self.match = dict(match or {})
        self.until = until


class Simulator:
    """A VPP binary-API server with dataplane state and a fault API.

    ``sim = Simulator(); await sim.start(path); ...; await sim.stop()`` runs it inside the
    current event loop. ``state`` is the live :class:`Dataplane`; ``counters()``,
    ``dump_state()`` and the fault methods are what tests (and the HTTP admin) use.
    """

    def __init__(
        self,
        defs: ApiDefinitions | None = None,
        *,
        strict: bool = False,
        seed: int | None = None,
        vpe_pid: int | None = None,
        program: str = "vpe",
        allow_shm: bool = True,
        version: str = "26.10-datasync-sim",
    ) -> None:
        self.defs = defs if defs is not None else builtin_definitions()
        self.strict = strict
        self.rng = random.Random(seed)
        self.program = program
        self.allow_shm = allow_shm
        self.version = version
        self.path: str | None = None
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_Connection] = set()
        self._regs: dict[int, _Registration] = {}
        self._free_pool: list[int] = []
        self._next_pool = 1
        self._dirty: list[_Connection] = []
        self._event_flush_scheduled = False
        self._faults: list[_Fault] = []
        self._latency: float = 0.0
        self._latency_by_id: dict[int, float] = {}
        self.epoch = 0
        self.stats: dict[str, int] = {
            "requests": 0,
            "dropped_short": 0,
            "dropped_unknown_id": 0,
            "dropped_unknown_client": 0,
            "dropped_malformed": 0,
            "injected_errors": 0,
            "events_sent": 0,
            "connections": 0,
            "dropped_too_large": 0,
            "frames_too_large": 0,
        }
        self.message_counts: dict[str, int] = {}
        self._build_tables()
        self.state = self._new_state(vpe_pid if vpe_pid is not None else os.getpid(), 0)

    # -- message numbering -------------------------------------------------------------

    def _build_tables(self) -> None:
        defs = self.defs
        handled = [n for n in HANDLED if n in defs.messages]
        modules = sorted(defs.modules.values(), key=lambda m: m.name != "memclnt")
        self.ids: dict[str, int] = {}
        next_id = 1
        for module in modules:
            # every message of a served module gets an id and a table entry, as in VPP
            # (vpp_papi_async insists that every message it loaded is in the table); only
            # the HANDLED ones are dispatched, others are dropped as "no handler"
            for name in module.message_names:
                self.ids[name] = next_id
                next_id += 1
        self.names: dict[int, str] = {i: n for n, i in self.ids.items()}
        self._codecs = _LazyCodecs(defs)
        self._table = [
            (defs.name_crc(n), i) for n, i in sorted(self.ids.items(), key=lambda x: x[1])
        ]
        max_id = max(self.ids.values(), default=0)
        self._dispatch: list[tuple[str, Callable[..., None]] | None] = [None] * (max_id + 1)
        for name in handled:
            handler = getattr(self, "_h_" + name)
            self._dispatch[self.ids[name]] = (name, handler)
        self._api_json: str | None = None
        self._ping_reply_id = self.ids.get("control_ping_reply", 0)
        self._ping_id = self.ids.get("control_ping", 0)
        self._create_id = self.ids.get("sockclnt_create", 15)

    def msg_id(self, name: str) -> int:
        """The id this simulator gives message ``name``."""
        return self.ids[name]

    def _enc(self, name: str, fields: dict[str, Any]) -> bytes:
        body: bytes = self._codecs[name].encode(self.ids[name], fields)
        return body

    # -- lifecycle ---------------------------------------------------------------------

    def _new_state(self, vpe_pid: int, index_offset: int) -> Dataplane:
        dp = Dataplane(vpe_pid, index_offset=index_offset, rng=self.rng, strict=self.strict)
        dp.on_event = self._schedule_events
        return dp

    async def start(self, path: str | os.PathLike[str]) -> None:
        """Listen on the AF_UNIX socket ``path``, mode 0600 whatever the umask.

        A stale socket file there is replaced; any other file is never removed: that is
        a ``FileExistsError`` naming it.
        """
        path = os.fspath(path)
        _remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Linux gives the socket file the mode of the unbound socket's inode (less the
            # umask): 0600 from the start, so there is no moment it is open to others
            os.fchmod(sock.fileno(), 0o600)
            sock.bind(path)
            os.chmod(path, 0o600)
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            self._server = await loop.create_unix_server(lambda: _Connection(self), sock=sock)
        except BaseException:
            sock.close()
            raise
        self.path = path

    async def stop(self) -> None:
        """Stop listening, drop every connection and remove the socket file."""
        if self._server is not None:
            self._server.close()
            self.drop_connections()
            await self._server.wait_closed()
            self._server = None
        else:
            self.drop_connections()
        if self.path is not None:
            with contextlib.suppress(FileExistsError):
                _remove_stale_socket(self.path)  # what replaced our socket is left alone
            self.path = None
        await asyncio.sleep(0)

    async def __aenter__(self) -> Simulator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- processing --------------------------------------------------------------------

    def _latency_active(self) -> bool:
        return self._latency > 0 or bool(self._latency_by_id)

    def _latency_for(self, body: bytes) -> float:
        if len(body) >= 2:
            msg_id = (body[0] << 8) | body[1]
            if msg_id in self._latency_by_id:
                return self._latency_by_id[msg_id]
        return self._latency

    def _process(self, conn: _Connection, body: bytes) -> None:
        stats = self.stats
        if len(body) < 2:
            stats["dropped_short"] += 1
            return
        msg_id = (body[0] << 8) | body[1]
        entry = self._dispatch[msg_id] if msg_id < len(self._dispatch) else None
        if entry is None:
            stats["dropped_unknown_id"] += 1
            return
        name, handler = entry
        if msg_id == self._create_id:  # sockclnt_create: the one request without client_index
            reg = None
        else:
            if len(body) < 10:
                stats["dropped_short"] += 1
                return
            reg = self._regs.get(int.from_bytes(body[2:6], "big"))
            if reg is None:
                # VPP routes by client_index and silently drops unknown ones
                stats["dropped_unknown_client"] += 1
                return
        try:
            msg = self._codecs[name].decode(body)
        except Exception as exc:  # any undecodable body is dropped like VPP's size check
            reason = str(getattr(exc, "reason", ""))
            if (
                reg is not None
                and "prefix" in str(getattr(exc, "field", ""))
                and ("netmask" in reason or "prefix" in reason)
            ):
                # complete message, impossible prefix length: VPP's handler answers it
                stats["requests"] += 1
                context = int.from_bytes(body[6:10], "big")
                self._reply_rv(reg, name, context, st.INVALID_PREFIX_LENGTH)
                return
            stats["dropped_malformed"] += 1
            return
        stats["requests"] += 1
        counts = self.message_counts
        counts[name] = counts.get(name, 0) + 1
        if self._faults and reg is not None and self._inject(reg, name, msg):
            return
        try:
            handler(reg if reg is not None else conn, msg)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            # a value the codec accepted but the model cannot (e.g. an unknown address
            # family): answer like a handler that validates, never take the server down
            log.debug("sim: %s rejected: %r", name, exc)
            self._reply_rv(reg, name, msg.context, st.INVALID_VALUE)

    def _inject(self, reg: _Registration, name: str, msg: Any) -> bool:
        for fault in self._faults:
            if fault.message != name:
                continue
            if fault.until is not None and time.time() >= fault.until:
                self._faults.remove(fault)
                return self._inject(reg, name, msg)
            if any(getattr(msg, k, None) != v for k, v in fault.match.items()):
                continue
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
            self.stats["injected_errors"] += 1
            self._reply_rv(reg, name, msg.context, fault.retval)
            return True
        return False

    def _flush(self) -> None:
        dirty = self._dirty
        if dirty:
            self._dirty = []
            for conn in dirty:
                conn.flush()

    def _reply_rv(self, reg: _Registration | None, request: str, context: int, rv: int) -> None:
        if reg is None:
            return
        reply = self.defs.reply_of(request)
        if reply is None or reply not in self.ids:
            return
        if self.defs.is_dump(request):
            return  # details have no retval; an empty answer is what the client sees
        reg.conn.send(self._enc(reply, {"context": context, "retval": rv}))

    def _reply(
        self, reg: _Registration, request: str, context: int, rv: int, fields: dict[str, Any]
    ) -> None:
        reply = self.defs.reply_of(request)
        assert reply is not None
        fields["context"] = context
        fields["retval"] = rv
        reg.conn.send(self._enc(reply, fields))

    def _details(self, reg: _Registration, name: str, context: int, fields: dict[str, Any]) -> None:
        fields["context"] = context
        reg.conn.send(self._enc(name, fields))

    # -- events ------------------------------------------------------------------------

    def _schedule_events(self) -> None:
        if not self._event_flush_scheduled:
            self._event_flush_scheduled = True
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().call_soon(self._flush_events)
                return
            self._event_flush_scheduled = False

    def _flush_events(self) -> None:
        self._event_flush_scheduled = False
        events = self.state.take_events()
        if not events or "sw_interface_event" not in self.ids:
            return
        codec = self._codecs["sw_interface_event"]
        msg_id = self.ids["sw_interface_event"]
        for reg in list(self._regs.values()):
            pid = reg.interface_events_pid
            if pid is None:
                continue
            for sw_if_index, flags, deleted in events:
                reg.conn.send(
                    codec.encode(
                        msg_id,
                        {
                            "client_index": reg.handle,
                            "pid": pid,
                            "sw_if_index": sw_if_index,
                            "flags": flags,
                            "deleted": bool(deleted),
                        },
                    )
                )
                self.stats["events_sent"] += 1
        self._flush()

    # -- memclnt handlers --------------------------------------------------------------

    def _h_sockclnt_create(self, conn: _Connection, msg: Any) -> None:
        if self._free_pool:
            pool_index = self._free_pool.pop()
        else:
            pool_index = self._next_pool
            self._next_pool += 1
        reg = _Registration(pool_index, conn)
        self._regs[reg.handle] = reg
        conn.registrations.append(reg)
        self.stats["connections"] += 1
        table = [{"index": i, "name": n} for n, i in self._table]
        conn.send(
            self._enc(
                "sockclnt_create_reply",
                {
                    "client_index": 0,
                    "context": msg.context,
                    "response": 0,
                    "index": reg.handle,
                    "count": len(table),
                    "message_table": table,
                },
            )
        )

    def _h_sockclnt_delete(self, reg: _Registration, msg: Any) -> None:
        target = self._regs.get(int(msg.index))
        conn = reg.conn
        if target is None:
            conn.send(self._enc("sockclnt_delete_reply", {"context": msg.context, "response": -1}))
            return
        conn.send(self._enc("sockclnt_delete_reply", {"context": msg.context, "response": 1}))
        self._regs.pop(target.handle, None)
        if target in target.conn.registrations:
            target.conn.registrations.remove(target)
        self._free_pool.append(target.pool_index)
        # VPP closes the socket after the reply
        self._flush()
        if conn.transport is not None:
            conn.transport.close()

    def _h_control_ping(self, reg: _Registration, msg: Any) -> None:
        reg.conn.send(
            self._codecs["control_ping_reply"].encode(
                self._ping_reply_id,
                {
                    "context": msg.context,
                    "retval": 0,
                    "client_index": msg.client_index,
                    "vpe_pid": self.state.vpe_pid,
                },
            )
        )

    def _h_get_api_json(self, reg: _Registration, msg: Any) -> None:
        if self._api_json is None:
            self._api_json = "[" + ",".join(m.to_json() for m in self.defs.modules.values()) + "]"
        self._reply(reg, "get_api_json", msg.context, 0, {"json": self._api_json})

    def _h_sock_init_shm(self, reg: _Registration, msg: Any) -> None:
        # VPP offers a memfd segment here; we offer the project's own ring (same bodies).
        # The reply goes on the socket, then the fds with SCM_RIGHTS and payload "fdmsg".
        conn = reg.conn
        size = int(msg.requested_size) or _SHM_DEFAULT
        size = 1 << max(16, min(26, (size - 1).bit_length()))
        if conn.shm is not None or not self.allow_shm:
            self._reply(reg, "sock_init_shm", msg.context, st.UNSUPPORTED, {})
            return
        self._reply(reg, "sock_init_shm", msg.context, 0, {})
        self._flush()
        assert conn.transport is not None
        if conn.transport.get_write_buffer_size():
            # the reply must reach the client before the fds: wait for the socket to drain
            asyncio.get_running_loop().create_task(self._start_shm_later(conn, size))
            return
        self._start_shm(conn, size)

    def _start_shm(self, conn: _Connection, size: int) -> None:
        try:
            conn.start_shm(size)
        except Exception as exc:  # no memfd, fd passing failed: the client times out
            log.warning("sim: shared memory setup failed: %s", exc)
            if conn.transport is not None:
                conn.transport.abort()

    async def _start_shm_later(self, conn: _Connection, size: int) -> None:
        while conn.transport is not None and conn.transport.get_write_buffer_size():
            if conn.closing:
                return
            await asyncio.sleep(0.001)
        self._start_shm(conn, size)

    def _h_show_version(self, reg: _Registration, msg: Any) -> None:
        self._reply(
            reg,
            "show_version",
            msg.context,
            0,
            {
                "program": self.program,
                "version": self.version,
                "build_date": "simulated",
                "build_directory": "/datasync/sim",
            },
        )

    # -- interface handlers ------------------------------------------------------------

    def _h_create_loopback(self, reg: _Registration, msg: Any) -> None:
        rv, out = self.state.create_loopback(st.mac_bytes(msg.mac_address))
        self._reply(reg, "create_loopback", msg.context, rv, out)

    def _h_create_loopback_instance(self, reg: _Registration, msg: Any) -> None:
        instance = int(msg.user_instance) if msg.is_specified else None
        rv, out = self.state.create_loopback(st.mac_bytes(msg.mac_address), instance)
        self._reply(reg, "create_loopback_instance", msg.context, rv, out)

    def _h_delete_loopback(self, reg: _Registration, msg: Any) -> None:
        rv, out = self.state.delete_loopback(int(msg.sw_if_index))
        self._reply(reg, "delete_loopback", msg.context, rv, out)

    def _h_sw_interface_set_flags(self, reg: _Registration, msg: Any) -> None:
        rv, out = self.state.set_flags(int(msg.sw_if_index), int(msg.flags))
        self._reply(reg, "sw_interface_set_flags", msg.context, rv, out)

    def _h_sw_interface_set_mtu(self, reg: _Registration, msg: Any) -> None:
        rv, out = self.state.set_mtu(int(msg.sw_if_index), list(msg.mtu))
        self._reply(reg, "sw_interface_set_mtu", msg.context, rv, out)

    def _h_hw_interface_set_mtu(self, reg: _Registration, msg: Any) -> None:
        rv, out = self.state.hw_set_mtu(int(msg.sw_if_index), int(msg.mtu))
        self._reply(reg, "hw_interface_set_mtu", msg.context, rv, out)

    def _h_sw_interface_tag_add_del(self, reg: _Registration, msg: Any) -> None:
        rv, out = self.state.set_tag(int(msg.sw_if_index), bool(msg.is_add), str(msg.tag))
        self._reply(reg, "sw_interface_tag_add_del", msg.context, rv, out)

    def _h_sw_interface_set_mac_address(self, reg: _Registration, msg: Any) -> None:
        rv, out = self.state.set_mac(int(msg.sw_if_index), st.mac_bytes(msg.mac_address))
        self._reply(reg, "sw_interface_set_mac_address", msg.context, rv, out)

    def _h_sw_interface_add_del_address(self, reg: _Registration, msg: Any) -> None:
        addr, length = st.to_interface(msg.prefix)
        rv, out = self.state.add_del_address(
            int(msg.sw_if_index), bool(msg.is_add), bool(msg.del_all), addr, length
        )
        self._reply(reg, "sw_interface_add_del_address", msg.context, rv, out)

    def _h_sw_interface_set_table(self, reg: _Registration, msg: Any) -> None:
        rv, out = self.state.set_table(int(msg.sw_if_index), bool(msg.is_ipv6), int(msg.vrf_id))
        self._reply(reg, "sw_interface_set_table", msg.context, rv, out)

    def _h_want_interface_events(self, reg: _Registration, msg: Any) -> None:
        enable = bool(msg.enable_disable)
        if enable == (reg.interface_events_pid is not None):
            rv = st.INVALID_REGISTRATION  # enabling twice or disabling when not enabled
        else:
            rv = 0
            reg.interface_events_pid = int(msg.pid) if enable else None
        self._reply(reg, "want_interface_events", msg.context, rv, {})

    def _h_sw_interface_dump(self, reg: _Registration, msg: Any) -> None:
        wanted = int(msg.sw_if_index)
        ifaces = self.state.interfaces
        if wanted in (U32_MAX, 0):
            selected = [ifaces[k] for k in sorted(ifaces)]
        else:
            one = ifaces.get(wanted)
            selected = [one] if one is not None else []
        if msg.name_filter_valid:
            needle = str(msg.name_filter).lower()
            selected = [i for i in selected if needle in i.name.lower()]
        for iface in selected:
            self._details(reg, "sw_interface_details", msg.context, _iface_details(iface))

    def _h_ip_address_dump(self, reg: _Registration, msg: Any) -> None:
        iface = self.state.interfaces.get(int(msg.sw_if_index))
        if iface is None:
            return
        v6 = bool(msg.is_ipv6)
        for addr, length in iface.addresses:
            if (addr.version == 6) == v6:
                self._details(
                    reg,
                    "ip_address_details",
                    msg.context,
                    {"sw_if_index": iface.sw_if_index, "prefix": st.prefix_struct(addr, length)},
                )

    def _h_ip_table_add_del(self, reg: _Registration, msg: Any) -> None:
        t = msg.table
        rv, out = self.state.table_add_del(
            bool(msg.is_add), int(t.table_id), bool(t.is_ip6), str(t.name)
        )
        self._reply(reg, "ip_table_add_del", msg.context, rv, out)

    def _h_ip_table_dump(self, reg: _Registration, msg: Any) -> None:
        for table in list(self.state.tables.values()):
            fields = {"table_id": table.table_id, "is_ip6": table.is_ip6, "name": table.name}
            self._details(reg, "ip_table_details", msg.context, {"table": fields})

    def _h_sw_interface_get_table(self, reg: _Registration, msg: Any) -> None:
        iface = self.state.interfaces.get(int(msg.sw_if_index))
        if iface is None:
            self._reply_rv(reg, "sw_interface_get_table", msg.context, st.INVALID_SW_IF_INDEX)
            return
        vrf_id = iface.vrf[1 if msg.is_ipv6 else 0]
        self._reply(reg, "sw_interface_get_table", msg.context, 0, {"vrf_id": vrf_id})

    def _h_ip_route_add_del(self, reg: _Registration, msg: Any) -> None:
        route = msg.route
        addr, length = st.to_interface(route.prefix)
        paths = [_path_from_wire(p) for p in list(route.paths)[: int(route.n_paths)]]
        rv, out = self.state.route_add_del(
            bool(msg.is_add), bool(msg.is_multipath), int(route.table_id), addr, length, paths
        )
        self._reply(reg, "ip_route_add_del", msg.context, rv, out)

    def _h_ip_route_dump(self, reg: _Registration, msg: Any) -> None:
        t = msg.table
        table_id = int(t.table_id)
        is_ip6 = bool(t.is_ip6)
        for (net, length), paths, stats_index in self.state.route_entries(table_id, is_ip6):
            self._details(
                reg,
                "ip_route_details",
                msg.context,
                {
                    "route": {
                        "table_id": table_id,
                        "stats_index": stats_index,
                        "prefix": st.prefix_struct_int(net, length, is_ip6),
                        "n_paths": len(paths),
                        "paths": [p.wire for p in paths],
                    }
                },
            )

    # -- tap / memif -------------------------------------------------------------------

    def _h_tap_create_v3(self, reg: _Registration, msg: Any) -> None:
        rv, out = self.state.tap_create(msg, tag=str(msg.tag))
        self._reply(reg, "tap_create_v3", msg.context, rv, out)

    def _h_tap_delete_v2(self, reg: _Registration, msg: Any) -> None:
        rv, out = self.state.tap_delete(int(msg.sw_if_index))
        self._reply(reg, "tap_delete_v2", msg.context, rv, out)

    def _h_sw_interface_tap_v2_dump(self, reg: _Registration, msg: Any) -> None:
        wanted = int(msg.sw_if_index)
        for iface in self.state.of_kind("tap"):
            idx = iface.sw_if_index
            if wanted not in (U32_MAX, idx):
                continue
            x = iface.extra
            p4 = x.get("host_ip4_prefix")
            p6 = x.get("host_ip6_prefix")
            self._details(
                reg,
                "sw_interface_tap_v2_details",
                msg.context,
                {
                    "sw_if_index": idx,
                    "id": x["id"],
                    "tx_ring_sz": x["tx_ring_sz"],
                    "rx_ring_sz": x["rx_ring_sz"],
                    "host_mtu_size": x["host_mtu_size"],
                    "host_mac_addr": x["host_mac_addr"],
                    "host_ip4_prefix": _prefix_or_zero(p4, 4),
                    "host_ip6_prefix": _prefix_or_zero(p6, 6),
                    "tap_flags": x["tap_flags"],
                    "dev_name": iface.name,
                    "host_if_name": x["host_if_name"],
                    "host_namespace": x["host_namespace"],
                    "host_bridge": x["host_bridge"],
                },
            )

    def _h_memif_socket_filename_add_del_v2(self, reg: _Registration, msg: Any) -> None:
        rv, out = self.state.memif_socket(
            bool(msg.is_add), int(msg.socket_id), str(msg.socket_filename)
        )
        self._reply(reg, "memif_socket_filename_add_del_v2", msg.context, rv, out)

    def _h_memif_create_v2(self, reg: _Registration, msg: Any) -> None:
        rv, out = self.state.memif_create(msg)
        self._reply(reg, "memif_create_v2", msg.context, rv, out)

    def _h_memif_delete(self, reg: _Registration, msg: Any) -> None:
        rv, out = self.state.memif_delete(int(msg.sw_if_index))
        self._reply(reg, "memif_delete", msg.context, rv, out)

    def _h_memif_dump(self, reg: _Registration, msg: Any) -> None:
        for iface in self.state.of_kind("memif"):
            x = iface.extra
            self._details(
                reg,
                "memif_details",
                msg.context,
                {
                    "sw_if_index": iface.sw_if_index,
                    "hw_addr": iface.mac,
                    "id": x["id"],
                    "role": x["role"],
                    "mode": x["mode"],
                    # a memif that never connected has no rings yet: the real VPP shows
                    # ring_size 1 (1 << log2 0), buffer_size 0 and no zero copy
                    "zero_copy": False,
                    "socket_id": x["socket_id"],
                    "ring_size": 1,
                    "buffer_size": 0,
                    "flags": 1 if iface.admin_up else 0,
                    "if_name": iface.name,
                },
            )

    # -- bridge domains ----------------------------------------------------------------

    def _h_bridge_domain_add_del_v2(self, reg: _Registration, msg: Any) -> None:
        rv, out = self.state.bd_add_del(msg)
        self._reply(reg, "bridge_domain_add_del_v2", msg.context, rv, out)

    def _h_sw_interface_set_l2_bridge(self, reg: _Registration, msg: Any) -> None:
        rv, out = self.state.set_l2_bridge(
            int(msg.rx_sw_if_index),
            int(msg.bd_id),
            int(msg.port_type),
            int(msg.shg),
            bool(msg.enable),
        )
        self._reply(reg, "sw_interface_set_l2_bridge", msg.context, rv, out)

    def _h_bridge_domain_dump(self, reg: _Registration, msg: Any) -> None:
        bd_id = int(msg.bd_id)
        if int(msg.sw_if_index) != U32_MAX or bd_id == 0:
            return  # VPP: filtering by interface is not implemented; bd 0 is never shown
        bds = self.state.bridge_domains
        if bd_id == U32_MAX:
            selected = self.state.bd_dump_order()
        else:
            selected = [bds[bd_id]] if bd_id in bds else []
        for bd in selected:
            members = [
                {"context": 0, "sw_if_index": sw, "shg": shg}
                for sw, shg in self.state.bd_members(bd)
            ]
            self._details(
                reg,
                "bridge_domain_details",
                msg.context,
                {
                    "bd_id": bd.bd_id,
                    "flood": bd.flood,
                    "uu_flood": bd.uu_flood,
                    "forward": bd.forward,
                    "learn": bd.learn,
                    "arp_term": bd.arp_term,
                    "arp_ufwd": bd.arp_ufwd,
                    "mac_age": bd.mac_age,
                    "bd_tag": bd.tag,
                    "bvi_sw_if_index": bd.bvi,
                    "uu_fwd_sw_if_index": bd.uu_fwd,
                    "n_sw_ifs": len(members),
                    "sw_if_details": members,
                },
            )

    # -- fault API ---------------------------------------------------------------------

    def restart(self, *, shuffle: bool = True) -> int:
        """Simulate a VPP restart: state wiped, new vpe_pid, indices renumbered, clients dropped.

        Returns the new vpe_pid.
        """
        old = self.state.vpe_pid
        new_pid = old
        while new_pid == old:
            new_pid = self.rng.randrange(1000, 1 << 22)
        # a non-zero offset guarantees that every old sw_if_index now names something else
        offset = self.rng.randrange(1, 65) if shuffle else 0
        self.epoch += 1
        self.state = self._new_state(new_pid, offset)
        self.drop_connections()
        return new_pid

    def drop_connections(self) -> int:
        """Close every client connection (VPP alive, state kept). Returns how many."""
        conns = list(self._conns)
        for conn in conns:
            conn.closing = True
            if conn.transport is not None:
                conn.transport.abort()
        return len(conns)

    def inject_error(
        self,
        message: str,
        retval: int,
        count: int | None = 1,
        match: dict[str, Any] | None = None,
        until: float | None = None,
    ) -> None:
        """Answer the next ``count`` ``message`` requests (None: all, until cleared) with
        ``retval`` instead of handling them; ``match`` restricts it to requests whose
        decoded fields equal the given values; ``until`` (a ``time.time()`` value) ends
        the fault at that moment."""
        if message not in self.ids:
            raise ValueError(f"inject_error: the simulator does not handle {message!r}")
        retval = _strict_int("retval", retval)
        if not _I32[0] <= retval <= _I32[1]:
            raise ValueError(f"inject_error: retval {retval} is not an i32 (VPP's retval)")
        if count is not None and _strict_int("count", count) <= 0:
            raise ValueError("inject_error: count must be positive (or None for unlimited)")
        if until is not None and not math.isfinite(until):
            raise ValueError(f"inject_error: until must be a finite time, got {until}")
        self._faults.append(_Fault(message, retval, count, match, until))

    def clear_faults(self) -> None:
        """Remove injected errors and latency."""
        self._faults.clear()
        self._latency = 0.0
        self._latency_by_id.clear()

    def set_latency(self, seconds: float, message: str | None = None) -> None:
        """Delay each call (or only ``message`` calls) by ``seconds``; 0 removes it."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise ValueError(f"latency: seconds must be a number, got {type(seconds).__name__}")
        if not (math.isfinite(seconds) and 0 <= seconds <= MAX_LATENCY):
            raise ValueError(f"latency: seconds must be within 0..{MAX_LATENCY:g}, got {seconds}")
        if message is None:
            self._latency = float(seconds)
            return
        if message not in self.ids:
            raise ValueError(f"set_latency: the simulator does not handle {message!r}")
        if seconds:
            self._latency_by_id[self.ids[message]] = float(seconds)
        else:
            self._latency_by_id.pop(self.ids[message], None)

    def drift(self, action: str, **params: Any) -> None:
        """Change state behind the client's back (see :meth:`Dataplane.drift`)."""
        self.state.drift(action, **params)

    def counters(self) -> dict[str, Any]:
        """Write-op counters per object kind, protocol counters, strict-mode violations."""
        writes: dict[str, dict[str, int]] = {}
        for (kind, op), n in self.state.counters.items():
            writes.setdefault(kind, {"create": 0, "update": 0, "delete": 0, "noop": 0})[op] = n
        total = sum(self.state.counters.values())
        changes = sum(n for (_, op), n in self.state.counters.items() if op != "noop")
        return {
            "epoch": self.epoch,
            "vpe_pid": self.state.vpe_pid,
            "writes": writes,
            "write_ops": total,
            "changes": changes,
            "violations": len(self.state.violations),
            "protocol": dict(self.stats),
            "messages": dict(self.message_counts),
        }

    def reset_counters(self) -> None:
        """Zero the write-op and message counters (state is kept)."""
        self.state.counters.clear()
        self.message_counts.clear()

    def dump_state(self) -> dict[str, Any]:
        """The whole dataplane as a JSON-able dict."""
        out = self.state.to_json()
        out["epoch"] = self.epoch
        out["clients"] = len(self._regs)
        return out


def _iface_details(iface: st.Interface) -> dict[str, Any]:
    return {
        "sw_if_index": iface.sw_if_index,
        "sup_sw_if_index": iface.sw_if_index,
        "l2_address": iface.mac,
        "flags": iface.flags,
        "type": 0,
        "link_duplex": 0,
        "link_speed": 0,
        "link_mtu": iface.link_mtu,
        "mtu": list(iface.mtu),
        "interface_name": iface.name,
        "interface_dev_type": iface.dev_type,
        "tag": iface.tag,
    }


def _prefix_or_zero(value: Any, version: int) -> Any:
    # tap host prefixes are ip4/ip6_address_with_prefix: plain interface objects
    if value is not None:
        with contextlib.suppress(Exception):
            addr, length = st.to_interface(value)
            return ipaddress.ip_interface((addr, length))
    return ipaddress.ip_interface("0.0.0.0/0" if version == 4 else "::/0")


def _path_from_wire(p: Any) -> Path:
    proto = int(p.proto)
    nh_raw = p.nh.address
    nh = st.union_address(nh_raw, 1 if proto == 1 else 0)
    return Path(
        sw_if_index=int(p.sw_if_index),
        table_id=int(p.table_id),
        rpf_id=int(p.rpf_id),
        weight=int(p.weight) or 1,
        preference=int(p.preference),
        type=int(p.type),
        flags=int(p.flags),
        proto=proto,
        nh=None if int(nh) == 0 else nh,
        via_label=int(p.nh.via_label),
        obj_id=int(p.nh.obj_id),
        classify_table_index=int(p.nh.classify_table_index),
    )


# -- command line ---------------------------------------------------------------------


def _strict_int(name: str, value: object) -> int:
    """``value`` if it is an int (not a bool, a float or a str): a clear error otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}"[:200])
    return int(value)


def _remove_stale_socket(path: str) -> None:
    """Unlink ``path`` if it is a socket; nothing there is fine; anything else is an error."""
    try:
        st_mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket; not removing it", path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    """``datasync vppsim``: run the simulator in the foreground until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="datasync vppsim", description="VPP API simulator")
    parser.add_argument("--socket", required=True, help="AF_UNIX socket path to listen on")
    parser.add_argument("--http", type=_parse_hostport, help="admin HTTP endpoint HOST:PORT")
    parser.add_argument("--api-dir", help="serve the .api.json definitions of this directory")
    parser.add_argument("--strict", action="store_true", help="count dangling references")
    parser.add_argument("--seed", type=int, help="seed for random MACs, ids and restarts")
    parser.add_argument("--no-shm", action="store_true", help="refuse sock_init_shm")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    return int(runner(_serve(args)))


async def _serve(args: argparse.Namespace) -> int:
    defs = load_api_dir(args.api_dir) if args.api_dir else None
    sim = Simulator(
        defs,
        strict=args.strict,
        seed=args.seed,
        allow_shm=not args.no_shm,
    )
    try:
        await sim.start(args.socket)
    except OSError as exc:
        log.error("vppsim: --socket %s: %s", args.socket, exc.strerror or exc)
        return 2
    admin = None
    if args.http:
        from .admin import AdminServer

        admin = AdminServer(sim)
        host, port = await admin.start(*args.http)
        log.info("vppsim admin HTTP on http://%s:%d", host, port)
    log.info(
        "vppsim listening on %s (vpe_pid %d, %d messages)",
        args.socket,
        sim.state.vpe_pid,
        len(sim.ids),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("vppsim stopping")
        if admin is not None:
            await admin.stop()
        await sim.stop()
    return 0
