"""The libvppapiclient (``vac_*``) transport: loading, the cffi binding, threads, errors.

libvppapiclient.so ships only with VPP. Without it the "missing library" tests still
run, the real-library tests are skipped, and everything else runs against a FAKE
libvppapiclient.so built here from ``fake_vac.c`` (same ``vac_*`` signatures, an
in-process loopback) to prove the binding, the reader thread and the error mapping.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import cffi
import pytest

import datasync.vpp.vac as vac
from datasync.vpp.client import (
    VppApiError,
    VppClient,
    VppConnectionError,
    VppMessageError,
    VppTimeoutError,
)
from datasync.vpp.codec import codec_for
from datasync.vpp.defs import builtin_definitions
from datasync.vpp.transport import VppProtocolError
from datasync.vpp.vac import (
    ENV_LIBRARY,
    VacError,
    VacLibrary,
    VacTransport,
    VacUnavailableError,
)

from .helpers import Faults, client_factory
from .helpers import eventually as _eventually

DEFS = builtin_definitions()
FAKE_SRC = Path(__file__).with_name("fake_vac.c")
NO_LIB_REASON = "libvppapiclient.so not found: install VPP to run the vac transport tests"

# what fake_vac.c offers, and the ids it gives them
FAKE_IDS = {
    "sockclnt_delete": 17,
    "control_ping": 23,
    "control_ping_reply": 24,
    "want_interface_events": 600,
    "want_interface_events_reply": 601,
    "sw_interface_event": 602,
}
FAKE_CLIENT_INDEX = 0x01020304  # the fake stamps it in native order, as the real one does


def _real_library() -> str | None:
    try:
        return VacLibrary.locate()
    except VacUnavailableError:
        return None


REAL_LIBRARY = _real_library()
needs_real_library = pytest.mark.skipif(REAL_LIBRARY is None, reason=NO_LIB_REASON)


async def eventually(pred: Callable[[], bool], limit: float = 5.0) -> None:
    """Poll ``pred`` until it holds (state here changes from another thread)."""
    await _eventually(pred, limit, poll=0.005)


# -- the fake library --------------------------------------------------------------------

_CTL = cffi.FFI()
_CTL.cdef(
    """
    void fake_vac_reset(void);
    void fake_vac_set_connect_result(int rv);
    void fake_vac_set_connect_delay(int ms);
    void fake_vac_set_write_result(int rv);
    void fake_vac_set_read_result(int rv);
    void fake_vac_set_bad_read(int mode);
    void fake_vac_set_hang(int on);
    void fake_vac_set_pid(unsigned int pid);
    void fake_vac_inject(const char *data, int len);
    void fake_vac_set_dead(int on);
    void fake_vac_set_queue(int limit, int valve_ms);
    long fake_vac_blocked_tid(int i);
    long fake_vac_stat(int which);
    const char *fake_vac_last(int which);
    """
)


class Fake:
    """Controls and counters of the fake library (same handle as the transport's)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.ctl = _CTL.dlopen(path)
        self.library = VacLibrary.load(path)

    def stat(self, name: str) -> int:
        which = {
            "mem_inits": 0,
            "connects": 1,
            "disconnects": 2,
            "writes": 3,
            "reads": 4,
            "outstanding": 5,
            "connected": 6,
            "rx_qlen": 7,
            "had_callback": 8,
            "queued": 9,
            "waits_for_room": 10,
            "valve_expired": 11,
        }[name]
        return int(self.ctl.fake_vac_stat(which))

    def sent(self, msg: str) -> int:
        """How many messages ``msg`` were vac_write'n."""
        return int(self.ctl.fake_vac_stat(1000 + FAKE_IDS[msg]))

    def last_name(self) -> str:
        return _CTL.string(self.ctl.fake_vac_last(0)).decode()

    def last_prefix(self) -> str:
        return _CTL.string(self.ctl.fake_vac_last(1)).decode()

    def blocked_threads(self) -> list[int]:
        """Kernel thread ids of the callers that waited for room in VPP's input queue."""
        tids = []
        while tid := int(self.ctl.fake_vac_blocked_tid(len(tids))):
            tids.append(tid)
        return tids

    def inject(self, body: bytes) -> None:
        self.ctl.fake_vac_inject(body, len(body))

    @property
    def idle(self) -> bool:
        """Disconnected, every buffer freed, and the connection slot free again."""
        return (
            self.stat("connected") == 0
            and self.stat("outstanding") == 0
            and not self.library.slot.locked()
        )


@pytest.fixture(scope="session")
def fake_lib_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler: cannot build the fake libvppapiclient.so")
    out = tmp_path_factory.mktemp("fakevac") / "libvppapiclient.so"
    subprocess.run(
        [cc, "-shared", "-fPIC", "-pthread", "-O1", "-o", str(out), str(FAKE_SRC)],
        check=True,
        capture_output=True,
    )
    return str(out)


@pytest.fixture
def shm_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the transport looks for VPP's API region: "VPP" is there (default and "dsx")."""
    d = tmp_path / "shm"
    d.mkdir()
    for region in ("vpe-api", "dsx-vpe-api"):
        (d / region).write_bytes(b"")
    monkeypatch.setattr(VacTransport, "shm_dir", str(d))
    return d


@pytest.fixture
async def fake(fake_lib_path: str, shm_dir: Path) -> AsyncIterator[Fake]:
    f = Fake(fake_lib_path)
    f.ctl.fake_vac_reset()
    yield f
    # every test must leave the library disconnected with nothing leaked
    await eventually(lambda: f.idle)
    f.ctl.fake_vac_reset()


class Sink:
    """Collects what a transport hands up."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.batches = 0
        self.lost: list[BaseException | None] = []

    def frames_received(self, bodies: list[bytes]) -> None:
        self.batches += 1
        self.bodies.extend(bodies)

    def transport_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


def ping(ctx: int, client_index: int = 0) -> bytes:
    return codec_for(DEFS, "control_ping").encode(
        FAKE_IDS["control_ping"], {"context": ctx, "client_index": client_index}
    )


NAMES = [m.name_crc for m in DEFS.messages.values()]


@pytest.fixture
async def make_client(fake: Fake) -> AsyncIterator[Callable[..., Awaitable[VppClient]]]:
    async with client_factory(transport="vac", vac_library=fake.path) as make:
        yield make


# -- no library ----------------------------------------------------------------------------


@pytest.fixture
def no_library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """A machine without libvppapiclient, whatever this one has installed."""
    monkeypatch.delenv(ENV_LIBRARY, raising=False)
    monkeypatch.setattr(vac.ctypes.util, "find_library", lambda name: None)
    pattern = str(tmp_path / "lib" / "libvppapiclient.so*")
    monkeypatch.setattr(vac, "_SEARCH_GLOBS", (pattern,))
    monkeypatch.setattr(VacLibrary, "_found", {})  # no earlier search result either
    yield pattern


def test_missing_library_raises_a_clear_error(no_library: str) -> None:
    with pytest.raises(VacUnavailableError) as err:
        VacLibrary.load()
    msg = str(err.value)
    assert "libvppapiclient.so not found" in msg
    assert "install VPP" in msg
    # it names every place it looked
    assert ENV_LIBRARY in msg
    assert 'find_library("vppapiclient")' in msg
    assert no_library in msg
    assert no_library in err.value.tried
    assert not err.value.retriable


def test_explicit_path_and_env_are_not_second_guessed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = str(tmp_path / "nope" / "libvppapiclient.so")
    with pytest.raises(VacUnavailableError, match="path given does not exist") as err:
        VacLibrary.load(missing)
    assert missing in str(err.value)
    monkeypatch.setenv(ENV_LIBRARY, missing)
    with pytest.raises(VacUnavailableError, match=ENV_LIBRARY) as err:
        VacLibrary.load()
    assert missing in str(err.value)


def test_a_library_without_vac_symbols_is_refused(tmp_path: Path) -> None:
    not_vac = tmp_path / "libvppapiclient.so"
    not_vac.write_bytes(b"not an ELF file")
    with pytest.raises(VacUnavailableError, match="cannot load"):
        VacLibrary.load(not_vac)
    import ctypes.util

    libc = ctypes.util.find_library("c")
    if libc is None:
        pytest.skip("no libc to dlopen by name")
    with pytest.raises(VacUnavailableError, match="lacks vac_connect"):
        VacLibrary.load(libc)


async def test_client_without_library(no_library: str, monkeypatch: pytest.MonkeyPatch) -> None:
    c = VppClient(transport="vac", probe_interval=None)
    with pytest.raises(VacUnavailableError, match=r"libvppapiclient\.so not found"):
        await c.connect()
    await c.close()
    with pytest.raises(ValueError, match="'vac'"):
        VppClient(transport="carrier-pigeon")
    with pytest.raises(ValueError, match="'callback'"):
        VppClient(transport="vac", vac_mode="async")


# -- a real VPP ----------------------------------------------------------------------------


@needs_real_library
@pytest.mark.parametrize("mode", ["sync", "callback"])
async def test_real_vpp_control_ping(mode: str) -> None:
    assert REAL_LIBRARY is not None
    c = VppClient(
        transport="vac",
        vac_library=REAL_LIBRARY,
        vac_prefix=os.environ.get("DATASYNC_VAC_PREFIX") or None,
        probe_interval=None,
        vac_mode=mode,
    )
    try:
        # bounded: no API region means no vac_connect at all (the library would wait
        # about 100 s for it), and a region without a VPP answering is connect_timeout
        await c.connect()
    except VacError as exc:
        # the one allowed skip, in CI too: this kind of machine cannot run a real VPP
        pytest.skip(f"libvppapiclient.so found but VPP is not running here: {exc}")
    try:
        reply = await c.call("control_ping")
        assert reply.retval == 0 and reply.vpe_pid > 0
        assert c.vpe_pid == reply.vpe_pid
        replies = await c.call_many("control_ping", [None] * 100)
        assert len({r.context for r in replies}) == 100
    finally:
        await c.close()


# -- the binding, against the fake -----------------------------------------------------------


def test_fake_table_matches_our_definitions(fake: Fake) -> None:
    lib = fake.library
    assert VacLibrary.load(fake.path) is lib  # one instance per file
    for name, msg_id in FAKE_IDS.items():
        assert lib.msg_index(DEFS.name_crc(name)) == msg_id, name
    assert lib.msg_index("control_ping_00000000") is None  # CRC mismatch: not offered
    assert lib.msg_index("no_such_message_12345678") is None
    assert lib.table_size() == len(FAKE_IDS)
    assert lib.table_max_index() == max(FAKE_IDS.values())


async def test_transport_round_trip(fake: Fake) -> None:
    sink = Sink()
    t, table = await VacTransport.open(
        sink, NAMES, library=fake.library, name="vac-test", prefix="dsx"
    )
    assert table == {DEFS.name_crc(n): i for n, i in FAKE_IDS.items()}
    # sync mode: no library rx thread, our own reader
    assert fake.stat("had_callback") == 0 and fake.stat("rx_qlen") == 1024
    assert (fake.last_name(), fake.last_prefix()) == ("vac-test", "dsx")
    assert fake.library._mem_ready
    body = ping(7, client_index=0xDEAD)
    t.send(body)
    await eventually(lambda: len(sink.bodies) == 1)
    reply = codec_for(DEFS, "control_ping_reply").decode(sink.bodies[0])
    assert (reply.context, reply.retval, reply.vpe_pid) == (7, 0, 4242)
    # vac_write stamped its own index on a copy (native order); our bytes are untouched
    assert sink.bodies[0][10:14] == struct.pack("=I", FAKE_CLIENT_INDEX)
    assert body == ping(7, client_index=0xDEAD)
    assert t.is_open
    t.close()
    await t.wait_closed()
    assert sink.lost == [None]
    assert not t.is_open
    assert fake.stat("disconnects") == 1 and fake.idle
    t.send(ping(8))  # after close: dropped, never reaches the library
    assert fake.stat("writes") == 2  # the ping above and the one that woke the reader


@pytest.mark.parametrize("mode", ["sync", "callback"])
async def test_bodies_arrive_in_order_and_in_batches(fake: Fake, mode: str) -> None:
    sink = Sink()
    t, _ = await VacTransport.open(sink, NAMES, library=fake.library, mode=mode)
    assert fake.stat("had_callback") == (mode == "callback")
    n = 2000
    t.send_many(ping(i) for i in range(1, n + 1))
    await eventually(lambda: len(sink.bodies) == n)
    contexts = [int.from_bytes(b[2:6], "big") for b in sink.bodies]
    assert contexts == list(range(1, n + 1))
    assert sink.batches <= n and t.stats["read"] == n and t.stats["written"] == n
    assert fake.stat("outstanding") == 0  # every vac_read buffer went back with vac_free
    t.close()
    await t.wait_closed()


async def test_one_connection_per_library(fake: Fake) -> None:
    first, _ = await VacTransport.open(Sink(), NAMES, library=fake.library)
    with pytest.raises(VppConnectionError, match="one connection per process"):
        await VacTransport.open(Sink(), NAMES, library=fake.library, slot_timeout=0.05)
    assert fake.stat("connects") == 1
    first.close()
    await first.wait_closed()
    # the slot is free again: the next connection works
    second, _ = await VacTransport.open(Sink(), NAMES, library=fake.library)
    second.close()
    await second.wait_closed()
    assert fake.stat("connects") == 2


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (-1, "VAC_SVM_QUEUE_SUB_1"),
        (-2, "VAC_SVM_QUEUE_SUB_2"),
        (-3, "VAC_NOT_CONNECTED"),
        (-4, "VAC_SHM_NOT_READY"),
        (-5, "VAC_TIMEOUT"),
        (-99, "code -99"),
    ],
)
async def test_connect_error_codes(fake: Fake, code: int, name: str) -> None:
    fake.ctl.fake_vac_set_connect_result(code)
    with pytest.raises(VacError) as err:
        await VacTransport.open(Sink(), NAMES, library=fake.library)
    assert (err.value.code, err.value.code_name, err.value.call) == (code, name, "vac_connect")
    assert name in str(err.value) and "is VPP running?" in str(err.value)
    assert err.value.retriable
    assert not fake.library.slot.locked()


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (-1, "VAC_SVM_QUEUE_SUB_1"),
        (-2, "VAC_SVM_QUEUE_SUB_2"),
        (-3, "VAC_NOT_CONNECTED"),
        (-4, "VAC_SHM_NOT_READY"),
        (7, "code 7"),
    ],
)
async def test_read_error_codes_end_the_connection(fake: Fake, code: int, name: str) -> None:
    sink = Sink()
    t, _ = await VacTransport.open(sink, NAMES, library=fake.library)
    fake.ctl.fake_vac_set_read_result(code)
    await t.wait_closed()
    [err] = sink.lost
    assert isinstance(err, VacError)
    assert (err.code, err.code_name, err.call) == (code, name, "vac_read")
    assert fake.stat("disconnects") == 1


async def test_read_timeout_is_just_a_poll(fake: Fake) -> None:
    sink = Sink()
    t, _ = await VacTransport.open(sink, NAMES, library=fake.library)
    fake.ctl.fake_vac_set_read_result(-5)  # VAC_TIMEOUT, as keepalives also look
    t.send(ping(1))
    await eventually(lambda: len(sink.bodies) == 1)
    assert sink.lost == []
    t.close()
    await t.wait_closed()


@pytest.mark.parametrize(
    ("mode", "what"), [(1, "success with no message"), (2, "message of -7 bytes")]
)
async def test_misbehaving_read_does_not_crash(fake: Fake, mode: int, what: str) -> None:
    sink = Sink()
    t, _ = await VacTransport.open(sink, NAMES, library=fake.library)
    fake.ctl.fake_vac_set_bad_read(mode)
    t.send(ping(1))  # wakes the reader into the bad read
    await t.wait_closed()
    [err] = sink.lost
    assert isinstance(err, VppProtocolError) and what in str(err)
    assert fake.stat("outstanding") == 0  # the bogus buffer was still freed


async def test_write_error_ends_the_connection(fake: Fake) -> None:
    sink = Sink()
    t, _ = await VacTransport.open(sink, NAMES, library=fake.library)
    fake.ctl.fake_vac_set_write_result(-1)
    t.send(ping(1))
    await t.wait_closed()
    [err] = sink.lost
    assert isinstance(err, VacError) and err.call == "vac_write" and err.code == -1


def test_read_timeout_is_validated(fake: Fake) -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="read_timeout"):
            VacTransport(fake.library, Sink(), loop, read_timeout=0)
    finally:
        loop.close()


# -- the client over the fake ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "callback"])
async def test_client_calls_over_vac(fake: Fake, make_client: Any, mode: str) -> None:
    c = await make_client(name="dsync-vac", vac_mode=mode)
    assert c.connected and c.vpe_pid == 4242
    assert fake.last_name() == "dsync-vac"
    reply = await c.call("control_ping")
    assert reply.retval == 0
    replies = await c.call_many("control_ping", [None] * 500)
    assert len({r.context for r in replies}) == 500
    await c.close()
    await eventually(lambda: fake.idle)
    assert fake.stat("disconnects") == 1
    # goodbye is vac_disconnect's memclnt_delete: a sockclnt_delete would name a socket client
    assert fake.sent("sockclnt_delete") == 0


@pytest.mark.parametrize("mode", ["sync", "callback"])
async def test_client_events_over_vac(fake: Fake, make_client: Any, mode: str) -> None:
    c = await make_client(vac_mode=mode)
    seen: list[Any] = []
    c.subscribe("sw_interface_event", seen.append)
    await c.want("want_interface_events")
    await eventually(lambda: len(seen) == 1)
    assert (seen[0].sw_if_index, int(seen[0].flags), seen[0].deleted) == (1, 3, False)
    with pytest.raises(VppApiError) as err:
        await c.want("want_interface_events")  # enabled twice: INVALID_REGISTRATION
    assert err.value.retval == -31
    # a message id nobody knows is counted, not fatal
    fake.inject(struct.pack(">HI", 999, 0))
    await eventually(lambda: c.stats["unknown_msg_id"] == 1)
    assert (await c.call("control_ping")).retval == 0


async def test_client_reports_messages_the_library_lacks(fake: Fake) -> None:
    c = VppClient(
        transport="vac", vac_library=fake.path, probe_interval=None, require=["show_version"]
    )
    with pytest.raises(VppMessageError, match="show_version: not offered by VPP"):
        await c.connect()
    await eventually(lambda: fake.idle)
    await c.close()


async def test_client_connect_error(fake: Fake) -> None:
    fake.ctl.fake_vac_set_connect_result(-4)
    c = VppClient(transport="vac", vac_library=fake.path, probe_interval=None)
    with pytest.raises(VacError, match="VAC_SHM_NOT_READY"):
        await c.connect()
    await c.close()


async def test_client_finds_the_library_through_the_environment(
    fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_LIBRARY, fake.path)
    c = VppClient(transport="vac", probe_interval=None)
    await c.connect()
    assert (await c.call("control_ping")).retval == 0
    await c.close()


async def test_client_connect_timeout_undoes_the_late_connect(fake: Fake) -> None:
    fake.ctl.fake_vac_set_connect_delay(300)
    c = VppClient(transport="vac", vac_library=fake.path, probe_interval=None, connect_timeout=0.05)
    with pytest.raises(VppConnectionError, match=r"vac_connect took over 0\.05 s"):
        await c.connect()
    await c.close()
    # the connect finished in its thread after we gave up: it is disconnected again
    await eventually(lambda: fake.stat("connects") == 1 and fake.idle)
    assert fake.stat("disconnects") == 1


async def test_client_reconnects_after_a_read_error(fake: Fake, make_client: Any) -> None:
    faults = Faults()
    c = await make_client(on_fault=faults)
    fake.ctl.fake_vac_set_pid(5555)  # "VPP restarted" while we were away
    fake.ctl.fake_vac_set_read_result(-3)
    await eventually(lambda: "reconnected" in faults.kinds())
    assert faults.kinds()[0] == "disconnected"
    assert "VAC_NOT_CONNECTED" in faults.seen[0][1]["error"]
    assert faults.seen[-1][1]["vpp_restarted"] is True
    assert (await c.call("control_ping")).vpe_pid == 5555
    assert fake.stat("connects") == 2 and fake.stat("disconnects") == 1


@pytest.mark.parametrize("mode", ["sync", "callback"])
async def test_client_survives_write_errors(fake: Fake, make_client: Any, mode: str) -> None:
    faults = Faults()
    c = await make_client(on_fault=faults, vac_mode=mode)
    fake.ctl.fake_vac_set_write_result(-2)
    with pytest.raises(VppConnectionError, match="vac_write failed: VAC_SVM_QUEUE_SUB_2"):
        await c.call("control_ping")
    fake.ctl.fake_vac_set_write_result(0)
    await eventually(lambda: "reconnected" in faults.kinds())
    assert (await c.call("control_ping")).retval == 0


@pytest.mark.parametrize("mode", ["sync", "callback"])
async def test_hung_vpp_found_by_the_probe(fake: Fake, make_client: Any, mode: str) -> None:
    faults = Faults()
    c = await make_client(
        on_fault=faults,
        probe_interval=0.05,
        probe_timeout=0.05,
        connect_timeout=0.5,
        vac_mode=mode,
    )
    fake.ctl.fake_vac_set_hang(1)
    await eventually(lambda: "unresponsive" in faults.kinds())
    fake.ctl.fake_vac_set_hang(0)
    # the reader, not woken by a ping any more, leaves vac_read after its 1 s timeout
    await eventually(lambda: "reconnected" in faults.kinds())
    assert (await c.call("control_ping")).retval == 0


# -- VPP gone: nothing blocks the loop, every library call is bounded -------------------


async def test_missing_region_fails_fast_without_calling_the_library(
    fake: Fake, shm_dir: Path
) -> None:
    # the real vac_connect waits about 100 s for a region that does not exist
    fake.ctl.fake_vac_set_connect_delay(60_000)
    c = VppClient(transport="vac", vac_library=fake.path, vac_prefix="nope", probe_interval=None)
    with pytest.raises(VacError, match="no VPP API region") as err:
        await c.connect()
    assert err.value.code_name == "VAC_SHM_NOT_READY"
    assert str(shm_dir / "nope-vpe-api") in str(err.value)
    assert fake.stat("connects") == 0 and not fake.library.slot.locked()
    await c.close()


@pytest.mark.parametrize("mode", ["sync", "callback"])
@pytest.mark.parametrize(
    "queue",
    [
        pytest.param(1024, id="vpp-queue"),  # VPP's own input queue length
        pytest.param(64, id="queue-full-of-others"),  # room taken by other clients
    ],
)
async def test_vpp_killed_under_load_never_blocks_the_loop(
    fake: Fake, make_client: Any, queue: int, mode: str
) -> None:
    faults = Faults()
    # the valve only bounds this test on a client that blocks: a real vac_write waits for
    # room in a dead VPP's queue for good
    fake.ctl.fake_vac_set_queue(queue, 5000)
    c = await make_client(
        on_fault=faults,
        probe_interval=0.02,
        probe_timeout=0.05,
        busy_timeout=0.3,
        connect_timeout=0.5,
        vac_mode=mode,
    )
    assert c._window < 1024  # our own requests leave room in VPP's queue
    fake.ctl.fake_vac_set_dead(1)  # VPP is killed with a full window on its way
    burst = asyncio.ensure_future(c.call_many("control_ping", [None] * 2000, timeout=60))
    with pytest.raises(VppConnectionError, match="health probe failed"):
        await asyncio.wait_for(burst, 30)
    # the loop's thread never waited inside the library (the writer thread may have)
    assert threading.get_native_id() not in fake.blocked_threads()
    if queue > c._window:
        # our window plus the wake ping and the goodbye fit: nothing waited for room
        assert fake.stat("queued") <= c._window + 2 and fake.blocked_threads() == []
    else:
        assert fake.stat("queued") == queue and fake.blocked_threads() != []
    with pytest.raises(VppConnectionError):
        await c.call("control_ping")  # no VPP: a clean error, the loop runs
    fake.ctl.fake_vac_set_dead(0)  # VPP is back
    await eventually(lambda: "reconnected" in faults.kinds(), 30)
    assert (await c.call("control_ping")).retval == 0
    assert fake.stat("valve_expired") == 0


async def test_a_timed_out_request_keeps_its_slot_until_vpp_answers(
    fake: Fake, make_client: Any
) -> None:
    c = await make_client()
    fake.ctl.fake_vac_set_hang(1)  # VPP slow: the request waits in its input queue
    with pytest.raises(VppTimeoutError):
        await c.call("control_ping", timeout=0.05)
    # still in VPP's queue, so it still counts against the window that keeps us from
    # filling that queue (a socket client frees the slot at once)
    assert c._in_flight == 1
    [ctx] = c._held
    fake.ctl.fake_vac_set_hang(0)
    fake.inject(
        codec_for(DEFS, "control_ping_reply").encode(
            FAKE_IDS["control_ping_reply"], {"context": ctx, "retval": 0, "vpe_pid": 4242}
        )
    )  # VPP's late answer
    await eventually(lambda: c._in_flight == 0)
    assert c.stats["late_replies"] == 1 and not c._held
    assert (await c.call("control_ping")).retval == 0
