"""The fault proxy moved into the package: ``datasync.testing.netproxy``."""

from datasync.testing.netproxy import MODES, TCPProxy, ThreadedTCPProxy

__all__ = ["MODES", "TCPProxy", "ThreadedTCPProxy"]
