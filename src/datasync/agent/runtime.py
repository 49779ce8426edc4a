"""``datasync agent``: sources, plugins, the VPP connection and the HTTP API, wired from
the configuration and run until a signal or escalation.

Exit codes: 0 after SIGTERM/SIGINT (watches and the VPP connection closed, nothing
half-written), 2 for a bad configuration (one line naming the setting), 75 when the
orchestrator escalates (the supervisor restarts the agent and VPP: the brief's "brute
force" path; see ``examples/datasync.service``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import stat
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from .._extensions import implementation
from ..api import Source
from ..errors import ConfigError, DatasyncError, EscalationError
from ..plugins import KeyState, RetryPolicy, VppPlugins
from ..resync import Orchestrator, ResyncConfig
from ..transport.local import LocalStore
from ..vpp.client import VppClient
from ..vpp.sim.server import Simulator
from .config import AgentConfig, ConfigFileError, load_config, validate
from .wiring import follow_vpp_faults

__all__ = ["EXIT_CONFIG", "EXIT_OK", "Agent", "main", "run_agent"]

log = logging.getLogger("datasync.agent")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

#: AF_UNIX socket paths hold at most 107 bytes
_SOCKET_PATH_MAX = 107


class Agent:
    """One running agent: what ``datasync agent`` starts, also usable in-process."""

    def __init__(
        self, config: AgentConfig, config_path: str | None = None, apply: str | None = None
    ) -> None:
        self.config = config
        self.config_path = config_path
        #: a vpp-agent config document written into the embedded store at start-up
        self.apply = apply
        self.data_dir = Path(config.agent.data_dir)
        self.label = config.agent.label
        self.started = time.time()
        self.sim: Simulator | None = None
        self.local: LocalStore | None = None
        self.rest: Any = None  # the REST push source (PushSource), when enabled
        self.grpc_source: Any = None  # the gRPC push source, when enabled
        self.grpc: Any = None  # its server (GrpcApi)
        self.sources: list[Source] = []
        self.orch: Orchestrator
        self.client: VppClient
        self.plugins: VppPlugins
        self.http: Any = None
        #: agent.test_mode: a datasync.testing.history.History of the agent's own events
        self.test_history: Any = None
        self._cleanup = contextlib.AsyncExitStack()

    # -- start and stop ----------------------------------------------------------------

    async def start(self) -> None:
        """Build and start everything; raises :class:`ConfigError` for a bad setting."""
        try:
            await self._start()
        except BaseException:
            await self._cleanup.aclose()
            raise

    async def _start(self) -> None:
        c = self.config
        _private_dir(self.data_dir)
        self.sources = await self._make_sources()
        r = c.resync
        self.orch = Orchestrator(
            self.sources,
            # [resync] names ResyncConfig's own fields; only "off" is spelled 0 in TOML
            ResyncConfig(
                **msgspec.structs.asdict(r)
                | {"anti_entropy_interval": r.anti_entropy_interval or None}
            ),
        )
        path = await self._vpp_socket()
        v = c.vpp
        self.client = VppClient(
            path,
            timeout=v.timeout,
            connect_timeout=v.connect_timeout,
            probe_interval=v.probe_interval,
            probe_timeout=v.probe_timeout,
            max_in_flight=v.max_in_flight,
            transport="shm" if v.connect == "shm" else "socket",
        )
        self._cleanup.push_async_callback(self.client.close)
        p = c.plugins
        self.plugins = VppPlugins(
            self.client,
            self.label,
            retry=RetryPolicy(initial=p.retry_initial, maximum=p.retry_max),
            ack_timeout=p.ack_timeout,
            ledger_path=self.data_dir / "ledger.json",
        )
        self._cleanup.push_async_callback(self.plugins.close)
        self.client.add_fault_listener(follow_vpp_faults(self.orch, self.plugins))
        if c.agent.test_mode:  # what the plugins are handed and decide, for /test/history
            from ..testing.history import History
            from ..testing.recorders import RecordingPlugin, record_orchestrator

            h = self.test_history = History()
            revs: dict[str, int] = {}  # the revision of the value each plugin holds, per key
            self.plugins.add_to(self.orch, wrap=lambda p: RecordingPlugin(p, h, False, revs))
            record_orchestrator(self.orch, h, key_states=self.plugins.states, revisions=revs)
        else:
            self.plugins.add_to(self.orch)
        for src in self.sources:
            if hasattr(src, "bind"):  # push sources report per-key results
                src.bind(lambda src=src: self.orch.applied_revision(src.name), self._key_state)
        if self.grpc_source is not None:
            await self._start_grpc()
        if c.http.listen:
            from .http import HttpApi

            self.http = HttpApi(self)
            await self.http.start()
            self._cleanup.push_async_callback(self.http.stop)
        try:
            await self.client.connect()
        except DatasyncError as exc:
            # VPP may come later: the client keeps reconnecting, the agent is not in sync
            log.warning("VPP at %s not reachable yet: %s", path, exc)
            self.orch.set_southbound("vpp", False, f"VPP not reachable: {exc}")
            self.client.keep_connecting()
        if self.apply is not None:
            await self._apply_document(self.apply)
        self.orch.add_listener(self._log_round)
        self._cleanup.push_async_callback(self.orch.stop)
        await self.orch.start()
        log.info(
            "agent %s started: sources %s, VPP %s (%s), HTTP %s; hot path %s",
            self.label,
            ", ".join(s.name for s in self.sources),
            path,
            v.connect,
            c.http.listen or "off",
            ", ".join(f"{k} {v}" for k, v in sorted(implementation().items())),
        )

    async def stop(self) -> None:
        await self._cleanup.aclose()

    async def _start_grpc(self) -> None:
        from ..transport.grpcapi import GrpcApi
        from .config import parse_hostport
        from .http import status_document

        g = self.config.sources.grpc
        self.grpc = GrpcApi(
            self.grpc_source,
            parse_hostport(g.listen, "sources.grpc.listen"),
            status=lambda: status_document(self),
            key_states=lambda: {s.key: (s.state.value, s.reason) for s in self.plugins.states},
            max_message_bytes=g.max_message_bytes,
        )
        for states in self.plugins.states.plugins().values():
            states.add_listener(self.grpc.key_changed)
        await self.grpc.start()
        self._cleanup.push_async_callback(self.grpc.stop)
        log.info("gRPC configuration API on %s:%d", self.grpc.host, self.grpc.port)

    def _key_state(self, key: str) -> tuple[str, str] | None:
        status = self.plugins.states.get(key)
        return None if status is None else (status.state.value, status.reason)

    async def _apply_document(self, path: str) -> None:
        from ..plugins.document import DocumentError, load_document, to_keys

        if self.local is None:
            raise ConfigFileError("--apply: needs the embedded store (sources.local.enabled)")
        try:
            text = await asyncio.to_thread(Path(path).read_bytes)
            keys = to_keys(load_document(text, path), self.label, path)
        except OSError as exc:
            raise ConfigFileError(f"--apply {path}: {exc.strerror or exc}") from None
        except DocumentError as exc:
            raise ConfigFileError(f"--apply {path}: {exc}") from None
        revision = await self.local.txn(keys)
        log.info("applied %s: %d keys at revision %d", path, len(keys), revision)

    def _log_round(self, ev: object) -> None:
        from ..resync import RoundFinished

        if isinstance(ev, RoundFinished) and ev.ok:
            counts: dict[str, int] = {}
            for status in self.plugins.states:
                counts[status.state.value] = counts.get(status.state.value, 0) + 1
            summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no keys"
            log.info("round %d done in %.1f ms: %s", ev.round, ev.duration * 1000, summary)
            for status in self.plugins.states:
                if status.state is not KeyState.CONFIGURED:
                    log.info("  %s %s: %s", status.state.value, status.key, status.reason)

    async def _make_sources(self) -> list[Source]:
        c = self.config.sources
        made: dict[str, Source] = {}
        if c.local.enabled:
            path = Path(c.local.path) if c.local.path else self.data_dir / "store.db"
            self.local = LocalStore(path)
            _private_file(path)
            self._cleanup.push_async_callback(self.local.close)
            made["local"] = self.local
        if c.etcd is not None:
            from ..transport.etcd import EtcdSource

            e = c.etcd
            kw: dict[str, Any] = {}
            if e.username:
                kw["username"], kw["password"] = e.username, e.password
            elif e.password:
                raise ConfigFileError("sources.etcd.password: set without a username")
            if e.tls is not None:
                kw["tls"] = (e.tls.ca_file, e.tls.cert_file, e.tls.key_file)
            etcd = EtcdSource(
                endpoints=e.endpoints,
                connect_timeout=e.connect_timeout,
                request_timeout=e.request_timeout,
                **kw,
            )
            self._cleanup.push_async_callback(etcd.close)
            made["etcd"] = etcd
        if c.grpc.enabled:
            from ..plugins.document import kind_prefixes
            from ..transport.push import PushSource

            path = self.data_dir / "push-grpc.db"
            self.grpc_source = PushSource(path, name="grpc", prefixes=kind_prefixes(self.label))
            _private_file(path)
            self._cleanup.push_async_callback(self.grpc_source.close)
            made["grpc"] = self.grpc_source
        if c.rest.enabled and self.config.http.listen:
            from ..plugins.document import kind_prefixes
            from ..transport.push import PushSource

            rest = PushSource(
                self.data_dir / "push-rest.db", name="rest", prefixes=kind_prefixes(self.label)
            )
            _private_file(self.data_dir / "push-rest.db")
            self._cleanup.push_async_callback(rest.close)
            made["rest"] = rest
            self.rest = rest
        if c.file is not None:
            from ..transport.file import FileSource

            if not os.path.exists(c.file.path):  # noqa: ASYNC240 - once, at start-up
                raise ConfigFileError(f"sources.file.path: {c.file.path} does not exist")
            file = FileSource(c.file.path, self.label)
            self._cleanup.push_async_callback(file.close)
            made["file"] = file
        if c.kafka is not None:
            from ..transport.kafka import KafkaSource

            kafka = KafkaSource(bootstrap=c.kafka.bootstrap, topic=c.kafka.topic)
            self._cleanup.push_async_callback(kafka.close)
            made["kafka"] = kafka
        return [made[name] for name in c.order if name in made]

    async def _vpp_socket(self) -> str:
        v = self.config.vpp
        if v.connect != "simulator" and v.connect != "shm":
            return v.socket or "/run/vpp/api.sock"
        path = v.socket or str(self.data_dir.resolve() / "vpp-api.sock")
        if v.connect == "shm" and v.socket:
            return path
        if len(os.fsencode(path)) > _SOCKET_PATH_MAX:
            raise ConfigFileError(f"vpp.socket: {path} is longer than {_SOCKET_PATH_MAX} bytes")
        _check_socket_path(path)
        self.sim = Simulator(strict=True)
        await self.sim.start(path)
        os.chmod(path, 0o600)
        self._cleanup.push_async_callback(self.sim.stop)
        return path

    # -- running -----------------------------------------------------------------------

    async def run_until_stopped(self) -> int:
        """Run until SIGTERM/SIGINT (0) or escalation (its exit code, 75)."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        waiter = asyncio.ensure_future(stop.wait())
        runner = asyncio.ensure_future(self.orch.run_until_stopped())
        try:
            await asyncio.wait({waiter, runner}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        if runner.done():
            waiter.cancel()
            exc = runner.exception()
            if isinstance(exc, EscalationError):
                log.error("escalation: %s (exit %d)", exc, exc.exit_code)
                return exc.exit_code
            if exc is not None:
                log.error("orchestrator stopped: %s", exc)
                return EXIT_FAILED
            return EXIT_OK
        log.info("signal received: stopping")
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError, DatasyncError):
            await runner
        return EXIT_OK


