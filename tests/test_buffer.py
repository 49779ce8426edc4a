"""Event buffer and revision filter: every test runs against the compiled module and the twin."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import datasync._buffer_py as twin_module
import datasync._extensions as _ext
from datasync import buffer
from datasync.api import Change, Op
from datasync.errors import InvalidKeyError

try:
    compiled_module: ModuleType | None = importlib.import_module("datasync._buffer_c")
except ImportError:  # a pure build (DATASYNC_NO_EXTENSIONS=1 at install time)
    compiled_module = None

IMPLS = {"compiled": compiled_module, "twin": twin_module}


@pytest.fixture(params=["compiled", "twin"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    module = IMPLS[request.param]
    if module is None:
        pytest.skip("compiled buffer not built")
    return module


def put(key: str, rev: int, value: bytes | None = None) -> Change:
    return Change(key, Op.PUT, value if value is not None else f"{key}@{rev}".encode(), rev)


def delete(key: str, rev: int) -> Change:
    return Change(key, Op.DELETE, None, rev)


def kr(changes: Iterable[Change]) -> list[tuple[str, int]]:
    return [(c.key, c.revision) for c in changes]


def reference_drain(changes: list[Change], snapshot: int, last: dict[str, int]) -> list[Change]:
    """The semantics, written plainly: stable sort by revision, then per-key filter."""
    out = []
    for c in sorted(changes, key=lambda c: c.revision):
        if c.revision <= snapshot or c.revision <= last.get(c.key, -1):
            continue
        last[c.key] = c.revision
        out.append(c)
    return out


# --- selection ------------------------------------------------------------------------------


def test_compiled_buffer_is_loaded() -> None:
    """Fails when the extension should be there and the selector fell back to the twin."""
    if _ext.NO_EXTENSIONS:
        pytest.skip("DATASYNC_NO_EXTENSIONS=1 selects the twin")
    assert compiled_module is not None
    assert buffer.EventBuffer is compiled_module.EventBuffer
    assert buffer.RevisionFilter is compiled_module.RevisionFilter
    assert _ext.implementation()["buffer"] == "compiled"


def test_twin_selected_when_extensions_off() -> None:
    if not _ext.NO_EXTENSIONS:
        pytest.skip("extensions are on")
    assert buffer.EventBuffer is twin_module.EventBuffer


# --- revision filter ------------------------------------------------------------------------


def test_filter_initial_state(impl: ModuleType) -> None:
    f = impl.RevisionFilter()
    assert f.snapshot_revision == 0
    assert f.dropped == 0
    assert len(f) == 0
    assert f.last_applied("a") is None


def test_filter_drops_at_or_below_snapshot(impl: ModuleType) -> None:
    f = impl.RevisionFilter()
    f.reset(10)
    assert f.snapshot_revision == 10
    out = f.filter([put("a", 9), put("b", 10), put("c", 11)])
    assert kr(out) == [("c", 11)]
    assert f.dropped == 2
    assert f.last_applied("c") == 11
    assert f.last_applied("a") is None


def test_filter_per_key_last_applied(impl: ModuleType) -> None:
    f = impl.RevisionFilter()
    f.reset(5, [("a", 3), ("b", 5)])
    assert len(f) == 2
    assert f.last_applied("a") == 3
    # duplicate (same key and revision) and out of order (10 after 12) are dropped
    out = f.filter([put("a", 12), put("a", 12), put("a", 10), put("a", 13)])
    assert kr(out) == [("a", 12), ("a", 13)]
    assert f.dropped == 2
    assert f.last_applied("a") == 13


def test_filter_keeps_a_transaction(impl: ModuleType) -> None:
    f = impl.RevisionFilter()
    f.reset(1)
    txn = [put("a", 7), put("b", 7), delete("c", 7)]
    assert f.filter(txn) == txn
    assert f.dropped == 0


def test_filter_passes_the_same_objects(impl: ModuleType) -> None:
    f = impl.RevisionFilter()
    changes = [put("a", 1), put("b", 2)]
    out = f.filter(changes)
    assert all(o is c for o, c in zip(out, changes, strict=True))
    assert out is not changes


def test_filter_accepts_any_sequence(impl: ModuleType) -> None:
    f = impl.RevisionFilter()
    assert kr(f.filter((put("a", 1), put("a", 2)))) == [("a", 1), ("a", 2)]
    assert kr(f.filter(iter([put("a", 3)]))) == [("a", 3)]
    assert f.filter([]) == []


def test_accept_single(impl: ModuleType) -> None:
    f = impl.RevisionFilter()
    f.reset(3)
    assert f.accept(put("a", 3)) is False
    assert f.accept(put("a", 4)) is True
    assert f.accept(put("a", 4)) is False
    assert f.accept(put("b", 4)) is True
    assert f.dropped == 2
    assert f.last_applied("a") == 4


def test_reset_forgets_previous_state(impl: ModuleType) -> None:
    f = impl.RevisionFilter()
    f.filter([put("a", 100), put("b", 100)])
    f.reset(50, [("c", 40)])
    assert f.last_applied("a") is None
    assert len(f) == 1
    assert kr(f.filter([put("a", 51), put("c", 51)])) == [("a", 51), ("c", 51)]


def test_reset_repeated_key_keeps_highest(impl: ModuleType) -> None:
    f = impl.RevisionFilter()
    f.reset(10, [("a", 8), ("a", 4)])
    assert f.last_applied("a") == 8


def test_reset_accepts_snapshot_keyvals(impl: ModuleType) -> None:
    """The orchestrator passes the snapshot's (key, mod_revision) pairs from a generator."""
    from datasync.api import KeyVal

    kvs = [KeyVal("a", b"1", 3), KeyVal("b", b"2", 9)]
    f = impl.RevisionFilter()
    f.reset(9, ((kv.key, kv.revision) for kv in kvs))
    assert (f.last_applied("a"), f.last_applied("b")) == (3, 9)


