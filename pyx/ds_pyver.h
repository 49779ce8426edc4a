/* The parts of the compiled codec that depend on one CPython version's internals.
 *
 * Each fast path is chosen at build time from PY_VERSION_HEX (a wheel is built per
 * minor version, so the layout compiled in is the one it runs on), checked at import
 * against the public API on sample objects (ds_pyver_check, called by _codec.pyx), and
 * falls back to a portable path through the public C API when the check fails, when no
 * layout is known for the version being built, or when a test asks for it
 * (ds_pyver_set_fast). The portable paths are what any other CPython runs. Included
 * by _codec.pyx and _buffer.pyx (revisions); each module runs its own import check, and
 * the functions are static inline so a module that uses few of them compiles cleanly.
 *
 *   ints   3.11: ob_digit and Py_SIZE (30-bit digits), up to two digits inline.
 *          3.12, 3.13: PyUnstable_Long_IsCompact / CompactValue (one digit inline).
 *          portable: PyLong_AsLongLongAndOverflow.
 *   dicts  3.11, 3.12, 3.13 (not free-threaded): the entry array of a combined dict
 *          with str keys, read after the index table (Include/internal/pycore_dict.h).
 *          portable: PyDict_Next.
 */
#ifndef DS_PYVER_H
#define DS_PYVER_H

#include <Python.h>

/* --- ints ------------------------------------------------------------------------------ */

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000 && PYLONG_BITS_IN_DIGIT == 30
#define DS_LONG_DIGITS 1  /* 3.11: sign in ob_size, 30-bit digits in ob_digit */
#elif PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x030E0000
#define DS_LONG_COMPACT 1 /* 3.12, 3.13: the unstable API's compact values */
#endif

/* 0: the portable path only (the import check failed, or a test asked for it). */
static int ds_long_fast = 1;

/* The value of an exact int (the caller checked PyLong_CheckExact) as a long long: 1 and
   *out set, or 0 when it does not fit (then the caller takes its general path). */
static inline int ds_small_long(PyObject* v, long long* out) {
    int overflow;
    long long x;
#if defined(DS_LONG_DIGITS)
    if (ds_long_fast) {
        Py_ssize_t size = Py_SIZE(v);
        const digit* d = ((PyLongObject*)v)->ob_digit;
        switch (size) {
        case 0: *out = 0; return 1;
        case 1: *out = (long long)d[0]; return 1;
        case -1: *out = -(long long)d[0]; return 1;
        case 2: *out = (long long)d[0] | ((long long)d[1] << 30); return 1;
        case -2: *out = -((long long)d[0] | ((long long)d[1] << 30)); return 1;
        default: break;
        }
    }
#elif defined(DS_LONG_COMPACT)
    if (ds_long_fast && PyUnstable_Long_IsCompact((PyLongObject*)v)) {
        *out = (long long)PyUnstable_Long_CompactValue((PyLongObject*)v);
        return 1;
    }
#endif
    /* an exact int cannot fail here: out of range is overflow, never an exception */
    x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow) return 0;
    *out = x;
    return 1;
}

/* The value of an exact int within [lo, hi]: 1 and *out set, else 0. The encoder's
   inner loop calls this per int field: the layout reads are repeated here (one-digit
   values first) rather than shared with ds_small_long, which costs a few instructions a
   field on 3.11. */
static inline int ds_int_in(PyObject* v, long long lo, long long hi, long long* out) {
    long long x;
    int overflow;
    if (Py_TYPE(v) != &PyLong_Type) return 0;
#if defined(DS_LONG_DIGITS)
    if (ds_long_fast) {
        Py_ssize_t size = Py_SIZE(v);
        const digit* d = ((PyLongObject*)v)->ob_digit;
        if (size == 1) x = (long long)d[0];
        else if (size == 0) x = 0;
        else if (size == -1) x = -(long long)d[0];
        else if (size == 2) x = (long long)d[0] | ((long long)d[1] << 30);
        else if (size == -2) x = -((long long)d[0] | ((long long)d[1] << 30));
        else goto api;
        goto check;
    }
#elif defined(DS_LONG_COMPACT)
    if (ds_long_fast && PyUnstable_Long_IsCompact((PyLongObject*)v)) {
        x = (long long)PyUnstable_Long_CompactValue((PyLongObject*)v);
        goto check;
    }
#endif
    goto api;
api:
    x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow) return 0;
