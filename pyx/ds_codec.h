/* C helpers of the compiled codec (pyx/_codec.pyx, datasync._codec_c): object
 * construction without __init__, big-endian loads and stores, ASCII text in place, the
 * METH_FASTCALL encode() shim, the decoded-prefix cache and text parsers. What depends
 * on one CPython version's internals is in ds_pyver.h. Names are declared for Cython in
 * the `cdef extern from "ds_codec.h"` block of _codec.pyx.
 */
#ifndef DS_CODEC_H
#define DS_CODEC_H

#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#include "ds_pyver.h"

/* --- decoded records -------------------------------------------------------------------
   Each decoded struct is a namedtuple instance; allocating and freeing them is most of a
   decode (PyType_GenericAlloc, then subtype_dealloc + tupledealloc, each with the GC
   bookkeeping and, on 3.12+, a thread-state lookup for the trashcan). Two things make it
   cheaper:

   - a record whose fields are all atomic (ints, bools, floats, text, bytes, MACs) cannot
     be part of a reference cycle, so it is not tracked by the GC (CPython untracks such
     tuples too, lazily);
   - where DS_RECORD_FREELIST is compiled in (ds_pyver.h), the codec's namedtuple types get
     their own tp_dealloc (ds_rec_dealloc, installed by ds_rec_register after checking the
     type's slots), which keeps freed records on a free list per size that ds_record_new
     takes from. It frees exactly what subtype_dealloc + tupledealloc free for such a
     type (its items and its type reference; the types have no dict, weakrefs, finalizer
     or slots), and an untracked record skips the trashcan: its items are atomic, so
     freeing it cannot recurse (nor, up to a small depth, does a tracked one, see
     ds_rec_dealloc). A subclass defined in Python reaches it through
     subtype_dealloc, as its base's tp_dealloc, and is freed the ordinary way.
*/
#define DS_REC_MAXN 40   /* records of up to this many fields are kept */
#define DS_REC_KEEP 64   /* per size */
static int ds_rec_fast = 0;  /* free list on: ds_rec_register works (set by the import check) */
#if defined(DS_RECORD_FREELIST)
static PyObject* ds_rec_free[DS_REC_MAXN + 1][DS_REC_KEEP];
static int ds_rec_nfree[DS_REC_MAXN + 1];
#endif

/* Py_XDECREF, always inlined (GCC keeps 3.13's out of line in the record frees). */
static inline __attribute__((always_inline)) void ds_xdecref(PyObject* v) {
#if defined(Py_REF_DEBUG)
    Py_XDECREF(v);  /* a debug build counts every decref */
    return;
#endif
    if (v == NULL) return;
#if PY_VERSION_HEX >= 0x030C0000 && !defined(Py_GIL_DISABLED)
    if (_Py_IsImmortal(v)) return;
#endif
    if (--v->ob_refcnt == 0) _Py_Dealloc(v);
}
static void ds_rec_dealloc(PyObject* o);
#define DS_REC_DEPTH 20
static int ds_rec_depth = 0;  /* ds_rec_dealloc calls under way without the trashcan */

/* Lists of decoded arrays, kept when the record holding them is freed (where the free
   list is on): a list the dying record held the only reference to is emptied (its
   items released as list_dealloc releases them) and kept, still tracked, with its item
   array (up to DS_LIST_ALLOC slots) for the next decoded array of at most that many
   elements (ds_list_new). PyList_New and list_dealloc each cost a thread-state lookup
   or two on 3.12+ (the interpreter's list free list, obmalloc), and two allocations. */
#define DS_LIST_KEEP 16
#define DS_LIST_ALLOC 64
#if defined(DS_RECORD_FREELIST)
static PyObject* ds_list_free[DS_LIST_KEEP];
static int ds_list_nfree = 0;
#endif
/* An item of a kept list released: a record of the codec's own type that only the list
   held, untracked (atomic items: releasing them runs no code), goes onto the free list
   here, as ds_rec_dealloc's first case would put it, without the call through
   _Py_Dealloc; anything else is released as usual. */
