# cython: language_level=3
"""Compiled event buffer and revision filter (``datasync._buffer_c``).

Behaves exactly like the pure-Python twin ``datasync._buffer_py``, which is the readable
spec; invalid input is handed to the twin's checks so the errors are the same too.

Hot paths read ``Change`` fields by index straight from the tuple, keep revisions as C
int64, keep per-key state in objects mutated in place (one dict lookup per known key),
and sort with a C merge sort over (revision, slot) entries. No Python object is created
per change.
"""

from cpython.exc cimport PyErr_Clear, PyErr_Occurred
from cpython.object cimport PyObject
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

from _buffer cimport (
    PyBool_Check,
    PyDict_GetItem,
    PyDict_SetItem,
    PyList_Append,
    PyList_GET_ITEM,
    PyList_GET_SIZE,
    PyLong_AsLongLong,
    PyLong_Check,
    PyTuple_Check,
    PyTuple_GET_ITEM,
    PyTuple_GET_SIZE,
    PyUnicode_CheckExact,
    PyUnicode_GET_LENGTH,
    _Entry,
)

from datasync._buffer_py import MAX_COALESCE_ABOVE
from datasync._buffer_py import _check as _py_check
from datasync._buffer_py import _check_int as _py_check_int
from datasync._buffer_py import _collect_key_revisions as _py_collect_key_revisions

__all__ = ["EventBuffer", "RevisionFilter"]


cdef inline int64_t _revision_of(PyObject* c) except -1:
    """The revision of a valid change; otherwise the twin's check raises its error."""
    cdef PyObject* key
    cdef PyObject* rev
    cdef long long v
    if PyTuple_Check(c) and PyTuple_GET_SIZE(c) >= 4:
        key = PyTuple_GET_ITEM(c, 0)
        rev = PyTuple_GET_ITEM(c, 3)
        if (
            PyUnicode_CheckExact(key)
            and PyUnicode_GET_LENGTH(key) > 0
            and PyLong_Check(rev)
            and not PyBool_Check(rev)
        ):
            v = PyLong_AsLongLong(rev)
            if v >= 0:
                return v
            if PyErr_Occurred() != NULL:
                PyErr_Clear()  # overflow: the twin reports it as out of range
    _py_check(<object>c)
    raise AssertionError("compiled and twin buffer disagree on a change's validity")


cdef inline int64_t _valid_revision(PyObject* c):
    """The revision of a change already validated."""
    return PyLong_AsLongLong(PyTuple_GET_ITEM(c, 3))


cdef inline int _admit(RevisionFilter f, PyObject* key, int64_t rev) except -1:
    """1 and record ``rev`` if it is new for ``key``, else 0 (the caller counts the drop)."""
    cdef PyObject* p
    cdef _KeyState st
    if rev <= f._snapshot:
        return 0
    p = PyDict_GetItem(f._last, key)
    if p != NULL:
        if rev <= (<_KeyState>p).rev:
            return 0
        (<_KeyState>p).rev = rev
        return 1
    st = _KeyState.__new__(_KeyState)
    st.rev = rev
    PyDict_SetItem(f._last, key, st)
    return 1


cdef class _KeyState:
    # Per-key last applied revision, mutated in place so a known key costs one dict lookup.
    cdef int64_t rev


cdef class _Slot:
    # Where a key's held change sits in the buffer's arrival list (keyed mode).
    cdef Py_ssize_t slot


cdef inline _Slot _new_slot(Py_ssize_t slot):
    cdef _Slot s = _Slot.__new__(_Slot)
    s.slot = slot
    return s


