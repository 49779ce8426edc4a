# C-level declarations for _buffer.pyx (compiled as datasync._buffer_c), cimported by name:
# the extension's module name differs from this file's, so Cython would not pair them
# implicitly. Only structs and extern functions live here, so cimporting it needs no module
# at run time.
from cpython.object cimport PyObject
from libc.stdint cimport int64_t


cdef struct _Entry:
    # One held change in drain order: its revision and its slot in the arrival list.
    int64_t rev
    Py_ssize_t slot


cdef extern from "Python.h":
    # Borrowed-reference accessors, declared on PyObject* so no reference counting happens.
    PyObject* PyList_GET_ITEM(object lst, Py_ssize_t i)
    Py_ssize_t PyList_GET_SIZE(object lst)
    int PyList_Append(object lst, PyObject* item) except -1
    list PyList_New(Py_ssize_t n)
    void PyList_SET_ITEM(object lst, Py_ssize_t i, PyObject* item)  # steals the reference
    int PyList_SetSlice(object lst, Py_ssize_t lo, Py_ssize_t hi, PyObject* items) except -1
    void Py_DECREF(PyObject* o)
    void Py_INCREF(PyObject* o)
    PyObject* PyTuple_GET_ITEM(PyObject* t, Py_ssize_t i)
    Py_ssize_t PyTuple_GET_SIZE(PyObject* t)
    bint PyTuple_Check(PyObject* o)
    bint PyUnicode_CheckExact(PyObject* o)
    Py_ssize_t PyUnicode_GET_LENGTH(PyObject* o)
    bint PyLong_Check(PyObject* o)
    bint PyBool_Check(PyObject* o)
    long long PyLong_AsLongLong(PyObject* o)
    # Keys are validated plain str, so lookups cannot fail or run Python code.
    PyObject* PyDict_GetItemWithError(object d, PyObject* key)
    int PyDict_SetItem(object d, PyObject* key, object value) except -1
    bint PyDict_Next(object d, Py_ssize_t* pos, PyObject** key, PyObject** value)
    # Exact str: the hash is cached in the object (-1 until first computed); hashing and
    # comparing two of them runs no Python code and cannot fail.
    ctypedef struct PyASCIIObject:
        Py_hash_t hash
    Py_hash_t PyObject_Hash(PyObject* o) except? -1
    int PyUnicode_KIND(PyObject* o)
    void* PyUnicode_DATA(PyObject* o)
    Py_ssize_t Py_REFCNT(PyObject* o)
    # Shrinks a list in place, keeping its capacity: the slots past the new size must be
    # NULL.
    void Py_SET_SIZE(PyObject* o, Py_ssize_t n)
    ctypedef struct PyListObject:
        PyObject** ob_item


cdef struct _Best:
    # One key's newest change while coalescing: an entry of an open-addressing table.
    PyObject* key  # borrowed; NULL marks an empty entry
    Py_hash_t hash
    int64_t rev
    Py_ssize_t slot


cdef struct _Table:
    # Open-addressing table (linear probing) of mask + 1 _Best entries, a power of two;
    # used of them taken, at most two thirds.
    _Best* tab
    size_t mask
    Py_ssize_t used


cdef struct _Rev:
    # A key's last applied revision in the revision filter's open-addressing table.
    PyObject* key  # a reference held by the table; NULL marks an empty entry
    Py_hash_t hash
    int64_t rev
