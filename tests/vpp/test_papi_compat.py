"""Unmodified vpp-papi 2.4.2 against the simulator (a real VPP API server, as far as papi knows)."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from vpp_papi import VPPApiClient

from .conftest import ThreadedSim, shared_api_files

pytestmark = pytest.mark.skipif(not shared_api_files(), reason="reference .api.json files missing")


@pytest.fixture
def papi(threaded_sim: ThreadedSim) -> Iterator[VPPApiClient]:
    vpp = VPPApiClient(apifiles=shared_api_files(), server_address=threaded_sim.path)
    vpp.connect("papi-test")
    yield vpp
    vpp.disconnect()


def test_socket_transport_is_papis_default() -> None:
    params = inspect.signature(VPPApiClient).parameters
    assert params["use_socket"].default is True


def test_calls_and_dumps(papi: VPPApiClient, threaded_sim: ThreadedSim) -> None:
    assert papi.api.show_version().program == "vpe"
    ping = papi.api.control_ping()
    assert ping.vpe_pid == threaded_sim.run(lambda: threaded_sim.sim.state.vpe_pid)  # type: ignore[union-attr]
    loop = papi.api.create_loopback()
    assert (loop.retval, loop.sw_if_index) == (0, 1)
    assert papi.api.sw_interface_set_flags(sw_if_index=1, flags=1).retval == 0
    details = papi.api.sw_interface_dump()
    assert [(d.sw_if_index, d.interface_name, int(d.flags)) for d in details] == [
        (0, "local0", 0),
        (1, "loop0", 3),
    ]
    assert papi.api.delete_loopback(sw_if_index=77).retval == -2
    assert (
        papi.api.sw_interface_add_del_address(
            sw_if_index=1, is_add=True, prefix="10.1.1.1/24"
        ).retval
        == 0
    )
    addrs = papi.api.ip_address_dump(sw_if_index=1, is_ipv6=False)
    assert [str(a.prefix) for a in addrs] == ["10.1.1.1/24"]


def test_bridge_domain_and_routes(papi: VPPApiClient) -> None:
    loop = papi.api.create_loopback().sw_if_index
    assert papi.api.bridge_domain_add_del_v2(bd_id=5, flood=True, learn=True).retval == 0
    assert papi.api.bridge_domain_add_del_v2(bd_id=5).retval == -119
    assert (
        papi.api.sw_interface_set_l2_bridge(rx_sw_if_index=loop, bd_id=5, port_type=1).retval == 0
    )
    bds = papi.api.bridge_domain_dump()
    assert [(b.bd_id, b.bvi_sw_if_index, b.n_sw_ifs) for b in bds] == [(5, loop, 1)]
    path = {
        "sw_if_index": loop,
        "nh": {"address": {"ip4": "10.0.0.2"}},
        "label_stack": [{}] * 16,  # papi cannot leave out fixed arrays of non-u8 types
    }
    r = papi.api.ip_route_add_del(
        is_add=True, route={"table_id": 0, "prefix": "20.0.0.0/8", "n_paths": 1, "paths": [path]}
    )
    assert r.retval == 0
    routes = {str(d.route.prefix): d.route for d in papi.api.ip_route_dump(table={"table_id": 0})}
    assert len(routes) == 6  # the five special entries and ours
    assert str(routes["20.0.0.0/8"].paths[0].nh.address.ip4) == "10.0.0.2"


def test_interface_events_reach_papi(papi: VPPApiClient) -> None:
    got: list[Any] = []
    arrived = threading.Event()

    def on_event(name: str, msg: Any) -> None:
        if name == "sw_interface_event":
            got.append(msg)
            if len(got) >= 3:
                arrived.set()

    papi.register_event_callback(on_event)
    assert papi.api.want_interface_events(enable_disable=1, pid=os.getpid()).retval == 0
    assert papi.api.want_interface_events(enable_disable=1, pid=os.getpid()).retval == -31
    idx = papi.api.create_loopback().sw_if_index
    time.sleep(0.05)
    papi.api.sw_interface_set_flags(sw_if_index=idx, flags=1)
    time.sleep(0.05)
    papi.api.delete_loopback(sw_if_index=idx)
    assert arrived.wait(5)
    assert [(e.sw_if_index, int(e.flags), e.deleted, e.pid) for e in got] == [
        (idx, 0, False, os.getpid()),
        (idx, 3, False, os.getpid()),
        (idx, 0, True, os.getpid()),
    ]


def test_bootstrap_through_get_api_json(threaded_sim: ThreadedSim) -> None:
    vpp = VPPApiClient(server_address=threaded_sim.path, bootstrapapi=True)
    vpp.connect("papi-bootstrap")
    try:
        assert vpp.api.show_version().retval == 0
        assert vpp.api.create_loopback().sw_if_index == 1
        assert [d.interface_name for d in vpp.api.sw_interface_dump()] == ["local0", "loop0"]
    finally:
        vpp.disconnect()


def test_papi_sees_restart(threaded_sim: ThreadedSim) -> None:
    vpp = VPPApiClient(apifiles=shared_api_files(), server_address=threaded_sim.path)
    vpp.connect("papi-restart")
    try:
        old = vpp.api.control_ping().vpe_pid
        vpp.api.create_loopback()
        threaded_sim.run(lambda: threaded_sim.sim.restart())  # type: ignore[union-attr]
        with pytest.raises((OSError, RuntimeError)):
            vpp.api.control_ping()
    finally:
        vpp.disconnect()
    vpp = VPPApiClient(apifiles=shared_api_files(), server_address=threaded_sim.path)
    vpp.connect("papi-restart-2")
    try:
        assert vpp.api.control_ping().vpe_pid != old
        assert [d.interface_name for d in vpp.api.sw_interface_dump()] == ["local0"]
    finally:
        vpp.disconnect()


def test_vppsim_command_serves_papi(sock_path: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "datasync.agent.cli", "vppsim", "--socket", sock_path],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "listening on" in line and sock_path in line
        vpp = VPPApiClient(apifiles=shared_api_files(), server_address=sock_path)
        vpp.connect("papi-cli")
        try:
            assert vpp.api.create_loopback().retval == 0
            assert len(vpp.api.sw_interface_dump()) == 2
        finally:
            vpp.disconnect()
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)
    assert rc == 0
    assert not os.path.exists(sock_path)
