"""IDX name-to-index mappings and their acknowledged notifications."""

from __future__ import annotations

import asyncio

import pytest

from datasync.api import Op
from datasync.errors import AckFailedError, AckTimeoutError, DuplicateNameError
from datasync.idx import IdxEntry, NameToIndex


def test_lookups_both_ways_and_secondary_indexes() -> None:
    m = NameToIndex("interfaces", secondary={"ip": lambda md: md["ips"]})
    m.put("loop0", 1, {"ips": ["10.0.0.1/24"]})
    m.put("tap0", 2, {"ips": ["10.0.0.1/24", "fd00::1/64"]})
    assert m.lookup("loop0") == IdxEntry("loop0", 1, {"ips": ["10.0.0.1/24"]})
    assert m.lookup_index(2) is not None and m.lookup_index(2).name == "tap0"  # type: ignore[union-attr]
    assert m.lookup_by("ip", "10.0.0.1/24") == ["loop0", "tap0"]
    m.put("tap0", 5, {"ips": []})  # re-index: old index and secondary values go away
    assert m.lookup_index(2) is None
    assert m.lookup_by("ip", "fd00::1/64") == []
    assert m.lookup_by("ip", "10.0.0.1/24") == ["loop0"]
    m.delete("loop0")
    assert m.lookup_by("ip", "10.0.0.1/24") == []
    assert [e.name for e in m] == ["tap0"] and len(m) == 1 and "tap0" in m
    with pytest.raises(KeyError, match="no secondary index 'mac'"):
        m.lookup_by("mac", "x")


def test_bad_input_names_the_entry() -> None:
    m = NameToIndex("interfaces")
    m.put("a", 1)
    with pytest.raises(ValueError, match="index 1 of 'b' is already held by 'a'"):
        m.put("b", 1)
    with pytest.raises(ValueError, match="empty name"):
        m.put("", 3)
    with pytest.raises(ValueError, match="index of 'c' must be an int"):
        m.put("c", -1)
    assert m.delete("missing") is None
    assert m.lookup("a") == IdxEntry("a", 1)


async def test_owner_waits_for_every_watcher() -> None:
    m = NameToIndex("interfaces")
    w1, w2 = m.watch("l2"), m.watch("l3")
    note = m.put("loop0", 1)
    waiter = asyncio.ensure_future(note.wait(timeout=5))
    ev1 = await anext(w1.events)
    assert (ev1.op, ev1.name, ev1.index, ev1.prev) == (Op.PUT, "loop0", 1, None)
    ev1.done()
    await asyncio.sleep(0.01)
    assert not waiter.done() and note.pending == ["l3"]
    (await anext(w2.events)).done()
    await waiter
    dnote = m.delete("loop0")
    assert dnote is not None
    ev = await anext(w1.events)
    assert ev.op is Op.DELETE and ev.prev == IdxEntry("loop0", 1)


async def test_timeout_is_an_error_naming_the_silent_watcher() -> None:
    m = NameToIndex("interfaces")
    w = m.watch("l2")
    m.watch("quiet")
    note = m.put("loop0", 1)
    (await anext(w.events)).done()
    with pytest.raises(AckTimeoutError, match="no acknowledgement from quiet") as info:
        await note.wait(timeout=0.05)
    assert info.value.missing == ["quiet"]


async def test_late_and_repeated_done_are_counted_and_ignored() -> None:
    m = NameToIndex("interfaces")
    w = m.watch("slow")
    note = m.put("loop0", 1)
    with pytest.raises(AckTimeoutError):
        await note.wait(timeout=0.01)
    ev = await anext(w.events)
    ev.done()
    ev.done()
    assert m.late_acks == 2


async def test_watcher_error_reaches_the_owner() -> None:
    m = NameToIndex("interfaces")
    w = m.watch("l2")
    note = m.put("loop0", 1)
    ev = await anext(w.events)
    ev.done(RuntimeError("bridge domain busy"))
    ev.done()  # first call wins
    with pytest.raises(AckFailedError, match="l2: bridge domain busy") as info:
        await note.wait(timeout=1)
    assert set(info.value.errors) == {"l2"}


async def test_closing_one_watcher_releases_only_its_waits() -> None:
    m = NameToIndex("interfaces")
    gone, stay = m.watch("gone"), m.watch("stay")
    note = m.put("loop0", 1)
    gone.close()
    assert note.pending == ["stay"]
    (await anext(stay.events)).done()
    await note.wait(timeout=1)
    m.put("loop1", 2)
    assert len(stay.events) == 1
    with pytest.raises(DuplicateNameError):
        m.watch("stay")
    m.watch("gone")  # the name is free again


async def test_late_subscriber_gets_current_entries_replayed() -> None:
    m = NameToIndex("interfaces")
    m.put("a", 1)
    m.put("b", 2)
    m.delete("a")
    w = m.watch("late", replay=True)
    ev = await anext(w.events)
    assert (ev.op, ev.name, ev.replay) == (Op.PUT, "b", True)
    assert len(w.events) == 0
    assert len(m.watch("plain").events) == 0


async def test_closing_releases_events_already_taken() -> None:
    m = NameToIndex("interfaces")
    w = m.watch("bd")
    note = m.put("loop0", 1)
    ev = await anext(w.events)  # taken, never acknowledged
    assert not ev.ack.is_done
    w.close()
    await note.wait(timeout=1)
    assert w.unacked == set()