@pytest.mark.parametrize(
    ("args", "exc"),
    [
        ((-1,), ValueError),
        ((True,), TypeError),
        (("5",), TypeError),
        ((1 << 63,), ValueError),
        ((5, [("a", -1)]), ValueError),
        ((5, [("", 1)]), InvalidKeyError),
        ((5, [("a",)]), TypeError),
        ((5, [["a", 1]]), TypeError),
    ],
)
def test_reset_invalid_changes_nothing(impl: ModuleType, args: tuple[Any, ...], exc: type) -> None:
    f = impl.RevisionFilter()
    f.reset(3, [("k", 2)])
    with pytest.raises(exc):
        f.reset(*args)
    assert f.snapshot_revision == 3
    assert f.last_applied("k") == 2


def test_filter_revision_bounds(impl: ModuleType) -> None:
    f = impl.RevisionFilter()
    top = (1 << 63) - 1
    # revision 0 is at or below the initial snapshot revision 0: never applied
    assert kr(f.filter([put("a", 0), put("a", 1), put("a", top)])) == [("a", 1), ("a", top)]
    f.reset(top)
    assert f.filter([put("b", top)]) == []


BAD_CHANGES: list[tuple[Any, type, str]] = [
    (42, TypeError, "expected a Change"),
    (("a", Op.PUT, None), TypeError, "expected a Change"),
    (["a", Op.PUT, None, 1], TypeError, "expected a Change"),
    (Change(7, Op.PUT, None, 1), InvalidKeyError, "keys are str"),  # type: ignore[arg-type]
    (Change(b"k", Op.PUT, None, 1), InvalidKeyError, "keys are str"),  # type: ignore[arg-type]
    (Change("", Op.PUT, None, 1), InvalidKeyError, "empty key"),
    (Change("bad", Op.PUT, None, "1"), TypeError, "'bad'"),  # type: ignore[arg-type]
    (Change("bad", Op.PUT, None, 1.0), TypeError, "'bad'"),  # type: ignore[arg-type]
    (Change("bad", Op.PUT, None, True), TypeError, "'bad'"),
    (Change("bad", Op.PUT, None, -1), ValueError, "'bad'"),
    (Change("bad", Op.PUT, None, 1 << 63), ValueError, "'bad'"),
    (Change("bad", Op.PUT, None, -(1 << 70)), ValueError, "'bad'"),
]


