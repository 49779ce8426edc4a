"""Agent failpoints: named places in the agent where a test makes something happen.

A failpoint is off unless configured, and then costs one module-level flag check at its
call site::

    if failpoints.ENABLED:
        await failpoints.hit("resync.before_watch")

They are configured from the environment variable ``DATASYNC_FAILPOINTS`` when this
module is first imported (so an agent started as a process takes them from its
environment), or in-process with :func:`configure` / :func:`enable` / :func:`disable`::

    DATASYNC_FAILPOINTS='plugin.interfaces.apply=raise(RuntimeError);resync.before_watch=sleep(200)'

Points (``<p>`` is a plugin name: ``interfaces``, ``bridge-domains``, ``routes``, ``vrfs``):

=============================== ===========================================================
``resync.started``              a resync round started, before anything is read
``resync.after_snapshot_page``  a source's snapshot was read, before the round uses it
``resync.before_watch``         after the snapshot, before the watch from R+1 starts
``plugin.<p>.resync``           a VPP plugin's resync starts (before it reads VPP back)
``plugin.<p>.apply``            a VPP plugin is about to apply (a resync's or a change's)
``sb.before_call``              before a batch of VPP calls of one message kind is sent
``checkpoint.before_commit_rev`` a source's applied revision is about to advance
=============================== ===========================================================

Actions, each optionally prefixed with ``N*`` (fire N times, then the point is off) and
suffixed with ``@K`` (the first K-1 hits pass, the K-th fires: ``exit(137)@5`` crashes at
the fifth batch of VPP calls):

- ``off``;
- ``sleep(MS)``: wait MS milliseconds (at ``checkpoint.before_commit_rev``, which is not
  a coroutine, the loop blocks that long);
- ``pause``: wait until :func:`release` (in-process; an agent process stays paused until
  it is killed, which is what a crash test wants);
- ``raise`` / ``raise(Name)`` / ``raise(Name: message)``: raise a builtin exception or one
  of ``datasync.errors`` (default ``RuntimeError``), the message naming the point;
- ``exit(CODE)``: ``os._exit(CODE)`` at once, as a crash (no cleanup, no flush but stderr).

Every hit is counted (:func:`hits`) and logged at WARNING, so a harness can tell that the
fault hit the phase it meant (a run whose fault missed it proves nothing).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import re
import sys
import time
from dataclasses import dataclass

from .. import errors as _errors

__all__ = [
    "ENABLED",
    "ENV",
    "POINTS",
    "Action",
    "configure",
    "disable",
    "enable",
    "hit",
    "hit_sync",
    "hits",
    "release",
    "reset",
    "wait_hit",
]

log = logging.getLogger("datasync.failpoints")

#: the environment variable read at import
ENV = "DATASYNC_FAILPOINTS"

#: the fixed points; ``plugin.<name>.resync`` and ``plugin.<name>.apply`` besides
POINTS = (
    "resync.started",
    "resync.after_snapshot_page",
    "resync.before_watch",
    "sb.before_call",
    "checkpoint.before_commit_rev",
)
_PLUGIN_POINT = re.compile(r"plugin\.[A-Za-z0-9_-]+\.(resync|apply)")

#: True while any point is configured: the only thing a call site checks when all are off
ENABLED = False

_ACTION = re.compile(
    r"(?:(?P<count>[0-9]+)\*)?(?P<kind>off|sleep|pause|raise|exit)(?:\((?P<arg>[^()]*)\))?"
    r"(?:@(?P<first>[0-9]+))?"
)


@dataclass
class Action:
    """What a configured point does when hit."""

    kind: str  # sleep | pause | raise | exit
    arg: str = ""
    remaining: int | None = None  # None: every hit
    first: int = 1  # the hit (1-based) from which the action fires; earlier ones pass
    seen: int = 0

    def describe(self) -> str:
        return f"{self.kind}({self.arg})" if self.arg else self.kind


_points: dict[str, Action] = {}
_hits: dict[str, int] = {}
_waiters: dict[str, list[asyncio.Future[None]]] = {}
_paused: dict[str, asyncio.Event] = {}  # hits waiting at a point, released together


def _check_name(name: str) -> str:
    if name in POINTS or _PLUGIN_POINT.fullmatch(name):
        return name
    known = ", ".join((*POINTS, "plugin.<name>.resync", "plugin.<name>.apply"))
    raise ValueError(f"{ENV}: unknown failpoint {name!r} (known: {known})")


def _exception_type(name: str) -> type[BaseException]:
    exc = getattr(_errors, name, None) or getattr(builtins, name, None)
    if not (isinstance(exc, type) and issubclass(exc, Exception)):
        raise ValueError(f"{ENV}: raise({name}): not an exception of builtins or datasync.errors")
    return exc


def _parse(name: str, text: str) -> Action | None:
    m = _ACTION.fullmatch(text.strip())
    if m is None:
        raise ValueError(
            f"{ENV}: {name}={text!r}: expected [N*]off|sleep(MS)|pause|raise[(Name)]|exit(CODE)[@K]"
        )
    kind, arg = m["kind"], (m["arg"] or "").strip()
    if kind == "off":
        return None
    if kind == "sleep":
        try:
            ms = float(arg)
        except ValueError:
            ms = -1.0
        if not 0 <= ms <= 3_600_000:
            raise ValueError(f"{ENV}: {name}=sleep({arg}): milliseconds within 0..3600000")
    elif kind == "exit":
        if not arg.isdigit() or int(arg) > 255:
            raise ValueError(f"{ENV}: {name}=exit({arg}): an exit code 0..255")
    elif kind == "raise":
        _exception_type(arg.partition(":")[0].strip() or "RuntimeError")
    elif arg:
        raise ValueError(f"{ENV}: {name}=pause takes no argument")
    count = int(m["count"]) if m["count"] else None
    if count == 0:
        return None
    first = int(m["first"]) if m["first"] else 1
    if first < 1:
        raise ValueError(f"{ENV}: {name}={text.strip()}: @K counts hits from 1")
    return Action(kind, arg, count, first)


def configure(spec: str | None) -> None:
    """Replace every point's action with ``spec`` (``name=action;name=action``; empty or
    None turns them all off). A bad spec is a ``ValueError`` naming the item; nothing
    changes then."""
    parsed: dict[str, Action] = {}
    for item in (spec or "").split(";"):
        if not item.strip():
            continue
        name, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"{ENV}: {item.strip()!r}: expected name=action")
        name = _check_name(name.strip())
        action = _parse(name, text)
        if action is not None:
            parsed[name] = action
    for name in list(_paused):
        release(name)
    _points.clear()
    _points.update(parsed)
    _update()


def enable(name: str, action: str) -> None:
    """Set one point's action (``"sleep(100)"``, ``"2*raise(RuntimeError)"``...)."""
    name = _check_name(name)
    parsed = _parse(name, action)
    disable(name)
    if parsed is not None:
        _points[name] = parsed
    _update()


