"""The agent's configuration: a TOML file (stdlib ``tomllib``) validated by msgspec.

Every setting has a default, so an empty file (or none) runs the embedded defaults: the
SQLite store in the data dir, the built-in VPP simulator on ``<data-dir>/vpp-api.sock``,
label ``vpp1``, HTTP on 127.0.0.1:9191. An unknown or ill-typed setting is a
:class:`ConfigFileError` naming it (``vpp.timeout: Expected `float`, got `str```).
``examples/datasync.toml`` shows and explains each one.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from ..errors import ConfigError

__all__ = ["AgentConfig", "ConfigFileError", "load_config", "parse_hostport", "validate"]

Positive = Annotated[float, Meta(gt=0)]


class ConfigFileError(ConfigError):
    """A config file that cannot be used; the message names the file and the setting."""


class Section(Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class AgentSection(Section):
    #: the agent's label in the keys: /vnf-agent/<label>/config/...
    label: str = "vpp1"
    data_dir: str = ".datasync"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    #: for fault tests only: the HTTP API serves /test/failpoints (set, list, release);
    #: never turn it on in production (any HTTP client could then stop the agent)
    test_mode: bool = False


class HttpSection(Section):
    #: HOST:PORT; "" turns the HTTP API off
    listen: str = "127.0.0.1:9191"
    max_body_bytes: Annotated[int, Meta(gt=0, le=64 << 20)] = 1 << 20


class LocalSection(Section):
    enabled: bool = True
    #: the SQLite file (default: <data-dir>/store.db)
    path: str = ""


class EtcdTls(Section):
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


class EtcdSection(Section):
    endpoints: Annotated[list[str], Meta(min_length=1)]
    username: str = ""
    password: str = ""
    tls: EtcdTls | None = None
    connect_timeout: Positive = 3.0
    request_timeout: Positive = 10.0


class KafkaSection(Section):
    bootstrap: str
    topic: str = "datasync-config"


class FileSection(Section):
    #: a vpp-agent config document (YAML or JSON), or a directory of them, watched
    path: str


class RestSection(Section):
    #: PUT/GET /configuration on the agent's HTTP API (its pushes kept in <data-dir>)
    enabled: bool = True


class GrpcSection(Section):
    enabled: bool = False
    #: HOST:PORT of the gRPC configuration API (vpp-agent used 9111)
    listen: str = "127.0.0.1:9111"
    max_message_bytes: Annotated[int, Meta(gt=0, le=256 << 20)] = 4 << 20


SourceName = Literal["file", "etcd", "kafka", "grpc", "rest", "local"]


class SourcesSection(Section):
    #: precedence: a key asserted by two sources goes to the earlier one in this order
    order: list[SourceName] = msgspec.field(
        default_factory=lambda: ["file", "etcd", "kafka", "grpc", "rest", "local"]
    )
    rest: RestSection = msgspec.field(default_factory=RestSection)
    grpc: GrpcSection = msgspec.field(default_factory=GrpcSection)
    local: LocalSection = msgspec.field(default_factory=LocalSection)
    etcd: EtcdSection | None = None
    kafka: KafkaSection | None = None
    file: FileSection | None = None


class VppSection(Section):
    #: "simulator": the built-in one on <data-dir>/vpp-api.sock; "socket": a real VPP's
    #: binary-API socket; "shm": the project's shared-memory ring (the simulator only)
    connect: Literal["simulator", "socket", "shm"] = "simulator"
    #: the API socket (default: <data-dir>/vpp-api.sock for the simulator, else
    #: /run/vpp/api.sock)
    socket: str = ""
    timeout: Positive = 5.0
    connect_timeout: Positive = 5.0
    probe_interval: Positive = 1.0
    probe_timeout: Positive = 0.25
    max_in_flight: Annotated[int, Meta(ge=1, le=65536)] = 1024


class ResyncSection(Section):
    resync_timeout: Positive = 10.0
    change_timeout: Positive = 10.0
    snapshot_timeout: Positive = 30.0
    backoff_initial: Positive = 1.0
    backoff_max: Positive = 60.0
    jitter: Annotated[float, Meta(ge=0, le=1)] = 0.2
    escalate_after: Annotated[int, Meta(ge=1)] = 8
    escalate_window: Positive = 600.0
    #: "exit": exit 75 so the supervisor restarts the agent (and VPP); "retry": keep trying
    escalation: Literal["exit", "retry"] = "exit"
    #: seconds between downstream anti-entropy rounds (0: off)
    anti_entropy_interval: Annotated[float, Meta(ge=0)] = 0.0
    #: changes held during a round before they coalesce per key (0: at once)
    buffer_coalesce_above: Annotated[int, Meta(ge=0, le=1 << 24)] = 0


class PluginsSection(Section):
    ack_timeout: Positive = 10.0
    retry_initial: Positive = 1.0
    retry_max: Positive = 60.0


class AgentConfig(Section):
    agent: AgentSection = msgspec.field(default_factory=AgentSection)
    http: HttpSection = msgspec.field(default_factory=HttpSection)
    sources: SourcesSection = msgspec.field(default_factory=SourcesSection)
    vpp: VppSection = msgspec.field(default_factory=VppSection)
    resync: ResyncSection = msgspec.field(default_factory=ResyncSection)
    plugins: PluginsSection = msgspec.field(default_factory=PluginsSection)


def parse_hostport(text: str, setting: str = "http.listen") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
        raise ConfigFileError(f"{setting}: {text!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def load_config(path: str | Path | None) -> AgentConfig:
    """The configuration in ``path`` (TOML), or the defaults when ``path`` is None."""
    if path is None:
        return AgentConfig()
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigFileError(f"config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"config {path}: not valid TOML: {exc}") from None
    try:
        config = msgspec.convert(doc, AgentConfig)
    except msgspec.ValidationError as exc:
        raise ConfigFileError(f"config {path}: {_setting_error(str(exc))}") from None
    validate(config, str(path))
    return config


def _setting_error(text: str) -> str:
    # "Object contains unknown field `x` - at `$.vpp`" / "Expected `float`... - at `$.vpp.timeout`"
    msg, sep, where = text.rpartition(" - at `$.")
    if not sep:
        if text.startswith("Object contains unknown field"):
            return f"{text.split('`')[1]}: unknown setting"
        return text
    where = where.rstrip("`")
    if msg.startswith("Object contains unknown field"):
        return f"{where}.{msg.split('`')[1]}: unknown setting"
    return f"{where}: {msg}"


def validate(config: AgentConfig, where: str = "settings") -> None:
    """What the types cannot say (after command-line overrides too)."""
    if config.http.listen:
        parse_hostport(config.http.listen)
    if not config.agent.label or "/" in config.agent.label:
        raise ConfigFileError(f"config {where}: agent.label: must be one key segment")
    used = [s for s in config.sources.order if _enabled(config, s)]
    if not used:
        raise ConfigFileError(f"config {where}: sources: no source is enabled")
    if len(set(config.sources.order)) != len(config.sources.order):
        raise ConfigFileError(f"config {where}: sources.order: a source is named twice")


def _enabled(config: AgentConfig, name: str) -> bool:
    if name == "local":
        return config.sources.local.enabled
    if name == "rest":
        return config.sources.rest.enabled and bool(config.http.listen)
    if name == "grpc":
        return config.sources.grpc.enabled
    return getattr(config.sources, name) is not None
