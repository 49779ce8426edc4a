"""What every VPP plugin shares: key states, pipelined calls, retries, IDX dependencies.

A plugin owns one kind of VPP object. Its resync reads VPP back, correlates by the name
kept in VPP (or by the object's own identity), and applies the minimal operations; a
change works from what the plugin already knows and never dumps VPP. Writes go out in
stages: every key's calls of one stage are sent together (``VppClient.call_many`` per
message kind), and a key whose call failed drops out of the later stages with its state
(FAILED for a permanent VPP error, RETRYING with a per-key backoff for a transient one).
Only an unreachable VPP or a broken plugin fails the round.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..api import ChangeEvent, Op, ResyncEvent
from ..errors import AckFailedError, AckTimeoutError, DatasyncError, InvalidValueError
from ..idx import IdxEvent, NameToIndex
from ..testing import failpoints as _fp
from ..vpp.client import VppClient
from ..vpp.faults import VppFault, VppRestarted, fault_from_kind
from ..vpp.retvals import classify, retval_name
from .state import KeyState, KeyStates, RetryPolicy, StateRegistry

__all__ = ["Call", "Ledger", "VppContext", "VppPlugin"]

log = logging.getLogger("datasync.plugins")

M = TypeVar("M")

#: ``~0``: "none" for sw_if_index and "pick one" for ids in VPP's API
U32_MAX = 0xFFFFFFFF


class Ledger:
    """The untagged objects a plugin made (routes, VRF tables): key -> applied value.

    VPP keeps no tag on routes and tables, so this is how a resync tells the agent's own
    from an operator's. With a path it survives an agent restart: an entry is written
    before its object is created and dropped after it is deleted, so a crash leaves at
    most an entry without an object (harmless), never an object nobody owns.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, dict[str, str]] = {}
        self._dirty = False
        if self.path is not None and self.path.exists():
            try:
                self._entries = json.loads(self.path.read_text())
            except (OSError, ValueError) as exc:
                log.warning("ledger %s unreadable, starting empty: %s", self.path, exc)

    def copy(self) -> dict[str, dict[str, str]]:
        return {plugin: dict(entries) for plugin, entries in self._entries.items()}

    def load(self, entries: dict[str, dict[str, str]]) -> None:
        self._entries = entries

    def of(self, plugin: str) -> dict[str, str]:
        """The entries of ``plugin`` (mutable: call :meth:`save` after changing it)."""
        return self._entries.setdefault(plugin, {})

    def put(self, plugin: str, key: str, value: str) -> None:
        entries = self.of(plugin)
        if entries.get(key) != value:
            entries[key] = value
            self._dirty = True

    def discard(self, plugin: str, key: str) -> None:
        if self.of(plugin).pop(key, None) is not None:
            self._dirty = True

    def save(self) -> None:
        if not self._dirty or self.path is None:
            self._dirty = False
            return
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self._entries, f)
        os.replace(tmp, self.path)
        self._dirty = False


class VppContext:
    """What the VPP plugins of one agent share: the client, the IDX maps, key states,
    the retry policy, the ledger, and the boot epoch of the VPP they talk to."""

    def __init__(
        self,
        client: VppClient,
        *,
        retry: RetryPolicy | None = None,
        ack_timeout: float = 10.0,
        ledger: Ledger | None = None,
    ) -> None:
        self.client = client
        #: interface name -> sw_if_index (metadata: the epoch it was learnt in)
        self.interfaces = NameToIndex("interfaces")
        #: "IPV4/<id>" or "IPV6/<id>" -> table id (metadata: the epoch)
        self.vrfs = NameToIndex("vrf-tables")
        self.registry = StateRegistry()
        self.retry = retry or RetryPolicy()
        self.ack_timeout = ack_timeout
        self.ledger = ledger or Ledger()
        #: grows on every VPP restart: indexes learnt in an older epoch mean nothing now
        self.epoch = 0
        #: ``fn(message, requests, seconds)`` after every pipelined batch (metrics)
        self.batch_observers: list[Callable[[str, int, float], None]] = []
        #: a dry run (``VppPlugins.plan``): writes are recorded here and answered as if
        #: VPP had done them; nothing is sent but dumps
        self.dry_run: list[Call] | None = None
        self.plugins: list[VppPlugin[Any]] = []

    def vpp_restarted(self) -> None:
        """VPP lost its state: forget every index and what each plugin knew of VPP."""
        self.epoch += 1
        for plugin in self.plugins:
            plugin.invalidate()
        self.interfaces.clear()
        self.vrfs.clear()

    def on_vpp_fault(self, event: VppFault) -> None:
        """A ``VppClient.add_fault_listener`` callback: a VPP restart forgets every index."""
        if isinstance(event, VppRestarted):
            self.vpp_restarted()

    def on_fault(self, kind: str, detail: Mapping[str, Any]) -> None:
        """The older ``VppClient.on_fault`` callback ``(kind, detail)``."""
        self.on_vpp_fault(fault_from_kind(kind, detail))