cdef class RevisionFilter:
    """Drops changes already applied: at or below the snapshot revision, or at or below
    the last applied revision of their key (duplicates and time-travelling events).

    Never drops a newer change. One instance per source: revisions are per source.
    """

    cdef int64_t _snapshot
    cdef unsigned long long _dropped
    cdef dict _last  # key -> _KeyState

    def __cinit__(self):
        self._snapshot = 0
        self._dropped = 0
        self._last = {}

    @property
    def snapshot_revision(self):
        """The revision R of the last resync snapshot (0 before any)."""
        return self._snapshot

    @property
    def dropped(self):
        """How many changes were dropped so far."""
        return self._dropped

    def reset(self, snapshot_revision, key_revisions=()):
        """Start over after a resync at ``snapshot_revision``.

        ``key_revisions`` are the snapshot's ``(key, mod_revision)`` pairs; they become the
        last applied revision of each key (the highest one wins if a key repeats). All
        previous per-key state is forgotten. Validated first: on error nothing changes.
        """
        cdef _KeyState st
        cdef dict last = {}
        _py_check_int("snapshot revision", snapshot_revision, (1 << 63) - 1)
        for key, rev in _py_collect_key_revisions(key_revisions).items():
            st = _KeyState.__new__(_KeyState)
            st.rev = rev
            last[key] = st
        self._snapshot = snapshot_revision
        self._last = last

    def accept(self, change):
        """True (and remember its revision) if ``change`` is new, False (counted) if stale."""
        cdef PyObject* c = <PyObject*>change
        cdef int64_t rev = _revision_of(c)
        if _admit(self, PyTuple_GET_ITEM(c, 0), rev):
            return True
        self._dropped += 1
        return False

    def filter(self, changes):
        """The new changes of ``changes``, in their order; the stale ones are dropped.

        Validates the whole batch before touching any state.
        """
        cdef list seq = changes if type(changes) is list else list(changes)
        cdef Py_ssize_t n = PyList_GET_SIZE(seq)
        cdef Py_ssize_t i
        cdef PyObject* c
        cdef list out = []
        for i in range(n):
            _revision_of(PyList_GET_ITEM(seq, i))
        # Keys are plain str, so no Python code runs below and ``seq`` cannot change.
        for i in range(n):
            c = PyList_GET_ITEM(seq, i)
            if _admit(self, PyTuple_GET_ITEM(c, 0), _valid_revision(c)):
                PyList_Append(out, c)
        self._dropped += <unsigned long long>(n - PyList_GET_SIZE(out))
        return out

    def last_applied(self, key):
        """The last applied revision of ``key``, or None if it is not tracked."""
        st = self._last.get(key)
        if st is None:
            return None
        return (<_KeyState>st).rev

    def __len__(self):
        """Number of keys tracked."""
        return len(self._last)

    def __repr__(self):
        return (
            f"RevisionFilter(snapshot_revision={self._snapshot}, keys={len(self._last)}, "
            f"dropped={self._dropped})"
        )


cdef int _sort_entries(_Entry* a, Py_ssize_t n) except -1:
    """Stable sort by revision: insertion sort of short blocks, then natural merges.

    Changes mostly arrive in revision order, so the common case is one check pass.
    """
    cdef Py_ssize_t i, j, k, o, lo, hi, runs
    cdef _Entry e
    cdef _Entry* src
    cdef _Entry* dst
    cdef _Entry* tmp
    for i in range(1, n):
        if a[i].rev < a[i - 1].rev:
            break
    else:
        return 0
    # Blocks of 32 sorted by insertion, so random input does not start from n/2 runs.
    lo = 0
    while lo < n:
        hi = lo + 32 if lo + 32 < n else n
        for i in range(lo + 1, hi):
            e = a[i]
            j = i
            while j > lo and a[j - 1].rev > e.rev:
                a[j] = a[j - 1]
                j -= 1
            a[j] = e
        lo = hi
    tmp = <_Entry*>malloc(n * sizeof(_Entry))
    if tmp == NULL:
        raise MemoryError()
    src = a
    dst = tmp
    while True:
        runs = 0
        lo = 0
        while lo < n:
            j = lo + 1
            while j < n and src[j].rev >= src[j - 1].rev:
                j += 1
            if j >= n:
                memcpy(&dst[lo], &src[lo], (n - lo) * sizeof(_Entry))
                runs += 1
                break
            hi = j + 1
            while hi < n and src[hi].rev >= src[hi - 1].rev:
                hi += 1
            # Merge src[lo:j] and src[j:hi]; ties take the left run (stability).
            i = lo
            k = j
            o = lo
            while i < j and k < hi:
                if src[k].rev < src[i].rev:
                    dst[o] = src[k]
                    k += 1
                else:
                    dst[o] = src[i]
                    i += 1
                o += 1
            if i < j:
                memcpy(&dst[o], &src[i], (j - i) * sizeof(_Entry))
            elif k < hi:
                memcpy(&dst[o], &src[k], (hi - k) * sizeof(_Entry))
            runs += 1
            lo = hi
        src, dst = dst, src
        if runs <= 1:
            break
    if src != a:
        memcpy(a, src, n * sizeof(_Entry))
    free(tmp)
    return 0


