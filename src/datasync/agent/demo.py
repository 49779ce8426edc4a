"""``datasync demo``: the core at work on the embedded store and the built-in VPP simulator.

The demo starts a strict VPP simulator in-process (it counts dangling references, such as
an interface deleted while still in a bridge domain) and drives it through the real VPP
client over the binary-API socket. Two plugins in the shape of the brief's example keep
it in sync with the embedded store: interfaces (loopbacks tagged with their names), and
bridge domains that depend on them. The bridge-domain plugin watches the interface IDX
mapping (name -> sw_if_index); when the interface plugin must delete an interface, it
announces the delete on IDX, waits until the bridge-domain plugin detached it and called
``done()``, and only then deletes it. Every resync reads VPP back (dump, diff, apply), so
when the demo restarts the simulator (state wiped, new vpe_pid) the client reconnects,
reports the restart, and the round it triggers restores what the store wants.

Keys and JSON follow the vpp-agent layout, so the same data works with the VPP
plugins later: ``/vnf-agent/<label>/config/vpp/v2/interfaces/<name>`` and
``/vnf-agent/<label>/config/vpp/l2/v2/bridge-domain/<name>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..api import ChangeEvent, KeyVal, Op, ResyncEvent
from ..errors import DatasyncError, InvalidValueError
from ..idx import NameToIndex, Notification
from ..resync import (
    Orchestrator,
    ResyncConfig,
    RoundFinished,
    RoundStarted,
    SouthboundStateChanged,
)
from ..transport.local import LocalStore
from ..vpp.client import FaultCallback, VppClient
from ..vpp.sim.server import Simulator

log = logging.getLogger("datasync.demo")

T = TypeVar("T")

IF_PREFIX = "/vnf-agent/{label}/config/vpp/v2/interfaces/"
BD_PREFIX = "/vnf-agent/{label}/config/vpp/l2/v2/bridge-domain/"

#: if_status_flags: IF_STATUS_API_FLAG_ADMIN_UP
ADMIN_UP = 1
#: VPP tags (interface tag, bd_tag) are string[64]: 63 bytes and the terminating NUL
TAG_MAX_BYTES = 63
#: sw_interface_details.interface_dev_type of a loopback (the device class name)
LOOPBACK_DEV_TYPE = "Loopback"
#: AF_UNIX socket paths hold at most 107 bytes
_SOCKET_PATH_MAX = 107


def _name_of(kv_key: str, prefix: str) -> str:
    return kv_key[len(prefix) :]


# -- values ------------------------------------------------------------------------------

#: values above this are invalid (the sources deliver them; validation rejects them)
MAX_VALUE_BYTES = 1 << 20


def parse_json(key: str, value: bytes) -> dict[str, Any]:
    """Decode a JSON object value; errors name the key."""
    if len(value) > MAX_VALUE_BYTES:
        raise InvalidValueError(key, f"{len(value)} bytes exceeds {MAX_VALUE_BYTES}")
    try:
        doc = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidValueError(key, f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidValueError(key, f"expected a JSON object, got {type(doc).__name__}")
    return doc


def _check_name(key: str, name: str) -> None:
    # the name becomes the VPP tag that identifies the object on the next resync
    if not name or len(name.encode()) > TAG_MAX_BYTES:
        raise InvalidValueError(key, f"name must be 1..{TAG_MAX_BYTES} bytes (a VPP tag)")


def interface_enabled(key: str, value: bytes) -> bool:
    """Validate an interface value (``ligato.vpp.interfaces.Interface``); its ``enabled``."""
    doc = parse_json(key, value)
    _check_name(key, key.rpartition("/")[2])
    if doc.get("type", "SOFTWARE_LOOPBACK") != "SOFTWARE_LOOPBACK":
        raise InvalidValueError(key, f"type {doc['type']!r}: the demo makes SOFTWARE_LOOPBACK only")
    enabled = doc.get("enabled", False)
    if not isinstance(enabled, bool):
        raise InvalidValueError(key, f"enabled must be true or false, got {enabled!r}")
    return enabled


def bridge_domain_members(key: str, value: bytes) -> set[str]:
    """Validate a bridge-domain value (``ligato.vpp.l2.BridgeDomain``); its member names."""
    doc = parse_json(key, value)
    _check_name(key, key.rpartition("/")[2])
    members = doc.get("interfaces", [])
    if not isinstance(members, list) or not all(
        isinstance(m, dict) and isinstance(m.get("name"), str) and m["name"] for m in members
    ):
        raise InvalidValueError(key, "interfaces must be a list of objects with a name")
    return {m["name"] for m in members}


# -- the southbound ----------------------------------------------------------------------


@dataclass(frozen=True)
class VppInterface:
    sw_if_index: int
    enabled: bool


@dataclass(frozen=True)
class VppBridgeDomain:
    bd_id: int
    #: sw_if_indexes
    members: frozenset[int]


class VppDataplane:
    """What the demo plugins need from VPP, over :class:`VppClient`.

    Objects are known by their VPP tag, which holds the config name; untagged ones
    (local0, whatever an operator made) are not the agent's and are never listed.
    Client errors (``VppApiError``, ``VppConnectionError``, ``VppTimeoutError``)
    propagate: the plugin's resync or change fails and the orchestrator retries.
    """

    def __init__(self, client: VppClient) -> None:
        self.client = client

    async def interfaces(self) -> dict[str, VppInterface]:
        """Tagged loopbacks by tag: the only interfaces the demo makes. A tagged tap or
        memif belongs to someone else (vpp-agent tags everything it creates)."""
        return {
            d.tag: VppInterface(int(d.sw_if_index), bool(d.flags & ADMIN_UP))
            for d in await self.client.dump("sw_interface_dump")
            if d.tag and d.interface_dev_type == LOOPBACK_DEV_TYPE
        }

    async def create_loopback(self, name: str, enabled: bool) -> int:
        """A loopback tagged ``name``, admin-up when ``enabled``; returns its sw_if_index.

        Create-then-tag is not atomic: if the connection drops after VPP made the loopback
        but before its reply, the loopback stays untagged, unseen by every resync (a real
        agent would also adopt untagged loopbacks it can attribute, e.g. by instance)."""
        sw_if_index = int((await self.client.call("create_loopback")).sw_if_index)
        try:
            await self.client.call(
                "sw_interface_tag_add_del", is_add=True, sw_if_index=sw_if_index, tag=name
            )
        except DatasyncError:
            # an untagged loopback is invisible to every later resync: do not leave it
            with contextlib.suppress(DatasyncError):
                await self.delete_loopback(sw_if_index)
            raise
        if enabled:
            await self.set_enabled(sw_if_index, True)
        return sw_if_index

    async def set_enabled(self, sw_if_index: int, enabled: bool) -> None:
        flags = ADMIN_UP if enabled else 0
        await self.client.call("sw_interface_set_flags", sw_if_index=sw_if_index, flags=flags)

    async def delete_loopback(self, sw_if_index: int) -> None:
        await self.client.call("delete_loopback", sw_if_index=sw_if_index)

    async def bridge_domains(self) -> dict[str, VppBridgeDomain]:
        """Tagged bridge domains by tag."""
        return {
            d.bd_tag: VppBridgeDomain(
                int(d.bd_id), frozenset(int(m.sw_if_index) for m in d.sw_if_details[: d.n_sw_ifs])
            )
            for d in await self.client.dump("bridge_domain_dump")
            if d.bd_tag
        }

    async def create_bridge_domain(self, name: str) -> int:
        """A bridge domain tagged ``name`` at the lowest free bd_id; returns the bd_id."""
        used = {int(d.bd_id) for d in await self.client.dump("bridge_domain_dump")}
        bd_id = next(i for i in itertools.count(1) if i not in used)  # bd 0 is VPP's own
        await self.client.call(
            "bridge_domain_add_del_v2",
            is_add=True,
            bd_id=bd_id,
            bd_tag=name,
            flood=True,
            uu_flood=True,
            forward=True,
            learn=True,
        )
        return bd_id

    async def delete_bridge_domain(self, bd_id: int) -> None:
        await self.client.call("bridge_domain_add_del_v2", is_add=False, bd_id=bd_id)

    async def add_member(self, bd_id: int, sw_if_index: int) -> None:
        await self.client.call(
            "sw_interface_set_l2_bridge", rx_sw_if_index=sw_if_index, bd_id=bd_id, enable=True
        )

    async def remove_member(self, sw_if_index: int) -> None:
        await self.client.call(
            "sw_interface_set_l2_bridge", rx_sw_if_index=sw_if_index, enable=False
        )


def _validated(
    invalid: dict[str, str],
    check: Callable[[str, bytes], T],
    key: str,
    value: bytes,
    prefix: str,
) -> T | None:
    """``check(key, value)``, or None when it rejects the value; ``invalid`` keeps the
    reason per key until a valid value replaces it."""
    try:
        if "/" in _name_of(key, prefix):  # the name is the VPP tag: one path segment
            raise InvalidValueError(key, "nested keys are not supported: the name has a '/'")
        result = check(key, value)
    except InvalidValueError as exc:
        invalid[key] = exc.reason
        log.warning("%s", exc)
        return None
    invalid.pop(key, None)
    return result


# -- the plugins -------------------------------------------------------------------------


class InterfacePlugin:
    """Keeps VPP's loopbacks as the store wants them; owns the interface IDX mapping."""

    depends_on: Sequence[str] = ()

    def __init__(
        self, vpp: VppDataplane, idx: NameToIndex, label: str, ack_timeout: float = 5
    ) -> None:
        self.name = "interfaces"
        self.prefix = IF_PREFIX.format(label=label)
        self.prefixes = [self.prefix]
        self.vpp = vpp
        self.idx = idx
        self.ack_timeout = ack_timeout
        #: keys whose values were rejected, with the reason (terminal until they change)
        self.invalid: dict[str, str] = {}

    def _parse(self, key: str, value: bytes) -> bool | None:
        """``enabled``, or None for an invalid value: it is not applied, and what VPP
        already has for that name is left alone (in resync and change alike)."""
        return _validated(self.invalid, interface_enabled, key, value, self.prefix)

    async def _acknowledged(self, note: Notification | None) -> None:
        # a watcher's failure fails this resync or change: the next round retries it
        if note is not None:
            await note.wait(self.ack_timeout)

    async def _sync_idx(self, present: Mapping[str, VppInterface]) -> None:
        """Make IDX say what VPP has: after a VPP restart every index is new."""
        for entry in list(self.idx):
            found = present.get(entry.name)
            if found is None or found.sw_if_index != entry.index:
                log.info("interfaces: VPP has no %s at sw_if_index %d", entry.name, entry.index)
                await self._acknowledged(self.idx.delete(entry.name))
        for name, found in present.items():
            if name not in self.idx:
                await self._acknowledged(self.idx.put(name, found.sw_if_index))

    async def _delete(self, name: str, sw_if_index: int) -> None:
        note = self.idx.delete(name)
        if note is not None:
            log.info("interfaces: announced delete of %s on IDX, waiting for watchers", name)
            await self._acknowledged(note)
        await self.vpp.delete_loopback(sw_if_index)
        log.info("interfaces: deleted %s (sw_if_index %d)", name, sw_if_index)

    async def _apply(self, name: str, enabled: bool, found: VppInterface | None) -> None:
        if found is None:
            sw_if_index = await self.vpp.create_loopback(name, enabled)
            log.info("interfaces: created %s (sw_if_index %d)", name, sw_if_index)
            await self._acknowledged(self.idx.put(name, sw_if_index))
        elif found.enabled != enabled:
            await self.vpp.set_enabled(found.sw_if_index, enabled)
            log.info("interfaces: set %s %s", name, "up" if enabled else "down")

    async def resync(self, ev: ResyncEvent) -> None:
        wanted: dict[str, bool] = {}
        invalid: set[str] = set()
        for key, kv in ev.kvs.items():
            enabled = self._parse(key, kv.value)
            if enabled is None:
                invalid.add(_name_of(key, self.prefix))
            else:
                wanted[_name_of(key, self.prefix)] = enabled
        present = await self.vpp.interfaces()
        await self._sync_idx(present)
        for name in sorted(present.keys() - wanted.keys() - invalid):
            await self._delete(name, present[name].sw_if_index)
        for name, enabled in sorted(wanted.items()):
            await self._apply(name, enabled, present.get(name))

    async def change(self, ev: ChangeEvent) -> None:
        present = await self.vpp.interfaces()
        for ch in ev.changes:
            name = _name_of(ch.key, self.prefix)
            if ch.op is Op.DELETE:
                self.invalid.pop(ch.key, None)
                if name in present:
                    await self._delete(name, present[name].sw_if_index)
                continue
            assert ch.value is not None
            enabled = self._parse(ch.key, ch.value)
            if enabled is not None:
                await self._apply(name, enabled, present.get(name))


