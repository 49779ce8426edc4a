"""End-to-end fault tests: the resync orchestrator over the REAL Kafka source and the tansu
broker (docs/faults.md F7, F8, F19; invariants I1, I3, I5, I8), and over etcd and Kafka at once
(per-source ownership through a Kafka reset, a dead broker going stale beside etcd).

The plugin is a ``Recorder`` (tests/orchestrator_helpers.py) that keeps the state it was
told, every change it applied and a count of effective changes. ``rec`` (docs/faults.md I8) is the
number of rounds after start-up.

What a redelivered record does, end to end: a producer resend is a second record at a NEW
offset, so the source yields it as a change with a newer revision and the same value. The
revision filter only drops revisions at or below what was applied, and the orchestrator does
not compare values, so the plugin IS handed the repeat. Plugins must be idempotent (apply
desired state, compare before writing): the tests assert 0 duplicate effects at the plugin.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Producer

from datasync.api import SourceState
from datasync.errors import SourceError
from datasync.resync import Orchestrator, ResyncConfig
from datasync.transport.etcd import EtcdSource
from datasync.transport.kafka import (
    KafkaLogTruncatedError,
    KafkaOffsetOutOfRangeError,
    KafkaPublisher,
    KafkaSource,
    KafkaTopicRecreatedError,
)
from tests.etcd.etcdserver import ETCD, EtcdCluster
from tests.netproxy import TCPProxy
from tests.orchestrator_helpers import (
    Recorder,
    RecordingSleep,
    Rounds,
    background,
    converge_on,
    per_key_increasing,
)
from tests.orchestrator_helpers import eventually as _eventually
from tests.services import missing

from .conftest import TansuBroker, _quiet, free_port

pytestmark = pytest.mark.kafka

WAIT = 20.0  # safety net against hangs only
ETCD_FAST: dict[str, Any] = dict(
    connect_timeout=2.0, request_timeout=5.0, progress_interval=0.5, stall_timeout=1.5,
    backoff_base=0.05, backoff_cap=0.5, recycle_interval=None,
)  # fmt: skip
IF = "/vnf-agent/vpp1/config/vpp/v2/interfaces/"


# --- the plugin and the harness ----------------------------------------------------------


def fast_source(bootstrap: str, topic: str, name: str = "kafka", **kw: Any) -> KafkaSource:
    """A source with short poll and probe intervals, so fault tests finish quickly."""
    opts: dict[str, Any] = {
        "poll_timeout": 0.05,
        "check_interval": 0.5,
        "backoff_initial": 0.05,
        "backoff_max": 0.5,
        "request_timeout": 1.0,
        "config": {"logger": _quiet},
    }
    return KafkaSource(name, bootstrap, topic, **{**opts, **kw})


@pytest.fixture
async def made() -> AsyncIterator[list[Any]]:
    """Orchestrators, sources and publishers, closed at teardown in reverse order."""
    objs: list[Any] = []
    yield objs
    for o in reversed(objs):
        if isinstance(o, Orchestrator):
            await o.stop()
        else:
            await o.close()


def orchestrator(
    made: list[Any], src: KafkaSource, plugin: Recorder
) -> tuple[Orchestrator, Rounds]:
    made.append(src)
    orch = Orchestrator(
        [src],
        ResyncConfig(backoff_initial=0.1, backoff_max=0.5, escalation="retry"),
        rng=random.Random(7),
    )
    made.append(orch)
    rounds = Rounds(orch)
    orch.add_plugin(plugin)
    return orch, rounds


async def eventually(
    pred: Callable[[], bool], what: str = "condition", timeout: float = WAIT
) -> None:
    await _eventually(pred, what, timeout)


async def converge(
    orch: Orchestrator, src: KafkaSource, plugin: Recorder, bootstrap: str, topic: str
) -> int:
    """I1: the plugin holds the log's content at its end R (the high watermark), the
    orchestrator reports applied_revision == R and in_sync; returns R."""
    truth = fast_source(bootstrap, topic, name="truth")

    def failure(want: dict[str, bytes], revision: int) -> str:
        return (
            f"no convergence: plugin {plugin.state} vs log {want}; applied "
            f"{orch.applied_revision(src.name)} vs R {revision}; {orch.status()}"
        )

    return await converge_on(orch, src.name, plugin, truth, list(plugin.prefixes), WAIT, failure)


def resend(bootstrap: str, topic: str, records: list[tuple[str, bytes]]) -> None:
    """What a producer retrying after a lost ack does: the same records written again."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "logger": _quiet})
    for key, value in records:
        p.produce(topic, value, key, 0)
    assert p.flush(10) == 0