static inline void ds_item_drop(PyObject* x) {
#if defined(DS_RECORD_FREELIST)
    PyTypeObject* tp;
    Py_ssize_t k;
    if (x && Py_REFCNT(x) == 1 && (tp = Py_TYPE(x))->tp_dealloc == ds_rec_dealloc
        && tp->tp_finalize == NULL && ((const uintptr_t*)x)[-2] == 0
        && (k = Py_SIZE(x)) <= DS_REC_MAXN && ds_rec_nfree[k] < DS_REC_KEEP) {
        PyObject** it = ((PyTupleObject*)x)->ob_item;
        while (--k >= 0) ds_xdecref(it[k]);
        k = Py_SIZE(x);
        Py_SET_TYPE(x, &PyTuple_Type);
        ds_rec_free[k][ds_rec_nfree[k]++] = x;
        Py_DECREF(tp);
        return;
    }
#endif
    Py_XDECREF(x);
}
/* An item of a record of the codec's being freed: released, a list as above. */
static inline void ds_rec_drop(PyObject* v) {
#if defined(DS_RECORD_FREELIST)
    if (v && PyList_CheckExact(v) && Py_REFCNT(v) == 1 && ds_list_nfree < DS_LIST_KEEP
        && ((PyListObject*)v)->allocated <= DS_LIST_ALLOC) {
        PyObject** items = ((PyListObject*)v)->ob_item;
        Py_ssize_t n = Py_SIZE(v);
        Py_SET_SIZE(v, 0);  /* it stays tracked: an empty list, referenced from here */
        while (--n >= 0) ds_item_drop(items[n]);
        /* the items' release may have run code (a __del__) that filled the pool */
        if (ds_list_nfree < DS_LIST_KEEP && ((PyListObject*)v)->ob_item == items) {
            ds_list_free[ds_list_nfree++] = v;
        } else {
            Py_DECREF(v);
        }
        return;
    }
#endif
    Py_XDECREF(v);
}
/* A new list of n NULL items (PyList_New). */
static inline PyObject* ds_list_new(Py_ssize_t n) {
#if defined(DS_RECORD_FREELIST)
    if (ds_list_nfree > 0 && n > 0) {
        PyObject* v = ds_list_free[ds_list_nfree - 1];
        if (((PyListObject*)v)->allocated >= n) {
            ds_list_nfree--;
            memset(((PyListObject*)v)->ob_item, 0, (size_t)n * sizeof(PyObject*));
            Py_SET_SIZE(v, n);
            return v;
        }
    }
#endif
    return PyList_New(n);
}

static void ds_rec_release(PyObject* o) {
    /* the memory of a record whose items are released: onto the free list, or freed */
    PyTypeObject* tp = Py_TYPE(o);
#if defined(DS_RECORD_FREELIST)
    Py_ssize_t n = Py_SIZE(o);
    if (ds_rec_fast && tp->tp_dealloc == ds_rec_dealloc && n <= DS_REC_MAXN
        && ds_rec_nfree[n] < DS_REC_KEEP) {
        /* a static type while it waits: the record type may be freed meanwhile */
        Py_SET_TYPE(o, &PyTuple_Type);
        ds_rec_free[n][ds_rec_nfree[n]++] = o;
        Py_DECREF(tp);
        return;
    }
#endif
    tp->tp_free(o);
    Py_DECREF(tp);
}

/* Whether the GC tracks a record of one of the codec's types: with the free list on,
   read from the GC head right before it (its _gc_next is 0 when untracked; 3.11-3.13,
   checked at import against PyObject_GC_IsTracked). */
static inline int ds_rec_tracked(PyObject* o) {
#if defined(DS_RECORD_FREELIST)
    if (ds_rec_fast) return ((const uintptr_t*)o)[-2] != 0;
    return PyObject_GC_IsTracked(o);
#else
    return PyObject_GC_IsTracked(o);
#endif
}

static void ds_rec_dealloc(PyObject* o) {
    Py_ssize_t i = Py_SIZE(o);
    PyObject** items = ((PyTupleObject*)o)->ob_item;
#if defined(DS_RECORD_FREELIST)
    PyTypeObject* tp = Py_TYPE(o);
    if (tp->tp_dealloc == ds_rec_dealloc && tp->tp_finalize == NULL && ds_rec_fast
        && ((const uintptr_t*)o)[-2] == 0) {
        /* the common case, fused: an untracked record of the codec's own type (atomic
           items, no trashcan), onto the free list when there is room */
        while (--i >= 0) ds_xdecref(items[i]);
        i = Py_SIZE(o);
        if (i <= DS_REC_MAXN && ds_rec_nfree[i] < DS_REC_KEEP) {
            Py_SET_TYPE(o, &PyTuple_Type);
            ds_rec_free[i][ds_rec_nfree[i]++] = o;
            Py_DECREF(tp);
            return;
        }
        tp->tp_free(o);
        Py_DECREF(tp);
        return;
    }
#endif
    if (Py_TYPE(o)->tp_finalize != NULL && Py_TYPE(o)->tp_dealloc == ds_rec_dealloc) {
        /* a __del__ a program added to a record type later: run it as subtype_dealloc
           would (it may resurrect the record) */
        if (PyObject_CallFinalizerFromDealloc(o) < 0) return;
    }
    if (Py_TYPE(o)->tp_dealloc == ds_rec_dealloc && !ds_rec_tracked(o)) {
        /* a record of atomic fields (ds_record_new): no trashcan needed */
        while (--i >= 0) Py_XDECREF(items[i]);
        ds_rec_release(o);
        return;
    }
    PyObject_GC_UnTrack(o);
#if defined(DS_RECORD_FREELIST)
    /* Records nest only as deep as the definitions (a few levels): up to DS_REC_DEPTH
       nested frees go without the trashcan, whose thread-state lookup is most of a
       small record's free on 3.12+; deeper ones (records a program nests itself) take
       it. The count is shared by all threads, which the GIL serialises. */
    if (ds_rec_depth < DS_REC_DEPTH) {
        ds_rec_depth++;
        if (ds_rec_fast && Py_TYPE(o)->tp_dealloc == ds_rec_dealloc) {
            while (--i >= 0) ds_rec_drop(items[i]);
        } else {
            while (--i >= 0) Py_XDECREF(items[i]);
        }
        ds_rec_release(o);
        ds_rec_depth--;
        return;
    }
#endif
    Py_TRASHCAN_BEGIN(o, ds_rec_dealloc)
    while (--i >= 0) Py_XDECREF(items[i]);
    ds_rec_release(o);
    Py_TRASHCAN_END
}

