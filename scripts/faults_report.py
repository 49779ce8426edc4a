#!/usr/bin/env python3
"""Run the fault rows and write their results into docs/faults.md.

    python scripts/faults_report.py            # the rows CI runs (no slow ones)
    python scripts/faults_report.py --slow     # every row, the slow ones too
    python scripts/faults_report.py -k f4      # some rows; other rows keep no result

pytest runs the row tests (``test_f<n>_...``) with the ``tests.faults.results`` plugin,
which writes one JSON line per test: outcome (pass, fail, void, skip, xfail), measured
convergence time, full relists, southbound (VPP) writes after the fault. The table
between the ``faults-report`` markers of docs/faults.md is replaced by those results, with
each row's goal figure (read from the rows table of the same file) beside them. pytest's
exit status is this script's, so a failing row fails ``make faults-report`` after the
document is written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "faults.md"
BEGIN = "<!-- faults-report:begin -->"
END = "<!-- faults-report:end -->"
#: where row tests live (tests/faults has one module per group; older rows elsewhere)
PATHS = [
    "tests/faults",
    "tests/agent/test_faults_plugins.py",
    "tests/agent/test_faults_agent_crash.py",
    "tests/etcd/test_etcd_failpoints.py",
]
_ROW_LINE = re.compile(r"^\|\s*(F\d+)\s*\|")


def goals(doc: str) -> dict[str, str]:
    """Row -> its goal figure, from the rows table (the column headed ``Goal``)."""
    out: dict[str, str] = {}
    goal_col = None
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if goal_col is None and "Goal" in cells:
            goal_col = cells.index("Goal")
            continue
        m = _ROW_LINE.match(line)
        if m and goal_col is not None and len(cells) > goal_col:
            out.setdefault(m.group(1), cells[goal_col])
    return out


def row_order(row: str) -> int:
    return int(row[1:])


def fmt(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def table(results: list[dict[str, object]], goal: dict[str, str]) -> str:
    lines = [
        "| Row | Test | Result | T_conv (s) | Relists | SB writes | Goal | Invariants |",
        "|---|---|---|---|---|---|---|---|",
    ]
    seen = set()
    for r in sorted(results, key=lambda r: (row_order(str(r["row"])), str(r["test"]))):
        row = str(r["row"])
        seen.add(row)
        test = str(r["test"]).replace("|", "\\|")
        inv = str(r.get("invariants", "")) or "-"
        unchecked = str(r.get("unchecked", ""))
        if inv == "ok" and unchecked:
            inv = f"ok (not recorded: {unchecked})"
        lines.append(
            f"| {row} | `{test}` | {r['outcome']} | {fmt(r.get('t_conv'))} | "
            f"{fmt(r.get('relists'))} | {fmt(r.get('sb_writes'))} | {goal.get(row, '')} | "
            f"{inv.replace('|', '/')} |"
        )
    for row in sorted(set(goal) - seen, key=row_order):
        lines.append(f"| {row} | - | not run | - | - | - | {goal[row]} | - |")
    return "\n".join(lines)


def write_doc(doc_path: Path, results: list[dict[str, object]], command: str) -> None:
    doc = doc_path.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{doc_path}: no {BEGIN} ... {END} section to write the results in")
    counts: dict[str, int] = {}
    for r in results:
        counts[str(r["outcome"])] = counts.get(str(r["outcome"]), 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no row ran"
    head = (
        f"Last run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"`{command}`, Python {platform.python_version()} on {os.cpu_count()} CPU(s): "
        f"{summary}."
    )
    body = f"{BEGIN}\n{head}\n\n{table(results, goals(doc))}\n{END}"
    start, end = doc.index(BEGIN), doc.index(END) + len(END)
    doc_path.write_text(doc[:start] + body + doc[end:])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slow", action="store_true", help="also run the rows marked slow")
    ap.add_argument("-k", default="", help="pytest -k expression (a subset of the rows)")
    ap.add_argument("--doc", type=Path, default=DOC, help="the document to write into")
    ap.add_argument("--results", type=Path, help="keep the JSON lines here too")
    ap.add_argument("paths", nargs="*", default=PATHS, help="test paths (default: every row)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="faults-report-") as tmp:
        out = Path(tmp) / "results.jsonl"
        env = {**os.environ, "DATASYNC_FAULTS_RESULTS": str(out)}
        if args.slow:
            env["DATASYNC_TEST_SLOW"] = "1"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "-p", "tests.faults.results", "-k", f"test_f and ({args.k or 'test_f'})",
               *args.paths]  # fmt: skip
        code = subprocess.call(cmd, cwd=ROOT, env=env)
        results = (
            [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        )
        if args.results:
            args.results.write_text("".join(json.dumps(r) + "\n" for r in results))
    shown = (
        "scripts/faults_report.py"
        + (" --slow" if args.slow else "")
        + (f" -k '{args.k}'" if args.k else "")
    )
    write_doc(args.doc, results, shown)
    print(f"{args.doc.relative_to(ROOT) if args.doc.is_relative_to(ROOT) else args.doc}: "
          f"{len(results)} row test(s) written")  # fmt: skip
    return code


if __name__ == "__main__":
    raise SystemExit(main())
