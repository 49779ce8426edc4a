"""A watched file source: vpp-agent configuration documents in a YAML or JSON file, or in
a directory of them.

The document format is the one ``datasync apply`` takes (``vppConfig: {interfaces,
bridgeDomains, routes, vrfs}``, see :mod:`datasync.plugins.document`). The files are the
intent; an embedded store (:class:`~datasync.transport.local.LocalStore`, in memory or in
a file) keeps what was last read from them, so revisions only grow and a watch can start
at any past revision. Each time the files change they are read again (watchfiles) and
only the keys whose value changed are written, in one transaction: an edit gives the
minimal change events, a replaced file a transaction that takes the store to the new
content. A broken file is reported (state STALLED, the reason naming the file and line,
and a log line) and the last good content stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..api import Change, Snapshot, SourceState, SourceStats
from ..errors import InvalidValueError
from ._state import StateListener as StateListener
from ._state import StateReporter
from .local import LocalStore

__all__ = ["FileSource", "FileSourceStats"]

log = logging.getLogger("datasync.file")

_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(slots=True)
class FileSourceStats(SourceStats):
    """``SourceStats`` and how many times the files were read (``loads``), and how many
    of those were broken (``broken``: the last good content stayed in force)."""

    loads: int = 0
    broken: int = 0


class FileSource(StateReporter):
    """``path``: a document file, or a directory whose ``*.yaml|*.yml|*.json`` files
    together are the document (a key given by two files is an error naming both)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        label: str,
        *,
        name: str = "file",
        store_path: str | os.PathLike[str] = ":memory:",
    ) -> None:
        self.path = Path(path)
        self.label = label
        self._name = name
        self._store = LocalStore(store_path, name=name)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._started = False
        self._init_state("file", name, log)
        self.stats = FileSourceStats()

    @property
    def name(self) -> str:
        return self._name

    # -- reading the files -------------------------------------------------------------

    def _files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(p for p in self.path.iterdir() if p.suffix in _SUFFIXES and p.is_file())
        return [self.path]

    def _read(self) -> dict[str, bytes]:
        from ..plugins.document import load_document, to_keys

        keys: dict[str, bytes] = {}
        origin: dict[str, Path] = {}
        for f in self._files():
            try:
                text = f.read_bytes()
            except OSError as exc:
                raise InvalidValueError(str(f), exc.strerror or str(exc)) from None
            for key, value in to_keys(load_document(text, str(f)), self.label, str(f)).items():
                if key in keys:
                    raise InvalidValueError(str(f), f"key {key} is given by {origin[key]} too")
                keys[key] = value
                origin[key] = f
        return keys

    async def _load(self) -> None:
        from ..plugins.document import kind_prefixes

        self.stats.loads += 1
        try:
            wanted = await asyncio.to_thread(self._read)
        except InvalidValueError as exc:
            self.stats.broken += 1
            log.warning("file source %s: %s; the last good content stays in force", self.name, exc)
            self._set_state(SourceState.STALLED, str(exc))
            return
        snap = await self._store.snapshot(kind_prefixes(self.label))
        have = {kv.key: kv.value for kv in snap.kvs}
        puts = {k: v for k, v in wanted.items() if have.get(k) != v}
        deletes = [k for k in have if k not in wanted]
        if puts or deletes:
            revision = await self._store.txn(puts, deletes)
            log.info(
                "file source %s: %d put, %d deleted at revision %d",
                self.name, len(puts), len(deletes), revision,
            )  # fmt: skip
        self._set_state(SourceState.CONNECTED, "read")

    async def _follow(self) -> None:
        from watchfiles import awatch

        folder = self.path if self.path.is_dir() else self.path.parent
        target = self.path.resolve()

        def ours(_change: object, changed: str) -> bool:
            p = Path(changed)
            if self.path.is_dir():
                return p.suffix in _SUFFIXES and p.parent.resolve() == target
            return p.resolve() == target

        # yield_on_timeout: the first (empty) yield says the watcher is up, and every
        # later one lets the files' stat be compared: an event lost (a loaded machine,
        # a file system without inotify) is found within a rust_timeout
        seen = self._signature()
        async for changes in awatch(folder, watch_filter=ours, stop_event=self._stop,
                                    debounce=50, step=20, rust_timeout=200,
                                    yield_on_timeout=True):  # fmt: skip
            if not self._ready.is_set():
                self._ready.set()
            now = self._signature()
            if changes or now != seen:
                seen = now
                await self._load()

    def _signature(self) -> list[tuple[str, int, int, int]]:
        out = []
        for f in self._files() if self.path.exists() else []:
            try:
                st = f.stat()
            except OSError:
                continue
            out.append((str(f), st.st_mtime_ns, st.st_size, st.st_ino))
        return out

    async def _ensure_started(self) -> None:
        if self._started:
            return
        self._started = True
        self._task = asyncio.get_running_loop().create_task(self._follow())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await self._ready.wait()
        # read once the watcher is up, so an edit made before it was is not missed
        await self._load()

    # -- the Source protocol -----------------------------------------------------------

    async def snapshot(self, prefixes: Sequence[str]) -> Snapshot:
        await self._ensure_started()
        return await self._store.snapshot(prefixes)

    def watch(self, prefixes: Sequence[str], start_revision: int) -> AsyncIterator[list[Change]]:
        return self._watch(prefixes, start_revision)

    async def _watch(
        self, prefixes: Sequence[str], start_revision: int
    ) -> AsyncIterator[list[Change]]:
        await self._ensure_started()
        stream = self._store.watch(prefixes, start_revision)
        try:
            async for batch in stream:
                yield batch
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    @property
    def store(self) -> LocalStore:
        """The embedded store holding what was last read (tests write it directly)."""
        return self._store

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._store.close()
