"""The simulator's dataplane: interfaces, addresses, VRFs, bridge domains and routes.

Pure Python and wire-agnostic: handlers take plain values (ints, bytes, ``ipaddress``
objects) and return ``(retval, reply_fields)`` with VPP's real retvals (see
``shared/vpp-api/README.md`` section 5). Every write records what it did to one object
kind (create/update/delete/noop) through :meth:`Dataplane.record`, so tests can assert
"a no-op resync wrote nothing". Interface events are batched per sw_if_index until the
server flushes them, like VPP's interface event process.
"""

from __future__ import annotations

import ipaddress
import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

U32_MAX = 0xFFFFFFFF
BD_ID_MAX = (1 << 24) - 1

# Retvals (vnet_api_errors.txt).
OK = 0
INVALID_SW_IF_INDEX = -2
NO_SUCH_FIB = -3
NO_SUCH_ENTRY = -6
INVALID_VALUE = -7
FEATURE_DISABLED = -30
INVALID_REGISTRATION = -31
NO_PATHS_IN_ROUTE = -52
ADDRESS_NOT_FOUND_FOR_INTERFACE = -60
INVALID_INTERFACE = -71
INVALID_ARGUMENT = -73
ADDRESS_IN_USE = -105
ADDRESS_FOUND_FOR_INTERFACE = -114
ENTRY_ALREADY_EXISTS = -116
BD_ALREADY_EXISTS = -119
BD_IN_USE = -120
BD_NOT_MODIFIABLE = -121
BD_ID_EXCEED_MAX = -122
UNSUPPORTED = -126
NON_ETHERNET = -151
BD_ALREADY_HAS_BVI = -152
RSRC_IN_USE = -155
INVALID_PREFIX_LENGTH = -171

# sw_interface flags / event bits.
ADMIN_UP = 1
LINK_UP = 2

# fib_path_type
PATH_NORMAL = 0
PATH_LOCAL = 1
PATH_DROP = 2

ZERO_MAC = b"\x00" * 6


def mac_bytes(value: Any) -> bytes:
    """Normalize a MAC given as bytes, "aa:bb:.." text or a papi MACAddress to 6 bytes."""
    if value is None:
        return ZERO_MAC
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
    elif isinstance(value, str):
        raw = bytes(int(part, 16) for part in value.replace("-", ":").split(":"))
    elif hasattr(value, "packed"):
        raw = bytes(value.packed)
    elif hasattr(value, "mac_binary"):
        raw = bytes(value.mac_binary)
    else:
        raw = bytes(value)
    if len(raw) != 6:
        raise ValueError(f"mac address must be 6 bytes, got {len(raw)}")
    return raw


def _address_from_struct(value: Any) -> IPAddress:
    """An ``address`` struct ({af, un{ip4, ip6}}) as decoded by a codec."""
    af = getattr(value, "af", None)
    un = getattr(value, "un", None)
    if af is None and isinstance(value, dict):
        af, un = value.get("af"), value.get("un")
    af = int(af or 0)
    return union_address(un, af)


