"""``datasync put|get|del|apply --etcd``: writing a real etcd directly, as vpp-agent users
do with etcdctl."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.etcd.etcdserver import EtcdCluster, free_port

from .conftest import IF, datasync

pytestmark = pytest.mark.etcd

EXAMPLE = str(Path(__file__).parents[2] / "examples" / "config.yaml")


@pytest.fixture
def etcd() -> Iterator[str]:
    cluster = EtcdCluster(1).start()
    try:
        yield ",".join(cluster.endpoints)
    finally:
        cluster.close()


def test_put_get_del_and_apply_against_etcd(etcd: str) -> None:
    doc = json.dumps({"name": "loop0", "type": "SOFTWARE_LOOPBACK"})
    out = datasync("put", "--etcd", etcd, IF + "loop0", doc, check=True)
    assert "put " + IF + "loop0 at revision" in out.stdout
    got = json.loads(datasync("get", "--etcd", etcd, "--json", IF, check=True).stdout)
    assert [kv["key"] for kv in got["kvs"]] == [IF + "loop0"]
    out = datasync("apply", "--etcd", etcd, "--replace", "--json", EXAMPLE, check=True)
    applied = json.loads(out.stdout)
    assert IF + "loop0" in applied["put"] and applied["deleted"] == []
    got = json.loads(
        datasync("get", "--etcd", etcd, "--json", "/vnf-agent/vpp1/", check=True).stdout
    )
    assert len(got["kvs"]) == len(applied["put"])
    datasync("del", "--etcd", etcd, IF + "memif1", check=True)
    got = json.loads(datasync("get", "--etcd", etcd, "--json", IF, check=True).stdout)
    assert IF + "memif1" not in {kv["key"] for kv in got["kvs"]}


def test_an_unreachable_etcd_is_one_line_and_exit_1() -> None:
    out = datasync("get", "--etcd", f"127.0.0.1:{free_port()}", "/", timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1