check:
    if (x < lo || x > hi) return 0;
    *out = x;
    return 1;
}

/* --- dicts ----------------------------------------------------------------------------- */

typedef struct { PyObject* me_key; PyObject* me_value; } ds_ukentry;

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
#define DS_DICT_LAYOUT 1
/* struct _dictkeysobject of 3.11, 3.12 and 3.13 (the same fields in all three). */
typedef struct {
    Py_ssize_t dk_refcnt;
    uint8_t dk_log2_size;
    uint8_t dk_log2_index_bytes;
    uint8_t dk_kind;
    uint32_t dk_version;
    Py_ssize_t dk_usable;
    Py_ssize_t dk_nentries;
    char dk_indices[];
} ds_dictkeys;
#define DS_DICT_KEYS_UNICODE 1
#endif

/* Set by ds_pyver_check when the layout above reads what PyDict_Next reads. */
static int ds_dict_fast = 0;

/* The entry array of a combined dict with str keys (every literal dict) and its length
   (deleted entries have a NULL value), or NULL when the dict is not one, or on the
   portable path: then the caller walks it with PyDict_Next (ds_entry_slow). Re-read on
   every call: encoding may run Python code that mutates the dict. */
static inline ds_ukentry* ds_dict_entries(PyObject* d, Py_ssize_t* n) {
#if defined(DS_DICT_LAYOUT)
    PyDictObject* mp = (PyDictObject*)d;
    if (ds_dict_fast && mp->ma_values == NULL) {
        ds_dictkeys* dk = (ds_dictkeys*)mp->ma_keys;
        if (dk->dk_kind == DS_DICT_KEYS_UNICODE) {
            *n = dk->dk_nentries;
            return (ds_ukentry*)(dk->dk_indices + ((size_t)1 << dk->dk_log2_index_bytes));
        }
    }
#endif
    (void)d;
    *n = 0;
    return NULL;
}

/* PyDict_Next, through the entry array when ds_dict_entries gives one. */
static inline int ds_dict_next(PyObject* d, Py_ssize_t* pos, PyObject** k, PyObject** v) {
    Py_ssize_t n, i = *pos;
    ds_ukentry* e = ds_dict_entries(d, &n);
    if (e == NULL) return PyDict_Next(d, pos, k, v);
    if (i < 0) return 0;
    while (i < n && e[i].me_value == NULL) i++;
    if (i >= n) return 0;
    *pos = i + 1;
    *k = e[i].me_key;
    *v = e[i].me_value;
    return 1;
}

/* Entry p of a dict through PyDict_Next (when ds_dict_entries gives no array): its key
   and value, or NULLs when it is not there (a deleted entry, the end, another order). */
static inline ds_ukentry ds_entry_slow(PyObject* d, Py_ssize_t p) {
    ds_ukentry r = {NULL, NULL};
    Py_ssize_t q = p;
    PyObject *k, *v;
    if (PyDict_Next(d, &q, &k, &v) && q == p + 1) {
        r.me_key = k;
        r.me_value = v;
    }
    return r;
}

/* --- decoded records (ds_codec.h) ------------------------------------------------------ */

/* 3.11, 3.12, 3.13 (not free-threaded): a namedtuple instance of n items is a block of
   the same size and header (a GC head, no dict or weakref pre-header) whatever its type,
   so the codec keeps freed ones on a free list per size and reuses them for any of its
   record types (ds_rec_*). ds_rec_register checks each type's slots at run time; other
   versions build every record with tp_alloc and free it as CPython does. */
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
#define DS_RECORD_FREELIST 1
#endif

/* --- bytes subclasses ------------------------------------------------------------------ */

