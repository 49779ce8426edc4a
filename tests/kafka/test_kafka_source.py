"""The Kafka source and publisher against a real broker (tansu), including faults F7, F8, F19."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import pytest
from confluent_kafka import Producer

from datasync.api import MAX_KEY_BYTES, Change, Op, SourceState
from datasync.errors import (
    ClosedError,
    InvalidKeyError,
    InvalidValueError,
    SourceUnavailableError,
    StoreResetError,
)
from datasync.transport.kafka import (
    KafkaLogTruncatedError,
    KafkaPublisher,
    KafkaSource,
    KafkaSourceError,
    KafkaTopicRecreatedError,
    _translate,
)
from tests.netproxy import TCPProxy

from .conftest import TansuBroker, _quiet, free_port

pytestmark = pytest.mark.kafka

WAIT = 15.0  # a safety net against hangs, not a timing goal
T = TypeVar("T")


def fast_source(bootstrap: str, topic: str, **kw: Any) -> KafkaSource:
    """A source with short poll and probe intervals, so fault tests finish quickly."""
    opts: dict[str, Any] = {
        "poll_timeout": 0.05,
        "check_interval": 0.5,
        "backoff_initial": 0.05,
        "backoff_max": 0.5,
        "request_timeout": 1.0,
    }
    opts.update(kw)
    return KafkaSource("kafka", bootstrap, topic, **opts)


def raw_producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "logger": _quiet})


async def collect(it: AsyncIterator[list[Change]], count: int) -> list[Change]:
    out: list[Change] = []
    async with asyncio.timeout(WAIT):
        while len(out) < count:
            out.extend(await anext(it))
    return out


async def drain_until_error(it: AsyncIterator[list[Change]]) -> BaseException:
    """Read the watch until it raises; return the error."""
    try:
        async with asyncio.timeout(WAIT):
            while True:
                await anext(it)
    except (StoreResetError, SourceUnavailableError) as exc:
        return exc
    raise AssertionError("unreachable")


async def wait_for(pred: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not pred():
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def background(coro: Coroutine[Any, Any, T]) -> AsyncIterator[asyncio.Task[T]]:
    """Run ``coro`` as a task for the block; cancel it if the block fails first."""
    task = asyncio.ensure_future(coro)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await task


@pytest.fixture
async def pub(tansu: TansuBroker, topic: str) -> AsyncIterator[KafkaPublisher]:
    p = KafkaPublisher(tansu.bootstrap, topic)
    yield p
    await p.close()


@pytest.fixture
async def source(tansu: TansuBroker, topic: str) -> AsyncIterator[KafkaSource]:
    s = fast_source(tansu.bootstrap, topic)
    yield s
    await s.close()


# --- snapshot ------------------------------------------------------------------------------


async def test_empty_topic_snapshot_is_revision_zero(source: KafkaSource) -> None:
    snap = await source.snapshot(["/"])
    assert snap.revision == 0
    assert list(snap.kvs) == []
    assert snap.store_id.startswith(source.topic + ":")
    assert source.state is SourceState.CONNECTED


async def test_snapshot_last_value_wins_and_tombstones_delete(
    tansu: TansuBroker, topic: str, source: KafkaSource, pub: KafkaPublisher
) -> None:
    r1 = await pub.put("/cfg/a", b'{"v": 1}')
    r2 = await pub.put("/cfg/b", b'{"v": 2}')
    r3 = await pub.put("/cfg/a", b'{"v": 3}')
    r4 = await pub.delete("/cfg/b")
    assert [r1, r2, r3, r4] == [1, 2, 3, 4]  # revision = offset + 1
    # An empty value is a tombstone too (some producers write b"" rather than null).
    p = raw_producer(tansu.bootstrap)
    p.produce(topic, b"", "/cfg/c", 0)
    p.produce(topic, b"x", "/cfg/d", 0)
    p.produce(topic, b"", "/cfg/d", 0)
    p.flush(5)
    snap = await source.snapshot(["/cfg/"])
    assert {kv.key: (kv.value, kv.revision) for kv in snap.kvs} == {"/cfg/a": (b'{"v": 3}', r3)}
    assert snap.revision == 7  # the high watermark: last offset + 1


async def test_snapshot_of_a_missing_topic_waits_for_it(tansu: TansuBroker) -> None:
    name = f"late-{free_port()}"
    src = fast_source(tansu.bootstrap, name)
    states: list[SourceState] = []
    src.add_state_listener(lambda _n, s, _r: states.append(s))
    try:
        task = asyncio.create_task(src.snapshot(["/"]))
        await wait_for(lambda: src.state is SourceState.STALLED)
        assert not task.done()
        await asyncio.to_thread(tansu.create_topic, name)
        async with asyncio.timeout(WAIT):
            snap = await task
        assert snap.revision == 0
        assert states[-2:] == [SourceState.STALLED, SourceState.CONNECTED]
    finally:
        await src.close()


# --- watch ---------------------------------------------------------------------------------


async def test_watch_resumes_exactly_after_the_applied_revision(
    tansu: TansuBroker, topic: str, pub: KafkaPublisher
) -> None:
    revs = [await pub.put(f"/w/{i}", b"%d" % i) for i in range(5)]
    # An agent applied up to revs[2] and persisted it, then restarted: a new source.
    src = fast_source(tansu.bootstrap, topic)
    try:
        it = src.watch(["/w/"], revs[2] + 1)
        got = await collect(it, 2)
        assert [(c.key, c.revision) for c in got] == [("/w/3", revs[3]), ("/w/4", revs[4])]
        r = await pub.delete("/w/0")
        assert await collect(it, 1) == [Change("/w/0", Op.DELETE, None, r, None, "kafka")]
        await it.aclose()
    finally:
        await src.close()


async def test_watch_tracks_previous_values_when_asked(
    tansu: TansuBroker, topic: str, pub: KafkaPublisher
) -> None:
    src = fast_source(tansu.bootstrap, topic, track_prev_values=True)
    try:
        it = src.watch(["/p/"], 1)
        await pub.put("/p/k", b"1")
        await pub.put("/p/k", b"2")
        await pub.delete("/p/k")
        got = await collect(it, 3)
        assert [(c.op, c.value, c.prev_value) for c in got] == [
            (Op.PUT, b"1", None),
            (Op.PUT, b"2", b"1"),
            (Op.DELETE, None, b"2"),
        ]
        await it.aclose()
    finally:
        await src.close()


async def test_bad_records_are_dropped_counted_and_do_not_stop_the_watch(
    tansu: TansuBroker, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    src = fast_source(tansu.bootstrap, topic, max_value_bytes=100)
    p = raw_producer(tansu.bootstrap)
    p.produce(topic, b"1", b"\xff\xfe/bad", 0)  # not UTF-8
    p.produce(topic, b"1", None, 0)  # no key
    p.produce(topic, b"1", " /cfg/space", 0)  # invalid key (leading blank)
    p.produce(topic, b"x" * 101, "/cfg/big", 0)  # oversized: delivered, counted, logged
    p.produce(topic, b"1", "/other/k", 0)  # outside the prefixes
    p.produce(topic, b"ok", "/cfg/good", 0)
    p.flush(5)
    try:
        snap = await src.snapshot(["/cfg/"])
        assert [(kv.key, kv.value) for kv in snap.kvs] == [
            ("/cfg/big", b"x" * 101),
            ("/cfg/good", b"ok"),
        ]
        it = src.watch(["/cfg/"], 1)
        got = await collect(it, 2)
        assert [(c.key, c.revision) for c in got] == [("/cfg/big", 4), ("/cfg/good", 6)]
        assert got[0].value == b"x" * 101
        await it.aclose()
        stats = src.stats.as_dict()
        # Counted once by the snapshot and once by the watch.
        assert stats["bad_key"] == 6
        assert stats["oversized"] == 2
        assert stats["outside_prefix"] == 2
        # The size limit is the validator's: the source logs an oversized key once.
        assert caplog.text.count("max_value_bytes") == 1 and "/cfg/big" in caplog.text
    finally:
        await src.close()


async def test_over_long_keys_are_bad_keys(
    tansu: TansuBroker, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A key over MAX_KEY_BYTES is dropped, counted and logged like any bad key."""
    src = fast_source(tansu.bootstrap, topic)
    p = raw_producer(tansu.bootstrap)
    p.produce(topic, b"1", "/cfg/" + "k" * MAX_KEY_BYTES, 0)
    p.produce(topic, b"ok", "/cfg/good", 0)
    p.flush(5)
    try:
        snap = await src.snapshot(["/cfg/"])
        assert [(kv.key, kv.value) for kv in snap.kvs] == [("/cfg/good", b"ok")]
        it = src.watch(["/cfg/"], 1)
        got = await collect(it, 1)
        assert [(c.key, c.revision) for c in got] == [("/cfg/good", 2)]
        await it.aclose()
        assert src.stats.bad_key == 2  # once by the snapshot, once by the watch
        assert src.stats["dropped_bad_key"] == 2  # the old name still reads it
        assert "bad key" in caplog.text
    finally:
        await src.close()


