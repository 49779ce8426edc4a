"""``datasync demo``: the agent at work on the embedded store and the built-in VPP simulator.

The demo starts a strict VPP simulator in-process (it counts dangling references, such as
an interface deleted while still in a bridge domain or a route through it) and drives it
through the real VPP client over the binary-API socket with the VPP plugins
(:mod:`datasync.plugins`): a VRF table, loopback, TAP and memif interfaces with addresses,
a bridge domain with a BVI, and routes, in vpp-agent's key layout and JSON. When an
interface must go, the interface plugin announces the delete on IDX and waits until the
bridge-domain and route plugins detached it; every resync reads VPP back (dump, diff,
apply). One key is refused by VPP on purpose (a simulator fault): it stays FAILED while
everything else converges, and no round fails. The demo restarts the simulator (state
wiped, new vpe_pid); the client reconnects and the round it starts restores the store's
state. It exits 0 only when the agent is in sync, there were no dangling references, and
VPP holds what the store wants.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import DatasyncError
from ..plugins import KeyState, VppPlugins
from ..plugins.models import BD_PREFIX, IF_PREFIX, ROUTE_PREFIX, VRF_PREFIX
from ..resync import (
    Orchestrator,
    ResyncConfig,
    RoundFinished,
    RoundStarted,
    SouthboundStateChanged,
)
from ..transport.local import LocalStore
from ..vpp.client import VppClient
from ..vpp.retvals import UNSUPPORTED
from ..vpp.sim.server import Simulator
from .wiring import follow_vpp_faults, resync_on_vpp_fault

__all__ = ["main", "resync_on_vpp_fault", "run_demo"]

log = logging.getLogger("datasync.demo")

#: AF_UNIX socket paths hold at most 107 bytes
_SOCKET_PATH_MAX = 107
#: the address VPP refuses in the demo (a simulator fault): its key stays FAILED
REFUSED = "10.99.0.1/24"


def _js(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc).encode()


class Keys:
    """The demo's keys and values (vpp-agent's layout and JSON names)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.ifp = IF_PREFIX.format(label=label)
        self.bdp = BD_PREFIX.format(label=label)
        self.rtp = ROUTE_PREFIX.format(label=label)
        self.vrfp = VRF_PREFIX.format(label=label)

    def iface(
        self, name: str, kind: str = "SOFTWARE_LOOPBACK", *addrs: str, **kw: Any
    ) -> tuple[str, bytes]:
        doc = {"name": name, "type": kind, "enabled": True, "ipAddresses": list(addrs), **kw}
        return self.ifp + name, _js(doc)

    def bd(self, name: str, members: Sequence[str], bvi: str) -> tuple[str, bytes]:
        ifs = [{"name": m} for m in members] + [{"name": bvi, "bridgedVirtualInterface": True}]
        doc = {"name": name, "flood": True, "forward": True, "learn": True, "interfaces": ifs}
        return self.bdp + name, _js(doc)

    def route(self, dst: str, gw: str, iface: str, vrf: int = 0) -> tuple[str, bytes]:
        net = ipaddress.ip_network(dst)
        key = f"{self.rtp}if/{iface}/vrf/{vrf}/dst/{net.network_address}/{net.prefixlen}/gw/{gw}"
        doc = {"dstNetwork": dst, "nextHopAddr": gw, "outgoingInterface": iface, "vrfId": vrf}
        return key, _js(doc)

    def vrf(self, table: int) -> tuple[str, bytes]:
        return f"{self.vrfp}id/{table}/protocol/IPV4", _js({"id": table, "protocol": "IPV4"})

    def start(self) -> dict[str, bytes]:
        return dict([
            self.vrf(10),
            self.iface("loop0", "SOFTWARE_LOOPBACK", "10.0.0.1/24"),
            self.iface("loop1", "SOFTWARE_LOOPBACK", "10.1.0.1/24"),
            self.iface("tap0", "TAP", "10.10.0.1/24", vrf=10, tap={"hostIfName": "ds-tap0"}),
            self.iface("memif0", "MEMIF", memif={"id": 1, "master": True}),
            self.iface("bvi0", "SOFTWARE_LOOPBACK", "192.168.1.1/24"),
            self.iface("refused0", "SOFTWARE_LOOPBACK", REFUSED),
            self.bd("bd1", ["loop0", "loop1", "memif0"], bvi="bvi0"),
            self.route("20.0.0.0/8", "10.0.0.2", "loop0"),
            self.route("21.0.0.0/8", "10.1.0.2", "loop1"),
            self.route("30.0.0.0/8", "10.10.0.2", "tap0", vrf=10),
        ])  # fmt: skip


