# cython: language_level=3
"""Compiled event buffer and revision filter (``datasync._buffer_c``).

Behaves exactly like the pure-Python twin ``datasync._buffer_py``, which is the readable
spec; invalid input is handed to the twin's checks so the errors are the same too.

Hot paths read ``Change`` fields by index straight from the tuple, keep revisions as C
int64, keep per-key state in objects mutated in place (one dict lookup per known key),
and sort with a C merge sort over (revision, slot) entries. No Python object is created
per change.
"""

from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy

from _buffer cimport (
    PyBool_Check,
    Py_DECREF,
    Py_INCREF,
    PyDict_GetItemWithError,
    PyDict_Next,
    PyDict_SetItem,
    PyList_Append,
    PyList_GET_ITEM,
    PyList_GET_SIZE,
    PyList_New,
    PyList_SET_ITEM,
    PyList_SetSlice,
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

cdef extern from *:
    # Changes live all over the heap: fetch the next ones while this one is filtered.
    void __builtin_prefetch(const void* addr) nogil

# Revisions are read as the codec reads ints: the running CPython's layout inline where
# it is known and passed the import check below, else the public API (pyx/ds_pyver.h).
cdef extern from "ds_pyver.h":
    int ds_small_long(PyObject* v, long long* out) noexcept
    void ds_pyver_check(object sample_dict, object sample_ints) noexcept

ds_pyver_check({}, [0, 1, -1, 2**30 - 1, 2**30, 2**60 - 1, 2**60, 2**63 - 1, -(2**63), 2**63])


cdef inline void _prefetch_ahead(list seq, Py_ssize_t i, Py_ssize_t n) noexcept:
    """Start loading the changes a few places ahead of ``i``, and their key and revision."""
    cdef PyObject* c
    if i + 16 < n:
        __builtin_prefetch(PyList_GET_ITEM(seq, i + 16))
    if i + 8 < n:
        c = PyList_GET_ITEM(seq, i + 8)
        if PyTuple_Check(c) and PyTuple_GET_SIZE(c) >= 4:
            __builtin_prefetch(PyTuple_GET_ITEM(c, 0))
            __builtin_prefetch(PyTuple_GET_ITEM(c, 3))


cdef inline int64_t _fast_revision(PyObject* c) noexcept:
    """The revision of a valid change, or -1 (no exception set) if it is not valid."""
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
            # an int (or subclass) never fails here; beyond int64 the twin reports it
            if ds_small_long(rev, &v) and v >= 0:
                return v
    return -1


cdef int _raise_invalid(PyObject* c) except -1:
    """Raise the twin's error for an invalid change."""
    _py_check(<object>c)
    raise AssertionError("compiled and twin buffer disagree on a change's validity")


cdef inline int64_t _revision_of(PyObject* c) except -1:
    """The revision of a valid change; otherwise the twin's check raises its error."""
    cdef int64_t rev = _fast_revision(c)
    if rev < 0:
        _raise_invalid(c)
    return rev


cdef inline int64_t _valid_revision(PyObject* c) noexcept:
    """The revision of a change already validated."""
    cdef long long v = 0
    ds_small_long(PyTuple_GET_ITEM(c, 3), &v)
    return v


cdef inline int _admit(RevisionFilter f, PyObject* key, int64_t rev) except -1:
    """1 and record ``rev`` if it is new for ``key``, else 0 (the caller counts the drop)."""
    cdef PyObject* p
    cdef _KeyState st
    if rev <= f._snapshot:
        return 0
    p = PyDict_GetItemWithError(f._last, key)
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
        cdef Py_ssize_t i, kept = 0
        cdef PyObject* c
        # Allocated first: it may run the garbage collector, hence finalizers, which could
        # change the caller's list. Nothing below runs Python code unless it raises.
        cdef list out = PyList_New(n)
        if PyList_GET_SIZE(seq) != n:
            raise RuntimeError("the list of changes changed size during filter()")
        for i in range(n):
            _prefetch_ahead(seq, i, n)
            _revision_of(PyList_GET_ITEM(seq, i))
        try:
            # Keys are plain str: dict operations run no Python code either.
            for i in range(n):
                if i + 8 < n:
                    __builtin_prefetch(PyList_GET_ITEM(seq, i + 8))
                c = PyList_GET_ITEM(seq, i)
                if _admit(self, PyTuple_GET_ITEM(c, 0), _valid_revision(c)):
                    Py_INCREF(c)
                    PyList_SET_ITEM(out, kept, c)
                    kept += 1
                else:
                    self._dropped += 1
        finally:
            PyList_SetSlice(out, kept, n, NULL)
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


cdef int _merge_sort(_Entry* a, _Entry* tmp, Py_ssize_t n) noexcept nogil:
    """Stable sort by revision: insertion sort of blocks of 32, then pairwise run merges.

    ``tmp`` has room for ``n`` entries.
    """
    cdef Py_ssize_t i, j, k, o, lo, hi, runs
    cdef _Entry e
    cdef _Entry* src = a
    cdef _Entry* dst = tmp
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
    return 0


cdef int _sort_entries(_Entry* a, Py_ssize_t n) except -1:
    """Sort entries by (revision, slot): revision order, arrival order among equal ones.

    Entries come in slot order. Changes mostly arrive in revision order, with a few
    re-deliveries of older revisions: then the ascending majority stays in place, the
    out-of-order minority is moved aside, sorted (stable) and merged back from the end.
    Revisions of one buffer are usually dense, so heavily shuffled input takes a stable
    counting sort over the revision span; anything else a stable merge sort.

    The GIL stays held: the entries belong to the buffer, which another thread could grow.
    """
    cdef Py_ssize_t i, m = 0, k = 0, o, span
    cdef int64_t top, lo, hi
    cdef _Entry* out
    cdef _Entry* tmp
    cdef Py_ssize_t* counts
    if n < 2:
        return 0
    lo = hi = top = a[0].rev
    for i in range(1, n):
        if a[i].rev >= top:
            top = a[i].rev
        else:
            k += 1
            if a[i].rev < lo:
                lo = a[i].rev
    if k == 0:
        return 0
    hi = top
    span = <Py_ssize_t>(hi - lo) + 1 if <uint64_t>(hi - lo) < <uint64_t>(4 * n + 1024) else -1
    if k > n // 8 and span > 0:
        counts = <Py_ssize_t*>calloc(span + 1, sizeof(Py_ssize_t))
        tmp = <_Entry*>malloc(n * sizeof(_Entry))
        if counts == NULL or tmp == NULL:
            free(counts)
            free(tmp)
            raise MemoryError()
        for i in range(n):
            counts[a[i].rev - lo + 1] += 1
        for i in range(1, span + 1):
            counts[i] += counts[i - 1]
        for i in range(n):  # in slot order, so equal revisions keep arrival order
            o = a[i].rev - lo
            tmp[counts[o]] = a[i]
            counts[o] += 1
        memcpy(a, tmp, n * sizeof(_Entry))
        free(counts)
        free(tmp)
        return 0
    out = <_Entry*>malloc(2 * k * sizeof(_Entry))
    if out == NULL:
        raise MemoryError()
    tmp = out + k
    k = 0
    top = a[0].rev
    for i in range(n):
        if a[i].rev >= top:
            top = a[i].rev
            a[m] = a[i]
            m += 1
        else:
            out[k] = a[i]
            k += 1
    _merge_sort(out, tmp, k)
    # Merge a[0:m] and out[0:k] into a[0:n] from the back; on equal revisions the
    # entry that arrived later (higher slot) goes last.
    o = n
    while k > 0:
        o -= 1
        if m > 0 and (
            a[m - 1].rev > out[k - 1].rev
            or (a[m - 1].rev == out[k - 1].rev and a[m - 1].slot > out[k - 1].slot)
        ):
            a[o] = a[m - 1]
            m -= 1
        else:
            a[o] = out[k - 1]
            k -= 1
    free(out)
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
    cdef _Entry* _ents  # _ents[i] = (revision of _items[i], i); drain sorts it in place
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _live
    cdef object _index  # None (plain appends) or dict: key -> _Slot
    cdef Py_ssize_t _coalesce_above
    cdef unsigned long long _coalesced

    def __cinit__(self, *args, **kwargs):
        self._items = []
        self._ents = NULL
        self._cap = 0
        self._live = 0
        self._index = None
        self._coalesce_above = 0
        self._coalesced = 0

    def __init__(self, coalesce_above=65536):
        self._coalesce_above = _py_check_int("coalesce_above", coalesce_above, MAX_COALESCE_ABOVE)

    def __dealloc__(self):
        free(self._ents)

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
        cdef _Entry* ents
        if n <= self._cap:
            return 0
        cap = self._cap * 2 if self._cap * 2 > n else n
        if cap < 64:
            cap = 64
        ents = <_Entry*>realloc(self._ents, cap * sizeof(_Entry))
        if ents == NULL:
            raise MemoryError()
        self._ents = ents
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
        cdef Py_ssize_t i, j
        cdef int64_t rev
        cdef PyObject* c
        if self._index is None and self._live + n <= self._coalesce_above:
            # Plain appends: validate and append in one pass (each change is touched
            # once), and take the batch back out if an item is invalid.
            self._reserve(base + n)
            for i in range(n):
                _prefetch_ahead(seq, i, n)
                c = PyList_GET_ITEM(seq, i)
                rev = _fast_revision(c)
                if rev < 0:
                    PyList_SetSlice(self._items, base, PyList_GET_SIZE(self._items), NULL)
                    _raise_invalid(c)
                self._ents[base + i].rev = rev
                self._ents[base + i].slot = base + i
                PyList_Append(self._items, c)
            self._live += n
            return
        if seq is changes:
            seq = list(seq)  # coalescing frees changes: finalizers must not reach ``seq``
        for i in range(n):
            _revision_of(PyList_GET_ITEM(seq, i))
        # As append() of each: what fits before the limit goes in bulk, then one push
        # coalesces, and so on; in keyed mode, one by one.
        i = 0
        while i < n:
            if self._index is None and self._live < self._coalesce_above:
                j = min(n, i + (self._coalesce_above - self._live))
                self._bulk(seq, i, j)
                i = j
            else:
                c = PyList_GET_ITEM(seq, i)
                self._push(<object>c, _fast_revision(c))
                i += 1

    cdef int _bulk(self, list seq, Py_ssize_t start, Py_ssize_t stop) except -1:
        """Plain appends of validated ``seq[start:stop]``, known to fit under the limit."""
        cdef Py_ssize_t i
        cdef Py_ssize_t base = PyList_GET_SIZE(self._items)
        cdef PyObject* c
        self._reserve(base + stop - start)
        for i in range(start, stop):
            c = PyList_GET_ITEM(seq, i)
            self._ents[base].rev = _fast_revision(c)
            self._ents[base].slot = base
            PyList_Append(self._items, c)
            base += 1
        self._live += stop - start
        return 0

    cdef int _push(self, object change, int64_t rev) except -1:
        cdef Py_ssize_t n = PyList_GET_SIZE(self._items)
        cdef PyObject* p
        cdef Py_ssize_t old = -1
        self._reserve(n + 1)
        if self._index is None:
            self._ents[n].rev = rev
            self._ents[n].slot = n
            PyList_Append(self._items, <PyObject*>change)
            self._live += 1
            if self._live > self._coalesce_above:
                self._coalesce()
            return 0
        p = PyDict_GetItemWithError(self._index, PyTuple_GET_ITEM(<PyObject*>change, 0))
        if p != NULL:
            old = (<_Slot>p).slot
            self._coalesced += 1
            if rev <= self._ents[old].rev:
                return 0  # older or duplicate: the held change is newer (or arrived first)
            (<_Slot>p).slot = n
        else:
            PyDict_SetItem(self._index, PyTuple_GET_ITEM(<PyObject*>change, 0), _new_slot(n))
        self._ents[n].rev = rev
        self._ents[n].slot = n
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
        cdef list items
        cdef Py_ssize_t n
        cdef dict best
        cdef list kept_items
        cdef Py_ssize_t i, pos = 0, kept = 0
        cdef PyObject* c
        cdef PyObject* p
        cdef PyObject* k
        cdef PyObject* v
        cdef PyObject** keepers
        # Python objects are allocated before the state is read: an allocation may run the
        # garbage collector, hence finalizers that could append to this buffer.
        while True:
            n = PyList_GET_SIZE(self._items)
            best = {}
            kept_items = PyList_New(n)
            if PyList_GET_SIZE(self._items) == n:
                break
        items = self._items
        # keepers[i]: the _Slot of the key whose newest change sits at i, else NULL
        keepers = <PyObject**>calloc(n + 1, sizeof(PyObject*))
        if keepers == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                c = PyList_GET_ITEM(items, i)
                if <object>c is None:
                    continue
                p = PyDict_GetItemWithError(best, PyTuple_GET_ITEM(c, 0))
                if p == NULL:
                    PyDict_SetItem(best, PyTuple_GET_ITEM(c, 0), _new_slot(i))
                elif self._ents[i].rev > self._ents[(<_Slot>p).slot].rev:
                    (<_Slot>p).slot = i
            while PyDict_Next(best, &pos, &k, &v):
                keepers[(<_Slot>v).slot] = v
            # Kept changes move over without touching their reference counts; the rest
            # are released with ``items`` below.
            for i in range(n):
                if keepers[i] != NULL:
                    c = PyList_GET_ITEM(items, i)
                    PyList_SET_ITEM(items, i, NULL)
                    PyList_SET_ITEM(kept_items, kept, c)
                    self._ents[kept].rev = self._ents[i].rev
                    self._ents[kept].slot = kept
                    (<_Slot>keepers[i]).slot = kept
                    kept += 1
        finally:
            free(keepers)
        PyList_SetSlice(kept_items, kept, n, NULL)  # only empty tail slots go
        self._coalesced += <unsigned long long>(self._live - kept)
        self._live = kept
        # Mostly duplicates: back to cheap plain appends until the next overflow.
        self._index = None if kept * 2 <= self._coalesce_above else best
        self._items = kept_items  # last: may free the replaced changes
        return 0

    cdef int _compact(self) except -1:
        """Drop the empty slots left by replaced changes."""
        cdef list items
        cdef list kept_items
        cdef Py_ssize_t i, live, kept = 0
        cdef PyObject* c
        cdef dict index
        while True:  # allocate before reading the state, as in _coalesce
            live = self._live
            kept_items = PyList_New(live)
            if self._live == live:
                break
        items = self._items
        index = self._index
        for i in range(PyList_GET_SIZE(items)):
            c = PyList_GET_ITEM(items, i)
            if <object>c is None:
                continue
            PyList_SET_ITEM(items, i, NULL)
            PyList_SET_ITEM(kept_items, kept, c)
            self._ents[kept].rev = self._ents[i].rev
            self._ents[kept].slot = kept
            (<_Slot>PyDict_GetItemWithError(index, PyTuple_GET_ITEM(c, 0))).slot = kept
            kept += 1
        self._items = kept_items
        return 0

    def drain(self, filt):
        """Everything held, sorted by revision (equal revisions in arrival order), through
        ``filt`` (its state is updated, stale changes dropped); the buffer is emptied."""
        if not isinstance(filt, RevisionFilter):
            raise TypeError(f"drain needs a RevisionFilter, got {type(filt).__name__}")
        cdef RevisionFilter f = <RevisionFilter>filt
        cdef Py_ssize_t i, n, m, kept = 0
        cdef PyObject* c
        cdef int keep
        cdef list out
        cdef list items
        cdef list fresh = []
        cdef _Entry* ents = self._ents
        cdef Py_ssize_t cap = self._cap
        cdef bint keyed = self._index is not None
        # Detach everything first (``fresh`` was allocated before reading the state), so
        # that anything re-entering this buffer from a finalizer, while changes are freed
        # or objects allocated below, finds it empty and leaves these arrays alone. If
        # this raises past here (out of memory), what was held is gone.
        items = self._items
        self._items = fresh
        self._ents = NULL
        self._cap = 0
        self._live = 0
        self._index = None
        n = m = PyList_GET_SIZE(items)
        if keyed:
            m = 0
            for i in range(n):
                if PyList_GET_ITEM(items, i) != <PyObject*>None:
                    ents[m] = ents[i]
                    m += 1
        try:
            _sort_entries(ents, m)
            out = PyList_New(m)
            for i in range(m):
                if i + 16 < m:
                    __builtin_prefetch(PyList_GET_ITEM(items, ents[i + 16].slot))
                if i + 8 < m:
                    __builtin_prefetch(
                        PyTuple_GET_ITEM(PyList_GET_ITEM(items, ents[i + 8].slot), 0)
                    )
                c = PyList_GET_ITEM(items, ents[i].slot)
                keep = _admit(f, PyTuple_GET_ITEM(c, 0), ents[i].rev)
                # The reference held in ``items`` moves to ``out`` or is released here: no
                # second pass over the changes to decref them when ``items`` goes.
                PyList_SET_ITEM(items, ents[i].slot, NULL)
                if keep:
                    PyList_SET_ITEM(out, kept, c)
                    kept += 1
                else:
                    f._dropped += 1
                    Py_DECREF(c)
        finally:
            if self._ents == NULL:
                self._ents = ents  # keep the capacity for the next round
                self._cap = cap
            else:
                free(ents)
        PyList_SetSlice(out, kept, m, NULL)
        return out

    def clear(self):
        """Forget everything held (the ``coalesced`` counter stays)."""
        cdef list fresh = []
        self._live = 0
        self._index = None
        self._items = fresh  # last: releasing the changes may run finalizers

    def __repr__(self):
        return (
            f"EventBuffer(len={self._live}, coalesce_above={self._coalesce_above}, "
            f"coalesced={self._coalesced})"
        )
