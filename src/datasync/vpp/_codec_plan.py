"""Compiles message definitions into flat op programs, shared by the compiled codec and its twin.

One program per struct (message, type or union): a tuple of ``Op`` in wire order. Both
interpreters (``pyx/_codec.pyx`` and ``_codec_py.py``) run the same program, so they can
only differ in how they walk bytes, never in what a definition means.

The Python representation of each wire type is documented in ``datasync.vpp.codec``.
"""

from __future__ import annotations

import binascii
import collections
import datetime
import ipaddress
import operator
import socket
import struct
import sys
from collections.abc import Mapping
from typing import Any

from .defs import BASE_TYPES, ApiDefinitions, DefinitionError, FieldDef

# Op kinds. pyx/_codec.pyx mirrors these numbers in a cdef enum (a test checks they agree).
K_U8, K_I8, K_U16, K_I16, K_U32, K_I32, K_U64, K_I64, K_F64, K_BOOL = range(10)
K_BYTES = 10  # u8[N]
K_STR = 11  # string[N], NUL padded
K_VSTR = 12  # string[]: u32 BE length + bytes
K_VBYTES = 13  # u8[n], n an earlier field
K_LBYTES = 14  # legacy u8[0]: the rest of the message
K_STRUCT = 15
K_UNION = 16
K_ARRAY = 17  # T[N]
K_VLA = 18  # T[n]
K_LVLA = 19  # legacy T[0]

# Conversions between wire structs and Python objects, keyed by the type name as vpp-papi does.
(
    C_NONE,
    C_IP4,
    C_IP6,
    C_ADDRESS,
    C_PREFIX,
    C_AWP,
    C_IP4_PREFIX,
    C_IP6_PREFIX,
    C_IP4_AWP,
    C_IP6_AWP,
    C_MAC,
    C_TIMESTAMP,
    C_TIMEDELTA,
) = range(13)

CONVERSIONS = {
    "ip4_address": C_IP4,
    "ip6_address": C_IP6,
    "address": C_ADDRESS,
    "prefix": C_PREFIX,
    "address_with_prefix": C_AWP,
    "ip4_prefix": C_IP4_PREFIX,
    "ip6_prefix": C_IP6_PREFIX,
    "ip4_address_with_prefix": C_IP4_AWP,
    "ip6_address_with_prefix": C_IP6_AWP,
    "mac_address": C_MAC,
    "timestamp": C_TIMESTAMP,
    "timedelta": C_TIMEDELTA,
}

INT_KINDS = {
    "u8": K_U8,
    "i8": K_I8,
    "u16": K_U16,
    "i16": K_I16,
    "u32": K_U32,
    "i32": K_I32,
    "u64": K_U64,
    "i64": K_I64,
    "f64": K_F64,
    "bool": K_BOOL,
}
#: (size, min, max) of the integer kinds
INT_RANGE = {
    K_U8: (1, 0, 0xFF),
    K_I8: (1, -0x80, 0x7F),
    K_U16: (2, 0, 0xFFFF),
    K_I16: (2, -0x8000, 0x7FFF),
    K_U32: (4, 0, 0xFFFFFFFF),
    K_I32: (4, -0x80000000, 0x7FFFFFFF),
    K_U64: (8, 0, 0xFFFFFFFFFFFFFFFF),
    K_I64: (8, -0x8000000000000000, 0x7FFFFFFFFFFFFFFF),
}


class FieldError(Exception):
    """Raised inside the interpreters; the path is completed on the way out, then CodecError."""

    def __init__(self, reason: str, path: str = "") -> None:
        self.reason = reason
        self.path = path
        super().__init__(reason)

    def under(self, name: str) -> FieldError:
        """Prefix the path with the enclosing field's name."""
        if not self.path:
            self.path = name
        elif self.path.startswith("["):
            self.path = name + self.path
        else:
            self.path = f"{name}.{self.path}"
        return self


class Op:
    """One field of a program: what to read or write, and how to convert it."""

    __slots__ = (
        "conv",
        "count_for",
        "default",
        "elem",
        "enum",
        "kind",
        "layout",
        "len_index",
        "name",
        "size",
        "type_name",
    )

    def __init__(self, name: str, kind: int, size: int, type_name: str) -> None:
        # interned: keys written as literals are the same objects, so lookups skip memcmp
        self.name = sys.intern(name)
        self.kind = kind
        self.size = size  # wire size of a fixed op; element count of K_ARRAY; -1 if variable
        self.type_name = type_name
        self.len_index = -1  # VLA: index of its length field in the same layout
        self.count_for = -1  # length field: index of the array it counts
        self.elem: Op | None = None  # arrays: the element
        self.layout: Layout | None = None  # struct / union
        self.conv = C_NONE
        self.default: Any = None
        self.enum: dict[str, int] | None = None

    def __repr__(self) -> str:
        return f"Op({self.name!r}, kind={self.kind}, size={self.size}, conv={self.conv})"


class Layout:
    """A compiled struct or union: ops in wire order, and the namedtuple it decodes into."""

    __slots__ = ("fixed_size", "index", "is_union", "name", "names", "ops", "skip", "tuple_type")

    def __init__(self, name: str, is_union: bool, skip: int = 0) -> None:
        self.name = name
        self.is_union = is_union
        self.skip = skip  # leading ops not exposed (messages: _vl_msg_id)
        self.ops: tuple[Op, ...] = ()
        self.names: tuple[str, ...] = ()
        self.index: dict[str, int] = {}
        self.fixed_size = -1
        self.tuple_type: Any = None

    def finish(self, ops: list[Op]) -> None:
        self.ops = tuple(ops)
        self.names = tuple(op.name for op in ops[self.skip :])
        self.index = {op.name: i for i, op in enumerate(ops)}
        # Field names may be Python keywords; vpp-papi renames those the same way.
        self.tuple_type = collections.namedtuple(  # type: ignore[misc]
            self.name, self.names, rename=True
        )
        sizes = [_fixed_size(op) for op in ops]
        if any(n < 0 for n in sizes):
            self.fixed_size = -1
        else:
            self.fixed_size = (max(sizes) if self.is_union else sum(sizes)) if sizes else 0


def _fixed_size(op: Op) -> int:
    if op.kind == K_ARRAY:
        assert op.elem is not None
        es = _fixed_size(op.elem)
        return -1 if es < 0 else es * op.size
    return op.size


