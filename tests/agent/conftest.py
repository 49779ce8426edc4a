"""The agent as a user runs it: ``datasync agent`` as a subprocess, driven through the
CLI and the HTTP API, with VPP read back by unmodified vpp-papi from the data-dir socket."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.etcd.etcdserver import free_port
from tests.paths import vpp_api_files
from tests.vpp.simproc import SimProcess, simulator_process

LABEL = "vpp1"
IF = f"/vnf-agent/{LABEL}/config/vpp/v2/interfaces/"
BD = f"/vnf-agent/{LABEL}/config/vpp/l2/v2/bridge-domain/"


def datasync(
    *args: str, check: bool = False, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the ``datasync`` command (this interpreter's package)."""
    out = subprocess.run(
        [sys.executable, "-m", "datasync.agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and out.returncode != 0:
        raise AssertionError(
            f"datasync {' '.join(args)}: {out.returncode}\n{out.stdout}{out.stderr}"
        )
    return out


def wait_for(pred: Any, timeout: float = 20, poll: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)


@dataclass
class AgentProcess:
    data_dir: Path
    http: str
    proc: subprocess.Popen[str] | None = None
    args: list[str] = field(default_factory=list)
    log: Path | None = None

    def start(self, *extra: str) -> AgentProcess:
        assert self.proc is None
        self.log = self.data_dir.parent / f"agent-{time.monotonic_ns()}.log"
        f = open(self.log, "w")  # noqa: SIM115 - the child writes it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "datasync.agent.cli", "agent", "--data-dir", str(self.data_dir),
             "--http", self.http, *self.args, *extra],
            stdout=f, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        f.close()
        wait_for(lambda: self.get("/healthz") is not None or self.proc.poll() is not None,  # type: ignore[union-attr]
                 what="the agent's HTTP API")  # fmt: skip
        assert self.proc.poll() is None, self.output()
        return self

    def output(self) -> str:
        return self.log.read_text() if self.log is not None and self.log.exists() else ""

    def get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(f"http://{self.http}{path}", timeout=5) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read() or b"{}") | {"_status": exc.code}
        except (urllib.error.URLError, ConnectionError, OSError):
            return None

    def status(self) -> dict[str, Any]:
        doc = self.get("/status")
        assert doc is not None, self.output()
        return dict(doc)

    def wait_in_sync(self, timeout: float = 20) -> dict[str, Any]:
        """In sync, with every key of the store applied."""

        def ready() -> dict[str, Any] | None:
            st = self.status()
            src = st["sources"].get("local", {})
            kv = self.get("/v1/kv?prefix=/") or {}
            if st["agent"]["in_sync"] and src.get("applied_revision", 0) >= kv.get("revision", 0):
                return st
            return None

        return dict(wait_for(ready, timeout, what="the agent in sync"))

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return datasync(*args, "--http", self.http, check=check)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(20)
        finally:
            self.proc = None
        return code


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # AF_UNIX paths are short: the simulator socket lives in the data dir
    path = Path(tempfile.mkdtemp(prefix="dsag-", dir="/tmp")) / "data"
    yield path
    shutil.rmtree(path.parent, ignore_errors=True)


@pytest.fixture
def agent(data_dir: Path) -> Iterator[AgentProcess]:
    a = AgentProcess(data_dir, f"127.0.0.1:{free_port()}")
    try:
        yield a
    finally:
        if a.proc is not None:
            a.proc.kill()
            a.proc.wait(10)


@pytest.fixture
def vppsim() -> Iterator[SimProcess]:
    """A simulator process that outlives the agents of a test, with its admin API."""
    with simulator_process(admin=True) as sim:
        yield sim


def on_simulator(agent: AgentProcess, sim: SimProcess, extra: str = "") -> None:
    """Point ``agent`` at ``sim`` (``vpp.connect = "socket"``) before it starts."""
    config = agent.data_dir.parent / "agent.toml"
    config.write_text(f'[vpp]\nconnect = "socket"\nsocket = "{sim.path}"\n{extra}')
    agent.args = ["--config", str(config)]


def papi_dump(socket: Path, what: str = "sw_interface_dump", **kw: Any) -> list[Any]:
    """Read VPP back with unmodified vpp-papi."""
    from vpp_papi import VPPApiClient

    vpp = VPPApiClient(apifiles=vpp_api_files(), server_address=str(socket))
    vpp.connect("test-papi")
    try:
        return list(getattr(vpp.api, what)(**kw))
    finally:
        vpp.disconnect()


def js(doc: dict[str, Any]) -> str:
    return json.dumps(doc)