cdef class EventBuffer:
    """Holds the changes of one source while a resync round runs.

    Changes are kept in arrival order. When holding one more would exceed
    ``coalesce_above``, the buffer coalesces per key: only each key's newest revision stays
    (the first to arrive among equal revisions; an older revision arriving later never
    replaces a newer one, and a DELETE that is newest stays). If that left the buffer more
    than half full, it stays keyed: from then on each change replaces its key's held
    change at once, so ``len(buffer) <= max(coalesce_above, distinct keys)`` always holds.
    Nothing is lost: each coalesced key is still applied at its newest value.
    """

    cdef list _items  # arrival order; None marks a replaced change (keyed mode)
    cdef int64_t* _revs  # revision of each slot of _items
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _live
    cdef object _index  # None (plain appends) or dict: key -> _Slot
    cdef Py_ssize_t _coalesce_above
    cdef unsigned long long _coalesced

    def __cinit__(self, *args, **kwargs):
        self._items = []
        self._revs = NULL
        self._cap = 0
        self._live = 0
        self._index = None
        self._coalesce_above = 0
        self._coalesced = 0

    def __init__(self, coalesce_above=65536):
        self._coalesce_above = _py_check_int("coalesce_above", coalesce_above, MAX_COALESCE_ABOVE)

    def __dealloc__(self):
        free(self._revs)

    @property
    def coalesced(self):
        """How many changes were replaced by (or discarded for) a newer one of their key."""
        return self._coalesced

    @property
    def coalesce_above(self):
        """The size past which the buffer coalesces per key."""
        return self._coalesce_above

    def __len__(self):
        """Number of changes held."""
        return self._live

    cdef int _reserve(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t cap
        cdef int64_t* revs
        if n <= self._cap:
            return 0
        cap = self._cap * 2 if self._cap * 2 > n else n
        if cap < 64:
            cap = 64
        revs = <int64_t*>realloc(self._revs, cap * sizeof(int64_t))
        if revs == NULL:
            raise MemoryError()
        self._revs = revs
        self._cap = cap
        return 0

    def append(self, change):
        """Hold one change (validated; raises naming its key)."""
        self._push(change, _revision_of(<PyObject*>change))

    def extend(self, changes):
        """Hold a batch, as ``append`` of each in order.

        The whole batch is validated first: a bad item raises and nothing of the batch is
        held (what was held before stays).
        """
        cdef list seq = changes if type(changes) is list else list(changes)
        cdef Py_ssize_t n = PyList_GET_SIZE(seq)
        cdef Py_ssize_t base = PyList_GET_SIZE(self._items)
        cdef Py_ssize_t i
        cdef PyObject* c
        self._reserve(base + n)
        # Revisions go past the end of the held ones; committed only if all are valid.
        for i in range(n):
            self._revs[base + i] = _revision_of(PyList_GET_ITEM(seq, i))
        if self._index is None and self._live + n <= self._coalesce_above:
            self._items.extend(seq)
            self._live += n
            return
        for i in range(n):
            c = PyList_GET_ITEM(seq, i)
            self._push(<object>c, _valid_revision(c))

    cdef int _push(self, object change, int64_t rev) except -1:
        cdef Py_ssize_t n = PyList_GET_SIZE(self._items)
        cdef PyObject* p
        cdef Py_ssize_t old = -1
        self._reserve(n + 1)
        if self._index is None:
            self._revs[n] = rev
            PyList_Append(self._items, <PyObject*>change)
            self._live += 1
            if self._live > self._coalesce_above:
                self._coalesce()
            return 0
        p = PyDict_GetItem(self._index, PyTuple_GET_ITEM(<PyObject*>change, 0))
        if p != NULL:
            old = (<_Slot>p).slot
            self._coalesced += 1
            if rev <= self._revs[old]:
                return 0  # older or duplicate: the held change is newer (or arrived first)
            (<_Slot>p).slot = n
        else:
            PyDict_SetItem(self._index, PyTuple_GET_ITEM(<PyObject*>change, 0), _new_slot(n))
        self._revs[n] = rev
        PyList_Append(self._items, <PyObject*>change)
        self._live += 1
        if old >= 0:
            # Last: releasing the replaced change may free it.
            self._live -= 1
            self._items[old] = None
        if PyList_GET_SIZE(self._items) > 2 * self._live + 16:
            self._compact()
        return 0

    cdef int _coalesce(self) except -1:
        """Keep each key's newest change, in arrival order; pick the mode to continue in."""
        cdef list items = self._items
        cdef Py_ssize_t n = PyList_GET_SIZE(items)
        cdef dict best = {}
        cdef list kept_items = []
        cdef Py_ssize_t i, kept = 0
        cdef PyObject* c
        cdef PyObject* p
        cdef char* keep = <char*>malloc(n + 1)
        if keep == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                keep[i] = 0
                c = PyList_GET_ITEM(items, i)
                if <object>c is None:
                    continue
                p = PyDict_GetItem(best, PyTuple_GET_ITEM(c, 0))
                if p == NULL:
                    PyDict_SetItem(best, PyTuple_GET_ITEM(c, 0), _new_slot(i))
                elif self._revs[i] > self._revs[(<_Slot>p).slot]:
                    (<_Slot>p).slot = i
            for s in best.values():
                keep[(<_Slot>s).slot] = 1
            for i in range(n):
                if keep[i]:
                    self._revs[kept] = self._revs[i]
                    PyList_Append(kept_items, PyList_GET_ITEM(items, i))
                    kept += 1
        finally:
            free(keep)
        self._coalesced += <unsigned long long>(self._live - kept)
        self._live = kept
        if kept * 2 <= self._coalesce_above:
            # Mostly duplicates: back to cheap plain appends until the next overflow.
            self._index = None
        else:
            for i in range(kept):
                c = PyList_GET_ITEM(kept_items, i)
                (<_Slot>PyDict_GetItem(best, PyTuple_GET_ITEM(c, 0))).slot = i
            self._index = best
        self._items = kept_items  # last: may free the replaced changes
        return 0

    cdef int _compact(self) except -1:
        """Drop the empty slots left by replaced changes."""
        cdef list items = self._items
        cdef list kept_items = []
        cdef Py_ssize_t i, kept = 0
        cdef PyObject* c
        cdef dict index = self._index
        for i in range(PyList_GET_SIZE(items)):
            c = PyList_GET_ITEM(items, i)
            if <object>c is None:
                continue
            self._revs[kept] = self._revs[i]
            (<_Slot>PyDict_GetItem(index, PyTuple_GET_ITEM(c, 0))).slot = kept
            PyList_Append(kept_items, c)
            kept += 1
        self._items = kept_items
        return 0

    def drain(self, filt):
        """Everything held, sorted by revision (equal revisions in arrival order), through
        ``filt`` (its state is updated, stale changes dropped); the buffer is emptied."""
        if not isinstance(filt, RevisionFilter):
            raise TypeError(f"drain needs a RevisionFilter, got {type(filt).__name__}")
        cdef RevisionFilter f = <RevisionFilter>filt
        cdef list items = self._items
        cdef Py_ssize_t n = PyList_GET_SIZE(items)
        cdef Py_ssize_t i, m = 0
        cdef PyObject* c
        cdef list out = []
        cdef _Entry* entries = <_Entry*>malloc((n + 1) * sizeof(_Entry))
        if entries == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                if <object>PyList_GET_ITEM(items, i) is not None:
                    entries[m].rev = self._revs[i]
                    entries[m].slot = i
                    m += 1
            _sort_entries(entries, m)
            # Detached first: ``items`` keeps the changes alive while the buffer is empty.
            self._items = []
            self._live = 0
            self._index = None
            for i in range(m):
                c = PyList_GET_ITEM(items, entries[i].slot)
                if _admit(f, PyTuple_GET_ITEM(c, 0), entries[i].rev):
                    PyList_Append(out, c)
        finally:
            free(entries)
        f._dropped += <unsigned long long>(m - PyList_GET_SIZE(out))
        return out

    def clear(self):
        """Forget everything held (the ``coalesced`` counter stays)."""
        self._items = []
        self._live = 0
        self._index = None

    def __repr__(self):
        return (
            f"EventBuffer(len={self._live}, coalesce_above={self._coalesce_above}, "
            f"coalesced={self._coalesced})"
        )