class Compiler:
    """Compiles messages of one ``ApiDefinitions`` (types are compiled once and shared)."""

    def __init__(self, defs: ApiDefinitions) -> None:
        self.defs = defs
        self._types: dict[str, Layout] = {}

    def message(self, name: str) -> Layout:
        m = self.defs.message(name)
        if not m.fields or m.fields[0].name != "_vl_msg_id" or m.fields[0].type != "u16":
            raise DefinitionError(f"{name}: a message starts with u16 _vl_msg_id")
        layout = Layout(name, False, skip=1)
        layout.finish(self._fields(name, m.fields, False))
        return layout

    def _struct(self, type_name: str, stack: tuple[str, ...]) -> Layout:
        layout = self._types.get(type_name)
        if layout is not None:
            return layout
        if type_name in stack:
            raise DefinitionError(f"type {type_name} contains itself")
        t = self.defs.type(type_name)
        layout = Layout(type_name, t.kind == "union")
        layout.finish(self._fields(type_name, t.fields, t.kind == "union", (*stack, type_name)))
        self._types[type_name] = layout
        return layout

    def _fields(
        self, owner: str, fields: tuple[FieldDef, ...], is_union: bool, stack: tuple[str, ...] = ()
    ) -> list[Op]:
        ops: list[Op] = []
        index: dict[str, int] = {}
        for f in fields:
            where = f"{owner}.{f.name}"
            op = self._field(where, f, stack)
            if f.length_field is not None:
                if is_union:
                    raise DefinitionError(f"{where}: variable arrays in a union")
                li = index.get(f.length_field)
                if li is None:
                    raise DefinitionError(f"{where}: length field {f.length_field} not found")
                if ops[li].kind not in (K_U8, K_U16, K_U32, K_U64, K_I8, K_I16, K_I32, K_I64):
                    raise DefinitionError(f"{where}: length field {f.length_field} is not an int")
                op.len_index = li
                if ops[li].count_for < 0:
                    ops[li].count_for = len(ops)
            index[f.name] = len(ops)
            ops.append(op)
        return ops

    def _field(self, where: str, f: FieldDef, stack: tuple[str, ...]) -> Op:
        if f.length is None:
            return self._scalar(where, f.name, f.type, f.options, stack)
        if f.type == "string":
            if f.length_field is not None:
                raise DefinitionError(f"{where}: string with a length field is not supported")
            return (
                Op(f.name, K_STR, f.length, "string")
                if f.length
                else Op(f.name, K_VSTR, -1, "string")
            )
        if f.type == "u8" and f.length_field is None:
            return (
                Op(f.name, K_BYTES, f.length, "u8") if f.length else Op(f.name, K_LBYTES, -1, "u8")
            )
        if f.type == "u8":
            return Op(f.name, K_VBYTES, -1, "u8")
        elem = self._scalar(where, f.name, f.type, {}, stack)
        if _fixed_size(elem) < 0:
            raise DefinitionError(f"{where}: arrays of variable-size elements are not supported")
        if f.length_field is not None:
            op = Op(f.name, K_VLA, -1, f.type)
        elif f.length:
            op = Op(f.name, K_ARRAY, f.length, f.type)
        else:
            op = Op(f.name, K_LVLA, -1, f.type)
        op.elem = elem
        return op

    def _scalar(
        self,
        where: str,
        name: str,
        type_name: str,
        options: Mapping[str, Any],
        stack: tuple[str, ...],
    ) -> Op:
        """A field of one value of ``type_name`` (resolving aliases and enums)."""
        conv = CONVERSIONS.get(type_name, C_NONE)
        if type_name in INT_KINDS:
            kind = INT_KINDS[type_name]
            op = Op(name, kind, BASE_TYPES[type_name], type_name)
        elif type_name == "string":
            raise DefinitionError(f"{where}: a string needs a length ([N] or [])")
        elif type_name in BASE_TYPES:
            raise DefinitionError(f"{where}: unsupported type {type_name}")
        else:
            t = self.defs.type(type_name)
            if t.kind in ("enum", "enumflag"):
                kind = INT_KINDS[t.enumtype]
                op = Op(name, kind, INT_RANGE[kind][0], type_name)
                op.enum = dict(t.values)
            elif t.kind == "alias":
                assert t.alias is not None
                target = FieldDef(t.alias.type, name, t.alias.length)
                op = self._field(where, target, stack)
                op.type_name = type_name
            else:
                layout = self._struct(type_name, stack)
                op = Op(
                    name, K_UNION if layout.is_union else K_STRUCT, layout.fixed_size, type_name
                )
                op.layout = layout
        if "default" in options and op.kind <= K_BOOL:
            d = options["default"]
            if op.kind == K_BOOL:
                d = bool(d)  # vpp-papi packs the JSON value with ">?": "true" (and "False") -> 1
            elif op.kind == K_F64:
                d = float(d)
            else:
                d = int(d)
            op.default = d
        if conv != C_NONE:
            if op.size < 0:
                raise DefinitionError(f"{where}: converted type {type_name} of variable size")
            op.conv = conv
        return op


# --- conversions ---------------------------------------------------------------------------


class MacAddress(bytes):
    """A MAC address: 6 bytes, printed as ``aa:bb:cc:dd:ee:ff``; equal to its bytes and text.

    Compares equal to vpp-papi's ``MACAddress`` (through ``.packed``) and to its string form.
    """

    __slots__ = ()

    def __new__(cls, value: Any) -> MacAddress:
        if isinstance(value, str):
            value = mac_from_str(value)
        elif not isinstance(value, bytes | bytearray | memoryview):
            value = getattr(value, "packed", value)
        b = bytes.__new__(cls, value)
        if len(b) != 6:
            raise ValueError(f"a MAC address has 6 bytes, got {len(b)}")
        return b

    @property
    def packed(self) -> bytes:
        """The 6 bytes (the attribute name ipaddress and vpp-papi use)."""
        return bytes(self)

    def __str__(self) -> str:
        return self.hex(":")

    def __repr__(self) -> str:
        return f"MacAddress('{self.hex(':')}')"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, bytes | bytearray):
            return bytes.__eq__(self, bytes(other))
        if isinstance(other, str):
            try:
                return bytes.__eq__(self, mac_from_str(other))
            except ValueError:
                return False
        packed = getattr(other, "packed", None)
        if isinstance(packed, bytes):
            return bytes.__eq__(self, packed)
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = bytes.__hash__


