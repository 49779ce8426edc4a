"""Shared benchmark fixtures: implementations side by side, and realistic change streams.

Benchmark files are named ``bench_*.py``; this conftest collects them when ``benches/`` is
given as a directory (pytest's default pattern only picks ``test_*.py``).
"""

from __future__ import annotations

import importlib
import random
from pathlib import Path
from types import ModuleType

import pytest

from datasync.api import Change, Op

try:
    _compiled_buffer: ModuleType | None = importlib.import_module("datasync._buffer_c")
except ImportError:
    _compiled_buffer = None
_twin_buffer = importlib.import_module("datasync._buffer_py")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # Files named on the command line are collected by pytest itself already.
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def buffer_module(name: str) -> ModuleType:
    """The compiled buffer module (skips the test when it is not built) or the twin."""
    if name == "compiled":
        if _compiled_buffer is None:
            pytest.skip("compiled buffer not built")
        return _compiled_buffer
    return _twin_buffer


@pytest.fixture(params=["compiled", "twin"])
def buffer_impl(request: pytest.FixtureRequest) -> ModuleType:
    """``datasync._buffer_c`` or ``datasync._buffer_py``; ids read ``[compiled]`` / ``[twin]``."""
    return buffer_module(request.param)


#: etcd-style keys of a vpp-agent deployment.
KEY_FORMAT = "/vnf-agent/vpp1/config/vpp/v2/interfaces/memif{:05d}"


def change_stream(
    n: int = 100_000,
    distinct_keys: int = 10_000,
    *,
    first_revision: int = 1_000,
    glitches: float = 0.01,
    shuffled: bool = False,
    seed: int = 1,
) -> list[Change]:
    """``n`` changes over ``distinct_keys`` keys, as a watch stream delivers them.

    Revisions grow by one per change (etcd: one revision per put), in arrival order unless
    ``shuffled``. A ``glitches`` share of the changes is replaced by a re-delivery of an
    earlier change (etcd's duplicate and time-travelling watch events), which the filter
    must drop.
    """
    rng = random.Random(seed)
    keys = [KEY_FORMAT.format(i) for i in range(distinct_keys)]
    value = b'{"name":"memif1","type":"MEMIF","enabled":true,"mtu":1500}'
    out: list[Change] = []
    for i in range(n):
        if out and rng.random() < glitches:
            out.append(out[rng.randrange(max(0, len(out) - 1000), len(out))])
            continue
        op = Op.DELETE if rng.random() < 0.05 else Op.PUT
        out.append(
            Change(rng.choice(keys), op, None if op is Op.DELETE else value, first_revision + i)
        )
    if shuffled:
        rng.shuffle(out)
    return out
