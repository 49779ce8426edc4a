"""Value models of the VPP plugins: vpp-agent's models, JSON and key layout.

Values are JSON as vpp-agent users keep them (``ligato.vpp.interfaces.Interface``,
``ligato.vpp.l2.BridgeDomain``, ``ligato.vpp.l3.Route``, ``ligato.vpp.l3.VrfTable``).
As protojson does, both the proto field names (``phys_address``) and the lowerCamelCase
JSON names (``physAddress``) are accepted, enum values by name or number, and an unknown
field is an error. msgspec decodes and type-checks in compiled code; the checks msgspec
cannot express (addresses, MACs, the key derived from the value) follow. Every problem is
an :class:`InvalidValueError` naming the key and the field, never another exception:
values are untrusted.
"""

from __future__ import annotations

import enum
import ipaddress
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple, TypeVar

import msgspec
from msgspec import Meta, Struct

from ..api import MAX_VALUE_BYTES
from ..errors import InvalidValueError

__all__ = [
    "BD_PREFIX",
    "IF_PREFIX",
    "ROUTE_PREFIX",
    "VRF_PREFIX",
    "BridgeDomain",
    "BridgeDomainInterface",
    "IfType",
    "Interface",
    "MemifLink",
    "MemifMode",
    "Route",
    "RouteSpec",
    "RouteType",
    "TapLink",
    "VrfProtocol",
    "VrfTable",
    "decode",
    "route_key",
    "vrf_key",
]

#: key prefixes (vpp-agent's), formatted with the agent's label
IF_PREFIX = "/vnf-agent/{label}/config/vpp/v2/interfaces/"
BD_PREFIX = "/vnf-agent/{label}/config/vpp/l2/v2/bridge-domain/"
ROUTE_PREFIX = "/vnf-agent/{label}/config/vpp/v2/route/"
VRF_PREFIX = "/vnf-agent/{label}/config/vpp/v2/vrf-table/"

#: VPP tags (interface tag, bd_tag) and table names are string[64]: 63 bytes + NUL
TAG_MAX_BYTES = 63
#: VPP's largest L3 MTU (ETHERNET_MAX_PACKET_BYTES)
MTU_MAX = 9216

U8 = Annotated[int, Meta(ge=0, le=0xFF)]
U16 = Annotated[int, Meta(ge=0, le=0xFFFF)]
U32 = Annotated[int, Meta(ge=0, le=0xFFFFFFFF)]


class IfType(enum.IntEnum):
    """``ligato.vpp.interfaces.Interface.Type``; only three are supported here."""

    UNDEFINED_TYPE = 0
    SUB_INTERFACE = 1
    SOFTWARE_LOOPBACK = 2
    DPDK = 3
    MEMIF = 4
    TAP = 5
    AF_PACKET = 6
    VXLAN_TUNNEL = 7
    IPSEC_TUNNEL = 8
    VMXNET3_INTERFACE = 9
    BOND_INTERFACE = 10
    GRE_TUNNEL = 11
    GTPU_TUNNEL = 12
    IPIP_TUNNEL = 13
    WIREGUARD_TUNNEL = 14
    RDMA = 15


SUPPORTED_TYPES = frozenset({IfType.SOFTWARE_LOOPBACK, IfType.TAP, IfType.MEMIF})


class MemifMode(enum.IntEnum):
    ETHERNET = 0
    IP = 1
    PUNT_INJECT = 2


class RouteType(enum.IntEnum):
    INTRA_VRF = 0
    INTER_VRF = 1
    DROP = 2


class VrfProtocol(enum.IntEnum):
    IPV4 = 0
    IPV6 = 1


class TapLink(Struct, forbid_unknown_fields=True):
    version: U32 = 0
    host_if_name: str = ""
    to_microservice: str = ""
    rx_ring_size: U16 = 0
    tx_ring_size: U16 = 0
    enable_gso: bool = False
    enable_tunnel: bool = False