/* A bytes-subclass instance (MacAddress) holding p[0:n], as bytes.__new__ builds it. */
static inline PyObject* ds_bytes_sub(PyObject* type, const char* p, Py_ssize_t n) {
#if PY_VERSION_HEX < 0x030E0000  /* PyBytesObject has ob_shash through 3.13 */
    PyBytesObject* o = (PyBytesObject*)((PyTypeObject*)type)->tp_alloc((PyTypeObject*)type, n);
    if (!o) return NULL;
    /* the cached hash must read "not computed" (bytes_subtype_new does the same) */
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
    o->ob_shash = -1;
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
    memcpy(o->ob_sval, p, n);
    o->ob_sval[n] = 0;
    return (PyObject*)o;
#else
    PyObject* b = PyBytes_FromStringAndSize(p, n);
    PyObject* r;
    if (!b) return NULL;
    r = PyObject_CallMethod((PyObject*)&PyBytes_Type, "__new__", "OO", type, b);
    Py_DECREF(b);
    return r;
#endif
}

/* --- big ints to and from wire bytes --------------------------------------------------- */

static inline PyObject* ds_long_from_be(const unsigned char* p, size_t n) {
    size_t i;
    /* 3.11's _PyLong_FromByteArray reads an unset digit for 0 (harmless, multiplied by a
       zero size, but memcheck reports it): take the small-int path instead */
    for (i = 0; i < n && p[i] == 0; i++) {}
    if (i == n) return PyLong_FromLong(0);
    return _PyLong_FromByteArray(p, n, 0, 0);
}
static inline int ds_long_to_be(PyObject* v, unsigned char* p, size_t n) {
#if PY_VERSION_HEX >= 0x030D0000
    return _PyLong_AsByteArray((PyLongObject*)v, p, n, 0, 0, 1);
#else
    return _PyLong_AsByteArray((PyLongObject*)v, p, n, 0, 0);
#endif
}

/* --- the import check ------------------------------------------------------------------ */

/* Turns each fast path on only if it reads what the public API reads: the dict walk
   against PyDict_Next on a sample dict (with a deleted entry), ints against
   PyLong_AsLongLongAndOverflow on values around the digit boundaries. */
static inline void ds_pyver_check(PyObject* sample_dict, PyObject* sample_ints) {
    Py_ssize_t p1 = 0, p2 = 0, i;
    PyObject *k1, *v1, *k2, *v2;
    int r1, r2, overflow;
    long long a, b;
#if defined(DS_DICT_LAYOUT)
    ds_dict_fast = 1;
    for (;;) {
        r1 = ds_dict_next(sample_dict, &p1, &k1, &v1);
        r2 = PyDict_Next(sample_dict, &p2, &k2, &v2);
        if (r1 != r2 || (r1 && (k1 != k2 || v1 != v2 || p1 != p2))) {
            ds_dict_fast = 0;
            break;
        }
        if (!r1) break;
    }
#else
    (void)sample_dict; (void)p1; (void)p2; (void)k1; (void)v1; (void)k2; (void)v2;
    (void)r1; (void)r2;
#endif
    for (i = 0; ds_long_fast && i < PyList_GET_SIZE(sample_ints); i++) {
        PyObject* v = PyList_GET_ITEM(sample_ints, i);
        int got = ds_small_long(v, &a);
        b = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (got ? (overflow || a != b) : !overflow) ds_long_fast = 0;
    }
    PyErr_Clear();
}

/* Which fast paths are on, as {"ints": 0/1, "dicts": 0/1}; for tests, which also force
   the portable paths with on = 0 (on = 1 runs the import check again). */
static inline PyObject* ds_pyver_set_fast(int on, PyObject* sample_dict, PyObject* sample_ints) {
    if (on < 0) {
        /* only asking */
    } else if (on) {
        ds_long_fast = 1;
        ds_pyver_check(sample_dict, sample_ints);
    } else {
        ds_long_fast = 0;
        ds_dict_fast = 0;
    }
    return Py_BuildValue("{s:i,s:i}", "ints", ds_long_fast, "dicts", ds_dict_fast);
}

#endif /* DS_PYVER_H */
