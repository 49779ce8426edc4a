"""The client's public surface: its config object, typed fault events, the error tree and
the modules each transport opens from."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from datasync.backoff import Backoff
from datasync.errors import ConfigError, DatasyncError
from datasync.vpp import client as client_mod
from datasync.vpp import defs, errors, retvals, shm, vac
from datasync.vpp import transport as old_transport
from datasync.vpp.client import VppClient
from datasync.vpp.config import VppClientConfig, VppConfigError
from datasync.vpp.errors import VppConnectionError
from datasync.vpp.faults import (
    Disconnected,
    Reconnected,
    Unresponsive,
    VppFault,
    VppRestarted,
    fault_from_kind,
)
from datasync.vpp.sim import Simulator

from .helpers import Faults, eventually
from .test_client import FakeVpp


def test_config_errors_name_the_field() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"timeout": 0}, "timeout"),
        ({"connect_timeout": float("nan")}, "connect_timeout"),
        ({"probe_interval": -1.0}, "probe_interval"),
        ({"backoff_initial": 1.0, "backoff_max": 0.5}, "backoff_max"),
        ({"transport": "tcp"}, "transport"),
        ({"vac_mode": "async"}, "vac_mode"),
        ({"event_queue_size": 0}, "event_queue_size"),
    ]
    for kwargs, name in cases:
        with pytest.raises(VppConfigError, match=f"VppClientConfig.{name} ") as info:
            VppClientConfig(**kwargs)
        assert info.value.field == name
        # a config error, and still the ValueError the client raised before it existed
        assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)
        with pytest.raises(VppConfigError, match=name):
            VppClient("/nonexistent", **kwargs)


def test_keyword_arguments_override_the_config() -> None:
    base = VppClientConfig(timeout=7.0, require=["show_version"])  # type: ignore[arg-type]
    assert base.require == ("show_version",)
    c = VppClient("/nonexistent", config=base, probe_interval=None)
    assert c.config == VppClientConfig(timeout=7.0, require=("show_version",), probe_interval=None)
    assert (c.timeout, c.probe_interval, c.require) == (7.0, None, ("show_version",))
    # the busy timeout defaults to the call timeout; the reconnect waits one Backoff
    assert c.busy_timeout == 7.0
    assert c.backoff == Backoff(0.05, 2.0, 2.0, 0.5)
    with pytest.raises(TypeError, match="'timeuot'"):
        VppClient("/nonexistent", timeuot=1.0)


def test_every_vpp_error_is_one_tree_under_the_package_root() -> None:
    classes = [getattr(errors, n) for n in errors.__all__ if isinstance(getattr(errors, n), type)]
    assert len(classes) >= 17
    for cls in classes:
        assert issubclass(cls, errors.VppError) and issubclass(cls, DatasyncError), cls
    # the older import paths name the same classes
    assert client_mod.VppTimeoutError is errors.VppTimeoutError
    assert client_mod.VppMessageError is errors.VppMessageError
    assert old_transport.VppConnectionError is errors.VppConnectionError
    assert old_transport.VppProtocolError is errors.VppProtocolError
    assert retvals.VppApiError is errors.VppApiError
    assert defs.CodecError is errors.CodecError
    assert shm.ShmClosedError is errors.ShmClosedError
    assert vac.VacError is errors.VacError
    assert retvals.retval_by_name("INVALID_PREFIX_LENGTH") == retvals.INVALID_PREFIX_LENGTH
    with pytest.raises(KeyError, match="'INVALID_PREFIX_LENGHT' is not a VPP retval name"):
        retvals.retval_by_name("INVALID_PREFIX_LENGHT")


def test_a_fault_kind_that_does_not_exist_is_an_error_not_a_no_op() -> None:
    assert fault_from_kind("vpp_restarted", {"old_vpe_pid": 1, "vpe_pid": 2}) == VppRestarted(1, 2)
    with pytest.raises(ValueError, match="unknown VPP fault kind 'vpp_restart'"):
        fault_from_kind("vpp_restart", {"old_vpe_pid": 1, "vpe_pid": 2})
    with pytest.raises(ValueError, match="'reconnected': bad detail"):
        fault_from_kind("reconnected", {"attempt": 1})
    # the older (kind, detail) pair round-trips through every event
    for event in (
        Disconnected("closed by VPP"),
        Unresponsive(0.25, misses=2),
        Unresponsive(5.0, silent_for=5.1, outstanding=3, events_only=True),
        VppRestarted(10, 11),
        Reconnected(2, 11, True),
    ):
        assert fault_from_kind(event.kind, event.detail()) == event


async def test_listeners_get_typed_events_the_older_callback_kinds(
    sim: Simulator, make_client: Callable[..., Awaitable[VppClient]]
) -> None:
    old = Faults()
    c = await make_client(on_fault=old)
    events: list[VppFault] = []
    c.add_fault_listener(events.append)
    received: asyncio.Queue[VppFault] = asyncio.Queue()

    async def slow(event: VppFault) -> None:  # a coroutine listener runs in a task
        await received.put(event)

    c.add_fault_listener(slow)
    c.add_fault_listener(lambda e: 1 / 0)  # a broken listener stops no one
    old_pid = sim.state.vpe_pid
    sim.restart()
    await eventually(lambda: any(isinstance(e, Reconnected) for e in events))
    assert [type(e) for e in events] == [Disconnected, VppRestarted, Reconnected]
    assert events[1] == VppRestarted(old_pid, sim.state.vpe_pid)
    assert isinstance(events[2], Reconnected) and events[2].vpp_restarted
    assert old.seen == [(e.kind, e.detail()) for e in events]
    async with asyncio.timeout(5):
        assert [await received.get() for _ in events] == events
    c.remove_fault_listener(events.append)
    c.remove_fault_listener(events.append)  # twice: nothing to remove is fine


async def test_the_transport_declares_what_the_client_asked_it_by_name(
    sim: Simulator, make_client: Callable[..., Awaitable[VppClient]]
) -> None:
    c = await make_client()
    t = c._transport
    assert t is not None and t.kind == "socket"
    assert (t.max_body, t.max_in_flight, t.hold_abandoned, t.says_goodbye) == (
        None,
        None,
        False,
        False,
    )
    s = await make_client(transport="shm", shm_size=1 << 16)
    t = s._transport
    assert t is not None and t.kind == "shm" and t.max_body is not None
    assert t.max_body < 1 << 16 and not t.says_goodbye
    assert (await s.call("show_version")).program == "vpe"


async def test_socket_mode_is_the_configured_one_whatever_the_umask(sock_path: str) -> None:
    old = os.umask(0o077)
    try:
        sim = Simulator()
        await sim.start(sock_path, mode=0o660)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o660
    finally:
        await sim.stop()
    for mode in (0o1777, -1, "0600", True):
        with pytest.raises(ValueError, match="mode must be permission bits"):
            await Simulator().start(sock_path, mode=mode)  # type: ignore[arg-type]
    assert not os.path.exists(sock_path)  # noqa: ASYNC240


async def test_a_connection_lost_right_after_the_handshake_fails_the_connect(
    sock_path: str,
) -> None:
    async def script(fake: FakeVpp, rw: Any) -> None:
        r, w = rw
        await fake.read(r)
        table = [{"index": i, "name": n} for n, i in fake.sim.message_table]
        reply = {"context": 124, "response": 0, "index": 0x80000001, "count": len(table)}
        reply["message_table"] = table
        w.write(fake.frame(fake.sim.encode("sockclnt_create_reply", reply)))
        await w.drain()
        w.transport.abort()  # gone before the client could send anything

    async with FakeVpp(sock_path, script):
        # a connect that waited for its control_ping would take the whole connect_timeout
        c = VppClient(sock_path, probe_interval=None, reconnect=False, connect_timeout=60)
        with pytest.raises(VppConnectionError, match=r"VPP closed the connection|lost"):
            await c.connect()
        assert not c.connected
        await c.close()