def mac_from_str(s: str) -> bytes:
    """``"aa:bb:cc:dd:ee:ff"`` (or with ``-`` / no separators) -> 6 bytes."""
    try:
        b = binascii.unhexlify(s.replace(":", "").replace("-", ""))
    except (binascii.Error, ValueError):
        raise ValueError(f"not a MAC address: {s!r}") from None
    if len(b) != 6:
        raise ValueError(f"not a MAC address: {s!r}")
    return b


_inet_pton = socket.inet_pton
_AF4 = socket.AF_INET
_AF6 = socket.AF_INET6
_V4_TYPES = (ipaddress.IPv4Address, ipaddress.IPv4Network, ipaddress.IPv4Interface)
_NUL16 = bytes(16)
_EPOCH = datetime.datetime(1970, 1, 1)


def _ip_text(s: str) -> tuple[int, bytes]:
    """(af, packed) of an IP address in text, as vpp-papi reads it (IPv6 first, then IPv4).

    Only a text with ':' can be IPv6 and only one without can be IPv4, so one inet_pton
    decides (no exception on the common path).
    """
    try:
        if ":" in s:
            return 1, _inet_pton(_AF6, s)
        return 0, _inet_pton(_AF4, s)
    except (OSError, ValueError):
        raise ValueError(f"not an IP address: {s!r}") from None


def _ip_obj(v: Any) -> tuple[int, bytes]:
    if isinstance(v, str):
        return _ip_text(v)
    if isinstance(v, ipaddress.IPv4Address):
        return 0, v.packed
    if isinstance(v, ipaddress.IPv6Address):
        return 1, v.packed
    raise TypeError(f"expected an IP address (str or ipaddress), got {type(v).__name__}")