class BridgeDomainPlugin:
    """Keeps VPP's bridge domains and their members; detaches interfaces announced on IDX.

    Member names resolve to sw_if_indexes through the interface IDX mapping; a member
    whose interface does not exist yet stays pending (never dangling) until IDX has it.
    """

    depends_on: Sequence[str] = ("interfaces",)

    def __init__(self, vpp: VppDataplane, idx: NameToIndex, label: str) -> None:
        self.name = "bridge-domains"
        self.prefix = BD_PREFIX.format(label=label)
        self.prefixes = [self.prefix]
        self.vpp = vpp
        self.idx = idx
        #: bridge domain -> member names, of the valid values
        self.desired: dict[str, set[str]] = {}
        self.invalid: dict[str, str] = {}
        # resync, changes and IDX events each read VPP, then write: one at a time
        self._lock = asyncio.Lock()
        self._sub = idx.watch(self.name)
        self._idx_task = asyncio.ensure_future(self._follow_idx())

    async def _follow_idx(self) -> None:
        async for ev in self._sub:
            try:
                async with self._lock:
                    if ev.op is Op.DELETE:
                        await self._detach(ev.name, ev.index)
                    else:  # a pending member may exist now
                        await self._reconcile(bd for bd, m in self.desired.items() if ev.name in m)
            except Exception as exc:  # the owner's wait raises it
                ev.done(exc)
            else:
                ev.done()

    def _parse(self, key: str, value: bytes) -> set[str] | None:
        return _validated(self.invalid, bridge_domain_members, key, value, self.prefix)

    def _if_name(self, sw_if_index: int) -> str:
        entry = self.idx.lookup_index(sw_if_index)
        return entry.name if entry is not None else f"sw_if_index {sw_if_index}"

    async def _detach(self, name: str, sw_if_index: int) -> None:
        for bd, found in (await self.vpp.bridge_domains()).items():
            if sw_if_index in found.members:
                await self.vpp.remove_member(sw_if_index)
                log.info("bridge-domains: detached %s from %s", name, bd)

    async def _reconcile(self, names: Iterable[str]) -> None:
        """Give bridge domains ``names`` the wanted members that exist, and no others."""
        present = await self.vpp.bridge_domains()
        for bd in sorted(names):
            wanted = {e.index for m in self.desired[bd] if (e := self.idx.lookup(m)) is not None}
            found = present.get(bd)
            if found is None:
                found = VppBridgeDomain(await self.vpp.create_bridge_domain(bd), frozenset())
                log.info("bridge-domains: created %s (bd_id %d)", bd, found.bd_id)
            for sw_if_index in sorted(found.members - wanted):
                await self.vpp.remove_member(sw_if_index)
                log.info("bridge-domains: removed %s from %s", self._if_name(sw_if_index), bd)
            for sw_if_index in sorted(wanted - found.members):
                await self.vpp.add_member(found.bd_id, sw_if_index)
                log.info("bridge-domains: added %s to %s", self._if_name(sw_if_index), bd)

    async def _delete(self, bd: str, found: VppBridgeDomain) -> None:
        for sw_if_index in sorted(found.members):  # VPP refuses to delete a used one
            await self.vpp.remove_member(sw_if_index)
        await self.vpp.delete_bridge_domain(found.bd_id)
        log.info("bridge-domains: deleted %s", bd)

    async def resync(self, ev: ResyncEvent) -> None:
        desired: dict[str, set[str]] = {}
        invalid: set[str] = set()
        for key, kv in ev.kvs.items():
            members = self._parse(key, kv.value)
            if members is None:
                invalid.add(_name_of(key, self.prefix))
            else:
                desired[_name_of(key, self.prefix)] = members
        async with self._lock:
            self.desired = desired
            present = await self.vpp.bridge_domains()
            for bd in sorted(present.keys() - desired.keys() - invalid):
                await self._delete(bd, present[bd])
            await self._reconcile(desired)

    async def change(self, ev: ChangeEvent) -> None:
        async with self._lock:
            present = await self.vpp.bridge_domains()
            changed = []
            for ch in ev.changes:
                bd = _name_of(ch.key, self.prefix)
                members = None
                if ch.op is Op.DELETE:
                    self.invalid.pop(ch.key, None)
                    if bd in present:
                        await self._delete(bd, present[bd])
                else:
                    assert ch.value is not None
                    members = self._parse(ch.key, ch.value)
                if members is None:  # deleted, or invalid: VPP keeps what it has
                    self.desired.pop(bd, None)
                else:
                    self.desired[bd] = members
                    changed.append(bd)
            await self._reconcile(changed)

    async def close(self) -> None:
        self._sub.close()
        self._idx_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._idx_task


