"""Decoded records of the compiled codec: records of atomic fields are not tracked by the
GC, and freed records are reused from a free list (pyx/ds_codec.h). Neither may change
what a record is: values, types, subclasses and deep nesting behave as namedtuples do."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from types import ModuleType
from typing import Any

import pytest

from datasync.vpp import _codec_py
from datasync.vpp.codec import codec_for
from datasync.vpp.defs import ApiDefinitions, builtin_definitions
from tests.vpp.test_codec import IMPLS, SAMPLES

pytestmark = pytest.mark.skipif("compiled" not in IMPLS, reason="compiled codec not built")


@pytest.fixture(scope="module")
def defs() -> ApiDefinitions:
    return builtin_definitions()


@pytest.fixture(params=["fast", "portable"])
def compiled(request: pytest.FixtureRequest) -> ModuleType:
    c = IMPLS["compiled"]
    c._fast_paths(request.param == "fast")
    try:
        yield c
    finally:
        c._fast_paths(True)


def test_atomic_records_are_not_tracked(compiled: ModuleType, defs: ApiDefinitions) -> None:
    c = codec_for(defs, "bridge_domain_details", compiled)
    m = c.decode(c.encode(1, SAMPLES["bridge_domain_details"]))
    member = m.sw_if_details[3]
    assert not gc.is_tracked(member)  # ints only: no cycle can go through it
    assert gc.is_tracked(m)  # holds a list
    assert member == (0, 4, 1) and type(member).__name__ == "bridge_domain_sw_if"
    # a record made by the program, not the codec, is an ordinary (tracked) namedtuple
    assert gc.is_tracked(type(member)(0, [], 1))


def _shape(v: Any) -> Any:
    """The types all the way down (each codec has its own message type; struct types are
    shared)."""
    if isinstance(v, tuple):
        return (type(v).__name__, getattr(v, "_fields", None), [_shape(x) for x in v])
    if isinstance(v, list):
        return [_shape(x) for x in v]
    return type(v).__name__


def test_reused_records_equal_the_twins(compiled: ModuleType, defs: ApiDefinitions) -> None:
    """Decoding every sample again and again, keeping some records and dropping others,
    gives the twin's values and types every time (freed records come back as records of
    other types of the same size)."""
    kept = []
    for round_ in range(50):
        for name, values in SAMPLES.items():
            twin = codec_for(defs, name, _codec_py)
            comp = codec_for(defs, name, compiled)
            data = twin.encode(7, values)
            got = comp.decode(data)
            want = twin.decode(data)
            assert got == want and _shape(got) == _shape(want), name
            if round_ % 7 == 0:
                kept.append((got, want))
        gc.collect()
    for got, want in kept:
        assert got == want and _shape(got) == _shape(want)
        assert got._asdict() == want._asdict()


_SUBPROCESS = """
import gc
from datasync import _codec_c
from datasync.vpp.codec import codec_for
from datasync.vpp.defs import builtin_definitions
from tests.vpp.test_codec import SAMPLES

_codec_c._fast_paths({fast})
c = codec_for(builtin_definitions(), "bridge_domain_details", _codec_c)
data = c.encode(1, SAMPLES["bridge_domain_details"])
member_type = type(c.decode(data).sw_if_details[0])


class Slotted(member_type):
    __slots__ = ()


class WithDict(member_type):
    pass


keep = []
for i in range(3000):
    m = c.decode(data)
    s = Slotted(1, i, 0)
    d = WithDict(1, i, 0)
    d.cycle = [d, m]  # freed by the collector, through the subclass's dict
    if i % 100 == 0:
        keep.append((m.sw_if_details[i % 8], s))
    if i % 500 == 0:
        gc.collect()
gc.collect()
assert all(k[0].sw_if_index in range(1, 9) and k[1].sw_if_index % 100 == 0 for k in keep)
# a record nested far deeper than the C stack allows, freed at once (the trashcan)
x = None
for i in range(300000):
    x = member_type(x, i, 0)
