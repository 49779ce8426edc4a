"""A regression bench: a full resync of a deployment's config (run with --benchmark-only;
--benchmark-autosave / --benchmark-compare keep and compare the figures)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

IF = "/vnf-agent/vpp1/config/vpp/v2/interfaces/"


def test_full_resync_of_my_config(datasync_resync_bench: Callable[..., Any]) -> None:
    config = {
        IF + f"lo{i}": {"name": f"lo{i}", "type": "SOFTWARE_LOOPBACK", "enabled": True}
        for i in range(100)
    }
    result = datasync_resync_bench(config, rounds=2)
    assert result.keys == 100 and not result.not_configured
