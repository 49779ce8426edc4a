"""F20: the agent crashes mid-resync (a failpoint's ``exit(137)``) and is restarted.

VPP is a separate process (``datasync vppsim --strict``), so it outlives the agent, as a
real VPP does; the agent runs as ``datasync agent`` with ``vpp.connect = "socket"``. After
the restart: 0 duplicate creates, 0 orphans (an interface whose key was deleted while the
agent was down is removed), the operator's untagged interface untouched, 0 dangling
references; a second restart with no change in the store makes 0 southbound writes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from datasync.transport.local import LocalStore
from datasync.vpp.client import VppClient
from tests.agent.conftest import BD, IF, AgentProcess, js, wait_for
from tests.etcd.etcdserver import free_port

ROUTE = IF.replace("interfaces/", "route/")


class VppSim:
    """``datasync vppsim --strict`` as a process of its own, stopped by PID."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.admin = f"127.0.0.1:{free_port()}"
        self.log = socket.parent / "vppsim.log"
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "datasync.agent.cli", "vppsim", "--strict", "--seed", "1",
                 "--socket", str(socket), "--http", self.admin],
                stdout=f, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for(lambda: self.get("/health") or self.proc.poll() is not None, what="vppsim")
        assert self.proc.poll() is None, self.log.read_text()

    def get(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://{self.admin}{path}", data=data)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return json.loads(resp.read())
        except OSError:
            return None

    def state(self) -> dict[str, Any]:
        return dict(self.get("/state"))

    def counters(self) -> dict[str, Any]:
        return dict(self.get("/counters"))

    def tagged(self) -> set[str]:
        return {i["tag"] for i in self.state()["interfaces"] if i["tag"]}

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def vppsim(data_dir: Path) -> Iterator[VppSim]:
    # beside the agent's data dir (which the agent makes 0700), not inside it
    sim = VppSim(data_dir.parent / "vpp.sock")
    try:
        yield sim
    finally:
        sim.stop()


def loop(name: str, addr: str) -> tuple[str, bytes]:
    doc = {"name": name, "type": "SOFTWARE_LOOPBACK", "enabled": True, "ipAddresses": [addr]}
    return IF + name, js(doc).encode()


def bd(name: str, *members: str, bvi: str) -> tuple[str, bytes]:
    ifs = [{"name": m} for m in members] + [{"name": bvi, "bridgedVirtualInterface": True}]
    return BD + name, js({"name": name, "interfaces": ifs}).encode()


def route(dst: str, gw: str, iface: str) -> tuple[str, bytes]:
    ip, _, plen = dst.partition("/")
    key = f"{ROUTE}if/{iface}/vrf/0/dst/{ip}/{plen}/gw/{gw}"
    doc = {"dstNetwork": dst, "nextHopAddr": gw, "outgoingInterface": iface, "vrfId": 0}
    return key, js(doc).encode()


CONFIG = dict(
    [
        *(loop(f"loop{i}", f"10.{i}.0.1/24") for i in range(6)),
        loop("bvi0", "192.168.1.1/24"),
        bd("bd1", "loop0", "loop1", bvi="bvi0"),
        route("20.0.0.0/8", "10.0.0.2", "loop0"),
        route("21.0.0.0/8", "10.1.0.2", "loop1"),
    ]
)


def write_store(data_dir: Path, puts: dict[str, bytes], deletes: Sequence[str] = ()) -> None:
    async def run() -> None:
        store = LocalStore(data_dir / "store.db")
        try:
            await store.txn(puts, list(deletes))
        finally:
            await store.close()

    asyncio.run(run())


def operator_loopback(socket: Path) -> int:
    """A loopback the operator made (no tag): the agent must never touch it."""

    async def run() -> int:
        c = VppClient(str(socket), probe_interval=None)
        await c.connect()
        try:
            return int((await c.call("create_loopback")).sw_if_index)
        finally:
            await c.close()

    return asyncio.run(run())


def config_file(data_dir: Path, sim: VppSim) -> Path:
    path = data_dir.parent / "agent.toml"
    path.write_text(
        "[sources]\norder = [\"local\"]\n[sources.rest]\nenabled = false\n"
        f"[vpp]\nconnect = \"socket\"\nsocket = \"{sim.socket}\"\nprobe_interval = 0.5\n"
        "[resync]\nbackoff_initial = 0.1\n"
    )  # fmt: skip
    return path


def crash_run(agent: AgentProcess, cfg: Path, failpoint: str) -> str:
    """Run the agent with ``failpoint``; it must die with 137 on its own."""
    log = agent.data_dir.parent / f"crash-{time.monotonic_ns()}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "datasync.agent.cli", "agent", "--config", str(cfg),
             "--data-dir", str(agent.data_dir), "--http", agent.http],
            stdout=f, stderr=subprocess.STDOUT,
            env={**os.environ, "DATASYNC_FAILPOINTS": failpoint},
        )  # fmt: skip
    try:
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    out = log.read_text()
    assert code == 137, out
    return out