/* Install ds_rec_dealloc on a namedtuple type of the codec when its slots are those of
   a plain namedtuple (`like`: tp_dealloc of a namedtuple made for the check); 1 if it
   is installed (or was), 0 if not (its records are then allocated with tp_alloc). */
static int ds_rec_register(PyObject* type, PyObject* like) {
#if defined(DS_RECORD_FREELIST)
    PyTypeObject* t = (PyTypeObject*)type;
    PyTypeObject* ref = (PyTypeObject*)like;
    if (!ds_rec_fast || !PyType_Check(type)) return 0;
    if (t->tp_dealloc == ds_rec_dealloc) return 1;
    if (t->tp_base != &PyTuple_Type || t->tp_dealloc != ref->tp_dealloc
        || !(t->tp_flags & Py_TPFLAGS_HEAPTYPE) || !(t->tp_flags & Py_TPFLAGS_HAVE_GC)
        || (t->tp_flags & ((1UL << 3) | (1UL << 4)))  /* managed weakref / dict */
        || t->tp_basicsize != PyTuple_Type.tp_basicsize
        || t->tp_itemsize != PyTuple_Type.tp_itemsize || t->tp_dictoffset != 0
        || t->tp_weaklistoffset != 0 || t->tp_finalize != NULL || t->tp_del != NULL
        || t->tp_alloc != PyType_GenericAlloc || t->tp_free != PyObject_GC_Del)
        return 0;
    t->tp_dealloc = ds_rec_dealloc;
    return 1;
#else
    (void)type; (void)like;
    return 0;
#endif
}

/* A namedtuple instance of n items, filled by the caller with PyTuple_SET_ITEM (its
   items are NULL until then, unless `filled`: then the caller sets every item, NULL
   where it stops early). `atomic`: every field will be an atomic value, so the record
   is not tracked by the GC. */
static inline PyObject* ds_record_new_x(PyObject* type, Py_ssize_t n, int atomic, int filled) {
    PyTypeObject* t = (PyTypeObject*)type;
    PyObject* o;
#if defined(DS_RECORD_FREELIST)
    if (n <= DS_REC_MAXN && ds_rec_nfree[n] > 0 && t->tp_dealloc == ds_rec_dealloc
        && ds_rec_fast) {
        o = ds_rec_free[n][--ds_rec_nfree[n]];
        /* a new object: clear the GC head's flags (an earlier life's "finalized" bit) */
        ((uintptr_t*)o)[-1] = 0;
        Py_INCREF(t);
        Py_SET_TYPE(o, t);
        Py_SET_REFCNT(o, 1);
        if (!filled) memset(((PyTupleObject*)o)->ob_item, 0, (size_t)n * sizeof(PyObject*));
        if (!atomic) PyObject_GC_Track(o);
        return o;
    }
#endif
    o = t->tp_alloc(t, n);
    if (o && atomic) PyObject_GC_UnTrack(o);
    return o;
}
static PyObject* ds_record_new_gc(PyObject* type, Py_ssize_t n, int atomic) {
    return ds_record_new_x(type, n, atomic, 0);
}