def disable(name: str | None = None) -> None:
    """Turn one point (or every point) off; a paused hit is released."""
    names = list(_points) if name is None else [name]
    for n in names:
        _points.pop(n, None)
        release(n)
    _update()


def reset() -> None:
    """Every point off, every paused hit released, every hit count zero (between tests)."""
    disable()
    for name in list(_paused):
        release(name)
    _hits.clear()


def release(name: str) -> None:
    """Let every hit paused at ``name`` go on; the point stays configured as it was."""
    event = _paused.pop(name, None)
    if event is not None:
        event.set()


def hits(name: str | None = None) -> int | dict[str, int]:
    """How often ``name``'s action fired (or all counts)."""
    return dict(_hits) if name is None else _hits.get(name, 0)


async def wait_hit(name: str, count: int = 1) -> None:
    """Return once ``name``'s action fired ``count`` times (since start or :func:`reset`)."""
    while _hits.get(name, 0) < count:
        fut = asyncio.get_running_loop().create_future()
        _waiters.setdefault(name, []).append(fut)
        try:
            await fut
        finally:
            waiters = _waiters.get(name, [])
            if fut in waiters:
                waiters.remove(fut)


def _update() -> None:
    global ENABLED
    ENABLED = bool(_points)


def _take(name: str) -> Action | None:
    action = _points.get(name)
    if action is None:
        return None
    action.seen += 1
    if action.seen < action.first:
        return None
    _hits[name] = _hits.get(name, 0) + 1
    for fut in _waiters.pop(name, []):
        if not fut.done():
            fut.set_result(None)
    if action.remaining is not None:
        action.remaining -= 1
        if action.remaining <= 0:
            _points.pop(name, None)
            _update()
    log.warning("failpoint %s hit: %s", name, action.describe())
    return action


def _raise_or_exit(name: str, action: Action) -> None:
    if action.kind == "exit":
        sys.stderr.write(f"failpoint {name}: exit({action.arg})\n")
        sys.stderr.flush()
        os._exit(int(action.arg))
    if action.kind == "raise":
        type_name, _, message = action.arg.partition(":")
        exc = _exception_type(type_name.strip() or "RuntimeError")
        raise exc(message.strip() or f"failpoint {name}")


async def hit(name: str) -> None:
    """Run ``name``'s action, if it has one (call sites check ``ENABLED`` first)."""
    action = _take(name)
    if action is None:
        return
    if action.kind == "sleep":
        await asyncio.sleep(float(action.arg) / 1000)
    elif action.kind == "pause":
        event = _paused.get(name)
        if event is None:
            event = _paused[name] = asyncio.Event()
        await event.wait()
    else:
        _raise_or_exit(name, action)


def hit_sync(name: str) -> None:
    """``hit`` for a point that is not in a coroutine: ``sleep`` blocks, ``pause`` cannot
    wait there (logged, ignored)."""
    action = _take(name)
    if action is None:
        return
    if action.kind == "sleep":
        time.sleep(float(action.arg) / 1000)
    elif action.kind == "pause":
        log.error("failpoint %s: pause is not possible here (not a coroutine): ignored", name)
    else:
        _raise_or_exit(name, action)


configure(os.environ.get(ENV))
