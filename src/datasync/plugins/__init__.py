"""The VPP configuration plugins: interfaces, bridge domains, VRF tables and routes.

Keys and values follow vpp-agent's layout and models (see :mod:`.models`), so existing
vpp-agent data works unchanged. Every key has a state with a reason (:mod:`.state`); a
bad key never fails a round. :class:`VppPlugins` builds the four plugins around one
:class:`~datasync.vpp.client.VppClient`::

    plugins = VppPlugins(client, label="vpp1")
    plugins.add_to(orch)                     # orchestrator plugins, in dependency order
    client.add_fault_listener(follow_vpp_faults(orch, plugins))  # datasync.agent.wiring
    ... plugins.states.counts() ...          # key states of every plugin
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from ..resync import Orchestrator
from ..vpp.client import VppClient
from ..vpp.faults import VppFault
from .base import Call, Ledger, VppContext, VppPlugin
from .interfaces import InterfacePlugin
from .l2 import BridgeDomainPlugin
from .l3 import RoutePlugin, VrfPlugin
from .state import KeyState, KeyStates, KeyStatus, RetryPolicy, StateRegistry

__all__ = [
    "BridgeDomainPlugin",
    "Call",
    "InterfacePlugin",
    "KeyState",
    "KeyStates",
    "KeyStatus",
    "Ledger",
    "RetryPolicy",
    "RoutePlugin",
    "StateRegistry",
    "VppContext",
    "VppPlugin",
    "VppPlugins",
    "VrfPlugin",
]


class VppPlugins:
    """The VRF, interface, bridge-domain and route plugins of one agent and one VPP.

    ``ledger_path`` keeps which routes and VRF tables the agent made across restarts
    (VPP has no tag on them); without it an agent restart forgets them, and a route
    deleted from the store while the agent was down stays in VPP.
    """

    def __init__(
        self,
        client: VppClient,
        label: str,
        *,
        retry: RetryPolicy | None = None,
        ack_timeout: float = 10.0,
        ledger_path: str | os.PathLike[str] | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.label = label
        ledger = ledger if ledger is not None else Ledger(ledger_path)
        self.ctx = VppContext(client, retry=retry, ack_timeout=ack_timeout, ledger=ledger)
        self.vrfs = VrfPlugin(self.ctx, label)
        self.interfaces = InterfacePlugin(self.ctx, label)
        self.bridge_domains = BridgeDomainPlugin(self.ctx, label)
        self.routes = RoutePlugin(self.ctx, label)

    @property
    def plugins(self) -> list[VppPlugin[Any]]:
        return [self.vrfs, self.interfaces, self.bridge_domains, self.routes]

    @property
    def states(self) -> StateRegistry:
        """The key states of every plugin."""
        return self.ctx.registry

    def add_to(self, orch: Orchestrator, wrap: Callable[[Any], Any] | None = None) -> None:
        """Register the plugins with ``orch``; ``wrap(plugin)``, when given, registers a
        wrapper instead (a recorder of what each plugin is handed, in an agent's test
        mode)."""
        for plugin in self.plugins:
            orch.add_plugin(plugin if wrap is None else wrap(plugin))

    async def plan(self) -> list[Call]:
        """A dry run of a downstream resync: the VPP writes it would make now, in order,
        without making them (VPP is read back; replies to writes are made up, so indexes
        in later calls are placeholders)."""
        ledger = Ledger()  # in memory: a dry run writes no file
        ledger.load(self.ctx.ledger.copy())
        shadow = VppPlugins(
            self.ctx.client, self.label, ack_timeout=self.ctx.ack_timeout, ledger=ledger
        )
        calls: list[Call] = []
        shadow.ctx.dry_run = calls
        shadow.ctx.epoch = self.ctx.epoch
        for mine, theirs in ((self.ctx.interfaces, shadow.ctx.interfaces),
                             (self.ctx.vrfs, shadow.ctx.vrfs)):  # fmt: skip
            for e in mine:  # what the plugins know of VPP starts the same
                theirs.put(e.name, e.index, e.metadata)
        try:
            for real, fake in zip(self.plugins, shadow.plugins, strict=True):
                for key, value in real.values.items():
                    fake.take(key, value)
            for fake in shadow.plugins:
                await fake.reapply()
        finally:
            await shadow.close()
        return calls

    async def reapply(self) -> None:
        """A downstream resync of every plugin, in dependency order (see
        :meth:`VppPlugin.reapply`): VPP is made to hold the intent the agent holds."""
        for plugin in self.plugins:  # what they knew may be stale (that is why we are here)
            plugin.fresh = False
        for plugin in self.plugins:
            await plugin.reapply()

    def on_vpp_fault(self, event: VppFault) -> None:
        """A ``VppClient.add_fault_listener`` callback: a VPP restart forgets every index."""
        self.ctx.on_vpp_fault(event)

    def on_fault(self, kind: str, detail: Mapping[str, Any]) -> None:
        """The older ``VppClient.on_fault`` callback ``(kind, detail)``."""
        self.ctx.on_fault(kind, detail)

    async def close(self) -> None:
        for plugin in self.plugins:
            await plugin.close()
