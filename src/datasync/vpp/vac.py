"""The optional libvppapiclient (``vac_*``) transport, bound with cffi in ABI mode.

libvppapiclient.so ships only with a real VPP install (its ABI moves with VPP releases),
so nothing here is compiled: :meth:`VacLibrary.load` ``dlopen``\\ s the library at run
time and raises :class:`VacUnavailableError`, naming every place it looked, when it is
not there.

The library is VPP's shared-memory client. ``vac_connect`` maps VPP's API region and
does the ``memclnt_create`` handshake itself; message ids come from
``vac_get_msg_index("name_crc")``; ``vac_write`` copies a body into shared memory and
stamps its own client index over bytes 2..5; ``vac_read`` pops the next body, which
the caller must ``vac_free``. The bodies are the same big-endian bytes the socket
carries, so the client and codec work unchanged on top of :class:`VacTransport`.

The library is a per-process singleton: one connection per loaded library at a time.
By default it is used in sync mode (no callback, no library rx thread): our own reader
thread blocks in ``vac_read`` with the GIL released and hands bodies to the event loop
in batches. In callback mode the library's rx thread hands each message to a cffi
callback instead, which spares the library's timeout-thread handshake on every read.
Every return code is checked: the library's -1..-5 codes become :class:`VacError` (a
:class:`VppConnectionError`), never a crash. The event loop's thread never calls the
library: ``vac_write`` waits inside it while VPP's input queue is full, for good when
VPP died, so a writer thread makes the writes and the client keeps fewer requests
outstanding than that queue holds. There is no socket to break when VPP
dies: the client's control_ping probe finds it, and the connection is torn down in
threads, each library call bounded by a timeout on our side.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes.util
import glob
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import cffi

from .defs import ApiDefinitions
from .errors import (
    VAC_ERRORS,
    VacError,
    VacUnavailableError,
    VppConnectionError,
    VppProtocolError,
)
from .framing import MAX_FRAME
from .link import FrameSink, MessageTable

__all__ = [
    "ENV_LIBRARY",
    "VAC_ERRORS",
    "VacError",
    "VacLibrary",
    "VacTransport",
    "VacUnavailableError",
    "open",
]

log = logging.getLogger("datasync.vpp.vac")

#: environment variable naming the library file to load
ENV_LIBRARY = "DATASYNC_VAC_LIBRARY"

# vppapiclient.h as shipped by VPP (vac_errno_t is plain int in the signatures)
_CDEF = """
typedef void (*vac_callback_t)(unsigned char *data, int len);
typedef void (*vac_error_callback_t)(void *, unsigned char *, int);
int vac_connect(char *name, char *chroot_prefix, vac_callback_t cb, int rx_qlen);
int vac_disconnect(void);
int vac_read(char **data, int *l, unsigned short timeout);
int vac_write(char *data, int len);
void vac_free(void *msg);
int vac_get_msg_index(char *name);
int vac_msg_table_size(void);
int vac_msg_table_max_index(void);
void vac_rx_suspend(void);
void vac_rx_resume(void);
void vac_set_error_handler(vac_error_callback_t);
void vac_mem_init(size_t size);
"""

_SYMBOLS = (
    "vac_connect",
    "vac_disconnect",
    "vac_read",
    "vac_write",
    "vac_free",
    "vac_get_msg_index",
    "vac_msg_table_size",
    "vac_msg_table_max_index",
    "vac_rx_suspend",
    "vac_rx_resume",
    "vac_set_error_handler",
    "vac_mem_init",
)

ffi = cffi.FFI()
ffi.cdef(_CDEF)

VAC_SVM_QUEUE_SUB_1 = -1
VAC_SVM_QUEUE_SUB_2 = -2
VAC_NOT_CONNECTED = -3
VAC_SHM_NOT_READY = -4
VAC_TIMEOUT = -5

# Where distributions put the library when find_library does not know it (no ldconfig
# entry, or a container without gcc/ldconfig).
_SEARCH_GLOBS = (
    "/usr/lib/x86_64-linux-gnu/libvppapiclient.so*",
    "/usr/lib/*-linux-gnu/libvppapiclient.so*",
    "/usr/lib64/libvppapiclient.so*",
    "/usr/lib/libvppapiclient.so*",
    "/usr/local/lib/libvppapiclient.so*",
)


class VacLibrary:
    """A loaded libvppapiclient: the cffi handle plus the process-wide connection slot."""

    _cache: dict[str, VacLibrary] = {}
    #: searches already done: (path, $DATASYNC_VAC_LIBRARY) -> library (find_library forks)
    _found: dict[tuple[str | None, str | None], VacLibrary] = {}
    _cache_lock = threading.Lock()

    def __init__(self, lib: Any, path: str) -> None:
        self.lib = lib
        self.path = path
        #: held while a connection is open: the library keeps one connection per process
        self.slot = threading.Lock()
        self._mem_ready = False
        self._mem_lock = threading.Lock()

    @staticmethod
    def locate(path: str | os.PathLike[str] | None = None) -> str:
        """The library file to load; raises :class:`VacUnavailableError` naming what was tried.

        An explicit ``path`` or ``$DATASYNC_VAC_LIBRARY`` (a file, or a bare soname for
        ``dlopen`` to search) is used alone: a wrong setting must not fall back to some
        other library. Otherwise ``find_library`` and then
        the usual library directories are searched.
        """
        if path is not None:
            p = os.fspath(path)
            if os.path.exists(p) or os.path.sep not in p:  # a bare soname: dlopen searches
                return p
            raise VacUnavailableError(
                f"libvppapiclient.so not found: the path given does not exist: {p}", [p]
            )
        env = os.environ.get(ENV_LIBRARY)
        if env:
            if os.path.exists(env) or os.path.sep not in env:
                return env
            raise VacUnavailableError(
                f"libvppapiclient.so not found: ${ENV_LIBRARY}={env} does not exist", [env]
            )
        tried = [f"${ENV_LIBRARY} (unset)", 'ctypes.util.find_library("vppapiclient")']
        found = ctypes.util.find_library("vppapiclient")
        if found:
            return found
        for pattern in _SEARCH_GLOBS:
            tried.append(pattern)
            hits = sorted(glob.glob(pattern))
            if hits:
                return hits[0]
        raise VacUnavailableError(
            "libvppapiclient.so not found (it ships with VPP: install VPP, or set "
            f"${ENV_LIBRARY} to the library file); looked in: " + ", ".join(tried),
            tried,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> VacLibrary:
        """Find and ``dlopen`` libvppapiclient (cached per file), checking every symbol."""
        query = (None if path is None else os.fspath(path), os.environ.get(ENV_LIBRARY))
        found = cls._found.get(query)
        if found is not None:
            return found
        where = cls.locate(path)
        key = os.path.realpath(where) if os.path.sep in where else where
        with cls._cache_lock:
            cached = cls._cache.get(key)
            if cached is not None:
                cls._found[query] = cached
                return cached
            try:
                lib = ffi.dlopen(where)
            except OSError as exc:
                raise VacUnavailableError(f"cannot load {where}: {exc}", [where]) from exc
            missing = []
            for sym in _SYMBOLS:
                try:
                    getattr(lib, sym)
                except AttributeError:
                    missing.append(sym)
            if missing:
                with contextlib.suppress(Exception):
                    ffi.dlclose(lib)
                raise VacUnavailableError(
                    f"{where} is not a usable libvppapiclient: it lacks {', '.join(missing)}",
                    [where],
                )
            self = cls(lib, where)
            cls._cache[key] = self
            cls._found[query] = self
            return self

    def mem_init(self, size: int = 0) -> None:
        """``vac_mem_init`` once per process (0: the library's default heap, 1 GiB)."""
        with self._mem_lock:
            if not self._mem_ready:
                self.lib.vac_mem_init(size)
                self._mem_ready = True

    def msg_index(self, name_crc: str) -> int | None:
        """VPP's id of ``name_crc``, or None when VPP does not offer it (CRC included)."""
        idx = int(self.lib.vac_get_msg_index(name_crc.encode("ascii")))
        # the library returns ~0 (-1 as int) for an unknown name; ids are u16 on the wire
        return idx if 0 < idx <= 0xFFFF else None

    def table_size(self) -> int:
        return int(self.lib.vac_msg_table_size())

    def table_max_index(self) -> int:
        return int(self.lib.vac_msg_table_max_index())


def _in_thread(
    loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any
) -> asyncio.Future[Any]:
    """Run ``fn(*args)`` in a daemon thread: a library call that never returns must not
    hold up the interpreter's exit the way the default executor's threads would."""
    fut: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def run() -> None:
        try:
            result, ok = fn(*args), True
        except BaseException as exc:
            result, ok = exc, False
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, ok, result)

    threading.Thread(target=run, name=f"vac-{getattr(fn, '__name__', 'call')}", daemon=True).start()
    return fut