# -- wiring ------------------------------------------------------------------------------


def resync_on_vpp_fault(orch: Orchestrator, name: str = "vpp") -> FaultCallback:
    """A ``VppClient(on_fault=...)`` callback: the orchestrator follows the connection.

    A lost or unresponsive VPP makes the agent not in sync (southbound ``name`` down). A
    restart or a reconnect starts a round; a reconnect resyncs even when vpe_pid did not
    change, because calls may have been lost with the connection.
    """

    def on_fault(kind: str, detail: Mapping[str, Any]) -> None:
        if kind == "disconnected":
            orch.set_southbound(name, False, f"VPP disconnected: {detail.get('error')}")
        elif kind == "unresponsive":
            orch.set_southbound(name, False, "VPP unresponsive to the health probe")
        elif kind == "vpp_restarted":
            orch.request_resync(
                f"VPP restarted (vpe_pid {detail['old_vpe_pid']} -> {detail['vpe_pid']})"
            )
        elif kind == "reconnected":
            after = "a restart" if detail.get("vpp_restarted") else "a lost connection"
            orch.request_resync(f"VPP reconnected after {after}")
            orch.set_southbound(name, True)

    return on_fault


@dataclass(frozen=True)
class DataplaneView:
    """Interfaces (name -> admin up) and bridge domains (name -> member names)."""

    interfaces: Mapping[str, bool]
    bridge_domains: Mapping[str, frozenset[str]]

    def __str__(self) -> str:
        bds = {bd: sorted(m) for bd, m in sorted(self.bridge_domains.items())}
        return f"interfaces={sorted(self.interfaces)} bridge_domains={bds}"


