"""The watched file source: the source contract, minimal changes on an edit, a broken
file reported with the last good content kept, a directory of files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from datasync.api import Op, SourceState
from datasync.transport.file import FileSource
from datasync.transport.local import LocalStore
from tests.source_contract import SourceContract, aclose, collect
from tests.vpp.helpers import eventually

IF = "/vnf-agent/vpp1/config/vpp/v2/interfaces/"

DOC = """\
vppConfig:
  interfaces:
    - name: loop0
      type: SOFTWARE_LOOPBACK
      enabled: true
    - name: loop1
      type: SOFTWARE_LOOPBACK
"""


@dataclass
class Harness:
    source: FileSource
    publisher: LocalStore
    atomic_txn: bool = True
    prev_values: bool = True


class TestFileSourceContract(SourceContract):
    @pytest.fixture
    async def harness(self, tmp_path: Path) -> AsyncIterator[Harness]:
        doc = tmp_path / "config.yaml"
        doc.write_text("vppConfig: {}\n")
        src = FileSource(doc, "vpp1")
        yield Harness(src, src.store)
        await src.close()


@pytest.fixture
async def doc(tmp_path: Path) -> AsyncIterator[tuple[Path, FileSource]]:
    path = tmp_path / "config.yaml"
    path.write_text(DOC)
    src = FileSource(path, "vpp1")
    yield path, src
    await src.close()


async def test_an_edit_gives_only_the_changed_keys(doc: tuple[Path, FileSource]) -> None:
    path, src = doc
    snap = await src.snapshot([IF])
    assert sorted(kv.key for kv in snap.kvs) == [IF + "loop0", IF + "loop1"]
    it = src.watch([IF], snap.revision + 1)
    try:
        path.write_text(
            DOC.replace(
                "loop1\n      type: SOFTWARE_LOOPBACK",
                "loop1\n      type: SOFTWARE_LOOPBACK\n      mtu: 1500",
            )
        )
        (ch,) = await collect(it, 1)
        assert (ch.key, ch.op) == (IF + "loop1", Op.PUT) and b"1500" in (ch.value or b"")
        path.write_text(DOC.split("    - name: loop1")[0])  # loop1 removed
        (ch,) = await collect(it, 1)
        assert (ch.key, ch.op) == (IF + "loop1", Op.DELETE)
    finally:
        await aclose(it)


async def test_a_broken_file_is_reported_and_the_last_good_content_stays(
    doc: tuple[Path, FileSource],
) -> None:
    path, src = doc
    snap = await src.snapshot([IF])
    path.write_text(DOC + "  routes: [\n")  # a YAML error at the end
    await eventually(lambda: src.state is SourceState.STALLED, limit=10)
    assert str(path) in src.state_reason and "line" in src.state_reason
    again = await src.snapshot([IF])
    assert [kv.key for kv in again.kvs] == [kv.key for kv in snap.kvs]
    assert again.revision == snap.revision
    path.write_text(DOC.replace("enabled: true", "enabled: false"))
    await eventually(lambda: src.state is SourceState.CONNECTED, limit=10)
    await eventually(lambda: src.stats["loads"] >= 3, limit=10)
    fixed = await src.snapshot([IF])
    assert fixed.revision == snap.revision + 1


async def test_an_item_without_a_key_names_it(doc: tuple[Path, FileSource]) -> None:
    """A route whose key cannot be derived stalls the source; a bad interface value is
    kept as it is (its plugin marks the key INVALID naming the field)."""
    path, src = doc
    await src.snapshot([IF])
    path.write_text(DOC + "  routes:\n    - {dstNetwork: 10.0.0.0/33}\n")
    await eventually(lambda: src.state is SourceState.STALLED, limit=10)
    assert "vppConfig.routes[0]" in src.state_reason and "dst_network" in src.state_reason
    path.write_text(
        DOC.replace("type: SOFTWARE_LOOPBACK\n", "type: SOFTWARE_LOOPBACK\n      mtu: huge\n", 1)
    )
    await eventually(lambda: src.state is SourceState.CONNECTED, limit=10)
    snap = await src.snapshot([IF])
    assert b"huge" in next(kv.value for kv in snap.kvs if kv.key == IF + "loop0")


async def test_a_directory_of_documents(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(DOC)
    (tmp_path / "b.json").write_text('{"vppConfig": {"vrfs": [{"id": 3, "protocol": "IPV4"}]}}')
    (tmp_path / "notes.txt").write_text("not a document")
    src = FileSource(tmp_path, "vpp1")
    try:
        snap = await src.snapshot(["/vnf-agent/vpp1/"])
        assert len(snap.kvs) == 3
        (tmp_path / "c.yaml").write_text(DOC)  # loop0 and loop1 a second time
        await eventually(lambda: src.state is SourceState.STALLED, limit=10)
        assert "given by" in src.state_reason
    finally:
        await src.close()


async def test_a_replaced_file_gives_the_changes_to_its_new_content(
    doc: tuple[Path, FileSource],
) -> None:
    """Editors write a new file and rename it over the old one."""
    import os

    path, src = doc
    snap = await src.snapshot([IF])
    it = src.watch([IF], snap.revision + 1)
    try:
        new = path.with_suffix(".tmp")
        new.write_text(DOC.replace("loop1", "loop2"))
        os.replace(new, path)
        changes = await collect(it, 2)
        assert {(c.key, c.op) for c in changes} == {
            (IF + "loop1", Op.DELETE),
            (IF + "loop2", Op.PUT),
        }
        assert len({c.revision for c in changes}) == 1  # one transaction
    finally:
        await aclose(it)
