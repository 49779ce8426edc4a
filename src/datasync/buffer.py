"""The event buffer and revision filter: compiled (``datasync._buffer_c``) or the twin.

While a resync round runs, a source's changes wait in an ``EventBuffer``; when the round
succeeds, ``EventBuffer.drain(filt)`` hands them back in revision order through the
source's ``RevisionFilter``, which drops everything already covered by the snapshot or
already applied. Outside a round, changes go through ``RevisionFilter.filter`` directly.
One buffer and one filter per source: revisions are per source.

``datasync.implementation()["buffer"]`` says which one runs: ``"compiled"`` or ``"twin"``
(``DATASYNC_NO_EXTENSIONS=1`` selects the twin).

A resync round of one source, as the orchestrator drives it::

    buf, filt = EventBuffer(), RevisionFilter()        # once per source
    snap = await source.snapshot(prefixes)              # round starts: watch from R+1
    ...                                                 # meanwhile: buf.extend(batch)
    filt.reset(snap.revision, ((kv.key, kv.revision) for kv in snap.kvs))
    replay = buf.drain(filt)                            # round succeeded: apply these
    ...                                                 # live: filt.filter(batch)

Keys are plain ``str`` (not subclasses) and revisions ints in ``0 .. 2**63-1``; anything
else raises ``InvalidKeyError`` / ``TypeError`` / ``ValueError`` naming the key, and a
batch with a bad item changes nothing. A fresh filter's snapshot revision is 0, so a
change at revision 0 is never applied. ``drain`` needs the filter of the same
implementation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ._extensions import select
from .api import Change

__all__ = ["EventBuffer", "EventBufferLike", "RevisionFilter", "RevisionFilterLike"]


class RevisionFilterLike(Protocol):
    """The contract both revision filters keep (compiled, and the twin)."""

    @property
    def snapshot_revision(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    def reset(
        self, snapshot_revision: int, key_revisions: Iterable[tuple[str, int]] = ()
    ) -> None: ...
    def accept(self, change: Change) -> bool: ...
    def filter(self, changes: Sequence[Change]) -> list[Change]: ...
    def last_applied(self, key: str) -> int | None: ...
    def __len__(self) -> int: ...


class EventBufferLike(Protocol):
    """The contract both event buffers keep; ``drain`` takes the filter of its own
    implementation."""

    @property
    def coalesced(self) -> int: ...
    @property
    def coalesce_above(self) -> int: ...
    def __len__(self) -> int: ...
    def append(self, change: Change) -> None: ...
    def extend(self, changes: Iterable[Change]) -> None: ...
    def drain(self, filt: Any) -> list[Change]: ...
    def clear(self) -> None: ...


if TYPE_CHECKING:
    # Type checkers read the twin; the compiled module has the same surface (_buffer_c.pyi).
    from ._buffer_py import EventBuffer, RevisionFilter
else:
    _impl = select("buffer", "datasync._buffer_c", "datasync._buffer_py")
    EventBuffer = _impl.EventBuffer
    RevisionFilter = _impl.RevisionFilter

if TYPE_CHECKING:
    # The type checker holds the compiled module (its .pyi) and the twin to one contract.
    from . import _buffer_c, _buffer_py

    _buffers: tuple[type[EventBufferLike], ...] = (_buffer_c.EventBuffer, _buffer_py.EventBuffer)
    _filters: tuple[type[RevisionFilterLike], ...] = (
        _buffer_c.RevisionFilter,
        _buffer_py.RevisionFilter,
    )