/* The free list emptied (the portable path, for tests) or back on (the import check). */
static int ds_rec_set_fast(int on) {
#if defined(DS_RECORD_FREELIST)
    Py_ssize_t n;
    if (on >= 0 && !on) {
        for (n = 0; n <= DS_REC_MAXN; n++) {
            while (ds_rec_nfree[n] > 0) PyObject_GC_Del(ds_rec_free[n][--ds_rec_nfree[n]]);
        }
        while (ds_list_nfree > 0) Py_DECREF(ds_list_free[--ds_list_nfree]);  /* empty lists */
        ds_rec_fast = 0;
    } else if (on > 0) {
        ds_rec_fast = 1;
    }
    return ds_rec_fast;
#else
    (void)on;
    return 0;
#endif
}
/* An instance without running __init__ (what object.__new__ does). */
static PyObject* ds_alloc(PyObject* type) {
    return ((PyTypeObject*)type)->tp_alloc((PyTypeObject*)type, 0);
}
/* Byte offset of a __slots__ member, from its member descriptor; -1 if it is not one. */
static Py_ssize_t ds_member_offset(PyObject* descr) {
    if (!PyObject_TypeCheck(descr, &PyMemberDescr_Type)) return -1;
    return ((PyMemberDescrObject*)descr)->d_member->offset;
}
static PyObject* ds_slot_get(PyObject* o, Py_ssize_t off) {  /* borrowed, may be NULL */
    return *(PyObject**)((char*)o + off);
}
static void ds_slot_set(PyObject* o, Py_ssize_t off, PyObject* v) {
    PyObject** p = (PyObject**)((char*)o + off);
    PyObject* old = *p;
    Py_INCREF(v);
    *p = v;
    Py_XDECREF(old);
}
/* Big-endian stores and loads of 1, 2, 4 or 8 bytes. */
static inline void ds_put_be(char* p, unsigned long long v, Py_ssize_t size) {
    switch (size) {
    case 1: p[0] = (char)v; break;
    case 2: { uint16_t x = __builtin_bswap16((uint16_t)v); memcpy(p, &x, 2); break; }
    case 4: { uint32_t x = __builtin_bswap32((uint32_t)v); memcpy(p, &x, 4); break; }
    default: { uint64_t x = __builtin_bswap64((uint64_t)v); memcpy(p, &x, 8); break; }
    }
}
static inline unsigned long long ds_get_be(const unsigned char* p, Py_ssize_t size) {
    switch (size) {
    case 1: return p[0];
    case 2: { uint16_t x; memcpy(&x, p, 2); return __builtin_bswap16(x); }
    case 4: { uint32_t x; memcpy(&x, p, 4); return __builtin_bswap32(x); }
    default: { uint64_t x; memcpy(&x, p, 8); return __builtin_bswap64(x); }
    }
}
static inline int ds_is_long(PyObject* o) { return PyLong_CheckExact(o); }
/* The characters of an ASCII str (ds_ascii true): its UTF-8 form, without a call. */
static inline const char* ds_ascii_data(PyObject* o, Py_ssize_t* n) {
    *n = PyUnicode_GET_LENGTH(o);
    return (const char*)PyUnicode_DATA(o);
}
/* Hex digit values (-1: not one), for MAC text. */
static signed char ds_hex[256];
static void ds_init_hex(void) {
    int i;
    for (i = 0; i < 256; i++) ds_hex[i] = -1;
    for (i = 0; i < 10; i++) ds_hex['0' + i] = (signed char)i;
    for (i = 0; i < 6; i++) {
        ds_hex['a' + i] = (signed char)(10 + i);
        ds_hex['A' + i] = (signed char)(10 + i);
    }
}
/* Exact str holding only ASCII: its UTF-8 form is its own data (no encoding, no error). */
static inline int ds_ascii(PyObject* o) {
    return PyUnicode_CheckExact(o) && PyUnicode_IS_ASCII(o);
}

/* ~0 as a u32 is VPP's "no interface / no index" (bvi_sw_if_index, sup_sw_if_index,
   ...), in most dumps: one shared int (ints are immutable values); ds_init_small_ints. */
static PyObject* ds_u32_max;
/* An int field's value as a new reference (NULL on error). */
static inline PyObject* ds_int_new(int kind, unsigned long long u) {
    switch (kind) {
    case 1: return PyLong_FromLong((signed char)u);   /* K_I8 */
    case 3: return PyLong_FromLong((short)u);         /* K_I16 */
    case 5: return PyLong_FromLong((int)u);           /* K_I32 */
    case 7: return PyLong_FromLongLong((long long)u); /* K_I64 */
    default:
        if (u < 0x40000000ULL) return PyLong_FromLong((long)u);
        if (u == 0xFFFFFFFFULL && kind == 4) { Py_INCREF(ds_u32_max); return ds_u32_max; }
        return PyLong_FromUnsignedLongLong(u);
    }
}
/* Text from wire bytes: ASCII (nearly every name and tag) is copied straight into a
   compact str; anything else goes through the UTF-8 decoder with "replace". */
static PyObject* ds_text(const char* p, Py_ssize_t n) {
    Py_ssize_t i;
    PyObject* s;
    for (i = 0; i < n; i++) {
        if ((unsigned char)p[i] >= 0x80) return PyUnicode_DecodeUTF8(p, n, "replace");
    }
    s = PyUnicode_New(n, 127);
    if (!s) return NULL;
    memcpy(PyUnicode_DATA(s), p, n);
    return s;
}

/* encode() as a METH_FASTCALL method: a Cython `def f(..., **kw)` builds a dict on
   every call even when no keyword is given, which is a sizeable part of encoding a
   small message. The shim builds one only when keywords are passed. */
typedef PyObject* (*ds_encode_fn)(PyObject* self, PyObject* msg_id, PyObject* fields,
                                  PyObject* kw);
static ds_encode_fn ds_encode_impl = NULL;
static PyObject* ds_encode_fast(PyObject* self, PyObject* const* args, Py_ssize_t nargs,
                                PyObject* kwnames) {
    PyObject* kw = NULL;
    PyObject* r;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0, i;
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError,
                     "encode() takes 1 or 2 positional arguments (%zd given)", nargs);
        return NULL;
    }
    if (nkw) {
        kw = PyDict_New();
        if (!kw) return NULL;
        for (i = 0; i < nkw; i++) {
            if (PyDict_SetItem(kw, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) {
                Py_DECREF(kw);
                return NULL;
            }
        }
    }
    r = ds_encode_impl(self, args[0], nargs > 1 ? args[1] : Py_None, kw ? kw : Py_None);
    Py_XDECREF(kw);
    return r;
}
static PyMethodDef ds_encode_def = {
    "encode", (PyCFunction)(void (*)(void))ds_encode_fast, METH_FASTCALL | METH_KEYWORDS,
    NULL};