def _names(state: Mapping[str, Any]) -> dict[int, str]:
    """sw_if_index -> tag, in a simulator state dump (untagged ones by index)."""
    return {
        i["sw_if_index"]: i["tag"] or f"sw_if_index {i['sw_if_index']}" for i in state["interfaces"]
    }


def simulator_view(sim: Simulator) -> DataplaneView:
    """What the simulator holds, by tag (from its state dump)."""
    state = sim.dump_state()
    names = _names(state)
    return DataplaneView(
        {i["tag"]: i["admin_up"] for i in state["interfaces"] if i["tag"]},
        {
            b["tag"]: frozenset(names[int(sw)] for sw in b["members"])
            for b in state["bridge_domains"]
            if b["tag"]
        },
    )


def store_view(kvs: Iterable[KeyVal], label: str) -> DataplaneView:
    """What the store asks VPP to hold: keys with invalid values ask for nothing, and a
    bridge domain holds only the members that exist."""
    if_p, bd_p = IF_PREFIX.format(label=label), BD_PREFIX.format(label=label)
    interfaces: dict[str, bool] = {}
    members: dict[str, set[str]] = {}
    for kv in kvs:
        with contextlib.suppress(InvalidValueError):
            if kv.key.startswith(if_p):
                interfaces[_name_of(kv.key, if_p)] = interface_enabled(kv.key, kv.value)
            elif kv.key.startswith(bd_p):
                members[_name_of(kv.key, bd_p)] = bridge_domain_members(kv.key, kv.value)
    return DataplaneView(
        interfaces, {bd: frozenset(m & interfaces.keys()) for bd, m in members.items()}
    )


