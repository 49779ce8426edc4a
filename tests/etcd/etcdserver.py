"""Real etcd processes for tests and benches: loopback ports, temp data dirs, killed by PID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.netproxy import ThreadedTCPProxy

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
ENV_ENDPOINTS = "DATASYNC_ETCD_ENDPOINTS"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def etcdctl(endpoints: list[str], *args: str, timeout: float = 20.0) -> str:
    """Run etcdctl (API v3) against ``endpoints`` and return its stdout."""
    out = subprocess.run(
        [ETCDCTL, "--endpoints=" + ",".join(endpoints), "--command-timeout=10s", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "ETCDCTL_API": "3"},
        check=True,
    )
    return out.stdout


class EtcdMember:
    """One etcd process; ``initial_cluster`` names every member of its cluster."""

    def __init__(self, name: str, root: Path, client_port: int, peer_port: int) -> None:
        self.name = name
        self.root = root
        self.data_dir = root / f"{name}.etcd"
        self.client_port = client_port
        self.peer_port = peer_port
        self.initial_cluster = ""
        self.extra_args: list[str] = []
        #: the peer URL the others use; a proxy's when the cluster has peer proxies
        self.advertise_peer_url = self.peer_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, state: str = "new") -> None:
        """Start the process (an existing data dir keeps its data)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        client = f"http://127.0.0.1:{self.client_port}"
        args = [
            ETCD,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.advertise_peer_url,
            "--initial-cluster", self.initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-token", "datasync-test",
            "--initial-cluster-state", state,
            "--heartbeat-interval", "100",
            "--election-timeout", "1000",
            "--logger", "zap",
            "--log-outputs", str(self.root / f"{self.name}.log"),
            "--log-level", "warn",
            *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        self.stopped = False

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited with {self.proc.returncode}")
            if self.healthy():
                return
            time.sleep(0.05)
        raise TimeoutError(f"etcd {self.name} not healthy after {timeout}s")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL and reap."""
        self.cont()
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGSTOP: the process hangs with its sockets open."""
        self.signal(signal.SIGSTOP)
        self.stopped = True

    def cont(self) -> None:
        if self.stopped:
            self.signal(signal.SIGCONT)
            self.stopped = False

    def terminate(self) -> None:
        self.cont()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def restart(self) -> None:
        """Kill -9 if running, start again on the same data dir, wait for health."""
        self.kill()
        self.start(state="existing")
        self.wait_healthy()


class EtcdCluster:
    """``size`` members on free loopback ports under a temporary directory.

    With ``peer_proxies`` every member's inbound peer traffic goes through a
    ``ThreadedTCPProxy`` (``peer_proxy[name]``), as etcd's e2e PeerProxy does: cutting
    it isolates the member from its leader while its client port stays up.
    """

    def __init__(self, size: int = 1, root: Path | None = None, peer_proxies: bool = False) -> None:
        self._tmp = None if root is not None else tempfile.TemporaryDirectory(prefix="etcd-")
        self.root = root if root is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.members = [
            EtcdMember(f"m{i}", self.root, free_port(), free_port()) for i in range(size)
        ]
        self.peer_proxy: dict[str, ThreadedTCPProxy] = {}
        if peer_proxies:
            for m in self.members:
                proxy = ThreadedTCPProxy("127.0.0.1", m.peer_port)
                self.peer_proxy[m.name] = proxy
                m.advertise_peer_url = f"http://{proxy.address}"
        initial = ",".join(f"{m.name}={m.advertise_peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster = initial

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self) -> EtcdCluster:
        for m in self.members:
            m.start()
        for m in self.members:
            m.wait_healthy()
        return self

    def close(self) -> None:
        for m in self.members:
            m.terminate()
        for proxy in self.peer_proxy.values():
            proxy.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def running(self) -> list[EtcdMember]:
        return [m for m in self.members if m.proc is not None and m.proc.poll() is None]

    def leader(self) -> EtcdMember:
        """The current leader, from ``etcdctl endpoint status``."""
        deadline = time.monotonic() + 15
        while True:
            live = [m for m in self.running() if not m.stopped]
            try:
                status = json.loads(etcdctl([m.endpoint for m in live], "endpoint", "status",
                                            "-w", "json"))  # fmt: skip
                by_id = {s["Status"]["header"]["member_id"]: s["Endpoint"] for s in status}
                leader_id = status[0]["Status"]["leader"]
                ep = by_id[leader_id].removeprefix("http://")
                return next(m for m in self.members if m.endpoint == ep)
            except (subprocess.SubprocessError, KeyError, StopIteration, ValueError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def compact(self, revision: int) -> None:
        etcdctl(self.endpoints[:1], "compact", str(revision), "--physical")

    def snapshot_save(self, path: Path) -> None:
        m = self.running()[0]
        etcdctl([m.endpoint], "snapshot", "save", str(path))

    def snapshot_restore(self, path: Path) -> None:
        """Replace a single-member cluster's data by the backup at ``path`` and restart it."""
        assert len(self.members) == 1, "restore is done for single-member clusters"
        m = self.members[0]
        m.kill()
        shutil.rmtree(m.data_dir)
        subprocess.run(
            [ETCDCTL, "snapshot", "restore", str(path), "--data-dir", str(m.data_dir),
             "--name", m.name, "--initial-cluster", m.initial_cluster,
             "--initial-cluster-token", "datasync-test",
             "--initial-advertise-peer-urls", m.peer_url],
            check=True, capture_output=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=30,
        )  # fmt: skip
        m.start(state="existing")
        m.wait_healthy()