def _socket_path(data_dir: Path, cleanup: contextlib.AsyncExitStack) -> str:
    path = str(data_dir.resolve() / "vpp-api.sock")
    if len(os.fsencode(path)) <= _SOCKET_PATH_MAX:
        return path
    short = tempfile.mkdtemp(prefix="ds-")
    cleanup.callback(shutil.rmtree, short, ignore_errors=True)
    return os.path.join(short, "vpp-api.sock")


class _DataDirError(Exception):
    """The data dir cannot hold the demo's store or socket (main prints it in one line)."""


async def run_demo(data_dir: Path, label: str = "demo") -> int:
    """The scripted demo; returns the process exit code."""
    keys = Keys(label)
    prefixes = [keys.ifp, keys.bdp, keys.rtp, keys.vrfp]
    async with contextlib.AsyncExitStack() as cleanup:  # closes in reverse order, always
        try:  # what is in the data dir: a clear line, not a traceback (see main)
            store = LocalStore(data_dir / "datasync.db", poll_interval=0.05)
        except DatasyncError as exc:
            raise _DataDirError(str(exc)) from exc
        cleanup.push_async_callback(store.close)
        await store.txn(keys.start(), [keys.ifp + "stale0"])

        sim = Simulator(strict=True)
        try:
            await sim.start(_socket_path(data_dir, cleanup))
        except OSError as exc:
            raise _DataDirError(f"{exc.filename}: {exc.strerror or exc}") from exc
        cleanup.push_async_callback(sim.stop)
        assert sim.path is not None
        # VPP refuses one address for good: that key is FAILED, the others converge
        sim.inject_error(
            "sw_interface_add_del_address", UNSUPPORTED, count=None,
            match={"prefix": ipaddress.ip_interface(REFUSED)},
        )  # fmt: skip
        orch = Orchestrator([store], ResyncConfig(resync_timeout=10, backoff_initial=0.2))
        orch.add_listener(_print_event)
        client = VppClient(
            sim.path,
            timeout=5,
            probe_interval=0.2,
            probe_timeout=1.0,  # a restart drops the socket: the probe only finds a hung VPP
            backoff_max=0.5,
        )
        cleanup.push_async_callback(client.close)
        await client.connect()
        plugins = VppPlugins(client, label, ack_timeout=5, ledger_path=data_dir / "ledger.json")
        cleanup.push_async_callback(plugins.close)
        client.add_fault_listener(follow_vpp_faults(orch, plugins))
        cleanup.push_async_callback(orch.stop)
        print(f"VPP simulator (strict) on {sim.path}, vpe_pid {sim.state.vpe_pid}")

        # VPP as a previous run left it: stale0 is no longer wanted, but it is still a
        # member of bd1, so it must be detached before it may be deleted.
        c = client
        stale = (await c.call("create_loopback")).sw_if_index
        await c.call("sw_interface_tag_add_del", is_add=True, sw_if_index=stale, tag="stale0")
        bd: dict[str, Any] = {"bd_id": 0xFFFFFFFF, "bd_tag": "bd1", "flood": True, "learn": True}
        bd1 = (await c.call("bridge_domain_add_del_v2", bd, is_add=True, forward=True)).bd_id
        await c.call("sw_interface_set_l2_bridge", rx_sw_if_index=stale, bd_id=bd1, enable=True)
        sim.reset_counters()  # count the agent's writes only
        plugins.add_to(orch)

        async def converge(after_round: int = 0) -> None:
            """Wait until the last write is applied (and a round after ``after_round`` ran)
            and the agent is in sync."""
            head = (await store.snapshot(prefixes)).revision
            async with asyncio.timeout(20):
                while (  # noqa: ASYNC110 - polls the agent
                    orch.applied_revision(store.name) < head
                    or not client.connected
                    or orch.status().rounds <= after_round
                ):
                    await asyncio.sleep(0.01)
            await orch.wait_in_sync(20)
            print(f"  VPP: {_summary(sim)}")

        earlier_boots: list[dict[str, Any]] = []  # the simulator's counters die with a boot
        step = _Steps()
        try:
            step(
                "start-up resync: the store wants a VRF, 6 interfaces, bd1 with a BVI, 3 routes\n"
                f"   VPP has {_summary(sim)}"
            )
            await orch.start()
            await converge()
            _print_states(plugins)

            step("live change: loop2 joins bd1 with a route, and a malformed value")
            members = ["loop0", "loop1", "loop2", "memif0"]
            await store.txn(dict([
                keys.iface("loop2", "SOFTWARE_LOOPBACK", "10.2.0.1/24"),
                keys.bd("bd1", members, bvi="bvi0"),
                keys.route("22.0.0.0/8", "10.2.0.2", "loop2"),
            ]))  # fmt: skip
            await store.put(keys.ifp + "broken", b'{"name": "broken", "mtu": 70000}')
            await converge()
            _print_states(plugins)

            step("live delete: loop1 (IDX delete -> bd1 detaches it, its route goes -> delete)")
            await store.txn(
                {}, [keys.ifp + "loop1", keys.route("21.0.0.0/8", "10.1.0.2", "loop1")[0]]
            )
            await converge()

            step("fault: VPP restarts and loses its state; the client reconnects")
            earlier_boots.append(sim.counters())
            old_pid, rounds = sim.state.vpe_pid, orch.status().rounds
            sim.restart()
            print(f"  simulator restarted: vpe_pid {old_pid} -> {sim.state.vpe_pid}")
            await converge(after_round=rounds)
            _print_states(plugins)
        except TimeoutError:
            print("\n!! timed out waiting for the agent to apply the store")
        except DatasyncError as exc:  # escalation, a closed store, a failed seeding call
            print(f"\n!! the demo stopped: {type(exc).__name__}: {exc}")
        code = _report(orch, sim, plugins, [*earlier_boots, sim.counters()])
    return code