/* Installs def as the method def->ml_name of type, replacing Cython's, with doc. */
static int ds_install_method(PyObject* type, PyMethodDef* def, PyObject* doc) {
    PyObject* descr;
    def->ml_doc = PyUnicode_AsUTF8(doc);  /* doc is kept alive by the module */
    if (!def->ml_doc) return -1;
    descr = PyDescr_NewMethod((PyTypeObject*)type, def);
    if (!descr) return -1;
    if (PyDict_SetItemString(((PyTypeObject*)type)->tp_dict, def->ml_name, descr) < 0) {
        Py_DECREF(descr);
        return -1;
    }
    Py_DECREF(descr);
    PyType_Modified((PyTypeObject*)type);
    return 0;
}
static int ds_install_encode(PyObject* type, PyObject* doc) {
    return ds_install_method(type, &ds_encode_def, doc);
}

/* decode() as a METH_O method, for the same reason (a def method's call goes through
   the cyfunction's argument parsing), and with no exception frame: on 3.12+ a Cython
   `try` costs a thread-state lookup. ds_decode_top decodes a bytes object (NULL with an
   exception set on bad bytes); ds_decode_fail turns that exception into the CodecError
   decode() raises; ds_decode_any takes every other argument (buffers, errors). */
typedef PyObject* (*ds_dec_top_fn)(PyObject* self, const unsigned char* buf, Py_ssize_t end);
typedef PyObject* (*ds_dec_obj_fn)(PyObject* self, PyObject* data);
static ds_dec_top_fn ds_decode_top = NULL;
static ds_dec_obj_fn ds_decode_fail = NULL;
static ds_dec_obj_fn ds_decode_any = NULL;
static PyObject* ds_decode_o(PyObject* self, PyObject* data) {
    PyObject* r;
    if (!PyBytes_CheckExact(data)) return ds_decode_any(self, data);
    r = ds_decode_top(self, (const unsigned char*)PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data));
    if (r) return r;
    return ds_decode_fail(self, data);
}
static PyMethodDef ds_decode_def = {"decode", (PyCFunction)ds_decode_o, METH_O, NULL};
static int ds_install_decode(PyObject* type, PyObject* doc) {
    return ds_install_method(type, &ds_decode_def, doc);
}
/* The exception being raised, taken (a new reference, normalized; NULL if none). */
static PyObject* ds_take_error(void) {
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    if (!t) return NULL;
    PyErr_NormalizeException(&t, &v, &tb);
    if (tb && v) PyException_SetTraceback(v, tb);
    Py_XDECREF(t);
    Py_XDECREF(tb);
    return v;
#endif
}


/* Decoding of "simple" fields (fixed-size ints, bools, f64, bytes, MACs, strings):
   no conversion that can fail, so a run of them needs one bounds check and no
   exception handling. Op numbers as in _codec.pxd (K_U8 = 0 ... K_STR = 11, C_MAC). */
static PyObject* ds_small_ints[256];  /* 0..255, the interpreter's cached ints */
/* On 3.12 and 3.13 (with the GIL) the cached ints, True and False are immortal: a
   reference to one needs no count (Py_INCREF only tests that and returns), so the
   decoders take them without one. ds_init_small_ints checks it (the import fails if
   not: a build for another interpreter's rules). */
#if PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
#define DS_IMMORTAL_INTS 1
#define DS_INCREF_IMM(v) ((void)(v))
#else
#define DS_INCREF_IMM(v) Py_INCREF(v)
#endif
static int ds_init_small_ints(void) {
    int i;
    for (i = 0; i < 256; i++) {
        ds_small_ints[i] = PyLong_FromLong(i);
        if (!ds_small_ints[i]) return -1;
    }
#if defined(DS_IMMORTAL_INTS)
    for (i = 0; i < 256; i++) {
        if (!_Py_IsImmortal(ds_small_ints[i])) break;
    }
    if (i < 256 || !_Py_IsImmortal(Py_True) || !_Py_IsImmortal(Py_False)) {
        PyErr_SetString(PyExc_ImportError, "datasync._codec_c: small ints are not immortal");
        return -1;
    }
#endif
    ds_u32_max = PyLong_FromUnsignedLong(0xFFFFFFFFUL);
    return ds_u32_max ? 0 : -1;
}
/* True when p[0:n] are all zero; n up to 16 with two (overlapping) word loads. */
static inline int ds_all_zero(const unsigned char* p, Py_ssize_t n) {
    uint64_t a, b;
    uint32_t c, d;
    if (n >= 8 && n <= 16) {
        memcpy(&a, p, 8);
        memcpy(&b, p + n - 8, 8);
        return (a | b) == 0;
    }
    if (n >= 4 && n < 8) {
        memcpy(&c, p, 4);
        memcpy(&d, p + n - 4, 4);
        return (c | d) == 0;
    }
    while (n-- > 0) {
        if (*p++) return 0;
    }
    return 1;
}
static inline PyObject* ds_int_obj(int kind, unsigned long long u) {
    long long v;
    switch (kind) {
    case 1: v = (signed char)u; break;
    case 3: v = (short)u; break;
    case 5: v = (int)u; break;
    case 7: v = (long long)u; break;
    default:
        if (u < 256) { DS_INCREF_IMM(ds_small_ints[u]); return ds_small_ints[u]; }
        return ds_int_new(kind, u);
    }
    if (v >= 0 && v < 256) { DS_INCREF_IMM(ds_small_ints[v]); return ds_small_ints[v]; }
    return PyLong_FromLongLong(v);
}
static inline PyObject* ds_fstr(const char* p, Py_ssize_t n, Py_ssize_t size);
/* ds_dec_simple for the commonest kinds first (u32, u8: indexes, flags), without its
   switches on kind and size. */
