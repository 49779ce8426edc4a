"""The interfaces plugin: loopback, TAP and memif interfaces, with MAC, MTU, VRF and IPs.

An interface is the agent's when VPP holds its name in the interface tag (vpp-agent does
the same); untagged ones (local0, anything made by hand) and tagged interfaces of other
kinds are never touched. The plugin owns the interface IDX map (name -> sw_if_index):
before it deletes an interface it announces the delete there and waits until every
watcher (bridge domains, routes) detached it. An interface with ``vrf`` waits (PENDING)
for that VRF table; when a table goes away the plugin unbinds its interfaces first.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..idx import IdxEvent
from .base import U32_MAX, Call, VppContext, VppPlugin, vrf_name, vrf_table
from .models import IF_PREFIX, IfType, Interface, IPInterface, check_interface, decode, parse_mac
from .state import KeyState

__all__ = ["InterfacePlugin"]

log = logging.getLogger("datasync.plugins.interfaces")

#: if_status_flags: IF_STATUS_API_FLAG_ADMIN_UP
ADMIN_UP = 1
#: sw_interface_details.interface_dev_type of a loopback
LOOPBACK_DEV_TYPE = "Loopback"
#: memif_role: MEMIF_ROLE_API_MASTER, MEMIF_ROLE_API_SLAVE
MEMIF_MASTER, MEMIF_SLAVE = 0, 1


@dataclass(slots=True)
class VppInterface:
    """What VPP holds for one of the agent's interfaces."""

    sw_if_index: int
    type: IfType
    enabled: bool = False
    mac: bytes = b""
    mtu: int = 0
    addresses: set[IPInterface] = field(default_factory=set)
    vrf: list[int] = field(default_factory=lambda: [0, 0])  # [ipv4, ipv6]
    #: the link parameters that cannot change without re-creating the interface
    link: tuple[Any, ...] = ()


def _families(m: Interface) -> tuple[bool, bool]:
    """Which address families the interface's ``vrf`` binds: IPv4 unless it has only
    IPv6 addresses, IPv6 when it has any (as vpp-agent)."""
    v6 = any(":" in a for a in m.ip_addresses)
    v4 = not v6 or any(":" not in a for a in m.ip_addresses)
    return v4, v6