class StrSub(str):
    pass


@pytest.mark.parametrize(("bad", "exc", "text"), BAD_CHANGES)
def test_filter_invalid_batch_changes_nothing(
    impl: ModuleType, bad: Any, exc: type, text: str
) -> None:
    f = impl.RevisionFilter()
    with pytest.raises(exc, match=text):
        f.filter([put("a", 5), bad, put("b", 6)])
    with pytest.raises(exc, match=text):
        f.accept(bad)
    # the batch was validated before any state changed
    assert f.last_applied("a") is None
    assert f.dropped == 0
    assert kr(f.filter([put("a", 5)])) == [("a", 5)]


def test_str_subclass_key_rejected(impl: ModuleType) -> None:
    with pytest.raises(InvalidKeyError, match="StrSub"):
        impl.RevisionFilter().accept(Change(StrSub("a"), Op.PUT, None, 1))


def test_int_subclass_revision_accepted(impl: ModuleType) -> None:
    class Rev(int):
        pass

    f = impl.RevisionFilter()
    assert f.accept(Change("a", Op.PUT, None, Rev(4)))
    assert f.last_applied("a") == 4


def test_plain_tuple_accepted(impl: ModuleType) -> None:
    f = impl.RevisionFilter()
    t = ("a", Op.PUT, b"v", 3)
    assert f.filter([t]) == [t]  # type: ignore[list-item]


# --- event buffer ---------------------------------------------------------------------------


def test_buffer_drain_orders_by_revision_and_filters(impl: ModuleType) -> None:
    b = impl.EventBuffer()
    f = impl.RevisionFilter()
    f.reset(10, [("a", 8), ("b", 10)])
    b.extend([put("c", 14), put("a", 9), put("b", 11), put("a", 12), put("b", 5)])
    b.append(put("d", 12))
    assert len(b) == 6
    out = b.drain(f)
    assert kr(out) == [("b", 11), ("a", 12), ("d", 12), ("c", 14)]
    assert f.dropped == 2
    assert len(b) == 0
    assert b.drain(f) == []


def test_buffer_equal_revisions_keep_arrival_order(impl: ModuleType) -> None:
    b = impl.EventBuffer()
    txn = [put("z", 5), put("a", 5), delete("m", 5)]
    b.extend([put("q", 6), *txn])
    assert kr(b.drain(impl.RevisionFilter())) == [("z", 5), ("a", 5), ("m", 5), ("q", 6)]


def test_buffer_per_key_strictly_increasing(impl: ModuleType) -> None:
    b = impl.EventBuffer()
    f = impl.RevisionFilter()
    b.extend([put("a", 3), put("a", 3), put("a", 2), put("a", 7), put("a", 5)])
    assert kr(b.drain(f)) == [("a", 2), ("a", 3), ("a", 5), ("a", 7)]
    # a later round: duplicates and time travel against what was applied
    b.extend([put("a", 7), put("a", 6), put("a", 8)])
    assert kr(b.drain(f)) == [("a", 8)]
    assert f.dropped == 3


def test_buffer_passes_the_same_objects(impl: ModuleType) -> None:
    b = impl.EventBuffer()
    changes = [put("a", 2), put("b", 1)]
    b.extend(changes)
    out = b.drain(impl.RevisionFilter())
    assert out[0] is changes[1] and out[1] is changes[0]


def test_buffer_drain_needs_a_filter(impl: ModuleType) -> None:
    b = impl.EventBuffer()
    b.append(put("a", 1))
    with pytest.raises(TypeError, match="RevisionFilter"):
        b.drain(None)
    with pytest.raises(TypeError, match="RevisionFilter"):
        b.drain(object())
    assert len(b) == 1


def test_buffer_drain_rejects_the_other_implementation() -> None:
    if compiled_module is None:
        pytest.skip("compiled buffer not built")
    with pytest.raises(TypeError, match="RevisionFilter"):
        compiled_module.EventBuffer().drain(twin_module.RevisionFilter())
    with pytest.raises(TypeError, match="RevisionFilter"):
        twin_module.EventBuffer().drain(compiled_module.RevisionFilter())