def crash_and_restart(
    agent: AgentProcess,
    vppsim: VppSim,
    data_dir: Path,
    failpoint: str,
    partial: Callable[[VppSim], None] | None = None,
) -> None:
    """Crash at ``failpoint``, change the store while the agent is down, restart: VPP ends
    as the store with nothing duplicated, orphaned or dangling; then a restart with no
    change writes nothing. ``partial`` checks what VPP holds right after the crash."""
    operator = operator_loopback(vppsim.socket)
    write_store(data_dir, CONFIG)
    cfg = config_file(data_dir, vppsim)

    out = crash_run(agent, cfg, failpoint)
    name = failpoint.partition("=")[0]
    assert f"failpoint {name} hit: exit(137)" in out  # I15: the crash hit the phase meant
    made = vppsim.tagged()
    # loopbacks made but not tagged yet when the agent died (all of one create batch)
    untagged = [
        i for i in vppsim.state()["interfaces"]
        if i["kind"] == "loopback" and not i["tag"] and i["sw_if_index"] != operator
    ]  # fmt: skip
    if partial is not None:
        partial(vppsim)  # I15: the crash left VPP half-way, as the row means

    # while the agent is down: loop5 goes (an orphan if VPP has it), loop9 comes
    write_store(data_dir, dict([loop("loop9", "10.9.0.1/24")]), [IF + "loop5"])

    agent.args = ["--config", str(cfg)]
    agent.start()
    agent.wait_in_sync(30)
    want = {f"loop{i}" for i in range(5)} | {"bvi0", "loop9"}
    state = vppsim.state()
    assert {i["tag"] for i in state["interfaces"] if i["tag"]} == want  # 0 orphans
    ours = {i["sw_if_index"]: i for i in state["interfaces"]}
    assert ours[operator]["tag"] == "" and ours[operator]["name"].startswith("loop")
    counters = vppsim.counters()
    assert counters["violations"] == 0
    # 0 duplicate creates: one create per interface ever made (+ the operator's); loop5
    # was made before the crash if it was tagged, or if its create batch went out
    loop5 = {"loop5"} if "loop5" in made or untagged else set()
    assert counters["writes"]["interface"]["create"] == len(want | loop5) + 1
    bds = state["bridge_domains"]
    assert len(bds) == 1 and len(bds[0]["members"]) == 3
    assert agent.stop() == 0

    # a second restart with no change in the store: 0 southbound writes
    assert vppsim.get("/counters/reset", {}) == {"ok": True}
    agent.start()
    agent.wait_in_sync(30)
    again = vppsim.counters()
    assert again["write_ops"] == 0, again["writes"]
    assert again["violations"] == 0
    assert vppsim.state()["interfaces"] == state["interfaces"]
    assert agent.stop() == 0


EVERY = {k[len(IF) :] for k in CONFIG if k.startswith(IF)}


def _interfaces_up_nothing_else(sim: VppSim) -> None:
    state = sim.state()
    assert sim.tagged() == EVERY and state["bridge_domains"] == []
    assert all(i["admin_up"] and i["addresses"] for i in state["interfaces"] if i["tag"])


def _created_and_tagged_only(sim: VppSim) -> None:
    state = sim.state()
    assert sim.tagged() == EVERY and state["bridge_domains"] == []
    assert not any(i["admin_up"] or i["addresses"] for i in state["interfaces"])


@pytest.mark.parametrize(
    ("failpoint", "partial"),
    [
        # interfaces and VRFs applied, the bridge domain and routes not yet
        ("plugin.bridge-domains.resync=exit(137)", _interfaces_up_nothing_else),
        # between southbound calls: interfaces created and tagged, not up, no addresses
        ("sb.before_call=exit(137)@3", _created_and_tagged_only),
    ],
)
def test_f20_crash_mid_resync_then_restart(
    agent: AgentProcess,
    vppsim: VppSim,
    data_dir: Path,
    failpoint: str,
    partial: Callable[[VppSim], None],
) -> None:
    crash_and_restart(agent, vppsim, data_dir, failpoint, partial)


def test_f20_crash_between_a_loopback_create_and_its_tag(
    agent: AgentProcess, vppsim: VppSim, data_dir: Path
) -> None:
    crash_and_restart(agent, vppsim, data_dir, "sb.before_call=exit(137)@2")


#: every crash point of a full resync of CONFIG (7 VPP call batches; @2 is the test above)
CRASH_POINTS = [
    "resync.started=exit(137)",
    "resync.after_snapshot_page=exit(137)",
    "resync.before_watch=exit(137)",
    *(f"plugin.{p}.{w}=exit(137)" for p in ("vrfs", "interfaces", "bridge-domains", "routes")
      for w in ("resync", "apply")),
    *(f"sb.before_call=exit(137)@{k}" for k in (1, 3, 4, 5, 6, 7)),
    "checkpoint.before_commit_rev=exit(137)",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("failpoint", CRASH_POINTS)
def test_f20_every_crash_point(
    agent: AgentProcess, vppsim: VppSim, data_dir: Path, failpoint: str
) -> None:
    """F20 at every failpoint a full resync passes (slow: ``pytest -m slow``)."""
    crash_and_restart(agent, vppsim, data_dir, failpoint)
