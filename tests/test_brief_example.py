"""The brief's example workflow, executable.

Interfaces and bridge domains are configured; a resync starts; the interface plugin
finds an interface that must be deleted and announces it on IDX; the bridge-domain
plugin detaches it and calls done(); only then is the interface deleted. The fake
dataplane refuses (and records) a delete of an interface that is still a member.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from datasync.agent.demo import (
    BD_PREFIX,
    IF_PREFIX,
    BridgeDomainPlugin,
    FakeDataplane,
    InterfacePlugin,
    _bd,
    _iface,
)
from datasync.idx import NameToIndex
from datasync.resync import Orchestrator, ResyncConfig
from datasync.transport.local import LocalStore

IF, BD = IF_PREFIX.format(label="t"), BD_PREFIX.format(label="t")


@pytest.mark.parametrize("parallel", [True, False])
async def test_detach_happens_before_delete(parallel: bool) -> None:
    store = LocalStore()
    await store.txn({IF + "loop0": _iface("loop0"), BD + "bd1": _bd("bd1", ["loop0"])})
    # What the dataplane holds from before: old0 is no longer wanted but is in bd1.
    dp = FakeDataplane()
    idx = NameToIndex("interfaces")
    for name in ("loop0", "old0"):
        idx.put(name, dp.create_interface(name))
    dp.set_bd("bd1", {"loop0", "old0"})
    dp.ops.clear()

    orch = Orchestrator([store], ResyncConfig(resync_timeout=5, parallel=parallel))
    bds = BridgeDomainPlugin(dp, idx, "t")
    orch.add_plugin(bds)
    orch.add_plugin(InterfacePlugin(dp, idx, "t"))
    try:
        await orch.start()
        await orch.wait_in_sync(10)
    finally:
        await bds.close()
        await orch.stop()
        await store.close()
    assert dp.ops[:2] == [("detach", "bd1", "old0"), ("delete-if", "old0")]
    assert not [op for op in dp.ops if op[0].startswith("VIOLATION")]
    assert dp.interfaces.keys() == {"loop0"}
    assert dp.bridge_domains == {"bd1": {"loop0"}}
    assert idx.lookup("old0") is None


async def test_fake_dataplane_catches_delete_before_detach() -> None:
    """The check above can fail: without the IDX handshake the delete is refused."""
    dp = FakeDataplane()
    dp.create_interface("a")
    dp.set_bd("bd", {"a"})
    with pytest.raises(RuntimeError, match="still in bridge domain"):
        dp.delete_interface("a")
    assert dp.ops[-1][0].startswith("VIOLATION")


def test_demo_command_runs_and_reports_in_sync(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "datasync.agent.cli", "demo", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "in_sync=True" in out.stdout
    assert "dangling-reference violations=0" in out.stdout
    assert "[round 2] started: interfaces: dataplane restarted" in out.stdout


def test_values_are_validated_with_the_key_named() -> None:
    from datasync.agent.demo import MAX_VALUE_BYTES, parse_json
    from datasync.errors import InvalidValueError

    assert parse_json("/k", b'{"name": "a"}') == {"name": "a"}
    with pytest.raises(InvalidValueError, match=r"'/k'.*not valid JSON"):
        parse_json("/k", b"{bad")
    with pytest.raises(InvalidValueError, match=r"'/k'.*expected a JSON object"):
        parse_json("/k", b"[1]")
    with pytest.raises(InvalidValueError, match=r"'/k'.*exceeds"):
        parse_json("/k", b'{"x": "' + b"a" * MAX_VALUE_BYTES + b'"}')