static inline PyObject* ds_dec_simple(int kind, int conv, Py_ssize_t size,
                                      const unsigned char* p, PyObject* mac_type);
static inline PyObject* ds_dec_simple_fast(int kind, int conv, Py_ssize_t size,
                                           const unsigned char* p, PyObject* mac_type) {
    if (kind == 4) {  /* K_U32 */
        uint32_t x;
        memcpy(&x, p, 4);
        x = __builtin_bswap32(x);
        if (x < 256) { DS_INCREF_IMM(ds_small_ints[x]); return ds_small_ints[x]; }
        return ds_int_new(4, x);
    }
    if (kind == 0) { DS_INCREF_IMM(ds_small_ints[p[0]]); return ds_small_ints[p[0]]; }  /* K_U8 */
    return ds_dec_simple(kind, conv, size, p, mac_type);
}
static PyObject* ds_mac_obj(const unsigned char* p, PyObject* mac_type);
static inline PyObject* ds_dec_simple(int kind, int conv, Py_ssize_t size,
                                      const unsigned char* p, PyObject* mac_type) {
    double d;
    const unsigned char* nul;
    if (kind <= 7) return ds_int_obj(kind, ds_get_be(p, size));
    switch (kind) {
    case 9: { PyObject* b = p[0] ? Py_True : Py_False; DS_INCREF_IMM(b); return b; }
    case 8: memcpy(&d, p, 8); return PyFloat_FromDouble(d);
    case 10:
        if (conv == 10) return ds_mac_obj(p, mac_type);
        return PyBytes_FromStringAndSize((const char*)p, size);
    default:  /* 11: fixed string, up to its first NUL */
        nul = (const unsigned char*)memchr(p, 0, size);
        return ds_fstr((const char*)p, nul ? nul - p : size, size);
    }
}

static inline PyObject** ds_tuple_items(PyObject* t) { return ((PyTupleObject*)t)->ob_item; }
/* Simple fields described by prog[0:n] (kind | conv << 8 | size << 16, see
   ds_flat_fill) from p into it[0:n]: their wire size, or -1 with MemoryError set
   (it[i:n] are then NULL). */
static inline Py_ssize_t ds_fill_fields(PyObject** restrict it, const unsigned int* restrict prog,
                                        Py_ssize_t n, const unsigned char* p, PyObject* mac_type) {
    const unsigned char* q = p;
    Py_ssize_t i;
    for (i = 0; i < n; i++) {
        unsigned int c = prog[i];
        unsigned int kind = c & 0xFF;
        PyObject* v;
        if (kind == 4) {  /* K_U32 */
            uint32_t x;
            memcpy(&x, q, 4);
            x = __builtin_bswap32(x);
            if (x < 256) { v = ds_small_ints[x]; DS_INCREF_IMM(v); }
            else if (!(v = ds_int_new(4, x))) goto fail;
        } else if (kind == 0) {  /* K_U8 */
            v = ds_small_ints[q[0]];
            DS_INCREF_IMM(v);
        } else if (kind == 9) {  /* K_BOOL */
            v = q[0] ? Py_True : Py_False;
            DS_INCREF_IMM(v);
        } else {
            v = ds_dec_simple((int)kind, (int)((c >> 8) & 0xFF), (Py_ssize_t)(c >> 16), q, mac_type);
            if (!v) goto fail;
        }
        it[i] = v;
        q += c >> 16;
    }
    return q - p;
fail:
    for (; i < n; i++) it[i] = NULL;
    return -1;
}

/* The records of an array of flat structs (every field simple, ds_dec_simple's kinds),
   `count` of them from p, esize bytes apart, into out[0:count] (a new list's items).
   prog[i] describes field i: kind | conv << 8 | size << 16 (built with the layout).
   zero_rec (borrowed, or NULL): the shared record of an all-zero element. Returns how
   many it filled: count, or fewer with MemoryError set (out[j:] are then NULL). One
   loop in C with the free list's checks made once: the per-field cost of the general
   loop (reloads of the op through pointers the stores might alias) was most of it. */