def test_buffer_clear(impl: ModuleType) -> None:
    b = impl.EventBuffer(coalesce_above=2)
    b.extend([put("a", 1), put("a", 2), put("a", 3)])
    assert b.coalesced == 2
    b.clear()
    assert len(b) == 0
    assert b.coalesced == 2
    assert b.drain(impl.RevisionFilter()) == []


def test_buffer_accepts_iterables(impl: ModuleType) -> None:
    b = impl.EventBuffer()
    b.extend(put("k", r) for r in (3, 1, 2))
    b.extend(())
    assert kr(b.drain(impl.RevisionFilter())) == [("k", 1), ("k", 2), ("k", 3)]


@pytest.mark.parametrize(("bad", "exc", "text"), BAD_CHANGES)
def test_buffer_invalid_item_loses_nothing(
    impl: ModuleType, bad: Any, exc: type, text: str
) -> None:
    """A batch is validated first: a bad item raises and none of that batch is held."""
    b = impl.EventBuffer(coalesce_above=4)
    b.extend([put("a", 1), put("b", 2)])
    with pytest.raises(exc, match=text):
        b.extend([put("c", 3), bad, put("d", 4)])
    with pytest.raises(exc, match=text):
        b.append(bad)
    assert len(b) == 2
    b.extend([put(f"k{i}", 10 + i) for i in range(3)])  # past the limit: keyed mode
    with pytest.raises(exc, match=text):
        b.extend([put("a", 99), bad])
    assert kr(b.drain(impl.RevisionFilter())) == [
        ("a", 1),
        ("b", 2),
        ("k0", 10),
        ("k1", 11),
        ("k2", 12),
    ]


@pytest.mark.parametrize(("value", "exc"), [(-1, ValueError), (1.5, TypeError), (None, TypeError)])
def test_buffer_invalid_limit(impl: ModuleType, value: Any, exc: type) -> None:
    with pytest.raises(exc, match="coalesce_above"):
        impl.EventBuffer(coalesce_above=value)


def test_counters_are_read_only(impl: ModuleType) -> None:
    f, b = impl.RevisionFilter(), impl.EventBuffer()
    for obj, name in ((f, "dropped"), (f, "snapshot_revision"), (b, "coalesced")):
        with pytest.raises(AttributeError):
            setattr(obj, name, 5)


def test_buffer_default_limit(impl: ModuleType) -> None:
    assert impl.EventBuffer().coalesce_above == 65536


# --- coalescing -----------------------------------------------------------------------------


def test_coalesce_keeps_newest_revision_not_latest_arrival(impl: ModuleType) -> None:
    b = impl.EventBuffer(coalesce_above=3)
    b.extend([put("a", 12, b"new"), put("b", 1), put("a", 10, b"old"), put("b", 2)])
    assert len(b) == 2
    assert b.coalesced == 2
    out = b.drain(impl.RevisionFilter())
    assert [(c.key, c.revision, c.value) for c in out] == [("b", 2, b"b@2"), ("a", 12, b"new")]


def test_coalesce_keeps_a_newest_delete(impl: ModuleType) -> None:
    b = impl.EventBuffer(coalesce_above=2)
    b.extend([put("a", 1), put("a", 2), delete("a", 3)])
    out = b.drain(impl.RevisionFilter())
    assert [(c.key, c.op, c.revision) for c in out] == [("a", Op.DELETE, 3)]


def test_coalesce_keeps_first_of_equal_revisions(impl: ModuleType) -> None:
    b = impl.EventBuffer(coalesce_above=1)
    first = put("a", 5, b"first")
    b.extend([first, put("a", 5, b"second")])
    assert b.drain(impl.RevisionFilter()) == [first]


def test_keyed_mode_bounded_by_distinct_keys(impl: ModuleType) -> None:
    b = impl.EventBuffer(coalesce_above=10)
    # 20 distinct keys, each written 50 times, revisions interleaved
    rev = 0
    for _ in range(50):
        for k in range(20):
            rev += 1
            b.append(put(f"k{k:02d}", rev))
            assert len(b) <= max(10, 20)
    assert len(b) == 20
    assert b.coalesced == 50 * 20 - 20
    out = b.drain(impl.RevisionFilter())
    assert kr(out) == [(f"k{k:02d}", 49 * 20 + k + 1) for k in range(20)]


