"""Requests per second against the simulator: our client vs vpp-papi 2.4.2, side by side.

The simulator runs in a subprocess (``datasync vppsim``) so that client and server use
both cores. Every benchmark round sends ``N`` requests; ``extra_info["req_per_s"]`` holds
the rate. Ids: ``[ours-pipelined]`` (call_many, window 1024), ``[ours-tasks-256]`` (256
tasks calling in a loop), ``[ours-sequential]`` (one call at a time), ``[papi-sync]``,
``[papi-async-256]`` (vpp_papi_async with 256 in flight; no event subscription, see the
README's note on its reader bug); ``-shm`` ids run over the project's shared-memory ring
(negotiated with ``sock_init_shm``) instead of the socket. ``-vac-fake`` ids run over
the vac transport against the fake libvppapiclient of ``tests/vpp/fake_vac.c`` (an
in-process loopback that answers at once: our side's cost alone, no VPP), with
``raw-vac-fake`` the bare ``vac_write`` + ``vac_read`` loop it is bounded by, ``-tt``
with the real library's timeout-thread handshake in each ``vac_read``, and ``-cb`` in
the callback mode (``vac_mode="callback"``: the library's rx thread delivers).

    .venv/bin/python -m pytest benches/bench_client.py --benchmark-columns=min,median,rounds
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cffi
import pytest
import uvloop
from tests.paths import VPP_API_REFERENCE, vpp_api_files
from tests.vpp.simproc import simulator_process

from datasync.vpp.client import VppClient
from datasync.vpp.vac import VacLibrary, VacTransport, ffi

SHARED_API = str(VPP_API_REFERENCE)
# --benchmark-disable (CI) runs each body once only to prove it works: a tenth of the size
_SCALE = 10 if "--benchmark-disable" in sys.argv else 1
N_OURS = 20_000 // _SCALE
N_PAPI_SYNC = 2_000 // _SCALE
N_PAPI_ASYNC = 10_000 // _SCALE
N_IFACES = 10_000 // _SCALE


def _api_files() -> list[str]:
    return vpp_api_files()


@contextlib.contextmanager
def _sim_process() -> Iterator[str]:
    """A fresh ``datasync vppsim`` process; its socket path."""
    with simulator_process() as sim:
        yield sim.path


@pytest.fixture(scope="module")
def sim_path() -> Iterator[str]:
    with _sim_process() as path:
        yield path


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = uvloop.new_event_loop()
    yield lp
    lp.close()


def _rate(benchmark: Any, n: int) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info["req_per_s"] = round(n / stats.stats.min)


def _ours(
    loop: asyncio.AbstractEventLoop, path: str, mode: str, transport: str = "socket"
) -> Callable[[], None]:
    client = VppClient(path, probe_interval=None, transport=transport)
    loop.run_until_complete(client.connect())

    async def pipelined() -> None:
        await client.call_many("control_ping", [None] * N_OURS)

    async def tasks() -> None:
        per = N_OURS // 256

        async def worker() -> None:
            for _ in range(per):
                await client.call("control_ping")

        await asyncio.gather(*(worker() for _ in range(256)))

    async def sequential() -> None:
        for _ in range(N_OURS // 10):
            await client.call("control_ping")

    body = {"pipelined": pipelined, "tasks": tasks, "sequential": sequential}[mode]
    return lambda: loop.run_until_complete(body())


@pytest.mark.parametrize(
    ("mode", "transport"),
    [
        ("pipelined", "socket"),
        ("pipelined", "shm"),
        ("tasks", "socket"),
        ("tasks", "shm"),
        ("sequential", "socket"),
        ("sequential", "shm"),
    ],
)
def test_control_ping_ours(
    benchmark: Any, sim_path: str, loop: asyncio.AbstractEventLoop, mode: str, transport: str
) -> None:
    benchmark.group = "control_ping rate"
    suffix = "" if transport == "socket" else "-shm"
    benchmark.name = f"test_control_ping[ours-{mode}{suffix}]"
    run = _ours(loop, sim_path, mode, transport)
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    _rate(benchmark, N_OURS // 10 if mode == "sequential" else (N_OURS // 256) * 256)


@pytest.mark.skipif(not _api_files(), reason="reference .api.json files missing")
def test_control_ping_papi_sync(benchmark: Any, sim_path: str) -> None:
    from vpp_papi import VPPApiClient

    benchmark.group = "control_ping rate"
    benchmark.name = "test_control_ping[papi-sync]"
    vpp = VPPApiClient(apifiles=_api_files(), server_address=sim_path)
    vpp.connect("bench-papi")
    try:

        def run() -> None:
            for _ in range(N_PAPI_SYNC):
                vpp.api.control_ping()

        benchmark.pedantic(run, rounds=3, iterations=1)
        _rate(benchmark, N_PAPI_SYNC)
    finally:
        vpp.disconnect()


def test_control_ping_papi_async(
    benchmark: Any, sim_path: str, loop: asyncio.AbstractEventLoop
) -> None:
    from vpp_papi.vpp_papi_async import VPPApiClient as AsyncClient

    benchmark.group = "control_ping rate"
    benchmark.name = "test_control_ping[papi-async-256]"
    vpp = AsyncClient(server_address=sim_path)

    async def connect() -> None:
        # an event queue nobody reads: no want_* registration, so it stays empty
        assert await vpp.connect("bench-papi-async", asyncio.Queue()) == 0

    loop.run_until_complete(connect())

    async def burst() -> None:
        sem = asyncio.Semaphore(256)

        async def one() -> None:
            async with sem:
                await vpp.api.control_ping()

        await asyncio.gather(*(one() for _ in range(N_PAPI_ASYNC)))

    try:
        benchmark.pedantic(lambda: loop.run_until_complete(burst()), rounds=3, iterations=1)
        _rate(benchmark, N_PAPI_ASYNC)
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(vpp.disconnect())


# -- vac, against the fake libvppapiclient ------------------------------------------------

FAKE_VAC_SRC = Path(__file__).parent.parent / "tests" / "vpp" / "fake_vac.c"


@pytest.fixture(scope="module")
def fake_vac() -> Iterator[Any]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler: cannot build the fake libvppapiclient.so")
    tmp = tempfile.mkdtemp(prefix="dsbench-vac-", dir="/tmp")
    out = os.path.join(tmp, "libvppapiclient.so")
    subprocess.run(
        [cc, "-shared", "-fPIC", "-pthread", "-O2", "-o", out, str(FAKE_VAC_SRC)],
        check=True,
        capture_output=True,
    )
    ctl = cffi.FFI()
    ctl.cdef("void fake_vac_reset(void); void fake_vac_set_timeout_thread(int on);")
    lib = ctl.dlopen(out)
    saved, VacTransport.shm_dir = VacTransport.shm_dir, None  # the fake needs no region
    try:
        yield out, lib
    finally:
        VacTransport.shm_dir = saved
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize(
    ("mode", "variant"),
    [(m, v) for m in ("sequential", "pipelined") for v in ("sync", "tt", "cb")]
    + [("raw", "sync"), ("raw", "tt")],  # the callback mode has no read loop of ours
)
def test_control_ping_vac_fake(
    benchmark: Any, fake_vac: Any, loop: asyncio.AbstractEventLoop, mode: str, variant: str
) -> None:
    path, ctl = fake_vac
    ctl.fake_vac_reset()
    ctl.fake_vac_set_timeout_thread(int(variant == "tt"))
    benchmark.group = "control_ping rate"
    suffix = "-vac-fake" + ("" if variant == "sync" else f"-{variant}")
    benchmark.name = f"test_control_ping[{'raw' if mode == 'raw' else 'ours-' + mode}{suffix}]"
    n = N_OURS // 10 if mode != "pipelined" else N_OURS
    if mode == "raw":
        lib = VacLibrary.load(path).lib
        assert lib.vac_connect(b"bench", ffi.NULL, ffi.NULL, 1024) == 0
        pbuf, plen = ffi.new("char **"), ffi.new("int *")
        body = struct.pack(">HII", 23, 0, 1)  # control_ping, the fake's id

        def raw() -> None:
            for _ in range(n):
                assert lib.vac_write(body, len(body)) == 0
                assert lib.vac_read(pbuf, plen, 1) == 0
                lib.vac_free(pbuf[0])

        try:
            benchmark.pedantic(raw, rounds=3, iterations=1, warmup_rounds=1)
        finally:
            lib.vac_disconnect()
        _rate(benchmark, n)
        return
    client = VppClient(
        transport="vac",
        vac_library=path,
        probe_interval=None,
        vac_mode="callback" if variant == "cb" else "sync",
    )
    loop.run_until_complete(client.connect())

    async def sequential() -> None:
        for _ in range(n):
            await client.call("control_ping")

    async def pipelined() -> None:
        await client.call_many("control_ping", [None] * n)

    body_fn = sequential if mode == "sequential" else pipelined
    try:
        benchmark.pedantic(
            lambda: loop.run_until_complete(body_fn()), rounds=3, iterations=1, warmup_rounds=1
        )
    finally:
        loop.run_until_complete(client.close())  # returns once the library is free
    _rate(benchmark, n)


# -- dump of 10k interfaces ------------------------------------------------------------


@pytest.fixture(scope="module")
def big_sim() -> Iterator[str]:
    with _sim_process() as path:
        lp = uvloop.new_event_loop()
        client = VppClient(path, probe_interval=None)

        async def fill() -> None:
            await client.connect()
            await client.call_many("create_loopback", [None] * N_IFACES)
            await client.close()

        lp.run_until_complete(fill())
        lp.close()
        yield path


@pytest.mark.parametrize("transport", ["socket", "shm"])
def test_dump_10k_ours(
    benchmark: Any, big_sim: str, loop: asyncio.AbstractEventLoop, transport: str
) -> None:
    benchmark.group = "sw_interface_dump 10k"
    benchmark.name = "test_dump_10k[ours]" if transport == "socket" else "test_dump_10k[ours-shm]"
    client = VppClient(big_sim, probe_interval=None, transport=transport)
    loop.run_until_complete(client.connect())

    def run() -> None:
        details = loop.run_until_complete(client.dump("sw_interface_dump"))
        assert len(details) == N_IFACES + 1

    benchmark.pedantic(run, rounds=3, iterations=1)
    tracemalloc.start()
    run()
    benchmark.extra_info["peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
    tracemalloc.stop()
    loop.run_until_complete(client.close())


@pytest.mark.skipif(not _api_files(), reason="reference .api.json files missing")
def test_dump_10k_papi(benchmark: Any, big_sim: str) -> None:
    from vpp_papi import VPPApiClient

    benchmark.group = "sw_interface_dump 10k"
    benchmark.name = "test_dump_10k[papi-sync]"
    vpp = VPPApiClient(apifiles=_api_files(), server_address=big_sim)
    vpp.connect("bench-papi-dump")
    try:

        def run() -> None:
            assert len(vpp.api.sw_interface_dump()) == N_IFACES + 1

        benchmark.pedantic(run, rounds=2, iterations=1)
        tracemalloc.start()
        run()
        benchmark.extra_info["peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
        tracemalloc.stop()
    finally:
        vpp.disconnect()