def vrf_name(is_ip6: bool, table_id: int) -> str:
    """The VRF IDX name of a table."""
    return f"{'IPV6' if is_ip6 else 'IPV4'}/{table_id}"


def vrf_index(is_ip6: bool, table_id: int) -> int:
    """The VRF IDX index of a table: an IPv4 and an IPv6 table may share an id, and IDX
    indexes are unique, so the family is bit 32."""
    return table_id | (1 << 32 if is_ip6 else 0)


def vrf_table(index: int) -> int:
    """The table id of a VRF IDX index."""
    return index & U32_MAX


@dataclass(slots=True)
class Call:
    """One VPP request of one key; ``then`` runs with the reply when it succeeded."""

    key: str
    msg: str
    fields: dict[str, Any]
    op: str  # "create", "update" or "delete": how a retval is classified
    what: str
    then: Callable[[Any], None] | None = None
    #: a create that VPP answered "already exists": the caller reads it back (without
    #: this the key is RETRYING: the reply has no handle on the object)
    exists: Callable[[Any], None] | None = None


class VppPlugin(Generic[M]):
    """The machinery of a VPP plugin; subclasses parse, read VPP back and apply."""

    name: str
    depends_on: Sequence[str] = ()

    def __init__(self, ctx: VppContext, prefix: str) -> None:
        self.ctx = ctx
        self.client = ctx.client
        self.prefix = prefix
        self.prefixes = [prefix]
        self.states = KeyStates(self.name)
        ctx.registry.add(self.states)
        ctx.plugins.append(self)
        #: valid desired values, and the raw value of every key given (valid or not)
        self.desired: dict[str, M] = {}
        self.values: dict[str, bytes] = {}
        #: True while what the plugin knows of VPP is current (a resync read it back)
        self.fresh = False
        #: dependency name -> keys waiting for it
        self._waiting: dict[str, set[str]] = {}
        #: FAILED keys and the value that failed: not retried until the value changes
        self._failed_at: dict[str, bytes] = {}
        self._retry_timers: dict[str, asyncio.TimerHandle] = {}
        self._rng = random.Random()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- what subclasses provide -----------------------------------------------------

    def parse(self, key: str, value: bytes) -> M:
        """Decode and validate; raises :class:`InvalidValueError` naming key and field."""
        raise NotImplementedError

    async def read(self) -> None:
        """Read this plugin's objects back from VPP (a resync, or a handler that must
        act before the plugin's first resync of this VPP boot)."""
        raise NotImplementedError

    async def apply(self, keys: Sequence[str], full: bool) -> None:
        """Make VPP hold ``desired`` for ``keys`` (``full``: every key, and delete the
        plugin's objects that no key wants), setting every key's state."""
        raise NotImplementedError

    def forget(self) -> None:
        """Drop what the plugin knows of VPP (after a VPP restart)."""
        raise NotImplementedError

    def prune(self) -> None:
        """Drop what ``parse`` kept of keys that are no longer desired (after a resync)."""

    def dependencies(self, key: str) -> list[tuple[str, bool]]:
        """What ``key`` depends on (IDX names), and whether each exists now."""
        return []

    # -- the Plugin protocol -----------------------------------------------------------

    async def resync(self, ev: ResyncEvent) -> None:
        if _fp.ENABLED:
            await _fp.hit(f"plugin.{self.name}.resync")
        async with self._lock:
            self._cancel_retries()
            old, self.values = self.values, {}
            old_desired, self.desired = self.desired, {}
            for key, kv in ev.kvs.items():
                m = old_desired.get(key)
                if m is not None and old.get(key) == kv.value:
                    self.values[key] = kv.value  # unchanged: parsed and valid already
                    self.desired[key] = m
                else:
                    self._take(key, kv.value, old.get(key))
            for key in self.states.keys():  # noqa: SIM118 - KeyStates, not a dict
                if key not in ev.kvs:
                    self.states.remove(key)
            for key in list(self._failed_at):
                if key not in ev.kvs:
                    del self._failed_at[key]
            self.prune()
            self._waiting.clear()
            async with self._reporting("resync"):
                await self.read()
                self.fresh = True
                if _fp.ENABLED:
                    await _fp.hit(f"plugin.{self.name}.apply")
                await self.apply(sorted(self.desired), full=True)

    @contextlib.asynccontextmanager
    async def _reporting(self, what: str) -> AsyncIterator[None]:
        """A VPP that cannot be reached fails the round quietly (it says why); anything
        else is a bug of the plugin: logged with its traceback, then the round fails."""
        try:
            yield
        except DatasyncError:
            raise
        except Exception:
            log.exception("%s: %s failed", self.name, what)
            raise

    async def change(self, ev: ChangeEvent) -> None:
        async with self._lock:
            keys = []
            for ch in ev.changes:
                self._cancel_retry(ch.key)
                if ch.op is Op.DELETE:
                    self.desired.pop(ch.key, None)
                    self.values.pop(ch.key, None)
                    self._failed_at.pop(ch.key, None)
                else:
                    assert ch.value is not None
                    self._take(ch.key, ch.value, self.values.get(ch.key))
                keys.append(ch.key)
            async with self._reporting("change"):
                await self.ensure_read()  # only between a VPP restart and its round
                if _fp.ENABLED:
                    await _fp.hit(f"plugin.{self.name}.apply")
                await self.apply(keys, full=False)

    async def reapply(self) -> None:
        """A downstream resync: read VPP back and apply the intent the plugin holds (from
        its last resync and changes), without reading the sources again."""
        async with self._lock:
            self._cancel_retries()
            self._failed_at.clear()
            self._waiting.clear()
            await self.read()
            self.fresh = True
            await self.apply(sorted(self.desired), full=True)

    async def close(self) -> None:
        self._closed = True
        self._cancel_retries()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def invalidate(self) -> None:
        self.fresh = False
        self._failed_at.clear()  # a new VPP may accept what the old one refused
        self.forget()

    # -- key bookkeeping ---------------------------------------------------------------

    def name_of(self, key: str) -> str:
        return key[len(self.prefix) :]

    def validate(self, key: str, value: bytes) -> None:
        """Validate a value without taking it (raises ``InvalidValueError``)."""
        try:
            self.parse(key, value)
        finally:
            if key in self.desired:  # parse keeps what it derives per key: put it back
                self.parse(key, self.values[key])

    def take(self, key: str, value: bytes) -> None:
        """Take a desired value outside a resync or change (a dry run's copy)."""
        self._take(key, value, self.values.get(key))

    def _take(self, key: str, value: bytes, old: bytes | None) -> None:
        if old != value:
            self._failed_at.pop(key, None)
        self.values[key] = value
        try:
            self.desired[key] = self.parse(key, value)
        except InvalidValueError as exc:
            self.desired.pop(key, None)
            self.states.set(key, KeyState.INVALID, exc.reason)
            log.warning("%s: %s", self.name, exc)

    def deleted(self, key: str) -> bool:
        """For a key without a valid desired value: True when it was deleted from the store
        (its object goes; its state is dropped), False when its value is invalid (VPP
        keeps what it has for it)."""
        if key in self.values:
            return False
        self.states.remove(key)
        return True

    def to_apply(
        self, keys: Iterable[str], have: Mapping[str, Any], deletes: dict[str, str]
    ) -> Iterator[tuple[str, str, M]]:
        """``(key, name, desired)`` for each of ``keys`` that has work to do, for plugins
        whose VPP objects are found by name in ``have``: a key deleted from the store whose
        object exists goes into ``deletes`` (name -> key) instead; an invalid or settled
        (FAILED, unchanged) key is skipped."""
        for key in keys:
            name = self.name_of(key)
            m = self.desired.get(key)
            if m is None:
                if self.deleted(key) and name in have:
                    deletes[name] = key
            elif not self.settled(key):
                yield key, name, m

    def orphans(self, have: Mapping[str, Any], deletes: dict[str, str]) -> None:
        """For a full apply: every object in ``have`` (by name) that no key of the store
        wants goes into ``deletes`` as an orphan (name -> "")."""
        wanted = {self.name_of(k) for k in self.values}
        for name in have:
            if name not in wanted:
                deletes.setdefault(name, "")

    def settled(self, key: str) -> bool:
        """A FAILED key whose value did not change since: no VPP call for it."""
        failed = self._failed_at.get(key)
        return failed is not None and failed == self.values.get(key)

    def configured(self, key: str) -> None:
        self.states.set(key, KeyState.CONFIGURED)

    def pending(self, key: str, deps: Iterable[str], reason: str) -> None:
        """``key`` waits for every name in ``deps`` (of the IDX maps it watches)."""
        for dep in deps:
            self._waiting.setdefault(dep, set()).add(key)
        self.states.set(key, KeyState.PENDING, reason)

    def fail(self, key: str, what: str, retval: int, outcome: str) -> None:
        """A VPP error for ``key``: FAILED (permanent) or RETRYING (transient)."""
        name = retval_name(retval)
        reason = f"{what}: VPP returned {retval} {name}"
        if outcome == "fail":
            self._failed_at[key] = self.values.get(key, b"")
            self.states.set(key, KeyState.FAILED, reason, retval=name)
            log.warning("%s: %s FAILED: %s", self.name, key, reason)
            return
        self.retry_later(key, reason, retval=name)

    def retry_later(self, key: str, reason: str, retval: str | None = None) -> None:
        old = self.states.get(key)
        attempts = (old.attempts if old is not None and old.state is KeyState.RETRYING else 0) + 1
        delay = self.ctx.retry.delay(attempts, self._rng)
        self.states.set(
            key,
            KeyState.RETRYING,
            reason,
            retval=retval,
            next_attempt=time.time() + delay,
            attempts=attempts,
        )
        log.info("%s: %s RETRYING in %.1f s: %s", self.name, key, delay, reason)
        self._cancel_retry(key)
        loop = asyncio.get_running_loop()
        self._retry_timers[key] = loop.call_later(delay, self._retry_due, key)

    def _retry_due(self, key: str) -> None:
        self._retry_timers.pop(key, None)
        if not self._closed:
            self.spawn(self._retry(key))

    async def _retry(self, key: str) -> None:
        async with self._lock:
            status = self.states.get(key)
            if status is None or status.state is not KeyState.RETRYING:
                return
            try:
                await self.apply([key], full=False)
            except Exception as exc:  # VPP unreachable: the round that follows retries
                log.info("%s: retry of %s failed: %s", self.name, key, exc)

    def _cancel_retry(self, key: str) -> None:
        handle = self._retry_timers.pop(key, None)
        if handle is not None:
            handle.cancel()

    def _cancel_retries(self) -> None:
        for handle in self._retry_timers.values():
            handle.cancel()
        self._retry_timers.clear()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            raise RuntimeError(
                f"{self.name}: the VPP plugins must be created inside the running event loop"
            ) from None
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: task failed", self.name, exc_info=task.exception())

    # -- pipelined calls ---------------------------------------------------------------

    async def send(self, calls: Sequence[Call]) -> set[str]:
        """Send one stage's calls (each message kind pipelined through ``call_many``);
        returns the keys whose call failed (their states are set). Calls of one kind
        reach VPP in the order given; different kinds must not depend on each other."""
        groups: dict[str, list[Call]] = {}
        for call in calls:
            groups.setdefault(call.msg, []).append(call)
        failed: set[str] = set()

        observers = self.ctx.batch_observers

        dry_run = self.ctx.dry_run

        async def run(msg: str, group: list[Call]) -> None:
            t0 = time.monotonic()
            if dry_run is not None:
                dry_run.extend(group)
                replies: list[Any] = [
                    _planned(msg, len(dry_run) - len(group) + i) for i in range(len(group))
                ]
            else:
                if _fp.ENABLED:
                    await _fp.hit("sb.before_call")
                replies = await self.client.call_many(msg, [c.fields for c in group], check=False)
            for observe in observers:
                observe(msg, len(group), time.monotonic() - t0)
            for call, reply in zip(group, replies, strict=True):
                rv = int(getattr(reply, "retval", 0))
                outcome = classify(rv, call.op)
                if outcome == "benign" and rv < 0 and call.op == "create":
                    if call.exists is not None:
                        call.exists(reply)
                    elif call.key not in failed:
                        failed.add(call.key)
                        name = retval_name(rv)
                        self.retry_later(
                            call.key, f"{call.what}: VPP returned {rv} {name}", retval=name
                        )
                elif outcome in ("ok", "benign"):
                    if call.then is not None:
                        call.then(reply)
                elif call.key not in failed:
                    failed.add(call.key)
                    self.fail(call.key, call.what, rv, outcome)

        if len(groups) == 1:
            ((msg, group),) = groups.items()
            await run(msg, group)
        elif groups:
            await _all(run(msg, group) for msg, group in groups.items())
        return failed

    async def dump_many(self, msg: str, requests: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
        """One dump per request, pipelined; details lists in request order."""
        if not requests:
            return []
        return await self.client.call_many(msg, requests, check=False)

    # -- IDX ---------------------------------------------------------------------------

    def follow(self, idx: NameToIndex, handler: Callable[[IdxEvent], Awaitable[None]]) -> None:
        """Handle ``idx``'s events one at a time under the plugin's lock (a put applies the
        keys waiting for it; ``handler`` gets the deletes); every event is
        acknowledged (with the handler's error, if any) so the owner never waits for long."""
        sub = idx.watch(self.name)

        async def loop() -> None:
            try:
                async for ev in sub:
                    if ev.entry.metadata != self.ctx.epoch:
                        ev.done()  # an index of a VPP that is gone: nothing to detach
                        continue
                    try:
                        async with self._lock:
                            if ev.op is Op.PUT:  # a dependency exists now: its waiters go
                                keys = self.waiting_for(ev.name)
                                if keys:
                                    await self.apply(keys, full=False)
                            else:
                                await handler(ev)
                    except Exception as exc:
                        log.warning(
                            "%s: IDX %s of %s failed: %s", self.name, ev.op.name, ev.name, exc
                        )
                        ev.done(exc)
                    else:
                        ev.done()
            finally:
                sub.close()

        self.spawn(loop())

    async def ensure_read(self) -> None:
        if not self.fresh:
            await self.read()
            self.fresh = True

    def waiting_for(self, dep: str) -> list[str]:
        """Take the keys that wait for ``dep`` (it exists now)."""
        return sorted(k for k in self._waiting.pop(dep, ()) if k in self.desired)

    async def announce_deletes(self, idx: NameToIndex, names: Iterable[str]) -> dict[str, str]:
        """Announce deletes on ``idx`` and wait until every watcher detached; returns the
        names whose watchers failed or timed out, with the reason (do not delete those)."""
        entries = {n: e for n in names if (e := idx.lookup(n)) is not None}
        notes = {n: note for n in entries if (note := idx.delete(n)) is not None}
        if not notes:
            return {}
        failed: dict[str, str] = {}

        async def wait(name: str) -> None:
            try:
                await notes[name].wait(self.ctx.ack_timeout)
            except (AckTimeoutError, AckFailedError) as exc:
                failed[name] = str(exc)

        await _all(wait(n) for n in notes)
        for name in failed:
            # the object stays: so does its entry, and the retry announces it again
            e = entries[name]
            if name not in idx:
                idx.put(name, e.index, e.metadata)
        return failed


class _Planned:
    """The reply a dry run makes up: success, with placeholder indexes."""

    retval = 0

    def __init__(self, n: int) -> None:
        # indexes VPP would pick are unknown: these are far above any real one
        self.sw_if_index = self.bd_id = self.socket_id = 0x7FFF0000 + n
        self.stats_index = 0


def _planned(_msg: str, n: int) -> _Planned:
    return _Planned(n)


async def _all(aws: Iterable[Awaitable[None]]) -> None:
    """Run concurrently; on the first error cancel the rest and raise it (not a group)."""
    try:
        async with asyncio.TaskGroup() as tg:
            for aw in aws:
                tg.create_task(aw)  # type: ignore[arg-type]
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
