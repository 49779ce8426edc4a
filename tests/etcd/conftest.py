"""etcd fixtures: a real etcd on free loopback ports, or an external one.

``DATASYNC_ETCD_ENDPOINTS=host:port[,host:port]`` points the tests at an external
etcd instead; tests that kill, stop or restore the store are skipped then.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from datasync.transport.etcd import EtcdSource
from tests.services import missing

from .etcdserver import ENV_ENDPOINTS, ETCD, EtcdCluster

EXTERNAL = [e for e in os.environ.get(ENV_ENDPOINTS, "").split(",") if e]

# Short timeouts so that faults are seen quickly in tests.
FAST = dict(
    connect_timeout=2.0,
    request_timeout=5.0,
    progress_interval=0.5,
    stall_timeout=1.5,
    backoff_base=0.05,
    backoff_cap=0.5,
)

pytestmark = pytest.mark.etcd


def _need_local() -> None:
    if EXTERNAL:
        pytest.skip(f"{ENV_ENDPOINTS} is set: not killing an external etcd")
    if not shutil.which("etcd") and not os.path.exists(ETCD):
        missing("etcd is not installed (apt-get install etcd-server etcd-client)")


@pytest.fixture(scope="session")
def etcd_endpoints() -> Iterator[list[str]]:
    """Endpoints of a long-lived etcd shared by tests that only read and write."""
    if EXTERNAL:
        yield EXTERNAL
        return
    _need_local()
    cluster = EtcdCluster(1).start()
    try:
        yield cluster.endpoints
    finally:
        cluster.close()


@pytest.fixture
def etcd1() -> Iterator[EtcdCluster]:
    """A fresh single-member etcd that the test may kill, stop or restore."""
    _need_local()
    cluster = EtcdCluster(1).start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def etcd1_autocompacting() -> Iterator[EtcdCluster]:
    """A fresh single-member etcd that compacts its history on its own, every second, to
    the revision it had a second before (``--auto-compaction-mode=periodic``; the revision
    mode only runs every 5 minutes, too slow for a test)."""
    _need_local()
    cluster = EtcdCluster(1)
    for member in cluster.members:
        member.extra_args = ["--auto-compaction-mode=periodic", "--auto-compaction-retention=1s"]
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def etcd3() -> Iterator[EtcdCluster]:
    """A fresh 3-member etcd cluster for failover tests."""
    _need_local()
    cluster = EtcdCluster(3).start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def etcd3_peer_proxied() -> Iterator[EtcdCluster]:
    """A 3-member cluster whose members' inbound peer traffic goes through proxies."""
    _need_local()
    cluster = EtcdCluster(3, peer_proxies=True).start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
async def make_source() -> AsyncIterator[Callable[..., EtcdSource]]:
    """Factory of ``EtcdSource`` with test timeouts, closed at teardown."""
    made: list[EtcdSource] = []

    def make(endpoints: list[str], **kw: Any) -> EtcdSource:
        src = EtcdSource(name=kw.pop("name", "etcd"), endpoints=endpoints, **{**FAST, **kw})
        made.append(src)
        return src

    yield make
    for src in made:
        await src.close()
