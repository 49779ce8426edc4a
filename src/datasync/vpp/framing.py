"""VPP's socket framing, parsed in one place for the client and the simulator.

Every frame is a ``>QII`` header (only the big-endian ``data_len`` at bytes 8..11 means
anything; VPP sends garbage in the first 8 bytes) followed by the message body.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from itertools import chain

__all__ = ["HEADER_LEN", "MAX_FRAME", "FrameReader", "frame", "frames"]

_HDR = struct.Struct(">QII")
_LEN = struct.Struct(">I")  # data_len, at bytes 8..11 of the header
HEADER_LEN = 16
#: a frame longer than this is treated as garbage (VPP's largest, get_api_json, is ~1.3 MB)
MAX_FRAME = 64 << 20


def frame(body: bytes) -> bytes:
    """One body with its 16-byte header."""
    return _HDR.pack(0, len(body), 0) + body


class _Headers(dict[int, bytes]):
    """The header of a body of each length, made once for the lengths of small bodies
    (most messages are one of a few fixed sizes), packed every time for the others."""

    def __missing__(self, length: int) -> bytes:
        header = _HDR.pack(0, length, 0)
        if length < 4096 and len(self) < 4096:
            self[length] = header
        return header


_headers = _Headers()


def frames(bodies: Iterable[bytes]) -> bytes:
    """Several bodies framed into one buffer (one write)."""
    if not isinstance(bodies, (list, tuple)):
        bodies = list(bodies)
    # header, body, header, body ...: every step of it in C, no Python code per body
    headers = map(_headers.__getitem__, map(len, bodies))
    return b"".join(chain.from_iterable(zip(headers, bodies, strict=True)))


class FrameReader:
    """Reassembles frames from a byte stream.

    :meth:`feed` returns the bodies completed by a chunk. A header claiming more than
    ``max_frame`` bytes is garbage, not a frame to wait for: the reader sets
    ``too_large`` to the claimed length, drops what it buffered, and returns nothing more
    after the frames that came before that header.
    """

    __slots__ = ("_buf", "max_frame", "too_large")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        #: the length a bad header claimed (0: none seen)
        self.too_large = 0
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)

    def clear(self) -> None:
        self._buf.clear()

    def feed(self, data: bytes) -> list[bytes]:
        if self.too_large:
            return []
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data  # common case: whole frames in one read, no copy into the buffer
        bodies: list[bytes] = []
        pos = 0
        end = len(view)
        max_frame = self.max_frame
        unpack_len = _LEN.unpack_from
        # a slice of bytes is bytes already; of the bytearray, a copy out of it
        copy = bytes if view is buf else None
        append = bodies.append
        while end - pos >= HEADER_LEN:
            length = unpack_len(view, pos + 8)[0]
            if length > max_frame:
                self.too_large = length
                buf.clear()
                return bodies
            stop = pos + HEADER_LEN + length
            if stop > end:
                break
            if copy is None:
                append(view[pos + HEADER_LEN : stop])  # type: ignore[arg-type]
            else:
                append(copy(view[pos + HEADER_LEN : stop]))
            pos = stop
        if view is buf:
            if pos:
                del buf[:pos]
        elif pos < end:
            buf += data[pos:]
        return bodies
