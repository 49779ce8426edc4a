"""``datasync vppsim`` as a separate process, for tests and benchmarks that need a VPP
outliving an agent or a client (started and stopped by PID, socket in a private dir)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.etcd.etcdserver import free_port


@dataclass
class SimProcess:
    """The socket path, and the admin API (``/fault/...``, ``/counters``) when asked for."""

    path: str
    admin: str | None
    proc: subprocess.Popen[str]

    def post(self, what: str, doc: dict[str, Any] | None = None) -> Any:
        assert self.admin is not None, "started without admin=True"
        body = json.dumps(doc or {}).encode()
        req = urllib.request.Request(f"http://{self.admin}{what}", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def counters(self) -> dict[str, Any]:
        assert self.admin is not None, "started without admin=True"
        with urllib.request.urlopen(f"http://{self.admin}/counters", timeout=10) as resp:
            return dict(json.loads(resp.read()))

    def writes(self) -> dict[str, dict[str, int]]:
        """Non-noop write counters by object kind (empty kinds left out)."""
        made = {
            kind: {op: n for op, n in ops.items() if n and op != "noop"}
            for kind, ops in self.counters()["writes"].items()
        }
        return {k: v for k, v in made.items() if v}


@contextlib.contextmanager
def simulator_process(admin: bool = False) -> Iterator[SimProcess]:
    tmp = tempfile.mkdtemp(prefix="dssim-", dir="/tmp")
    path = os.path.join(tmp, "api.sock")
    cmd = [sys.executable, "-m", "datasync.agent.cli", "vppsim", "--socket", path]
    address = f"127.0.0.1:{free_port()}" if admin else None
    if address is not None:
        cmd += ["--http", address]
    log = open(os.path.join(tmp, "vppsim.log"), "w+")  # noqa: SIM115 - the child writes it
    # a file, not a pipe: nobody reads the simulator's log after start-up, and a full
    # pipe would block it
    proc = subprocess.Popen(cmd, stderr=log, text=True)
    try:
        deadline = time.monotonic() + 30
        while "listening on" not in Path(log.name).read_text():
            assert proc.poll() is None, "the simulator exited before listening"
            assert time.monotonic() < deadline, "the simulator did not start"
            time.sleep(0.02)
        yield SimProcess(path, address, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