def union_address(un: Any, af: int) -> IPAddress:
    """An ``address_union`` decoded value for address family ``af`` (0 ip4, 1 ip6)."""
    if af not in (0, 1):
        raise ValueError(f"unknown address family {af}")
    if isinstance(un, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return un
    if isinstance(un, dict):
        arm = un.get("ip6" if af else "ip4")
    elif un is not None and hasattr(un, "ip4"):
        arm = getattr(un, "ip6" if af else "ip4")
    else:
        arm = un
    if isinstance(arm, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return arm
    if isinstance(arm, str):
        return ipaddress.ip_address(arm)
    raw = bytes(arm or b"")
    if af:
        return ipaddress.IPv6Address(raw[:16].ljust(16, b"\x00"))
    return ipaddress.IPv4Address(raw[:4].ljust(4, b"\x00"))


def to_interface(value: Any) -> tuple[IPAddress, int]:
    """A prefix / address_with_prefix in any codec representation -> (address, length)."""
    if value is None:
        raise ValueError("address with an unknown address family")
    if isinstance(value, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        return value.ip, value.network.prefixlen
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value.network_address, value.prefixlen
    if isinstance(value, str):
        iface = ipaddress.ip_interface(value)
        return iface.ip, iface.network.prefixlen
    if isinstance(value, dict):
        return _address_from_struct(value["address"]), int(value["len"])
    return _address_from_struct(value.address), int(value.len)


def address_struct(addr: IPAddress) -> dict[str, Any]:
    """``address`` as a plain dict every codec accepts."""
    if addr.version == 4:
        return {"af": 0, "un": {"ip4": addr.packed}}
    return {"af": 1, "un": {"ip6": addr.packed}}


def prefix_struct(addr: IPAddress, length: int) -> dict[str, Any]:
    """``prefix`` / ``address_with_prefix`` as a plain dict."""
    return {"address": address_struct(addr), "len": length}


@dataclass
class Interface:
    """One sw interface."""

    sw_if_index: int
    name: str
    kind: str  # local, loopback, tap, memif
    dev_type: str
    instance: int = 0
    mac: bytes = ZERO_MAC
    admin_up: bool = False
    link_up: bool = False
    link_mtu: int = 9000
    mtu: list[int] = field(default_factory=lambda: [9000, 0, 0, 0])
    tag: str = ""
    addresses: list[tuple[IPAddress, int]] = field(default_factory=list)
    vrf: list[int] = field(default_factory=lambda: [0, 0])  # [ip4, ip6]
    bd_id: int | None = None
    ethernet: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def flags(self) -> int:
        return (ADMIN_UP if self.admin_up else 0) | (LINK_UP if self.link_up else 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "sw_if_index": self.sw_if_index,
            "name": self.name,
            "kind": self.kind,
            "dev_type": self.dev_type,
            "instance": self.instance,
            "mac": ":".join(f"{b:02x}" for b in self.mac),
            "admin_up": self.admin_up,
            "link_up": self.link_up,
            "link_mtu": self.link_mtu,
            "mtu": list(self.mtu),
            "tag": self.tag,
            "addresses": [f"{a}/{n}" for a, n in self.addresses],
            "vrf": {"ip4": self.vrf[0], "ip6": self.vrf[1]},
            "bd_id": self.bd_id,
            "extra": {k: v for k, v in self.extra.items() if isinstance(v, int | str | bool)},
        }


@dataclass
class BridgeDomain:
    """One bridge domain and its members (sw_if_index -> split-horizon group)."""

    bd_id: int
    flood: bool = True
    uu_flood: bool = True
    forward: bool = True
    learn: bool = True
    arp_term: bool = False
    arp_ufwd: bool = False
    mac_age: int = 0
    tag: str = ""
    members: dict[int, int] = field(default_factory=dict)
    bvi: int = U32_MAX
    uu_fwd: int = U32_MAX

    def settings(self) -> tuple[Any, ...]:
        return (
            self.flood,
            self.uu_flood,
            self.forward,
            self.learn,
            self.arp_term,
            self.arp_ufwd,
            self.mac_age,
            self.tag,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "bd_id": self.bd_id,
            "flood": self.flood,
            "uu_flood": self.uu_flood,
            "forward": self.forward,
            "learn": self.learn,
            "arp_term": self.arp_term,
            "arp_ufwd": self.arp_ufwd,
            "mac_age": self.mac_age,
            "tag": self.tag,
            "members": {str(k): v for k, v in sorted(self.members.items())},
            "bvi": None if self.bvi == U32_MAX else self.bvi,
            "uu_fwd": None if self.uu_fwd == U32_MAX else self.uu_fwd,
        }


@dataclass(frozen=True)
class Path:
    """One FIB path, normalized (weight 0 reads back as 1, as in VPP)."""

    sw_if_index: int = U32_MAX
    table_id: int = 0
    rpf_id: int = 0
    weight: int = 1
    preference: int = 0
    type: int = PATH_NORMAL
    flags: int = 0
    proto: int = 0
    nh: IPAddress | None = None
    via_label: int = 0x100000  # MPLS_LABEL_INVALID: what VPP reports for IP paths
    obj_id: int = U32_MAX
    classify_table_index: int = U32_MAX

    def identity(self) -> tuple[Any, ...]:
        """What VPP compares when adding/removing one path of a multipath route."""
        return (self.sw_if_index, self.nh, self.table_id, self.type, self.proto)

    def to_wire(self) -> dict[str, Any]:
        nh = self.nh
        if nh is None:
            nh = ipaddress.IPv6Address(0) if self.proto == 1 else ipaddress.IPv4Address(0)
        arm = "ip6" if nh.version == 6 else "ip4"
        return {
            "sw_if_index": self.sw_if_index,
            "table_id": self.table_id,
            "rpf_id": self.rpf_id,
            "weight": self.weight,
            "preference": self.preference,
            "type": self.type,
            "flags": self.flags,
            "proto": self.proto,
            "nh": {
                "address": {arm: nh.packed},
                "via_label": self.via_label,
                "obj_id": self.obj_id,
                "classify_table_index": self.classify_table_index,
            },
            "n_labels": 0,
            "label_stack": [{"is_uniform": 0, "label": 0, "ttl": 0, "exp": 0}] * 16,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "sw_if_index": self.sw_if_index,
            "table_id": self.table_id,
            "weight": self.weight,
            "preference": self.preference,
            "type": self.type,
            "proto": self.proto,
            "nh": None if self.nh is None else str(self.nh),
        }


@dataclass
class Route:
    prefix: IPNetwork
    paths: list[Path]
    stats_index: int


@dataclass
class Table:
    table_id: int
    is_ip6: bool
    name: str = ""
    routes: dict[IPNetwork, Route] = field(default_factory=dict)


_V4_SPECIALS = ("0.0.0.0/0", "0.0.0.0/32", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32")
_V6_SPECIALS = ("::/0",)
_V6_LOCAL_SPECIALS = ("fe80::/10",)


def _lowest_free(used: Iterable[int]) -> int:
    taken = set(used)
    for n in itertools.count():
        if n not in taken:
            return n
    raise AssertionError("unreachable")


class Dataplane:
    """All dataplane state of one simulator "boot" (a restart builds a new one)."""

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
        self.interfaces: dict[int, Interface] = {}
        self._next_index = 1 + index_offset
        self._free_indices: list[int] = []
        self.bridge_domains: dict[int, BridgeDomain] = {}
        self.tables: dict[tuple[int, bool], Table] = {
            (0, False): Table(0, False, "ipv4-VRF:0"),
            (0, True): Table(0, True, "ipv6-VRF:0"),
        }
        self.memif_sockets: dict[int, str] = {0: "/run/vpp/memif.sock"}
        self._memif_socket_seed = 1013904223
        self._bd_seed = 7271263
        self._stats_index = itertools.count(1)
        self.violations: list[str] = []
        #: sw_if_index -> [event bits, deleted]; flushed by the server.
        self.pending_events: dict[int, list[int]] = {}
        self.on_event: Callable[[], None] | None = None
        #: (kind, op) -> count of API writes; ops: create, update, delete, noop.
        self.counters: dict[tuple[str, str], int] = {}
        local0 = Interface(0, "local0", "local", "local", link_mtu=0, mtu=[0, 0, 0, 0])
        local0.ethernet = False
        self.interfaces[0] = local0

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
        """The batched interface events since the last call: (sw_if_index, flags, deleted)."""
        events = [(idx, bits, deleted) for idx, (bits, deleted) in self.pending_events.items()]
        self.pending_events.clear()
        return events

    def _alloc_index(self) -> int:
        if self._free_indices:
            return self._free_indices.pop()  # LIFO, like VPP's pool free list
        index = self._next_index
        self._next_index += 1
        return index

    def _add_interface(self, iface: Interface, link_up_event: bool = False) -> Interface:
        self.interfaces[iface.sw_if_index] = iface
        self._event(iface.sw_if_index, LINK_UP if link_up_event else 0)
        return iface

    def _remove_interface(self, sw_if_index: int) -> None:
        iface = self.interfaces.pop(sw_if_index)
        if iface.bd_id is not None:
            self._violation(
                f"interface {iface.name} ({sw_if_index}) deleted while in bridge domain "
                f"{iface.bd_id}"
            )
            self._leave_bd(iface)
        for table in self.tables.values():
            for prefix, route in list(table.routes.items()):
                kept = [p for p in route.paths if p.sw_if_index != sw_if_index]
                if len(kept) != len(route.paths):
                    self._violation(
                        f"interface {iface.name} ({sw_if_index}) deleted while route "
                        f"{prefix} in table {table.table_id} goes through it"
                    )
                    if kept:
                        route.paths = kept
                    else:
                        del table.routes[prefix]
        self._free_indices.append(sw_if_index)
        self._event(sw_if_index, 0, deleted=True)

    def get(self, sw_if_index: int) -> Interface | None:
        """The interface at ``sw_if_index`` or None."""
        return self.interfaces.get(sw_if_index)

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
        used = {i.instance for i in self.interfaces.values() if i.kind == "loopback"}
        if instance is None:
            instance = _lowest_free(used)
        elif instance in used:
            return INVALID_REGISTRATION, {}
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
        used = {i.instance for i in self.interfaces.values() if i.kind == "tap"}
        tap_id = int(req.id)
        if tap_id == U32_MAX:
            tap_id = _lowest_free(used)
        elif tap_id in used:
            return INVALID_INTERFACE, {}
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
        if any(
            i.kind == "memif" and i.extra["socket_id"] == socket_id
            for i in self.interfaces.values()
        ):
            return RSRC_IN_USE, {}
        del self.memif_sockets[socket_id]
        self.record("memif_socket", "delete")
        return OK, {"socket_id": socket_id}

    def memif_create(self, req: Any) -> tuple[int, dict[str, Any]]:
        socket_id = int(req.socket_id)
        if socket_id not in self.memif_sockets:
            return INVALID_ARGUMENT, {}
        memif_id = int(req.id)
        for iface in self.interfaces.values():
            if (
                iface.kind == "memif"
                and iface.extra["socket_id"] == socket_id
                and iface.extra["id"] == memif_id
            ):
                return ENTRY_ALREADY_EXISTS, {}
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

    def add_del_address(
        self, sw_if_index: int, is_add: bool, del_all: bool, addr: IPAddress, length: int
    ) -> tuple[int, dict[str, Any]]:
        iface = self.interfaces.get(sw_if_index)
        if iface is None:
            return INVALID_SW_IF_INDEX, {}
        if del_all:
            if iface.addresses:
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
            self.record("address", "delete")
            return OK, {}
        if iface.kind == "local":
            return UNSUPPORTED, {}
        net = ipaddress.ip_network((addr, length), strict=False)
        family = 1 if addr.version == 6 else 0
        table = iface.vrf[family]
        for other in self.interfaces.values():
            if other.vrf[family] != table:
                continue
            for o_addr, o_len in other.addresses:
                if o_addr.version != addr.version:
                    continue
                # VPP: "an intf may have >1 addr from the same prefix" (same length,
                # different address); any other overlap is in use
                if other is iface and o_len == length and o_addr != addr:
                    continue
                if ipaddress.ip_network((o_addr, o_len), strict=False).overlaps(net):
                    return ADDRESS_IN_USE, {}
        iface.addresses.append((addr, length))
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
        if (vrf_id, is_ipv6) not in self.tables:
            return NO_SUCH_FIB, {}
        iface.vrf[family] = vrf_id
        self.record("interface", "update")
        return OK, {}

    def table_add_del(
        self, is_add: bool, table_id: int, is_ip6: bool, name: str
    ) -> tuple[int, dict[str, Any]]:
        key = (table_id, is_ip6)
        if is_add:
            if key in self.tables:
                self.record("vrf", "noop")
                return OK, {}
            family = "ipv6" if is_ip6 else "ipv4"
            self.tables[key] = Table(table_id, is_ip6, name or f"{family}-VRF:{table_id}")
            self.record("vrf", "create")
            return OK, {}
        if table_id == 0 or key not in self.tables:
            self.record("vrf", "noop")
            return OK, {}
        del self.tables[key]
        for iface in self.interfaces.values():
            if iface.vrf[int(is_ip6)] == table_id:
                self._violation(f"table {table_id} deleted while {iface.name} is bound to it")
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
            bd = self.bridge_domains[bd_id] = BridgeDomain(bd_id)
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

    def route_add_del(
        self,
        is_add: bool,
        is_multipath: bool,
        table_id: int,
        addr: IPAddress,
        length: int,
        paths: list[Path],
    ) -> tuple[int, dict[str, Any]]:
        is_ip6 = addr.version == 6
        table = self.tables.get((table_id, is_ip6))
        if table is None:
            return NO_SUCH_FIB, {}
        if length > addr.max_prefixlen:
            return INVALID_PREFIX_LENGTH, {}
        prefix = ipaddress.ip_network((addr, length), strict=False)
        route = table.routes.get(prefix)
        if is_add:
            if not paths:
                return NO_PATHS_IN_ROUTE, {}
            for path in paths:
                if path.sw_if_index != U32_MAX and path.sw_if_index not in self.interfaces:
                    return INVALID_SW_IF_INDEX, {}
            if route is None:
                route = Route(prefix, _dedupe(paths), next(self._stats_index))
                table.routes[prefix] = route
                self.record("route", "create")
            elif is_multipath:
                known = {p.identity() for p in route.paths}
                new = [p for p in _dedupe(paths) if p.identity() not in known]
                if new:
                    route.paths.extend(new)
                    self.record("route", "update")
                else:
                    self.record("route", "noop")
            else:
                wanted = _dedupe(paths)
                if wanted == route.paths:
                    self.record("route", "noop")
                else:
                    route.paths = wanted
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
                route.paths = kept
                self.record("route", "update")
            else:
                del table.routes[prefix]
                self.record("route", "delete")
            return OK, {}
        del table.routes[prefix]
        self.record("route", "delete")
        return OK, {}

    def route_entries(self, table_id: int, is_ip6: bool) -> list[tuple[IPNetwork, list[Path], int]]:
        """What ip_route_dump shows: special entries, connected/local ones, then API routes."""
        table = self.tables.get((table_id, is_ip6))
        if table is None:
            return []
        proto = 1 if is_ip6 else 0
        entries: dict[IPNetwork, tuple[list[Path], int]] = {}
        drop = [Path(type=PATH_DROP, proto=proto)]
        for text in _V6_SPECIALS if is_ip6 else _V4_SPECIALS:
            entries[ipaddress.ip_network(text)] = (drop, 0)
        if is_ip6:
            for text in _V6_LOCAL_SPECIALS:
                entries[ipaddress.ip_network(text)] = ([Path(type=PATH_LOCAL, proto=1)], 0)
        for route in table.routes.values():
            entries[route.prefix] = (route.paths, route.stats_index)
        for iface in self.interfaces.values():
            if iface.vrf[proto] != table_id:
                continue
            for addr, length in iface.addresses:
                if (addr.version == 6) != is_ip6:
                    continue
                net = ipaddress.ip_network((addr, length), strict=False)
                host = ipaddress.ip_network((addr, addr.max_prefixlen))
                if length < addr.max_prefixlen:
                    entries[net] = ([Path(sw_if_index=iface.sw_if_index, proto=proto)], 0)
                entries[host] = (
                    [Path(sw_if_index=iface.sw_if_index, type=PATH_LOCAL, proto=proto)],
                    0,
                )
                if not is_ip6 and length < 31:
                    entries[ipaddress.ip_network((net.network_address, 32))] = (drop, 0)
                    entries[ipaddress.ip_network((net.broadcast_address, 32))] = (drop, 0)
        return [(prefix, paths, stats) for prefix, (paths, stats) in entries.items()]

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
        elif action == "del_address":
            assert iface is not None
            a = ipaddress.ip_interface(str(params["prefix"]))
            iface.addresses.remove((a.ip, a.network.prefixlen))
        elif action == "remove_from_bd":
            assert iface is not None
            self._leave_bd(iface)
        elif action == "delete_bd":
            bd = self.bridge_domains.pop(int(params["bd_id"]))
            for member in bd.members:
                if member in self.interfaces:
                    self.interfaces[member].bd_id = None
        elif action == "delete_route":
            net = ipaddress.ip_network(str(params["prefix"]), strict=False)
            table = self.tables[(int(params.get("table_id", 0)), net.version == 6)]
            del table.routes[net]
        elif action == "add_route":
            net = ipaddress.ip_network(str(params["prefix"]), strict=False)
            table = self.tables[(int(params.get("table_id", 0)), net.version == 6)]
            nh = ipaddress.ip_address(str(params.get("next_hop", "0.0.0.0")))
            path = Path(sw_if_index=int(params.get("via_sw_if_index", U32_MAX)), nh=nh)
            table.routes[net] = Route(net, [path], next(self._stats_index))
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


def _dedupe(paths: list[Path]) -> list[Path]:
    seen: set[tuple[Any, ...]] = set()
    out = []
    for path in paths:
        ident = path.identity()
        if ident not in seen:
            seen.add(ident)
            out.append(path)
    return out
