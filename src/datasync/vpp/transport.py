"""The names this module had before each transport got its own module (kept for imports).

Framing is :mod:`datasync.vpp.framing`; the socket transport
:mod:`datasync.vpp.socket_link`; the shared-memory one :mod:`datasync.vpp.shm_link`; the
errors :mod:`datasync.vpp.errors`.
"""

from __future__ import annotations

from .errors import VppConnectionError, VppMessageTooLargeError, VppProtocolError
from .framing import HEADER_LEN, MAX_FRAME, frame
from .link import FrameSink
from .shm_link import RawSocket, ShmPipe, ShmTransport
from .socket_link import FrameProtocol, SocketTransport

__all__ = [
    "HEADER_LEN",
    "MAX_FRAME",
    "FrameProtocol",
    "FrameSink",
    "RawSocket",
    "ShmPipe",
    "ShmTransport",
    "SocketTransport",
    "VppConnectionError",
    "VppMessageTooLargeError",
    "VppProtocolError",
    "frame",
]