static Py_ssize_t ds_flat_fill(PyObject** out, Py_ssize_t count, const unsigned char* p,
                               Py_ssize_t esize, PyObject* type, Py_ssize_t n, int atomic,
                               const unsigned int* prog, PyObject* zero_rec, PyObject* mac_type) {
    PyTypeObject* t = (PyTypeObject*)type;
    Py_ssize_t j;
    int fast = 0;
#if defined(DS_RECORD_FREELIST)
    fast = n <= DS_REC_MAXN && t->tp_dealloc == ds_rec_dealloc && ds_rec_fast && atomic;
#endif
    for (j = 0; j < count; j++, p += esize) {
        PyObject* rec;
        PyObject** it;
        const unsigned char* q = p;
        (void)q;
        if (zero_rec && ds_all_zero(p, esize)) {
            Py_INCREF(zero_rec);
            out[j] = zero_rec;
            continue;
        }
#if defined(DS_RECORD_FREELIST)
        if (fast && ds_rec_nfree[n] > 0) {
            rec = ds_rec_free[n][--ds_rec_nfree[n]];
            ((uintptr_t*)rec)[-1] = 0;  /* as ds_record_new_x */
            Py_INCREF(t);
            Py_SET_TYPE(rec, t);
            Py_SET_REFCNT(rec, 1);
        } else
#endif
        {
            rec = ds_record_new_x(type, n, atomic, 1);
            if (!rec) return j;
        }
        it = ((PyTupleObject*)rec)->ob_item;
        if (ds_fill_fields(it, prog, n, q, mac_type) < 0) {
            Py_DECREF(rec);
            return j;
        }
        out[j] = rec;
    }
    return count;
}

/* Decoded prefixes by wire bytes: a direct-mapped table per conversion (no key object,
   no dict lookup). A slot holds a strong reference until another prefix replaces it. */
#define DS_PCACHE_SLOTS 512
/* The key: the wire bytes (at most 18) as three zero-padded words, compared and hashed
   as words (no byte loop, no memcmp call). */
typedef struct { uint64_t w[3]; } ds_pkey;
typedef struct { PyObject* obj; int conv; int len; ds_pkey key; } ds_pslot;
static ds_pslot ds_pcache[DS_PCACHE_SLOTS];
static inline void ds_pcache_key(const unsigned char* p, Py_ssize_t n, ds_pkey* k) {
    uint32_t x4;
    uint16_t x2;
    k->w[0] = k->w[1] = k->w[2] = 0;
    switch (n) {  /* the sizes of the cached conversions, with fixed-size loads */
    case 18: memcpy(&k->w[0], p, 8); memcpy(&k->w[1], p + 8, 8); memcpy(&x2, p + 16, 2);
             k->w[2] = x2; break;
    case 17: memcpy(&k->w[0], p, 8); memcpy(&k->w[1], p + 8, 8); k->w[2] = p[16]; break;
    case 6: memcpy(&x4, p, 4); memcpy(&x2, p + 4, 2); k->w[0] = x4 | ((uint64_t)x2 << 32); break;
    case 5: memcpy(&x4, p, 4); k->w[0] = x4 | ((uint64_t)p[4] << 32); break;
    default: memcpy(k->w, p, (size_t)(n < 24 ? n : 24)); break;
    }
}
static inline size_t ds_pcache_index(int conv, const ds_pkey* k) {
    uint64_t h = k->w[0] ^ (k->w[1] * 0x9E3779B97F4A7C15ULL) ^ (k->w[2] << 17) ^ (uint64_t)conv;
    h *= 0xFF51AFD7ED558CCDULL;
    h ^= h >> 31;
    return (size_t)(h & (DS_PCACHE_SLOTS - 1));
}
/* Borrowed hit, or NULL. */
static inline PyObject* ds_pcache_get(int conv, const unsigned char* p, Py_ssize_t n) {
    ds_pkey k;
    ds_pslot* s;
    if (n > 18) return NULL;
    ds_pcache_key(p, n, &k);
    s = &ds_pcache[ds_pcache_index(conv, &k)];
    if (s->obj && s->conv == conv && s->len == n && s->key.w[0] == k.w[0]
        && s->key.w[1] == k.w[1] && s->key.w[2] == k.w[2])
        return s->obj;
    return NULL;
}
static inline void ds_pcache_put(int conv, const unsigned char* p, Py_ssize_t n, PyObject* o) {
    ds_pkey k;
    ds_pslot* s;
    PyObject* old;
    if (n > 18) return;
    ds_pcache_key(p, n, &k);
    s = &ds_pcache[ds_pcache_index(conv, &k)];
    old = s->obj;
    Py_INCREF(o);
    s->obj = o;
    s->conv = conv;
    s->len = (int)n;
    s->key = k;
    Py_XDECREF(old);
}
/* A MacAddress (an immutable bytes subclass) from 6 wire bytes, from the same table:
   an interface's MAC, and the all-zero one, come back in every dump. New reference. */