# --- I1 ----------------------------------------------------------------------------------


async def test_converges_to_the_log_under_write_traffic(
    tansu: TansuBroker, topic: str, made: list[Any]
) -> None:
    """I1 over Kafka, with puts and tombstones running through the start-up round: the plugin
    ends with the log's content at its end, applied_revision == the high watermark, one
    round, per-key order kept (I3), every revision applied once (I5)."""
    pub = KafkaPublisher(tansu.bootstrap, topic)
    made.append(pub)
    await pub.txn({f"{IF}if{i}": b'{"enabled": true}' for i in range(100)})
    src = fast_source(tansu.bootstrap, topic)
    plugin = Recorder("if", [IF])
    orch, rounds = orchestrator(made, src, plugin)

    async def writer() -> None:
        await eventually(lambda: bool(rounds.started), "the start-up round")
        for i in range(60):
            key = f"{IF}if{i % 20}"
            if i % 7 == 3:
                await pub.delete(key)
            else:
                await pub.put(key, b'{"mtu": %d}' % (1000 + i))
            await asyncio.sleep(0.02)

    async with background(writer()) as w:
        await orch.start()
        await w
    assert await converge(orch, src, plugin, tansu.bootstrap, topic) == 160
    assert rounds.rec == 0 and orch.status().failed_rounds == 0
    assert per_key_increasing(plugin.changes)
    snap_rev = plugin.resyncs[0].revisions["kafka"]
    assert snap_rev < 160, "I15: the writes must overlap the round, not precede it"
    assert all(c.revision > snap_rev for c in plugin.changes)
    assert [c.revision for c in plugin.changes] == list(range(snap_rev + 1, 161))


# --- F7 / F8 -----------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_broker_restart_resyncs_to_the_emptied_then_republished_log(
    fresh_tansu: TansuBroker, made: list[Any], sig: int
) -> None:
    """F7/F8: tansu restarts with an empty log (memory storage; the topic is re-created by
    the operator). The orchestrator sees the store reset and resyncs to the log as it now
    is: EMPTY, so the plugin is told to delete everything it had. The log is the only
    authority: a lost log and a deliberate wipe look the same, and keeping the old state
    would be a stale claim. Re-published records then arrive as plain changes (no further
    round), and the plugin converges to exactly what was re-published."""
    broker = fresh_tansu
    topic = broker.create_topic()
    pub = KafkaPublisher(broker.bootstrap, topic, config={"logger": _quiet})
    made.append(pub)
    old = {f"{IF}if{i}": b'{"mtu": 1500}' for i in range(5)}
    await pub.txn(old)
    src = fast_source(broker.bootstrap, topic)
    states: list[SourceState] = []
    src.add_state_listener(lambda _n, s, _r: states.append(s))
    plugin = Recorder("if", [IF])
    orch, rounds = orchestrator(made, src, plugin)
    await orch.start()
    assert await converge(orch, src, plugin, broker.bootstrap, topic) == 5
    old_store = src.store_id

    await asyncio.to_thread(broker.restart, sig, {topic: 1})
    await eventually(lambda: any(f.ok for f in rounds.finished[1:]), "the store-reset round")
    assert await converge(orch, src, plugin, broker.bootstrap, topic) == 0
    assert plugin.state == {} and sorted(plugin.deleted) == sorted(old)
    assert plugin.resyncs[-1].revisions == {"kafka": 0} and not plugin.resyncs[-1].kvs
    # F8: rec == 1. The reset shows as a new topic id, a vanished topic or a log end below
    # the position, whichever the watch sees first: all StoreResetErrors.
    assert rounds.rec == 1, [s.reasons for s in rounds.started]
    assert any(
        e.__name__ in rounds.started[1].reasons[0]
        for e in (KafkaTopicRecreatedError, KafkaLogTruncatedError, KafkaOffsetOutOfRangeError)
    ), rounds.started[1].reasons
    assert src.store_id != old_store
    assert SourceState.DISCONNECTED in states

    republished = {f"{IF}if0": b'{"mtu": 9000}', f"{IF}if7": b'{"mtu": 1500}'}
    await pub.txn(republished)
    assert await converge(orch, src, plugin, broker.bootstrap, topic) == 2
    assert plugin.state == republished
    assert rounds.rec == 1, "re-published records are changes, not a new round"
    assert [c.revision for c in plugin.changes] == [1, 2]
    assert orch.status().failed_rounds == 0


