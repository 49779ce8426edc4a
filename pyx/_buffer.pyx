# cython: language_level=3
"""Compiled event buffer and revision filter (``datasync._buffer_c``).

Behaves exactly like the pure-Python twin ``datasync._buffer_py``, which is the readable
spec; invalid input is handed to the twin's checks so the errors are the same too.

Hot paths read ``Change`` fields by index straight from the tuple, keep revisions as C
int64, and sort with a C merge sort over (revision, slot) entries. No Python object is
created per change. Per-key state lives in C open-addressing tables keyed by the exact
str keys (their cached hash, pointer comparison first): each key's last applied revision
in the filter, each key's newest change while coalescing. An ``extend`` that crosses
the limit coalesces the held changes with the part of the batch that fits, so the
changes it replaces are never appended.
"""

from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy

from _buffer cimport (
    PyBool_Check,
    Py_DECREF,
    Py_INCREF,
    PyDict_GetItemWithError,
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
    PyASCIIObject,
    PyListObject,
    PyObject_Hash,
    Py_REFCNT,
    Py_SET_SIZE,
    PyUnicode_DATA,
    PyUnicode_KIND,
    _Best,
    _Entry,
    _Rev,
    _Table,
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
    """1 and record ``rev`` if it is new for ``key`` (an exact str), else 0 (the caller
    counts the drop)."""
    cdef Py_hash_t h
    cdef size_t i
    cdef _Rev* e
    if rev <= f._snapshot:
        return 0
    h = _str_hash(key)
    i = <size_t>h & f._mask
    while True:
        e = &f._tab[i]
        if e.key == key or (e.key != NULL and e.hash == h and _str_eq(e.key, key)):
            if rev <= e.rev:
                return 0
            e.rev = rev
            return 1
        if e.key == NULL:
            break
        i = (i + 1) & f._mask
    if <size_t>(f._used + 1) * 3 > (f._mask + 1) * 2:
        _revs_grow(f)
        e = _revs_free_entry(f._tab, f._mask, h)
    Py_INCREF(key)
    e.key = key
    e.hash = h
    e.rev = rev
    f._used += 1
    return 1


cdef inline _Rev* _revs_free_entry(_Rev* tab, size_t mask, Py_hash_t h) noexcept:
    """The empty entry a key of hash ``h`` (not in the table) takes."""
    cdef size_t i = <size_t>h & mask
    while tab[i].key != NULL:
        i = (i + 1) & mask
    return &tab[i]


cdef _Rev* _revs_new(size_t cap) except NULL:
    cdef _Rev* tab = <_Rev*>calloc(cap, sizeof(_Rev))
    if tab == NULL:
        raise MemoryError()
    return tab


cdef int _revs_grow(RevisionFilter f) except -1:
    """Twice the entries, the same keys (their references move)."""
    cdef size_t old = f._mask + 1
    cdef size_t i
    cdef _Rev* tab = _revs_new(2 * old)
    for i in range(old):
        if f._tab[i].key != NULL:
            _revs_free_entry(tab, 2 * old - 1, f._tab[i].hash)[0] = f._tab[i]
    free(f._tab)
    f._tab = tab
    f._mask = 2 * old - 1
    return 0


cdef void _revs_release(_Rev* tab, size_t cap) noexcept:
    """Release the keys of a table and the table (str keys: runs no Python code)."""
    cdef size_t i
    if tab == NULL:
        return
    for i in range(cap):
        if tab[i].key != NULL:
            Py_DECREF(tab[i].key)
    free(tab)


cdef inline Py_hash_t _str_hash(PyObject* key) noexcept:
    """The hash of an exact str: cached in the object once computed."""
    cdef Py_hash_t h = (<PyASCIIObject*>key).hash
    if h == -1:
        h = PyObject_Hash(key)  # cannot fail for an exact str
    return h


cdef inline bint _str_eq(PyObject* a, PyObject* b) noexcept:
    """Equality of two exact str of equal hash (the caller compared the pointers)."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(a)
    cdef int kind = PyUnicode_KIND(a)
    return (
        n == PyUnicode_GET_LENGTH(b)
        and kind == PyUnicode_KIND(b)
        and memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), n * kind) == 0
    )


cdef int _table_init(_Table* t, Py_ssize_t hint) except -1:
    """An empty table with room for about ``hint`` keys before it grows."""
    cdef size_t cap = 64
    while cap * 2 < <size_t>hint * 3:
        cap *= 2
    t.tab = <_Best*>calloc(cap, sizeof(_Best))
    if t.tab == NULL:
        raise MemoryError()
    t.mask = cap - 1
    t.used = 0
    return 0


cdef int _table_grow(_Table* t) except -1:
    """Twice the entries, the same keys."""
    cdef size_t old = t.mask + 1
    cdef size_t mask = 2 * old - 1
    cdef size_t i, j
    cdef _Best* tab = <_Best*>calloc(2 * old, sizeof(_Best))
    if tab == NULL:
        raise MemoryError()
    for i in range(old):
        if t.tab[i].key != NULL:
            j = <size_t>t.tab[i].hash & mask
            while tab[j].key != NULL:
                j = (j + 1) & mask
            tab[j] = t.tab[i]
    free(t.tab)
    t.tab = tab
    t.mask = mask
    return 0


cdef inline int _table_add(_Table* t, PyObject* key, int64_t rev, Py_ssize_t slot) except -1:
    """Note a change at ``slot``: it becomes its key's entry if it is the key's first or
    strictly newer than the entry (among equal revisions the first to arrive stays)."""
    cdef Py_hash_t h = _str_hash(key)
    cdef size_t i = <size_t>h & t.mask
    cdef _Best* e
    while True:
        e = &t.tab[i]
        if e.key == key or (e.key != NULL and e.hash == h and _str_eq(e.key, key)):
            if rev > e.rev:
                e.rev = rev
                e.slot = slot
            return 0
        if e.key == NULL:
            break
        i = (i + 1) & t.mask
    e.key = key
    e.hash = h
    e.rev = rev
    e.slot = slot
    t.used += 1
    if <size_t>t.used * 3 > (t.mask + 1) * 2:
        _table_grow(t)
    return 0


cdef inline void _prefetch_key(_Table* t, PyObject* c) noexcept:
    """Start loading the table entry of a held or validated change's key."""
    cdef Py_hash_t h = (<PyASCIIObject*>PyTuple_GET_ITEM(c, 0)).hash
    if h != -1:
        __builtin_prefetch(&t.tab[<size_t>h & t.mask])


cdef bint _may_free(list items) noexcept:
    """Whether releasing ``items`` may free one (and so run Python code)."""
    cdef Py_ssize_t i
    cdef PyObject* c
    for i in range(PyList_GET_SIZE(items)):
        c = PyList_GET_ITEM(items, i)
        if c != NULL and Py_REFCNT(c) == 1:
            return True
    return False


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
    # Each key's last applied revision: an open-addressing table (linear probing) of
    # _mask + 1 entries, a power of two, _used of them taken (at most two thirds). It
    # holds a reference to each key (exact str).
    cdef _Rev* _tab
    cdef size_t _mask
    cdef Py_ssize_t _used

    def __cinit__(self):
        self._snapshot = 0
        self._dropped = 0
        self._tab = _revs_new(8)
        self._mask = 7
        self._used = 0

    def __dealloc__(self):
        _revs_release(self._tab, self._mask + 1)

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
        cdef size_t cap = 8
        cdef _Rev* tab
        cdef _Rev* e
        cdef _Rev* old_tab
        cdef size_t old_cap
        cdef PyObject* k
        _py_check_int("snapshot revision", snapshot_revision, (1 << 63) - 1)
        last = _py_collect_key_revisions(key_revisions)  # validated: exact str keys
        while cap * 2 < <size_t>len(last) * 3 + 2:
            cap *= 2
        tab = _revs_new(cap)
        for key, rev in last.items():
            k = <PyObject*>key
            e = _revs_free_entry(tab, cap - 1, _str_hash(k))
            Py_INCREF(k)
            e.key = k
            e.hash = _str_hash(k)
            e.rev = rev
        old_tab = self._tab
        old_cap = self._mask + 1
        self._tab = tab
        self._mask = cap - 1
        self._used = len(last)
        self._snapshot = snapshot_revision
        _revs_release(old_tab, old_cap)

    cdef object _get(self, object key):
        """The last applied revision of ``key``, or None."""
        cdef PyObject* k = <PyObject*>key
        cdef Py_hash_t h
        cdef size_t i
        cdef _Rev* e
        if type(key) is not str:
            # What a dict lookup does with any other key (a str subclass, an unhashable).
            return self._as_dict().get(key)
        h = _str_hash(k)
        i = <size_t>h & self._mask
        while True:
            e = &self._tab[i]
            if e.key == NULL:
                return None
            if e.key == k or (e.hash == h and _str_eq(e.key, k)):
                return e.rev
            i = (i + 1) & self._mask

    cdef dict _as_dict(self):
        cdef dict d = {}
        cdef size_t i
        for i in range(self._mask + 1):
            if self._tab[i].key != NULL:
                d[<object>self._tab[i].key] = self._tab[i].rev
        return d

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
            # Keys are plain str: the table operations run no Python code either.
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
        return self._get(key)

    def __len__(self):
        """Number of keys tracked."""
        return self._used

    def __repr__(self):
        return (
            f"RevisionFilter(snapshot_revision={self._snapshot}, keys={self._used}, "
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
        cdef Py_ssize_t i
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
        self._extend_crossing(seq, seq is not changes)

    cdef int _extend_crossing(self, list seq, bint private) except -1:
        """``extend`` of a batch that reaches the limit, or in keyed mode: as append() of
        each change in order, whole coalescing passes at a time.

        In plain mode the changes that fit, plus the one that overflows, join the held
        ones in a C table of each key's newest change; the kept changes go straight into
        the new held list (the replaced ones of the batch are never held); the replaced
        held ones are released last, once the state is whole, as the twin releases them.
        Then the same again with the rest. In keyed mode, one push at a time.

        Python code can run only where objects are allocated (the garbage collector, hence
        finalizers) or released. The whole batch is validated after the first allocations
        and before anything is held, so an invalid change leaves the buffer untouched;
        before anything later that can run code, the rest of a caller's list is pinned
        (``pinned`` holds references to ``seq[pin_lo:]``), so that a finalizer changing
        that list cannot change what is appended. A private ``seq`` (made from an
        iterable) is reachable from nowhere else.
        """
        cdef Py_ssize_t n = PyList_GET_SIZE(seq)
        cdef Py_ssize_t i = 0, k, m, base, live, room
        cdef int64_t* revs = NULL
        cdef PyObject** pinned = NULL
        cdef Py_ssize_t pin_lo = 0, pin_n = 0
        cdef PyObject** arr  # the change at i is arr[i - off]
        cdef Py_ssize_t off = 0
        cdef PyObject* c
        cdef bint validated = False
        cdef list kept_items
        cdef dict index
        cdef list old = None
        cdef _Table t
        t.tab = NULL
        try:
            while True:
                if (
                    validated
                    and i < n
                    and not private
                    and pinned == NULL
                    and (
                        old is not None
                        or self._index is not None
                        or n - i > self._coalesce_above - self._live
                    )
                ):
                    # A release, a push or an allocation below may run Python code: hold
                    # the rest of the batch first.
                    pin_n = n - i
                    pinned = <PyObject**>malloc(pin_n * sizeof(PyObject*))
                    if pinned == NULL:
                        raise MemoryError()
                    for k in range(pin_n):
                        c = PyList_GET_ITEM(seq, i + k)
                        Py_INCREF(c)
                        pinned[k] = c
                    pin_lo = i
                old = None  # releases what the last pass replaced: may run Python code
                if validated and i >= n:
                    return 0
                if self._index is not None:
                    if not validated:
                        revs = self._validate(seq)
                        validated = True
                        continue  # pin the batch first: a push may run Python code
                    c = pinned[i - pin_lo] if pinned != NULL else PyList_GET_ITEM(seq, i)
                    self._push(<object>c, revs[i])
                    i += 1
                    continue
                # Plain mode. Allocations first, then the state is read.
                live = self._live
                room = self._coalesce_above - live
                if not validated:
                    n = PyList_GET_SIZE(seq)
                m = room + 1 if n - i > room else 0  # the changes of this pass
                base = PyList_GET_SIZE(self._items)
                kept_items = PyList_New(base + m) if m else None
                index = {} if m else None
                if (
                    self._index is not None
                    or self._live != live
                    or PyList_GET_SIZE(self._items) != base
                    or (not validated and PyList_GET_SIZE(seq) != n)
                ):
                    continue  # a finalizer used the buffer: read it again
                if not validated:
                    revs = self._validate(seq)
                    validated = True
                arr = pinned if pinned != NULL else (<PyListObject*><PyObject*>seq).ob_item
                off = pin_lo if pinned != NULL else 0
                if m == 0:
                    self._bulk(arr + (i - off), revs + i, n - i)
                    i = n
                    continue
                _table_init(&t, (base + m) // 4)
                self._table_held(&t, base)
                for k in range(m):
                    if k + 8 < m:
                        _prefetch_key(&t, arr[i - off + k + 8])
                    _table_add(&t, PyTuple_GET_ITEM(arr[i - off + k], 0), revs[i + k], base + k)
                old = self._coalesce_with(&t, arr + (i - off), revs + i, m, kept_items, index)
                free(t.tab)
                t.tab = NULL
                kept_items = None
                index = None
                i += m
                if old is not None and not _may_free(old):
                    old = None  # drops no reference to zero: runs no Python code
        finally:
            free(t.tab)
            free(revs)
            if pinned != NULL:
                for k in range(pin_n - 1, -1, -1):  # last first, as a list releases
                    Py_DECREF(pinned[k])
                free(pinned)

    cdef int64_t* _validate(self, list seq) except NULL:
        """The revisions of the whole batch (a malloc'ed array), or the twin's error for
        its first invalid change."""
        cdef Py_ssize_t n = PyList_GET_SIZE(seq)
        cdef Py_ssize_t i
        cdef int64_t rev
        cdef PyObject* c
        cdef int64_t* revs = <int64_t*>malloc((n + 1) * sizeof(int64_t))
        if revs == NULL:
            raise MemoryError()
        for i in range(n):
            _prefetch_ahead(seq, i, n)
            c = PyList_GET_ITEM(seq, i)
            rev = _fast_revision(c)
            if rev < 0:
                free(revs)
                _raise_invalid(c)
            revs[i] = rev
        return revs

    cdef int _bulk(self, PyObject** src, const int64_t* revs, Py_ssize_t m) except -1:
        """Plain appends of ``m`` validated changes, known to fit under the limit."""
        cdef Py_ssize_t i
        cdef Py_ssize_t base = PyList_GET_SIZE(self._items)
        self._reserve(base + m)
        for i in range(m):
            if i + 8 < m:
                __builtin_prefetch(src[i + 8])
            self._ents[base + i].rev = revs[i]
            self._ents[base + i].slot = base + i
            PyList_Append(self._items, src[i])
        self._live += m
        return 0

    cdef int _table_held(self, _Table* t, Py_ssize_t n) except -1:
        """Note the first ``n`` held changes (plain mode: no empty slots) in ``t``."""
        cdef Py_ssize_t i
        cdef PyObject** items = (<PyListObject*><PyObject*>self._items).ob_item
        for i in range(n):
            if i + 8 < n:
                _prefetch_key(t, items[i + 8])
            _table_add(t, PyTuple_GET_ITEM(items[i], 0), self._ents[i].rev, i)
        return 0

    cdef list _coalesce_with(
        self,
        _Table* t,
        PyObject** chunk,
        const int64_t* revs,
        Py_ssize_t m,
        list kept_items,
        dict index,
    ):
        """Coalesce the held changes and ``chunk[:m]`` (revisions ``revs``; not held yet:
        slots from the held list's length on), with ``t`` holding each key's newest of
        them. ``kept_items`` is a fresh list as long as both, ``index`` a fresh dict.

        Runs no Python code. Returns the old held list, which holds the replaced held
        changes only: the caller releases it once it may run Python code.
        """
        cdef list items = self._items
        cdef Py_ssize_t base = PyList_GET_SIZE(items)
        cdef Py_ssize_t total = base + m
        cdef Py_ssize_t i, j, kept = t.used
        cdef size_t e
        cdef PyObject* c
        cdef char* keep = <char*>calloc(total + 1, 1)  # keep[i]: the change at slot i stays
        if keep == NULL:
            raise MemoryError()
        try:
            self._reserve(total)
            for e in range(t.mask + 1):
                if t.tab[e].key != NULL:
                    keep[t.tab[e].slot] = 1
            if kept * 2 > self._coalesce_above:
                # Staying keyed: each kept change's key -> the slot it moves to.
                j = 0
                for i in range(total):
                    if keep[i]:
                        c = PyList_GET_ITEM(items, i) if i < base else chunk[i - base]
                        PyDict_SetItem(index, PyTuple_GET_ITEM(c, 0), _new_slot(j))
                        j += 1
            # Held changes that stay move over without touching their reference counts;
            # the replaced ones stay in ``items``. Changes of the chunk are referenced only
            # if kept.
            j = 0
            for i in range(base):
                if keep[i]:
                    c = PyList_GET_ITEM(items, i)
                    PyList_SET_ITEM(items, i, NULL)
                    PyList_SET_ITEM(kept_items, j, c)
                    self._ents[j].rev = self._ents[i].rev
                    self._ents[j].slot = j
                    j += 1
            for i in range(m):
                if keep[base + i]:
                    c = chunk[i]
                    Py_INCREF(c)
                    PyList_SET_ITEM(kept_items, j, c)
                    self._ents[j].rev = revs[i]
                    self._ents[j].slot = j
                    j += 1
        finally:
            free(keep)
        # Only empty tail slots go; the capacity stays for the appends that follow.
        Py_SET_SIZE(<PyObject*>kept_items, kept)
        self._coalesced += <unsigned long long>(total - kept)
        self._live = kept
        # Mostly duplicates: back to cheap plain appends until the next overflow.
        self._index = None if kept * 2 <= self._coalesce_above else index
        self._items = kept_items
        return items

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
        """Keep each key's newest change, in arrival order; pick the mode to continue in.
        Plain mode only (the push that overflowed is held)."""
        cdef Py_ssize_t n
        cdef list kept_items
        cdef dict index
        cdef list old
        cdef _Table t
        # Python objects are allocated before the state is read: an allocation may run the
        # garbage collector, hence finalizers that could append to this buffer.
        while True:
            n = PyList_GET_SIZE(self._items)
            index = {}
            kept_items = PyList_New(n)
            if PyList_GET_SIZE(self._items) == n:
                break
        _table_init(&t, n // 4)
        try:
            self._table_held(&t, n)
            old = self._coalesce_with(&t, NULL, NULL, 0, kept_items, index)
        finally:
            free(t.tab)
        old = None  # last: releasing the replaced changes may run Python code
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