class MemifLink(Struct, forbid_unknown_fields=True):
    mode: MemifMode = MemifMode.ETHERNET
    master: bool = False
    id: U32 = 0
    socket_filename: Annotated[str, Meta(max_length=107)] = ""
    secret: Annotated[str, Meta(max_length=24)] = ""
    ring_size: U32 = 0
    buffer_size: U16 = 0
    rx_queues: U8 = 0
    tx_queues: U8 = 0


class Interface(Struct, forbid_unknown_fields=True):
    """``ligato.vpp.interfaces.Interface`` (the fields datasync supports)."""

    name: str = ""
    type: IfType = IfType.UNDEFINED_TYPE
    enabled: bool = False
    phys_address: str = ""
    ip_addresses: Annotated[list[str], Meta(max_length=1024)] = []
    vrf: U32 = 0
    mtu: Annotated[int, Meta(ge=0, le=MTU_MAX)] = 0
    tap: TapLink | None = None
    memif: MemifLink | None = None
    # vpp-agent fields datasync does not support: accepted at their defaults only
    set_dhcp_client: bool = False
    unnumbered: dict[str, Any] | None = None
    rx_modes: list[Any] = []
    rx_placements: list[Any] = []
    ip6_nd: dict[str, Any] | None = None


#: Interface fields that must keep their default (see check_interface)
_UNSUPPORTED_IF = ("set_dhcp_client", "unnumbered", "rx_modes", "rx_placements", "ip6_nd")


class BridgeDomainInterface(Struct, forbid_unknown_fields=True):
    name: str = ""
    bridged_virtual_interface: bool = False
    split_horizon_group: U8 = 0


class BridgeDomain(Struct, forbid_unknown_fields=True):
    """``ligato.vpp.l2.BridgeDomain``."""

    name: str = ""
    flood: bool = False
    unknown_unicast_flood: bool = False
    forward: bool = False
    learn: bool = False
    arp_termination: bool = False
    mac_age: U8 = 0
    interfaces: Annotated[list[BridgeDomainInterface], Meta(max_length=4096)] = []
    #: vpp-agent's ARP termination entries: not supported, accepted empty
    arp_termination_table: list[Any] = []


class Route(Struct, forbid_unknown_fields=True):
    """``ligato.vpp.l3.Route``."""

    type: RouteType = RouteType.INTRA_VRF
    vrf_id: U32 = 0
    dst_network: str = ""
    next_hop_addr: str = ""
    outgoing_interface: str = ""
    weight: U8 = 0
    preference: U8 = 0
    via_vrf_id: U32 = 0


class VrfTable(Struct, forbid_unknown_fields=True):
    """``ligato.vpp.l3.VrfTable``."""

    id: U32 = 0
    protocol: VrfProtocol = VrfProtocol.IPV4
    label: str = ""


# -- decoding: both naming styles, enums by name or number --------------------------------


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


@dataclass(frozen=True)
class _Shape:
    """How to normalise a JSON object into a Struct: its names, nested structs, enums."""

    names: dict[str, str]  # JSON name (either style) -> field name
    nested: dict[str, tuple[type[Struct], bool]]  # field -> (struct, is a list of it)
    enums: dict[str, type[enum.IntEnum]]


_SHAPES: dict[type[Struct], _Shape] = {}


def _shape(cls: type[Struct]) -> _Shape:
    shape = _SHAPES.get(cls)
    if shape is not None:
        return shape
    hints = typing.get_type_hints(cls)
    names: dict[str, str] = {}
    nested: dict[str, tuple[type[Struct], bool]] = {}
    enums: dict[str, type[enum.IntEnum]] = {}
    for field in cls.__struct_fields__:
        names[field] = names[_camel(field)] = field
        inner = hints[field]
        if typing.get_origin(inner) in (typing.Union, types.UnionType):  # X | None
            inner = next(a for a in typing.get_args(inner) if a is not type(None))
        is_list = typing.get_origin(inner) is list
        if is_list:
            inner = typing.get_args(inner)[0]
        if isinstance(inner, type) and issubclass(inner, Struct):
            nested[field] = (inner, is_list)
        elif isinstance(inner, type) and issubclass(inner, enum.IntEnum):
            enums[field] = inner
    shape = _SHAPES[cls] = _Shape(names, nested, enums)
    return shape