async def test_broker_restart_refilled_past_our_position_still_resyncs(
    fresh_tansu: TansuBroker, made: list[Any]
) -> None:
    """F7/F8, the hard case: the restarted broker's log is refilled past the agent's
    position before the agent looks, so the log end alone cannot tell; the new topic id
    does. The agent resyncs to the new log: keys only the old log had are deleted, and the
    plugin ends with exactly the new content (I1)."""
    broker = fresh_tansu
    topic = broker.create_topic()
    pub = KafkaPublisher(broker.bootstrap, topic, config={"logger": _quiet})
    made.append(pub)
    await pub.txn({f"{IF}old{i}": b"old" for i in range(3)})
    src = fast_source(broker.bootstrap, topic)
    plugin = Recorder("if", [IF])
    orch, rounds = orchestrator(made, src, plugin)
    await orch.start()
    assert await converge(orch, src, plugin, broker.bootstrap, topic) == 3
    new = {f"{IF}new{i}": b"new" for i in range(6)}

    def restart_and_refill() -> None:
        broker.restart(signal.SIGKILL, {topic: 1})
        p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0, "logger": _quiet})
        for k, v in new.items():
            p.produce(topic, v, k, 0)
        assert p.flush(10) == 0

    await asyncio.to_thread(restart_and_refill)
    assert await converge(orch, src, plugin, broker.bootstrap, topic) == 6
    assert plugin.state == new
    assert sorted(plugin.deleted) == [f"{IF}old{i}" for i in range(3)]
    # Seen here: the watch finds the new topic id before it reads the new log, so the new
    # content comes by the relist alone; a watch that read ahead could only have applied
    # records of the new log before the relist, never old ones.
    assert all(c.key in new for c in plugin.changes)
    assert rounds.rec == 1, [s.reasons for s in rounds.started]
    assert KafkaTopicRecreatedError.__name__ in rounds.started[1].reasons[0]
    assert orch.status().failed_rounds == 0


async def test_link_loss_resumes_without_relist(tansu_bin: str, made: list[Any]) -> None:
    """F7 through a TCP proxy: the broker keeps its log while the agent's link is cut and
    written to meanwhile; the watch resumes from its position: rec == 0, nothing lost."""
    proxy = TCPProxy("127.0.0.1", 0, listen_port=free_port())
    broker = TansuBroker(tansu_bin, advertised_port=proxy.listen_port)
    broker.start()
    try:
        proxy.target_port = broker.port
        await proxy.start()
        topic = await asyncio.to_thread(broker.create_topic)
        # Every client finds the broker at the proxy (advertised there): writes made
        # during the cut are queued by the publisher and land once the link is back.
        pub = KafkaPublisher(proxy.address, topic, config={"logger": _quiet})
        made.append(pub)
        await pub.put(f"{IF}if0", b"1")
        src = fast_source(proxy.address, topic)
        plugin = Recorder("if", [IF])
        orch, rounds = orchestrator(made, src, plugin)
        await orch.start()
        await converge(orch, src, plugin, proxy.address, topic)

        proxy.trigger_connectivity_loss("reset")
        await eventually(lambda: src.state is SourceState.DISCONNECTED, "the cut noticed")
        assert not orch.status().in_sync

        async def write_during_outage() -> None:
            await pub.put(f"{IF}if1", b"2")
            await pub.delete(f"{IF}if0")

        async with background(write_during_outage()) as writes:
            await asyncio.sleep(0.3)
            proxy.restore_connectivity()
            await writes
        assert await converge(orch, src, plugin, proxy.address, topic) == 3
        assert plugin.state == {f"{IF}if1": b"2"}
        assert rounds.rec == 0 and orch.status().failed_rounds == 0
        assert [(c.key, c.revision) for c in plugin.changes] == [(f"{IF}if1", 2), (f"{IF}if0", 3)]
    finally:
        for o in reversed(made):
            await (o.stop() if isinstance(o, Orchestrator) else o.close())
        made.clear()
        await proxy.close()
        broker.close()


# --- F19 ---------------------------------------------------------------------------------