class InterfacePlugin(VppPlugin[Interface]):
    """Keeps VPP's loopback, TAP and memif interfaces as the store wants them."""

    name = "interfaces"
    depends_on: Sequence[str] = ("vrfs",)

    def __init__(self, ctx: VppContext, label: str) -> None:
        super().__init__(ctx, IF_PREFIX.format(label=label))
        self.idx = ctx.interfaces
        #: by name (the tag)
        self.have: dict[str, VppInterface] = {}
        #: memif socket filename -> socket_id (0: VPP's default socket)
        self.sockets: dict[str, int] = {"": 0}
        #: the parsed addresses of every desired key (parsed once, when validated)
        self.addresses: dict[str, list[IPInterface]] = {}
        #: loopback instances VPP has (anyone's); names adopted untagged (tag them)
        self.loop_instances: set[int] = set()
        self.untagged: set[str] = set()
        #: name -> loopback instance, written before the create: a crash between the
        #: create and the tag leaves an untagged loopback the next agent can attribute
        self.creating = ctx.ledger.of(self.name + ".creating")
        self.follow(ctx.vrfs, self._vrf_event)

    # -- values ------------------------------------------------------------------------

    def parse(self, key: str, value: bytes) -> Interface:
        m = decode(Interface, key, value)
        name = self.name_of(key)
        if not m.name:
            m.name = name  # an absent name is the key's
        self.addresses[key] = check_interface(key, name, m)
        return m

    def prune(self) -> None:
        self.addresses = {k: v for k, v in self.addresses.items() if k in self.desired}

    def dependencies(self, key: str) -> list[tuple[str, bool]]:
        m = self.desired.get(key)
        if m is None or not m.vrf:
            return []
        names = [
            vrf_name(v6, m.vrf) for v6, n in zip((False, True), _families(m), strict=True) if n
        ]
        return [(n, n in self.ctx.vrfs) for n in names]

    def _missing_vrfs(self, m: Interface) -> list[str]:
        return [
            vrf_name(v6, m.vrf)
            for v6, needed in zip((False, True), _families(m), strict=True)
            if needed and m.vrf and vrf_name(v6, m.vrf) not in self.ctx.vrfs
        ]

    def _same_link(self, h: VppInterface, m: Interface) -> bool:
        if h.type is not m.type:
            return False
        want = self._link(m)
        if m.type is IfType.TAP and not want[0]:
            return True  # no host name asked for: whatever VPP named it
        if m.type is IfType.MEMIF and want[3] is None:
            # a socket this agent did not register (it restarted): VPP has no dump of
            # socket filenames we use, so only id, role and mode can be compared
            return h.link[:3] == want[:3]
        return h.link == want

    def _link(self, m: Interface) -> tuple[Any, ...]:
        if m.type is IfType.TAP:
            return (m.tap.host_if_name if m.tap is not None else "",)
        if m.type is IfType.MEMIF:
            memif = m.memif
            if memif is None:
                return (0, MEMIF_SLAVE, 0, self.sockets.get("", 0))
            socket = self.sockets.get(memif.socket_filename)
            role = MEMIF_MASTER if memif.master else MEMIF_SLAVE
            return (memif.id, role, int(memif.mode), socket)
        return ()

    # -- reading VPP -------------------------------------------------------------------

    def forget(self) -> None:
        self.have = {}
        self.sockets = {"": 0}

    async def read(self) -> None:
        c = self.client
        details = await c.dump("sw_interface_dump", sw_if_index=U32_MAX)
        taps = {
            int(d.sw_if_index): d
            for d in await c.dump("sw_interface_tap_v2_dump", sw_if_index=U32_MAX)
        }
        memifs = {int(d.sw_if_index): d for d in await c.dump("memif_dump")}
        have: dict[str, VppInterface] = {}
        instances: set[int] = set()
        pending = {int(i): n for n, i in self.creating.items()}
        self.untagged = set()
        for d in details:
            index = int(d.sw_if_index)
            instance = _loop_instance(d)
            if instance is not None:
                instances.add(instance)
            if not d.tag:
                name = pending.get(instance) if instance is not None else None
                if name is None or name in have:
                    continue  # not the agent's (local0, an operator's)
                self.untagged.add(name)  # made by an agent that died before tagging it
                up = bool(int(d.flags) & ADMIN_UP)
                mac, mtu = bytes(d.l2_address), int(d.mtu[0])
                have[name] = VppInterface(index, IfType.SOFTWARE_LOOPBACK, up, mac, mtu)
                log.info("interfaces: adopted untagged loopback %s (instance %d)", name, instance)
                continue
            link: tuple[Any, ...] = ()
            if index in taps:
                kind = IfType.TAP
                link = (str(taps[index].host_if_name),)
            elif index in memifs:
                kind = IfType.MEMIF
                mm = memifs[index]
                link = (int(mm.id), int(mm.role), int(mm.mode), int(mm.socket_id))
            elif d.interface_dev_type == LOOPBACK_DEV_TYPE:
                kind = IfType.SOFTWARE_LOOPBACK
            else:
                continue  # tagged, but a kind this agent does not make: someone else's
            have[str(d.tag)] = VppInterface(
                index, kind, bool(int(d.flags) & ADMIN_UP), bytes(d.l2_address), int(d.mtu[0]),
                link=link,
            )  # fmt: skip
        ifaces = list(have.values())
        reqs = [
            {"sw_if_index": i.sw_if_index, "is_ipv6": v6} for i in ifaces for v6 in (False, True)
        ]
        for n, found in enumerate(await self.dump_many("ip_address_dump", reqs)):
            ifaces[n // 2].addresses.update(d.prefix for d in found)  # IPv4/6Interface
        for n, reply in enumerate(
            await self.client.call_many("sw_interface_get_table", reqs, check=False)
        ):
            if int(reply.retval) == 0:
                ifaces[n // 2].vrf[n % 2] = int(reply.vrf_id)
        self.have = have
        self.loop_instances = instances
        for name, inst in list(self.creating.items()):
            if int(inst) not in instances:  # the create never happened
                self.ctx.ledger.discard(self.name + ".creating", name)
        self.ctx.ledger.save()
        await self._sync_idx()

    async def _sync_idx(self) -> None:
        """Make IDX say what VPP has (after a VPP restart every index is new)."""
        stale = [
            e.name
            for e in self.idx
            if (h := self.have.get(e.name)) is None or h.sw_if_index != e.index
        ]
        await self.announce_deletes(self.idx, stale)
        for name, h in self.have.items():
            if name not in self.idx:
                self.idx.put(name, h.sw_if_index, self.ctx.epoch)

    # -- applying ----------------------------------------------------------------------

    async def apply(self, keys: Sequence[str], full: bool) -> None:
        work: dict[str, Interface] = {}
        deletes: dict[str, str] = {}  # name -> key (or "" for an orphan)
        recreate: dict[str, str] = {}  # name -> key
        for key, name, m in self.to_apply(keys, self.have, deletes):
            missing = self._missing_vrfs(m)
            if missing:
                self.pending(key, missing, f"waiting for VRF table {', '.join(missing)}")
                continue
            h = self.have.get(name)
            if h is not None and not self._same_link(h, m):
                deletes[name] = ""  # re-create: detach and delete first
                recreate[name] = key
            work[key] = m
        if full:
            self.orphans(self.have, deletes)
        if deletes:
            for key in await self._delete(deletes):
                work.pop(key, None)
        for name, key in recreate.items():
            if name in self.have and key in work:  # its dependents could not be detached
                del work[key]
                status = self.states.get(key)
                if status is None or status.state is not KeyState.RETRYING:
                    self.retry_later(key, "re-create waits for the old interface to be deleted")
        if work:
            await self._configure(work)

    async def _delete(self, deletes: dict[str, str]) -> set[str]:
        blocked = await self.announce_deletes(self.idx, deletes)
        calls = []
        for name, key in deletes.items():
            if name in blocked:
                if key:
                    self.retry_later(key, f"delete waits for its dependents: {blocked[name]}")
                continue
            h = self.have[name]
            msg = _DELETE[h.type]

            def gone(_r: Any, name: str = name) -> None:
                self.have.pop(name, None)
                log.info("interfaces: deleted %s", name)

            calls.append(
                Call(key or name, msg, {"sw_if_index": h.sw_if_index}, "delete", msg, gone)
            )
        return await self.send(calls) | {deletes[n] for n in blocked if deletes[n]}

    async def _configure(self, work: dict[str, Interface]) -> None:
        failed: set[str] = set()
        names = {key: m.name for key, m in work.items()}

        def alive() -> list[tuple[str, Interface]]:
            return [(k, m) for k, m in work.items() if k not in failed]

        # 1. memif sockets that VPP does not know yet
        socket_calls: list[Call] = []
        for key, m in alive():
            if m.type is IfType.MEMIF and m.memif is not None and names[key] not in self.have:
                filename = m.memif.socket_filename
                if filename not in self.sockets and not any(
                    c.fields["socket_filename"] == filename for c in socket_calls
                ):

                    def registered(r: Any, filename: str = filename) -> None:
                        self.sockets[filename] = int(r.socket_id)

                    socket_calls.append(
                        Call(key, "memif_socket_filename_add_del_v2",
                             {"is_add": True, "socket_id": U32_MAX, "socket_filename": filename},
                             "create", f"register memif socket {filename}", registered)
                    )  # fmt: skip
        failed |= await self.send(socket_calls)

        # 2. create what is missing (a loopback's instance is in the ledger first)
        created: set[str] = set()
        exists: list[str] = []
        calls = []
        taken = self.loop_instances | {int(i) for i in self.creating.values()}
        for key, m in alive():
            name = names[key]
            if name in self.have or m.type is not IfType.SOFTWARE_LOOPBACK:
                continue
            instance = next(i for i in itertools.count() if i not in taken)
            taken.add(instance)
            self.ctx.ledger.put(self.name + ".creating", name, str(instance))
        self.ctx.ledger.save()
        for key, m in alive():
            name = names[key]
            if name in self.have:
                continue
            call = self._create_call(key, m, created)
            if m.type is IfType.MEMIF:
                call.exists = lambda _r, key=key: exists.append(key)
            calls.append(call)
        failed |= await self.send(calls)
        if exists:
            failed |= await self._adopt_memifs({k: work[k] for k in exists}, created)

        # 3. tag what was created without one (the tag is how a resync finds it again)
        calls = []
        for key, m in alive():
            name = names[key]
            if (name in created or name in self.untagged) and m.type is not IfType.TAP:
                calls.append(
                    Call(key, "sw_interface_tag_add_del",
                         {"is_add": True, "sw_if_index": self.have[name].sw_if_index, "tag": name},
                         "update", "set the tag")
                )  # fmt: skip
        tag_failed = await self.send(calls)
        if tag_failed:
            # an untagged interface is invisible to every later resync: do not leave it
            await self.send([
                Call(k, _DELETE[work[k].type], {"sw_if_index": self.have.pop(names[k]).sw_if_index},
                     "delete", "delete the untagged interface")
                for k in tag_failed
            ])  # fmt: skip
        failed |= tag_failed
        for key, _m in alive():
            self.untagged.discard(names[key])
            self.ctx.ledger.discard(self.name + ".creating", names[key])
        self.ctx.ledger.save()
        for key, _m in alive():
            name = names[key]
            entry = self.idx.lookup(name)
            if entry is None or entry.index != self.have[name].sw_if_index:
                self.idx.put(name, self.have[name].sw_if_index, self.ctx.epoch)

        # 4. addresses out (those not wanted, and all of a family whose table changes)
        want_vrf: dict[str, list[int]] = {}
        calls = []
        for key, m in alive():
            h = self.have[names[key]]
            v4, v6 = _families(m)
            want = [m.vrf if v4 else 0, m.vrf if v6 else 0]
            want_vrf[key] = want
            wanted = set(self.addresses[key])
            for addr in sorted(h.addresses, key=str):
                if addr not in wanted or want[addr.version == 6] != h.vrf[addr.version == 6]:
                    calls.append(self._address_call(key, h, addr, False))
        failed |= await self.send(calls)

        # 5. tables, MAC, MTU (independent of each other)
        calls = []
        for key, m in alive():
            h = self.have[names[key]]
            for fam in (0, 1):
                if want_vrf[key][fam] != h.vrf[fam]:

                    def bound(
                        _r: Any, h: VppInterface = h, fam: int = fam, vrf: int = want_vrf[key][fam]
                    ) -> None:
                        h.vrf[fam] = vrf

                    table = want_vrf[key][fam]
                    calls.append(
                        Call(key, "sw_interface_set_table",
                             {"sw_if_index": h.sw_if_index, "is_ipv6": bool(fam), "vrf_id": table},
                             "update", f"bind to VRF {table}", bound)
                    )  # fmt: skip
            if m.phys_address:
                mac = parse_mac(key, m.phys_address, "phys_address")
                if mac != h.mac:

                    def mac_set(_r: Any, h: VppInterface = h, mac: bytes = mac) -> None:
                        h.mac = mac

                    calls.append(
                        Call(key, "sw_interface_set_mac_address",
                             {"sw_if_index": h.sw_if_index, "mac_address": mac},
                             "update", "set the MAC address", mac_set)
                    )  # fmt: skip
            if m.mtu and m.mtu != h.mtu:

                def mtu_set(_r: Any, h: VppInterface = h, mtu: int = m.mtu) -> None:
                    h.mtu = mtu

                calls.append(
                    Call(key, "sw_interface_set_mtu",
                         {"sw_if_index": h.sw_if_index, "mtu": [m.mtu, 0, 0, 0]},
                         "update", f"set MTU {m.mtu}", mtu_set)
                )  # fmt: skip
        failed |= await self.send(calls)

        # 6. addresses in, then admin state
        calls = []
        for key, _m in alive():
            h = self.have[names[key]]
            for addr in self.addresses[key]:
                if addr not in h.addresses:
                    calls.append(self._address_call(key, h, addr, True))
        failed |= await self.send(calls)
        calls = []
        for key, m in alive():
            h = self.have[names[key]]
            if h.enabled != m.enabled:

                def flags_set(_r: Any, h: VppInterface = h, up: bool = m.enabled) -> None:
                    h.enabled = up

                calls.append(
                    Call(key, "sw_interface_set_flags",
                         {"sw_if_index": h.sw_if_index, "flags": ADMIN_UP if m.enabled else 0},
                         "update", "set admin " + ("up" if m.enabled else "down"), flags_set)
                )  # fmt: skip
        failed |= await self.send(calls)
        for key, _m in alive():
            self.configured(key)

    async def _adopt_memifs(self, work: dict[str, Interface], created: set[str]) -> set[str]:
        """VPP already has a memif with this id on this socket: read it back. An untagged
        one is this agent's own from a create whose tag was lost (a crash or a dropped
        reply): adopt it. A tagged one is another key's: FAILED."""
        details = {int(d.sw_if_index): d for d in await self.client.dump("sw_interface_dump")}
        found = {(int(d.socket_id), int(d.id)): d for d in await self.client.dump("memif_dump")}
        failed = set()
        adopted = []
        for key, m in work.items():
            memif = m.memif
            socket = self.sockets.get(memif.socket_filename if memif else "", 0)
            d = found.get((socket, memif.id if memif else 0))
            sw = details.get(int(d.sw_if_index)) if d is not None else None
            ours = {h.sw_if_index: n for n, h in self.have.items()}
            if d is None or sw is None or sw.tag or int(d.sw_if_index) in ours:
                owner = sw.tag if sw is not None and sw.tag else ""
                owner = owner or (ours.get(int(d.sw_if_index), "") if d is not None else "")
                other = f" by {owner}" if owner else ""
                reason = f"memif id {memif.id if memif else 0} is in use on its socket{other}"
                self.states.set(key, KeyState.FAILED, reason)
                self._failed_at[key] = self.values.get(key, b"")
                failed.add(key)
                continue
            link = (int(d.id), int(d.role), int(d.mode), int(d.socket_id))
            h = VppInterface(
                int(d.sw_if_index), IfType.MEMIF, bool(int(sw.flags) & ADMIN_UP),
                bytes(sw.l2_address), int(sw.mtu[0]), link=link,
            )  # fmt: skip
            self.have[m.name] = h
            adopted.append(h)
            created.add(m.name)  # untagged: the tag stage names it
            log.info("interfaces: adopted untagged memif %s", m.name)
        reqs = [
            {"sw_if_index": h.sw_if_index, "is_ipv6": v6} for h in adopted for v6 in (False, True)
        ]
        for n, addrs in enumerate(await self.dump_many("ip_address_dump", reqs)):
            adopted[n // 2].addresses.update(a.prefix for a in addrs)
        return failed

    def _create_call(self, key: str, m: Interface, created: set[str]) -> Call:
        name = m.name
        mac = parse_mac(key, m.phys_address, "phys_address") if m.phys_address else b""

        def made(r: Any) -> None:
            link = self._link(m)
            self.have[name] = VppInterface(int(r.sw_if_index), m.type, mac=mac, mtu=0, link=link)
            if m.type is IfType.SOFTWARE_LOOPBACK:
                self.loop_instances.add(int(self.creating[name]))  # taken now
                if not mac:
                    self.have[name].mac = b""  # VPP picks one: never compared
            created.add(name)
            log.info("interfaces: created %s (sw_if_index %d)", name, int(r.sw_if_index))

        if m.type is IfType.TAP:
            tap = m.tap
            fields: dict[str, Any] = {
                "id": U32_MAX,
                "use_random_mac": not mac,
                "mac_address": mac or bytes(6),
                "tag": name,
            }
            if tap is not None:
                fields["rx_ring_sz"] = tap.rx_ring_size
                fields["tx_ring_sz"] = tap.tx_ring_size
                if tap.host_if_name:
                    fields["host_if_name_set"] = True
                    fields["host_if_name"] = tap.host_if_name
            return Call(key, "tap_create_v3", fields, "create", "create the TAP", made)
        if m.type is IfType.MEMIF:
            memif = m.memif
            fields = {"socket_id": 0, "role": MEMIF_SLAVE, "hw_addr": mac or bytes(6)}
            if memif is not None:
                fields.update(
                    socket_id=self.sockets[memif.socket_filename],
                    role=MEMIF_MASTER if memif.master else MEMIF_SLAVE,
                    mode=int(memif.mode),
                    id=memif.id,
                    secret=memif.secret,
                    ring_size=memif.ring_size,
                    buffer_size=memif.buffer_size,
                    rx_queues=memif.rx_queues,
                    tx_queues=memif.tx_queues,
                )
            return Call(key, "memif_create_v2", fields, "create", "create the memif", made)
        instance = int(self.creating[name])
        fields = {"mac_address": mac or bytes(6), "is_specified": True, "user_instance": instance}
        return Call(key, "create_loopback_instance", fields, "create", "create the loopback", made)

    def _address_call(self, key: str, h: VppInterface, addr: IPInterface, add: bool) -> Call:
        def done(_r: Any) -> None:
            if add:
                h.addresses.add(addr)
            else:
                h.addresses.discard(addr)

        return Call(
            key,
            "sw_interface_add_del_address",
            {"sw_if_index": h.sw_if_index, "is_add": add, "prefix": str(addr)},
            "create" if add else "delete",
            f"{'add' if add else 'remove'} address {addr}",
            done,
        )

    # -- VRF tables coming and going -----------------------------------------------------

    async def _vrf_event(self, ev: IdxEvent) -> None:
        await self.ensure_read()
        v6 = ev.name.startswith("IPV6/")
        table = vrf_table(ev.index)
        calls = []
        bound = []
        for name, h in self.have.items():
            if h.vrf[v6] != table:
                continue
            key = self.prefix + name
            bound.append((key, h))
            for addr in sorted(h.addresses, key=str):
                if (addr.version == 6) == bool(v6):
                    calls.append(self._address_call(key, h, addr, False))
        await self.send(calls)
        unbind = []
        for key, h in bound:

            def unbound(_r: Any, h: VppInterface = h) -> None:
                h.vrf[v6] = 0

            unbind.append(
                Call(key, "sw_interface_set_table",
                     {"sw_if_index": h.sw_if_index, "is_ipv6": v6, "vrf_id": 0},
                     "update", f"unbind from VRF {table}", unbound)
            )  # fmt: skip
        failed = await self.send(unbind)
        if failed:
            raise RuntimeError(f"could not unbind {', '.join(sorted(failed))} from VRF {ev.name}")
        for key, _h in bound:
            m = self.desired.get(key)
            if m is not None:
                missing = self._missing_vrfs(m)
                self.pending(key, missing, f"waiting for VRF table {', '.join(missing)}")
        log.info("interfaces: unbound %d interface(s) from VRF %s", len(bound), ev.name)


def _loop_instance(d: Any) -> int | None:
    """A loopback's instance (VPP names it loop<N>), or None for other interfaces."""
    if d.interface_dev_type != LOOPBACK_DEV_TYPE:
        return None
    text = str(d.interface_name).removeprefix("loop")
    return int(text) if text.isdigit() else None


_DELETE = {
    IfType.TAP: "tap_delete_v2",
    IfType.MEMIF: "memif_delete",
    IfType.SOFTWARE_LOOPBACK: "delete_loopback",
}
