"""Event buffer and revision filter: compiled vs twin vs a plain-Python baseline.

Each group runs the same 100k-change batch through the three, side by side:

- ``append+drain``: ``EventBuffer.extend`` of the batch, then ``drain`` through a
  ``RevisionFilter`` reset to the snapshot revision (the end of a resync round);
- ``filter``: ``RevisionFilter.filter`` alone (live mode, no round running).

The baseline is what a competent Python developer writes without this module: a list,
``list.sort`` on the revision, and a per-key dict filter. It neither validates input nor
bounds memory. Throughput is 100k divided by the mean time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import buffer_module, change_stream
from datasync.api import Change

N = 100_000
FIRST_REVISION = 1_000
#: the snapshot covers the first tenth of the stream: those changes are dropped.
SNAPSHOT = FIRST_REVISION + N // 10
ROUNDS = 25


class BaselineFilter:
    """Plain Python: a revision threshold and a dict of the last revision per key."""

    def __init__(self) -> None:
        self.snapshot = 0
        self.last: dict[str, int] = {}

    def reset(self, snapshot_revision: int) -> None:
        self.snapshot = snapshot_revision
        self.last = {}

    def filter(self, changes: Sequence[Change]) -> list[Change]:
        snapshot = self.snapshot
        last = self.last
        out = []
        for change in changes:
            rev = change.revision
            if rev <= snapshot or rev <= last.get(change.key, -1):
                continue
            last[change.key] = rev
            out.append(change)
        return out


class BaselineBuffer:
    """Plain Python: a list, sorted on drain."""

    def __init__(self, coalesce_above: int = 0) -> None:
        self.items: list[Change] = []

    def extend(self, changes: Sequence[Change]) -> None:
        self.items.extend(changes)

    def drain(self, filt: BaselineFilter) -> list[Change]:
        items, self.items = self.items, []
        items.sort(key=attrgetter("revision"))
        return filt.filter(items)


BASELINE = SimpleNamespace(EventBuffer=BaselineBuffer, RevisionFilter=BaselineFilter)


@pytest.fixture(params=["compiled", "twin", "baseline"])
def impl(request: pytest.FixtureRequest) -> Any:
    """The compiled module, the twin, or the baseline: ids read [compiled]/[twin]/[baseline]."""
    if request.param == "baseline":
        return BASELINE
    return buffer_module(request.param)


SCENARIOS: dict[str, tuple[Callable[[], list[Change]], int]] = {
    # (stream, coalesce_above)
    "in-order": (lambda: change_stream(N, first_revision=FIRST_REVISION), 1 << 20),
    "shuffled": (lambda: change_stream(N, first_revision=FIRST_REVISION, shuffled=True), 1 << 20),
    # the default limit: the buffer coalesces past 65536 held changes
    "in-order-coalescing": (lambda: change_stream(N, first_revision=FIRST_REVISION), 65536),
}
_streams: dict[str, list[Change]] = {}


def stream(scenario: str) -> list[Change]:
    if scenario not in _streams:
        _streams[scenario] = SCENARIOS[scenario][0]()
    return _streams[scenario]


def baseline_output(changes: list[Change]) -> list[Change]:
    b = BaselineBuffer()
    b.extend(changes)
    f = BaselineFilter()
    f.reset(SNAPSHOT)
    return b.drain(f)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_append_drain(benchmark: Any, impl: Any, scenario: str) -> None:
    """extend(100k) + drain through a filter reset to the snapshot revision."""
    benchmark.group = f"append+drain 100k {scenario}"
    changes = stream(scenario)
    limit = SCENARIOS[scenario][1]

    def setup() -> tuple[tuple[Any, Any], dict[str, Any]]:
        filt = impl.RevisionFilter()
        filt.reset(SNAPSHOT)
        return (impl.EventBuffer(limit), filt), {}

    def run(buf: Any, filt: Any) -> list[Change]:
        buf.extend(changes)
        return buf.drain(filt)  # type: ignore[no-any-return]

    out = benchmark.pedantic(run, setup=setup, rounds=ROUNDS, warmup_rounds=1)
    expected = baseline_output(changes)
    if limit >= len(changes):
        assert out == expected
    else:  # coalesced: every key still ends at its newest value
        assert {c.key: c for c in out} == {c.key: c for c in expected}


def test_filter_live(benchmark: Any, impl: Any) -> None:
    """RevisionFilter.filter on a 100k batch (live mode: no resync round running)."""
    benchmark.group = "filter 100k live"
    changes = stream("in-order")

    def setup() -> tuple[tuple[Any], dict[str, Any]]:
        filt = impl.RevisionFilter()
        filt.reset(SNAPSHOT)
        return (filt,), {}

    def run(filt: Any) -> list[Change]:
        return filt.filter(changes)  # type: ignore[no-any-return]

    out = benchmark.pedantic(run, setup=setup, rounds=ROUNDS, warmup_rounds=1)
    assert out == BaselineFilter.filter(_reset(BaselineFilter()), changes)


def _reset(f: BaselineFilter) -> BaselineFilter:
    f.reset(SNAPSHOT)
    return f