async def test_redelivered_records_have_no_duplicate_effect(
    tansu: TansuBroker, topic: str, made: list[Any]
) -> None:
    """F19 / I5 over Kafka: a producer resends records, both ones already in the resync
    snapshot and fresh ones. Each resend is a change at a newer revision with the same
    value: the orchestrator delivers it (it filters by revision, not by value), and the
    idempotent plugin makes 0 extra effects. No extra round either."""
    pub = KafkaPublisher(tansu.bootstrap, topic)
    made.append(pub)
    await pub.txn({f"{IF}a": b"1", f"{IF}b": b"1"})
    src = fast_source(tansu.bootstrap, topic)
    plugin = Recorder("if", [IF])
    orch, rounds = orchestrator(made, src, plugin)
    await orch.start()
    await converge(orch, src, plugin, tansu.bootstrap, topic)
    after_resync = plugin.effects
    assert after_resync == 2

    # A resend of a record the snapshot already had: delivered, no effect.
    await asyncio.to_thread(resend, tansu.bootstrap, topic, [(f"{IF}a", b"1")])
    # A new record, then its resend (twice): one effect.
    await pub.put(f"{IF}c", b"1")
    await asyncio.to_thread(resend, tansu.bootstrap, topic, [(f"{IF}c", b"1")] * 2)
    # An update and its resend: one effect; a tombstone and its resend: one effect.
    await pub.put(f"{IF}b", b"2")
    await asyncio.to_thread(resend, tansu.bootstrap, topic, [(f"{IF}b", b"2")])
    await pub.delete(f"{IF}a")
    await pub.delete(f"{IF}a")
    assert await converge(orch, src, plugin, tansu.bootstrap, topic) == 10
    assert plugin.state == {f"{IF}b": b"2", f"{IF}c": b"1"}
    # Every record reached the plugin once, in order, resends included...
    assert [(c.key, c.revision) for c in plugin.changes] == [
        (f"{IF}a", 3), (f"{IF}c", 4), (f"{IF}c", 5), (f"{IF}c", 6),
        (f"{IF}b", 7), (f"{IF}b", 8), (f"{IF}a", 9), (f"{IF}a", 10),
    ]  # fmt: skip
    # ...and had its effect once: c added, b updated, a deleted.
    assert plugin.effects - after_resync == 3
    assert rounds.rec == 0 and orch.status().failed_rounds == 0


# --- several sources: etcd + Kafka ---------------------------------------------------------


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    """A single-member etcd of this test's own (the etcd fixtures live in tests/etcd)."""
    if not os.path.exists(ETCD):
        missing("etcd is not installed (apt-get install etcd-server etcd-client)")
    cluster = EtcdCluster(1).start()
    try:
        yield cluster
    finally:
        cluster.close()


async def merged_truth(
    etcd: EtcdSource, kafka: KafkaSource, prefix: str
) -> tuple[dict[str, bytes], int, int]:
    """The effective content over both stores (etcd first), and each store's revision."""
    es, ks = await etcd.snapshot([prefix]), await kafka.snapshot([prefix])
    view = {kv.key: kv.value for kv in ks.kvs}
    view.update({kv.key: kv.value for kv in es.kvs})
    return view, es.revision, ks.revision


async def converge_both(
    orch: Orchestrator, plugin: Recorder, etcd: EtcdSource, kafka: KafkaSource, prefix: str
) -> tuple[int, int]:
    """I1 over two sources: the merged view, each source's applied revision at its head."""
    got: tuple[dict[str, bytes], int, int] = ({}, -1, -1)
    try:
        async with asyncio.timeout(WAIT):
            while True:
                with contextlib.suppress(SourceError):
                    got = await merged_truth(etcd, kafka, prefix)
                    view, er, kr = got
                    if (
                        plugin.state == view
                        and orch.applied_revision("etcd") == er
                        and orch.applied_revision("kafka") == kr
                        and orch.status().in_sync
                    ):
                        return er, kr
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(
            f"no convergence: plugin {plugin.state} vs {got[0]}; applied etcd "
            f"{orch.applied_revision('etcd')} vs {got[1]}, kafka "
            f"{orch.applied_revision('kafka')} vs {got[2]}; {orch.status()}"
        ) from None