def _summary(sim: Simulator) -> str:
    state = sim.dump_state()
    names = {i["sw_if_index"]: i["tag"] or i["name"] for i in state["interfaces"]}
    ifaces = [f"{i['tag']}{i['addresses'] or ''}" for i in state["interfaces"] if i["tag"]]
    bds = {
        b["tag"]: sorted(names[int(m)] for m in b["members"])
        for b in state["bridge_domains"]
        if b["tag"]
    }
    routes = sum(len(t["routes"]) for t in state["tables"])
    return f"interfaces={ifaces} bridge_domains={bds} routes={routes}"


def _print_states(plugins: VppPlugins) -> None:
    counts: dict[str, int] = {}
    for status in plugins.states:
        counts[status.state.value] = counts.get(status.state.value, 0) + 1
    print("  key states: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for status in plugins.states:
        if status.state is not KeyState.CONFIGURED:
            print(f"    {status.state.value:8} {status.key}: {status.reason}")


def _vpp_matches(sim: Simulator, plugins: VppPlugins) -> bool:
    """VPP holds what every CONFIGURED key asks for, and nothing tagged that no key asks for."""
    state = sim.dump_state()
    tagged = {i["tag"]: i for i in state["interfaces"] if i["tag"]}
    ifs = plugins.interfaces
    wanted = {m.name for m in ifs.desired.values()}
    if set(tagged) != wanted:
        return False
    for key, m in ifs.desired.items():
        status = plugins.states.get(key)
        if status is None or status.state is not KeyState.CONFIGURED:
            continue
        got = tagged[m.name]
        if sorted(got["addresses"]) != sorted(m.ip_addresses) or got["admin_up"] != m.enabled:
            return False
    names = {i["sw_if_index"]: i["tag"] for i in state["interfaces"]}
    bds = {
        b["tag"]: {names[int(sw)] for sw in b["members"]}
        for b in state["bridge_domains"]
        if b["tag"]
    }
    for bdm in plugins.bridge_domains.desired.values():
        if bds.get(bdm.name) != {i.name for i in bdm.interfaces if i.name in tagged}:
            return False
    paths = sum(len(r["paths"]) for t in state["tables"] for r in t["routes"])
    return paths == len(plugins.routes.desired)


def _report(
    orch: Orchestrator, sim: Simulator, plugins: VppPlugins, boots: list[dict[str, Any]]
) -> int:
    """Print the outcome; 0 only when in sync, without violations, and VPP as wanted."""
    st = orch.status()
    violations = sum(b["violations"] for b in boots)
    matches = _vpp_matches(sim, plugins)
    print()
    print(
        f"status: {st.state.name}, in_sync={st.in_sync}, rounds={st.rounds}, "
        f"failed_rounds={st.failed_rounds}"
    )
    _print_states(plugins)
    print(f"VPP simulator (vpe_pid {sim.state.vpe_pid}, restarts: {len(boots) - 1}):")
    print(f"  {_summary(sim)}")
    print(f"  dangling-reference violations: {violations}")
    for n, boot in enumerate(boots, 1):
        writes = "; ".join(
            f"{kind} " + " ".join(f"{op}={count}" for op, count in ops.items() if count)
            for kind, ops in sorted(boot["writes"].items())
            if any(ops.values())
        )
        print(f"  write ops, boot {n}: {writes or 'none'}")
    print(f"VPP holds what the store wants: {matches}")
    return 0 if st.in_sync and violations == 0 and matches else 1


class _Steps:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, text: str) -> None:
        self.n += 1
        print(f"\n== {self.n}. {text}")


