"""VPP message codec: the compiled one (``datasync._codec_c``) or its pure-Python twin.

``codec_for(defs, name)`` compiles a message definition once into an op program and returns
a ``MessageCodec`` with ``encode(msg_id, fields)`` -> body bytes and ``decode(body)`` -> a
namedtuple. The Python representation of addresses, prefixes and MACs is documented in
``datasync.vpp._codec_plan`` (it follows vpp-papi 2.4.2, whose bytes ours match exactly).
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
