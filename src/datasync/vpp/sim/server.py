"""The simulator's server: the socket it listens on, message numbering and dispatch.

Wire behaviour follows VPP's: 16-byte ``>QII`` headers (only ``data_len`` matters),
memclnt messages numbered 1..28 in file order so that ``sockclnt_create`` is 15 and its
reply 16, other modules numbered in blocks after, replies routed by the ``client_index``
inside each request, strictly in-order processing per connection, dumps answered by
details and terminated by the client's control_ping. Malformed input (short bodies,
unknown ids, unknown client_index, undecodable bodies) is dropped without a reply and
counted, as VPP does. The connection is :mod:`.wire`, the handlers :mod:`.handlers`, the
injected faults :mod:`.faults`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import random
import signal
import socket
import stat
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..codec import codec_for
from ..defs import ApiDefinitions, builtin_definitions, load_api_dir
from ..retvals import INVALID_PREFIX_LENGTH, INVALID_VALUE
from .faults import MAX_LATENCY, FaultPlan
from .handlers import HANDLED, Handlers
from .state import Dataplane
from .wire import Connection, Registration

__all__ = ["EVENTS", "HANDLED", "MAX_LATENCY", "Simulator", "main"]

log = logging.getLogger("datasync.vpp.sim")

EVENTS = ("sw_interface_event",)

#: a request's message id and client_index
_ID_CLIENT = struct.Struct(">HI")
#: process_slice looks at the clock every 16 bodies
_CLOCK_MASK = 15
_NEVER = float("inf")
#: what a handler raises for a value the codec took and the model cannot (INVALID_VALUE)
_REJECTED = (ValueError, TypeError, KeyError, AttributeError, OverflowError)


class _LazyCodecs(dict[str, Any]):
    """Message name -> codec, compiled on first use (a full API dir has hundreds)."""

    def __init__(self, defs: ApiDefinitions) -> None:
        super().__init__()
        self.defs = defs

    def __missing__(self, name: str) -> Any:
        codec = self[name] = codec_for(self.defs, name)
        return codec


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
        self._conns: set[Connection] = set()
        self._regs: dict[int, Registration] = {}
        self._free_pool: list[int] = []
        self._next_pool = 1
        self._dirty: list[Connection] = []
        self._event_flush_scheduled = False
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
        self.handlers = Handlers(self)
        self._build_tables()
        #: the injected errors and latency in force
        self.faults = FaultPlan(self.ids)
        self.state = self._new_state(vpe_pid if vpe_pid is not None else os.getpid(), 0)

    # -- message numbering -------------------------------------------------------------

    def _build_tables(self) -> None:
        defs = self.defs
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
        self.codecs = _LazyCodecs(defs)
        #: (name_crc, id) of every message, as sockclnt_create_reply lists them
        self.message_table: list[tuple[str, int]] = [
            (defs.name_crc(n), i) for n, i in sorted(self.ids.items(), key=lambda x: x[1])
        ]
        # one entry per possible u16 id, so a lookup needs no bounds check
        self._dispatch: list[tuple[str, Callable[..., None]] | None] = [None] * 65536
        #: requests handled per message id (``message_counts`` names them)
        self._by_id = [0] * 65536
        for name in HANDLED:
            if name in defs.messages:
                self._dispatch[self.ids[name]] = (name, getattr(self.handlers, name))
        self._api_json: str | None = None
        self._create_id = self.ids.get("sockclnt_create", 15)

    def msg_id(self, name: str) -> int:
        """The id this simulator gives message ``name``."""
        return self.ids[name]

    def handles(self, name: str) -> bool:
        """True when requests ``name`` are answered (not dropped as "no handler")."""
        msg_id = self.ids.get(name)
        return msg_id is not None and self._dispatch[msg_id] is not None

    def encode(self, name: str, fields: dict[str, Any]) -> bytes:
        """A body of message ``name`` with this simulator's id for it."""
        body: bytes = self.codecs[name].encode(self.ids[name], fields)
        return body

    _enc = encode

    def api_json(self) -> str:
        """Every served module's definitions as one JSON array (get_api_json)."""
        if self._api_json is None:
            self._api_json = "[" + ",".join(m.to_json() for m in self.defs.modules.values()) + "]"
        return self._api_json

    # -- lifecycle ---------------------------------------------------------------------

    def _new_state(self, vpe_pid: int, index_offset: int) -> Dataplane:
        dp = Dataplane(vpe_pid, index_offset=index_offset, rng=self.rng, strict=self.strict)
        dp.on_event = self._schedule_events
        return dp

    async def start(self, path: str | os.PathLike[str], *, mode: int = 0o600) -> None:
        """Listen on the AF_UNIX socket ``path`` with permissions ``mode`` (0600), whatever
        the umask.

        A stale socket file there is replaced; any other file is never removed: that is
        a ``FileExistsError`` naming it.
        """
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
            raise ValueError(f"mode must be permission bits within 0o000..0o777, got {mode!r}")
        path = os.fspath(path)
        _remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Linux gives the socket file the mode of the unbound socket's inode (less the
            # umask): the mode from the start, so there is no moment it is open to others
            os.fchmod(sock.fileno(), mode)
            sock.bind(path)
            os.chmod(path, mode)
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            self._server = await loop.create_unix_server(lambda: Connection(self), sock=sock)
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

    # -- connections and registrations (the wire's Dispatcher) -------------------------

    @property
    def connections(self) -> frozenset[Connection]:
        """The client connections open now."""
        return frozenset(self._conns)

    @property
    def registrations(self) -> Mapping[int, Registration]:
        """The registered clients by handle (the client_index of their requests)."""
        return self._regs

    def connection_opened(self, conn: Connection) -> None:
        self._conns.add(conn)

    def connection_closed(self, conn: Connection) -> None:
        self._conns.discard(conn)
        for reg in conn.registrations:
            self._regs.pop(reg.handle, None)
            self._free_pool.append(reg.pool_index)

    def register(self, conn: Connection) -> Registration:
        """A new client of ``conn`` (sockclnt_create), with a free pool index."""
        if self._free_pool:
            pool_index = self._free_pool.pop()
        else:
            pool_index = self._next_pool
            self._next_pool += 1
        reg = Registration(pool_index, conn)
        self._regs[reg.handle] = reg
        conn.registrations.append(reg)
        self.stats["connections"] += 1
        return reg

    def unregister(self, reg: Registration) -> None:
        """Forget client ``reg`` (sockclnt_delete); its connection stays open."""
        self._regs.pop(reg.handle, None)
        if reg in reg.conn.registrations:
            reg.conn.registrations.remove(reg)
        self._free_pool.append(reg.pool_index)

    @property
    def delaying(self) -> bool:
        return self.faults.delaying

    def latency_for(self, body: bytes) -> float:
        return self.faults.latency_for(body)

    def output_pending(self, conn: Connection) -> None:
        self._dirty.append(conn)

    def flush(self) -> None:
        """Write the replies every connection queued."""
        dirty = self._dirty
        if dirty:
            self._dirty = []
            for conn in dirty:
                conn.flush()

    # -- processing --------------------------------------------------------------------

    def process(self, conn: Connection, body: bytes) -> None:
        """Route one request body to its handler, as VPP does (or drop and count it)."""
        self.process_slice(conn, (body,), 0, 1, _NEVER)

    def process_slice(
        self, conn: Connection, bodies: Sequence[bytes], start: int, end: int, deadline: float
    ) -> int:
        """Route ``bodies[start:end]`` in order, as :meth:`process` does each, until
        ``conn`` closes or ``perf_counter()`` passes ``deadline`` (looked at every
        ``_CLOCK_EVERY`` bodies); the index of the first body not processed.

        One loop for a slice, not a call per body: the simulator is the other half of
        every pipelined benchmark, and a call, two dict updates and a slice per message
        were most of its cost. What is not the common case (short, unknown, undecodable,
        an injected error) goes through :meth:`_process_odd`."""
        dispatch, regs, codecs, by_id = self._dispatch, self._regs, self.codecs, self._by_id
        create_id, faults, header = self._create_id, self.faults, _ID_CLIENT.unpack_from
        clock = time.perf_counter
        handled = 0
        i = start
        try:
            while i < end and not conn.closing:
                body = bodies[i]
                i += 1
                if len(body) >= 10:
                    msg_id, client = header(body)
                    entry = dispatch[msg_id]
                    reg = regs.get(client)
                    if (entry is not None and reg is not None and msg_id != create_id
                            and not faults.errors):  # fmt: skip
                        name, handler = entry
                        try:
                            msg = codecs[name].decode(body)
                        except Exception as exc:  # undecodable: dropped, or answered
                            self._undecodable(reg, name, body, exc)
                        else:
                            handled += 1
                            by_id[msg_id] += 1
                            try:
                                handler(reg, msg)
                            except _REJECTED as exc:
                                self._rejected(reg, name, msg, exc)
                    else:
                        self._process_odd(conn, body)
                else:
                    self._process_odd(conn, body)
                if not i & _CLOCK_MASK and clock() > deadline:
                    break
        finally:
            self.stats["requests"] += handled
        return i

    def _process_odd(self, conn: Connection, body: bytes) -> None:
        # every case process_slice does not take inline, in VPP's order of checks
        stats = self.stats
        if len(body) < 2:
            stats["dropped_short"] += 1
            return
        msg_id = (body[0] << 8) | body[1]
        entry = self._dispatch[msg_id]
        if entry is None:
            stats["dropped_unknown_id"] += 1
            return
        name, handler = entry
        reg: Registration | None = None
        if msg_id != self._create_id:  # sockclnt_create: the one request without client_index
            if len(body) < 10:
                stats["dropped_short"] += 1
                return
            reg = self._regs.get(int.from_bytes(body[2:6], "big"))
            if reg is None:
                # VPP routes by client_index and silently drops unknown ones
                stats["dropped_unknown_client"] += 1
                return
        try:
            msg = self.codecs[name].decode(body)
        except Exception as exc:  # any undecodable body is dropped like VPP's size check
            self._undecodable(reg, name, body, exc)
            return
        stats["requests"] += 1
        self._by_id[msg_id] += 1
        if reg is not None and self.faults.errors:
            retval = self.faults.retval_for(name, msg)
            if retval is not None:
                stats["injected_errors"] += 1
                self.reply_rv(reg, name, msg.context, retval)
                return
        try:
            handler(reg if reg is not None else conn, msg)
        except _REJECTED as exc:
            self._rejected(reg, name, msg, exc)

    def _undecodable(
        self, reg: Registration | None, name: str, body: bytes, exc: Exception
    ) -> None:
        reason = str(getattr(exc, "reason", ""))
        if (
            reg is not None
            and "prefix" in str(getattr(exc, "field", ""))
            and ("netmask" in reason or "prefix" in reason)
        ):
            # complete message, impossible prefix length: VPP's handler answers it
            self.stats["requests"] += 1
            context = int.from_bytes(body[6:10], "big")
            self.reply_rv(reg, name, context, INVALID_PREFIX_LENGTH)
            return
        self.stats["dropped_malformed"] += 1

    def _rejected(self, reg: Registration | None, name: str, msg: Any, exc: Exception) -> None:
        # a value the codec accepted but the model cannot (e.g. an unknown address
        # family): answer like a handler that validates, never take the server down
        log.debug("sim: %s rejected: %r", name, exc)
        self.reply_rv(reg, name, msg.context, INVALID_VALUE)

    @property
    def message_counts(self) -> dict[str, int]:
        """Requests handled per message name (a fresh dict; names never seen are absent)."""
        names = self.names
        return {names[i]: n for i, n in enumerate(self._by_id) if n}

    def reply_rv(self, reg: Registration | None, request: str, context: int, rv: int) -> None:
        """Answer ``request`` with only a retval (a dump: with nothing)."""
        if reg is None:
            return
        reply = self.defs.reply_of(request)
        if reply is None or reply not in self.ids:
            return
        if self.defs.is_dump(request):
            return  # details have no retval; an empty answer is what the client sees
        reg.conn.send(self.encode(reply, {"context": context, "retval": rv}))

    def reply(
        self, reg: Registration, request: str, context: int, rv: int, fields: dict[str, Any]
    ) -> None:
        """Answer ``request`` with its reply message."""
        reply = self.defs.reply_of(request)
        assert reply is not None
        fields["context"] = context
        fields["retval"] = rv
        reg.conn.send(self.encode(reply, fields))

    def details(self, reg: Registration, name: str, context: int, fields: dict[str, Any]) -> None:
        """Send one details message of a dump."""
        fields["context"] = context
        reg.conn.send(self.encode(name, fields))

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
        codec = self.codecs["sw_interface_event"]
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
        self.flush()

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
            conn.close(abort=True)
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
        self.faults.inject_error(message, retval, count, match, until)

    def clear_faults(self) -> None:
        """Remove injected errors and latency."""
        self.faults.clear()

    def set_latency(self, seconds: float, message: str | None = None) -> None:
        """Delay each call (or only ``message`` calls) by ``seconds``; 0 removes it."""
        self.faults.set_latency(seconds, message)

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
        self._by_id[:] = [0] * len(self._by_id)

    def dump_state(self) -> dict[str, Any]:
        """The whole dataplane as a JSON-able dict."""
        out = self.state.to_json()
        out["epoch"] = self.epoch
        out["clients"] = len(self._regs)
        return out


# -- command line ---------------------------------------------------------------------


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
