"""The agent against a real etcd that speaks TLS and asks for client certificates (made by
the test with openssl), and against one with user authentication on."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from datasync.transport.etcd import EtcdSource
from tests.etcd.etcdserver import ETCD, free_port

from .conftest import IF, AgentProcess, papi_dump, wait_for

pytestmark = pytest.mark.etcd


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(d: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all PEM."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    (d / "san.cnf").write_text(
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", f"{name}.pem",
                 cwd=d)  # fmt: skip
    return {k: str(d / v) for k, v in {
        "ca": "ca.pem", "server_cert": "server.pem", "server_key": "server.key",
        "client_cert": "client.pem", "client_key": "client.key"}.items()}  # fmt: skip


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    if not shutil.which("openssl"):
        pytest.fail("openssl is not installed (scripts/install-system-deps.sh installs it)")
    certs = make_certs(tmp_path)
    port, peer = free_port(), free_port()
    client = f"https://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [ETCD, "--name", "tls", "--data-dir", str(tmp_path / "etcd"),
         "--listen-client-urls", client, "--advertise-client-urls", client,
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"tls=http://127.0.0.1:{peer}",
         "--cert-file", certs["server_cert"], "--key-file", certs["server_key"],
         "--trusted-ca-file", certs["ca"], "--client-cert-auth", "--unsafe-no-fsync"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield f"127.0.0.1:{port}", certs
    finally:
        proc.kill()
        proc.wait(10)


def test_agent_syncs_from_etcd_over_tls(
    tls_etcd: tuple[str, dict[str, str]], data_dir: Path
) -> None:
    endpoint, certs = tls_etcd
    tls = (certs["ca"], certs["client_cert"], certs["client_key"])

    async def put() -> None:
        src = EtcdSource(endpoints=[endpoint], tls=tls, connect_timeout=2)
        try:
            async with asyncio.timeout(20):
                while True:  # etcd needs a moment to come up
                    try:
                        doc = {"name": "loop0", "type": "SOFTWARE_LOOPBACK", "enabled": True}
                        await src.put(IF + "loop0", json.dumps(doc).encode())
                        return
                    except Exception:
                        await asyncio.sleep(0.2)
        finally:
            await src.close()

    asyncio.run(put())
    config = data_dir.parent / "agent.toml"
    config.write_text(
        "[sources]\norder = ['etcd']\n[sources.local]\nenabled = false\n"
        f"[sources.etcd]\nendpoints = ['{endpoint}']\n"
        f"[sources.etcd.tls]\nca_file = '{certs['ca']}'\ncert_file = '{certs['client_cert']}'\n"
        f"key_file = '{certs['client_key']}'\n"
    )
    agent = AgentProcess(data_dir, f"127.0.0.1:{free_port()}", args=["--config", str(config)])
    agent.start()
    try:
        wait_for(lambda: agent.status()["agent"]["in_sync"], what="in sync from TLS etcd")
        tags = {d.tag for d in papi_dump(data_dir / "vpp-api.sock") if d.tag}
        assert tags == {"loop0"}
        assert agent.status()["sources"]["etcd"]["state"] == "CONNECTED"
    finally:
        assert agent.stop() == 0


def test_agent_syncs_from_etcd_with_user_and_password(tmp_path: Path, data_dir: Path) -> None:
    """etcd with authentication on: the agent logs in with the configured user."""
    from tests.etcd.etcdserver import ETCDCTL, EtcdCluster

    cluster = EtcdCluster(1).start()
    try:
        ep = cluster.endpoints[0]
        ctl = [ETCDCTL, f"--endpoints={ep}"]
        env = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}
        for args in (["user", "add", "root", "--new-user-password=s3cret"],
                     ["user", "grant-role", "root", "root"], ["auth", "enable"]):  # fmt: skip
            subprocess.run([*ctl, *args], env=env, check=True, capture_output=True)

        async def put(user: str | None) -> None:
            src = EtcdSource(endpoints=[ep], username=user, password="s3cret", connect_timeout=2)
            try:
                doc = {"name": "loop0", "type": "SOFTWARE_LOOPBACK", "enabled": True}
                await src.put(IF + "loop0", json.dumps(doc).encode())
            finally:
                await src.close()

        with pytest.raises(Exception, match="user name is empty"):
            asyncio.run(put(None))  # authentication is really on
        asyncio.run(put("root"))
        config = data_dir.parent / "agent.toml"
        config.write_text(
            "[sources]\norder = ['etcd']\n[sources.local]\nenabled = false\n"
            f"[sources.etcd]\nendpoints = ['{ep}']\nusername = 'root'\npassword = 's3cret'\n"
        )
        agent = AgentProcess(data_dir, f"127.0.0.1:{free_port()}", args=["--config", str(config)])
        agent.start()
        try:
            wait_for(lambda: agent.status()["agent"]["in_sync"], what="in sync from etcd")
            assert {d.tag for d in papi_dump(data_dir / "vpp-api.sock") if d.tag} == {"loop0"}
        finally:
            assert agent.stop() == 0
    finally:
        cluster.close()