del x
x = None
for i in range(300000):
    x = Slotted(x, i, 0)
del x
print("survived")
"""


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "portable"])
def test_subclasses_cycles_and_deep_nesting_are_freed_safely(fast: bool) -> None:
    """Run under the debug allocator, which turns a use-after-free or a double free into a
    crash: records of the codec's types and of subclasses defined in Python, in cycles
    through a subclass's __dict__, and nested 300,000 deep."""
    env = {**os.environ, "PYTHONMALLOC": "debug"}
    out = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", _SUBPROCESS.format(fast=fast)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert out.returncode == 0 and "survived" in out.stdout, out.stdout + out.stderr


def test_free_list_reports_where_it_is_on() -> None:
    """On CPython 3.11-3.13 (with the GIL) the free list is compiled in and passes its
    import check."""
    paths = IMPLS["compiled"]._fast_paths()
    known = sys.implementation.name == "cpython" and (3, 11) <= sys.version_info[:2] <= (3, 13)
    free_threaded = not getattr(sys, "_is_gil_enabled", lambda: True)()
    if known and not free_threaded:
        assert paths["records"] == 1


_FINALIZER = """
from datasync import _codec_c
from datasync.vpp.codec import codec_for
from datasync.vpp.defs import builtin_definitions
from tests.vpp.test_codec import SAMPLES

c = codec_for(builtin_definitions(), "bridge_domain_details", _codec_c)
data = c.encode(1, SAMPLES["bridge_domain_details"])
member_type = type(c.decode(data).sw_if_details[0])
seen = []
member_type.__del__ = lambda self: seen.append(self.sw_if_index)
c.decode(data)
kept = []
member_type.__del__ = lambda self: kept.append(self)  # resurrects the record
c.decode(data)
del member_type.__del__
assert sorted(seen) == list(range(1, 9)), seen
assert sorted(k.sw_if_index for k in kept) == list(range(1, 9))
print("survived")
"""


def test_a_del_added_to_a_record_type_runs() -> None:
    """A ``__del__`` set on a record type after the codec made it is called for each
    record freed, and a record it resurrects stays valid (debug allocator)."""
    env = {**os.environ, "PYTHONMALLOC": "debug"}
    out = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", _FINALIZER],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert out.returncode == 0 and "survived" in out.stdout, out.stdout + out.stderr


def test_kept_lists_and_strings(compiled: ModuleType, defs: ApiDefinitions) -> None:
    """A decoded array's list is reused only once nothing else holds it (the record that
    held it was freed), and short fixed strings shared by wire bytes are equal values:
    neither changes what a program that keeps a decoded list or string sees."""
    c = codec_for(defs, "bridge_domain_details", compiled)
    twin = codec_for(defs, "bridge_domain_details", _codec_py)
    data = c.encode(1, SAMPLES["bridge_domain_details"])
    other = dict(SAMPLES["bridge_domain_details"], bd_tag="other", n_sw_ifs=2)
    other["sw_if_details"] = [{"context": 0, "sw_if_index": 40 + i, "shg": 1} for i in range(2)]
    data2 = c.encode(1, other)
    kept = c.decode(data).sw_if_details  # the record is freed, the list kept by the program
    tag = c.decode(data).bd_tag
    snapshot = list(kept)
    for _ in range(50):  # records and their lists freed and reused, of both shapes
        assert c.decode(data) == twin.decode(data)
        m = c.decode(data2)
        assert m == twin.decode(data2) and type(m.sw_if_details) is list
    assert kept == snapshot and kept == twin.decode(data).sw_if_details
    assert tag == twin.decode(data).bd_tag and type(tag) is str
    lists = [c.decode(data2).sw_if_details for _ in range(5)]  # live lists are distinct
    assert len({id(x) for x in lists}) == 5 and all(x == lists[0] for x in lists)
    lists[0].append(lists[0])  # a cycle through a reused list is still collected
    del lists
    gc.collect()
    assert c.decode(data) == twin.decode(data)
