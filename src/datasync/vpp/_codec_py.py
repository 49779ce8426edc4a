"""Pure-Python twin of ``datasync._codec_c``: runs the same op programs (``_codec_plan``).

Selected by ``datasync.vpp.codec`` when ``DATASYNC_NO_EXTENSIONS=1``. Behaviour, errors and
output are identical to the compiled codec; only speed differs.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from ._codec_plan import (
    C_NONE,
    INT_RANGE,
    K_ARRAY,
    K_BOOL,
    K_BYTES,
    K_F64,
    K_LBYTES,
    K_LVLA,
    K_STR,
    K_STRUCT,
    K_UNION,
    K_VBYTES,
    K_VLA,
    K_VSTR,
    FieldError,
    Layout,
    Op,
    bool_value,
    check_names,
    check_prefix_len,
    conv_pack,
    conv_unpack,
    enum_value,
    int_value,
    is_record,
)
from .defs import CodecError

__all__ = ["MessageCodec", "peek_msg_id"]

_INT_FMT = {0: ">B", 1: ">b", 2: ">H", 3: ">h", 4: ">I", 5: ">i", 6: ">Q", 7: ">q"}
_STRUCTS = {k: struct.Struct(f) for k, f in _INT_FMT.items()}
_F64 = struct.Struct("=d")  # f64 travels in host byte order (vppapigen does not swap it)
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_BYTES_LIKE = (bytes, bytearray, memoryview)


def peek_msg_id(data: bytes | bytearray | memoryview) -> int:
    """The message id: u16 big-endian at offset 0 of a message body."""
    if len(data) < 2:
        raise CodecError("?", "_vl_msg_id", f"message of {len(data)} bytes has no id")
    return int(_U16.unpack_from(data, 0)[0])


class MessageCodec:
    """Encodes and decodes one message of one set of definitions."""

    __slots__ = ("_layout", "field_names", "name", "name_crc", "tuple_type")

    def __init__(self, layout: Layout, name_crc: str) -> None:
        self._layout = layout
        self.name = layout.name
        self.name_crc = name_crc
        self.field_names: tuple[str, ...] = layout.names
        self.tuple_type = layout.tuple_type

    def __repr__(self) -> str:
        return f"<MessageCodec {self.name_crc} (twin)>"

    def encode(self, msg_id: int, fields: Mapping[str, Any] | None = None, /, **kw: Any) -> bytes:
        """The message body, starting with ``_vl_msg_id = msg_id``; missing fields are zero."""
        if fields is None:
            values: Any = kw
        elif kw:
            values = {**fields, **kw}
        else:
            values = fields
        layout = self._layout
        out = bytearray()
        try:
            if not isinstance(msg_id, int) or not 0 <= msg_id <= 0xFFFF:
                raise FieldError(f"bad message id {msg_id!r}: an int in [0, 65535]", "_vl_msg_id")
            out += _U16.pack(msg_id)
            if not isinstance(values, Mapping) and not is_record(values):
                raise FieldError(f"expected a mapping of fields, got {type(values).__name__}")
            _encode_struct(layout, values, out, 1)
        except FieldError as exc:
            raise CodecError(self.name, exc.path, exc.reason) from None
        return bytes(out)

    def decode(self, data: bytes | bytearray | memoryview) -> Any:
        """The fields (all but ``_vl_msg_id``) as a namedtuple; CodecError on bad bytes."""
        layout = self._layout
        try:
            buf = memoryview(data).cast("B")
        except (TypeError, BufferError):
            raise CodecError(self.name, "", f"cannot decode {type(data).__name__}") from None
        try:
            if len(buf) < 2:
                raise FieldError(
                    f"truncated: need 2 bytes at offset 0, have {len(buf)}", "_vl_msg_id"
                )
            values, _ = _decode_fields(layout, buf, 2, 1)
        except FieldError as exc:
            raise CodecError(self.name, exc.path, exc.reason) from None
        return layout.tuple_type._make(values)


# --- encoding ------------------------------------------------------------------------------


def _get(value: Any, name: str) -> Any:
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


def _encode_struct(layout: Layout, value: Any, out: bytearray, start: int = 0) -> None:
    """Encode a struct (or a message's fields from ``start``) from a mapping or namedtuple."""
    if value is None:
        value = {}
    elif isinstance(value, Mapping):
        check_names(layout, value)
    ops = layout.ops
    ints: list[int] = [0] * len(ops)
    for i in range(start, len(ops)):
        op = ops[i]
        v = _get(value, op.name)
        try:
            if v is None and op.count_for >= 0:
                arr = _get(value, ops[op.count_for].name)
                v = len(arr) if arr is not None else None
            if op.kind <= K_BOOL and op.kind != K_F64:
                ints[i] = _encode_int(op, v, out)
            elif op.len_index >= 0:
                _encode_vla(op, v, ints[op.len_index], out)
            else:
                _encode_op(op, v, out)
        except FieldError as exc:
            raise exc.under(op.name) from None


def _encode_int(op: Op, v: Any, out: bytearray) -> int:
    if v is None:
        v = op.default or 0
    kind = op.kind
    if kind == K_BOOL:
        n = bool_value(v)
        out.append(n)
        return n
    if isinstance(v, str):
        v = enum_value(op, v)
    n = int_value(v)
    _size, lo, hi = INT_RANGE[kind]
    if not lo <= n <= hi:
        raise FieldError(f"{n} out of range for {op.type_name} [{lo}, {hi}]")
    out += _STRUCTS[kind].pack(n)
    return int(n)


def _as_bytes(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, bytearray | memoryview):
        return bytes(v)
    if isinstance(v, list | tuple):
        try:
            return bytes(v)
        except (TypeError, ValueError):
            raise FieldError("expected bytes or a list of ints in [0, 255]") from None
    raise FieldError(f"expected bytes, got {type(v).__name__}")


def _as_text(v: Any) -> bytes:
    if isinstance(v, str):
        try:
            return v.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise FieldError(f"not encodable as UTF-8: {exc.reason}") from None
    if isinstance(v, _BYTES_LIKE):
        return bytes(v)
    raise FieldError(f"expected a string, got {type(v).__name__}")


def _seq(v: Any) -> Sequence[Any]:
    if isinstance(v, list | tuple) and not is_record(v):
        return v
    raise FieldError(f"expected a list, got {type(v).__name__}")


def _encode_vla(op: Op, v: Any, n: int, out: bytearray) -> None:
    if op.kind == K_VBYTES:
        b = _as_bytes(v) if v is not None else b""
        if len(b) != n:
            raise FieldError(f"has {len(b)} bytes but its length field says {n}")
        out += b
        return
    items = _seq(v) if v is not None else ()
    if len(items) != n:
        raise FieldError(f"has {len(items)} elements but its length field says {n}")
    elem = op.elem
    assert elem is not None
    for j, item in enumerate(items):
        try:
            _encode_op(elem, item, out)
        except FieldError as exc:
            raise exc.under(f"[{j}]") from None


def _encode_op(op: Op, v: Any, out: bytearray) -> None:
    kind = op.kind
    if kind <= K_BOOL:
        if kind != K_F64:
            _encode_int(op, v, out)
            return
        if v is None:
            v = op.default or 0.0
        if op.conv != C_NONE and not isinstance(v, int | float):
            out += _conv(op, v)
            return
        try:
            out += _F64.pack(v)
        except struct.error:
            raise FieldError(f"expected a float, got {type(v).__name__}") from None
    elif kind == K_BYTES:
        if v is None:
            out += bytes(op.size)
            return
        if op.conv != C_NONE and not isinstance(v, (*_BYTES_LIKE, list, tuple)):
            out += _conv(op, v)
            return
        b = _as_bytes(v)
        if len(b) > op.size:
            raise FieldError(f"{len(b)} bytes, at most {op.size}")
        out += b
        if len(b) < op.size:
            out += bytes(op.size - len(b))
    elif kind == K_STR:
        if v is None:
            out += bytes(op.size)
            return
        b = _as_text(v)
        if len(b) >= op.size:
            raise FieldError(f"string of {len(b)} bytes, at most {op.size - 1}")
        out += b
        out += bytes(op.size - len(b))
    elif kind == K_VSTR:
        b = _as_text(v) if v is not None else b""
        if len(b) > 0xFFFFFFFF:
            raise FieldError("string too long")
        out += _U32.pack(len(b))
        out += b
    elif kind == K_STRUCT:
        if v is not None and op.conv != C_NONE and not isinstance(v, Mapping) and not is_record(v):
            out += _conv(op, v)
            return
        if v is not None and not isinstance(v, Mapping) and not is_record(v):
            raise FieldError(f"expected a mapping for {op.type_name}, got {type(v).__name__}")
        assert op.layout is not None
        start = len(out)
        _encode_struct(op.layout, v, out)
        if op.conv != C_NONE:
            check_prefix_len(op.conv, out[start:])
    elif kind == K_UNION:
        _encode_union(op, v, out)
    elif kind == K_ARRAY:
        elem = op.elem
        assert elem is not None
        if v is None:
            for _ in range(op.size):
                _encode_op(elem, None, out)
            return
        items = _seq(v)
        if len(items) != op.size:
            raise FieldError(f"has {len(items)} elements, expected {op.size}")
        for j, item in enumerate(items):
            try:
                _encode_op(elem, item, out)
            except FieldError as exc:
                raise exc.under(f"[{j}]") from None
    elif kind == K_LBYTES:
        if v is not None:
            out += _as_bytes(v)
    elif kind == K_LVLA:
        elem = op.elem
        assert elem is not None
        for j, item in enumerate(_seq(v) if v is not None else ()):
            try:
                _encode_op(elem, item, out)
            except FieldError as exc:
                raise exc.under(f"[{j}]") from None
    else:  # K_VLA / K_VBYTES outside a struct cannot happen (they need a length field)
        raise FieldError(f"cannot encode op kind {kind}")


def _conv(op: Op, v: Any) -> bytes:
    try:
        b = conv_pack(op.conv, v)
    except (TypeError, ValueError) as exc:
        raise FieldError(f"{op.type_name}: {exc}") from None
    return b


def _encode_union(op: Op, v: Any, out: bytearray) -> None:
    layout = op.layout
    assert layout is not None
    size = layout.fixed_size
    start = len(out)
    if v is None:
        out += bytes(size)
        return
    if isinstance(v, Mapping):
        if len(v) != 1:
            raise FieldError(f"a union takes exactly one of {', '.join(layout.names)}")
        ((k, item),) = v.items()
        i = layout.index.get(k)
        if i is None:
            raise FieldError(f"unknown union arm {k!r} (arms: {', '.join(layout.names)})", str(k))
        try:
            _encode_op(layout.ops[i], item, out)
        except FieldError as exc:
            raise exc.under(k) from None
    elif is_record(v):
        # a decoded union: every arm was read from the same bytes; the biggest holds them all
        arm = max(range(len(layout.ops)), key=lambda j: (layout.ops[j].size, -j))
        try:
            _encode_op(layout.ops[arm], v[arm], out)
        except FieldError as exc:
            raise exc.under(layout.ops[arm].name) from None
    else:
        # a plain value: the first arm that accepts it (e.g. "10.0.0.1" -> ip4)
        for arm_op in layout.ops:
            try:
                _encode_op(arm_op, v, out)
                break
            except FieldError:
                del out[start:]
        else:
            raise FieldError(f"no arm of union {op.type_name} accepts {v!r}")
    written = len(out) - start
    if written < size:
        out += bytes(size - written)


# --- decoding ------------------------------------------------------------------------------


def _need(buf: memoryview, off: int, n: int) -> None:
    if n < 0 or off + n > len(buf):
        raise FieldError(
            f"truncated: need {n} bytes at offset {off}, have {max(len(buf) - off, 0)}"
        )


def _decode_fields(
    layout: Layout, buf: memoryview, off: int, start: int = 0
) -> tuple[list[Any], int]:
    ops = layout.ops
    values: list[Any] = []
    base = off
    end = off
    for i in range(start, len(ops)):
        op = ops[i]
        try:
            if layout.is_union:
                v, end_i = _decode_op(op, buf, base, values, start)
                end = max(end, end_i)
            else:
                v, off = _decode_op(op, buf, off, values, start)
        except FieldError as exc:
            raise exc.under(op.name) from None
        values.append(v)
    if layout.is_union:
        return values, base + layout.fixed_size
    return values, off


def _count(values: list[Any], op: Op, start: int) -> int:
    return int(values[op.len_index - start])


def _decode_op(op: Op, buf: memoryview, off: int, values: list[Any], start: int) -> tuple[Any, int]:
    kind = op.kind
    if kind <= K_BOOL:
        _need(buf, off, op.size)
        if kind == K_BOOL:
            return buf[off] != 0, off + 1
        if kind == K_F64:
            if op.conv != C_NONE:
                return _unconv(op, bytes(buf[off : off + 8])), off + 8
            return _F64.unpack_from(buf, off)[0], off + 8
        return _STRUCTS[kind].unpack_from(buf, off)[0], off + op.size
    if kind == K_BYTES:
        _need(buf, off, op.size)
        b = bytes(buf[off : off + op.size])
        return (_unconv(op, b) if op.conv != C_NONE else b), off + op.size
    if kind == K_STR:
        _need(buf, off, op.size)
        raw = bytes(buf[off : off + op.size])
        nul = raw.find(0)
        if nul >= 0:
            raw = raw[:nul]
        return raw.decode("utf-8", "replace"), off + op.size
    if kind == K_VSTR:
        _need(buf, off, 4)
        n = _U32.unpack_from(buf, off)[0]
        off += 4
        _need(buf, off, n)
        return bytes(buf[off : off + n]).decode("utf-8", "replace"), off + n
    if kind in (K_STRUCT, K_UNION):
        layout = op.layout
        assert layout is not None
        if op.conv != C_NONE:
            _need(buf, off, op.size)
            return _unconv(op, bytes(buf[off : off + op.size])), off + op.size
        if layout.is_union:
            _need(buf, off, layout.fixed_size)
        vals, off = _decode_fields(layout, buf, off)
        return layout.tuple_type._make(vals), off
    if kind == K_VBYTES:
        n = _count(values, op, start)
        _need(buf, off, n)
        return bytes(buf[off : off + n]), off + n
    if kind == K_LBYTES:
        return bytes(buf[off:]), len(buf)
    elem = op.elem
    assert elem is not None
    if kind == K_ARRAY:
        n = op.size
    elif kind == K_VLA:
        n = _count(values, op, start)
    else:  # K_LVLA: as many whole elements as are left
        esize = elem.size if elem.kind != K_ARRAY else -1
        if esize <= 0:
            raise FieldError("legacy array of variable-size elements")
        rest = len(buf) - off
        if rest % esize:
            raise FieldError(f"{rest} bytes left, not a multiple of the element size {esize}")
        n = rest // esize
    if elem.size > 0:
        _need(buf, off, n * elem.size)  # check before allocating n elements
    items = []
    for j in range(n):
        try:
            v, off = _decode_op(elem, buf, off, values, start)
        except FieldError as exc:
            raise exc.under(f"[{j}]") from None
        items.append(v)
    return items, off


def _unconv(op: Op, b: bytes) -> Any:
    try:
        return conv_unpack(op.conv, b)
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise FieldError(f"bad {op.type_name}: {exc}") from None
