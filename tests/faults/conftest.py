"""Fixtures of the fault rows: a history per test (the strict simulator ``sim`` and
failpoints off come from tests/conftest.py), and the store fixtures of tests/etcd and
tests/kafka (re-exported: fixtures are seen by the tests under the conftest that
defines them)."""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from datasync.testing.history import History
from tests.etcd.conftest import etcd1, etcd3, etcd3_peer_proxied, make_source  # noqa: F401
from tests.kafka.conftest import fresh_tansu, tansu_bin  # noqa: F401 - fixtures

from .harness import seed_of


@pytest.fixture
def history(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[History]:
    """The run's history; saved as JSON lines next to the test's tmp dir when it fails."""
    h = History(seed=seed_of(request.node.name))
    yield h
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        out = tmp_path_factory.mktemp("history") / f"{request.node.name}.jsonl"
        h.save(out)
        print(f"history saved to {out}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[object]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item (the history fixture saves on failure)."""
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep
