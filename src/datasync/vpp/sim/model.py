"""The simulator's dataplane objects: interfaces, bridge domains, FIB paths, routes,
tables, and the conversions between their wire shapes and plain values.

Wire-agnostic: values are ints, bytes and ``ipaddress`` objects; ``to_json`` gives what
the admin API shows and ``wire`` what a dump sends.
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
from dataclasses import dataclass, field
from typing import Any

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

U32_MAX = 0xFFFFFFFF
BD_ID_MAX = (1 << 24) - 1

# sw_interface flags / event bits.
ADMIN_UP = 1
LINK_UP = 2

# fib_path_type
PATH_NORMAL = 0
PATH_LOCAL = 1
PATH_DROP = 2
PATH_UDP_ENCAP = 3
PATH_BIER_IMP = 4
PATH_SOURCE_LOOKUP = 7

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


def prefix_struct_int(value: int, length: int, is_ip6: bool) -> dict[str, Any]:
    """``prefix`` as a plain dict, from the address as an int (the FIB's own keys)."""
    if is_ip6:
        return {"address": {"af": 1, "un": {"ip6": value.to_bytes(16, "big")}}, "len": length}
    return {"address": {"af": 0, "un": {"ip4": value.to_bytes(4, "big")}}, "len": length}


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
    #: VPP's bd_index (lowest free, 0 is bd 0's): the order bridge_domain_dump walks
    index: int = 0

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


_NO_LABELS = tuple({"is_uniform": 0, "label": 0, "ttl": 0, "exp": 0} for _ in range(16))


@dataclass(frozen=True)
class FibPath:
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
    via_label: int = 0
    obj_id: int = 0
    classify_table_index: int = 0

    def identity(self) -> tuple[Any, ...]:
        """What VPP compares when adding/removing one path of a multipath route."""
        return (self.sw_if_index, self.nh, self.table_id, self.type, self.proto)

    @functools.cached_property
    def wire(self) -> dict[str, Any]:
        """The path as ip_route_details shows it (built once: dumps repeat it)."""
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
                # VPP's fib_api_path_encode zeroes the path and fills obj_id only for
                # udp-encap and bier paths: a dump never echoes what the request sent
                "via_label": 0,
                "obj_id": self.obj_id if self.type in (PATH_UDP_ENCAP, PATH_BIER_IMP) else 0,
                "classify_table_index": 0,
            },
            "n_labels": 0,
            "label_stack": list(_NO_LABELS),
        }

    def to_wire(self) -> dict[str, Any]:
        return self.wire

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


#: the older name of :class:`FibPath` (it read like ``pathlib.Path``)
Path = FibPath


@dataclass
class Route:
    """A route added through the API."""

    prefix: IPNetwork
    paths: list[FibPath]
    stats_index: int

    @property
    def key(self) -> tuple[int, int]:
        return int(self.prefix.network_address), self.prefix.prefixlen


#: what one path of VPP's own entries is: (type, sw_if_index, proto, next hop)
PathSpec = tuple[int, int, int, IPAddress | None]


class FibEntry:
    """A FIB entry VPP makes itself (special, connected, local, network/broadcast drop).

    Its path is built on the first dump, not on the address add that made it."""

    __slots__ = ("_paths", "refs", "spec", "stats_index")

    def __init__(self, spec: PathSpec, stats_index: int) -> None:
        self.spec = spec
        self.stats_index = stats_index
        self.refs = 1
        self._paths: list[FibPath] | None = None

    @property
    def paths(self) -> list[FibPath]:
        if self._paths is None:
            kind, sw, proto, nh = self.spec
            self._paths = [FibPath(sw_if_index=sw, type=kind, proto=proto, nh=nh)]
        return self._paths


@dataclass
class Table:
    """One IP table (VRF) of one family."""

    table_id: int
    is_ip6: bool
    name: str = ""
    #: routes added through the API
    routes: dict[IPNetwork, Route] = field(default_factory=dict)
    #: VPP's own entries: (network as int, length) -> entry
    own: dict[tuple[int, int], FibEntry] = field(default_factory=dict)
    #: interfaces bound to this table (sw_interface_set_table)
    bound: set[int] = field(default_factory=set)


