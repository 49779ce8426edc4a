"""A VPP simulator: a real server of the VPP binary API over an AF_UNIX socket.

Unmodified vpp-papi connects to it; it keeps dataplane state, answers with VPP's real
retvals, emits interface events and has a fault API for tests (restart, drop, errors,
latency, drift). ``datasync vppsim --socket PATH [--http HOST:PORT]`` runs it.
"""

from __future__ import annotations

from .server import Simulator, main

__all__ = ["Simulator", "main"]
