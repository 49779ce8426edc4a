"""The simulator's dataplane: interfaces, addresses, VRFs, bridge domains and routes.

Pure Python and wire-agnostic: handlers take plain values (ints, bytes, ``ipaddress``
objects) and return ``(retval, reply_fields)`` with VPP's real retvals (named in
:mod:`datasync.vpp.retvals`). Every write records what it did to one object
kind (create/update/delete/noop) through :meth:`Dataplane.record`, so tests can assert
"a no-op resync wrote nothing". Interface events are batched per sw_if_index until the
server flushes them, like VPP's interface event process.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable
from typing import Any

from ..retvals import (
    ADDRESS_FOUND_FOR_INTERFACE,
    ADDRESS_IN_USE,
    ADDRESS_NOT_FOUND_FOR_INTERFACE,
    BD_ALREADY_EXISTS,
    BD_ALREADY_HAS_BVI,
    BD_ID_EXCEED_MAX,
    BD_IN_USE,
    BD_NOT_MODIFIABLE,
    ENTRY_ALREADY_EXISTS,
    FEATURE_DISABLED,
    INVALID_ARGUMENT,
    INVALID_INTERFACE,
    INVALID_PREFIX_LENGTH,
    INVALID_REGISTRATION,
    INVALID_SW_IF_INDEX,
    INVALID_VALUE,
    NO_MATCHING_INTERFACE,
    NO_PATHS_IN_ROUTE,
    NO_SUCH_ENTRY,
    NO_SUCH_FIB,
    NON_ETHERNET,
    OK,
    SUBIF_ALREADY_EXISTS,
    UNEXPECTED_INTF_STATE,
    UNSUPPORTED,
)
from .model import (
    ADMIN_UP,
    BD_ID_MAX,
    LINK_UP,
    PATH_DROP,
    PATH_LOCAL,
    PATH_NORMAL,
    PATH_SOURCE_LOOKUP,
    PREFIX_MASKS,
    U32_MAX,
    V4_SPECIALS,
    V6_LOCAL_SPECIALS,
    V6_SPECIALS,
    ZERO_MAC,
    AddressIndex,
    BridgeDomain,
    FibEntry,
    FibPath,
    Instances,
    Interface,
    IPAddress,
    IPNetwork,
    PathSpec,
    Route,
    RouteRef,
    Table,
    dedupe,
    mac_bytes,
)


class Dataplane:
    """All dataplane state of one simulator "boot" (a restart builds a new one).

    Every write the plugins use costs O(1) or O(log n) here (indexes by kind, instance,
    memif id, address prefix, route reference), and every dump costs what it returns.
    Dump orders follow VPP's, not insertion: routes in a hash order seeded from ``rng``,
    bridge domain members with the BVI first.
    """

    def __init__(
        self,
        vpe_pid: int,
        *,
        index_offset: int = 0,
        rng: random.Random | None = None,
        strict: bool = False,
    ) -> None:
        self.vpe_pid = vpe_pid
        self.strict = strict
        self.rng = rng or random.Random()
        #: salts the dump orders that VPP takes from its hash tables
        self._order_salt = self.rng.getrandbits(60)
        self.interfaces: dict[int, Interface] = {}
        self._next_index = 1 + index_offset
        self._free_indices: list[int] = []
        self._by_kind: dict[str, set[int]] = {}
        self._instances: dict[str, Instances] = {"loopback": Instances(), "tap": Instances()}
        #: (socket_id, memif id) -> sw_if_index, and memifs per socket_id
        self._memifs: dict[tuple[int, int], int] = {}
        self._memifs_on_socket: dict[int, int] = {}
        #: (vrf, is_ip6) -> the addresses of the interfaces bound to that VRF
        self._addresses: dict[tuple[int, bool], AddressIndex] = {}
        #: ("if", sw_if_index) or ("table", (table_id, is_ip6)) -> the API routes whose
        #: paths go through that interface or resolve in that table
        self._refs: dict[tuple[str, Any], set[RouteRef]] = {}
        self._stats_next = 1
        self._stats_free: list[int] = []
        self.bridge_domains: dict[int, BridgeDomain] = {}
        self._bd_indexes = Instances()
        self._bd_indexes.take(0)  # bd 0, VPP's own, which no dump shows
        self.tables: dict[tuple[int, bool], Table] = {}
        self._new_table(0, False, "ipv4-VRF:0")
        self._new_table(0, True, "ipv6-VRF:0")
        self.memif_sockets: dict[int, str] = {0: "/run/vpp/memif.sock"}
        self._memif_socket_seed = 1013904223
        self._bd_seed = 7271263
        self.violations: list[str] = []
        #: sw_if_index -> [event bits, deleted]; flushed by the server.
        self.pending_events: dict[int, list[int]] = {}
        self.on_event: Callable[[], None] | None = None
        #: (kind, op) -> count of API writes; ops: create, update, delete, noop.
        self.counters: dict[tuple[str, str], int] = {}
        local0 = Interface(0, "local0", "local", "local", link_mtu=0, mtu=[0, 0, 0, 0])
        local0.ethernet = False
        self.interfaces[0] = local0
        self._by_kind["local"] = {0}
        self.tables[(0, False)].bound.add(0)
        self.tables[(0, True)].bound.add(0)

    # -- bookkeeping -------------------------------------------------------------------

    def record(self, kind: str, op: str) -> None:
        key = (kind, op)
        self.counters[key] = self.counters.get(key, 0) + 1

    def _violation(self, text: str) -> None:
        if self.strict:
            self.violations.append(text)

    def _event(self, sw_if_index: int, bits: int, deleted: bool = False) -> None:
        pending = self.pending_events.get(sw_if_index)
        if pending is None:
            self.pending_events[sw_if_index] = [bits, int(deleted)]
            if self.on_event is not None:
                self.on_event()
        else:
            pending[0] |= bits
            pending[1] |= int(deleted)

    def take_events(self) -> list[tuple[int, int, int]]:
        """The batched interface events since the last call: (sw_if_index, flags, deleted).

        Their order within one batch varies, as on a real VPP (seeded by ``rng``)."""
        events = [(idx, bits, deleted) for idx, (bits, deleted) in self.pending_events.items()]
        self.pending_events.clear()
        if len(events) > 1:
            self.rng.shuffle(events)
        return events

    def _order(self, key: Any) -> int:
        return hash((self._order_salt, key))

    def _alloc_index(self) -> int:
        if self._free_indices:
            return self._free_indices.pop()  # LIFO, like VPP's pool free list
        index = self._next_index
        self._next_index += 1
        return index

    def _alloc_stats(self) -> int:
        # one pool for every FIB entry, VPP's own ones included (load-balance indexes)
        if self._stats_free:
            return self._stats_free.pop()
        index = self._stats_next
        self._stats_next += 1
        return index

    def _add_interface(self, iface: Interface, link_up_event: bool = False) -> Interface:
        self.interfaces[iface.sw_if_index] = iface
        self._by_kind.setdefault(iface.kind, set()).add(iface.sw_if_index)
        for family, vrf in enumerate(iface.vrf):
            table = self.tables.get((vrf, bool(family)))
            if table is not None:
                table.bound.add(iface.sw_if_index)
        self._event(iface.sw_if_index, LINK_UP if link_up_event else 0)
        return iface

    def _remove_interface(self, sw_if_index: int) -> None:
        iface = self.interfaces.pop(sw_if_index)
        self._by_kind[iface.kind].discard(sw_if_index)
        if iface.bd_id is not None:
            self._violation(
                f"interface {iface.name} ({sw_if_index}) deleted while in bridge domain "
                f"{iface.bd_id}"
            )
            self._leave_bd(iface)
        for ref in sorted(self._refs.get(("if", sw_if_index), ()), key=str):
            tkey, prefix = ref
            table = self.tables[tkey]
            route = table.routes[prefix]
            self._violation(
                f"interface {iface.name} ({sw_if_index}) deleted while route "
                f"{prefix} in table {table.table_id} goes through it"
            )
            kept = [p for p in route.paths if p.sw_if_index != sw_if_index]
            if kept:
                self._set_paths(table, route, kept)
            else:
                self._drop_route(table, prefix)
        for addr, length in list(iface.addresses):
            self._unindex_address(iface, addr, length)
        iface.addresses.clear()
        for family, vrf in enumerate(iface.vrf):
            bound = self.tables.get((vrf, bool(family)))
            if bound is not None:
                bound.bound.discard(sw_if_index)
        instances = self._instances.get(iface.kind)
        if instances is not None:
            instances.release(iface.instance)
        if iface.kind == "memif":
            x = iface.extra
            self._memifs.pop((x["socket_id"], x["id"]), None)
            self._memifs_on_socket[x["socket_id"]] -= 1
        self._free_indices.append(sw_if_index)
        self._event(sw_if_index, 0, deleted=True)

    def get(self, sw_if_index: int) -> Interface | None:
        """The interface at ``sw_if_index`` or None."""
        return self.interfaces.get(sw_if_index)

    def of_kind(self, kind: str) -> list[Interface]:
        """The interfaces of one kind (loopback, tap, memif, local) in sw_if_index order."""
        return [self.interfaces[i] for i in sorted(self._by_kind.get(kind, ()))]

    def by_name(self, name: str) -> Interface | None:
        for iface in self.interfaces.values():
            if iface.name == name:
                return iface
        return None

    def _random_mac(self) -> bytes:
        return bytes([0x02, 0xFE, *self.rng.randbytes(4)])

    # -- loopback ----------------------------------------------------------------------

    def create_loopback(
        self, mac: bytes = ZERO_MAC, instance: int | None = None
    ) -> tuple[int, dict[str, Any]]:
        instances = self._instances["loopback"]
        if instance is None:
            instance = instances.take_lowest()
        elif instance in instances.used:
            return INVALID_REGISTRATION, {}
        else:
            instances.take(instance)
        if mac == ZERO_MAC:
            mac = bytes([0xDE, 0xAD, 0, 0, 0, instance & 0xFF])
        index = self._alloc_index()
        self._add_interface(
            Interface(index, f"loop{instance}", "loopback", "Loopback", instance, mac)
        )
        self.record("interface", "create")
        return OK, {"sw_if_index": index}

    def delete_loopback(self, sw_if_index: int) -> tuple[int, dict[str, Any]]:
        iface = self.interfaces.get(sw_if_index)
        if iface is None or iface.kind != "loopback":
            return INVALID_SW_IF_INDEX, {}
        self._remove_interface(sw_if_index)
        self.record("interface", "delete")
        return OK, {}

    # -- tap ---------------------------------------------------------------------------

    def tap_create(self, req: Any, tag: str = "") -> tuple[int, dict[str, Any]]:
        instances = self._instances["tap"]
        tap_id = int(req.id)
        if tap_id == U32_MAX:
            tap_id = instances.take_lowest()
        elif tap_id in instances.used:
            return INVALID_INTERFACE, {}
        else:
            instances.take(tap_id)
        mac = ZERO_MAC if req.use_random_mac else mac_bytes(req.mac_address)
        if mac == ZERO_MAC:
            mac = self._random_mac()
        index = self._alloc_index()
        iface = Interface(index, f"tap{tap_id}", "tap", "tap", tap_id, mac, tag=tag)
        iface.link_up = True  # the host netdev is up: VPP reports link up right away
        host_if = str(req.host_if_name) if req.host_if_name_set else f"tap{tap_id}"
        iface.extra = {
            "id": tap_id,
            "tx_ring_sz": int(req.tx_ring_sz) or 256,
            "rx_ring_sz": int(req.rx_ring_sz) or 256,
            "host_mtu_size": int(req.host_mtu_size) if req.host_mtu_set else 0,
            "host_if_name": host_if,
            "host_namespace": str(req.host_namespace) if req.host_namespace_set else "",
            "host_bridge": str(req.host_bridge) if req.host_bridge_set else "",
            "tap_flags": int(req.tap_flags),
            "host_mac_addr": mac_bytes(req.host_mac_addr)
            if req.host_mac_addr_set
            else self._random_mac(),
            "host_ip4_prefix": req.host_ip4_prefix,
            "host_ip6_prefix": req.host_ip6_prefix,
        }
        self._add_interface(iface, link_up_event=True)
        self.record("interface", "create")
        return OK, {"sw_if_index": index}

    def tap_delete(self, sw_if_index: int) -> tuple[int, dict[str, Any]]:
        iface = self.interfaces.get(sw_if_index)
        if iface is None or iface.kind != "tap":
            return INVALID_SW_IF_INDEX, {}
        self._remove_interface(sw_if_index)
        self.record("interface", "delete")
        return OK, {}

    # -- memif -------------------------------------------------------------------------

    def memif_socket(
        self, is_add: bool, socket_id: int, filename: str
    ) -> tuple[int, dict[str, Any]]:
        if is_add:
            if socket_id == 0 or not filename:
                return INVALID_ARGUMENT, {}
            if socket_id == U32_MAX:
                while True:
                    # VPP's auto ids are not sequential (the real one gave 1013904223)
                    socket_id = self._memif_socket_seed
                    self._memif_socket_seed = (self._memif_socket_seed * 1664525 + 1013904223) & (
                        U32_MAX - 1
                    )
                    if socket_id not in self.memif_sockets and socket_id not in (0, U32_MAX):
                        break
            elif socket_id in self.memif_sockets:
                if self.memif_sockets[socket_id] == filename:
                    self.record("memif_socket", "noop")
                    return OK, {"socket_id": socket_id}
                return ENTRY_ALREADY_EXISTS, {}
            self.memif_sockets[socket_id] = filename
            self.record("memif_socket", "create")
            return OK, {"socket_id": socket_id}
        if socket_id == 0 or socket_id == U32_MAX:
            return INVALID_ARGUMENT, {}
        if socket_id not in self.memif_sockets:
            return NO_SUCH_ENTRY, {}
        if self._memifs_on_socket.get(socket_id):
            return UNEXPECTED_INTF_STATE, {}  # what the real VPP answers for "in use"
        del self.memif_sockets[socket_id]
        self.record("memif_socket", "delete")
        return OK, {"socket_id": socket_id}

    def memif_create(self, req: Any) -> tuple[int, dict[str, Any]]:
        socket_id = int(req.socket_id)
        if socket_id not in self.memif_sockets:
            return INVALID_ARGUMENT, {}
        memif_id = int(req.id)
        if (socket_id, memif_id) in self._memifs:
            return SUBIF_ALREADY_EXISTS, {}
        mac = mac_bytes(req.hw_addr)
        if mac == ZERO_MAC:
            mac = self._random_mac()
        index = self._alloc_index()
        mode = int(req.mode)
        iface = Interface(index, f"memif{socket_id}/{memif_id}", "memif", "memif", memif_id, mac)
        iface.ethernet = mode == 0
        iface.extra = {
            "id": memif_id,
            "socket_id": socket_id,
            "role": int(req.role),
            "mode": mode,
            "ring_size": int(req.ring_size) or 1024,
            "buffer_size": int(req.buffer_size) or 2048,
            "zero_copy": not bool(req.no_zero_copy),
            "rx_queues": int(req.rx_queues) or 1,
            "tx_queues": int(req.tx_queues) or 1,
        }
        self._memifs[(socket_id, memif_id)] = index
        self._memifs_on_socket[socket_id] = self._memifs_on_socket.get(socket_id, 0) + 1
        self._add_interface(iface)
        self.record("interface", "create")
        return OK, {"sw_if_index": index}

    def memif_delete(self, sw_if_index: int) -> tuple[int, dict[str, Any]]:
        iface = self.interfaces.get(sw_if_index)
        if iface is None or iface.kind != "memif":
            return INVALID_SW_IF_INDEX, {}
        self._remove_interface(sw_if_index)
        self.record("interface", "delete")
        return OK, {}

    # -- generic interface settings ----------------------------------------------------

    def set_flags(self, sw_if_index: int, flags: int) -> tuple[int, dict[str, Any]]:
        iface = self.interfaces.get(sw_if_index)
        if iface is None:
            return INVALID_SW_IF_INDEX, {}
        up = bool(flags & ADMIN_UP)
        if up == iface.admin_up:
            self.record("interface", "noop")
            return OK, {}
        self._apply_admin(iface, up)
        self.record("interface", "update")
        return OK, {}

    def _apply_admin(self, iface: Interface, up: bool) -> None:
        iface.admin_up = up
        bits = ADMIN_UP if up else 0
        if iface.kind == "loopback":
            # a loopback's link follows admin state; both land in one event batch
            iface.link_up = up
            bits |= LINK_UP if up else 0
        self._event(iface.sw_if_index, bits)

    def set_mtu(self, sw_if_index: int, mtu: list[int]) -> tuple[int, dict[str, Any]]:
        iface = self.interfaces.get(sw_if_index)
        if iface is None:
            return INVALID_SW_IF_INDEX, {}
        mtu = [int(x) for x in mtu]
        if mtu == iface.mtu:
            self.record("interface", "noop")
        else:
            iface.mtu = mtu
            self.record("interface", "update")
        return OK, {}

    def hw_set_mtu(self, sw_if_index: int, mtu: int) -> tuple[int, dict[str, Any]]:
        iface = self.interfaces.get(sw_if_index)
        if iface is None:
            return INVALID_SW_IF_INDEX, {}
        if not iface.ethernet:
            return FEATURE_DISABLED, {}
        if iface.kind == "loopback":
            # the loopback device cannot change its max frame size: the real VPP answers
            # UNSUPPORTED and keeps 9000 (sw_interface_set_mtu is what works there)
            return UNSUPPORTED, {}
        if iface.link_mtu == mtu and iface.mtu[0] == mtu:
            self.record("interface", "noop")
        else:
            iface.link_mtu = mtu
            iface.mtu[0] = mtu
            self.record("interface", "update")
        return OK, {}

    def set_tag(self, sw_if_index: int, is_add: bool, tag: str) -> tuple[int, dict[str, Any]]:
        iface = self.interfaces.get(sw_if_index)
        if iface is None:
            return INVALID_SW_IF_INDEX, {}
        new = tag if is_add else ""
        if new == iface.tag:
            self.record("interface", "noop")
        else:
            iface.tag = new
            self.record("interface", "update")
        return OK, {}

    def set_mac(self, sw_if_index: int, mac: bytes) -> tuple[int, dict[str, Any]]:
        iface = self.interfaces.get(sw_if_index)
        if iface is None:
            return INVALID_SW_IF_INDEX, {}
        if not iface.ethernet:
            return UNSUPPORTED, {}
        if mac == iface.mac:
            self.record("interface", "noop")
        else:
            iface.mac = mac
            self.record("interface", "update")
        return OK, {}

    # -- addresses and VRFs ------------------------------------------------------------

    def _address_index(self, vrf: int, is_ip6: bool) -> AddressIndex:
        index = self._addresses.get((vrf, is_ip6))
        if index is None:
            index = self._addresses[(vrf, is_ip6)] = AddressIndex(128 if is_ip6 else 32)
        return index

    def _own_entries(
        self, iface: Interface, addr: IPAddress, length: int
    ) -> list[tuple[tuple[int, int], PathSpec]]:
        """The FIB entries VPP makes for one interface address."""
        is_ip6 = addr.version == 6
        proto = 1 if is_ip6 else 0
        bits = addr.max_prefixlen
        a = int(addr)
        net = a & PREFIX_MASKS[bits][length]
        sw = iface.sw_if_index
        out: list[tuple[tuple[int, int], PathSpec]] = []
        if length < bits:
            out.append(((net, length), (PATH_NORMAL, sw, proto, None)))
        # the local entry's next hop is the interface address itself
        out.append(((a, bits), (PATH_LOCAL, sw, proto, addr)))
        if not is_ip6 and length < 31:
            drop: PathSpec = (PATH_DROP, U32_MAX, proto, None)
            out.append(((net, 32), drop))
            out.append(((net | ((1 << (bits - length)) - 1), 32), drop))
        return out

    def _own_add(self, table: Table, key: tuple[int, int], spec: PathSpec) -> None:
        entry = table.own.get(key)
        if entry is None:
            table.own[key] = FibEntry(spec, self._alloc_stats())
        else:
            entry.refs += 1

    def _own_remove(self, table: Table, key: tuple[int, int]) -> None:
        entry = table.own.get(key)
        if entry is None:
            return
        entry.refs -= 1
        if entry.refs <= 0:
            del table.own[key]
            self._stats_free.append(entry.stats_index)

    def _index_address(self, iface: Interface, addr: IPAddress, length: int) -> None:
        is_ip6 = addr.version == 6
        vrf = iface.vrf[int(is_ip6)]
        self._address_index(vrf, is_ip6).add(int(addr), length, iface.sw_if_index)
        table = self.tables.get((vrf, is_ip6))
        if table is not None:
            for key, spec in self._own_entries(iface, addr, length):
                self._own_add(table, key, spec)

    def _unindex_address(self, iface: Interface, addr: IPAddress, length: int) -> None:
        is_ip6 = addr.version == 6
        vrf = iface.vrf[int(is_ip6)]
        self._address_index(vrf, is_ip6).remove(int(addr), length, iface.sw_if_index)
        table = self.tables.get((vrf, is_ip6))
        if table is not None:
            for key, _spec in self._own_entries(iface, addr, length):
                self._own_remove(table, key)

    def add_del_address(
        self, sw_if_index: int, is_add: bool, del_all: bool, addr: IPAddress, length: int
    ) -> tuple[int, dict[str, Any]]:
        iface = self.interfaces.get(sw_if_index)
        if iface is None:
            return INVALID_SW_IF_INDEX, {}
        if del_all:
            if iface.addresses:
                for a, n in iface.addresses:
                    self._unindex_address(iface, a, n)
                iface.addresses.clear()
                self.record("address", "delete")
            else:
                self.record("address", "noop")
            return OK, {}
        if length > addr.max_prefixlen:
            return INVALID_PREFIX_LENGTH, {}
        if not is_add:
            if (addr, length) not in iface.addresses:
                return ADDRESS_NOT_FOUND_FOR_INTERFACE, {}
            iface.addresses.remove((addr, length))
            self._unindex_address(iface, addr, length)
            self.record("address", "delete")
            return OK, {}
        if iface.kind == "local":
            return UNSUPPORTED, {}
        is_ip6 = addr.version == 6
        index = self._address_index(iface.vrf[int(is_ip6)], is_ip6)
        if index.conflicts(int(addr), length, sw_if_index):
            return ADDRESS_IN_USE, {}
        iface.addresses.append((addr, length))
        self._index_address(iface, addr, length)
        self.record("address", "create")
        return OK, {}

    def set_table(self, sw_if_index: int, is_ipv6: bool, vrf_id: int) -> tuple[int, dict[str, Any]]:
        iface = self.interfaces.get(sw_if_index)
        if iface is None:
            return INVALID_SW_IF_INDEX, {}
        family = 1 if is_ipv6 else 0
        if iface.vrf[family] == vrf_id:
            self.record("interface", "noop")
            return OK, {}
        if any((a.version == 6) == is_ipv6 for a, _ in iface.addresses):
            return ADDRESS_FOUND_FOR_INTERFACE, {}
        table = self.tables.get((vrf_id, is_ipv6))
        if table is None:
            self._violation(
                f"interface {iface.name} ({sw_if_index}) bound to ip{6 if is_ipv6 else 4} "
                f"table {vrf_id}, which does not exist"
            )
            return NO_SUCH_FIB, {}
        old = self.tables.get((iface.vrf[family], is_ipv6))
        if old is not None:
            old.bound.discard(sw_if_index)
        table.bound.add(sw_if_index)
        iface.vrf[family] = vrf_id
        self.record("interface", "update")
        return OK, {}

    def _new_table(self, table_id: int, is_ip6: bool, name: str) -> Table:
        table = self.tables[(table_id, is_ip6)] = Table(table_id, is_ip6, name)
        proto = 1 if is_ip6 else 0
        drop: PathSpec = (PATH_DROP, U32_MAX, proto, None)
        for text in V6_SPECIALS if is_ip6 else V4_SPECIALS:
            net = ipaddress.ip_network(text)
            self._own_add(table, (int(net.network_address), net.prefixlen), drop)
        if is_ip6:
            for text in V6_LOCAL_SPECIALS:
                net = ipaddress.ip_network(text)
                # VPP's link-local entry reads back as a normal path (type 0)
                link_local: PathSpec = (PATH_NORMAL, U32_MAX, 1, None)
                self._own_add(table, (int(net.network_address), net.prefixlen), link_local)
        return table

    def table_add_del(
        self, is_add: bool, table_id: int, is_ip6: bool, name: str
    ) -> tuple[int, dict[str, Any]]:
        key = (table_id, is_ip6)
        if is_add:
            if key in self.tables:
                self.record("vrf", "noop")
                return OK, {}
            family = "ipv6" if is_ip6 else "ipv4"
            self._new_table(table_id, is_ip6, name or f"{family}-VRF:{table_id}")
            self.record("vrf", "create")
            return OK, {}
        table = self.tables.get(key)
        if table_id == 0 or table is None:
            self.record("vrf", "noop")
            return OK, {}
        for sw in sorted(table.bound):
            iface = self.interfaces.get(sw)
            who = iface.name if iface is not None else str(sw)
            self._violation(f"table {table_id} deleted while {who} is bound to it")
        if table.routes:
            self._violation(
                f"table {table_id} deleted while {len(table.routes)} route(s) are in it"
            )
        for tkey, prefix in sorted(self._refs.get(("table", key), ()), key=str):
            if tkey != key:
                self._violation(
                    f"table {table_id} deleted while route {prefix} in table {tkey[0]} "
                    f"resolves through it"
                )
        for prefix in list(table.routes):
            self._drop_route(table, prefix)
        for entry in table.own.values():
            self._stats_free.append(entry.stats_index)
        del self.tables[key]
        self.record("vrf", "delete")
        return OK, {}

    # -- bridge domains ----------------------------------------------------------------

    def bd_add_del(self, req: Any) -> tuple[int, dict[str, Any]]:
        bd_id = int(req.bd_id)
        if not req.is_add:
            if bd_id == 0:
                return BD_NOT_MODIFIABLE, {}
            bd = self.bridge_domains.get(bd_id)
            if bd is None:
                return NO_SUCH_ENTRY, {}
            if bd.members:
                return BD_IN_USE, {}
            del self.bridge_domains[bd_id]
            self._bd_indexes.release(bd.index)
            self.record("bridge_domain", "delete")
            return OK, {"bd_id": bd_id}
        if bd_id == U32_MAX:
            bd_id = self._auto_bd_id()
        elif bd_id > BD_ID_MAX:
            return BD_ID_EXCEED_MAX, {}
        elif bd_id == 0 or bd_id in self.bridge_domains:
            return BD_ALREADY_EXISTS, {}
        self.bridge_domains[bd_id] = BridgeDomain(
            bd_id,
            index=self._bd_indexes.take_lowest(),
            flood=bool(req.flood),
            uu_flood=bool(req.uu_flood),
            forward=bool(req.forward),
            learn=bool(req.learn),
            arp_term=bool(req.arp_term),
            arp_ufwd=bool(req.arp_ufwd),
            mac_age=int(req.mac_age),
            tag=str(req.bd_tag),
        )
        self.record("bridge_domain", "create")
        return OK, {"bd_id": bd_id}

    def _auto_bd_id(self) -> int:
        while True:
            candidate = self._bd_seed
            self._bd_seed = (self._bd_seed * 1103515245 + 12345) & BD_ID_MAX
            if candidate not in self.bridge_domains and candidate not in (0, BD_ID_MAX):
                return candidate

    def bd_dump_order(self) -> list[BridgeDomain]:
        """The bridge domains as bridge_domain_dump walks them: by bd_index (creation
        order, freed indexes reused lowest first), not by bd_id."""
        return sorted(self.bridge_domains.values(), key=lambda bd: bd.index)

    def bd_members(self, bd: BridgeDomain) -> list[tuple[int, int]]:
        """A bridge domain's (sw_if_index, shg) in dump order: the BVI first, as VPP keeps
        it, then the others in an order that is not the join order (seeded)."""
        others = sorted(
            ((sw, shg) for sw, shg in bd.members.items() if sw != bd.bvi),
            key=lambda m: self._order(m[0]),
        )
        if bd.bvi in bd.members:
            return [(bd.bvi, bd.members[bd.bvi]), *others]
        return others

    def _leave_bd(self, iface: Interface) -> None:
        bd = self.bridge_domains.get(iface.bd_id) if iface.bd_id is not None else None
        if bd is not None:
            bd.members.pop(iface.sw_if_index, None)
            if bd.bvi == iface.sw_if_index:
                bd.bvi = U32_MAX
            if bd.uu_fwd == iface.sw_if_index:
                bd.uu_fwd = U32_MAX
        iface.bd_id = None
        iface.extra.pop("l2_port_type", None)

    def set_l2_bridge(
        self, sw_if_index: int, bd_id: int, port_type: int, shg: int, enable: bool
    ) -> tuple[int, dict[str, Any]]:
        iface = self.interfaces.get(sw_if_index)
        if iface is None:
            return INVALID_SW_IF_INDEX, {}
        if not enable:
            if iface.bd_id is None:
                self.record("bd_member", "noop")
                return OK, {}
            self._leave_bd(iface)
            self.record("bd_member", "delete")
            return OK, {}
        if bd_id > BD_ID_MAX:
            return BD_ID_EXCEED_MAX, {}
        if port_type not in (0, 1, 2):
            return INVALID_VALUE, {}
        if not iface.ethernet:
            return NON_ETHERNET, {}
        bd = self.bridge_domains.get(bd_id)
        if bd is None:
            # VPP creates a missing bridge domain on first use, with flood and learn on
            bd = BridgeDomain(bd_id, index=self._bd_indexes.take_lowest())
            self.bridge_domains[bd_id] = bd
            self.record("bridge_domain", "create")
        if port_type == 1 and bd.bvi not in (U32_MAX, sw_if_index):
            return BD_ALREADY_HAS_BVI, {}
        if (
            iface.bd_id == bd_id
            and bd.members.get(sw_if_index) == shg
            and iface.extra.get("l2_port_type") == port_type
        ):
            self.record("bd_member", "noop")
            return OK, {}
        op = "update" if iface.bd_id is not None else "create"
        if iface.bd_id is not None:
            self._leave_bd(iface)
        iface.bd_id = bd_id
        iface.extra["l2_port_type"] = port_type
        bd.members[sw_if_index] = shg
        if port_type == 1:
            bd.bvi = sw_if_index
        elif port_type == 2:
            bd.uu_fwd = sw_if_index
        self.record("bd_member", op)
        return OK, {}

    # -- routes ------------------------------------------------------------------------

    @staticmethod
    def _path_refs(path: FibPath) -> tuple[str, Any]:
        if path.sw_if_index != U32_MAX:
            return ("if", path.sw_if_index)
        return ("table", (path.table_id, path.proto == 1))

    def _set_paths(self, table: Table, route: Route, paths: list[FibPath]) -> None:
        ref = ((table.table_id, table.is_ip6), route.prefix)
        refs = self._refs
        for path in route.paths:
            users = refs.get(self._path_refs(path))
            if users is not None:
                users.discard(ref)
        route.paths = paths
        for path in paths:
            refs.setdefault(self._path_refs(path), set()).add(ref)

    def _add_route(self, table: Table, prefix: IPNetwork, paths: list[FibPath]) -> Route:
        route = Route(prefix, [], self._alloc_stats())
        table.routes[prefix] = route
        self._set_paths(table, route, paths)
        return route

    def _drop_route(self, table: Table, prefix: IPNetwork) -> None:
        route = table.routes.pop(prefix)
        self._set_paths(table, route, [])
        self._stats_free.append(route.stats_index)

    def _check_paths(self, paths: list[FibPath], table_id: int, prefix: IPNetwork) -> int:
        # VPP's fib_api_path_decode: an attached next hop needs an existing interface
        # (NO_MATCHING_INTERFACE), a recursive one an existing table (NO_SUCH_FIB)
        for path in paths:
            if path.type not in (PATH_NORMAL, PATH_SOURCE_LOOKUP) or path.proto not in (0, 1):
                continue
            if path.sw_if_index != U32_MAX:
                if path.sw_if_index not in self.interfaces:
                    self._violation(
                        f"route {prefix} in table {table_id} added through sw_if_index "
                        f"{path.sw_if_index}, which does not exist"
                    )
                    return NO_MATCHING_INTERFACE
            elif (path.table_id, path.proto == 1) not in self.tables:
                self._violation(
                    f"route {prefix} in table {table_id} added to resolve in table "
                    f"{path.table_id}, which does not exist"
                )
                return NO_SUCH_FIB
        return OK

    def route_add_del(
        self,
        is_add: bool,
        is_multipath: bool,
        table_id: int,
        addr: IPAddress,
        length: int,
        paths: list[FibPath],
    ) -> tuple[int, dict[str, Any]]:
        is_ip6 = addr.version == 6
        table = self.tables.get((table_id, is_ip6))
        if table is None:
            if is_add:
                self._violation(
                    f"route {addr}/{length} added to table {table_id}, which does not exist"
                )
            return NO_SUCH_FIB, {}
        if length > addr.max_prefixlen:
            return INVALID_PREFIX_LENGTH, {}
        prefix = ipaddress.ip_network((addr, length), strict=False)
        route = table.routes.get(prefix)
        if is_add:
            if not paths:
                return NO_PATHS_IN_ROUTE, {}
            rv = self._check_paths(paths, table_id, prefix)
            if rv != OK:
                return rv, {}
            if route is None:
                route = self._add_route(table, prefix, dedupe(paths))
                self.record("route", "create")
            elif is_multipath:
                known = {p.identity() for p in route.paths}
                new = [p for p in dedupe(paths) if p.identity() not in known]
                if new:
                    self._set_paths(table, route, [*route.paths, *new])
                    self.record("route", "update")
                else:
                    self.record("route", "noop")
            else:
                wanted = dedupe(paths)
                if wanted == route.paths:
                    self.record("route", "noop")
                else:
                    self._set_paths(table, route, wanted)
                    self.record("route", "update")
            return OK, {"stats_index": route.stats_index}
        # deleting a missing route (or path) is not an error in VPP
        if route is None:
            self.record("route", "noop")
            return OK, {}
        if is_multipath and paths:
            drop = {p.identity() for p in paths}
            kept = [p for p in route.paths if p.identity() not in drop]
            if len(kept) == len(route.paths):
                self.record("route", "noop")
            elif kept:
                self._set_paths(table, route, kept)
                self.record("route", "update")
            else:
                self._drop_route(table, prefix)
                self.record("route", "delete")
            return OK, {}
        self._drop_route(table, prefix)
        self.record("route", "delete")
        return OK, {}

    def route_entries(
        self, table_id: int, is_ip6: bool
    ) -> list[tuple[tuple[int, int], list[FibPath], int]]:
        """What ip_route_dump shows, ((network as int, length), paths, stats_index) each:
        VPP's own entries and the API routes, in a seeded hash order (VPP walks its FIB
        hash, so the order is neither sorted nor the order of insertion)."""
        table = self.tables.get((table_id, is_ip6))
        if table is None:
            return []
        entries: dict[tuple[int, int], tuple[list[FibPath], int]] = {
            route.key: (route.paths, route.stats_index) for route in table.routes.values()
        }
        # a connected or local entry wins over an API route to the same prefix
        for key, entry in table.own.items():
            entries[key] = (entry.paths, entry.stats_index)
        order = self._order
        return sorted(
            ((key, paths, stats) for key, (paths, stats) in entries.items()),
            key=lambda e: order(e[0]),
        )

    # -- out-of-band drift (behind the client's back; not counted as API writes) -------

    def drift(self, action: str, **params: Any) -> None:
        """Change state as an operator with vppctl would; raises ValueError on bad input."""
        iface = None
        if "sw_if_index" in params or "name" in params:
            iface = (
                self.interfaces.get(int(params["sw_if_index"]))
                if "sw_if_index" in params
                else self.by_name(str(params["name"]))
            )
            if iface is None:
                raise ValueError(f"drift {action}: no such interface {params!r}")
        if action == "delete_interface":
            assert iface is not None
            if iface.kind == "local":
                raise ValueError("drift delete_interface: local0 cannot be deleted")
            self._remove_interface(iface.sw_if_index)
        elif action == "set_admin":
            assert iface is not None
            up = bool(params.get("up", False))
            if up != iface.admin_up:
                self._apply_admin(iface, up)
        elif action == "set_mtu":
            assert iface is not None
            iface.mtu = [int(x) for x in params["mtu"]]
        elif action == "set_tag":
            assert iface is not None
            iface.tag = str(params.get("tag", ""))
        elif action == "add_address":
            assert iface is not None
            a = ipaddress.ip_interface(str(params["prefix"]))
            iface.addresses.append((a.ip, a.network.prefixlen))
            self._index_address(iface, a.ip, a.network.prefixlen)
        elif action == "del_address":
            assert iface is not None
            a = ipaddress.ip_interface(str(params["prefix"]))
            iface.addresses.remove((a.ip, a.network.prefixlen))
            self._unindex_address(iface, a.ip, a.network.prefixlen)
        elif action == "remove_from_bd":
            assert iface is not None
            self._leave_bd(iface)
        elif action == "delete_bd":
            bd = self.bridge_domains.pop(int(params["bd_id"]))
            self._bd_indexes.release(bd.index)
            for member in bd.members:
                if member in self.interfaces:
                    self.interfaces[member].bd_id = None
        elif action == "delete_route":
            net = ipaddress.ip_network(str(params["prefix"]), strict=False)
            table = self.tables[(int(params.get("table_id", 0)), net.version == 6)]
            if net not in table.routes:
                raise KeyError(net)
            self._drop_route(table, net)
        elif action == "add_route":
            net = ipaddress.ip_network(str(params["prefix"]), strict=False)
            table = self.tables[(int(params.get("table_id", 0)), net.version == 6)]
            nh = ipaddress.ip_address(str(params.get("next_hop", "0.0.0.0")))
            path = FibPath(sw_if_index=int(params.get("via_sw_if_index", U32_MAX)), nh=nh)
            if net in table.routes:
                self._set_paths(table, table.routes[net], [path])
            else:
                self._add_route(table, net, [path])
        else:
            raise ValueError(f"unknown drift action {action!r}")

    # -- inspection --------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The full state as a JSON-able dict."""
        return {
            "vpe_pid": self.vpe_pid,
            "interfaces": [i.to_json() for _, i in sorted(self.interfaces.items())],
            "bridge_domains": [b.to_json() for _, b in sorted(self.bridge_domains.items())],
            "tables": [
                {
                    "table_id": t.table_id,
                    "is_ip6": t.is_ip6,
                    "name": t.name,
                    "routes": [
                        {
                            "prefix": str(r.prefix),
                            "paths": [p.to_json() for p in r.paths],
                            "stats_index": r.stats_index,
                        }
                        for r in t.routes.values()
                    ],
                }
                for _, t in sorted(self.tables.items())
            ],
            "memif_sockets": {str(k): v for k, v in sorted(self.memif_sockets.items())},
            "violations": list(self.violations),
        }
