"""The package's pytest plugin, run by pytester as a user runs it: the example user suite
(examples/user-suite) passes, and a failing or void test leaves a report bundle."""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "user-suite"
PLUGIN = "datasync.testing.pytest_plugin"


def _as_installed(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the inner pytest find the plugin as an installed package's ``pytest11`` entry
    point, the way users get it: a distribution's metadata on PYTHONPATH declaring the
    entry point of pyproject.toml (when the real one is installed too, pytest loads the
    first of the same name only)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ((name, module),) = project["entry-points"]["pytest11"].items()
    info = pytester.path / "site" / "datasync_plugin_under_test-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: datasync-plugin-under-test\n"
                                   "Version: 0\n")  # fmt: skip
    (info / "entry_points.txt").write_text(f"[pytest11]\n{name} = {module}\n")
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(info.parent), path])))


def _ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")


def test_the_entry_point_names_the_plugin() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"datasync": PLUGIN}


def test_the_example_user_suite_passes(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _as_installed(pytester, monkeypatch)
    for path in EXAMPLE.iterdir():
        if path.suffix == ".py":
            shutil.copy(path, pytester.path / path.name)
    _ini(pytester)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--benchmark-disable", "-q", timeout=300
    )
    if shutil.which("etcd") or os.environ.get("CI"):
        result.assert_outcomes(passed=5)
    else:  # the etcd example skips without etcd, as the plugin's fixtures do
        result.assert_outcomes(passed=4, skipped=1)


INNER = """
from datasync.testing import invariants as inv


def test_broken(datasync_history, datasync_bundle, tmp_path):
    datasync_history.received("etcd", "/k", "put", 3)
    (tmp_path / "mine.log").write_text("kept")
    assert datasync_history.of("nb") == []


def test_missed_its_phase(datasync_history, datasync_rng):
    datasync_history.mark("fault.injected")  # no round was running
    report = inv.check(datasync_history, inv.Final(), inv.Expect(fault="fault.injected",
                       during="round"), only=["I15"])
    report.raise_for_failures()


def test_needs_kafka(datasync_kafka):
    pass
"""


@pytest.mark.parametrize("ci", ["", "1"], ids=["dev", "ci"])
def test_a_failure_prints_its_bundle_and_a_missed_fault_is_void(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    if ci:
        monkeypatch.setenv("CI", ci)
    else:
        monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("DATASYNC_TANSU_BIN", str(pytester.path / "no-such-tansu"))
    _as_installed(pytester, monkeypatch)
    pytester.makepyfile(test_inner=INNER)
    _ini(pytester)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--datasync-seed", "42", "-rs",
        "--basetemp", str(pytester.path / "tmp"),
    )  # fmt: skip
    # a missing service skips, or fails under CI
    assert result.parseoutcomes() == (
        {"failed": 1, "errors": 1, "void": 1} if ci else {"failed": 1, "void": 1, "skipped": 1}
    )
    result.stdout.fnmatch_lines(["*the tansu broker is not installed*no-such-tansu*"])
    result.stdout.fnmatch_lines(["*report bundle (seed 42): *datasync-report*"])
    result.stdout.fnmatch_lines(["*VOID*test_missed_its_phase*did not hit while round*"])
    bundle = pytester.path / "tmp" / "test_broken0" / "datasync-report"
    assert (bundle / "seed").read_text() == "42\n"
    assert '"key": "/k"' in (bundle / "history.jsonl").read_text()
    assert (bundle.parent / "mine.log").exists()
    assert (pytester.path / "tmp" / "test_missed_its_phase0" / "datasync-report").is_dir()
    # never passed: VOID is a skip on a developer's machine and a failure under CI
    alone = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "missed")
    assert alone.parseoutcomes() == {"void": 1, "deselected": 2}
    assert alone.ret == (pytest.ExitCode.TESTS_FAILED if ci else pytest.ExitCode.OK)
