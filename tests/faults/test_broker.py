"""Broker rows (Kafka): the tansu broker restarted by PID (its log lives in memory, so a
restart empties it) and the agent's link to it cut by a proxy, through the Kafka source,
the orchestrator and the VPP plugins into the strict simulator."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from datasync.api import SourceState
from datasync.testing import invariants as inv
from datasync.testing.history import History
from datasync.testing.netproxy import TCPProxy
from datasync.transport.kafka import KafkaPublisher, KafkaSource
from datasync.vpp.sim import Simulator
from tests.kafka.conftest import TansuBroker, _quiet, free_port

from .harness import AGENT_PREFIX, WAIT, eventually, interfaces, loop_if, running, sim_writes

pytestmark = pytest.mark.kafka

Record = Callable[[str, object], None]


def source(bootstrap: str, topic: str, name: str = "kafka") -> KafkaSource:
    return KafkaSource(name, bootstrap, topic, poll_timeout=0.05, check_interval=0.5,
                       backoff_initial=0.05, backoff_max=0.5, request_timeout=1.0,
                       config={"logger": _quiet})  # fmt: skip


async def log_now(bootstrap: str, topic: str) -> tuple[dict[str, bytes], int]:
    """The log's content under the agent's prefix and its end, read by a fresh consumer."""
    truth = source(bootstrap, topic, name="truth")
    try:
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    snap = await truth.snapshot([AGENT_PREFIX])
                    return {kv.key: kv.value for kv in snap.kvs}, snap.revision
                except Exception:
                    await asyncio.sleep(0.1)
    finally:
        await truth.close()


@pytest.fixture
async def closing() -> AsyncIterator[list[Any]]:
    objs: list[Any] = []
    yield objs
    for o in reversed(objs):
        await o.close()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
async def test_f7_broker_restart_empties_the_log_agent_resyncs_then_follows(
    fresh_tansu: TansuBroker,
    sim: Simulator,
    tmp_path: Path,
    history: History,
    record_property: Record,
    closing: list[Any],
    sig: int,
) -> None:
    """F7/F8: tansu restarts with an empty log (the operator re-creates the topic): the
    agent notices its position is past the new log end, does one full resync to the log
    as it now is (empty: VPP's interfaces of it go), never a silent "latest"; records
    published again then arrive as changes and VPP holds exactly them."""
    broker = fresh_tansu
    topic = await asyncio.to_thread(broker.create_topic)
    pub = KafkaPublisher(broker.bootstrap, topic, config={"logger": _quiet})
    closing.append(pub)
    await pub.txn(interfaces(10))
    src = source(broker.bootstrap, topic)
    closing.append(src)
    async with running(src, sim, tmp_path, history) as rig:
        await rig.orch.start()
        want, rev = await log_now(broker.bootstrap, topic)
        await rig.converged(want, rev)
        rig.mark("fault.injected", signal=sig)
        await asyncio.to_thread(broker.restart, sig, {topic: 1})
        rig.mark("fault.healed")
        await eventually(lambda: rig.relists >= 1, "the store-reset round")
        await rig.converged({}, 0)
        assert rig.relists == 1
        again = interfaces(3, start=20)
        await pub.txn(again)
        want, rev = await log_now(broker.bootstrap, topic)
        assert want == again
        await rig.converged(want, rev)
        assert rig.relists == 1, "records after the reset are changes, not a new round"
        await rig.verify(want, rev, inv.Expect(relists=1, fault="fault.injected"),
                         record_property, only=_NO_I12)  # fmt: skip


#: offsets start again at 0 after the reset: one NB session's revisions go back by design
_NO_I12 = [i for i in inv.CHECKS if i != "I12"]


async def test_f7_link_cut_resumes_from_position_no_relist_no_extra_writes(
    tansu_bin: str,
    sim: Simulator,
    tmp_path: Path,
    history: History,
    record_property: Record,
    closing: list[Any],
) -> None:
    """F7 (link loss, log kept): the agent's link to the broker is reset while records are
    written: the consumer resumes from its position without a relist, and VPP gets the
    writes of the new records only."""
    proxy = TCPProxy("127.0.0.1", 0, listen_port=free_port())
    broker = TansuBroker(tansu_bin, advertised_port=proxy.listen_port)
    broker.start()
    try:
        proxy.target_port = broker.port
        await proxy.start()
        topic = await asyncio.to_thread(broker.create_topic)
        pub = KafkaPublisher(proxy.address, topic, config={"logger": _quiet})
        closing.append(pub)
        await pub.txn(interfaces(10))
        src = source(proxy.address, topic)
        closing.append(src)
        async with running(src, sim, tmp_path, history) as rig:
            await rig.orch.start()
            want, rev = await log_now(proxy.address, topic)
            await rig.converged(want, rev)
            rig.mark("fault.injected")
            writes = sim_writes(sim)
            proxy.trigger_connectivity_loss("reset")
            await eventually(lambda: src.state is SourceState.DISCONNECTED, "the cut noticed")
            put = asyncio.create_task(pub.txn(dict([loop_if("lo30", "10.30.0.1/32")])))
            await asyncio.sleep(0.3)
            proxy.restore_connectivity()
            rig.mark("fault.healed")
            await put
            want, rev = await log_now(proxy.address, topic)
            await rig.converged(want, rev)
            assert rig.relists == 0
            # the new interface: create, tag, admin up, one address
            assert sim_writes(sim) - writes == 4, sim.counters()["writes"]
            await rig.verify(want, rev, inv.Expect(relists=0, fault="fault.injected"),
                             record_property)  # fmt: skip
    finally:
        await proxy.close()
        broker.close()


async def test_f8_log_emptied_while_the_agent_is_down_resyncs_to_the_new_log(
    fresh_tansu: TansuBroker,
    sim: Simulator,
    tmp_path: Path,
    history: History,
    record_property: Record,
    closing: list[Any],
) -> None:
    """F8: while the agent is down the broker restarts (the log the agent's position was
    in is gone) and other records are published: the agent starts with a full resync
    from the log as it now is, never skipping to "latest": VPP holds exactly the new
    records, the interfaces of the lost log are deleted."""
    broker = fresh_tansu
    topic = await asyncio.to_thread(broker.create_topic)
    pub = KafkaPublisher(broker.bootstrap, topic, config={"logger": _quiet})
    closing.append(pub)
    await pub.txn(interfaces(10))
    first = source(broker.bootstrap, topic, name="kafka")
    closing.append(first)
    async with running(first, sim, tmp_path, history) as rig:
        await rig.orch.start()
        want, rev = await log_now(broker.bootstrap, topic)
        await rig.converged(want, rev)
    history.mark("fault.injected")
    await asyncio.to_thread(broker.restart, signal.SIGKILL, {topic: 1})
    await pub.txn(interfaces(4, start=40))
    src = source(broker.bootstrap, topic, name="kafka")
    closing.append(src)
    async with running(src, sim, tmp_path, history) as rig:
        history.mark("agent.started")
        await rig.orch.start()
        history.mark("fault.healed")
        want, rev = await log_now(broker.bootstrap, topic)
        assert want == interfaces(4, start=40)
        await rig.converged(want, rev)
        await rig.verify(want, rev, inv.Expect(fault="fault.injected"), record_property,
                         only=_ONE_RUN)  # fmt: skip


#: two agent runs: I6 (the watermark of one run) and I12 (offsets restart at 0) do not
#: span them
_ONE_RUN = [i for i in inv.CHECKS if i not in ("I6", "I12")]