async def test_resent_records_come_again_with_new_revisions(
    tansu: TansuBroker, topic: str, source: KafkaSource
) -> None:
    """F19 on Kafka: a producer resend is a new record at a new offset; the source yields
    it again, same key and value, and the revision filter downstream makes it a no-op."""
    it = source.watch(["/dup/"], 1)
    p = raw_producer(tansu.bootstrap)
    for _ in range(2):
        p.produce(topic, b'{"mtu": 1500}', "/dup/if0", 0)
        p.flush(5)
    got = await collect(it, 2)
    await it.aclose()
    assert [(c.key, c.value) for c in got] == [("/dup/if0", b'{"mtu": 1500}')] * 2
    assert got[0].revision < got[1].revision


async def test_watch_arguments_are_checked(source: KafkaSource) -> None:
    with pytest.raises(ValueError, match="start_revision"):
        source.watch(["/"], -1)
    with pytest.raises(InvalidKeyError):
        source.watch([""], 1)
    await source.close()
    with pytest.raises(ClosedError):
        source.watch(["/"], 1)


async def test_close_ends_a_running_watch_and_listener_errors_are_contained(
    tansu: TansuBroker, topic: str
) -> None:
    src = fast_source(tansu.bootstrap, topic)

    def bad_listener(_n: str, _s: SourceState, _r: str) -> None:
        raise RuntimeError("listener bug")

    src.add_state_listener(bad_listener)
    it = src.watch(["/"], 1)
    async with background(anext(it)) as pending:
        await wait_for(lambda: src.state is SourceState.CONNECTED)
        await src.close()
        with pytest.raises(ClosedError):
            await pending
    assert src.state is SourceState.DISCONNECTED