def _print_event(ev: object) -> None:
    if isinstance(ev, RoundStarted):
        print(f"  [round {ev.round}] started: {'; '.join(ev.reasons)}")
    elif isinstance(ev, RoundFinished):
        outcome = "in sync" if ev.ok else f"FAILED {dict(ev.errors)}"
        print(f"  [round {ev.round}] finished in {ev.duration * 1000:.1f} ms: {outcome}")
    elif isinstance(ev, SouthboundStateChanged):
        state = "up" if ev.up else f"down ({ev.reason}): the agent is not in sync"
        print(f"  [{ev.name}] {state}")


def main(argv: Sequence[str] | None = None) -> int:
    """``datasync demo [--data-dir DIR] [--label LABEL] [-v]``."""
    parser = argparse.ArgumentParser(prog="datasync demo", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="store directory (default: a temp dir)")
    parser.add_argument("--label", default="demo", help="agent label in the keys")
    parser.add_argument("-v", "--verbose", action="store_true", help="log plugin actions")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="  %(name)s: %(message)s",
        stream=sys.stdout,
    )
    import uvloop

    from .. import implementation

    print(f"datasync demo on uvloop; hot path: {implementation()}")
    if args.data_dir is not None:
        if args.data_dir.exists() and not args.data_dir.is_dir():
            print(f"datasync demo: --data-dir {args.data_dir}: not a directory", file=sys.stderr)
            return 2
        try:
            return uvloop.run(run_demo(args.data_dir, args.label))
        except _DataDirError as exc:
            print(f"datasync demo: --data-dir {args.data_dir}: {exc}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="datasync-demo-") as tmp:
        return uvloop.run(run_demo(Path(tmp), args.label))
