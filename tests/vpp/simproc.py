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
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
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
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        while True:  # the admin line may come first; the socket line says it is ready
            line = proc.stderr.readline()
            assert line, "the simulator exited before listening"
            if "listening on" in line:
                break
        yield SimProcess(path, address, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        shutil.rmtree(tmp, ignore_errors=True)