static PyObject* ds_mac_obj(const unsigned char* p, PyObject* mac_type) {
    PyObject* o = ds_pcache_get(10, p, 6);  /* C_MAC */
    if (o) { Py_INCREF(o); return o; }
    o = ds_bytes_sub(mac_type, (const char*)p, 6);
    if (o) ds_pcache_put(10, p, 6, o);
    return o;
}

/* A fixed string's text (its bytes up to the first NUL, n of them) as a new reference.
   Short ones (a bridge domain's tag, an interface's name: up to 16 bytes) come from the
   same table as prefixes and MACs, keyed by their bytes: str is an immutable value, and
   the same tags and names come back in every dump. The empty one is the interpreter's
   own singleton already (PyUnicode_New(0)). */
#define DS_CONV_FSTR 64  /* the table's conversion number for fixed strings */
static inline PyObject* ds_fstr(const char* p, Py_ssize_t n, Py_ssize_t size) {
    PyObject* o;
    PyObject* old;
    ds_pkey k;
    ds_pslot* s;
    if (n == 0 || n > 16) return ds_text(p, n);
    if (size >= 16) {  /* the key by two word loads, masked to the n bytes */
        memcpy(&k.w[0], p, 8);
        memcpy(&k.w[1], p + 8, 8);
        if (n < 8) {
            k.w[0] &= (1ULL << (8 * n)) - 1;
            k.w[1] = 0;
        } else if (n < 16) {
            k.w[1] &= (1ULL << (8 * (n - 8))) - 1;
        }
        k.w[2] = 0;
    } else {
        ds_pcache_key((const unsigned char*)p, n, &k);
    }
    s = &ds_pcache[ds_pcache_index(DS_CONV_FSTR, &k)];
    if (s->obj && s->conv == DS_CONV_FSTR && s->len == n && s->key.w[0] == k.w[0]
        && s->key.w[1] == k.w[1] && s->key.w[2] == k.w[2]) {
        Py_INCREF(s->obj);
        return s->obj;
    }
    o = ds_text(p, n);
    if (!o) return NULL;
    old = s->obj;
    Py_INCREF(o);
    s->obj = o;
    s->conv = DS_CONV_FSTR;
    s->len = (int)n;
    s->key = k;
    Py_XDECREF(old);
    return o;
}

/* 1 for True, 0 for False, -1 for anything else. */
static inline int ds_bool_value(PyObject* o) {
    return o == Py_True ? 1 : (o == Py_False ? 0 : -1);
}
/* Item j of an exact list or tuple (borrowed; the caller checked the type and size). */
static inline PyObject* ds_seq_item(PyObject* seq, Py_ssize_t j) {
    return PyList_CheckExact(seq) ? PyList_GET_ITEM(seq, j) : PyTuple_GET_ITEM(seq, j);
}
/* MAC text "aa:bb:cc:dd:ee:ff" (either case) into out[0:6]: 1, else 0 (out[0:6] then
   holds anything). Errors are collected and checked once (a bad digit is -1). */
static inline int ds_parse_mac(const char* s, Py_ssize_t n, char* out) {
    int i, hi, lo, bad;
    if (n != 17) return 0;
    bad = (s[2] ^ ':') | (s[5] ^ ':') | (s[8] ^ ':') | (s[11] ^ ':') | (s[14] ^ ':');
    for (i = 0; i < 6; i++) {
        hi = ds_hex[(unsigned char)s[3 * i]];
        lo = ds_hex[(unsigned char)s[3 * i + 1]];
        bad |= (hi | lo) & 0x100;
        out[i] = (char)(hi * 16 + lo);
    }
    return bad == 0;
}
/* The item array and size of an exact list or tuple (borrowed), else NULL. */
static inline PyObject** ds_seq_items(PyObject* seq, Py_ssize_t* n) {
    if (PyList_CheckExact(seq)) {
        *n = PyList_GET_SIZE(seq);
        return ((PyListObject*)seq)->ob_item;
    }
    if (PyTuple_CheckExact(seq)) {
        *n = PyTuple_GET_SIZE(seq);
        return ((PyTupleObject*)seq)->ob_item;
    }
    return NULL;
}
/* Dotted-quad IPv4 text as glibc's inet_pton(AF_INET) reads it (four decimal octets,
   no leading zeros): 1 and out[0:4] set, or 0. */
static inline int ds_parse_v4(const char* s, Py_ssize_t n, unsigned char* out) {
    Py_ssize_t i;
    int octets = 0, val = 0, digits = 0;
    for (i = 0; i < n; i++) {
        char c = s[i];
        if (c >= '0' && c <= '9') {
            if (digits && val == 0) return 0;  /* leading zero */
            val = val * 10 + (c - '0');
            if (val > 255) return 0;
            digits++;
        } else if (c == '.' && digits && octets < 3) {
            out[octets++] = (unsigned char)val;
            val = 0;
            digits = 0;
        } else {
            return 0;
        }
    }
    if (!digits || octets != 3) return 0;
    out[3] = (unsigned char)val;
    return 1;
}

#endif /* DS_CODEC_H */