async def test_empty_prefix_list_means_no_key(tansu: TansuBroker, topic: str) -> None:
    """[] is no prefix at all, as on etcd: an empty snapshot at the current revision and
    a watch that yields nothing until the source is closed."""
    src = fast_source(tansu.bootstrap, topic)
    p = raw_producer(tansu.bootstrap)
    p.produce(topic, b"1", "/cfg/a", 0)
    p.flush(5)
    snap = await src.snapshot([])
    assert snap.kvs == [] and snap.revision == 1
    it = src.watch([], 1)
    async with background(anext(it)) as pending:
        p.produce(topic, b"2", "/cfg/b", 0)
        p.flush(5)
        await wait_for(lambda: src.stats.records >= 3)  # 1 by the snapshot, 2 by the watch
        assert not pending.done(), "a watch of no prefixes yielded something"
        await src.close()
        with pytest.raises(ClosedError):
            await pending


async def test_bad_client_config_is_a_clear_error(tansu: TansuBroker, topic: str) -> None:
    src = KafkaSource("kafka", tansu.bootstrap, topic, config={"no.such.property": 1})
    try:
        with pytest.raises(KafkaSourceError, match=r"no\.such\.property"):
            await src.snapshot(["/"])
    finally:
        await src.close()


# --- publisher -----------------------------------------------------------------------------


async def test_publisher_rejects_bad_values_naming_the_key(pub: KafkaPublisher) -> None:
    with pytest.raises(InvalidValueError, match="/k/empty"):
        await pub.put("/k/empty", b"")  # would read as a delete
    small = KafkaPublisher(pub._conf["bootstrap.servers"], "t", max_value_bytes=4)
    with pytest.raises(InvalidValueError, match="/k/big"):
        await small.put("/k/big", b"12345")
    await small.close()
    with pytest.raises(InvalidKeyError):
        await pub.delete("")


async def test_txn_is_several_records_in_order(source: KafkaSource, pub: KafkaPublisher) -> None:
    rev = await pub.txn({"/t/a": b"1", "/t/b": b"2"}, ["/t/c"])
    assert rev == 3
    it = source.watch(["/t/"], 1)
    got = await collect(it, 3)
    await it.aclose()
    assert [(c.key, c.op, c.revision) for c in got] == [
        ("/t/a", Op.PUT, 1),
        ("/t/b", Op.PUT, 2),
        ("/t/c", Op.DELETE, 3),
    ]


def test_errors_are_translated_in_one_place() -> None:
    from confluent_kafka import KafkaError, KafkaException

    assert isinstance(
        _translate(KafkaException(KafkaError(KafkaError._TRANSPORT)), "x"), SourceUnavailableError
    )
    assert isinstance(_translate(KafkaError(KafkaError.OFFSET_OUT_OF_RANGE), "x"), StoreResetError)
    assert isinstance(_translate(KafkaError(KafkaError._AUTO_OFFSET_RESET), "x"), StoreResetError)


