"""Full resync of the VPP plugins into an empty simulator, and the resync after it that
must write nothing, side by side with a naive agent on unmodified vpp-papi.

Scale: 10k loopbacks (one address each, admin up), 1k bridge domains of 8 members, 10k
routes, from the embedded store. The baseline is what a competent user would write with
vpp-papi's sync client: dump, diff, one call per operation. Both run against a fresh
``datasync vppsim`` process per round. ``extra_info`` carries the peak RSS of this
process (the agent runs in it; the simulator does not).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from tests.paths import vpp_api_files
from tests.vpp.simproc import simulator_process

from datasync.agent.wiring import follow_vpp_faults
from datasync.plugins import KeyState, VppPlugins
from datasync.plugins.models import BD_PREFIX, IF_PREFIX, ROUTE_PREFIX
from datasync.resync import Orchestrator, ResyncConfig
from datasync.transport.local import LocalStore
from datasync.vpp.client import VppClient

_SCALE = 10 if "--benchmark-disable" in sys.argv else 1
#: DATASYNC_BENCH_SIZE=10 runs 100k interfaces, 10k bridge domains, 100k routes (linearity)
_SIZE = int(os.environ.get("DATASYNC_BENCH_SIZE", "1"))
N_IF = 10_000 * _SIZE // _SCALE
N_BD = 1_000 * _SIZE // _SCALE
N_RT = 10_000 * _SIZE // _SCALE
LABEL = "bench"


@contextlib.contextmanager
def _sim_process() -> Iterator[str]:
    """A fresh ``datasync vppsim`` process; its socket path."""
    with simulator_process() as sim:
        yield sim.path


def _addr(i: int) -> str:
    return f"{ipaddress.IPv4Address(0x0A000000 + (i << 8)) + 1}/24"


def _desired() -> dict[str, bytes]:
    ifp, bdp = IF_PREFIX.format(label=LABEL), BD_PREFIX.format(label=LABEL)
    rtp = ROUTE_PREFIX.format(label=LABEL)
    kvs: dict[str, bytes] = {}
    for i in range(N_IF):
        doc = {"name": f"loop{i}", "type": "SOFTWARE_LOOPBACK", "enabled": True,
               "ipAddresses": [_addr(i)]}  # fmt: skip
        kvs[f"{ifp}loop{i}"] = json.dumps(doc).encode()
    for b in range(N_BD):
        members = [{"name": f"loop{(b * 8 + j) % N_IF}"} for j in range(8)]
        doc = {
            "name": f"bd{b}",
            "flood": True,
            "forward": True,
            "learn": True,
            "interfaces": members,
        }
        kvs[f"{bdp}bd{b}"] = json.dumps(doc).encode()
    for r in range(N_RT):
        dst = ipaddress.IPv4Network((0x14000000 + (r << 8), 24))
        gw = str(ipaddress.IPv4Address(0x0A000000 + ((r % N_IF) << 8)) + 2)
        doc = {"dstNetwork": str(dst), "nextHopAddr": gw, "outgoingInterface": f"loop{r % N_IF}"}
        key = f"{rtp}if/loop{r % N_IF}/vrf/0/dst/{dst.network_address}/24/gw/{gw}"
        kvs[key] = json.dumps(doc).encode()
    return kvs


@pytest.fixture(scope="module")
def store_path() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="dsbench-store-"))
    store = LocalStore(tmp / "store.db")
    store.txn_sync(_desired())
    uvloop.run(store.close())
    yield tmp / "store.db"
    shutil.rmtree(tmp, ignore_errors=True)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _agent_resync(store_path: Path, sim_path: str, again: bool) -> float:
    """Run the agent until in sync; with ``again``, time a second resync instead."""
    store = LocalStore(store_path)
    orch = Orchestrator([store], ResyncConfig(resync_timeout=600, change_timeout=600))
    client = VppClient(sim_path, probe_interval=None, timeout=60)
    plugins = VppPlugins(client, LABEL)
    client.add_fault_listener(follow_vpp_faults(orch, plugins))
    loop = asyncio.get_running_loop()
    try:
        await client.connect()
        plugins.add_to(orch)
        t0 = loop.time()
        await orch.start()
        await orch.wait_in_sync(600)
        took = loop.time() - t0
        bad = [s for s in plugins.states if s.state is not KeyState.CONFIGURED]
        assert not bad, bad[:3]
        if again:
            rounds = orch.status().rounds
            t0 = loop.time()
            orch.request_resync("bench: again")
            while orch.status().rounds == rounds or not orch.status().in_sync:
                await asyncio.sleep(0.001)
            took = loop.time() - t0
        return took
    finally:
        await orch.stop()
        await plugins.close()
        await client.close()
        await store.close()


@pytest.mark.parametrize("phase", ["full", "second"])
def test_plugins_resync_ours(benchmark: Any, store_path: Path, phase: str) -> None:
    benchmark.group = f"plugins resync ({N_IF} if, {N_BD} bd, {N_RT} routes)"
    benchmark.name = f"test_resync[ours-{phase}]"
    times: list[float] = []

    def run() -> None:
        with _sim_process() as path:
            times.append(uvloop.run(_agent_resync(store_path, path, phase == "second")))

    benchmark.pedantic(run, rounds=3 if _SCALE == 1 else 1, iterations=1)
    benchmark.extra_info["agent_seconds_min"] = round(min(times), 3)
    benchmark.extra_info["peak_rss_mb"] = round(_peak_rss_mb())


def _naive_agent(path: str, kvs: dict[str, bytes]) -> None:
    """A naive vpp-papi agent: dump, diff, one sync call per operation."""
    from vpp_papi import VPPApiClient

    vpp = VPPApiClient(apifiles=vpp_api_files(), server_address=path)
    vpp.connect("naive")
    try:
        api = vpp.api
        ifs = {d.tag: d.sw_if_index for d in api.sw_interface_dump() if d.tag}
        bds = {d.bd_tag: d for d in api.bridge_domain_dump(bd_id=0xFFFFFFFF) if d.bd_tag}
        api.ip_route_dump(table={"table_id": 0, "is_ip6": False})
        docs = {k: json.loads(v) for k, v in kvs.items()}
        for key, doc in docs.items():
            if "/interfaces/" not in key:
                continue
            name = doc["name"]
            if name not in ifs:
                idx = api.create_loopback().sw_if_index
                api.sw_interface_tag_add_del(is_add=True, sw_if_index=idx, tag=name)
                ifs[name] = idx
                for a in doc["ipAddresses"]:
                    api.sw_interface_add_del_address(sw_if_index=idx, is_add=True, prefix=a)
                api.sw_interface_set_flags(sw_if_index=idx, flags=1)
        for key, doc in docs.items():
            if "/bridge-domain/" not in key or doc["name"] in bds:
                continue
            bd_id = api.bridge_domain_add_del_v2(
                is_add=True, bd_id=0xFFFFFFFF, bd_tag=doc["name"], flood=True, forward=True,
                learn=True,
            ).bd_id  # fmt: skip
            for m in doc["interfaces"]:
                api.sw_interface_set_l2_bridge(
                    rx_sw_if_index=ifs[m["name"]], bd_id=bd_id, enable=True
                )
        for key, doc in docs.items():
            if "/route/" not in key:
                continue
            gw = ipaddress.IPv4Address(doc["nextHopAddr"])
            nh = {"address": {"ip4": gw}, "via_label": 0, "obj_id": 0, "classify_table_index": 0}
            label = {"is_uniform": 0, "label": 0, "ttl": 0, "exp": 0}
            path_ = {"sw_if_index": ifs[doc["outgoingInterface"]], "table_id": 0, "rpf_id": 0,
                     "weight": 1, "preference": 0, "type": 0, "flags": 0, "proto": 0, "nh": nh,
                     "n_labels": 0, "label_stack": [label] * 16}  # fmt: skip
            route = {"table_id": 0, "stats_index": 0, "prefix": doc["dstNetwork"], "n_paths": 1,
                     "paths": [path_]}  # fmt: skip
            api.ip_route_add_del(is_add=True, is_multipath=True, route=route)
    finally:
        vpp.disconnect()


def test_plugins_resync_papi_naive(benchmark: Any, store_path: Path) -> None:
    benchmark.group = f"plugins resync ({N_IF} if, {N_BD} bd, {N_RT} routes)"
    benchmark.name = "test_resync[papi-naive-full]"
    kvs = _desired()

    def run() -> None:
        with _sim_process() as path:
            _naive_agent(path, kvs)

    benchmark.pedantic(run, rounds=1, iterations=1)


# -- from real etcd, and change latency ----------------------------------------------------

N_CHANGES = 300 // _SCALE


@pytest.fixture(scope="module")
def etcd_loaded() -> Iterator[list[str]]:
    """A fresh single-member etcd holding the same desired state."""
    from tests.etcd.etcdserver import EtcdCluster

    from datasync.transport.etcd import EtcdSource

    cluster = EtcdCluster(1).start()
    try:

        async def load() -> None:
            src = EtcdSource(endpoints=cluster.endpoints)
            items = list(_desired().items())
            try:
                for i in range(0, len(items), 100):  # etcd's default max-txn-ops is 128
                    await src.txn(dict(items[i : i + 100]))
            finally:
                await src.close()

        uvloop.run(load())
        yield cluster.endpoints
    finally:
        cluster.close()


async def _etcd_resync(endpoints: list[str], sim_path: str) -> float:
    from datasync.transport.etcd import EtcdSource

    src = EtcdSource(endpoints=endpoints)
    orch = Orchestrator([src], ResyncConfig(resync_timeout=600, snapshot_timeout=600))
    client = VppClient(sim_path, probe_interval=None, timeout=60)
    plugins = VppPlugins(client, LABEL)
    loop = asyncio.get_running_loop()
    try:
        await client.connect()
        plugins.add_to(orch)
        t0 = loop.time()
        await orch.start()
        await orch.wait_in_sync(600)
        return loop.time() - t0
    finally:
        await orch.stop()
        await plugins.close()
        await client.close()
        await src.close()


@pytest.mark.etcd
def test_plugins_resync_from_etcd(benchmark: Any, etcd_loaded: list[str]) -> None:
    benchmark.group = f"plugins resync ({N_IF} if, {N_BD} bd, {N_RT} routes)"
    benchmark.name = "test_resync[ours-full-etcd]"
    times: list[float] = []

    def run() -> None:
        with _sim_process() as path:
            times.append(uvloop.run(_etcd_resync(etcd_loaded, path)))

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info["agent_seconds_min"] = round(min(times), 3)


async def _latencies(source: Any, sim_path: str) -> list[float]:
    """Put a new loopback at a time; the time until its key is CONFIGURED (VPP answered)."""
    orch = Orchestrator([source], ResyncConfig(resync_timeout=60))
    client = VppClient(sim_path, probe_interval=None, timeout=10)
    plugins = VppPlugins(client, LABEL)
    loop = asyncio.get_running_loop()
    done: dict[str, asyncio.Future[float]] = {}

    def on_key(_plugin: str, key: str, status: Any) -> None:
        fut = done.get(key)
        if fut is not None and not fut.done() and status is not None:
            fut.set_result(time.perf_counter())  # loop.time() has 1 ms steps on uvloop

    plugins.interfaces.states.add_listener(on_key)
    ifp = IF_PREFIX.format(label=LABEL)
    out = []
    try:
        await client.connect()
        plugins.add_to(orch)
        await orch.start()
        await orch.wait_in_sync(60)
        for i in range(N_CHANGES):
            key = f"{ifp}lat{i}"
            done[key] = loop.create_future()
            doc = {"name": f"lat{i}", "type": "SOFTWARE_LOOPBACK", "enabled": True}
            t0 = time.perf_counter()
            await source.put(key, json.dumps(doc).encode())
            out.append(await asyncio.wait_for(done[key], 10) - t0)
        return out
    finally:
        await orch.stop()
        await plugins.close()
        await client.close()


def _percentiles(benchmark: Any, lat: list[float]) -> None:
    lat = sorted(lat)
    benchmark.extra_info["p50_ms"] = round(lat[len(lat) // 2] * 1000, 3)
    benchmark.extra_info["p99_ms"] = round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 3)


def test_change_latency_local(benchmark: Any, tmp_path: Path) -> None:
    benchmark.group = "change latency: put until VPP applied"
    benchmark.name = "test_change_latency[local]"
    lat: list[float] = []

    def run() -> None:
        with _sim_process() as path:
            store = LocalStore(tmp_path / f"lat-{len(lat)}.db")  # in-process puts wake its watch

            async def go() -> list[float]:
                try:
                    return await _latencies(store, path)
                finally:
                    await store.close()

            lat.extend(uvloop.run(go()))

    benchmark.pedantic(run, rounds=1, iterations=1)
    _percentiles(benchmark, lat)


@pytest.mark.etcd
def test_change_latency_etcd(benchmark: Any) -> None:
    from tests.etcd.etcdserver import EtcdCluster

    from datasync.transport.etcd import EtcdSource

    benchmark.group = "change latency: put until VPP applied"
    benchmark.name = "test_change_latency[etcd]"
    lat: list[float] = []
    cluster = EtcdCluster(1).start()
    try:

        def run() -> None:
            with _sim_process() as path:

                async def go() -> list[float]:
                    src = EtcdSource(endpoints=cluster.endpoints)
                    try:
                        return await _latencies(src, path)
                    finally:
                        await src.close()

                lat.extend(uvloop.run(go()))

        benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        cluster.close()
    _percentiles(benchmark, lat)
