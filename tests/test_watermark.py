"""The applied watermark claims a snapshot's revision only once the round that took it
succeeded (the plugins applied it): a client waiting for its write to be applied (a push
with ``wait``) must not be told so while the plugins are still working."""

from __future__ import annotations

import asyncio

from datasync.api import ChangeEvent, ResyncEvent
from datasync.resync import Orchestrator, ResyncConfig
from datasync.transport.local import LocalStore
from tests.vpp.helpers import eventually


class Gated:
    name, prefixes, depends_on = "gated", ["/w/"], ()

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.fail_once = False

    async def resync(self, ev: ResyncEvent) -> None:
        self.entered.set()
        await self.gate.wait()
        if self.fail_once:
            self.fail_once = False
            raise RuntimeError("this round fails")

    async def change(self, ev: ChangeEvent) -> None:
        pass


async def test_applied_revision_waits_for_the_round() -> None:
    store = LocalStore()
    plugin = Gated()
    orch = Orchestrator([store], ResyncConfig(resync_timeout=30, backoff_initial=0.01))
    orch.add_plugin(plugin)
    try:
        r = await store.put("/w/a", b"1")
        plugin.fail_once = True
        await orch.start()
        await plugin.entered.wait()
        assert orch.applied_revision(store.name) < r  # snapshot taken, not applied
        plugin.entered.clear()
        plugin.gate.set()  # this round fails: still not applied
        await plugin.entered.wait()
        assert orch.applied_revision(store.name) < r
        await orch.wait_in_sync(10)
        assert orch.applied_revision(store.name) == r
        r2 = await store.put("/w/b", b"2")
        await eventually(lambda: orch.applied_revision(store.name) == r2)
    finally:
        await orch.stop()
        await store.close()