# --- faults: broker restart (F7/F8), outage, link loss -------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_broker_restart_empties_the_log_and_raises_store_reset(
    fresh_tansu: TansuBroker, sig: int
) -> None:
    """F7/F8: tansu forgets its log on restart; the watch's position is past the new end."""
    broker = fresh_tansu
    topic = broker.create_topic()
    pub = KafkaPublisher(broker.bootstrap, topic)
    src = fast_source(broker.bootstrap, topic)
    states: list[SourceState] = []
    src.add_state_listener(lambda _n, s, _r: states.append(s))
    try:
        for i in range(3):
            await pub.put(f"/r/{i}", b"old")
        snap = await src.snapshot(["/r/"])
        it = src.watch(["/r/"], snap.revision + 1)
        r = await pub.put("/r/3", b"old")
        assert [c.revision for c in await collect(it, 1)] == [r]

        async with background(drain_until_error(it)) as watching:
            broker.stop(sig)
            await wait_for(lambda: src.state is SourceState.DISCONNECTED)
            await asyncio.to_thread(broker.restart, sig, {topic: 1})
            err = await watching
        assert isinstance(err, StoreResetError)
        assert src.stats.store_resets >= 1

        # The relist sees the new (empty, then refilled) log and a new store id.
        new_rev = await pub.put("/r/new", b"fresh")
        assert new_rev == 1
        snap2 = await src.snapshot(["/r/"])
        assert snap2.store_id != snap.store_id
        assert [(kv.key, kv.value, kv.revision) for kv in snap2.kvs] == [("/r/new", b"fresh", 1)]
        it2 = src.watch(["/r/"], snap2.revision + 1)
        r2 = await pub.put("/r/after", b"x")
        assert [c.revision for c in await collect(it2, 1)] == [r2]
        await it2.aclose()
        assert SourceState.DISCONNECTED in states and states[-1] is SourceState.CONNECTED
    finally:
        await src.close()
        await pub.close()


async def test_topic_recreated_with_more_records_is_a_store_reset(
    fresh_tansu: TansuBroker,
) -> None:
    """A log that went back and grew past our position: only the topic id tells."""
    broker = fresh_tansu
    topic = broker.create_topic()
    pub = KafkaPublisher(broker.bootstrap, topic)
    src = fast_source(broker.bootstrap, topic)
    try:
        await pub.put("/x/1", b"1")
        snap = await src.snapshot(["/x/"])
        it = src.watch(["/x/"], snap.revision + 1)

        def restart_and_refill() -> None:
            broker.restart(signal.SIGKILL, {topic: 1})
            p = raw_producer(broker.bootstrap)
            for i in range(5):
                p.produce(topic, b"n", f"/x/n{i}", 0)
            p.flush(5)

        async with background(drain_until_error(it)) as watching:
            broker.stop(signal.SIGKILL)
            await wait_for(lambda: src.state is SourceState.DISCONNECTED)
            await asyncio.to_thread(restart_and_refill)
            err = await watching
        assert isinstance(err, StoreResetError)
    finally:
        await src.close()
        await pub.close()


async def test_topic_deleted_while_watching_is_a_store_reset(tansu: TansuBroker) -> None:
    topic = tansu.create_topic()
    src = fast_source(tansu.bootstrap, topic)
    try:
        await src.snapshot(["/"])
        it = src.watch(["/"], 1)
        await asyncio.to_thread(tansu.delete_topic, topic)
        err = await drain_until_error(it)
        assert isinstance(err, KafkaTopicRecreatedError)
    finally:
        await src.close()


async def test_restarted_agent_with_persisted_store_id_notices_a_new_topic(
    tansu: TansuBroker,
) -> None:
    topic = tansu.create_topic()
    src = fast_source(tansu.bootstrap, topic)
    old_id = (await src.snapshot(["/"])).store_id
    await src.close()
    await asyncio.to_thread(tansu.delete_topic, topic)
    await asyncio.to_thread(tansu.create_topic, topic)
    src2 = fast_source(tansu.bootstrap, topic, store_id=old_id)
    try:
        with pytest.raises(KafkaTopicRecreatedError):
            await anext(src2.watch(["/"], 5))
    finally:
        await src2.close()


