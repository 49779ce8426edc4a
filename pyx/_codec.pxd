# C-level declarations for _codec.pyx (compiled as datasync._codec_c), cimported by name:
# the extension's module name differs from this file's, so Cython would not pair them
# implicitly. Only enums, structs and extern functions live here.
from cpython.object cimport PyObject


# Op kinds: the same numbers as datasync.vpp._codec_plan (a test checks they agree).
cdef enum:
    K_U8 = 0
    K_I8 = 1
    K_U16 = 2
    K_I16 = 3
    K_U32 = 4
    K_I32 = 5
    K_U64 = 6
    K_I64 = 7
    K_F64 = 8
    K_BOOL = 9
    K_BYTES = 10
    K_STR = 11
    K_VSTR = 12
    K_VBYTES = 13
    K_LBYTES = 14
    K_STRUCT = 15
    K_UNION = 16
    K_ARRAY = 17
    K_VLA = 18
    K_LVLA = 19

# Conversions (same numbers as _codec_plan.C_*).
cdef enum:
    C_NONE = 0
    C_IP4 = 1
    C_IP6 = 2
    C_ADDRESS = 3
    C_PREFIX = 4
    C_AWP = 5
    C_IP4_PREFIX = 6
    C_IP6_PREFIX = 7
    C_IP4_AWP = 8
    C_IP6_AWP = 9
    C_MAC = 10

# How _enc_fast encodes a field (COp.ek): ints by wire size, then the other fixed kinds;
# EK_ICNT: the int length field of a variable array (its value is kept for the array).
cdef enum:
    EK_NONE = 0
    EK_I1 = 1
    EK_I2 = 2
    EK_I4 = 3
    EK_I8 = 4
    EK_BOOL = 5
    EK_F64 = 6
    EK_STR = 7
    EK_BYTES = 8
    EK_CONV = 9
    EK_IARR = 10
    EK_ICNT = 11


cdef struct COp:
    # One field of a compiled program. The PyObject pointers are borrowed: the owning
    # _Layout keeps every one of them alive in its `keep` list.
    int kind
    int conv
    Py_ssize_t size          # fixed wire size; element count of K_ARRAY; -1 if variable
    Py_ssize_t len_index     # VLA: index of its length field
    Py_ssize_t count_for     # length field: index of the array it counts
    long long lo             # integer range (K_U64 is checked separately)
    long long hi
    PyObject* name           # str
    PyObject* sub            # _Layout: struct/union, or a one-op layout holding an element
    PyObject* dflt           # default value, or NULL
    PyObject* plan_op        # the Python Op, for the twin's slow paths
    Py_ssize_t run           # decode: simple fixed-size fields from here on (0: not simple)
    Py_ssize_t run_size      # ... and their wire size, checked once for the whole run
    int ek                   # encode: how _enc_fast takes the field (EK_*; 0: it does not)
    Py_ssize_t wsize         # ... and its wire size
    Py_ssize_t frun          # wire size of the fields _enc_fast may take from here on


cdef struct WBuf:
    # Output buffer: starts on the caller's stack, moves to the heap when it must grow.
    char* data
    Py_ssize_t len
    Py_ssize_t cap
    char* heap


cdef extern from "Python.h":
    PyObject* PyDict_GetItem(object d, object key)
    PyObject* PyDict_GetItemWithError(object d, object key)
    bint PyLong_CheckExact(object o)
    bint PyDict_CheckExact(object o)
    bint PyTuple_CheckExact(object o)
    bint PyTuple_Check(object o)
    bint PyList_CheckExact(object o)
    bint PyLong_Check(object o)
    bint PyBytes_CheckExact(object o)
    bint PyUnicode_CheckExact(object o)
    bint PyFloat_CheckExact(object o)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1
    unsigned long long PyLong_AsUnsignedLongLong(object o) except? -1
    const char* PyUnicode_AsUTF8AndSize(object o, Py_ssize_t* size) except NULL
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)
    object PyBytes_FromStringAndSize(const char* s, Py_ssize_t n)
    char* PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)
    object PyLong_FromLongLong(long long v)
    object PyLong_FromUnsignedLongLong(unsigned long long v)
    object PyFloat_FromDouble(double v)
    double PyFloat_AS_DOUBLE(PyObject* o)
    double PyFloat_AsDouble(object o) except? -1.0
    object PyList_New(Py_ssize_t n)
    void PyList_SET_ITEM(object lst, Py_ssize_t i, PyObject* item)
    void PyTuple_SET_ITEM(object t, Py_ssize_t i, PyObject* item)
    void Py_INCREF(PyObject* o)
    int PyObject_IsTrue(object o) except -1


cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char* src, void* dst)


cdef extern from "<sys/socket.h>" nogil:
    int AF_INET
    int AF_INET6
