"""The agent as a user runs it: ``datasync agent`` as a subprocess, driven through the
CLI and the HTTP API, with VPP read back by unmodified vpp-papi from the data-dir socket."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datasync.testing.procs import AgentProcess, SimProcess, datasync, free_port, wait_for
from tests.paths import vpp_api_files
from tests.vpp.simproc import simulator_process

__all__ = ["BD", "IF", "LABEL", "AgentProcess", "datasync", "js", "on_simulator", "wait_for"]

LABEL = "vpp1"
IF = f"/vnf-agent/{LABEL}/config/vpp/v2/interfaces/"
BD = f"/vnf-agent/{LABEL}/config/vpp/l2/v2/bridge-domain/"


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
        a.close()


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
