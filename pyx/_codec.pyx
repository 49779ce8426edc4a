# cython: language_level=3
"""Compiled VPP message codec (``datasync._codec_c``).

Runs the op programs of ``datasync.vpp._codec_plan`` over raw buffers: encoding writes
into a stack buffer (moved to the heap only for big messages) and makes one ``bytes`` at
the end (or, for a fixed-size message on the fast path, fills the ``bytes`` in place); decoding walks a ``(const unsigned char*, length)`` cursor and builds each
namedtuple in place (``tp_alloc`` + ``PyTuple_SET_ITEM``), one Python object per field
value and none per wire byte.

The pure-Python twin ``datasync.vpp._codec_py`` is the readable spec. Anything off the fast
paths (unusual input types, enum names, every error) is handed to the twin's functions,
so results and error messages are the same by construction; a hypothesis test compares
the two on arbitrary input.

Where the time goes, and what is done about it (callgrind, CPython 3.11):

- dict input: keys that come in field order are matched by identity while walking the
  dict (field names are interned, as literal keys are), else one lookup per field; on
  CPython 3.11-3.13 the walk reads the dict's entry array (``ds_dict_next``,
  ``ds_dict_entries`` in ds_pyver.h), elsewhere it uses ``PyDict_Next``; runs of fields of the usual kinds (small ints, bools, fixed
  strings, bytes, MAC / address / prefix text, int arrays) given as the usual types go
  through one loop with no exception frame and a switch per field (``_enc_fast``,
  ``COp.ek``), which hands anything unusual back to the general path; a message whose
  fields are all of such kinds is written straight into its ``bytes`` object when they
  all come that way (``MessageCodec._encode``); arrays of flat structs given as dicts
  (bridge domain members, label stacks) take the same loop per element;
- decoding: runs of fixed-size fields that cannot fail (ints, bools, bytes, MACs, fixed
  strings) take one bounds check per run and no exception frame (``COp.run``); ints
  0-255 are the interpreter's cached objects; arrays of such elements, or of flat structs
  of them, are filled without a call per element (runs and flat structs from a
  per-layout field program, ``_Layout.fprog``, by one C loop: ``ds_fill_fields``,
  ``ds_flat_fill``); on 3.12/3.13 the cached ints, True and False are taken without a
  reference count (immortal, checked at import);
- ints: big-endian through bswap;
- addresses, prefixes, MACs: parsed from text (IPv4 and MACs inline, IPv6 with
  inet_pton) and built as ipaddress objects directly (their ``_ip`` slots); decoded
  prefixes and MACs (immutable values) come from a direct-mapped table keyed by wire bytes,
  and so do fixed strings of 1-16 bytes (``ds_fstr``: tags, interface names);
- decoded records: one of atomic fields only (ints, bools, text, bytes, MACs) is not
  tracked by the GC, and freed records go on a free list per size that the next decode
  takes from (``ds_rec_*`` in ds_codec.h: the codec's namedtuple types get their own
  tp_dealloc, on 3.11-3.13, checked per type and at import); ~0 as a u32 is one shared
  int; a decoded array's list that only its freed record held is emptied and kept (16,
  of up to 64 slots) for the next decoded array (``ds_rec_drop``, ``ds_list_new``);
- records of small all-zero structs (MPLS label stacks) are shared, and an array element
  that is the same object as the one before is encoded once and copied;
- ``encode`` is a METH_FASTCALL method (see ``ds_encode_fast``): a Cython ``**kw``
  signature would build a dict on every call; ``decode`` a METH_O one (``ds_decode_o``)
  with no exception frame (a Cython ``try`` costs a thread-state lookup on 3.12+).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.object cimport PyObject
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy, memset

from _codec cimport (
    AF_INET,
    AF_INET6,
    C_ADDRESS,
    C_AWP,
    C_IP4,
    C_IP4_AWP,
    C_IP4_PREFIX,
    C_IP6,
    C_IP6_AWP,
    C_IP6_PREFIX,
    C_MAC,
    C_NONE,
    C_PREFIX,
    EK_BOOL,
    EK_BYTES,
    EK_CONV,
    EK_F64,
    EK_I1,
    EK_I2,
    EK_I4,
    EK_I8,
    EK_IARR,
    EK_ICNT,
    EK_NONE,
    EK_STR,
    K_ARRAY,
    K_BOOL,
    K_BYTES,
    K_F64,
    K_I8,
    K_I16,
    K_I32,
    K_I64,
    K_LBYTES,
    K_LVLA,
    K_STR,
    K_STRUCT,
    K_U8,
    K_U16,
    K_U32,
    K_U64,
    K_UNION,
    K_VBYTES,
    K_VLA,
    K_VSTR,
    COp,
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
    PyDict_CheckExact,
    PyDict_GetItem,
    PyFloat_AS_DOUBLE,
    PyFloat_AsDouble,
    PyFloat_CheckExact,
    PyFloat_FromDouble,
    PyList_CheckExact,
    PyList_New,
    PyList_SET_ITEM,
    PyLong_AsLongLongAndOverflow,
    PyLong_AsUnsignedLongLong,
    PyLong_Check,
    PyLong_FromLongLong,
    PyLong_FromUnsignedLongLong,
    PyTuple_Check,
    PyTuple_CheckExact,
    PyTuple_SET_ITEM,
    PyUnicode_AsUTF8AndSize,
    PyUnicode_CheckExact,
    PyUnicode_DecodeUTF8,
    Py_INCREF,
    PyDict_GetItemWithError,
    PyLong_CheckExact,
    WBuf,
    inet_pton,
)

from collections.abc import Mapping

from datasync.vpp import _codec_plan as _plan
from datasync.vpp._codec_plan import DECODERS as _DECODERS
from datasync.vpp._codec_plan import INT_RANGE as _INT_RANGE
from datasync.vpp._codec_plan import (
    FieldError,
    MacAddress,
    check_names,
    check_prefix_len,
    is_record,
)
from datasync.vpp._codec_py import _encode_int as _py_encode_int
from datasync.vpp._codec_py import _encode_op as _py_encode_op
from datasync.vpp._codec_py import _encode_vla as _py_encode_vla
from datasync.vpp._codec_py import MessageCodec as _PyMessageCodec
from datasync.vpp.defs import CodecError

__all__ = ["MessageCodec", "peek_msg_id"]

#: the op-kind and conversion numbers compiled in (a test compares them with _codec_plan)
CONSTANTS = {
    "K_U8": K_U8, "K_I8": K_I8, "K_U16": K_U16, "K_I16": K_I16, "K_U32": K_U32,
    "K_I32": K_I32, "K_U64": K_U64, "K_I64": K_I64, "K_F64": K_F64, "K_BOOL": K_BOOL,
    "K_BYTES": K_BYTES, "K_STR": K_STR, "K_VSTR": K_VSTR, "K_VBYTES": K_VBYTES,
    "K_LBYTES": K_LBYTES, "K_STRUCT": K_STRUCT, "K_UNION": K_UNION, "K_ARRAY": K_ARRAY,
    "K_VLA": K_VLA, "K_LVLA": K_LVLA,
    "C_NONE": C_NONE, "C_IP4": C_IP4, "C_IP6": C_IP6, "C_ADDRESS": C_ADDRESS,
    "C_PREFIX": C_PREFIX, "C_AWP": C_AWP, "C_IP4_PREFIX": C_IP4_PREFIX,
    "C_IP6_PREFIX": C_IP6_PREFIX, "C_IP4_AWP": C_IP4_AWP, "C_IP6_AWP": C_IP6_AWP,
    "C_MAC": C_MAC,
}

# The C lives in headers beside this file: ds_codec.h, and ds_pyver.h for what depends
# on one CPython version's internals (chosen at build time, checked at import below).
cdef extern from "ds_codec.h":
    int ds_init_small_ints() except -1
    PyObject* ds_seq_item(object seq, Py_ssize_t j) noexcept
    int ds_bool_value(PyObject* o) noexcept
    int ds_parse_v4(const char* s, Py_ssize_t n, unsigned char* out) noexcept
    PyObject* ds_pcache_get(int conv, const unsigned char* p, Py_ssize_t n) noexcept
    object ds_mac_obj(const unsigned char* p, object mac_type)
    void ds_pcache_put(int conv, const unsigned char* p, Py_ssize_t n, object o) noexcept
    int ds_dict_next(object d, Py_ssize_t* pos, PyObject** key, PyObject** value) noexcept
    ctypedef struct ds_ukentry:
        PyObject* me_key
        PyObject* me_value
    ds_ukentry* ds_dict_entries(object d, Py_ssize_t* n) noexcept
    ds_ukentry ds_entry_slow(object d, Py_ssize_t p) noexcept
    int ds_int_in(PyObject* v, long long lo, long long hi, long long* out) noexcept
    int ds_parse_mac(const char* s, Py_ssize_t n, char* out) noexcept
    PyObject** ds_seq_items(PyObject* seq, Py_ssize_t* n) noexcept
    void ds_pyver_check(object sample_dict, object sample_ints) noexcept
    object ds_pyver_set_fast(int on, object sample_dict, object sample_ints)
    PyObject* ds_dec_simple(int kind, int conv, Py_ssize_t size, const unsigned char* p, PyObject* mac_type) noexcept
    PyObject* ds_dec_simple_fast(int kind, int conv, Py_ssize_t size, const unsigned char* p, PyObject* mac_type) noexcept
    object ds_record_new_gc(object type, Py_ssize_t n, int atomic)
    PyObject* ds_record_new_x(PyObject* type, Py_ssize_t n, int atomic, int filled) noexcept
    void ds_decref "Py_DECREF"(PyObject* o) noexcept
    void ds_tuple_set "PyTuple_SET_ITEM"(PyObject* t, Py_ssize_t i, PyObject* v) noexcept
    int ds_rec_register(object type, object like) noexcept
    int ds_rec_set_fast(int on) noexcept
    int ds_rec_tracked(PyObject* o) noexcept
    bint ds_all_zero(const unsigned char* p, Py_ssize_t n) noexcept
    int PyObject_GC_IsTracked(object o)
    object ds_alloc(object type)
    Py_ssize_t ds_member_offset(object descr)
    PyObject* ds_slot_get(object o, Py_ssize_t off)
    void ds_slot_set(object o, Py_ssize_t off, object v)
    object ds_long_from_be(const unsigned char* p, size_t n)
    void ds_put_be(char* p, unsigned long long v, Py_ssize_t size) noexcept
    unsigned long long ds_get_be(const unsigned char* p, Py_ssize_t size) noexcept
    int ds_small_long(PyObject* v, long long* out) noexcept
    const char* ds_ascii_data(object o, Py_ssize_t* n) noexcept
    void ds_init_hex() noexcept
    bint ds_is_long(PyObject* o) noexcept
    bint ds_ascii(object o) noexcept
    PyObject* ds_int_new(int kind, unsigned long long u)
    object ds_text(const char* p, Py_ssize_t n)
    object ds_fstr(const char* p, Py_ssize_t n, Py_ssize_t size)
    ctypedef object (*ds_encode_fn)(object self, object msg_id, object fields, object kw)
    ds_encode_fn ds_encode_impl
    int ds_install_encode(object type, object doc) except -1
    ctypedef object (*ds_dec_top_fn)(object self, const unsigned char* buf, Py_ssize_t end)
    ctypedef object (*ds_dec_obj_fn)(object self, object data)
    ds_dec_top_fn ds_decode_top
    ds_dec_obj_fn ds_decode_fail
    ds_dec_obj_fn ds_decode_any
    int ds_install_decode(object type, object doc) except -1
    object ds_list_new(Py_ssize_t n)
    PyObject** ds_tuple_items(object t) noexcept
    Py_ssize_t ds_fill_fields(PyObject** it, const unsigned int* prog, Py_ssize_t n,
                              const unsigned char* p, PyObject* mac_type) except -1
    ctypedef struct PyListObject:
        PyObject** ob_item
    Py_ssize_t ds_flat_fill(PyObject** out, Py_ssize_t count, const unsigned char* p,
                            Py_ssize_t esize, PyObject* type, Py_ssize_t n, int atomic,
                            const unsigned int* prog, PyObject* zero_rec, PyObject* mac_type) noexcept
    PyObject* ds_take_error() noexcept
    int ds_long_to_be(object v, unsigned char* p, size_t n) except -1
    object ds_bytes_sub(object type, const char* p, Py_ssize_t n)
    PyObject* PyTuple_GET_ITEM(object t, Py_ssize_t i)
    const Py_ssize_t PY_SSIZE_T_MAX
    Py_ssize_t PyDict_GET_SIZE(object d)
    int PyDict_Next(object d, Py_ssize_t* pos, PyObject** key, PyObject** value)


import ipaddress as _ipaddress

cdef object _V4A = _ipaddress.IPv4Address
cdef object _V6A = _ipaddress.IPv6Address
cdef object _V4N = _ipaddress.IPv4Network
cdef object _V6N = _ipaddress.IPv6Network
cdef object _V4I = _ipaddress.IPv4Interface
cdef object _V6I = _ipaddress.IPv6Interface
# ipaddress keeps the address as an int in the `_ip` slot (and `_scope_id` for IPv6): the
# same private attributes _codec_plan's fast constructors set; a test compares with the
# real constructors.
cdef Py_ssize_t _OFF_IP4 = ds_member_offset(_V4A.__dict__["_ip"])
cdef Py_ssize_t _OFF_IP6 = ds_member_offset(_V6A.__dict__["_ip"])
cdef Py_ssize_t _OFF_SCOPE6 = ds_member_offset(_V6A.__dict__["_scope_id"])
if _OFF_IP4 < 0 or _OFF_IP6 < 0 or _OFF_SCOPE6 < 0:
    raise ImportError("datasync._codec_c: unexpected ipaddress layout")
# All-zero wire bytes: records of small structs decoded from them are shared (below).
ds_init_small_ints()
ds_init_hex()
# The import check of ds_pyver.h's fast paths: a dict with a deleted entry, and ints around
# the digit boundaries of every layout (30-bit digits, compact values, long long).
cdef object _SAMPLE_DICT = {"a": 1, "b": 2, "c": 3, "d": 4}
del _SAMPLE_DICT["b"]
_SAMPLE_DICT["e"] = 5
cdef list _SAMPLE_INTS = [
    0, 1, -1, 255, 2**30 - 1, 2**30, -(2**30), 2**32 - 1, -(2**31), 2**60 - 1, 2**60, -(2**60),
    2**63 - 1, -(2**63), 2**63, 2**64 - 1, 2**100, -(2**100),
]
ds_pyver_check(_SAMPLE_DICT, _SAMPLE_INTS)


# The record free list (ds_codec.h): on where it is compiled in and a plain namedtuple
# type passes ds_rec_register's check, and a record freed and allocated again comes back
# from the list as a record of the new type with NULL items.
import collections as _collections

cdef object _PLAIN_REC = _collections.namedtuple("_plain_record", ["a"])  # never registered
cdef object _SAMPLE_REC = _collections.namedtuple("_sample_record", ["a", "b"])
cdef object _SAMPLE_REC2 = _collections.namedtuple("_sample_record2", ["c", "d"])


cdef int _records_check() except -1:
    cdef object r
    if not ds_rec_set_fast(1):
        return 0
    if not (ds_rec_register(_SAMPLE_REC, _PLAIN_REC) and ds_rec_register(_SAMPLE_REC2, _PLAIN_REC)):
        ds_rec_set_fast(0)
        return 0
    r = ds_record_new_gc(_SAMPLE_REC, 2, 1)
    t = _SAMPLE_REC(None, None)
    if ds_rec_tracked(<PyObject*>r) or PyObject_GC_IsTracked(r) or not (
        ds_rec_tracked(<PyObject*>t) and PyObject_GC_IsTracked(t)
    ):
        ds_rec_set_fast(0)  # the GC head is not where ds_rec_tracked reads it
    PyTuple_SET_ITEM(r, 0, <PyObject*>None)
    Py_INCREF(<PyObject*>None)
    PyTuple_SET_ITEM(r, 1, <PyObject*>None)
    Py_INCREF(<PyObject*>None)
    first = id(r)
    r = None  # onto the free list
    r = ds_record_new_gc(_SAMPLE_REC2, 2, 0)
    if (
        id(r) != first or type(r) is not _SAMPLE_REC2 or PyTuple_GET_ITEM(r, 0) != NULL
        or PyTuple_GET_ITEM(r, 1) != NULL
    ):
        ds_rec_set_fast(0)
    PyTuple_SET_ITEM(r, 0, <PyObject*>None)
    Py_INCREF(<PyObject*>None)
    PyTuple_SET_ITEM(r, 1, <PyObject*>None)
    Py_INCREF(<PyObject*>None)
    return 0


_records_check()


def _fast_paths(on=None):
    """Which of the interpreter-specific fast paths are on, as ``{"ints": 0|1, "dicts":
    0|1, "records": 0|1}`` (ds_pyver.h; records: ds_codec.h's free list). For tests:
    ``on=False`` forces the portable paths (public C API only), ``on=True`` runs the
    import checks again."""
    paths = ds_pyver_set_fast(-1 if on is None else (1 if on else 0), _SAMPLE_DICT, _SAMPLE_INTS)
    if on is None:
        paths["records"] = ds_rec_set_fast(-1)
    elif on:
        _records_check()
        paths["records"] = ds_rec_set_fast(-1)
    else:
        paths["records"] = ds_rec_set_fast(0)
    return paths
cdef object _MAC_TYPE = MacAddress  # a C global: a module-dict lookup per field costs
cdef unsigned char _ZEROS[256]
memset(_ZEROS, 0, sizeof(_ZEROS))
# Decoded prefixes are cached by wire bytes (ds_pcache_*): networks and interfaces are
# values, and the same few come back in every dump; building one costs ~10x a lookup.
cdef list _NETMASKS4 = [None] * 33
cdef list _NETMASKS6 = [None] * 129
cdef object _S_NETWORK_ADDRESS = "network_address"
cdef object _S_NETMASK = "netmask"
cdef object _S_PREFIXLEN = "_prefixlen"
cdef object _S_NETWORK = "network"


cdef object _DECODE_ERRORS = (TypeError, ValueError, OverflowError, OSError)


# --- compiled programs ---------------------------------------------------------------------


cdef class _Layout:
    """A compiled struct, union, message, or a one-op holder of an array element."""

    cdef COp* ops
    cdef Py_ssize_t n
    cdef Py_ssize_t skip
    cdef Py_ssize_t fixed_size
    cdef bint is_union
    cdef Py_ssize_t big_arm  # unions: the first of the biggest arms
    cdef bint shareable  # decodes to an immutable record that may be shared (see _dec_struct)
    cdef Py_ssize_t flat_size  # > 0: only int and bool fields, this many bytes (_enc_flat_dict)
    cdef bint all_fast  # messages: _enc_fast takes every field (see MessageCodec._encode)
    cdef bint atomic  # every field decodes to an atomic value: records are not GC-tracked
    cdef object zero_rec  # the record of all-zero bytes, once decoded
    cdef unsigned int* fprog  # flat structs: kind | conv << 8 | size << 16 a field (ds_flat_fill)
    cdef object tuple_type
    cdef object plan
    cdef dict index
    cdef list keep

    def __dealloc__(self):
        free(self.ops)
        free(self.fprog)


cdef _Layout _new_layout(Py_ssize_t n):
    cdef _Layout L = _Layout.__new__(_Layout)
    L.ops = <COp*>calloc(n if n > 0 else 1, sizeof(COp))
    if L.ops == NULL:
        raise MemoryError()
    L.n = n
    L.keep = []
    return L


cdef _Layout _build(object pl, dict memo):
    cdef _Layout L = memo.get(id(pl))
    if L is not None:
        return L
    L = _new_layout(len(pl.ops))
    memo[id(pl)] = L
    L.keep.append(pl)  # keeps memo ids valid while the program lives
    L.skip = pl.skip
    L.fixed_size = pl.fixed_size
    L.is_union = pl.is_union
    L.tuple_type = pl.tuple_type
    L.plan = pl
    L.index = dict(pl.index)
    for i, op in enumerate(pl.ops):
        _fill(&L.ops[i], op, L, memo)
    if pl.is_union and pl.ops:
        L.big_arm = max(range(len(pl.ops)), key=lambda j: (pl.ops[j].size, -j))
    if not pl.is_union:
        _set_runs(L)
        L.flat_size = _flat_size(L)
        _set_fruns(L)
        L.all_fast = 2 <= L.fixed_size and L.n <= 64 and L.skip >= 1 and all(
            L.ops[i].ek != EK_NONE for i in range(L.skip, L.n)
        )
    L.atomic = L.n > 0 and all(_op_simple(&L.ops[i]) for i in range(L.n))
    if not L.is_union and L.n > 0 and all(
        L.ops[i].size < 0x10000 or not L.ops[i].run for i in range(L.n)
    ):
        # the simple ops (runs) of any struct; other ops' entries are not read
        L.fprog = <unsigned int*>malloc(L.n * sizeof(unsigned int))
        if L.fprog == NULL:
            raise MemoryError()
        for i in range(L.n):
            L.fprog[i] = (
                <unsigned int>L.ops[i].kind | (<unsigned int>L.ops[i].conv << 8)
                | (<unsigned int>(L.ops[i].size & 0xFFFF) << 16)
            )
    ds_rec_register(L.tuple_type, _PLAIN_REC)  # the free list, where it works
    L.shareable = 0 < L.fixed_size <= <Py_ssize_t>sizeof(_ZEROS) and all(
        _op_shareable(&L.ops[i]) for i in range(L.n)
    )
    return L


cdef bint _op_simple(COp* op) noexcept:
    """True when ds_dec_simple decodes the op: fixed size, and no conversion that can fail."""
    if op.size < 0:
        return False
    if op.kind <= K_I64 or op.kind == K_BOOL or op.kind == K_STR:
        return op.conv == C_NONE
    if op.kind == K_F64:
        return op.conv == C_NONE and op.size == 8
    if op.kind == K_BYTES:
        return op.conv == C_NONE or (op.conv == C_MAC and op.size == 6)
    return False


cdef Py_ssize_t _flat_size(_Layout L) noexcept:
    """Wire size of a struct of int (not u64) and bool fields only; 0 for any other."""
    cdef Py_ssize_t i, size = 0
    cdef COp* op
    for i in range(L.n):
        op = &L.ops[i]
        if not (op.kind < K_F64 and op.kind != K_U64 or op.kind == K_BOOL):
            return 0
        if op.conv != C_NONE or op.count_for >= 0 or op.len_index >= 0 or op.size <= 0:
            return 0
        size += op.size
    return size


cdef void _set_fruns(_Layout L) noexcept:
    """Each op's wire size of the fields _enc_fast may take from it on (walked backwards)."""
    cdef Py_ssize_t i = L.n - 1, size = 0
    while i >= 0:
        if L.ops[i].ek != EK_NONE:
            size += L.ops[i].wsize
        else:
            size = 0
        L.ops[i].frun = size
        i -= 1


cdef void _set_runs(_Layout L) noexcept:
    """Each op's run of simple ops up to the next other one (walked backwards)."""
    cdef Py_ssize_t i = L.n - 1, run = 0, size = 0
    while i >= 0:
        if _op_simple(&L.ops[i]):
            run += 1
            size += L.ops[i].size
        else:
            run = 0
            size = 0
        L.ops[i].run = run
        L.ops[i].run_size = size
        i -= 1


cdef bint _op_shareable(COp* op):
    """True when the op decodes to an immutable value (no list, no ipaddress network)."""
    if op.kind <= K_BOOL:
        return op.conv == C_NONE or op.kind != K_F64
    if op.kind == K_BYTES:
        return op.conv in (C_NONE, C_IP4, C_IP6, C_MAC)
    if op.kind == K_STR:
        return True
    if op.kind == K_STRUCT or op.kind == K_UNION:
        if op.conv != C_NONE:
            return op.conv == C_ADDRESS
        return (<_Layout>op.sub).shareable
    return False


cdef int _fill(COp* c, object op, _Layout owner, dict memo) except -1:
    cdef _Layout sub
    c.kind = op.kind
    c.conv = op.conv
    c.size = op.size
    c.len_index = op.len_index
    c.count_for = op.count_for
    if op.kind in _INT_RANGE and op.kind != K_U64:
        c.lo = _INT_RANGE[op.kind][1]
        c.hi = _INT_RANGE[op.kind][2]
    owner.keep.append(op.name)
    c.name = <PyObject*>op.name
    owner.keep.append(op)
    c.plan_op = <PyObject*>op
    if op.default is not None:
        owner.keep.append(op.default)
        c.dflt = <PyObject*>op.default
    if op.layout is not None:
        sub = _build(op.layout, memo)
    elif op.elem is not None:
        sub = _new_layout(1)
        sub.plan = None
        sub.index = {}
        _fill(&sub.ops[0], op.elem, sub, memo)
        _set_runs(sub)
        _set_fruns(sub)
    else:
        sub = None
    if sub is not None:
        owner.keep.append(sub)
        c.sub = <PyObject*>sub
    _set_ek(c)
    return 0


cdef int _int_ek(COp* op) noexcept:
    """EK_I* of an int field (not u64) of a usual width, else EK_NONE."""
    if not (op.kind < K_F64 and op.kind != K_U64 and op.conv == C_NONE):
        return EK_NONE
    if op.size == 1:
        return EK_I1
    if op.size == 2:
        return EK_I2
    if op.size == 4:
        return EK_I4
    if op.size == 8:
        return EK_I8
    return EK_NONE


cdef Py_ssize_t _conv_size(int conv) noexcept:
    """Bytes _conv_text writes for a conversion (IPv4 / IPv6 addresses: the op's size)."""
    if conv == C_MAC:
        return 6
    if conv == C_ADDRESS:
        return 17
    if conv == C_PREFIX or conv == C_AWP:
        return 18
    if conv == C_IP4_PREFIX or conv == C_IP4_AWP:
        return 5
    if conv == C_IP6_PREFIX or conv == C_IP6_AWP:
        return 17
    return -1


cdef void _set_ek(COp* c) noexcept:
    """How _enc_fast encodes the field: only where the general path (_enc_struct,
    _enc_op) would write the same bytes from the same value without running Python code."""
    cdef COp* el
    c.ek = EK_NONE
    c.wsize = c.size
    if c.size <= 0 or c.len_index >= 0:
        return
    if c.kind < K_F64 and c.kind != K_U64:
        c.ek = _int_ek(c)
    elif c.kind == K_BOOL:
        if c.conv == C_NONE and c.size == 1:
            c.ek = EK_BOOL
    elif c.kind == K_F64:
        if c.conv == C_NONE and c.size == 8:
            c.ek = EK_F64
    elif c.kind == K_STR:
        c.ek = EK_STR
    elif c.kind == K_BYTES:
        c.ek = EK_BYTES
    elif c.kind == K_STRUCT:
        if c.conv != C_NONE and _conv_size(c.conv) == c.size:
            c.ek = EK_CONV
    elif c.kind == K_ARRAY and c.sub != NULL:
        el = &(<_Layout>c.sub).ops[0]
        if _int_ek(el) != EK_NONE:
            c.ek = EK_IARR
            c.wsize = c.size * el.size
    if c.count_for >= 0:
        # a length field: its value is kept for the array (ints[]); only ints are taken
        c.ek = EK_ICNT if EK_I1 <= c.ek <= EK_I8 else EK_NONE


# --- encoding ------------------------------------------------------------------------------


cdef int _grow(WBuf* w, Py_ssize_t extra) except -1:
    cdef Py_ssize_t need = w.len + extra
    cdef Py_ssize_t cap = w.cap * 2
    cdef char* p
    if cap < need:
        cap = need
    if w.heap == NULL:
        p = <char*>malloc(cap)
        if p == NULL:
            raise MemoryError()
        memcpy(p, w.data, w.len)
    else:
        p = <char*>realloc(w.heap, cap)
        if p == NULL:
            raise MemoryError()
    w.heap = p
    w.data = p
    w.cap = cap
    return 0


cdef inline int _reserve(WBuf* w, Py_ssize_t extra) except -1:
    if w.len + extra > w.cap:
        return _grow(w, extra)
    return 0


cdef inline void _put_be(char* p, unsigned long long v, Py_ssize_t size) noexcept:
    if size == 1 or size == 2 or size == 4 or size == 8:
        ds_put_be(p, v, size)
        return
    while size > 0:  # other widths (the 2-byte message id is covered above)
        size -= 1
        p[size] = <char>(v & 0xFF)
        v >>= 8


cdef inline int _append(WBuf* w, const char* src, Py_ssize_t n) except -1:
    _reserve(w, n)
    memcpy(w.data + w.len, src, n)
    w.len += n
    return 0


cdef inline int _zeros(WBuf* w, Py_ssize_t n) except -1:
    _reserve(w, n)
    memset(w.data + w.len, 0, n)
    w.len += n
    return 0


cdef int _append_bytes(WBuf* w, object tmp) except -1:
    cdef bytes b = bytes(tmp)
    return _append(w, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


cdef int _slow_op(COp* op, object v, WBuf* w) except -1:
    """The twin encodes what the fast paths do not take (and raises its errors)."""
    tmp = bytearray()
    _py_encode_op(<object>op.plan_op, v, tmp)
    return _append_bytes(w, tmp)


cdef long long _slow_int(COp* op, object v, WBuf* w) except? -1:
    tmp = bytearray()
    n = _py_encode_int(<object>op.plan_op, v, tmp)
    _append_bytes(w, tmp)
    return n


cdef inline long long _enc_int(COp* op, object v, WBuf* w) except? -1:
    cdef int overflow = 0
    cdef long long x
    if v is None:
        if op.dflt == NULL:
            _zeros(w, op.size)
            return 0
        v = <object>op.dflt
    if op.kind == K_BOOL:
        # True / False, and the exact ints 0 and 1; the twin takes (or rejects) the rest
        x = ds_bool_value(<PyObject*>v)
        if x < 0 and not ds_int_in(<PyObject*>v, 0, 1, &x):
            return _slow_int(op, v, w)
        _reserve(w, 1)
        w.data[w.len] = <char>x
        w.len += 1
        return x
    if not PyLong_Check(v):
        return _slow_int(op, v, w)  # enum names, __index__ objects, errors
    x = PyLong_AsLongLongAndOverflow(v, &overflow)
    if op.kind == K_U64:
        if overflow < 0 or (overflow == 0 and x < 0):
            return _slow_int(op, v, w)
        if overflow > 0:
            try:
                x = <long long>PyLong_AsUnsignedLongLong(v)
            except OverflowError:
                return _slow_int(op, v, w)
    elif overflow or x < op.lo or x > op.hi:
        return _slow_int(op, v, w)
    _reserve(w, op.size)
    _put_be(w.data + w.len, <unsigned long long>x, op.size)
    w.len += op.size
    return x


cdef int _pton(const char* s, Py_ssize_t n, char* out) noexcept:
    """af of an IP address text (0 v4, 1 v6; ':' decides, as in _codec_plan), -1 if invalid."""
    cdef char tmp[64]
    if n <= 0 or n >= 64:
        return -1
    if memchr(s, 58, n) == NULL:
        return 0 if ds_parse_v4(s, n, <unsigned char*>out) else -1  # it rejects a NUL too
    if memchr(s, 0, n) != NULL:
        return -1
    memcpy(tmp, s, n)
    tmp[n] = 0
    return 1 if inet_pton(AF_INET6, tmp, out) == 1 else -1


cdef int _conv_str(COp* op, object v, WBuf* w) except -1:
    """Fast paths for text forms of addresses, prefixes and MACs: 1 taken, 0 not taken."""
    cdef Py_ssize_t n, m
    cdef const char* s = ds_ascii_data(v, &n)
    cdef char out[18]
    m = _conv_text(op.conv, op.size, s, n, out)
    if m == 0:
        return 0
    return _append(w, out, m) + 1


cdef Py_ssize_t _conv_text(int conv, Py_ssize_t size, const char* s, Py_ssize_t n, char* out) noexcept:
    """The wire form of the text of an address, prefix or MAC into out[0:18]: its length
    (an IPv4 / IPv6 address: `size`), or 0 when the twin is to take it."""
    cdef Py_ssize_t i, alen
    cdef int af, plen, want
    cdef const char* slash
    if conv == C_MAC:
        return 6 if ds_parse_mac(s, n, out) else 0
    memset(out, 0, 18)
    if conv == C_IP4 or conv == C_IP6:
        af = _pton(s, n, out)
        if af != (0 if conv == C_IP4 else 1):
            return 0
        return size
    if conv == C_ADDRESS:
        af = _pton(s, n, out + 1)
        if af < 0:
            return 0
        out[0] = <char>af
        return 17
    # prefixes: "address/len", len 1-3 plain digits (anything else goes to the twin)
    slash = <const char*>memchr(s, 47, n)
    if slash == NULL:
        return 0
    alen = slash - s
    if n - alen - 1 < 1 or n - alen - 1 > 3:
        return 0
    plen = 0
    for i in range(alen + 1, n):
        if s[i] < 48 or s[i] > 57:
            return 0
        plen = plen * 10 + (s[i] - 48)
    if plen > 128:
        return 0
    if conv == C_PREFIX or conv == C_AWP:
        af = _pton(s, alen, out + 1)
        if af < 0 or (af == 0 and plen > 32):
            return 0  # the twin raises the error of a length decoding would reject
        out[0] = <char>af
        out[17] = <char>plen
        return 18
    want = 0 if conv == C_IP4_PREFIX or conv == C_IP4_AWP else 1
    af = _pton(s, alen, out)
    if af != want or (af == 0 and plen > 32):
        return 0
    i = 4 if want == 0 else 16
    out[i] = <char>plen
    return i + 1


cdef int _ip_bytes(object addr, int af, char* out) except -1:
    """The address bytes of an exact IPv4Address / IPv6Address (its `_ip` slot)."""
    cdef PyObject* n = ds_slot_get(addr, _OFF_IP4 if af == 0 else _OFF_IP6)
    if n == NULL:
        raise FieldError("uninitialised ipaddress object")
    ds_long_to_be(<object>n, <unsigned char*>out, 4 if af == 0 else 16)
    return 0


cdef int _conv_obj(COp* op, object v, WBuf* w) except -1:
    """Fast paths for ipaddress objects: 1 taken, 0 not taken (the twin handles the rest)."""
    cdef object t = type(v)
    cdef int conv = op.conv
    cdef int af
    cdef long plen
    cdef char out[18]
    memset(out, 0, 18)
    if conv == C_IP4 or conv == C_IP6:
        if t is not (_V4A if conv == C_IP4 else _V6A):
            return 0
        _ip_bytes(v, 0 if conv == C_IP4 else 1, out)
        return _append(w, out, op.size) + 1
    if conv == C_ADDRESS:
        if t is _V4A:
            af = 0
        elif t is _V6A:
            af = 1
        else:
            return 0
        out[0] = <char>af
        _ip_bytes(v, af, out + 1)
        return _append(w, out, 17) + 1
    if conv < C_PREFIX or conv > C_IP6_AWP:
        return 0  # a MAC (or another conversion) is never an ipaddress network
    if t is _V4N or t is _V6N:
        af = 0 if t is _V4N else 1
        addr = getattr(v, _S_NETWORK_ADDRESS)
        if type(addr) is not (_V4A if af == 0 else _V6A):
            return 0
    elif t is _V4I or t is _V6I:
        af = 0 if t is _V4I else 1
        addr = v
    else:
        return 0
    plen = getattr(v, _S_PREFIXLEN)
    if plen < 0 or plen > (32 if af == 0 else 128):
        return 0
    if conv == C_PREFIX or conv == C_AWP:
        out[0] = <char>af
        _ip_bytes(addr, af, out + 1)
        out[17] = <char>plen
        return _append(w, out, 18) + 1
    if af != (0 if conv == C_IP4_PREFIX or conv == C_IP4_AWP else 1):
        return 0
    _ip_bytes(addr, af, out)
    out[op.size - 1] = <char>plen
    return _append(w, out, op.size) + 1


cdef bint _plen_ok(int conv, const char* p, Py_ssize_t n) noexcept:
    """False when the wire bytes of a prefix (given as a mapping) hold a length decoding
    would reject; _codec_plan.check_prefix_len then raises the error."""
    cdef const unsigned char* b = <const unsigned char*>p
    if conv == C_PREFIX or conv == C_AWP:
        return n < 18 or b[0] > 1 or b[17] <= (32 if b[0] == 0 else 128)
    if conv == C_IP4_PREFIX or conv == C_IP4_AWP:
        return n < 5 or b[4] <= 32
    if conv == C_IP6_PREFIX or conv == C_IP6_AWP:
        return n < 17 or b[16] <= 128
    return True


cdef int _conv_or_slow(COp* op, object v, WBuf* w) except -1:
    """A value of a converted type (text or object form, e.g. "10.0.0.1/24"), else the twin."""
    if op.conv != C_NONE:
        if PyUnicode_CheckExact(v):
            if ds_ascii(v) and _conv_str(op, v, w):
                return 0
        elif _conv_obj(op, v, w):
            return 0
    return _slow_op(op, v, w)


cdef int _enc_op(COp* op, object v, WBuf* w) except -1:
    cdef int kind = op.kind
    cdef Py_ssize_t n, j, start
    cdef const char* s
    cdef double d
    cdef _Layout sub
    if kind <= K_BOOL:
        if kind != K_F64:
            _enc_int(op, v, w)
            return 0
        if v is None:
            v = <object>op.dflt if op.dflt != NULL else 0.0
        if not PyFloat_CheckExact(v):
            return _slow_op(op, v, w)
        d = PyFloat_AsDouble(v)
        return _append(w, <const char*>&d, 8)  # f64 in host byte order
    if kind == K_BYTES:
        if v is None:
            return _zeros(w, op.size)
        if PyBytes_CheckExact(v):
            n = PyBytes_GET_SIZE(v)
            if n > op.size:
                return _slow_op(op, v, w)
            _append(w, PyBytes_AS_STRING(v), n)
            return _zeros(w, op.size - n)
        return _conv_or_slow(op, v, w)
    if kind == K_STR:
        if v is None:
            return _zeros(w, op.size)
        if not ds_ascii(v):
            return _slow_op(op, v, w)  # other text: the twin encodes UTF-8 (and its errors)
        s = ds_ascii_data(v, &n)
        if n >= op.size:
            return _slow_op(op, v, w)
        _reserve(w, op.size)
        memcpy(w.data + w.len, s, n)
        memset(w.data + w.len + n, 0, op.size - n)
        w.len += op.size
        return 0
    if kind == K_VSTR:
        if v is None:
            return _zeros(w, 4)
        if not ds_ascii(v):
            return _slow_op(op, v, w)
        s = ds_ascii_data(v, &n)
        if n > 0xFFFFFFFF:
            return _slow_op(op, v, w)
        _reserve(w, 4 + n)
        _put_be(w.data + w.len, <unsigned long long>n, 4)
        w.len += 4
        return _append(w, s, n)
    if kind == K_STRUCT:
        if PyDict_CheckExact(v) and (<_Layout>op.sub).flat_size and _enc_flat_dict(
            <_Layout>op.sub, v, w
        ):
            return 0
        if v is None or PyDict_CheckExact(v) or (PyTuple_Check(v) and is_record(v)):
            start = w.len
            _enc_struct(<_Layout>op.sub, v, w, 0)
            if op.conv != C_NONE and not _plen_ok(op.conv, w.data + start, w.len - start):
                check_prefix_len(op.conv, PyBytes_FromStringAndSize(w.data + start, w.len - start))
            return 0
        return _conv_or_slow(op, v, w)
    if kind == K_UNION:
        return _enc_union(op, v, w)
    if kind == K_ARRAY:
        sub = <_Layout>op.sub
        if v is None:
            for j in range(op.size):
                _enc_op(&sub.ops[0], None, w)
            return 0
        if not (PyList_CheckExact(v) or PyTuple_CheckExact(v)) or len(v) != op.size:
            return _slow_op(op, v, w)
        return _enc_items(&sub.ops[0], v, w)
    return _slow_op(op, v, w)


cdef int _enc_flat_dict(_Layout L, object d, WBuf* w) except -1:
    """A struct of int and bool fields from a dict holding exactly its fields, in order, as
    exact ints in range and bools: 1 and the bytes written; else 0 and nothing written (the
    general path then encodes it, or raises its error). No per-call exception handling."""
    cdef Py_ssize_t pos = 0, at
    if PyDict_GET_SIZE(d) != L.n:
        return 0
    _reserve(w, L.flat_size)
    at = w.len
    # no length fields in a flat struct (_flat_size), so _enc_fast keeps no ints
    if _enc_fast(L.ops, 0, L.n, d, &pos, w, NULL) == L.n:
        return 1
    w.len = at
    return 0


cdef int _enc_union(COp* op, object v, WBuf* w) except -1:
    cdef _Layout sub = <_Layout>op.sub
    cdef Py_ssize_t start = w.len, pos = 0, idx
    cdef PyObject* k
    cdef PyObject* item
    if v is None:
        return _zeros(w, op.size)
    if PyDict_CheckExact(v) and PyDict_GET_SIZE(v) == 1:
        PyDict_Next(v, &pos, &k, &item)
        pidx = PyDict_GetItemWithError(sub.index, <object>k)
        if pidx == NULL:
            return _slow_op(op, v, w)
        idx = <Py_ssize_t><object>pidx
        try:
            _enc_op(&sub.ops[idx], <object>item, w)
        except FieldError as exc:
            raise exc.under(<object>k)
    elif PyTuple_Check(v) and is_record(v) and len(v) == sub.n:
        # a decoded union: every arm was read from the same bytes; the biggest holds them all
        idx = sub.big_arm
        try:
            _enc_op(&sub.ops[idx], v[idx], w)
        except FieldError as exc:
            raise exc.under(<object>sub.ops[idx].name)
    else:
        return _slow_op(op, v, w)
    return _zeros(w, op.size - (w.len - start))


cdef int _enc_items(COp* elem, object items, WBuf* w) except -1:
    # The same object repeated (``[label] * 16``) encodes to the same bytes: copy them.
    cdef Py_ssize_t j = 0, prev_at = -1, size
    cdef PyObject* prev = NULL
    cdef long long x
    cdef bint ints = elem.kind < K_F64 and elem.kind != K_U64
    cdef Py_ssize_t n = len(items)
    cdef PyObject* it
    cdef _Layout sub
    if ints:
        # small ints (mtu[4], ...) inline on borrowed references, as in _enc_struct; the
        # first other item goes to the general loop below
        while j < n:
            it = ds_seq_item(items, j)
            if not (ds_is_long(it) and ds_small_long(it, &x) and x >= elem.lo and x <= elem.hi):
                break
            if w.len + elem.size > w.cap:
                _grow(w, elem.size)
            _put_be(w.data + w.len, <unsigned long long>x, elem.size)
            w.len += elem.size
            j += 1
        if j == n:
            return 0
        items = items[j:]
    elif elem.kind == K_STRUCT and (<_Layout>elem.sub).flat_size > 0:
        # flat structs from dicts (bridge domain members, label stacks) as _enc_op takes
        # them (_enc_flat_dict), and the same object again by copy, as below; the first
        # other item goes to the general loop
        sub = <_Layout>elem.sub
        size = sub.flat_size
        while j < n:
            it = ds_seq_item(items, j)
            if it == prev:
                _reserve(w, size)
                memcpy(w.data + w.len, w.data + prev_at, size)
                w.len += size
            elif PyDict_CheckExact(<object>it) and _enc_flat_dict(sub, <object>it, w):
                prev = it
                prev_at = w.len - size
            else:
                break
            j += 1
        if j == n:
            return 0
        items = items[j:]
        prev = NULL
    try:
        for item in items:
            if ints and ds_is_long(<PyObject*>item) and ds_small_long(<PyObject*>item, &x) and (
                x >= elem.lo and x <= elem.hi
            ):
                # small ints (mtu[4], ...) inline, as in _enc_struct
                if w.len + elem.size > w.cap:
                    _grow(w, elem.size)
                _put_be(w.data + w.len, <unsigned long long>x, elem.size)
                w.len += elem.size
            elif <PyObject*>item == prev and elem.size > 0 and (
                PyDict_CheckExact(item) or PyTuple_Check(item) or PyLong_CheckExact(item)
                or PyUnicode_CheckExact(item) or PyBytes_CheckExact(item)
            ):
                size = elem.size
                _reserve(w, size)
                memcpy(w.data + w.len, w.data + prev_at, size)
                w.len += size
            else:
                prev_at = w.len
                _enc_op(elem, item, w)
                prev = <PyObject*>item
            j += 1
    except FieldError as exc:
        raise exc.under(f"[{j}]")
    return 0


cdef int _enc_vla(COp* op, object v, long long count, WBuf* w) except -1:
    if v is None and count == 0:
        return 0
    if op.kind == K_VBYTES:
        if PyBytes_CheckExact(v) and PyBytes_GET_SIZE(v) == count:
            return _append(w, PyBytes_AS_STRING(v), count)
    elif PyList_CheckExact(v) or PyTuple_CheckExact(v):
        if len(v) == count:
            return _enc_items(&(<_Layout>op.sub).ops[0], v, w)
    tmp = bytearray()
    _py_encode_vla(<object>op.plan_op, v, count, tmp)
    return _append_bytes(w, tmp)


cdef object _lookup(object value, int mode, object name):
    cdef PyObject* pv
    if mode == 1:
        pv = PyDict_GetItemWithError(value, name)
        return <object>pv if pv != NULL else None
    if mode == 2:
        return value.get(name)
    if mode == 3:
        return getattr(value, name, None)
    return None


cdef Py_ssize_t _enc_fast(
    COp* ops, Py_ssize_t i, Py_ssize_t stop, object d, Py_ssize_t* ppos, WBuf* w, long long* ints
) noexcept:
    """_enc_struct's walk over fields given in order in a dict, from entry ``*ppos`` on, for
    the values the general path encodes without running Python code (and the same way):
    small ints in range, bools, exact floats, ASCII text of fixed strings, bytes, text of
    addresses, prefixes and MACs, arrays of small ints. Returns the index of the first field
    it did not take, ``*ppos`` the entry after the last one it took; anything unusual is
    left to the general path, which raises the errors. The buffer must hold ops[i].frun
    more bytes (the fields it may take), else it takes none."""
    cdef Py_ssize_t nent = 0, p0 = ppos[0], n, j, m
    cdef char* out = w.data + w.len
    cdef ds_ukentry* e = ds_dict_entries(d, &nent)
    cdef ds_ukentry* ep
    cdef ds_ukentry ent
    cdef COp* op = &ops[i]
    cdef COp* op0 = op
    cdef COp* end
    cdef COp* el
    cdef PyObject* v
    cdef PyObject** items
    cdef long long x
    cdef int ek
    cdef bint ok
    cdef double f
    cdef const char* s
    cdef char tmp[18]
    if i >= stop or w.len + op.frun > w.cap:
        return i
    if e == NULL:
        nent = PY_SSIZE_T_MAX - stop  # ds_entry_slow finds the end
    if stop - i > nent - p0:
        stop = i + (nent - p0)
    end = &ops[stop]
    ep = e + p0 if e != NULL else NULL
    # op and ep (the dict entry) move together; out is where the field goes
    while op < end:
        ek = op.ek
        if ep != NULL:
            ent = ep[0]
            ep += 1
        else:
            ent = ds_entry_slow(d, p0 + (op - op0))
        v = ent.me_value
        if ent.me_key != op.name or v == NULL:  # NULL: a deleted entry, skipped by the general path
            break
        if ek == EK_I4:
            if not ds_int_in(v, op.lo, op.hi, &x):
                break
            ds_put_be(out, <unsigned long long>x, 4)
        elif ek == EK_I2:
            if not ds_int_in(v, op.lo, op.hi, &x):
                break
            ds_put_be(out, <unsigned long long>x, 2)
        elif ek == EK_I1:
            if not ds_int_in(v, op.lo, op.hi, &x):
                break
            out[0] = <char>x
        elif ek == EK_I8:
            if not ds_int_in(v, op.lo, op.hi, &x):
                break
            ds_put_be(out, <unsigned long long>x, 8)
        elif ek == EK_BOOL:
            x = ds_bool_value(v)
            if x < 0 and not ds_int_in(v, 0, 1, &x):
                break
            out[0] = <char>x
        elif ek == EK_ICNT:  # the only ints the general path reads back (_enc_vla's count)
            if not ds_int_in(v, op.lo, op.hi, &x):
                break
            _put_be(out, <unsigned long long>x, op.size)
            ints[op - ops] = x
        elif ek == EK_STR:
            if not ds_ascii(<object>v):
                break
            s = ds_ascii_data(<object>v, &n)
            if n >= op.size:
                break
            memcpy(out, s, n)
            memset(out + n, 0, op.size - n)
        elif ek == EK_BYTES:
            if PyBytes_CheckExact(<object>v):
                n = PyBytes_GET_SIZE(<object>v)
                if n > op.size:
                    break
                memcpy(out, PyBytes_AS_STRING(<object>v), n)
                if n < op.size:
                    memset(out + n, 0, op.size - n)
            elif op.conv == C_MAC and op.size == 6 and ds_ascii(<object>v):
                s = ds_ascii_data(<object>v, &n)
                if not ds_parse_mac(s, n, out):
                    break
            elif op.conv != C_NONE and op.size <= 18 and ds_ascii(<object>v):
                s = ds_ascii_data(<object>v, &n)
                m = _conv_text(op.conv, op.size, s, n, tmp)
                if m != op.size:
                    break
                memcpy(out, tmp, m)
            else:
                break
        elif ek == EK_CONV:
            if not ds_ascii(<object>v):
                break
            s = ds_ascii_data(<object>v, &n)
            m = _conv_text(op.conv, op.size, s, n, tmp)
            if m != op.size:
                break
            memcpy(out, tmp, m)
        elif ek == EK_IARR:
            items = ds_seq_items(v, &n)
            if items == NULL or n != op.size:
                break
            el = &(<_Layout>op.sub).ops[0]
            ok = True
            for j in range(n):
                if not ds_int_in(items[j], el.lo, el.hi, &x):
                    ok = False
                    break
                _put_be(out + j * el.size, <unsigned long long>x, el.size)
            if not ok:
                break
        elif ek == EK_F64:
            if not PyFloat_CheckExact(<object>v):
                break
            f = PyFloat_AS_DOUBLE(v)
            memcpy(out, &f, 8)  # f64 in host byte order, as _enc_op writes it
        else:
            break
        out += op.wsize
        op += 1
    w.len = out - w.data
    ppos[0] = p0 + (op - op0)
    return op - ops


cdef int _enc_struct(_Layout L, object value, WBuf* w, Py_ssize_t start) except -1:
    """Encode a struct (a message's fields from ``start``) from a dict, mapping or namedtuple.

    For a dict whose keys come in field order (literal keys are interned, like the field
    names), each field is matched by identity while walking the dict: no hashing at all.
    Other dicts take one lookup per field.
    """
    cdef Py_ssize_t i = start, found = 0, pos = 0, q, j
    cdef int mode, overflow
    cdef COp* op
    cdef PyObject* pv
    cdef PyObject* nk = NULL
    cdef PyObject* nv = NULL
    cdef bint more = False
    cdef long long x
    cdef long long ints_stack[64]
    cdef long long* ints = ints_stack
    if value is None:
        mode = 0
    elif PyDict_CheckExact(value):
        mode = 1
    elif PyTuple_Check(value) and is_record(value):
        mode = 3
    elif isinstance(value, Mapping):
        mode = 2
        check_names(L.plan, value)
    else:
        raise FieldError(f"expected a mapping for {L.plan.name}, got {type(value).__name__}")
    if L.n > 64:
        ints = <long long*>malloc(L.n * sizeof(long long))
        if ints == NULL:
            raise MemoryError()
    try:
        while i < L.n:
            op = &L.ops[i]
            if mode == 1:
                # Peek at the next entry now, not after the previous field: encoding that
                # field may have run Python code (__index__, __bool__) that changed the
                # dict, and freed what an earlier peek pointed at.
                q = pos
                more = ds_dict_next(value, &q, &nk, &nv)
                if more and nk == op.name:
                    if op.ek != EK_NONE:
                        # the fast walk starts at that entry (q - 1) and stops at the first
                        # entry it left
                        pos = q - 1
                        _reserve(w, op.frun)
                        j = _enc_fast(L.ops, i, L.n, value, &pos, w, ints)
                        if j > i:
                            found += j - i
                            i = j
                            continue
                    pv = nv
                    pos = q
                else:
                    pv = PyDict_GetItemWithError(value, <object>op.name)
                if pv != NULL:
                    found += 1
                    # the common case, on borrowed references: a small int for an int field
                    if (
                        op.kind < K_F64 and op.kind != K_U64 and ds_is_long(pv)
                        and ds_small_long(pv, &x) and x >= op.lo and x <= op.hi
                    ):
                        if w.len + op.size > w.cap:
                            _grow(w, op.size)
                        _put_be(w.data + w.len, <unsigned long long>x, op.size)
                        w.len += op.size
                        ints[i] = x
                        i += 1
                        continue
                    if op.kind == K_BOOL and ds_bool_value(pv) >= 0:
                        # the bools themselves: no truth-value call
                        x = ds_bool_value(pv)
                        if w.len + 1 > w.cap:
                            _grow(w, 1)
                        w.data[w.len] = <char>x
                        w.len += 1
                        ints[i] = x
                        i += 1
                        continue
                    v = <object>pv
                else:
                    v = None
            elif mode == 0:
                v = None
            elif mode == 3:
                v = getattr(value, <object>op.name, None)
            else:
                v = value.get(<object>op.name)
            if v is None and op.count_for >= 0:
                arr = _lookup(value, mode, <object>L.ops[op.count_for].name)
                v = len(arr) if arr is not None else None
            if op.kind <= K_BOOL and op.kind != K_F64:
                # integers inline: the common case of every message
                if op.kind != K_BOOL and op.kind != K_U64 and v is not None and PyLong_CheckExact(v):
                    overflow = 0
                    if not ds_small_long(<PyObject*>v, &x):
                        x = PyLong_AsLongLongAndOverflow(v, &overflow)
                    if overflow == 0 and x >= op.lo and x <= op.hi:
                        if w.len + op.size > w.cap:
                            _grow(w, op.size)
                        _put_be(w.data + w.len, <unsigned long long>x, op.size)
                        w.len += op.size
                        ints[i] = x
                        i += 1
                        continue
                ints[i] = _enc_int(op, v, w)
            elif op.len_index >= 0:
                _enc_vla(op, v, ints[op.len_index], w)
            else:
                _enc_op(op, v, w)
            i += 1
    except FieldError as exc:
        if mode == 1:
            check_names(L.plan, value)  # an unknown field is reported first, as the twin does
        raise exc.under(<object>L.ops[i].name)
    except Exception:
        if mode == 1:
            check_names(L.plan, value)  # likewise before any other error (len() of a non-list)
        raise
    finally:
        if ints != ints_stack:
            free(ints)
    if mode == 1 and found != PyDict_GET_SIZE(value):
        check_names(L.plan, value)
    return 0


# --- decoding ------------------------------------------------------------------------------


cdef inline unsigned long long _get_be(const unsigned char* p, Py_ssize_t size) noexcept:
    cdef unsigned long long v = 0
    cdef Py_ssize_t i
    if size == 1 or size == 2 or size == 4 or size == 8:
        return ds_get_be(p, size)
    for i in range(size):
        v = (v << 8) | p[i]
    return v


cdef object _truncated(Py_ssize_t off, object n, Py_ssize_t end):
    return FieldError(f"truncated: need {n} bytes at offset {off}, have {max(end - off, 0)}")


cdef inline int _need(Py_ssize_t off, Py_ssize_t n, Py_ssize_t end) except -1:
    if n < 0 or n > end - off:
        raise _truncated(off, n, end)
    return 0


cdef object _netmask(int af, long plen):
    """The cached netmask address of a prefix length (ipaddress caches them too)."""
    cdef list cache = _NETMASKS4 if af == 0 else _NETMASKS6
    m = cache[plen]
    if m is None:
        m = (_V4N if af == 0 else _V6N)._make_netmask(plen)[0]
        cache[plen] = m
    return m


cdef object _mk_ip(int af, const unsigned char* p):
    """IPv4Address / IPv6Address from wire bytes, built as its __init__ builds it."""
    a = ds_alloc(_V4A if af == 0 else _V6A)
    if af == 0:
        ds_slot_set(a, _OFF_IP4, PyLong_FromUnsignedLongLong(_get_be(p, 4)))
    else:
        ds_slot_set(a, _OFF_IP6, ds_long_from_be(p, 16))
        ds_slot_set(a, _OFF_SCOPE6, None)
    return a


cdef object _mk_net(int af, const unsigned char* p, long plen, bint iface):
    """ip_network((p, plen), strict=False) or ip_interface((p, plen)) from wire bytes."""
    cdef long maxp = 32 if af == 0 else 128
    cdef unsigned char masked[16]
    cdef Py_ssize_t size = 4 if af == 0 else 16, j
    cdef long bits
    if plen >= maxp - 1:
        # /31, /32 (/127, /128) get a `hosts` attribute, and bad lengths raise: the plan
        # builds those
        n = ds_long_from_be(p, size)
        return (_plan._iface if iface else _plan._net)(af, n, plen)
    memcpy(masked, p, size)
    for j in range(size):
        bits = plen - 8 * j
        if bits <= 0:
            masked[j] = 0
        elif bits < 8:
            masked[j] = masked[j] & <unsigned char>(0xFF << (8 - bits))
    netmask = _netmask(af, plen)
    net = ds_alloc(_V4N if af == 0 else _V6N)
    setattr(net, _S_NETWORK_ADDRESS, _mk_ip(af, masked))
    setattr(net, _S_NETMASK, netmask)
    setattr(net, _S_PREFIXLEN, plen)
    if not iface:
        return net
    i = ds_alloc(_V4I if af == 0 else _V6I)
    if af == 0:
        ds_slot_set(i, _OFF_IP4, PyLong_FromUnsignedLongLong(_get_be(p, 4)))
    else:
        ds_slot_set(i, _OFF_IP6, ds_long_from_be(p, 16))
        ds_slot_set(i, _OFF_SCOPE6, None)
    setattr(i, _S_NETWORK, net)
    setattr(i, _S_NETMASK, netmask)
    setattr(i, _S_PREFIXLEN, plen)
    return i


cdef object _conv(COp* op, const unsigned char* p):
    cdef int conv = op.conv
    cdef PyObject* hit
    if conv >= C_PREFIX and conv <= C_IP6_AWP and op.size <= 18:
        hit = ds_pcache_get(conv, p, op.size)
        if hit != NULL:
            return <object>hit
        obj = _conv_new(op, p)
        if obj is not None:
            ds_pcache_put(conv, p, op.size, obj)
        return obj
    return _conv_new(op, p)


cdef object _conv_new(COp* op, const unsigned char* p):
    cdef int conv = op.conv
    cdef int af
    try:
        if conv == C_MAC:
            return ds_mac_obj(p, _MAC_TYPE)
        if conv == C_IP4:
            return _mk_ip(0, p)
        if conv == C_IP6:
            return _mk_ip(1, p)
        if conv == C_ADDRESS:
            af = p[0]
            return _mk_ip(af, p + 1) if af <= 1 else None
        if conv == C_PREFIX or conv == C_AWP:
            af = p[0]
            return _mk_net(af, p + 1, p[17], conv == C_AWP) if af <= 1 else None
        if conv == C_IP4_PREFIX or conv == C_IP4_AWP:
            return _mk_net(0, p, p[4], conv == C_IP4_AWP)
        if conv == C_IP6_PREFIX or conv == C_IP6_AWP:
            return _mk_net(1, p, p[16], conv == C_IP6_AWP)
        return _DECODERS[conv](PyBytes_FromStringAndSize(<const char*>p, op.size))
    except _DECODE_ERRORS as exc:
        raise FieldError(f"bad {(<object>op.plan_op).type_name}: {exc}") from None


cdef inline object _dec_int(COp* op, const unsigned char* p):
    cdef unsigned long long u = _get_be(p, op.size)
    cdef int kind = op.kind
    if kind == K_U8 or kind == K_U16 or kind == K_U32 or kind == K_U64:
        return PyLong_FromUnsignedLongLong(u)
    if kind == K_I8:
        return PyLong_FromLongLong(<signed char>u)
    if kind == K_I16:
        return PyLong_FromLongLong(<short>u)
    if kind == K_I32:
        return PyLong_FromLongLong(<int>u)
    return PyLong_FromLongLong(<long long>u)


cdef Py_ssize_t _dec_run(
    COp* ops, Py_ssize_t i, Py_ssize_t stop, const unsigned char* p, PyObject* rec, Py_ssize_t start
) except -1:
    """Decode simple ops [i, stop) from p (bounds checked by the caller) into rec; their size."""
    cdef Py_ssize_t o = 0
    cdef PyObject* pv
    cdef COp* op
    while i < stop:
        op = &ops[i]
        pv = ds_dec_simple_fast(op.kind, op.conv, op.size, p + o, <PyObject*>_MAC_TYPE)
        if pv == NULL:
            return -1  # MemoryError, set by the allocator
        PyTuple_SET_ITEM(<object>rec, i - start, pv)
        o += op.size
        i += 1
    return o


cdef PyObject* _dec_flat_rec(_Layout L, const unsigned char* p) noexcept:
    """A struct made only of simple ops (bounds checked by the caller), as a new
    reference; NULL with MemoryError set. No Python temporaries: one per record costs."""
    cdef PyObject* rec = ds_record_new_x(<PyObject*>L.tuple_type, L.n, L.atomic, 1)
    cdef PyObject* pv
    cdef COp* op = L.ops
    cdef COp* end = L.ops + L.n
    cdef Py_ssize_t i = 0
    if rec == NULL:
        return NULL
    while op < end:
        pv = ds_dec_simple_fast(op.kind, op.conv, op.size, p, <PyObject*>_MAC_TYPE)
        if pv == NULL:
            while i < L.n:  # every item is set (ds_record_new_x's `filled`)
                ds_tuple_set(rec, i, NULL)
                i += 1
            ds_decref(rec)
            return NULL
        ds_tuple_set(rec, i, pv)
        p += op.size
        op += 1
        i += 1
    return rec


cdef object _dec_op(
    COp* op, const unsigned char* buf, Py_ssize_t end, Py_ssize_t* off, object rec, Py_ssize_t start
):
    cdef int kind = op.kind
    cdef Py_ssize_t o = off[0], n, j, esize
    cdef int overflow = 0
    cdef long long count
    cdef double d
    cdef const unsigned char* nul
    cdef _Layout sub
    if kind <= K_BOOL:
        if kind == K_BOOL:
            _need(o, 1, end)
            off[0] = o + 1
            return buf[o] != 0
        _need(o, op.size, end)
        off[0] = o + op.size
        if kind == K_F64:
            if op.conv != C_NONE:
                return _conv(op, buf + o)
            memcpy(&d, buf + o, 8)
            return PyFloat_FromDouble(d)
        return _dec_int(op, buf + o)
    if kind == K_BYTES:
        _need(o, op.size, end)
        off[0] = o + op.size
        if op.conv != C_NONE:
            return _conv(op, buf + o)
        return PyBytes_FromStringAndSize(<const char*>buf + o, op.size)
    if kind == K_STR:
        _need(o, op.size, end)
        off[0] = o + op.size
        nul = <const unsigned char*>memchr(buf + o, 0, op.size)
        n = (nul - (buf + o)) if nul != NULL else op.size
        return ds_fstr(<const char*>buf + o, n, op.size)
    if kind == K_VSTR:
        _need(o, 4, end)
        n = <Py_ssize_t>_get_be(buf + o, 4)
        o += 4
        _need(o, n, end)
        off[0] = o + n
        return ds_text(<const char*>buf + o, n)
    if kind == K_STRUCT or kind == K_UNION:
        if op.conv != C_NONE:
            _need(o, op.size, end)
            off[0] = o + op.size
            return _conv(op, buf + o)
        sub = <_Layout>op.sub
        if sub.is_union:
            _need(o, sub.fixed_size, end)
        return _dec_struct(sub, buf, end, off, 0)
    if kind == K_LBYTES:
        off[0] = end
        return PyBytes_FromStringAndSize(<const char*>buf + o, end - o)
    if kind == K_VBYTES:
        cobj = <object>PyTuple_GET_ITEM(rec, op.len_index - start)
        count = PyLong_AsLongLongAndOverflow(cobj, &overflow)
        if overflow or count < 0 or count > end - o:
            raise _truncated(o, cobj, end)
        off[0] = o + count
        return PyBytes_FromStringAndSize(<const char*>buf + o, count)
    sub = <_Layout>op.sub
    esize = sub.ops[0].size
    if kind == K_ARRAY:
        count = op.size
    elif kind == K_VLA:
        cobj = <object>PyTuple_GET_ITEM(rec, op.len_index - start)
        count = PyLong_AsLongLongAndOverflow(cobj, &overflow)
        if overflow or count < 0 or (esize > 0 and count > (end - o) // esize):
            raise _truncated(o, cobj * esize, end)
    else:  # K_LVLA: as many whole elements as are left
        if esize <= 0:
            raise FieldError("legacy array of variable-size elements")
        if (end - o) % esize:
            raise FieldError(
                f"{end - o} bytes left, not a multiple of the element size {esize}"
            )
        count = (end - o) // esize
    if esize > 0:
        _need(o, count * esize, end)
    items = ds_list_new(count)
    j = 0
    if esize > 0 and _dec_items_fast(sub, buf + o, count, esize, items):
        off[0] = o + count * esize
        return items
    try:
        while j < count:
            item = _dec_op(&sub.ops[0], buf, end, off, rec, start)
            Py_INCREF(<PyObject*>item)
            PyList_SET_ITEM(items, j, <PyObject*>item)
            j += 1
    except FieldError as exc:
        # the list's unfilled slots are NULL; give them None so it can be freed
        n = j
        while j < count:
            Py_INCREF(<PyObject*>None)
            PyList_SET_ITEM(items, j, <PyObject*>None)
            j += 1
        raise exc.under(f"[{n}]")
    return items


cdef bint _dec_items_fast(
    _Layout sub, const unsigned char* p, Py_ssize_t count, Py_ssize_t esize, object items
) except -1:
    """Fill `items` from elements that are simple, or flat structs of simple fields (the
    caller checked that all `count` of them are there); False if elements are not such."""
    cdef COp* elem = &sub.ops[0]
    cdef _Layout L
    cdef PyObject* pv
    cdef Py_ssize_t j = 0, z = 0
    if elem.run:
        while j < count:
            pv = ds_dec_simple(elem.kind, elem.conv, esize, p + j * esize, <PyObject*>_MAC_TYPE)
            if pv == NULL:
                _fill_none(items, j, count)
                return -1
            PyList_SET_ITEM(items, j, pv)
            j += 1
        return True
    if elem.kind != K_STRUCT or elem.conv != C_NONE:
        return False
    L = <_Layout>elem.sub
    if L.is_union or L.n == 0 or L.ops[0].run != L.n or L.fixed_size != esize:
        return False
    # no exception frame (see _dec_fields): on an error (only MemoryError here) the
    # list's unfilled slots get None
    if L.fprog != NULL:
        if L.shareable and L.zero_rec is None:
            L.zero_rec = _dec_fields(L, _ZEROS, L.fixed_size, &z, 0)
        j = ds_flat_fill(
            (<PyListObject*>items).ob_item, count, p, esize, <PyObject*>L.tuple_type, L.n,
            L.atomic, L.fprog, <PyObject*>L.zero_rec if L.shareable else NULL,
            <PyObject*>_MAC_TYPE,
        )
        if j < count:
            _fill_none(items, j, count)
            return -1
        return True
    while j < count:
        if L.shareable and ds_all_zero(p + j * esize, esize):
            # as in _dec_struct: all-zero records are shared
            if L.zero_rec is None:
                L.zero_rec = _dec_fields(L, _ZEROS, L.fixed_size, &z, 0)
            item = L.zero_rec
            Py_INCREF(<PyObject*>item)
            PyList_SET_ITEM(items, j, <PyObject*>item)
        else:
            pv = _dec_flat_rec(L, p + j * esize)
            if pv == NULL:
                _fill_none(items, j, count)
                return -1
            PyList_SET_ITEM(items, j, pv)
        j += 1
    return True


cdef void _fill_none(object items, Py_ssize_t j, Py_ssize_t count) noexcept:
    """None in a new list's unfilled slots (NULL), so that it can be freed."""
    while j < count:
        Py_INCREF(<PyObject*>None)
        PyList_SET_ITEM(items, j, <PyObject*>None)
        j += 1


cdef object _dec_struct(
    _Layout L, const unsigned char* buf, Py_ssize_t end, Py_ssize_t* off, Py_ssize_t start
):
    # Small structs of immutable fields that are all zero on the wire (fib_path's 16-label
    # stack, mostly) decode to one shared record: namedtuples are immutable values.
    cdef Py_ssize_t base = off[0], z = 0
    if (
        L.shareable and start == 0 and L.fixed_size <= end - base
        and memcmp(buf + base, _ZEROS, L.fixed_size) == 0
    ):
        if L.zero_rec is None:
            L.zero_rec = _dec_fields(L, _ZEROS, L.fixed_size, &z, 0)
        off[0] = base + L.fixed_size
        return L.zero_rec
    return _dec_fields(L, buf, end, off, start)


cdef object _dec_fields(
    _Layout L, const unsigned char* buf, Py_ssize_t end, Py_ssize_t* off, Py_ssize_t start
):
    cdef Py_ssize_t i = start
    cdef Py_ssize_t base = off[0]
    cdef Py_ssize_t o = base
    cdef COp* op
    cdef int kind
    cdef PyObject* pv
    # a fixed-size struct that is all there needs no per-field bounds checks
    cdef bint whole = L.fixed_size >= 0 and L.fixed_size <= end - base
    # No exception frame here (on 3.12+ each one costs a thread-state lookup): an error
    # leaves NULL items, which the tuple's dealloc skips, and MessageCodec._decode asks
    # the twin for the error's field path.
    rec = ds_record_new_gc(L.tuple_type, L.n - start, L.atomic)
    while i < L.n:
        op = &L.ops[i]
        kind = op.kind
        if L.is_union:
            o = base
        elif op.run and op.run_size <= end - o:
            if L.fprog != NULL:
                o += ds_fill_fields(ds_tuple_items(rec) + (i - start), L.fprog + i, op.run, buf + o,
                                    <PyObject*>_MAC_TYPE)
            else:
                o += _dec_run(L.ops, i, i + op.run, buf + o, <PyObject*>rec, start)
            i += op.run
            continue
        if kind <= K_I64 and (whole or op.size <= end - o):
            # ints straight into the record (a new reference, stolen by SET_ITEM)
            pv = ds_int_new(kind, _get_be(buf + o, op.size))
            if pv == NULL:
                raise MemoryError()
            PyTuple_SET_ITEM(rec, i - start, pv)
            o += op.size
            i += 1
            continue
        elif kind == K_BOOL and (whole or o < end):
            v = buf[o] != 0
            o += 1
        else:
            off[0] = o
            v = _dec_op(op, buf, end, off, rec, start)
            o = off[0]
        Py_INCREF(<PyObject*>v)
        PyTuple_SET_ITEM(rec, i - start, <PyObject*>v)
        i += 1
    off[0] = base + L.fixed_size if L.is_union else o
    return rec


# --- the codec -----------------------------------------------------------------------------


def peek_msg_id(data):
    """The message id: u16 big-endian at offset 0 of a message body."""
    cdef const unsigned char* p
    if PyBytes_CheckExact(data) and PyBytes_GET_SIZE(data) >= 2:
        p = <const unsigned char*>PyBytes_AS_STRING(data)
        return (p[0] << 8) | p[1]
    if len(data) < 2:
        raise CodecError("?", "_vl_msg_id", f"message of {len(data)} bytes has no id")
    return (data[0] << 8) | data[1]


cdef class MessageCodec:
    """Encodes and decodes one message of one set of definitions (compiled)."""

    cdef _Layout _layout
    cdef readonly str name
    cdef readonly str name_crc
    cdef readonly tuple field_names
    cdef readonly object tuple_type
    cdef object _plan_layout
    cdef object _twin  # the twin's codec of this message, made on the first decode error

    def __init__(self, layout, name_crc):
        self._plan_layout = layout
        self._layout = _build(layout, {})
        self.name = layout.name
        self.name_crc = name_crc
        self.field_names = layout.names
        self.tuple_type = layout.tuple_type

    def __repr__(self):
        return f"<MessageCodec {self.name_crc} (compiled)>"

    def encode(self, msg_id, fields=None, /, **kw):
        """The message body, starting with ``_vl_msg_id = msg_id``; missing fields are zero."""
        return _encode_entry(self, msg_id, fields, kw or None)

    cdef object _encode(self, object msg_id, object values):
        cdef _Layout L = self._layout
        cdef WBuf w
        cdef long long mid
        cdef long long ints[64]
        cdef Py_ssize_t pos = 0
        if (
            L.all_fast and PyDict_CheckExact(values) and PyDict_GET_SIZE(values) == L.n - L.skip
            and ds_is_long(<PyObject*>msg_id) and ds_small_long(<PyObject*>msg_id, &mid)
            and 0 <= mid <= 0xFFFF
        ):
            # Every field in order, each of a kind _enc_fast takes: the bytes object is
            # filled in place, with no exception frame. When it stops (anything unusual)
            # the general path below starts over, and writes or raises what it would have.
            out = PyBytes_FromStringAndSize(NULL, L.fixed_size)
            w.data = PyBytes_AS_STRING(out)
            w.len = 2
            w.cap = L.fixed_size
            w.heap = NULL
            _put_be(w.data, <unsigned long long>mid, 2)
            if _enc_fast(L.ops, L.skip, L.n, values, &pos, &w, ints) == L.n and w.len == L.fixed_size:
                return out
        return self._encode_general(msg_id, values)

    cdef object _encode_general(self, object msg_id, object values):
        cdef char stack[1024]
        cdef WBuf w
        cdef int overflow = 0
        cdef long long mid
        w.data = stack
        w.len = 0
        w.cap = sizeof(stack)
        w.heap = NULL
        try:
            if not PyLong_Check(msg_id):
                raise FieldError(f"bad message id {msg_id!r}: an int in [0, 65535]", "_vl_msg_id")
            mid = PyLong_AsLongLongAndOverflow(msg_id, &overflow)
            if overflow or mid < 0 or mid > 0xFFFF:
                raise FieldError(f"bad message id {msg_id!r}: an int in [0, 65535]", "_vl_msg_id")
            _put_be(w.data, <unsigned long long>mid, 2)
            w.len = 2
            if not PyDict_CheckExact(values) and not isinstance(values, Mapping) and not is_record(values):
                raise FieldError(f"expected a mapping of fields, got {type(values).__name__}")
            _enc_struct(self._layout, values, &w, 1)
            return PyBytes_FromStringAndSize(w.data, w.len)
        except FieldError as exc:
            raise CodecError(self.name, exc.path, exc.reason) from None
        finally:
            if w.heap != NULL:
                free(w.heap)

    def decode(self, data):
        """The fields (all but ``_vl_msg_id``) as a namedtuple; CodecError on bad bytes."""
        return self._decode_any(data)

    cdef object _decode_any(self, object data):
        """decode() of anything: bytes, other buffers, other objects (their error)."""
        cdef Py_buffer view
        cdef const unsigned char* buf
        cdef Py_ssize_t end
        cdef Py_ssize_t off = 2
        if PyBytes_CheckExact(data):
            return self._decode(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        try:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        except (TypeError, BufferError):
            raise CodecError(self.name, "", f"cannot decode {type(data).__name__}") from None
        try:
            return self._decode(<const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef object _decode(self, const unsigned char* buf, Py_ssize_t end):
        cdef Py_ssize_t off = 2
        try:
            if end < 2:
                raise FieldError(f"truncated: need 2 bytes at offset 0, have {end}", "_vl_msg_id")
            return _dec_struct(self._layout, buf, end, &off, 1)
        except FieldError as exc:
            raise self._decode_error(buf, end, exc) from None

    cdef object _decode_error(self, const unsigned char* buf, Py_ssize_t end, object exc):
        """The twin's CodecError for these bytes: the same reason and field path by
        construction (the compiled decoder does not keep the path, to save an exception
        frame per struct); ours, path and all, if the twin unexpectedly accepts them."""
        if self._twin is None:
            self._twin = _PyMessageCodec(self._plan_layout, self.name_crc)
        try:
            self._twin.decode(PyBytes_FromStringAndSize(<const char*>buf, end))
        except CodecError as err:
            return err
        return CodecError(self.name, exc.path, exc.reason)


cdef object _encode_entry(object self, object msg_id, object fields, object kw):
    """encode()'s argument handling, shared by the def method and the fast-call shim."""
    if fields is None:
        values = kw if kw is not None else {}
    elif kw is not None:
        values = {**fields, **kw}
    else:
        values = fields
    return (<MessageCodec>self)._encode(msg_id, values)


cdef object _decode_top(object self, const unsigned char* buf, Py_ssize_t end):
    """decode() of a bytes object, for the METH_O shim (ds_decode_o): no exception frame;
    an error is left raised for _decode_fail."""
    cdef Py_ssize_t off = 2
    if end < 2:
        raise FieldError(f"truncated: need 2 bytes at offset 0, have {end}", "_vl_msg_id")
    return _dec_struct((<MessageCodec>self)._layout, buf, end, &off, 1)


cdef object _decode_fail(object self, object data):
    """The error _decode_top left raised, as decode() raises it: a FieldError becomes the
    CodecError of MessageCodec._decode_error, anything else (MemoryError) is raised again."""
    cdef PyObject* e = ds_take_error()
    exc = <object>e
    ds_decref(e)  # `exc` holds its own reference
    if isinstance(exc, FieldError):
        raise (<MessageCodec>self)._decode_error(
            <const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), exc
        ) from None
    raise exc


cdef object _decode_any_entry(object self, object data):
    return (<MessageCodec>self)._decode_any(data)


ds_encode_impl = _encode_entry
_ENCODE_DOC = MessageCodec.encode.__doc__
ds_install_encode(MessageCodec, _ENCODE_DOC)
ds_decode_top = _decode_top
ds_decode_fail = _decode_fail
ds_decode_any = _decode_any_entry
_DECODE_DOC = MessageCodec.decode.__doc__
ds_install_decode(MessageCodec, _DECODE_DOC)
