"""Push sources (the REST and gRPC APIs): what clients pushed, kept in SQLite.

A push source is an embedded store (:class:`~datasync.transport.local.LocalStore`, one
file per source in the data dir) that clients write through :meth:`PushSource.push`:
so it is a ``Source`` like etcd's (revisions that only grow, a watch from any revision, a
restart that resyncs VPP from what was pushed before any client pushes again).

Each push is one transaction with a request id and an optional client generation:

- a request id seen before returns the first reply and changes nothing (a client retry);
- a key pushed with a generation lower than the last one it was pushed with is STALE and
  left as it is (two pushes for one key resolve by generation, not by arrival);
- ``replace`` deletes the keys of this source that the push does not hold (only this
  source's: another source's keys are not its to delete);
- with ``wait``, the reply comes once the agent applied the push and every key has a
  state (CONFIGURED, PENDING, INVALID, FAILED, RETRYING, with the reason), or at the
  deadline, reported as such: never as success.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..api import MAX_VALUE_BYTES, validate_key
from ..errors import InvalidKeyError, InvalidValueError
from .local import LocalStore

__all__ = ["KeyResult", "PushReply", "PushSource"]

#: where a push source keeps each key's last client generation (in the same store, written
#: in the same transaction; no plugin watches it)
GENERATION_PREFIX = "/_datasync/generation"


@dataclass(frozen=True)
class KeyResult:
    key: str
    state: str  # CONFIGURED, PENDING, INVALID, FAILED, RETRYING, STALE, DELETED
    reason: str = ""

    def to_json(self) -> dict[str, str]:
        out = {"key": self.key, "state": self.state}
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class PushReply:
    request_id: str
    revision: int
    results: list[KeyResult] = field(default_factory=list)
    #: True when every key was disposed of before the reply (``wait``)
    complete: bool = False
    duplicate: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "revision": self.revision,
            "complete": self.complete,
            "duplicate": self.duplicate,
            "results": [r.to_json() for r in self.results],
        }


#: what the agent says of a key: (state, reason), or None while it has no state
KeyStateOf = Callable[[str], "tuple[str, str] | None"]


class PushSource(LocalStore):
    """A push source. ``bind`` gives it the agent's view: the applied revision of this
    source and the state of a key (until then pushes are only stored)."""

    def __init__(
        self,
        path: str | os.PathLike[str] = ":memory:",
        *,
        name: str,
        prefixes: Sequence[str] = (),
        max_value_bytes: int = MAX_VALUE_BYTES,
        remembered: int = 10_000,
    ) -> None:
        super().__init__(path, name=name, max_value_bytes=max_value_bytes)
        #: the key prefixes ``replace`` clears (the plugins' kinds)
        self.prefixes = list(prefixes)
        self._replies: collections.OrderedDict[str, PushReply] = collections.OrderedDict()
        self._remembered = remembered
        self._lock = asyncio.Lock()
        self._applied: Callable[[], int] | None = None
        self._state_of: KeyStateOf | None = None

    def bind(self, applied: Callable[[], int], state_of: KeyStateOf) -> None:
        self._applied = applied
        self._state_of = state_of

    async def push(
        self,
        updates: Mapping[str, bytes],
        deletes: Iterable[str] = (),
        *,
        replace: bool = False,
        request_id: str = "",
        generation: int | None = None,
        wait: float | None = None,
    ) -> PushReply:
        """Apply one push (see the module docstring); raises ``InvalidKeyError`` or
        ``InvalidValueError`` naming the key, with nothing applied."""
        if isinstance(deletes, str | bytes):
            raise InvalidKeyError(repr(deletes), "deletes must be a list of keys, not one string")
        deletes = list(deletes)
        for key in [*updates, *deletes]:
            validate_key(key)
            if key.startswith(GENERATION_PREFIX):
                raise InvalidKeyError(key, f"keys under {GENERATION_PREFIX} are the agent's")
        for key, value in updates.items():
            self._check_value(key, value)
        async with self._lock:  # one push at a time: generations and replace see all
            if request_id and request_id in self._replies:
                first = self._replies[request_id]
                return PushReply(first.request_id, first.revision, first.results,
                                 first.complete, duplicate=True)  # fmt: skip
            revision, stale, written = await self._write_push(updates, deletes, replace, generation)
        results = [KeyResult(k, "STALE", f"generation {generation} is older") for k in stale]
        complete = True
        if wait is not None and self._applied is not None:
            complete = await self._wait_applied(revision, wait)
        for key in written:
            results.append(self._result(key, complete, revision, key in updates))
        reply = PushReply(request_id, revision, results, complete and wait is not None)
        if request_id:
            self._replies[request_id] = reply
            while len(self._replies) > self._remembered:
                self._replies.popitem(last=False)
        return reply

    async def _write_push(
        self,
        updates: Mapping[str, bytes],
        deletes: list[str],
        replace: bool,
        generation: int | None,
    ) -> tuple[int, list[str], list[str]]:
        snap = await self.snapshot([*self.prefixes, GENERATION_PREFIX + "/", *updates, *deletes])
        have = {kv.key: kv.value for kv in snap.kvs}
        stale: list[str] = []
        puts: dict[str, bytes] = {}
        gone: list[str] = []
        for key, value in updates.items():
            if generation is not None:
                last = have.get(f"{GENERATION_PREFIX}{key}")
                if last is not None and int(last) > generation:
                    stale.append(key)
                    continue
                puts[f"{GENERATION_PREFIX}{key}"] = str(generation).encode()
            if have.get(key) != value:
                puts[key] = value
        for key in deletes:
            if key in have:
                gone.append(key)
                if generation is not None:
                    puts[f"{GENERATION_PREFIX}{key}"] = str(generation).encode()
        if replace:
            keep = set(updates) | set(stale)
            gone += [
                k for k in have
                if k not in keep and not k.startswith(GENERATION_PREFIX)
                and any(k.startswith(p) for p in self.prefixes) and k not in gone
            ]  # fmt: skip
        written = [k for k in updates if k not in stale] + gone
        if not puts and not gone:
            return snap.revision, stale, written
        return await self.txn(puts, gone), stale, written

    async def _wait_applied(self, revision: int, timeout: float) -> bool:
        assert self._applied is not None
        try:
            async with asyncio.timeout(timeout):
                pause = 0.0002  # the watermark has no event: poll, quickly at first
                while self._applied() < revision:
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 0.01)
            return True
        except TimeoutError:
            return False

    def _result(self, key: str, complete: bool, revision: int, put: bool) -> KeyResult:
        if not complete:
            return KeyResult(key, "PENDING", f"not applied yet (revision {revision})")
        if not put:
            return KeyResult(key, "DELETED")
        state = self._state_of(key) if self._state_of is not None else None
        if state is None:
            # no plugin has the key (outside the watched prefixes), or not yet
            return KeyResult(key, "PENDING", "accepted; no plugin reported a state")
        return KeyResult(key, state[0], state[1])

    async def content(self) -> dict[str, bytes]:
        """What this source holds, without the generation bookkeeping."""
        snap = await self.snapshot(self.prefixes or ["/"])
        return {kv.key: kv.value for kv in snap.kvs if not kv.key.startswith(GENERATION_PREFIX)}


def parse_updates(doc: Any, where: str) -> dict[str, bytes]:
    """``{key: value}`` of a JSON object whose values are JSON (the raw-key form)."""
    if not isinstance(doc, dict):
        raise InvalidValueError(where, "expected an object of key: value")
    return {str(k): json.dumps(v).encode() for k, v in doc.items()}
