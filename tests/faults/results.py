"""A pytest plugin that writes one JSON line per fault row test to the file named by
``DATASYNC_FAULTS_RESULTS``: the row (``F<n>`` from the test's name), the outcome (pass,
fail, void, skip, xfail) and what the test recorded with ``record_property`` (``t_conv``,
``relists``, ``sb_writes``, ``invariants``). ``scripts/faults_report.py`` loads it with
``-p tests.faults.results``; without the variable it does nothing."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest

ENV = "DATASYNC_FAULTS_RESULTS"
_ROW = re.compile(r"test_f(\d+)(?:_|$)")


def row_of(name: str) -> str | None:
    """``test_f11_one_item...`` -> ``F11``."""
    m = _ROW.search(name)
    return f"F{int(m.group(1))}" if m else None


def _outcome(report: pytest.TestReport, call: pytest.CallInfo[Any] | None) -> str:
    if hasattr(report, "wasxfail"):
        return "xfail" if report.skipped else "xpass"
    if report.skipped:
        return "skip"
    if report.failed:
        exc = call.excinfo if call is not None else None
        if exc is not None and exc.typename == "VoidTest":
            return "void"
        return "fail"
    return "pass"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    path = os.environ.get(ENV)
    if not path:
        return
    row = row_of(item.name)
    if row is None:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        doc = {
            "row": row,
            "test": item.nodeid,
            "outcome": _outcome(report, call),
            "duration": round(report.duration, 3),
            **dict(item.user_properties),
        }
        if doc.get("void") and doc["outcome"] == "fail":
            doc["outcome"] = "void"
        with open(path, "a") as f:
            f.write(json.dumps(doc, default=str) + "\n")