# -- the scripted demo -------------------------------------------------------------------


def _iface(name: str) -> bytes:
    return json.dumps({"name": name, "type": "SOFTWARE_LOOPBACK", "enabled": True}).encode()


def _bd(name: str, members: Sequence[str]) -> bytes:
    return json.dumps({"name": name, "interfaces": [{"name": m} for m in members]}).encode()


def _socket_path(data_dir: Path, cleanup: contextlib.AsyncExitStack) -> str:
    path = str(data_dir.resolve() / "vpp-api.sock")
    if len(os.fsencode(path)) <= _SOCKET_PATH_MAX:
        return path
    short = tempfile.mkdtemp(prefix="ds-")
    cleanup.callback(shutil.rmtree, short, ignore_errors=True)
    return os.path.join(short, "vpp-api.sock")


async def run_demo(data_dir: Path, label: str = "demo") -> int:
    """The scripted demo; returns the process exit code."""
    if_p, bd_p = IF_PREFIX.format(label=label), BD_PREFIX.format(label=label)
    async with contextlib.AsyncExitStack() as cleanup:  # closes in reverse order, always
        store = LocalStore(data_dir / "datasync.db", poll_interval=0.05)
        cleanup.push_async_callback(store.close)
        await store.txn(
            {if_p + "loop0": _iface("loop0"), if_p + "loop1": _iface("loop1"),
             bd_p + "bd1": _bd("bd1", ["loop0", "loop1"])},
            [if_p + "stale0"],
        )  # fmt: skip

        sim = Simulator(strict=True)
        await sim.start(_socket_path(data_dir, cleanup))
        cleanup.push_async_callback(sim.stop)
        assert sim.path is not None
        orch = Orchestrator([store], ResyncConfig(resync_timeout=5, backoff_initial=0.2))
        orch.add_listener(_print_event)
        client = VppClient(
            sim.path,
            timeout=2,
            probe_interval=0.2,
            probe_timeout=1.0,  # a restart drops the socket: the probe only finds a hung VPP
            backoff_max=0.5,
            on_fault=resync_on_vpp_fault(orch),
        )
        cleanup.push_async_callback(client.close)
        await client.connect()
        cleanup.push_async_callback(orch.stop)
        print(f"VPP simulator (strict) on {sim.path}, vpe_pid {sim.state.vpe_pid}")

        # VPP as a previous run left it: stale0 is no longer wanted, but it is still a
        # member of bd1, so it must be detached before it may be deleted.
        vpp = VppDataplane(client)
        seeded = [await vpp.create_loopback(name, True) for name in ("loop0", "stale0")]
        bd1 = await vpp.create_bridge_domain("bd1")
        for sw_if_index in seeded:
            await vpp.add_member(bd1, sw_if_index)
        sim.reset_counters()  # count the agent's writes only

        idx = NameToIndex("interfaces")
        bds = BridgeDomainPlugin(vpp, idx, label)
        cleanup.push_async_callback(bds.close)
        orch.add_plugin(bds)
        ifs = InterfacePlugin(vpp, idx, label)
        orch.add_plugin(ifs)

        async def wanted() -> DataplaneView:
            return store_view((await store.snapshot([if_p, bd_p])).kvs, label)

        async def converge() -> None:
            """Wait until VPP holds what the store wants and the agent is in sync."""
            target = await wanted()
            async with asyncio.timeout(10):
                while not (client.connected and simulator_view(sim) == target):  # noqa: ASYNC110 - polls the simulator
                    await asyncio.sleep(0.01)
            await orch.wait_in_sync(10)
            print(f"  VPP: {simulator_view(sim)}")

        earlier_boots: list[dict[str, Any]] = []  # the simulator's counters die with a boot
        step = _Steps()
        try:
            step(
                "start-up resync: the store wants loop0, loop1 and bd1{loop0, loop1}\n"
                f"   VPP has {simulator_view(sim)}"
            )
            await orch.start()
            await converge()

            step("live change: add loop2 to bd1, and a malformed value")
            await store.txn({if_p + "loop2": _iface("loop2"),
                             bd_p + "bd1": _bd("bd1", ["loop0", "loop1", "loop2"])})  # fmt: skip
            await store.put(if_p + "broken", b"{not json")
            await converge()
            print(f"  rejected keys: {ifs.invalid}")

            step("live delete: loop1 (IDX delete -> detach from bd1 -> delete)")
            await store.delete(if_p + "loop1")
            await converge()

            step("fault: VPP restarts and loses its state; the client reconnects")
            earlier_boots.append(sim.counters())
            old_pid = sim.state.vpe_pid
            sim.restart()
            print(f"  simulator restarted: vpe_pid {old_pid} -> {sim.state.vpe_pid}")
            await converge()
        except TimeoutError:
            print("\n!! timed out waiting for VPP to hold what the store wants")
        except DatasyncError as exc:  # escalation, a closed store, a failed seeding call
            print(f"\n!! the demo stopped: {type(exc).__name__}: {exc}")
        code = _report(orch, sim, await wanted(), [*earlier_boots, sim.counters()])
    return code