def test_keyed_mode_older_revision_never_replaces(impl: ModuleType) -> None:
    b = impl.EventBuffer(coalesce_above=2)
    b.extend([put("a", 10), put("b", 11), put("c", 12)])  # coalesces, stays keyed
    b.extend([put("a", 9), put("a", 10), put("b", 20), put("a", 15)])
    assert len(b) == 3
    assert kr(b.drain(impl.RevisionFilter())) == [("c", 12), ("a", 15), ("b", 20)]


def test_coalesce_to_mostly_duplicates_returns_to_plain_mode(impl: ModuleType) -> None:
    b = impl.EventBuffer(coalesce_above=8)
    b.extend([put("a", r) for r in range(1, 10)])  # 9 > 8: coalesced to one
    assert len(b) == 1
    b.extend([put("a", r) for r in range(10, 15)])  # plain appends again
    assert len(b) == 6
    assert kr(b.drain(impl.RevisionFilter())) == [("a", r) for r in range(9, 15)]


def test_zero_limit_always_coalesces(impl: ModuleType) -> None:
    b = impl.EventBuffer(coalesce_above=0)
    b.extend([put("a", 1), put("b", 1), put("a", 2), put("b", 0)])
    assert len(b) == 2
    assert kr(b.drain(impl.RevisionFilter())) == [("b", 1), ("a", 2)]


def test_coalesced_drain_applies_every_key_at_newest(impl: ModuleType) -> None:
    """Nothing is lost: the same final state as an unbounded buffer."""
    changes = [put(f"k{(i * 7) % 13}", 1 + (i * 31) % 97) for i in range(300)]
    small, big = impl.EventBuffer(coalesce_above=5), impl.EventBuffer(coalesce_above=10_000)
    small.extend(changes)
    big.extend(changes)
    assert len(small) <= 13
    f1, f2 = impl.RevisionFilter(), impl.RevisionFilter()
    f1.reset(20)
    f2.reset(20)
    final_small = {c.key: c for c in small.drain(f1)}
    final_big = {c.key: c for c in big.drain(f2)}
    assert final_small == final_big
    assert {k: f1.last_applied(k) for k in final_big} == {k: f2.last_applied(k) for k in final_big}


def test_large_shuffled_batch_matches_reference(impl: ModuleType) -> None:
    import random

    rng = random.Random(7)
    changes = [put(f"k{rng.randrange(500)}", rng.randrange(1, 5000)) for _ in range(20_000)]
    b = impl.EventBuffer(coalesce_above=1 << 20)
    b.extend(changes)
    f = impl.RevisionFilter()
    f.reset(1000, [("k1", 3000)])
    out = b.drain(f)
    assert out == reference_drain(changes, 1000, {"k1": 3000})
    assert f.dropped == len(changes) - len(out)


