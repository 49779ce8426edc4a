"""An agent in the test's loop: the embedded store, the four VPP plugins, the orchestrator,
the real VppClient and the strict simulator."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from datasync.agent.wiring import follow_vpp_faults
from datasync.plugins import KeyState, RetryPolicy, VppPlugins
from datasync.plugins.models import BD_PREFIX, IF_PREFIX, ROUTE_PREFIX, VRF_PREFIX
from datasync.resync import Orchestrator, ResyncConfig
from datasync.transport.local import LocalStore
from datasync.vpp.client import VppClient
from datasync.vpp.sim import Simulator
from tests.vpp.helpers import eventually

LABEL = "t"
IF = IF_PREFIX.format(label=LABEL)
BD = BD_PREFIX.format(label=LABEL)
ROUTE = ROUTE_PREFIX.format(label=LABEL)
VRF = VRF_PREFIX.format(label=LABEL)


def js(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def loop(name: str, *addrs: str, enabled: bool = True, **kw: Any) -> tuple[str, bytes]:
    doc = {
        "name": name,
        "type": "SOFTWARE_LOOPBACK",
        "enabled": enabled,
        "ip_addresses": list(addrs),
        **kw,
    }
    return IF + name, js(doc)


def bd(name: str, *members: str, bvi: str | None = None, **kw: Any) -> tuple[str, bytes]:
    ifs = [{"name": m} for m in members]
    if bvi:
        ifs.append({"name": bvi, "bridged_virtual_interface": True})
    return BD + name, js({"name": name, "interfaces": ifs, **kw})


def route(dst: str, gw: str = "", iface: str = "", vrf: int = 0, **kw: Any) -> tuple[str, bytes]:
    doc = {
        "dst_network": dst,
        "next_hop_addr": gw,
        "outgoing_interface": iface,
        "vrf_id": vrf,
        **kw,
    }
    key = ROUTE + (f"if/{iface}/" if iface else "") + f"vrf/{vrf}/"
    ip, _, plen = dst.partition("/")
    key += f"dst/{ip}/{plen}/" + (f"gw/{gw}" if gw else "")
    return key, js(doc)


def vrf(table: int, proto: str = "IPV4", label: str = "") -> tuple[str, bytes]:
    return VRF + f"id/{table}/protocol/{proto}", js(
        {"id": table, "protocol": proto, "label": label}
    )


@dataclass
class Agent:
    store: Any  # a LocalStore or an EtcdSource: both take txn()
    sim: Simulator
    client: VppClient
    orch: Orchestrator
    plugins: VppPlugins

    #: the store revision of the last write
    revision: int = 0

    async def put(self, *kvs: tuple[str, bytes]) -> None:
        self.revision = await self.store.txn(dict(kvs))

    async def delete(self, *keys: str) -> None:
        self.revision = await self.store.txn({}, list(keys))

    def state(self, key: str) -> KeyState | None:
        status = self.plugins.states.get(key)
        return None if status is None else status.state

    def reason(self, key: str) -> str:
        status = self.plugins.states.get(key)
        return "" if status is None else status.reason

    async def settle(self, timeout: float = 10) -> None:
        """The last write applied (or dispositioned), and the agent in sync."""
        name = self.store.name
        await eventually(lambda: self.orch.applied_revision(name) >= self.revision, limit=timeout)
        await self.orch.wait_in_sync(timeout)

    async def wait_state(self, key: str, state: KeyState, timeout: float = 10) -> None:
        await eventually(lambda: self.state(key) is state, limit=timeout)

    def writes(self) -> int:
        return sum(
            n
            for ops in self.sim.counters()["writes"].values()
            for op, n in ops.items()
            if op != "noop"
        )

    def violations(self) -> int:
        return int(self.sim.counters()["violations"])

    def tagged(self) -> dict[str, dict[str, Any]]:
        return {i["tag"]: i for i in self.sim.dump_state()["interfaces"] if i["tag"]}


@pytest.fixture(params=["socket"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


#: fast per-key retries, so RETRYING keys come back within a test's patience
FAST_RETRY = RetryPolicy(initial=0.05, maximum=0.5)


@asynccontextmanager
async def running_agent(
    store: Any, sim: Simulator, state_dir: Path, transport: str = "socket", **config: Any
) -> AsyncIterator[Agent]:
    """The plugins and the orchestrator on ``store``, driving ``sim``."""
    config = {"resync_timeout": 20, "backoff_initial": 0.1, **config}
    orch = Orchestrator([store], ResyncConfig(**config))
    assert sim.path is not None
    client = VppClient(
        sim.path, probe_interval=None, timeout=10, transport=transport, backoff_max=0.2
    )
    plugins = VppPlugins(
        client, LABEL, retry=FAST_RETRY, ack_timeout=5, ledger_path=state_dir / "ledger.json"
    )
    client.add_fault_listener(follow_vpp_faults(orch, plugins))
    try:
        await client.connect()
        plugins.add_to(orch)
        yield Agent(store, sim, client, orch, plugins)
    finally:
        await orch.stop()
        await plugins.close()
        await client.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    # a store that takes values above the plugins' limit, so the plugins are what refuse them
    s = LocalStore(tmp_path / "store.db", poll_interval=0.02, max_value_bytes=4 << 20)
    yield s
    await s.close()


@pytest.fixture
async def agent(
    store: LocalStore, sim: Simulator, tmp_path: Path, transport: str
) -> AsyncIterator[Agent]:
    async with running_agent(store, sim, tmp_path, transport) as a:
        yield a
