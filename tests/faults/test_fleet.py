"""The fleet row: many ``datasync agent`` processes, one label each and each with its own
built-in simulator, on one 3-member etcd; the leader is killed under write load."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from datasync.plugins.models import IF_PREFIX
from datasync.testing.procs import AgentProcess, wait_for
from datasync.transport.etcd import EtcdSource
from datasync.vpp.client import VppClient
from tests.etcd.etcdserver import EtcdCluster

from .harness import loop_if

pytestmark = [pytest.mark.etcd, pytest.mark.slow]

Record = Callable[[str, object], None]
#: agents in the fleet (the row's 20; ``DATASYNC_FLEET_SIZE=50`` for the big run)
SIZE = int(os.environ.get("DATASYNC_FLEET_SIZE", "20"))
WAIT = 180.0  # many Python processes start on 2 cores: a hang guard only


def if_key(label: str, name: str) -> str:
    return IF_PREFIX.format(label=label) + name


def value(label: str, name: str, n: int) -> bytes:
    """A loopback with an address unique to (label, name), and an MTU that changes with
    ``n`` (every write is a real change)."""
    slot = 10 + int(name[1:]) + (10 if name[0] == "w" else 0)
    _, v = loop_if(name, f"10.{int(label[1:])}.{slot}.1/32", mtu=1500 + n % 500)
    return v


def config(endpoints: list[str], label: str) -> str:
    eps = ", ".join(f'"{e}"' for e in endpoints)
    return (
        f'[agent]\nlabel = "{label}"\n'
        '[sources]\norder = ["etcd"]\n[sources.local]\nenabled = false\n'
        "[sources.rest]\nenabled = false\n"
        f"[sources.etcd]\nendpoints = [{eps}]\nconnect_timeout = 2.0\nrequest_timeout = 5.0\n"
        "[resync]\nbackoff_initial = 0.1\nbackoff_max = 1.0\n"
    )


@pytest.fixture
def fleet(tmp_path: Path, etcd3: EtcdCluster) -> Iterator[list[tuple[str, AgentProcess]]]:
    agents = []
    for i in range(SIZE):
        label = f"a{i}"
        a = AgentProcess(Path(f"/tmp/dsfleet-{os.getpid()}-{i}") / "data")
        a.configure(config(etcd3.endpoints, label))
        agents.append((label, a))
    try:
        yield agents
    finally:
        for _, a in agents:
            a.close()
            shutil.rmtree(a.data_dir.parent, ignore_errors=True)


def vpp_tags(agent: AgentProcess) -> set[str]:
    async def run() -> set[str]:
        c = VppClient(str(agent.data_dir / "vpp-api.sock"), probe_interval=None)
        await c.connect()
        try:
            return {d.tag for d in await c.dump("sw_interface_dump") if d.tag}
        finally:
            await c.close()

    return asyncio.run(run())


class Writer(threading.Thread):
    """Puts spread over every label, at its own pace, until stopped."""

    def __init__(self, endpoints: list[str], labels: list[str]) -> None:
        super().__init__(daemon=True)
        self.endpoints, self.labels = endpoints, labels
        self.stop_ = threading.Event()
        self.count = 0

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        pub = EtcdSource(name="pub", endpoints=self.endpoints, request_timeout=1.0)
        try:
            n = 0
            while not self.stop_.is_set():
                label = self.labels[n % len(self.labels)]
                name = f"w{(n // len(self.labels)) % 3}"
                try:
                    await pub.put(if_key(label, name), value(label, name, n))
                    self.count += 1
                except Exception:
                    await asyncio.sleep(0.05)
                n += 1
                await asyncio.sleep(0.005)
        finally:
            await pub.close()


async def label_revisions(
    endpoints: list[str], labels: list[str]
) -> tuple[dict[str, bytes], dict[str, int]]:
    """The store under /vnf-agent/, and per label the last revision of its keys."""
    src = EtcdSource(name="check", endpoints=endpoints, recycle_interval=None)
    try:
        snap = await src.snapshot(["/vnf-agent/"])
    finally:
        await src.close()
    revs = dict.fromkeys(labels, 0)
    for kv in snap.kvs:
        label = kv.key.split("/")[2]
        revs[label] = max(revs[label], kv.revision)
    return {kv.key: kv.value for kv in snap.kvs}, revs


@pytest.mark.timeout(900)
def test_f25_fleet_of_agents_survives_leader_loss_without_relists(
    etcd3: EtcdCluster, fleet: list[tuple[str, AgentProcess]], record_property: Record
) -> None:
    """F25: every agent resumes its watch on another member without a relist and ends in
    sync at etcd's head with VPP holding exactly its own label's interfaces."""
    labels = [label for label, _ in fleet]

    async def seed() -> None:
        pub = EtcdSource(name="seed", endpoints=etcd3.endpoints)
        try:
            for label in labels:
                await pub.txn({if_key(label, f"s{j}"): value(label, f"s{j}", j)
                               for j in range(3)})  # fmt: skip
        finally:
            await pub.close()

    asyncio.run(seed())
    leader = etcd3.leader()
    for _, a in fleet:
        a.start()
    writer = Writer(etcd3.endpoints, labels)
    writer.start()
    wait_for(lambda: writer.count >= 2 * SIZE, WAIT, 0.05, "write load")
    leader.kill()
    killed_at = time.monotonic()
    wait_for(lambda: writer.count >= 4 * SIZE, WAIT, 0.05, "writes after the election")
    writer.stop_.set()
    writer.join(30)
    others = [m.endpoint for m in etcd3.members if m is not leader]
    store, revs = asyncio.run(label_revisions(others, labels))

    def in_sync(label: str, a: AgentProcess) -> bool:
        """In sync, with the last change of its own keys applied (an agent watches its
        label only: other labels' revisions do not reach it)."""
        st = a.get("/status") or {}
        src = st.get("sources", {}).get("etcd", {})
        applied = src.get("applied_revision", 0)
        return bool(st.get("agent", {}).get("in_sync") and applied >= revs[label])

    try:
        wait_for(lambda: all(in_sync(*la) for la in fleet), WAIT, 0.2, "every agent in sync")
    except AssertionError:
        late = {label: (revs[label], (a.get("/status") or {}).get("sources"))
                for label, a in fleet if not in_sync(label, a)}  # fmt: skip
        raise AssertionError(f"{len(late)} agent(s) not in sync: {late}") from None
    t_conv = time.monotonic() - killed_at
    relists = 0
    for label, a in fleet:
        st = a.status()
        relists += max(0, int(st["agent"]["rounds"]) - 1)
        want = {k.rsplit("/", 1)[1] for k in store if k.startswith(IF_PREFIX.format(label=label))}
        assert vpp_tags(a) == want, label  # its own keys, and nobody else's
    record_property("t_conv", round(t_conv, 3))  # from the kill, the load's tail included
    record_property("relists", relists)
    record_property("sb_writes", None)
    record_property("invariants", "ok" if relists == 0 else f"I8: {relists} relists")
    assert relists == 0
