"""Benchmark a full resync of a user-given config: the agent (in-process, with its built-in
VPP simulator) started on a store already holding the config, timed until it is in sync.

::

    from datasync.testing.bench import full_resync

    config = {"/vnf-agent/vpp1/config/vpp/v2/interfaces/loop1":
              {"name": "loop1", "type": "SOFTWARE_LOOPBACK"}}
    result = full_resync(config)          # ResyncResult(seconds=..., keys=1, ...)

The pytest plugin's ``datasync_resync_bench`` fixture runs this under pytest-benchmark.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["NotConvergedError", "ResyncResult", "full_resync", "load_store"]


class NotConvergedError(AssertionError):
    """The agent did not configure every key of the config; the message names them."""


@dataclass(frozen=True)
class ResyncResult:
    """``seconds`` from the agent's start to in sync; ``keys`` the config's size;
    ``vpp_requests`` the VPP requests the agent sent;
    ``not_configured`` key -> (state, reason) of keys left PENDING/INVALID/FAILED."""

    seconds: float
    keys: int
    vpp_requests: int
    not_configured: Mapping[str, tuple[str, str]] = field(default_factory=dict)


def _encode(key: str, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, Mapping):
        return json.dumps(value).encode()
    raise TypeError(f"config key {key}: a value is bytes, str or a JSON object, got {value!r}")


def load_store(data_dir: Path, config: Mapping[str, Any]) -> None:
    """Write ``config`` (key -> bytes, str or JSON object) into the agent's embedded store
    under ``data_dir``, in one transaction."""
    from ..transport.local import LocalStore

    data_dir.mkdir(parents=True, exist_ok=True)
    store = LocalStore(data_dir / "store.db")
    try:
        store.txn_sync({k: _encode(k, v) for k, v in config.items()})
    finally:
        asyncio.run(store.close())


async def _run(data_dir: Path, label: str, timeout: float) -> ResyncResult:
    from ..agent.config import AgentConfig
    from ..agent.runtime import Agent

    config = AgentConfig()
    config.agent.data_dir = str(data_dir)
    config.agent.label = label
    config.http.listen = ""
    config.resync.resync_timeout = timeout
    agent = Agent(config)
    t0 = time.perf_counter()
    await agent.start()
    try:
        await agent.orch.wait_in_sync(timeout)
        seconds = time.perf_counter() - t0
        states = agent.plugins.states
        left = {s.key: (s.state.value, s.reason) for s in states if s.state.value != "CONFIGURED"}
        requests = int(agent.client.stats.get("requests", 0))
    finally:
        await agent.stop()
    return ResyncResult(seconds, 0, requests, left)


def full_resync(
    config: Mapping[str, Any],
    *,
    label: str | None = None,
    timeout: float = 600.0,
    require_configured: bool = True,
) -> ResyncResult:
    """One full resync of ``config`` from an empty dataplane (a fresh data dir each call).

    ``label`` is the agent's (``/vnf-agent/<label>/config/...``; read off the first key
    when None). With ``require_configured`` a key left PENDING, INVALID or FAILED raises
    :class:`NotConvergedError` naming it: a benchmark of a config that does not apply
    measures nothing.
    """
    if label is None:
        first = next(iter(config), "")
        parts = first.split("/")
        if len(parts) < 4 or parts[1] != "vnf-agent":
            raise ValueError(f"config key {first!r}: expected /vnf-agent/<label>/config/...")
        label = parts[2]
    root = Path(tempfile.mkdtemp(prefix="dsrb-", dir="/tmp"))  # short: the VPP socket is there
    try:
        load_store(root / "data", config)
        try:
            import uvloop

            result: ResyncResult = uvloop.run(_run(root / "data", label, timeout))
        except ImportError:  # pragma: no cover - uvloop is a dependency
            result = asyncio.run(_run(root / "data", label, timeout))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = dataclasses.replace(result, keys=len(config))
    if require_configured and result.not_configured:
        shown = dict(list(result.not_configured.items())[:5])
        raise NotConvergedError(
            f"{len(result.not_configured)} key(s) of the config not configured: {shown}"
        )
    return result