class VacTransport:
    """VPP message bodies through libvppapiclient; the same shape as ``SocketTransport``.

    Open it with :meth:`open`; bodies read by the reader thread reach
    ``sink.frames_received`` on the event loop, and the end of the connection (an error
    code, :meth:`abort`, :meth:`close`) reaches ``sink.transport_lost`` exactly once.

    The event loop's thread never calls into the library: a library call can block for
    good (``vac_write`` waits while VPP's input queue is full, and a dead VPP never drains
    it). Writes go through a writer thread, reads through a reader thread that polls with
    ``read_timeout``, and the teardown (``vac_disconnect`` once both threads left the
    library) runs in a thread of its own. ``transport_lost`` follows once the teardown is
    done, or after ``stuck_timeout`` if a thread is still inside the library; the library
    (one connection per process) is free for the next connection only once it returns.
    To keep VPP's input queue from filling with our own messages, at most
    ``max_in_flight`` requests (VPP's queue length less a reserve) may be outstanding:
    the client caps its window to it.
    """

    kind = "vac"
    max_body: int | None = None
    #: a request abandoned by the client still waits in VPP's input queue
    hold_abandoned = True
    #: vac_disconnect says goodbye
    says_goodbye = True
    #: where shm_open puts VPP's API region (None: do not check before vac_connect)
    shm_dir: str | None = "/dev/shm"
    #: VPP's input queue length (``api-queue { length }``, 1024 by default) ...
    vpp_queue_length = 1024
    #: ... less what others may need in it: our pings and goodbye, vppctl, other clients
    queue_reserve = 128

    def __init__(
        self,
        library: VacLibrary,
        sink: FrameSink,
        loop: asyncio.AbstractEventLoop,
        *,
        read_timeout: int = 1,
        stuck_timeout: float = 2.0,
        mode: str = "sync",
    ) -> None:
        if not 1 <= read_timeout <= 0xFFFF:
            raise ValueError(f"read_timeout must be 1..65535 seconds, got {read_timeout!r}")
        if mode not in ("sync", "callback"):
            raise ValueError(f"mode must be 'sync' or 'callback', got {mode!r}")
        #: "sync": our reader thread polls vac_read with read_timeout; "callback": the
        #: library's own rx thread hands us each message (no timeout thread per read)
        self.mode = mode
        self._c_callback: Any = None
        self.library = library
        self.path = library.path
        self._lib = library.lib
        self._sink = sink
        self._loop = loop
        self._read_timeout = read_timeout
        self._stuck_timeout = stuck_timeout
        if mode == "callback":
            # kept referenced for the connection's life: the library calls it
            self._c_callback = ffi.callback("vac_callback_t", self._on_message)
        #: the most requests we let wait in VPP's input queue
        self.max_in_flight = max(1, self.vpp_queue_length - self.queue_reserve)
        self._lib_connected = False  # vac_connect succeeded, vac_disconnect not yet called
        self._holds_slot = False
        self._closing = False
        self._shut = False
        self._lost_error: BaseException | None = None
        self._rx: list[bytes] = []
        self._rx_lock = threading.Lock()
        self._rx_scheduled = False
        # the writer's queue: the loop only appends under this lock, never calls the library
        self._tx: list[bytes] = []
        self._tx_cv = threading.Condition(threading.Lock())
        self._reader: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self._teardown_started = False
        self._teardown_lock = threading.Lock()
        #: the library call the writer is inside of, and since when (for the loss report)
        self._writing_since: float | None = None
        #: two parts end a connection: the loop heard of the loss, the library is free
        self._parts_done = 0
        self._parts_lock = threading.Lock()
        self._wake_body: bytes | None = None
        self._closed_future: asyncio.Future[None] = loop.create_future()
        self.table: dict[str, int] = {}
        #: bodies handed to the loop / written, for tests and stats
        self.stats = {"read": 0, "written": 0, "batches": 0}

    # -- opening -----------------------------------------------------------------------

    @classmethod
    def region_path(cls, prefix: str | None) -> str | None:
        """The file of VPP's API region (``api-segment { prefix }``), or None: not checked."""
        if cls.shm_dir is None or not os.path.isdir(cls.shm_dir):
            return None
        return os.path.join(cls.shm_dir, f"{prefix}-vpe-api" if prefix else "vpe-api")

    @classmethod
    def _missing_region(cls, prefix: str | None) -> str | None:
        region = cls.region_path(prefix)
        return region if region is not None and not os.path.exists(region) else None

    @classmethod
    async def open(
        cls,
        sink: FrameSink,
        names: Iterable[str],
        *,
        name: str = "datasync",
        prefix: str | None = None,
        library: VacLibrary | str | os.PathLike[str] | None = None,
        rx_qlen: int = 1024,
        read_timeout: int = 1,
        mem_size: int = 0,
        slot_timeout: float = 10.0,
        connect_timeout: float | None = None,
        stuck_timeout: float = 2.0,
        mode: str = "sync",
    ) -> tuple[VacTransport, dict[str, int]]:
        """Connect (``vac_connect`` in sync mode) and resolve ``names`` (each a name_crc).

        Returns the transport, already reading, and ``{name_crc: id}`` for every name VPP
        offers. ``prefix`` is VPP's ``api-segment { prefix }`` (None: the default region).
        ``rx_qlen`` sizes our input queue in shared memory: VPP's main thread blocks when
        it is full, so it is sized for a pipelined window (papi's 32 suits one call at a
        time). Without VPP's region file ``vac_connect`` is not called at all (the library
        would wait for the region for over a minute); ``connect_timeout`` bounds the wait
        for the rest (the library's own is 10 s). ``mode="callback"`` connects with a
        callback, so that the library's rx thread delivers messages with no timeout-thread
        handshake per message (``vac_disconnect`` stops that thread itself).
        Raises :class:`VacUnavailableError` without the library, :class:`VacError` when
        ``vac_connect`` fails or takes longer than ``connect_timeout``.
        """
        loop = asyncio.get_running_loop()
        if isinstance(library, VacLibrary):
            lib = library
        else:  # the first search runs ldconfig: keep it off the loop
            lib = await _in_thread(loop, VacLibrary.load, library)
        region = cls._missing_region(prefix)
        if region is not None:
            raise VacError(
                VAC_SHM_NOT_READY,
                "vac_connect",
                f"no VPP API region {region}: is VPP running"
                + (f" with api-segment prefix {prefix!r}?" if prefix else "?"),
            )
        self = cls(
            lib, sink, loop, read_timeout=read_timeout, stuck_timeout=stuck_timeout, mode=mode
        )
        wanted = list(names)
        # a library still busy with the last connection is named before our bound expires
        slot_wait = (
            slot_timeout if connect_timeout is None else min(slot_timeout, connect_timeout / 2)
        )
        fut = _in_thread(
            loop, self._open_blocking, name, prefix, rx_qlen, mem_size, wanted, slot_wait
        )
        try:
            table = await asyncio.wait_for(asyncio.shield(fut), connect_timeout)
        except (asyncio.CancelledError, TimeoutError) as exc:
            # the connect goes on in its thread: undo it once it is done
            fut.add_done_callback(lambda f: self._undo_open(f))
            if isinstance(exc, TimeoutError):
                raise VacError(
                    VAC_TIMEOUT,
                    "vac_connect",
                    f"vac_connect took over {connect_timeout:g} s: is VPP running?",
                ) from None
            raise
        self.table = table
        self._start_threads()
        return self, dict(table)

    def _open_blocking(
        self,
        name: str,
        prefix: str | None,
        rx_qlen: int,
        mem_size: int,
        names: list[str],
        slot_timeout: float,
    ) -> dict[str, int]:
        library = self.library
        if not library.slot.acquire(timeout=slot_timeout):
            raise VppConnectionError(
                f"{library.path} is still connected (libvppapiclient allows one connection "
                "per process, and the previous one has not left the library yet): close the "
                "other VppClient first, or wait for its vac_* call to return"
            )
        self._holds_slot = True
        try:
            library.mem_init(mem_size)
            c_name = ffi.new("char[]", name.encode("utf-8")[:63])
            c_prefix = ffi.new("char[]", prefix.encode("utf-8")) if prefix else ffi.NULL
            cb = self._c_callback if self._c_callback is not None else ffi.NULL
            rc = int(self._lib.vac_connect(c_name, c_prefix, cb, rx_qlen))
            if rc != 0:
                where = f"prefix {prefix!r}" if prefix else "the default API region"
                raise VacError(rc, "vac_connect", f"is VPP running? {where}")
            self._lib_connected = True
            table = {}
            for name_crc in names:
                idx = library.msg_index(name_crc)
                if idx is not None:
                    table[name_crc] = idx
            ping = next(
                (v for k, v in table.items() if k.rpartition("_")[0] == "control_ping"), None
            )
            if ping is not None:
                # answered by VPP: wakes the reader out of vac_read when closing
                self._wake_body = struct.pack(">HII", ping, 0, 0)
            return table
        except BaseException:
            self._disconnect_blocking()
            self._release_slot()
            raise

    def _undo_open(self, fut: asyncio.Future[dict[str, int]]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._closing = True

            def undo() -> None:
                self._disconnect_blocking()
                self._release_slot()

            threading.Thread(target=undo, daemon=True).start()

    def _disconnect_blocking(self) -> None:
        """vac_disconnect, once; only when no other thread of ours is inside the library."""
        if self._lib_connected:
            self._lib_connected = False
            # a failing disconnect still frees us: the library resets its state anyway
            with contextlib.suppress(Exception):
                self._lib.vac_disconnect()

    def _release_slot(self) -> None:
        if self._holds_slot:
            self._holds_slot = False
            self.library.slot.release()

    # -- the threads ---------------------------------------------------------------------

    def _start_threads(self) -> None:
        self._writer = threading.Thread(
            target=self._write_loop, name=f"vac-writer-{self.path}", daemon=True
        )
        self._writer.start()
        if self.mode == "sync":
            self._reader = threading.Thread(
                target=self._read_loop, name=f"vac-reader-{self.path}", daemon=True
            )
            self._reader.start()

    def _write_loop(self) -> None:
        write = self._lib.vac_write
        cv = self._tx_cv
        stats = self.stats
        err: BaseException | None = None
        try:
            while err is None:
                with cv:
                    while not self._tx and not self._closing:
                        cv.wait()
                    bodies, self._tx = self._tx, []
                    last = self._closing
                for body in bodies:
                    if self._closing and not last:
                        break  # closing: the rest of the backlog is for a dead connection
                    self._writing_since = time.monotonic()
                    rc = int(write(body, len(body)))  # may wait while VPP's queue is full
                    self._writing_since = None
                    if rc != 0:
                        err = VacError(rc, "vac_write")
                        break
                    stats["written"] += 1
                if last:
                    return
        except Exception as exc:  # a misbehaving library must end the connection, not us
            err = VppConnectionError(f"libvppapiclient writer failed: {exc!r}")
        finally:
            self._writing_since = None
        if err is not None:
            if self._lost_error is None:
                self._lost_error = err
            self._closing = True  # the reader sees it within read_timeout
            if self._reader is None:  # callback mode: no reader to end it
                threading.Thread(target=self._finish, args=(err,), daemon=True).start()

    def _read_loop(self) -> None:
        lib = self._lib
        pbuf = ffi.new("char **")
        plen = ffi.new("int *")
        timeout = self._read_timeout
        err: BaseException | None = None
        try:
            while not self._closing:
                pbuf[0] = ffi.NULL
                plen[0] = 0
                rv = int(lib.vac_read(pbuf, plen, timeout))
                if rv == VAC_TIMEOUT:
                    continue  # also keepalive and suspend pseudo-messages: just poll again
                if rv != 0:
                    err = VacError(rv, "vac_read")
                    break
                ptr = pbuf[0]
                n = int(plen[0])
                if ptr == ffi.NULL:
                    err = VppProtocolError("vac_read returned success with no message")
                    break
                try:
                    if n < 0 or n > MAX_FRAME:
                        err = VppProtocolError(f"vac_read returned a message of {n} bytes")
                        break
                    body = ffi.buffer(ptr, n)[:]
                finally:
                    lib.vac_free(ptr)
                if self._closing:
                    break
                self._push(body)
        except Exception as exc:  # a misbehaving library must end the connection, not us
            err = VppConnectionError(f"libvppapiclient reader failed: {exc!r}")
        finally:
            self._finish(err)

    def _on_message(self, data: Any, length: int) -> None:
        # the library's rx thread, with the GIL cffi took for it; the library frees the
        # message when we return, so it is copied here, and nothing may raise
        try:
            if self._closing:
                return
            if data == ffi.NULL or not 0 <= length <= MAX_FRAME:
                self._to_loop(
                    self._end, VppProtocolError(f"libvppapiclient delivered {length} bytes")
                )
                return
            self._push(ffi.buffer(data, length)[:])
        except BaseException:  # pragma: no cover - a callback must not raise into C
            log.exception("vac callback failed")

    def _push(self, body: bytes) -> None:
        with self._rx_lock:
            self._rx.append(body)
            if self._rx_scheduled:
                return
            self._rx_scheduled = True
        self._to_loop(self._drain_rx)

    def _to_loop(self, fn: Callable[..., Any], *args: Any) -> bool:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._closing = True
            return False
        return True

    def _drain_rx(self) -> None:
        with self._rx_lock:
            bodies, self._rx = self._rx, []
            self._rx_scheduled = False
        if bodies and not self._closing:
            self.stats["read"] += len(bodies)
            self.stats["batches"] += 1
            self._sink.frames_received(bodies)

    # -- the end -----------------------------------------------------------------------

    def _finish(self, err: BaseException | None) -> None:
        """Reader thread exit: tear down, then tell the loop (bounded by stuck_timeout)."""
        self._closing = True
        if self._lost_error is None:
            self._lost_error = err
        done = self._start_teardown()
        if not done.wait(self._stuck_timeout):
            since = self._writing_since
            stuck = (
                f"vac_write has not returned for {time.monotonic() - since:.1f} s"
                if since is not None
                else "the library has not returned"
            )
            self._lost_error = VppConnectionError(
                f"{self._lost_error or 'VPP API connection (libvppapiclient) closed'}; "
                f"{stuck} (VPP's input queue is full and nobody drains it): the library "
                "is busy until it does, and the next connection waits for it"
            )
            log.warning("%s", self._lost_error)  # the client may report its own reason
        if not self._to_loop(self._report_lost):
            self._part_done()

    def _start_teardown(self) -> threading.Event:
        done = threading.Event()
        with self._teardown_lock:
            if self._teardown_started:
                done.set()  # someone else tears down: report now
                return done
            self._teardown_started = True

        def teardown() -> None:
            with self._tx_cv:
                self._tx = []
                self._tx_cv.notify()
            writer = self._writer
            if writer is not None:
                writer.join()  # no vac_disconnect under a thread still inside the library
            self._disconnect_blocking()
            done.set()
            self._part_done()

        threading.Thread(target=teardown, name=f"vac-teardown-{self.path}", daemon=True).start()
        return done

    def _part_done(self) -> None:
        # The slot is freed once the library is free *and* the sink heard of the loss: a
        # reconnect cannot finish before the report, so it never hits the next connection.
        with self._parts_lock:
            self._parts_done += 1
            last = self._parts_done == 2
        if last:
            self._release_slot()

    def _report_lost(self) -> None:
        if self._shut:
            return
        self._shut = True
        try:
            with self._rx_lock:
                self._rx.clear()
            if not self._closed_future.done():
                self._closed_future.set_result(None)
            self._sink.transport_lost(self._lost_error)
        finally:
            self._part_done()

    # -- the transport interface the client uses ------------------------------------

    @property
    def is_open(self) -> bool:
        return not self._closing

    def send(self, body: bytes) -> None:
        """Queue one body for the writer thread (``vac_write`` copies it into shared memory)."""
        self.send_many((body,))

    def send_many(self, bodies: Iterable[bytes]) -> None:
        """Queue bodies in order for the writer; a failing ``vac_write`` ends the connection."""
        if self._closing:
            return
        cv = self._tx_cv
        with cv:
            was_empty = not self._tx
            self._tx.extend(bodies)
            if was_empty:
                cv.notify()

    async def drain(self) -> None:
        return None  # the window keeps VPP's queue from filling with our messages

    def _end(self, err: BaseException | None) -> None:
        if self._closing:
            return
        if self._lost_error is None:
            self._lost_error = err
        reader = self._reader
        reading = reader is not None and reader.is_alive()
        # Our reader sits in vac_read: VPP's answer to a ping wakes it at once (else it
        # sees the flag after read_timeout). Requests not written yet are dropped.
        wake = self._wake_body if reading else None
        with self._tx_cv:
            self._closing = True  # under the lock: the writer sees only the wake ping
            self._tx = [wake] if wake is not None else []
            self._tx_cv.notify()
        if not reading:  # callback mode (vac_disconnect stops the library's rx thread)
            threading.Thread(target=self._finish, args=(err,), daemon=True).start()

    def close(self) -> None:
        """Disconnect (in the reader thread); ``transport_lost(None)`` follows."""
        self._end(None)

    def abort(self) -> None:
        """Drop the connection now; ``transport_lost`` follows with a connection error."""
        self._end(VppConnectionError("VPP API connection (libvppapiclient) aborted"))

    async def wait_closed(self) -> None:
        """Wait until ``transport_lost`` was delivered."""
        await asyncio.shield(self._closed_future)


async def open(
    sink: FrameSink,
    defs: ApiDefinitions,
    *,
    name: str = "datasync",
    connect_timeout: float = 5.0,
    require: Iterable[str] = (),
    prefix: str | None = None,
    library: VacLibrary | str | os.PathLike[str] | None = None,
    mode: str = "sync",
) -> tuple[VacTransport, MessageTable]:
    """Connect to a real VPP's shared memory through libvppapiclient (see
    :meth:`VacTransport.open`) and resolve every message of ``defs``.

    The library does the memclnt handshake itself; ids come from ``vac_get_msg_index``
    and ``vac_write`` stamps the client index (so the table's is 0).
    """
    names = [m.name_crc for m in defs.messages.values()]
    transport, ids = await VacTransport.open(
        sink,
        names,
        name=name,
        prefix=prefix,
        library=library,
        connect_timeout=connect_timeout,
        mode=mode,
    )
    try:
        table = MessageTable(ids, defs, 0).require(require)
    except BaseException:
        transport.close()
        raise
    return transport, table