V4_SPECIALS = ("0.0.0.0/0", "0.0.0.0/32", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32")
V6_SPECIALS = ("::/0",)
V6_LOCAL_SPECIALS = ("fe80::/10",)

PREFIX_MASKS = {bits: [((1 << k) - 1) << (bits - k) for k in range(bits + 1)] for bits in (32, 128)}


class AddressIndex:
    """The interface addresses of one VRF and family, for VPP's overlap check.

    A check costs one lookup per prefix length in use plus one. An add or delete costs
    one update per tracked level below its length: a level is tracked from the first
    time an address of that length is checked or added (once, O(n)), and there are as
    few levels as address lengths in use. Neither grows with the number of addresses.
    """

    __slots__ = ("inner", "lengths", "levels", "masks", "nets")

    def __init__(self, bits: int) -> None:
        self.masks = PREFIX_MASKS[bits]
        #: (network, length) -> [(address, sw_if_index)] of the addresses in that subnet
        self.nets: dict[tuple[int, int], list[tuple[int, int]]] = {}
        #: length -> how many addresses have it
        self.lengths: dict[int, int] = {}
        #: (network, level) -> how many addresses with a longer length lie inside it,
        #: kept for the tracked levels only
        self.inner: dict[tuple[int, int], int] = {}
        self.levels: set[int] = set()

    def _track(self, level: int) -> None:
        self.levels.add(level)
        mask = self.masks[level]
        inner = self.inner
        for (_net, length), owners in self.nets.items():
            if length > level:
                for addr, _sw in owners:
                    key = (addr & mask, level)
                    inner[key] = inner.get(key, 0) + 1

    def conflicts(self, addr: int, length: int, sw_if_index: int) -> bool:
        masks = self.masks
        for k in self.lengths:
            if k > length:
                continue
            owners = self.nets.get((addr & masks[k], k))
            if not owners:
                continue
            if k < length:
                return True
            for o_addr, o_sw in owners:
                # VPP: "an intf may have >1 addr from the same prefix" (same length,
                # different address); any other overlap is in use
                if o_sw != sw_if_index or o_addr == addr:
                    return True
        if length not in self.levels:
            self._track(length)
        return bool(self.inner.get((addr & masks[length], length)))

    def add(self, addr: int, length: int, sw_if_index: int) -> None:
        masks = self.masks
        if length not in self.levels:
            self._track(length)
        self.nets.setdefault((addr & masks[length], length), []).append((addr, sw_if_index))
        self.lengths[length] = self.lengths.get(length, 0) + 1
        inner = self.inner
        for k in self.levels:
            if k < length:
                key = (addr & masks[k], k)
                inner[key] = inner.get(key, 0) + 1

    def remove(self, addr: int, length: int, sw_if_index: int) -> None:
        masks = self.masks
        key = (addr & masks[length], length)
        owners = self.nets.get(key)
        if not owners or (addr, sw_if_index) not in owners:
            return
        owners.remove((addr, sw_if_index))
        if not owners:
            del self.nets[key]
        left = self.lengths[length] - 1
        if left:
            self.lengths[length] = left
        else:
            del self.lengths[length]
        inner = self.inner
        for k in self.levels:
            if k < length:
                key = (addr & masks[k], k)
                n = inner[key] - 1
                if n:
                    inner[key] = n
                else:
                    del inner[key]


class Instances:
    """Instance numbers handed out lowest free first, as VPP's bitmaps do, in O(log n)."""

    __slots__ = ("_freed", "_next", "used")

    def __init__(self) -> None:
        self.used: set[int] = set()
        self._next = 0
        #: a heap of numbers below _next that were released (may hold stale ones)
        self._freed: list[int] = []

    def take_lowest(self) -> int:
        while self._freed:
            n = heapq.heappop(self._freed)
            if n not in self.used:
                self.used.add(n)
                return n
        while self._next in self.used:
            self._next += 1
        n = self._next
        self._next += 1
        self.used.add(n)
        return n

    def take(self, n: int) -> None:
        self.used.add(n)

    def release(self, n: int) -> None:
        self.used.discard(n)
        if n < self._next:
            heapq.heappush(self._freed, n)


#: a route, as the reverse indexes name it: (table key, prefix)
RouteRef = tuple[tuple[int, bool], IPNetwork]


def dedupe(paths: list[FibPath]) -> list[FibPath]:
    seen: set[tuple[Any, ...]] = set()
    out = []
    for path in paths:
        ident = path.identity()
        if ident not in seen:
            seen.add(ident)
            out.append(path)
    return out