@pytest.mark.etcd
async def test_kafka_reset_never_deletes_what_etcd_asserts(
    fresh_tansu: TansuBroker, etcd_cluster: EtcdCluster, made: list[Any]
) -> None:
    """Several sources (etcd before Kafka in precedence) through a Kafka store reset: the
    reset round deletes only what Kafka alone asserted; a key both assert keeps etcd's
    value throughout; a later etcd delete falls back to Kafka's value (SPEC: a resync of
    one source never deletes what another source asserts)."""
    p = IF
    broker = fresh_tansu
    topic = broker.create_topic()
    kpub = KafkaPublisher(broker.bootstrap, topic, config={"logger": _quiet})
    epub = EtcdSource("epub", etcd_cluster.endpoints, **ETCD_FAST)
    etruth = EtcdSource("etruth", etcd_cluster.endpoints, **ETCD_FAST)
    ktruth = fast_source(broker.bootstrap, topic, name="ktruth")
    made += [kpub, epub, etruth, ktruth]
    await epub.txn({f"{p}a": b"etcd", f"{p}shared": b"etcd"})
    await kpub.txn({f"{p}k": b"kafka", f"{p}shared": b"kafka"})
    esrc = EtcdSource("etcd", etcd_cluster.endpoints, **ETCD_FAST)
    ksrc = fast_source(broker.bootstrap, topic)
    made += [esrc, ksrc]
    orch = Orchestrator(
        [esrc, ksrc],
        ResyncConfig(backoff_initial=0.1, backoff_max=0.5, escalation="retry"),
        rng=random.Random(7),
    )
    made.append(orch)
    rounds = Rounds(orch)
    plugin = Recorder("if", [p])
    orch.add_plugin(plugin)
    await orch.start()
    await converge_both(orch, plugin, etruth, ktruth, p)
    assert plugin.state == {f"{p}a": b"etcd", f"{p}shared": b"etcd", f"{p}k": b"kafka"}
    assert orch.conflicts() == {f"{p}shared": ["etcd", "kafka"]}

    await asyncio.to_thread(broker.restart, signal.SIGKILL, {topic: 1})
    await eventually(lambda: any(f.ok for f in rounds.finished[1:]), "the store-reset round")
    await converge_both(orch, plugin, etruth, ktruth, p)
    assert plugin.state == {f"{p}a": b"etcd", f"{p}shared": b"etcd"}
    assert plugin.deleted == [f"{p}k"], "only what Kafka alone asserted goes"
    assert orch.conflicts() == {}

    # Kafka asserts the shared key again: shadowed by etcd, nothing changes for the plugin.
    # (A later Kafka record that is delivered moves Kafka's applied revision past the
    # shadowed one: see test_shadowed_change_advances_applied_revision for why.)
    await kpub.put(f"{p}shared", b"kafka-2")
    await kpub.put(f"{p}k2", b"kafka")
    await epub.put(f"{p}a", b"etcd-2")
    await converge_both(orch, plugin, etruth, ktruth, p)
    assert plugin.state[f"{p}shared"] == b"etcd"
    # etcd lets go of the shared key: Kafka's value takes over, no delete reaches the plugin.
    await epub.delete(f"{p}shared")
    await converge_both(orch, plugin, etruth, ktruth, p)
    assert plugin.state == {f"{p}a": b"etcd-2", f"{p}shared": b"kafka-2", f"{p}k2": b"kafka"}
    assert plugin.deleted == [f"{p}k"]
    assert rounds.rec == 1 and orch.status().failed_rounds == 0


@pytest.mark.etcd
async def test_shadowed_change_advances_applied_revision(
    tansu: TansuBroker, topic: str, etcd_cluster: EtcdCluster, made: list[Any]
) -> None:
    """I1 with two sources: a Kafka record for a key etcd also asserts is accepted and
    shadowed (the plugin rightly sees nothing), but it is applied as far as Kafka is
    concerned: applied_revision("kafka") must reach Kafka's head, or status reports the
    agent behind for ever and a resume from the applied revision would re-read it."""
    kpub = KafkaPublisher(tansu.bootstrap, topic)
    epub = EtcdSource("epub", etcd_cluster.endpoints, **ETCD_FAST)
    made += [kpub, epub]
    await epub.put(f"{IF}shared", b"etcd")
    esrc = EtcdSource("etcd", etcd_cluster.endpoints, **ETCD_FAST)
    ksrc = fast_source(tansu.bootstrap, topic)
    made += [esrc, ksrc]
    orch = Orchestrator([esrc, ksrc], ResyncConfig(escalation="retry"))
    made.append(orch)
    plugin = Recorder("if", [IF])
    orch.add_plugin(plugin)
    await orch.start()
    await orch.wait_in_sync(WAIT)
    r = await kpub.put(f"{IF}shared", b"kafka")
    try:
        # The record was delivered to the orchestrator within ms; the wait is a hang guard.
        await eventually(lambda: orch.applied_revision("kafka") == r, "applied", timeout=3.0)
    finally:
        assert plugin.state == {f"{IF}shared": b"etcd"} and plugin.changes == []


