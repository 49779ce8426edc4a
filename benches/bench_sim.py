"""Requests per second the VPP simulator answers, per message kind, from a pipelined client.

The simulator runs in a subprocess (``datasync vppsim``) so that it and the client each
get a core; the client is ``VppClient.call_many`` with its default window (1024 in
flight). Every round sends ``N`` requests of one kind: against ``N`` interfaces (2,000
loopbacks), or creating 2,000 loopbacks, taps or memifs. ``extra_info["req_per_s"]``
holds the rate of the fastest round (for the dumps: details per second). What a round
needs (fresh interfaces, the opposite flag or tag) is prepared before it, untimed.

    .venv/bin/python -m pytest benches/bench_sim.py --benchmark-columns=min,median,rounds
"""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import uvloop
from tests.vpp.simproc import simulator_process

from datasync.vpp.client import VppClient

# --benchmark-disable (CI) runs each body once only to prove it works: a tenth of the size
_SCALE = 10 if "--benchmark-disable" in sys.argv else 1
N = 2_000 // _SCALE
ROUNDS = 5
U32_MAX = 0xFFFFFFFF


@contextlib.contextmanager
def _sim_process() -> Iterator[str]:
    """A fresh ``datasync vppsim`` process; its socket path."""
    with simulator_process() as sim:
        yield sim.path


