"""Watcher registrations, the registry that holds them, and the runner of a ``Plugin``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from ..api import (
    Ack,
    ChangeEvent,
    Channel,
    Plugin,
    ResyncEvent,
    validate_prefix,
    validate_prefixes,
)
from ..errors import ClosedError, ConfigError, DuplicateNameError
from .config import ResyncConfig
from .plan import plan
from .status import Health

__all__ = ["Registry", "WatcherRegistration"]


class WatcherRegistration:
    """A watcher's registration; implements ``datasync.api.Registration``.

    ``on_change(reason)`` is called when its prefixes change (the next round delivers
    their data), ``on_close(self)`` once it is closed.
    """

    def __init__(
        self,
        name: str,
        prefixes: Iterable[str],
        depends_on: Iterable[str],
        on_change: Callable[[str], object],
        on_close: Callable[[WatcherRegistration], None],
    ) -> None:
        self._name = name
        self._prefixes = tuple(dict.fromkeys(validate_prefixes(prefixes)))
        self.depends_on = tuple(depends_on)
        self._on_change = on_change
        self._on_close = on_close
        # One event for both channels: the plugin runner waits on either with one task.
        self.ready = asyncio.Event()
        self._resync: Channel[ResyncEvent] = Channel(self.ready)
        self._changes: Channel[ChangeEvent] = Channel(self.ready)
        self.closed = asyncio.Event()
        #: True once a resync of this registration succeeded: only then do changes flow
        self.synced = False
        #: change acks handed out and not yet done (released when the registration closes)
        self.unacked: set[Ack] = set()

    @property
    def name(self) -> str:
        return self._name

    @property
    def prefixes(self) -> tuple[str, ...]:
        return self._prefixes

    @property
    def resync_events(self) -> Channel[ResyncEvent]:
        return self._resync

    @property
    def change_events(self) -> Channel[ChangeEvent]:
        return self._changes

    def matches(self, key: str) -> bool:
        return any(key.startswith(p) for p in self._prefixes)

    def register(self, prefix: str) -> None:
        """Watch one more prefix; a resync round delivers its current data."""
        self._check_open()
        prefix = validate_prefix(prefix)
        if prefix not in self._prefixes:
            self._prefixes += (prefix,)
            self._on_change(f"{self._name}: registered {prefix}")

    def unregister(self, prefix: str) -> None:
        """Stop watching a prefix (its keys leave the next resync event)."""
        self._check_open()
        if prefix in self._prefixes:
            self._prefixes = tuple(p for p in self._prefixes if p != prefix)
            self._on_change(f"{self._name}: unregistered {prefix}")

    async def close(self) -> None:
        """Close this registration only; pending waits on it stop counting."""
        if self.closed.is_set():
            return
        self.closed.set()
        self._resync.close()
        self._changes.close()
        self.ready.set()
        # Whatever it had not acknowledged stops holding back the others.
        for ev in self._changes.drain():
            ev.ack.done()
        for ack in list(self.unacked):
            ack.done()
        self._on_close(self)

    def _check_open(self) -> None:
        if self.closed.is_set():
            raise ClosedError(f"registration {self._name!r} is closed")


class Registry:
    """The registrations by name, and the tasks that run high-level plugins."""

    def __init__(
        self, config: ResyncConfig, health: Health, request_resync: Callable[[str], object]
    ) -> None:
        self._config = config
        self._health = health
        self._request_resync = request_resync
        self.regs: dict[str, WatcherRegistration] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def add(
        self, name: str, prefixes: Iterable[str], depends_on: Iterable[str], *, started: bool
    ) -> WatcherRegistration:
        """Register a watcher; once ``started``, a cycle it closes is rejected now."""
        if not name:
            raise ConfigError("a watcher needs a non-empty name")
        if name in self.regs:
            raise DuplicateNameError(f"watcher {name!r} is already registered")
        reg = WatcherRegistration(name, prefixes, depends_on, self._request_resync, self._remove)
        if started:
            # Reject cycles now; a dependency not registered yet only makes it wait.
            plan({**self.deps(), name: reg.depends_on})
        self.regs[name] = reg
        self._health.add_plugin(name)
        return reg

    def run(self, plugin: Plugin, reg: WatcherRegistration) -> None:
        """Serve ``plugin``'s callbacks from ``reg`` on a task of its own."""
        task = asyncio.ensure_future(run_plugin(plugin, reg, self._config))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def is_current(self, reg: WatcherRegistration) -> bool:
        """True while ``reg`` is the registration of its name (not closed, not replaced)."""
        return self.regs.get(reg.name) is reg

    def deps(self) -> dict[str, tuple[str, ...]]:
        return {n: r.depends_on for n, r in self.regs.items()}

    def synced(self) -> list[WatcherRegistration]:
        return [r for r in self.regs.values() if r.synced]

    async def close_all(self) -> None:
        for reg in list(self.regs.values()):
            await reg.close()

    def _remove(self, reg: WatcherRegistration) -> None:
        if self.is_current(reg):
            del self.regs[reg.name]
            self._health.remove_plugin(reg.name)


async def run_plugin(plugin: Plugin, reg: WatcherRegistration, config: ResyncConfig) -> None:
    """Serve one plugin on one task, so its resync and changes never overlap.

    A waiting resync goes before waiting changes; a change superseded by a resync
    (its ack expired) is skipped. Returning from a callback is ``done()``, raising is
    ``done(err)``; a callback over its timeout fails with ``TimeoutError``.
    """
    while True:
        ev: ResyncEvent | ChangeEvent | None = reg.resync_events.get_nowait()
        if ev is None:
            ev = reg.change_events.get_nowait()
        if ev is None:
            if reg.closed.is_set():
                return
            reg.ready.clear()
            await reg.ready.wait()
            continue
        if ev.ack.expired:
            continue
        try:
            if isinstance(ev, ResyncEvent):
                async with asyncio.timeout(config.resync_timeout):
                    await plugin.resync(ev)
            else:
                async with asyncio.timeout(config.change_timeout):
                    await plugin.change(ev)
        except Exception as exc:  # a plugin's failure is a fault report, not a crash
            ev.done(exc)
        else:
            ev.done()
