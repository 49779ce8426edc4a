"""Nothing to set up: the datasync fixtures come with the package's pytest plugin.

Benchmarks live in ``bench_*.py`` files, collected here like tests."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
