"""The event buffer and revision filter: compiled (``datasync._buffer_c``) or the twin.

While a resync round runs, a source's changes wait in an ``EventBuffer``; when the round
succeeds, ``EventBuffer.drain(filt)`` hands them back in revision order through the
source's ``RevisionFilter``, which drops everything already covered by the snapshot or
already applied. Outside a round, changes go through ``RevisionFilter.filter`` directly.
One buffer and one filter per source: revisions are per source.

``IMPLEMENTATION`` says which one runs: ``"compiled"`` or ``"twin"``
(``DATASYNC_NO_EXTENSIONS=1`` selects the twin).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._extensions import ACTIVE, select

__all__ = ["IMPLEMENTATION", "EventBuffer", "RevisionFilter"]

if TYPE_CHECKING:
    # Type checkers read the twin; the compiled module has the same surface (_buffer_c.pyi).
    from ._buffer_py import EventBuffer, RevisionFilter
else:
    _impl = select("buffer", "datasync._buffer_c", "datasync._buffer_py")
    EventBuffer = _impl.EventBuffer
    RevisionFilter = _impl.RevisionFilter

#: "compiled" or "twin".
IMPLEMENTATION: str = ACTIVE.get("buffer", "twin")
