"""How the VPP connection, the plugins and the orchestrator are wired together.

``client.add_fault_listener(follow_vpp_faults(orch, plugins))`` is the wiring of an
agent. The client's events are typed (:mod:`datasync.vpp.faults`), so every kind is a
``case`` checked against the union: a new kind that is not handled fails type checking.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, assert_never

from ..plugins import VppPlugins
from ..resync import Orchestrator
from ..vpp.faults import (
    Disconnected,
    FaultCallback,
    FaultListener,
    Reconnected,
    Unresponsive,
    VppFault,
    VppRestarted,
    fault_from_kind,
)

__all__ = ["follow_vpp_faults", "resync_on_vpp_fault", "vpp_fault_handler"]


def follow_vpp_faults(
    orch: Orchestrator, plugins: VppPlugins | None = None, name: str = "vpp"
) -> FaultListener:
    """A ``VppClient.add_fault_listener`` callback: the plugins and the orchestrator follow
    the connection.

    A VPP restart first makes the plugins forget every index of the old VPP. A lost or
    unresponsive VPP makes the agent not in sync (southbound ``name`` down). A restart or
    a reconnect starts a round; a reconnect resyncs even when vpe_pid did not change,
    because calls may have been lost with the connection.
    """

    def listener(event: VppFault) -> None:
        if plugins is not None:
            plugins.on_vpp_fault(event)
        match event:
            case Disconnected(error=error):
                orch.set_southbound(name, False, f"VPP disconnected: {error}")
            case Unresponsive():
                orch.set_southbound(name, False, "VPP unresponsive to the health probe")
            case VppRestarted(old_vpe_pid=old, vpe_pid=new):
                orch.request_resync(f"VPP restarted (vpe_pid {old} -> {new})")
            case Reconnected(vpp_restarted=restarted):
                after = "a restart" if restarted else "a lost connection"
                orch.request_resync(f"VPP reconnected after {after}")
                orch.set_southbound(name, True)
            case _:
                assert_never(event)

    return listener


def _by_kind(listener: FaultListener) -> FaultCallback:
    def on_fault(kind: str, detail: Mapping[str, Any]) -> None:
        listener(fault_from_kind(kind, detail))  # an unknown kind is a ValueError

    return on_fault


def resync_on_vpp_fault(orch: Orchestrator, name: str = "vpp") -> FaultCallback:
    """The orchestrator's part of :func:`follow_vpp_faults` as an older
    ``VppClient(on_fault=...)`` callback ``(kind, detail)``."""
    return _by_kind(follow_vpp_faults(orch, None, name))


def vpp_fault_handler(orch: Orchestrator, plugins: VppPlugins, name: str = "vpp") -> FaultCallback:
    """:func:`follow_vpp_faults` as an older ``VppClient.on_fault`` callback ``(kind, detail)``."""
    return _by_kind(follow_vpp_faults(orch, plugins, name))
