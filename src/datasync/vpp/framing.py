"""VPP's socket framing, parsed in one place for the client and the simulator.

Every frame is a ``>QII`` header (only the big-endian ``data_len`` at bytes 8..11 means
anything; VPP sends garbage in the first 8 bytes) followed by the message body.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

__all__ = ["HEADER_LEN", "MAX_FRAME", "FrameReader", "frame", "frames"]

_HDR = struct.Struct(">QII")
HEADER_LEN = 16
#: a frame longer than this is treated as garbage (VPP's largest, get_api_json, is ~1.3 MB)
MAX_FRAME = 64 << 20


def frame(body: bytes) -> bytes:
    """One body with its 16-byte header."""
    return _HDR.pack(0, len(body), 0) + body


def frames(bodies: Iterable[bytes]) -> bytes:
    """Several bodies framed into one buffer (one write)."""
    parts = []
    pack = _HDR.pack
    for body in bodies:
        parts.append(pack(0, len(body), 0))
        parts.append(body)
    return b"".join(parts)


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
        while end - pos >= HEADER_LEN:
            length = int.from_bytes(view[pos + 8 : pos + 12], "big")
            if length > max_frame:
                self.too_large = length
                buf.clear()
                return bodies
            stop = pos + HEADER_LEN + length
            if stop > end:
                break
            bodies.append(bytes(view[pos + HEADER_LEN : stop]))
            pos = stop
        if view is buf:
            if pos:
                del buf[:pos]
        elif pos < end:
            buf += data[pos:]
        return bodies
