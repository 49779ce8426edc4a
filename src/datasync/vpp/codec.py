"""VPP message codec: the compiled one (``datasync._codec_c``) or its pure-Python twin.

``codec_for(defs, name)`` compiles a message definition once into an op program
(``_codec_plan``) and returns a ``MessageCodec``: ``encode(msg_id, fields, **kw)`` gives
the message body (``_vl_msg_id`` first), ``decode(body)`` a namedtuple of every other
field. Bytes are identical to vpp-papi 2.4.2's serializer; bad input raises
``CodecError`` naming the message and the field path (``route.paths[1].weight``).

Python representation (vpp-papi's, so ``tuple(decoded) == vpp_papi_unpack(...)[1:]``):

============================ ========================================= =====================
wire type                    decoded as                                also accepted on encode
============================ ========================================= =====================
integers, enums, enumflags   ``int`` (vpp-papi: IntFlag, equal)        enum member names
``bool``                     ``bool``                                  the ints 0 and 1
``f64``                      ``float`` (host byte order)
``string x[N]`` / ``x[]``    ``str`` (UTF-8; ``[N]`` holds <= N-1)     ``bytes``
``u8 x[N]`` / ``u8 x[n]``    ``bytes`` (``[N]``: shorter input padded)  list of ints
other arrays                 ``list``
types, unions                nested namedtuples (a union: every arm,   mapping, namedtuple;
                             decoded from the same bytes)              a union also a plain
                                                                       value (first arm
                                                                       that takes it)
ip4_address / ip6_address    ``IPv4Address`` / ``IPv6Address``         text, bytes
address                      ``IPv4Address`` / ``IPv6Address``, None   text, ipaddress,
                             for an unknown af                         ``{af, un}``
prefix                       ``IPv4Network`` / ``IPv6Network`` (host   ``"10.0.0.1/24"``,
                             bits masked, as vpp-papi)                 network, interface
address_with_prefix          ``IPv4Interface`` / ``IPv6Interface``     same as prefix
ip4/ip6_prefix (+with_...)   network / interface                       same as prefix
mac_address                  ``MacAddress`` (bytes; ``str()`` gives    ``"aa:bb:.."``, bytes
                             ``aa:bb:cc:dd:ee:ff``; equals vpp-papi's
                             ``MACAddress``)
============================ ========================================= =====================

Missing fields encode as their ``[default=...]`` or zero (also fixed arrays of types, which
vpp-papi refuses); a variable array's length field, when left out, is taken from the
array. Differences from vpp-papi, all on inputs it rejects or mishandles: unknown fields
raise at every nesting level (vpp-papi ignores them below the top); a bool field takes
``True`` / ``False`` or the ints 0 and 1, nothing else (vpp-papi packs any truthy value,
``"false"`` included, as 1); decoding never raises on text (invalid UTF-8 is replaced);
``ip4_prefix`` with host bits decodes (masked) instead of raising; a prefix length beyond
32/128 is a ``CodecError`` on encode (text, objects and ``{address, len}``) and decode.
An int subclass (an ``IntEnum``) is encoded by its value, as ``struct`` does, without
calling its ``__index__``; any other object through its ``__index__``. Note
that vpp-papi's type registry is global, so a ``[default=...]`` on one message's alias
or enum field leaks into every message parsed after it (e.g. ``interface_index`` fields
become ~0 when omitted): compare with vpp-papi with every such field given.

Decoded values may be shared between decodes (all-zero small records such as MPLS labels,
and prefixes, cached by wire bytes): they are immutable values.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .._extensions import select
from ._codec_plan import Compiler, MacAddress
from .defs import ApiDefinitions, CodecError

__all__ = ["CodecError", "MacAddress", "MessageCodec", "codec_for", "peek_msg_id"]

if TYPE_CHECKING:
    from ._codec_py import MessageCodec as _ImplCodec
    from ._codec_py import peek_msg_id
else:
    _impl = select("codec", "datasync._codec_c", "datasync.vpp._codec_py")
    _ImplCodec = _impl.MessageCodec
    peek_msg_id = _impl.peek_msg_id


class MessageCodec(Protocol):
    """What both implementations provide for one message."""

    name: str
    name_crc: str
    field_names: tuple[str, ...]
    tuple_type: Any

    def encode(self, msg_id: int, fields: Mapping[str, Any] | None = None, /, **kw: Any) -> bytes:
        """The message body: ``_vl_msg_id = msg_id`` then the fields, missing ones zero."""
        ...

    def decode(self, data: bytes | bytearray | memoryview) -> Any:
        """A namedtuple of every field but ``_vl_msg_id``."""
        ...


if TYPE_CHECKING:
    # The type checker holds the compiled module (its .pyi) and the twin to one contract.
    from .. import _codec_c
    from . import _codec_py

    _codecs: tuple[type[MessageCodec], ...] = (_codec_c.MessageCodec, _codec_py.MessageCodec)


_compilers: weakref.WeakKeyDictionary[ApiDefinitions, tuple[Compiler, dict[Any, Any]]] = (
    weakref.WeakKeyDictionary()
)


def codec_for(defs: ApiDefinitions, name: str, impl: Any = None) -> MessageCodec:
    """The codec of message ``name`` in ``defs`` (cached per definitions and name).

    ``impl`` picks an implementation module (tests pass both); default: the active one.
    """
    entry = _compilers.get(defs)
    if entry is None:
        entry = (Compiler(defs), {})
        _compilers[defs] = entry
    compiler, cache = entry
    cls = _ImplCodec if impl is None else impl.MessageCodec
    key = name if impl is None else (name, impl.__name__)
    codec = cache.get(key)
    if codec is None:
        msg = defs.message(name)
        codec = cls(compiler.message(name), msg.name_crc)
        cache[key] = codec
    return codec