def _report(
    orch: Orchestrator, sim: Simulator, wanted: DataplaneView, boots: list[dict[str, Any]]
) -> int:
    """Print the outcome; 0 only when in sync, without violations, and VPP as wanted."""
    st = orch.status()
    state = sim.dump_state()
    violations = sum(b["violations"] for b in boots)
    matches = simulator_view(sim) == wanted
    names = _names(state)
    print()
    print(
        f"status: {st.state.name}, in_sync={st.in_sync}, rounds={st.rounds}, "
        f"failed_rounds={st.failed_rounds}"
    )
    print(f"VPP simulator (vpe_pid {state['vpe_pid']}, restarts: {len(boots) - 1}):")
    ifaces = [
        f"{i['tag']} (sw_if_index {i['sw_if_index']}, {'up' if i['admin_up'] else 'down'})"
        for i in state["interfaces"]
        if i["tag"]
    ]
    print(f"  interfaces: {', '.join(ifaces) or '-'}")
    domains = [
        f"{b['tag']} (bd_id {b['bd_id']}): "
        + (", ".join(sorted(names[int(sw)] for sw in b["members"])) or "no members")
        for b in state["bridge_domains"]
        if b["tag"]
    ]
    print(f"  bridge domains: {'; '.join(domains) or '-'}")
    print(f"  dangling-reference violations: {violations}")
    for n, boot in enumerate(boots, 1):
        writes = "; ".join(
            f"{kind} " + " ".join(f"{op}={count}" for op, count in ops.items() if count)
            for kind, ops in sorted(boot["writes"].items())
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
    from ..buffer import IMPLEMENTATION

    print(f"datasync demo on uvloop; event buffer: {IMPLEMENTATION} ({implementation()})")
    if args.data_dir is not None:
        return uvloop.run(run_demo(args.data_dir, args.label))
    with tempfile.TemporaryDirectory(prefix="datasync-demo-") as tmp:
        return uvloop.run(run_demo(Path(tmp), args.label))