def _normalise(doc: Any, cls: type[Struct], path: str) -> Any:
    """Rename JSON names to field names and enum names to numbers, recursively; anything
    of the wrong shape is left for msgspec to reject with its path."""
    if not isinstance(doc, dict):
        return doc
    shape = _shape(cls)
    out: dict[str, Any] = {}
    for name, value in doc.items():
        field = shape.names.get(name)
        if field is None:
            raise _Invalid(f"{path}{name}: unknown field")
        if field in out:
            raise _Invalid(f"{path}{field}: given twice (as {field} and {_camel(field)})")
        if field in shape.nested:
            sub, is_list = shape.nested[field]
            if is_list and isinstance(value, list):
                value = [_normalise(v, sub, f"{path}{field}[{i}].") for i, v in enumerate(value)]
            elif not is_list:
                value = _normalise(value, sub, f"{path}{field}.")
        elif field in shape.enums and isinstance(value, str):
            members = shape.enums[field].__members__
            if value not in members:
                allowed = ", ".join(members)
                raise _Invalid(f"{path}{field}: unknown value {value!r} (one of {allowed})")
            value = int(members[value])
        out[field] = value
    return out


class _Invalid(Exception):
    pass


M = TypeVar("M", bound=Struct)


def decode(cls: type[M], key: str, value: bytes) -> M:
    """Decode and type-check a JSON value as ``cls``; errors name the key and the field."""
    if len(value) > MAX_VALUE_BYTES:
        raise InvalidValueError(key, f"value of {len(value)} bytes exceeds {MAX_VALUE_BYTES}")
    try:
        doc = msgspec.json.decode(value)
    except RecursionError:
        raise InvalidValueError(key, "value is nested too deeply") from None
    except msgspec.DecodeError as exc:
        raise InvalidValueError(key, f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidValueError(key, f"expected a JSON object, got {type(doc).__name__}")
    try:
        return msgspec.convert(_normalise(doc, cls, ""), cls)
    except _Invalid as exc:
        raise InvalidValueError(key, f"field {exc}") from None
    except msgspec.ValidationError as exc:
        raise InvalidValueError(key, _field_error(str(exc))) from None


def _field_error(text: str) -> str:
    # msgspec: "Expected `int` <= 9216, got `70000` - at `$.mtu`"
    msg, sep, where = text.rpartition(" - at `$.")
    if not sep:
        return text
    return f"field {where.rstrip('`')}: {msg}"


# -- semantic checks and keys -------------------------------------------------------------


def check_name(key: str, name: str, what: str = "name") -> None:
    """A name kept in a VPP tag: 1..63 bytes, one key segment."""
    if not name:
        raise InvalidValueError(key, f"field {what}: must not be empty")
    if len(name.encode()) > TAG_MAX_BYTES:
        raise InvalidValueError(key, f"field {what}: longer than {TAG_MAX_BYTES} bytes")
    if "/" in name:
        raise InvalidValueError(key, f"field {what}: must not contain '/'")
    if "\x00" in name:  # VPP's strings end at NUL: the tag read back would not match
        raise InvalidValueError(key, f"field {what}: must not contain NUL")


def parse_mac(key: str, text: str, field: str) -> bytes:
    parts = text.replace("-", ":").split(":")
    try:
        raw = bytes(int(p, 16) for p in parts)
    except ValueError:
        raw = b""
    if len(raw) != 6 or not all(len(p) == 2 for p in parts):
        raise InvalidValueError(key, f"field {field}: {text!r} is not a MAC address")
    return raw


IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _unscoped(key: str, text: str, field: str) -> None:
    if "%" in text:  # Python takes "fe80::1%eth0"; VPP's API has no scope
        raise InvalidValueError(key, f"field {field}: {text!r}: scoped addresses are not supported")


def parse_ip_interface(key: str, text: str, field: str) -> IPInterface:
    _unscoped(key, text, field)
    if "/" not in text:
        raise InvalidValueError(key, f"field {field}: {text!r} has no prefix length")
    try:
        return ipaddress.ip_interface(text)
    except ValueError as exc:
        raise InvalidValueError(key, f"field {field}: {exc}") from None


def parse_network(key: str, text: str, field: str) -> IPNetwork:
    _unscoped(key, text, field)
    if "/" not in text:
        raise InvalidValueError(key, f"field {field}: {text!r} has no prefix length")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise InvalidValueError(key, f"field {field}: {exc}") from None


def parse_address(key: str, text: str, field: str) -> IPAddress:
    _unscoped(key, text, field)
    try:
        return ipaddress.ip_address(text)
    except ValueError as exc:
        raise InvalidValueError(key, f"field {field}: {exc}") from None


def _pow2(n: int) -> bool:
    return n & (n - 1) == 0


def check_interface(key: str, name: str, m: Interface) -> list[IPInterface]:
    """What msgspec cannot check of an interface (``name`` is the key's name); its
    addresses, parsed."""
    check_name(key, name)
    if m.name != name:
        raise InvalidValueError(
            key, f"field name: {m.name!r} does not match the key (expected {name!r})"
        )
    if m.type not in SUPPORTED_TYPES:
        raise InvalidValueError(key, f"field type: {m.type.name} is not supported")
    for f in _UNSUPPORTED_IF:
        if getattr(m, f):
            raise InvalidValueError(key, f"field {f}: not supported by datasync")
    if m.tap is not None and m.type is not IfType.TAP:
        raise InvalidValueError(key, f"field tap: set on a {m.type.name} interface")
    if m.memif is not None and m.type is not IfType.MEMIF:
        raise InvalidValueError(key, f"field memif: set on a {m.type.name} interface")
    if m.phys_address:
        parse_mac(key, m.phys_address, "phys_address")
    seen: list[IPInterface] = []
    for i, text in enumerate(m.ip_addresses):
        field = f"ip_addresses[{i}]"
        addr = parse_ip_interface(key, text, field)
        if addr.ip.is_unspecified or addr.ip.is_multicast or addr.network.prefixlen == 0:
            raise InvalidValueError(key, f"field {field}: {text} cannot be an interface address")
        for j, other in enumerate(seen):
            if addr.ip == other.ip or (
                addr.network.prefixlen != other.network.prefixlen
                and addr.network.overlaps(other.network)
            ):
                raise InvalidValueError(key, f"field {field}: {text} overlaps ip_addresses[{j}]")
        seen.append(addr)
    if m.tap is not None:
        if len(m.tap.host_if_name.encode()) > TAG_MAX_BYTES:
            raise InvalidValueError(key, "field tap.host_if_name: longer than 63 bytes")
        for f in ("rx_ring_size", "tx_ring_size"):
            if not _pow2(getattr(m.tap, f)):
                raise InvalidValueError(key, f"field tap.{f}: must be a power of 2")
    if m.memif is not None and not _pow2(m.memif.ring_size):
        raise InvalidValueError(key, "field memif.ring_size: must be a power of 2")
    return seen


def check_bridge_domain(key: str, name: str, m: BridgeDomain) -> None:
    check_name(key, name)
    if m.name != name:
        raise InvalidValueError(
            key, f"field name: {m.name!r} does not match the key (expected {name!r})"
        )
    if m.arp_termination_table:
        raise InvalidValueError(key, "field arp_termination_table: not supported by datasync")
    seen: set[str] = set()
    bvis = 0
    for i, member in enumerate(m.interfaces):
        if not member.name:
            raise InvalidValueError(key, f"field interfaces[{i}].name: must not be empty")
        if member.name in seen:
            raise InvalidValueError(key, f"field interfaces[{i}].name: {member.name} twice")
        seen.add(member.name)
        bvis += member.bridged_virtual_interface
    if bvis > 1:
        raise InvalidValueError(key, "field interfaces: more than one bridged_virtual_interface")


class RouteSpec(NamedTuple):
    """A validated route's identity in canonical form (parsed once, at validation)."""

    vrf_id: int
    is_ip6: bool
    network: str  # "10.0.0.0/8"
    next_hop: str  # canonical, "" for none
    path_table: int  # the table the next hop is resolved in
    path_type: int  # fib_path_type: 0 NORMAL, 2 DROP


def route_key(m: Route) -> str:
    """The key name vpp-agent derives from a route (after the route prefix); next hops in
    canonical form, so two spellings of one next hop are one key."""
    try:
        net = ipaddress.ip_network(m.dst_network, strict=False)
        dst = f"{net.network_address}/{net.prefixlen}"
    except ValueError:
        dst = m.dst_network
    try:
        gw = str(ipaddress.ip_address(m.next_hop_addr)) if m.next_hop_addr else ""
    except ValueError:
        gw = m.next_hop_addr
    return _route_key(m, dst, gw)


def _route_key(m: Route, dst: str, gw: str) -> str:
    out = f"if/{m.outgoing_interface}/" if m.outgoing_interface else ""
    out += f"vrf/{m.vrf_id}/dst/{dst}/"
    return out + (f"gw/{gw}" if gw else "")


def vrf_key(m: VrfTable) -> str:
    return f"id/{m.id}/protocol/{m.protocol.name}"


def check_route(key: str, name: str, m: Route) -> RouteSpec:
    """Validate a route; its identity in canonical form."""
    dst = parse_network(key, m.dst_network, "dst_network")
    nh_text = ""
    if m.next_hop_addr:
        nh = parse_address(key, m.next_hop_addr, "next_hop_addr")
        if nh.version != dst.version:
            raise InvalidValueError(
                key, f"field next_hop_addr: IPv{nh.version} next hop for an IPv{dst.version} route"
            )
        nh_text = str(nh)
    if m.outgoing_interface:
        check_name(key, m.outgoing_interface, "outgoing_interface")
    if m.type is RouteType.DROP and (m.next_hop_addr or m.outgoing_interface):
        raise InvalidValueError(key, "field type: a DROP route has no next hop or interface")
    if m.type is RouteType.INTER_VRF and m.outgoing_interface:
        raise InvalidValueError(key, "field outgoing_interface: not with an INTER_VRF route")
    network = f"{dst.network_address}/{dst.prefixlen}"
    _check_derived(key, name, _route_key(m, network, nh_text))
    return RouteSpec(
        m.vrf_id,
        dst.version == 6,
        network,
        nh_text,
        m.via_vrf_id if m.type is RouteType.INTER_VRF else m.vrf_id,
        2 if m.type is RouteType.DROP else 0,
    )


def check_vrf(key: str, name: str, m: VrfTable) -> None:
    if len(m.label.encode()) > TAG_MAX_BYTES:
        raise InvalidValueError(key, f"field label: longer than {TAG_MAX_BYTES} bytes")
    if "\x00" in m.label:
        raise InvalidValueError(key, "field label: must not contain NUL")
    _check_derived(key, name, vrf_key(m))


def _check_derived(key: str, name: str, derived: str) -> None:
    if name != derived:
        raise InvalidValueError(
            key, f"the key does not match the value: key has {name!r}, value gives {derived!r}"
        )
