"""How the VPP connection, the plugins and the orchestrator are wired together."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..plugins import VppPlugins
from ..resync import Orchestrator
from ..vpp.client import FaultCallback

__all__ = ["resync_on_vpp_fault", "vpp_fault_handler"]


def resync_on_vpp_fault(orch: Orchestrator, name: str = "vpp") -> FaultCallback:
    """A ``VppClient(on_fault=...)`` callback: the orchestrator follows the connection.

    A lost or unresponsive VPP makes the agent not in sync (southbound ``name`` down). A
    restart or a reconnect starts a round; a reconnect resyncs even when vpe_pid did not
    change, because calls may have been lost with the connection.
    """

    def on_fault(kind: str, detail: Mapping[str, Any]) -> None:
        if kind == "disconnected":
            orch.set_southbound(name, False, f"VPP disconnected: {detail.get('error')}")
        elif kind == "unresponsive":
            orch.set_southbound(name, False, "VPP unresponsive to the health probe")
        elif kind == "vpp_restarted":
            orch.request_resync(
                f"VPP restarted (vpe_pid {detail['old_vpe_pid']} -> {detail['vpe_pid']})"
            )
        elif kind == "reconnected":
            after = "a restart" if detail.get("vpp_restarted") else "a lost connection"
            orch.request_resync(f"VPP reconnected after {after}")
            orch.set_southbound(name, True)

    return on_fault


def vpp_fault_handler(orch: Orchestrator, plugins: VppPlugins, name: str = "vpp") -> FaultCallback:
    """The ``VppClient`` fault callback of an agent: a VPP restart first makes the plugins
    forget every index of the old VPP, then the orchestrator follows the connection."""
    follow = resync_on_vpp_fault(orch, name)

    def on_fault(kind: str, detail: Mapping[str, Any]) -> None:
        plugins.on_fault(kind, detail)
        follow(kind, detail)

    return on_fault