def _private_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise ConfigFileError(f"agent.data_dir: {path} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _private_file(path: Path) -> None:
    if path.exists():
        os.chmod(path, 0o600)


def _check_socket_path(path: str) -> None:
    """An existing path that is not a socket is never unlinked: a clear error instead."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigFileError(f"vpp.socket: {path} exists and is not a socket; not removing it")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


async def run_agent(
    config: AgentConfig, config_path: str | None = None, apply: str | None = None
) -> int:
    agent = Agent(config, config_path, apply)
    try:
        await agent.start()
    except ConfigError as exc:
        print(f"datasync agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except DatasyncError as exc:  # a store that is not one, a port in use...
        print(f"datasync agent: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"datasync agent: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        return await agent.run_until_stopped()
    finally:
        await agent.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``datasync agent [--config FILE] [--data-dir DIR] [--label NAME] [--http HOST:PORT]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="datasync agent", description="run the agent")
    parser.add_argument("--config", help="TOML config file (default: the embedded defaults)")
    parser.add_argument("--data-dir", help="data directory (default ./.datasync)")
    parser.add_argument("--label", help="agent label in the keys (default vpp1)")
    parser.add_argument("--http", help="HTTP API address HOST:PORT ('' turns it off)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", choices=["text", "json"])
    parser.add_argument("--apply", metavar="FILE", help="write a vpp-agent config document "
                        "(YAML or JSON) into the embedded store at start-up")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"datasync agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    a = config.agent
    if args.data_dir is not None:
        a.data_dir = args.data_dir
    if args.label is not None:
        a.label = args.label
    if args.http is not None:
        config.http.listen = args.http
    if args.log_level is not None:
        a.log_level = args.log_level
    if args.log_format is not None:
        a.log_format = args.log_format
    setup_logging(a.log_level, a.log_format)
    import uvloop

    try:
        validate(config)
    except ConfigError as exc:
        print(f"datasync agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return uvloop.run(run_agent(config, args.config, args.apply))
