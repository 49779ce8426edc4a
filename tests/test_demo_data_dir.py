"""``datasync demo --data-dir`` on a path that cannot hold the demo: one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasync.agent.demo import main


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_a_file_as_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("precious")
    assert main(["--data-dir", str(tmp_path / "f")]) == 2
    assert _one_error_line(capsys) == f"datasync demo: --data-dir {tmp_path / 'f'}: not a directory"
    assert (tmp_path / "f").read_text() == "precious"


def test_a_garbage_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    garbage = b"\x17not sqlite\x00" * 500
    (tmp_path / "datasync.db").write_bytes(garbage)
    assert main(["--data-dir", str(tmp_path)]) == 2
    line = _one_error_line(capsys)
    assert "datasync.db" in line and "file is not a database" in line
    assert (tmp_path / "datasync.db").read_bytes() == garbage


def test_a_file_where_the_socket_goes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "vpp-api.sock").write_text("precious")
    assert main(["--data-dir", str(tmp_path)]) == 2
    assert "vpp-api.sock: exists and is not a socket" in _one_error_line(capsys)
    assert (tmp_path / "vpp-api.sock").read_text() == "precious"