class _Bench:
    """One client of the simulator subprocess, on its own loop."""

    def __init__(self, path: str) -> None:
        self.loop = uvloop.new_event_loop()
        self.client = VppClient(path, probe_interval=None, timeout=60)
        self.run(self.client.connect())
        self.round = itertools.count()

    def run(self, aw: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(aw)

    def many(self, name: str, requests: list[dict[str, Any] | None]) -> list[Any]:
        replies: list[Any] = self.run(self.client.call_many(name, requests))
        return replies

    def loopbacks(self, n: int) -> list[int]:
        return [r.sw_if_index for r in self.many("create_loopback", [None] * n)]

    def delete(self, indexes: list[int]) -> None:
        self.many("delete_loopback", [{"sw_if_index": i} for i in indexes])

    def close(self) -> None:
        self.run(self.client.close())
        self.loop.close()


@pytest.fixture(scope="module")
def bench() -> Iterator[_Bench]:
    with _sim_process() as path:
        b = _Bench(path)
        yield b
        b.close()


@pytest.fixture(scope="module")
def ifaces(bench: _Bench) -> list[int]:
    """N loopbacks with a /24 each (so the FIB holds 4 entries per interface) that the
    update and dump benchmarks share."""
    made = bench.loopbacks(N)
    bench.many(
        "sw_interface_add_del_address",
        [{"sw_if_index": i, "is_add": True, "prefix": _prefix(n, 11)} for n, i in enumerate(made)],
    )
    return made


def _rate(benchmark: Any, n: int) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info["req_per_s"] = round(n / stats.stats.min)


def _measure(
    benchmark: Any,
    bench: _Bench,
    name: str,
    make: Callable[[], list[dict[str, Any] | None]],
    *,
    keep: Callable[[list[Any]], None] | None = None,
) -> None:
    """Time ``call_many(name, make())``; ``make`` runs untimed before each round and
    ``keep`` gets each round's replies (untimed too)."""
    benchmark.group = "simulator, pipelined requests per second"
    benchmark.name = f"test_sim[{name}]"
    requests: list[list[dict[str, Any] | None]] = []

    def setup() -> None:
        requests[:] = [make()]

    replies: list[Any] = []

    def target() -> None:
        replies[:] = bench.many(name, requests[0])

    def check() -> None:
        assert all(getattr(r, "retval", 0) == 0 for r in replies)
        if keep is not None:
            keep(replies)

    def setup_after_previous() -> None:
        if replies:
            check()
        setup()

    benchmark.pedantic(
        target, setup=setup_after_previous, rounds=ROUNDS, iterations=1, warmup_rounds=0
    )
    check()
    _rate(benchmark, len(requests[0]))


def _prefix(n: int, first: int = 10) -> str:
    return f"{first}.{n >> 8 & 255}.{n & 255}.1/24"


def test_create_loopback(benchmark: Any, bench: _Bench) -> None:
    made: list[int] = []

    def make() -> list[dict[str, Any] | None]:
        if made:  # the previous round's, so each round creates N from the same start
            bench.delete(made)
        return [None] * N

    def keep(replies: list[Any]) -> None:
        made[:] = [r.sw_if_index for r in replies]

    _measure(benchmark, bench, "create_loopback", make, keep=keep)
    bench.delete(made)


@pytest.mark.parametrize("kind", ["tap_create_v3", "memif_create_v2"])
def test_create_tap_memif(benchmark: Any, bench: _Bench, kind: str) -> None:
    made: list[int] = []
    delete = "tap_delete_v2" if kind == "tap_create_v3" else "memif_delete"

    def make() -> list[dict[str, Any] | None]:
        if made:
            bench.many(delete, [{"sw_if_index": i} for i in made])
        if kind == "tap_create_v3":
            return [{"tag": f"tap-{n}"} for n in range(N)]
        return [{"socket_id": 0, "id": n} for n in range(N)]

    def keep(replies: list[Any]) -> None:
        made[:] = [r.sw_if_index for r in replies]

    _measure(benchmark, bench, kind, make, keep=keep)
    bench.many(delete, [{"sw_if_index": i} for i in made])


def test_add_address(benchmark: Any, bench: _Bench) -> None:
    # N fresh loopbacks per round (the last round's deleted, addresses and all)
    fresh: list[int] = []

    def make() -> list[dict[str, Any] | None]:
        if fresh:
            bench.delete(fresh)
        fresh[:] = bench.loopbacks(N)
        return [
            {"sw_if_index": i, "is_add": True, "prefix": _prefix(n)} for n, i in enumerate(fresh)
        ]

    _measure(benchmark, bench, "sw_interface_add_del_address", make)
    bench.delete(fresh)


def test_tag(benchmark: Any, bench: _Bench, ifaces: list[int]) -> None:
    def make() -> list[dict[str, Any] | None]:
        r = next(bench.round)  # a new tag each round: every request is an update
        return [{"sw_if_index": i, "is_add": True, "tag": f"r{r}-if{i}"} for i in ifaces]

    _measure(benchmark, bench, "sw_interface_tag_add_del", make)


def test_flags(benchmark: Any, bench: _Bench, ifaces: list[int]) -> None:
    def make() -> list[dict[str, Any] | None]:
        up = next(bench.round) % 2  # alternate admin up / down: every request changes state
        return [{"sw_if_index": i, "flags": up} for i in ifaces]

    _measure(benchmark, bench, "sw_interface_set_flags", make)


def test_bd_member(benchmark: Any, bench: _Bench, ifaces: list[int]) -> None:
    def make() -> list[dict[str, Any] | None]:
        base = 100 + 20 * (next(bench.round) % 2)  # move every member to another bd
        return [
            {"rx_sw_if_index": i, "bd_id": base + n % 20, "enable": True}
            for n, i in enumerate(ifaces)
        ]

    _measure(benchmark, bench, "sw_interface_set_l2_bridge", make)


def test_route_add(benchmark: Any, bench: _Bench, ifaces: list[int]) -> None:
    label_stack = [{"is_uniform": 0, "label": 0, "ttl": 0, "exp": 0}] * 16

    def path(i: int) -> dict[str, Any]:
        return {
            "sw_if_index": i,
            "nh": {"address": {"ip4": b"\x0a\x00\x00\x02"}},
            "label_stack": label_stack,
        }

    def route(n: int, i: int, is_add: bool) -> dict[str, Any]:
        return {
            "is_add": is_add,
            "route": {
                "table_id": 0,
                "prefix": f"172.{16 + (n >> 8)}.{n & 255}.0/24",
                "n_paths": 1 if is_add else 0,
                "paths": [path(i)] if is_add else [],
            },
        }

    added = [False]

    def make() -> list[dict[str, Any] | None]:
        if added[0]:
            bench.many("ip_route_add_del", [route(n, i, False) for n, i in enumerate(ifaces)])
        added[0] = True
        return [route(n, i, True) for n, i in enumerate(ifaces)]

    _measure(benchmark, bench, "ip_route_add_del", make)


@pytest.mark.parametrize("dump", ["sw_interface_dump", "ip_route_dump"])
def test_dump(benchmark: Any, bench: _Bench, ifaces: list[int], dump: str) -> None:
    fields: dict[str, Any] = {}
    if dump == "ip_route_dump":
        fields = {"table": {"table_id": 0, "is_ip6": False}}
    got = bench.run(bench.client.dump(dump, **fields))
    benchmark.group = "simulator, dump details per second"
    benchmark.name = f"test_sim[{dump}]"

    def target() -> None:
        assert len(bench.run(bench.client.dump(dump, **fields))) == len(got)

    benchmark.pedantic(target, rounds=ROUNDS, iterations=1)
    benchmark.extra_info["details"] = len(got)
    _rate(benchmark, len(got))