@pytest.mark.parametrize("shape", ["nearly-sorted", "shuffled-dense", "shuffled-sparse"])
def test_drain_order_for_every_input_shape(impl: ModuleType, shape: str) -> None:
    """Nearly sorted, shuffled over a dense and over a sparse revision span (the compiled
    sort picks a different method for each); transactions give equal revisions."""
    import random

    rng = random.Random(shape)
    step = 1_000_003 if shape == "shuffled-sparse" else 1
    changes = [put(f"k{rng.randrange(300)}", 1 + (i // 3) * step) for i in range(6000)]
    if shape == "nearly-sorted":
        for _ in range(60):  # re-deliveries of older changes
            changes.insert(rng.randrange(len(changes)), changes[rng.randrange(len(changes))])
    else:
        rng.shuffle(changes)
    b = impl.EventBuffer(coalesce_above=1 << 20)
    b.extend(changes)
    f = impl.RevisionFilter()
    assert b.drain(f) == reference_drain(changes, 0, {})


def test_no_reference_leaks(impl: ModuleType) -> None:
    """Every path (plain and keyed holding, coalescing, drops, rollback) releases what it held."""
    import gc
    import sys

    changes = [put(f"k{i % 7}", 1 + (i * 13) % 50) for i in range(200)]
    before = [sys.getrefcount(c) for c in changes]
    for limit in (0, 5, 40, 10_000):
        b = impl.EventBuffer(coalesce_above=limit)
        f = impl.RevisionFilter()
        f.reset(10)
        b.extend(changes[:100])
        for change in changes[100:150]:
            b.append(change)
        del change
        with pytest.raises(TypeError):
            b.extend([*changes[150:], 42])
        b.extend(changes[150:])
        out = b.drain(f)
        out += f.filter(changes)
        out += [c for c in changes if f.accept(c)]
        b.extend(changes)
        b.clear()
        del b, f, out
    gc.collect()
    assert [sys.getrefcount(c) for c in changes] == before


class Finalized(tuple):  # type: ignore[type-arg]
    """A change whose finalizer appends a new change to ``target`` (re-entrancy)."""

    target: list[Any] = []

    def __del__(self) -> None:
        for buf in Finalized.target:
            buf.append(put("late", 1000))


def finalized(key: str, rev: int) -> Any:
    return Finalized((key, Op.PUT, None, rev))


@pytest.mark.parametrize("where", ["drain", "coalesce", "keyed", "clear"])
def test_finalizer_reentering_the_buffer(impl: ModuleType, where: str) -> None:
    """Changes freed inside the buffer may run Python code that uses the buffer again."""
    b = impl.EventBuffer(coalesce_above=2 if where in ("coalesce", "keyed") else 100)
    f = impl.RevisionFilter()
    f.reset(5)
    Finalized.target = [b]
    try:
        if where == "drain":
            b.extend([finalized("a", 3), put("b", 7)])  # "a" is stale: freed by drain
            assert kr(b.drain(f)) == [("b", 7)]
        elif where == "coalesce":
            b.extend([finalized("a", 6), put("a", 7), put("a", 8)])  # replaced "a"@6 freed
        elif where == "keyed":
            b.extend([put("x", 6), put("y", 6), put("z", 6)])  # keyed from here
            b.append(finalized("x", 7))
            b.append(put("x", 8))
        else:
            b.append(finalized("a", 6))
            b.clear()
    finally:
        Finalized.target = []
    held = len(b)
    out = b.drain(f)
    assert len(out) == held
    assert ("late", 1000) in kr(out)


# --- differential: compiled == twin ----------------------------------------------------------

keys = st.sampled_from(["a", "b", "c", "d", "e"])
revs = st.integers(min_value=0, max_value=40)
ops = st.sampled_from([Op.PUT, Op.DELETE])
changes_st = st.builds(lambda k, o, r: Change(k, o, None, r), keys, ops, revs)
bad_st = st.sampled_from([b for b, _, _ in BAD_CHANGES])
maybe_bad = st.one_of(changes_st, changes_st, changes_st, bad_st)

actions = st.one_of(
    st.tuples(st.just("append"), maybe_bad),
    st.tuples(st.just("extend"), st.lists(maybe_bad, max_size=12)),
    st.tuples(st.just("extend_ok"), st.lists(changes_st, max_size=30)),
    st.tuples(st.just("drain"), st.none()),
    st.tuples(st.just("clear"), st.none()),
    st.tuples(st.just("filter"), st.lists(maybe_bad, max_size=8)),
    st.tuples(st.just("accept"), maybe_bad),
    st.tuples(
        st.just("reset"),
        st.tuples(st.integers(-1, 30), st.lists(st.tuples(keys, st.integers(-1, 30)), max_size=4)),
    ),
)


def _run(module: ModuleType, limit: int, script: list[tuple[str, Any]]) -> list[Any]:
    b = module.EventBuffer(coalesce_above=limit)
    f = module.RevisionFilter()
    trace: list[Any] = []
    for action, arg in script:
        try:
            if action == "append":
                result: Any = b.append(arg)
            elif action in ("extend", "extend_ok"):
                result = b.extend(arg)
            elif action == "drain":
                result = [id(c) for c in b.drain(f)]
            elif action == "clear":
                result = b.clear()
            elif action == "filter":
                result = [id(c) for c in f.filter(arg)]
            elif action == "accept":
                result = f.accept(arg)
            else:
                result = f.reset(arg[0], arg[1])
        except Exception as exc:
            result = (type(exc), str(exc))
        trace.append(
            (
                result,
                len(b),
                b.coalesced,
                len(f),
                f.dropped,
                f.snapshot_revision,
                [f.last_applied(k) for k in "abcde"],
            )
        )
    trace.append([id(c) for c in b.drain(f)])
    return trace


@pytest.mark.skipif(compiled_module is None, reason="compiled buffer not built")
@settings(max_examples=300, deadline=None)
@given(limit=st.integers(0, 12), script=st.lists(actions, max_size=25))
def test_differential_compiled_equals_twin(limit: int, script: list[tuple[str, Any]]) -> None:
    assert _run(compiled_module, limit, script) == _run(twin_module, limit, script)  # type: ignore[arg-type]


class AppendOnFree(tuple):  # type: ignore[type-arg]
    """A change whose finalizer appends another change to the buffer under test: freed
    inside ``extend`` when coalescing replaces it (the buffer holds its only reference),
    so the buffer is re-entered half-way through a batch. The appended change depends
    only on the freed one (its key or a new one, a revision of its own), so the result
    does not depend on the order in which changes are freed."""

    buffers: list[Any] = []
    appended: list[Change] = []

    def __del__(self) -> None:
        key, _, _, rev = self
        late = put(key if rev % 2 else f"late-{key}", 1000 + 50 * "abcdefgh".index(key) + rev)
        for buf in AppendOnFree.buffers:
            AppendOnFree.appended.append(late)
            buf.append(late)


def _run_append_on_free(
    module: ModuleType, limit: int, batches: list[list[tuple[str, int, bool]]], as_list: bool
) -> tuple[list[Any], list[tuple[str, int]]]:
    b = module.EventBuffer(coalesce_above=limit)
    f = module.RevisionFilter()
    f.reset(0)
    AppendOnFree.buffers = [b]
    AppendOnFree.appended = []
    trace: list[Any] = []
    try:
        for batch in batches:
            # a generator: each change exists only in the buffer once it is handed over; a
            # list: the caller's list holds the batch during extend, the changes of earlier
            # batches are freed inside it (the compiled buffer pins the rest of the list)
            gen = (AppendOnFree((k, Op.PUT, None, r)) if fin else put(k, r) for k, r, fin in batch)
            b.extend(list(gen) if as_list else gen)
            del gen
            trace.append((len(b), b.coalesced))
        out: list[Any] = []
        while len(b):  # changes freed by drain may append more
            out.extend(b.drain(f))
    finally:
        AppendOnFree.buffers = []
    trace.append([(c[0], c[3]) for c in out])  # AppendOnFree is a plain tuple
    # nothing lost: every key ever given (in a batch or by a finalizer) at its newest
    given = [(k, r) for batch in batches for k, r, _ in batch]
    given += kr(AppendOnFree.appended)
    newest: dict[str, int] = {}
    for k, r in given:
        newest[k] = max(r, newest.get(k, -1))
    assert {k: f.last_applied(k) for k in newest} == newest
    return trace, sorted(newest.items())


def _fin_batches(nkeys: int) -> st.SearchStrategy[list[list[tuple[str, int, bool]]]]:
    change = st.tuples(st.sampled_from("abcdefgh"[:nkeys]), st.integers(1, 40), st.booleans())
    # batch lengths drawn evenly: a batch must often cross the limit to coalesce
    batch = st.integers(1, 60).flatmap(lambda n: st.lists(change, min_size=n, max_size=n))
    return st.lists(batch, min_size=1, max_size=4)


@pytest.mark.skipif(compiled_module is None, reason="compiled buffer not built")
@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(5, 20),
    # few keys often: most of a batch is then coalesced away, and freed, inside extend
    batches=st.integers(1, 8).flatmap(_fin_batches),
    as_list=st.booleans(),
)
def test_differential_finalizer_appends_during_extend(
    limit: int, batches: list[list[tuple[str, int, bool]]], as_list: bool
) -> None:
    """A change whose __del__ appends to the buffer while extend coalesces: the compiled
    buffer does what the twin does and loses nothing (the reverted hash-table pass of
    d810cfb lost a change in exactly this case)."""
    compiled = _run_append_on_free(compiled_module, limit, batches, as_list)  # type: ignore[arg-type]
    assert compiled == _run_append_on_free(twin_module, limit, batches, as_list)


@settings(max_examples=200, deadline=None)
@given(
    snapshot=st.integers(0, 30),
    batch=st.lists(changes_st, max_size=60),
)
def test_unbounded_drain_matches_reference(snapshot: int, batch: list[Change]) -> None:
    for module in (m for m in IMPLS.values() if m is not None):
        b = module.EventBuffer(coalesce_above=1000)
        b.extend(batch)
        f = module.RevisionFilter()
        f.reset(snapshot)
        out = b.drain(f)
        assert out == reference_drain(batch, snapshot, {})
        for key in {c.key for c in out}:
            revs_of_key = [c.revision for c in out if c.key == key]
            assert revs_of_key == sorted(set(revs_of_key))


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(0, 8), snapshot=st.integers(0, 30), batch=st.lists(changes_st, max_size=60)
)
def test_coalesced_drain_final_state_matches_reference(
    limit: int, snapshot: int, batch: list[Change]
) -> None:
    expected = {c.key: c.revision for c in reference_drain(batch, snapshot, {})}
    for module in (m for m in IMPLS.values() if m is not None):
        b = module.EventBuffer(coalesce_above=limit)
        for c in batch:
            b.append(c)
            assert len(b) <= max(limit, len({x.key for x in batch}))
        f = module.RevisionFilter()
        f.reset(snapshot)
        out = b.drain(f)
        assert [c.revision for c in out] == sorted(c.revision for c in out)
        assert {k: f.last_applied(k) for k in expected} == expected
        final = {c.key: c.revision for c in out}
        assert final == expected


class ClearsOnFree(tuple):  # type: ignore[type-arg]
    """A change whose finalizer empties ``ClearsOnFree.batch``: the caller's list that
    ``extend`` is reading when coalescing frees this change."""

    batch: list[Any] = []

    def __del__(self) -> None:
        ClearsOnFree.batch.clear()


@pytest.mark.parametrize("limit", [3, 8])
def test_finalizer_emptying_the_callers_list_during_extend(impl: ModuleType, limit: int) -> None:
    """The batch is held as it was passed, even if a finalizer run by coalescing empties
    the caller's list half-way (the compiled buffer reads the rest from its own
    references, not from the list)."""
    b = impl.EventBuffer(coalesce_above=limit)
    b.append(ClearsOnFree(("a", Op.PUT, None, 1)))  # held only by the buffer
    batch = [put("a", 2 + i) if i % 2 else put(f"k{i}", 2 + i) for i in range(20)]
    expected = list(batch)
    ClearsOnFree.batch = batch
    try:
        b.extend(batch)  # the first coalescing replaces "a"@1: its finalizer clears batch
    finally:
        ClearsOnFree.batch = []
    assert batch == []
    f = impl.RevisionFilter()
    newest: dict[str, int] = {}
    for c in expected:
        newest[c.key] = max(c.revision, newest.get(c.key, 0))
    out = b.drain(f)
    assert {c[0]: c[3] for c in out} == newest


def test_last_applied_of_other_keys(impl: ModuleType) -> None:
    """last_applied answers as a dict lookup would: a str subclass finds its equal key, a
    key of another type is not tracked, an unhashable one raises."""

    class Sub(str):
        pass

    f = impl.RevisionFilter()
    f.reset(0, [("a", 3)])
    assert f.accept(put("b", 5))
    assert f.last_applied(Sub("a")) == 3
    assert f.last_applied(Sub("b")) == 5
    assert f.last_applied(7) is None
    assert f.last_applied("c") is None
    with pytest.raises(TypeError, match="unhashable"):
        f.last_applied(["a"])
    assert len(f) == 2
