"""Push rows: the REST/gRPC push source (the same PushSource both APIs write through),
with client retries, out-of-order generations and a push during a resync, through the
real plugins into the strict simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from datasync.plugins import KeyState
from datasync.testing import failpoints as fp
from datasync.testing import invariants as inv
from datasync.testing.history import History
from datasync.transport.push import PushReply, PushSource
from datasync.vpp.sim import Simulator

from .harness import (
    AGENT_PREFIX,
    IF,
    dataplane_interfaces,
    interfaces,
    loop_if,
    running,
    sim_writes,
)

Record = Callable[[str, object], None]


@pytest.fixture
async def push(tmp_path: Path) -> AsyncIterator[PushSource]:
    s = PushSource(tmp_path / "push.db", name="rest", prefixes=[AGENT_PREFIX])
    yield s
    await s.close()


async def _pushed(src: PushSource) -> tuple[dict[str, bytes], int]:
    snap = await src.snapshot([AGENT_PREFIX])
    return {kv.key: kv.value for kv in snap.kvs}, snap.revision


def _truth(history: History, reply: PushReply, puts: dict[str, bytes]) -> None:
    for r in reply.results:
        if r.state != "STALE" and r.key in puts:
            history.truth(r.key, "put", reply.revision, puts[r.key])


async def test_f24_push_retries_generations_and_a_push_during_resync(
    push: PushSource,
    sim: Simulator,
    tmp_path: Path,
    history: History,
    record_property: Record,
) -> None:
    """F24: a client retry with the same request id is a no-op (the first reply, 0 VPP
    writes); of two pushes for one key the higher generation wins even when it arrives
    first (the late, older one is STALE); a push during a resync round is buffered like a
    watch event and applied after it."""
    first = interfaces(10)
    _truth(history, await push.push(first, request_id="r0", generation=1), first)
    async with running(push, sim, tmp_path, history) as rig:
        await rig.orch.start()
        want, rev = await _pushed(push)
        await rig.converged(want, rev)

        rig.mark("fault.injected")
        one = dict([loop_if("lo0", "10.88.0.1/32")])
        reply = await push.push(one, request_id="r1", generation=5, wait=10)
        _truth(history, reply, one)
        assert reply.complete and [r.state for r in reply.results] == ["CONFIGURED"]
        writes = sim_writes(sim)
        again = await push.push(one, request_id="r1", generation=5, wait=10)
        assert again.duplicate and again.revision == reply.revision
        assert sim_writes(sim) == writes, "a retried push wrote to VPP"

        older = dict([loop_if("lo0", "10.89.0.1/32")])
        late = await push.push(older, request_id="r2", generation=4, wait=10)
        assert [r.state for r in late.results] == ["STALE"]
        assert dataplane_interfaces(sim)["lo0"][1] == ["10.88.0.1/32"]

        fp.enable("resync.after_snapshot_page", "1*pause")
        rig.orch.request_resync("test: a push during a round")
        with history.phase("round.held"):
            await fp.wait_hit("resync.after_snapshot_page")
            during = dict([loop_if("lo99", "10.99.0.1/32")])
            reply = await push.push(during, request_id="r3", generation=6)
            _truth(history, reply, during)
            rig.mark("push.during_resync")
            fp.release("resync.after_snapshot_page")
        rig.mark("fault.healed")
        want, rev = await _pushed(push)
        await rig.converged(want, rev)
        assert rig.state(IF + "lo99") is KeyState.CONFIGURED
        expect = inv.Expect(fault="push.during_resync", during="round")
        await rig.verify(want, rev, expect, record_property)