async def test_snapshot_waits_out_a_broker_outage(fresh_tansu: TansuBroker) -> None:
    """The relist after a reset may find the broker still down: it retries, then reads."""
    broker = fresh_tansu
    topic = broker.create_topic()
    src = fast_source(broker.bootstrap, topic)
    states: list[SourceState] = []
    src.add_state_listener(lambda _n, s, _r: states.append(s))
    try:
        await src.snapshot(["/s/"])
        broker.stop(signal.SIGKILL)
        async with background(src.snapshot(["/s/"])) as snapping:
            await wait_for(lambda: src.state is SourceState.DISCONNECTED)

            def restart_and_write() -> None:
                broker.restart(signal.SIGKILL, {topic: 1})
                p = raw_producer(broker.bootstrap)
                p.produce(topic, b"v", "/s/k", 0)
                p.flush(5)

            await asyncio.to_thread(restart_and_write)
            async with asyncio.timeout(WAIT):
                snap = await snapping
        # The snapshot may land between the topic's creation and the write: either is
        # a consistent state of the new log.
        got = (snap.revision, [(kv.key, kv.value, kv.revision) for kv in snap.kvs])
        assert got in [(0, []), (1, [("/s/k", b"v", 1)])]
        assert SourceState.DISCONNECTED in states and states[-1] is SourceState.CONNECTED
    finally:
        await src.close()


async def test_resuming_past_the_log_end_is_a_store_reset(
    tansu: TansuBroker, topic: str, pub: KafkaPublisher
) -> None:
    """F8: an agent persisted revision 10, the log it resumes on ends at 2 (no store id
    persisted, so only the high watermark can tell). Never a silent jump to "latest"."""
    await pub.put("/e/1", b"1")
    await pub.put("/e/2", b"2")
    src = fast_source(tansu.bootstrap, topic)
    try:
        it = src.watch(["/e/"], 3)  # exactly at the end: fine, nothing to yield yet
        r = await pub.put("/e/3", b"3")
        assert [c.revision for c in await collect(it, 1)] == [r] == [3]
        await it.aclose()
        with pytest.raises(KafkaLogTruncatedError, match="below our position 9"):
            await collect(src.watch(["/e/"], 10), 1)
    finally:
        await src.close()


async def test_broker_down_gives_up_only_when_configured(fresh_tansu: TansuBroker) -> None:
    topic = fresh_tansu.create_topic()
    src = fast_source(fresh_tansu.bootstrap, topic, give_up_after=1.0)
    try:
        await src.snapshot(["/"])
        it = src.watch(["/"], 1)
        fresh_tansu.stop(signal.SIGKILL)
        err = await drain_until_error(it)
        assert isinstance(err, SourceUnavailableError) and "gave up" in str(err)
        assert src.state is SourceState.DISCONNECTED
    finally:
        await src.close()


async def test_link_loss_without_data_loss_reports_states_and_resumes(
    tansu_bin: str,
) -> None:
    """F7 through a TCP proxy: the broker keeps its log while the link is cut for a while."""
    proxy = TCPProxy("127.0.0.1", 0, listen_port=free_port())
    # Clients find the broker at the address it advertises: the proxy.
    broker = TansuBroker(tansu_bin, advertised_port=proxy.listen_port)
    broker.start()
    proxy.target_port = broker.port
    await proxy.start()
    topic = await asyncio.to_thread(broker.create_topic)
    pub = KafkaPublisher(proxy.address, topic, config={"logger": _quiet})
    src = fast_source(proxy.address, topic)
    states: list[tuple[SourceState, str]] = []
    src.add_state_listener(lambda _n, s, r: states.append((s, r)))
    try:
        snap = await src.snapshot(["/l/"])
        it = src.watch(["/l/"], snap.revision + 1)
        r1 = await pub.put("/l/1", b"1")
        assert [c.revision for c in await collect(it, 1)] == [r1]

        proxy.trigger_connectivity_loss("reset")
        pending = asyncio.ensure_future(collect(it, 2))
        await wait_for(lambda: src.state is SourceState.DISCONNECTED)

        async def write_during_outage() -> tuple[int, int]:
            # Queued by the client, delivered once the link is back.
            return await pub.put("/l/2", b"2"), await pub.delete("/l/1")

        writes = asyncio.ensure_future(write_during_outage())
        await asyncio.sleep(0.3)
        assert not pending.done() and not writes.done()
        proxy.restore_connectivity()
        r2, r3 = await writes
        got = await pending
        assert [(c.key, c.op, c.revision) for c in got] == [
            ("/l/2", Op.PUT, r2),
            ("/l/1", Op.DELETE, r3),
        ]
        await wait_for(lambda: src.state is SourceState.CONNECTED)
        assert src.stats.store_resets == 0
        assert [s for s, _ in states].count(SourceState.DISCONNECTED) >= 1
        await it.aclose()
    finally:
        await src.close()
        await pub.close()
        await proxy.close()
        broker.close()