def _prefix_obj(v: Any) -> tuple[int, bytes, int]:
    """(af, packed address, length) of "a/len", a Network (its network address) or an Interface."""
    if isinstance(v, str):
        addr, sep, plen = v.partition("/")
        if not sep:
            raise ValueError(f"not a prefix (address/len): {v!r}")
        af, packed = _ip_text(addr)
        try:
            n = int(plen)
        except ValueError:
            raise ValueError(f"bad prefix length in {v!r}") from None
        return af, packed, n
    if isinstance(v, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return (0 if v.version == 4 else 1), v.network_address.packed, v.prefixlen
    if isinstance(v, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        return (0 if v.version == 4 else 1), v.packed, v.network.prefixlen
    raise TypeError(f"expected a prefix (str, ip_network or ip_interface), got {type(v).__name__}")


def _plen(af: int, n: int) -> bytes:
    """The length byte of a prefix: 0-32 for IPv4, 0-128 for IPv6 (what decoding accepts)."""
    top = 32 if af == 0 else 128
    if not 0 <= n <= top:
        raise ValueError(f"prefix length {n} out of range for IPv{4 if af == 0 else 6} [0, {top}]")
    return bytes((n,))


def check_prefix_len(conv: int, b: bytes | bytearray) -> None:
    """Raise FieldError (at ``len``) when the wire bytes of a prefix given as a mapping or a
    record, ``{"address": ..., "len": 33}``, hold a length that decoding would reject."""
    if conv in (C_PREFIX, C_AWP):
        if len(b) < 18 or b[0] > 1:
            return  # an unknown address family decodes to None whatever the length
        af, n = b[0], b[17]
    elif conv in (C_IP4_PREFIX, C_IP4_AWP):
        if len(b) < 5:
            return
        af, n = 0, b[4]
    elif conv in (C_IP6_PREFIX, C_IP6_AWP):
        if len(b) < 17:
            return
        af, n = 1, b[16]
    else:
        return
    top = 32 if af == 0 else 128
    if n > top:
        raise FieldError(
            f"prefix length {n} out of range for IPv{4 if af == 0 else 6} [0, {top}]", "len"
        )


def conv_pack(conv: int, v: Any) -> bytes:
    """Wire bytes of a non-structural value of a converted type (raises TypeError/ValueError)."""
    if conv in (C_IP4, C_IP6):
        want = 0 if conv == C_IP4 else 1
        if isinstance(v, str):
            try:
                return _inet_pton(_AF4 if want == 0 else _AF6, v)
            except OSError:
                raise ValueError(f"not an IPv{4 if want == 0 else 6} address: {v!r}") from None
        packed = getattr(v, "packed", None)
        if isinstance(packed, bytes) and len(packed) == (4 if want == 0 else 16):
            return packed
        raise TypeError(f"expected an IPv{4 if want == 0 else 6} address, got {v!r}")
    if conv == C_MAC:
        if isinstance(v, str):
            return mac_from_str(v)
        packed = getattr(v, "packed", None)
        if isinstance(packed, bytes) and len(packed) == 6:
            return packed
        raise TypeError(f"expected a MAC address, got {v!r}")
    if conv == C_ADDRESS:
        af, packed = _ip_obj(v)
        return bytes((af,)) + packed + _NUL16[len(packed) :]
    if conv in (C_PREFIX, C_AWP):
        af, packed, n = _prefix_obj(v)
        return bytes((af,)) + packed + _NUL16[len(packed) :] + _plen(af, n)
    if conv in (C_IP4_PREFIX, C_IP4_AWP, C_IP6_PREFIX, C_IP6_AWP):
        af, packed, n = _prefix_obj(v)
        want = 0 if conv in (C_IP4_PREFIX, C_IP4_AWP) else 1
        if af != want:
            raise ValueError(f"expected an IPv{4 if want == 0 else 6} prefix, got {v!r}")
        return packed + _plen(af, n)
    if conv in (C_TIMESTAMP, C_TIMEDELTA):
        if isinstance(v, datetime.datetime):
            secs = (v - _EPOCH).total_seconds()
        elif isinstance(v, datetime.timedelta):
            secs = v.total_seconds()
        else:
            secs = float(v)
        return struct.pack("=d", secs)
    raise TypeError(f"no conversion {conv}")


# Fast constructors: ipaddress objects built the way their __init__ builds them, without
# re-parsing (IPv4Address(bytes) costs ~0.7 us, an IPv4Network ~3 us on this machine).
# A test checks they equal, hash and print like the real constructors.
# (typed Any: they set the private attributes ipaddress's own __init__ sets)
_new: Any = object.__new__
_V4A: Any = ipaddress.IPv4Address
_V6A: Any = ipaddress.IPv6Address
_V4N: Any = ipaddress.IPv4Network
_V6N: Any = ipaddress.IPv6Network
_V4I: Any = ipaddress.IPv4Interface
_V6I: Any = ipaddress.IPv6Interface
_from_bytes = int.from_bytes


def ip4_from_int(n: int) -> ipaddress.IPv4Address:
    a = _new(_V4A)
    a._ip = n
    return a  # type: ignore[no-any-return]


def ip6_from_int(n: int) -> ipaddress.IPv6Address:
    a = _new(_V6A)
    a._ip = n
    a._scope_id = None
    return a  # type: ignore[no-any-return]


def _net(af: int, n: int, plen: int) -> Any:
    """ip_network((n, plen), strict=False): host bits masked, as vpp-papi decodes prefixes."""
    cls, mk = (_V4N, ip4_from_int) if af == 0 else (_V6N, ip6_from_int)
    netmask, plen = cls._make_netmask(plen)  # validates the length; cached per length
    net = _new(cls)
    net.network_address = mk(n & netmask._ip)
    net.netmask = netmask
    net._prefixlen = plen
    if plen == cls._max_prefixlen - 1:
        net.hosts = net.__iter__
    elif plen == cls._max_prefixlen:
        net.hosts = lambda: [mk(n)]
    return net


def _iface(af: int, n: int, plen: int) -> Any:
    """ip_interface((n, plen))."""
    net = _net(af, n, plen)
    i = _new(_V4I if af == 0 else _V6I)
    i._ip = n
    if af == 1:
        i._scope_id = None
    i.network = net
    i.netmask = net.netmask
    i._prefixlen = net._prefixlen
    return i


def _dec_ip4(b: bytes) -> Any:
    return ip4_from_int(_from_bytes(b, "big"))


def _dec_ip6(b: bytes) -> Any:
    return ip6_from_int(_from_bytes(b, "big"))


def _dec_address(b: bytes) -> Any:
    af = b[0]
    if af == 0:
        return ip4_from_int(_from_bytes(b[1:5], "big"))
    if af == 1:
        return ip6_from_int(_from_bytes(b[1:17], "big"))
    return None  # vpp-papi: an unknown address family decodes to None


def _dec_prefix(b: bytes) -> Any:
    af = b[0]
    if af == 0:
        return _net(0, _from_bytes(b[1:5], "big"), b[17])
    if af == 1:
        return _net(1, _from_bytes(b[1:17], "big"), b[17])
    return None


def _dec_awp(b: bytes) -> Any:
    af = b[0]
    if af == 0:
        return _iface(0, _from_bytes(b[1:5], "big"), b[17])
    if af == 1:
        return _iface(1, _from_bytes(b[1:17], "big"), b[17])
    return None


def _dec_unsupported(b: bytes) -> Any:
    raise TypeError("no conversion")


#: decoders by conversion code: wire bytes of the type -> Python object
DECODERS: tuple[Any, ...] = (
    _dec_unsupported,  # C_NONE
    _dec_ip4,
    _dec_ip6,
    _dec_address,
    _dec_prefix,
    _dec_awp,
    lambda b: _net(0, _from_bytes(b[:4], "big"), b[4]),  # ip4_prefix
    lambda b: _net(1, _from_bytes(b[:16], "big"), b[16]),  # ip6_prefix
    lambda b: _iface(0, _from_bytes(b[:4], "big"), b[4]),  # ip4_address_with_prefix
    lambda b: _iface(1, _from_bytes(b[:16], "big"), b[16]),  # ip6_address_with_prefix
    lambda b: bytes.__new__(MacAddress, b),
    lambda b: datetime.datetime.fromtimestamp(struct.unpack("=d", b)[0]),
    lambda b: datetime.timedelta(seconds=struct.unpack("=d", b)[0]),
)


def conv_unpack(conv: int, b: bytes) -> Any:
    """The Python object of a converted type from its wire bytes (raises ValueError)."""
    return DECODERS[conv](b)


def is_record(v: Any) -> bool:
    """A namedtuple (what decode returns), accepted on encode like a mapping."""
    return isinstance(v, tuple) and hasattr(type(v), "_fields")


def check_names(layout: Layout, keys: Any) -> None:
    """Raise FieldError naming the first key that is not a field of ``layout``."""
    for k in keys:
        if k not in layout.index or layout.index[k] < layout.skip:
            raise FieldError(f"unknown field {k!r} (fields: {', '.join(layout.names)})", str(k))


def int_value(v: Any) -> int:
    """The integer of an int field's value: an int by its value (a subclass's ``__index__`` is
    not called, as ``struct`` does not call it), another object through its ``__index__``."""
    try:
        return operator.index(v)
    except TypeError:
        if not hasattr(type(v), "__index__"):
            raise FieldError(f"expected an integer, got {type(v).__name__}") from None
        raise _index_error(v) from None
    except Exception:
        raise _index_error(v) from None


def _index_error(v: Any) -> FieldError:
    exc = sys.exc_info()[1]
    return FieldError(
        f"expected an integer, got {type(v).__name__} whose __index__ raised "
        f"{type(exc).__name__}: {exc}"
    )


def bool_value(v: Any) -> int:
    """The wire value of a bool field: 1 for True, 0 for False; the ints 0 and 1 (by value,
    as vpp-papi's users pass them) are taken too. Anything else is an error: a truthy
    value such as ``"false"`` or ``2`` is not read as its truth value."""
    if v is True:
        return 1
    if v is False:
        return 0
    if issubclass(type(v), int):
        n = operator.index(v)  # an int subclass by its value, without calling its methods
        if n == 0 or n == 1:
            return n
        raise FieldError(f"expected a bool (or 0 / 1), got {n}")
    raise FieldError(f"expected a bool (or 0 / 1), got {type(v).__name__}")


def enum_value(op: Op, v: str) -> int:
    """The value of an enum member given by name."""
    if op.enum is None:
        raise FieldError("expected an integer, got str")
    if v not in op.enum:
        raise FieldError(f"{v!r} is not a member of enum {op.type_name}")
    return op.enum[v]