async def two_sources(
    made: list[Any], broker: TansuBroker, etcd_cluster: EtcdCluster, **cfg: Any
) -> tuple[Orchestrator, Rounds, Recorder, KafkaPublisher, EtcdSource, str]:
    """etcd (first in precedence) + Kafka, each asserting keys of its own, converged."""
    topic = broker.create_topic()
    kpub = KafkaPublisher(broker.bootstrap, topic, config={"logger": _quiet})
    epub = EtcdSource("epub", etcd_cluster.endpoints, **ETCD_FAST)
    made += [kpub, epub]
    await epub.put(f"{IF}e", b"etcd")
    await kpub.txn({f"{IF}k0": b"kafka", f"{IF}k1": b"kafka"})
    esrc = EtcdSource("etcd", etcd_cluster.endpoints, **ETCD_FAST)
    ksrc = fast_source(broker.bootstrap, topic)
    made += [esrc, ksrc]
    sleep = cfg.pop("sleep", None)
    orch = Orchestrator(
        [esrc, ksrc],
        ResyncConfig(**{"backoff_initial": 0.1, "backoff_max": 0.5, "escalation": "retry", **cfg}),
        rng=random.Random(7),
        sleep=sleep,
    )
    made.append(orch)
    rounds = Rounds(orch)
    plugin = Recorder("if", [IF])
    orch.add_plugin(plugin)
    await orch.start()
    await orch.wait_in_sync(WAIT)
    assert plugin.state == {f"{IF}e": b"etcd", f"{IF}k0": b"kafka", f"{IF}k1": b"kafka"}
    return orch, rounds, plugin, kpub, epub, topic


@pytest.mark.etcd
async def test_dead_broker_goes_stale_keeps_its_keys_and_etcd_goes_on(
    fresh_tansu: TansuBroker, etcd_cluster: EtcdCluster, made: list[Any]
) -> None:
    """Several sources, one store down: the Kafka broker dies and a round is needed (an
    operator asks). The round goes on without Kafka: its keys stay as last read (stale,
    not empty: nothing deleted), etcd changes keep reaching the plugin, the agent is not
    in sync. When the broker is back with an empty log, Kafka is read again and only its
    own keys go."""
    broker = fresh_tansu
    orch, rounds, plugin, _kpub, epub, topic = await two_sources(
        made, broker, etcd_cluster, snapshot_timeout=1.0
    )
    broker.stop(signal.SIGKILL)
    orch.request_resync("operator asked")
    await eventually(lambda: any(f.ok for f in rounds.finished[1:]), "a round without kafka")
    assert plugin.deleted == [], "a stale source's keys must stay"
    st = orch.status()
    assert not st.in_sync and st.sources["kafka"].state is SourceState.DISCONNECTED
    await epub.put(f"{IF}e", b"etcd-2")
    await eventually(lambda: plugin.state[f"{IF}e"] == b"etcd-2", "an etcd change")
    assert plugin.deleted == [] and not orch.status().in_sync

    await asyncio.to_thread(broker.start)
    await asyncio.to_thread(broker.create_topic, topic)
    await eventually(lambda: bool(plugin.deleted), "kafka read again")
    await orch.wait_in_sync(WAIT)
    assert plugin.state == {f"{IF}e": b"etcd-2"}
    assert sorted(plugin.deleted) == [f"{IF}k0", f"{IF}k1"]


@pytest.mark.etcd
async def test_stale_source_rereads_back_off(
    fresh_tansu: TansuBroker, etcd_cluster: EtcdCluster, made: list[Any]
) -> None:
    """I8 with a source down for a while: its re-reads follow the capped exponential
    backoff like every other retry (each re-read is a full round: a relist of every
    source, holding their changes for up to snapshot_timeout)."""
    sleep = RecordingSleep()
    broker = fresh_tansu
    orch, rounds, _plugin, *_ = await two_sources(
        made, broker, etcd_cluster, snapshot_timeout=0.3, sleep=sleep
    )
    broker.stop(signal.SIGKILL)
    orch.request_resync("operator asked")
    await eventually(lambda: len(sleep.delays) >= 4, "four re-reads of the dead source")
    assert len(rounds.started) >= 4
    # 0.1, 0.2, 0.4, 0.5 (cap), each shortened by up to 20 % jitter.
    for n, d in enumerate(sleep.delays[:4]):
        base = min(0.5, 0.1 * 2**n)
        assert base * 0.8 <= d <= base, sleep.delays
