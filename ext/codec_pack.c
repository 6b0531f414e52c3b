/* codec_pack.c - Python objects -> msgpack (packb, request bodies).
 *
 * Writes straight into one growing buffer (the storage of the bytes object
 * packb() returns, or a malloc'd request body), exact types first, with the
 * smallest encoding of each value as msgpack-c and msgpack-python choose it.
 * Errors name the type and where it was ("['a'][2]"). Part of the codec
 * described in codec.c.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_codec.h"
#include "sl_common.h"

/* ---------------------------------------------------------------- packing */

/* One step of the path from the packed root to the current object, kept so
 * that errors can say where the bad object was ("['a'][2]"). */
enum step_kind { STEP_INDEX, STEP_VALUE, STEP_KEY };

struct step {
    enum step_kind kind;
    Py_ssize_t index; /* STEP_INDEX */
    PyObject *key;    /* STEP_VALUE: strong reference while descending */
};

struct packer {
    sl_pbuf *out;
    unsigned depth; /* containers currently open */
    struct step path[SL_MAX_DEPTH];
};

/* ---- the output buffer: every write reserves first, then stores bytes
 * straight into it (no per-item callback, no per-item memcpy call for the
 * headers). In bytes mode the buffer is the storage of a bytes object,
 * resized in place at the end, so packb() copies nothing. */

static int pb_grow(sl_pbuf *b, size_t n)
{
    if (n > SIZE_MAX / 2 - b->len) {
        PyErr_NoMemory();
        return -1;
    }
    size_t want = b->len + n;
    size_t cap = b->cap < 256 ? 256 : b->cap;
    while (cap < want)
        cap *= 2;
    if (b->bytes != NULL) {
        if (cap > PY_SSIZE_T_MAX - 1 || _PyBytes_Resize(&b->bytes, (Py_ssize_t)cap) < 0)
            return -1; /* _PyBytes_Resize freed it and set MemoryError */
        b->data = PyBytes_AS_STRING(b->bytes);
    } else {
        char *p = realloc(b->data, cap);
        if (p == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        b->data = p;
    }
    b->cap = cap;
    return 0;
}

static inline int pb_reserve(sl_pbuf *b, size_t n)
{
    return b->cap - b->len >= n ? 0 : pb_grow(b, n);
}

static inline void put1(sl_pbuf *b, unsigned char c)
{
    b->data[b->len++] = (char)c;
}

static inline void put_be(sl_pbuf *b, uint64_t v, unsigned n)
{
    unsigned char *p = (unsigned char *)b->data + b->len;
    for (unsigned i = 0; i < n; i++)
        p[i] = (unsigned char)(v >> (8 * (n - 1 - i)));
    b->len += n;
}

/* A header: one type byte and a big-endian field of n bytes (n <= 8).
 * Reserves 9 bytes: enough for any header. */
static inline int put_hdr(sl_pbuf *b, unsigned char type, uint64_t v, unsigned n)
{
    if (pb_reserve(b, 9) < 0)
        return -1;
    put1(b, type);
    put_be(b, v, n);
    return 0;
}

/* bin8/16/32, fixarray/array16/32, fixmap/map16/32 (fixstr/str8/16/32 in
 * pack_str): the smallest form, as msgpack-c and msgpack-python write them. */
static int put_bin_hdr(sl_pbuf *b, size_t n)
{
    if (n < 256)
        return put_hdr(b, 0xc4, n, 1);
    return n < 65536 ? put_hdr(b, 0xc5, n, 2) : put_hdr(b, 0xc6, n, 4);
}

static int put_array_hdr(sl_pbuf *b, size_t n)
{
    if (n < 16)
        return put_hdr(b, (unsigned char)(0x90 | n), 0, 0);
    return n < 65536 ? put_hdr(b, 0xdc, n, 2) : put_hdr(b, 0xdd, n, 4);
}

static int put_map_hdr(sl_pbuf *b, size_t n)
{
    if (n < 16)
        return put_hdr(b, (unsigned char)(0x80 | n), 0, 0);
    return n < 65536 ? put_hdr(b, 0xde, n, 2) : put_hdr(b, 0xdf, n, 4);
}

static int put_ext_hdr(sl_pbuf *b, size_t n, int8_t type)
{
    int rc;
    if (n == 1 || n == 2 || n == 4 || n == 8 || n == 16) {
        unsigned log2 = n == 1 ? 0 : n == 2 ? 1 : n == 4 ? 2 : n == 8 ? 3 : 4;
        rc = put_hdr(b, (unsigned char)(0xd4 + log2), 0, 0);
    } else if (n < 256) {
        rc = put_hdr(b, 0xc7, n, 1);
    } else {
        rc = n < 65536 ? put_hdr(b, 0xc8, n, 2) : put_hdr(b, 0xc9, n, 4);
    }
    if (rc == 0)
        put1(b, (unsigned char)type); /* put_hdr reserved 9 bytes, at most 5 used */
    return rc;
}

static int put_raw(sl_pbuf *b, const void *p, size_t n)
{
    if (pb_reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static int put_int64(sl_pbuf *b, int64_t v)
{
    if (v >= 0) {
        uint64_t u = (uint64_t)v;
        if (u < 128)
            return put_hdr(b, (unsigned char)u, 0, 0);
        if (u < 256)
            return put_hdr(b, 0xcc, u, 1);
        if (u < 65536)
            return put_hdr(b, 0xcd, u, 2);
        return u <= UINT32_MAX ? put_hdr(b, 0xce, u, 4) : put_hdr(b, 0xcf, u, 8);
    }
    if (v >= -32)
        return put_hdr(b, (unsigned char)(int8_t)v, 0, 0);
    if (v >= INT8_MIN)
        return put_hdr(b, 0xd0, (uint8_t)(int8_t)v, 1);
    if (v >= INT16_MIN)
        return put_hdr(b, 0xd1, (uint16_t)(int16_t)v, 2);
    if (v >= INT32_MIN)
        return put_hdr(b, 0xd2, (uint32_t)(int32_t)v, 4);
    return put_hdr(b, 0xd3, (uint64_t)v, 8);
}

static int put_double(sl_pbuf *b, double x)
{
    uint64_t u;
    memcpy(&u, &x, sizeof(u));
    return put_hdr(b, 0xcb, u, 8);
}

/* Longest repr of a dict key shown in a path before it is cut. */
#define SL_PATH_KEY_MAX 60

/* Returns a new str like "['a'][2]" (or "the top level"), NULL on error. */
static PyObject *format_path(const struct packer *st)
{
    if (st->depth == 0)
        return PyUnicode_FromString("the top level");
    PyObject *parts = PyList_New(0);
    if (parts == NULL)
        return NULL;
    for (unsigned i = 0; i < st->depth; i++) {
        const struct step *s = &st->path[i];
        PyObject *part = NULL;
        if (s->kind == STEP_INDEX) {
            part = PyUnicode_FromFormat("[%zd]", s->index);
        } else if (s->kind == STEP_KEY) {
            part = PyUnicode_FromString("<key>");
        } else {
            /* repr() of a str subclass may run user code: s->key is a
             * strong reference, so it stays valid whatever that code does. */
            PyObject *r = PyObject_Repr(s->key);
            if (r != NULL && PyUnicode_GET_LENGTH(r) > SL_PATH_KEY_MAX) {
                PyObject *cut = PyUnicode_Substring(r, 0, SL_PATH_KEY_MAX);
                Py_DECREF(r);
                r = cut == NULL ? NULL : PyUnicode_FromFormat("%U...", cut);
                Py_XDECREF(cut);
            }
            if (r != NULL) {
                part = PyUnicode_FromFormat("[%U]", r);
                Py_DECREF(r);
            }
        }
        if (part == NULL || PyList_Append(parts, part) < 0) {
            Py_XDECREF(part);
            Py_DECREF(parts);
            return NULL;
        }
        Py_DECREF(part);
    }
    PyObject *sep = PyUnicode_FromStringAndSize(NULL, 0);
    PyObject *res = sep == NULL ? NULL : PyUnicode_Join(sep, parts);
    Py_XDECREF(sep);
    Py_DECREF(parts);
    return res;
}

/* Raise exc with "<what> at <path>". Always returns -1. */
static int pack_error(const struct packer *st, PyObject *exc, const char *what)
{
    PyObject *path = format_path(st);
    if (path == NULL)
        return -1; /* MemoryError (or the key repr's error) is already set */
    PyErr_Format(exc, "%s at %U", what, path);
    Py_DECREF(path);
    return -1;
}

static int pack_type_error(const struct packer *st, PyObject *obj)
{
    char what[256];
    snprintf(what, sizeof(what), "cannot pack object of type %.200s", Py_TYPE(obj)->tp_name);
    return pack_error(st, PyExc_TypeError, what);
}

static int pack_len_check(const struct packer *st, size_t n, const char *what)
{
    if (n > UINT32_MAX)
        return pack_error(st, PyExc_ValueError, what);
    return 0;
}

/* Ints outside [-2**63, 2**64): ext type SL_EXT_BIGINT holding the minimal
 * two's-complement little-endian bytes. Done through int.bit_length and
 * int.to_bytes looked up on the int type (so subclass overrides are not
 * consulted): the C-level byte array helpers are private and changed
 * signature in 3.13. Big ints are rare; clarity wins over speed here. */
static int pack_bigint(struct packer *st, PyObject *obj)
{
    PyObject *bits = PyObject_CallMethod((PyObject *)&PyLong_Type, "bit_length", "O", obj);
    if (bits == NULL)
        return -1;
    size_t nbits = PyLong_AsSize_t(bits);
    Py_DECREF(bits);
    if (nbits == (size_t)-1 && PyErr_Occurred())
        return -1;
    /* |x| needs nbits bits; one more holds the sign. Trimmed below for
     * negatives like -2**71, which fit one byte shorter. */
    size_t n = nbits / 8 + 1;
    if (pack_len_check(st, n, "int too large to pack") < 0)
        return -1;
    PyObject *to_bytes = PyObject_GetAttrString((PyObject *)&PyLong_Type, "to_bytes");
    if (to_bytes == NULL)
        return -1;
    PyObject *args = Py_BuildValue("(Ons)", obj, (Py_ssize_t)n, "little");
    PyObject *kwargs = args == NULL ? NULL : Py_BuildValue("{s:O}", "signed", Py_True);
    PyObject *b = kwargs == NULL ? NULL : PyObject_Call(to_bytes, args, kwargs);
    Py_DECREF(to_bytes);
    Py_XDECREF(args);
    Py_XDECREF(kwargs);
    if (b == NULL)
        return -1;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(b);
    /* Drop top bytes that only repeat the sign of the byte below them. */
    while (n > 1 &&
           ((p[n - 1] == 0x00 && !(p[n - 2] & 0x80)) || (p[n - 1] == 0xff && (p[n - 2] & 0x80))))
        n--;
    int rc = put_ext_hdr(st->out, n, SL_EXT_BIGINT);
    if (rc == 0)
        rc = put_raw(st->out, p, n);
    Py_DECREF(b);
    return rc;
}

static int pack_int(struct packer *st, PyObject *obj)
{
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow == 0)
        return put_int64(st->out, (int64_t)v);
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(obj);
        if (u != (unsigned long long)-1 || !PyErr_Occurred())
            return put_hdr(st->out, 0xcf, (uint64_t)u, 8);
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
    }
    return pack_bigint(st, obj);
}

static int pack_bin(struct packer *st, const void *p, size_t n)
{
    if (pack_len_check(st, n, "bytes object too large to pack (over 4 GiB)") < 0)
        return -1;
    if (put_bin_hdr(st->out, n) < 0)
        return -1;
    return put_raw(st->out, p, n);
}

static int pack_str(struct packer *st, PyObject *obj)
{
    Py_ssize_t n;
    const char *p;
    if (PyUnicode_IS_COMPACT_ASCII(obj)) { /* the bytes are the UTF-8 */
        p = (const char *)PyUnicode_DATA(obj);
        n = PyUnicode_GET_LENGTH(obj);
    } else {
        p = PyUnicode_AsUTF8AndSize(obj, &n);
        if (p == NULL) {
            /* Lone surrogates cannot be UTF-8: say where, keep ValueError. */
            if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
                return -1;
            PyErr_Clear();
            return pack_error(st, PyExc_ValueError, "cannot pack str that is not valid Unicode");
        }
    }
    if (pack_len_check(st, (size_t)n, "str too large to pack (over 4 GiB)") < 0)
        return -1;
    sl_pbuf *b = st->out;
    if (pb_reserve(b, (size_t)n + 5) < 0)
        return -1;
    /* Reserved above: header and body written without further checks. */
    if (n < 32) {
        put1(b, (unsigned char)(0xa0 | n));
    } else if (n < 256) {
        put1(b, 0xd9);
        put_be(b, (uint64_t)n, 1);
    } else if (n < 65536) {
        put1(b, 0xda);
        put_be(b, (uint64_t)n, 2);
    } else {
        put1(b, 0xdb);
        put_be(b, (uint64_t)n, 4);
    }
    memcpy(b->data + b->len, p, (size_t)n);
    b->len += (size_t)n;
    return 0;
}

static int pack_memoryview(struct packer *st, PyObject *obj)
{
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_FULL_RO) < 0)
        return -1;
    int rc;
    if (PyBuffer_IsContiguous(&view, 'C')) {
        rc = pack_bin(st, view.buf, (size_t)view.len);
    } else {
        /* Strided views (m[::2]) are packed as their C-order bytes, like
         * memoryview.tobytes() would give. */
        void *tmp = PyMem_Malloc(view.len > 0 ? (size_t)view.len : 1);
        if (tmp == NULL) {
            PyErr_NoMemory();
            rc = -1;
        } else {
            rc = PyBuffer_ToContiguous(tmp, &view, view.len, 'C');
            if (rc == 0)
                rc = pack_bin(st, tmp, (size_t)view.len);
            PyMem_Free(tmp);
        }
    }
    PyBuffer_Release(&view);
    return rc;
}

static int pack_obj(struct packer *st, PyObject *obj);

/* Enter one more container level, or refuse (ValueError) past SL_MAX_DEPTH;
 * this is also what stops self-containing lists. */
static int enter(struct packer *st)
{
    if (st->depth >= SL_MAX_DEPTH) {
        char what[96];
        snprintf(what, sizeof(what), "cannot pack: nesting deeper than %d levels", SL_MAX_DEPTH);
        return pack_error(st, PyExc_ValueError, what);
    }
    st->depth++;
    return 0;
}

static int pack_seq(struct packer *st, PyObject *obj)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(obj);
    if (pack_len_check(st, (size_t)n, "sequence too long to pack") < 0)
        return -1;
    if (enter(st) < 0)
        return -1;
    struct step *s = &st->path[st->depth - 1];
    s->kind = STEP_INDEX;
    s->key = NULL;
    int rc = put_array_hdr(st->out, (size_t)n);
    for (Py_ssize_t i = 0; rc == 0 && i < n; i++) {
        /* Nothing below runs Python code, so the list cannot shrink under
         * us; the size check keeps that assumption from becoming a crash. */
        if (i >= PySequence_Fast_GET_SIZE(obj)) {
            PyErr_SetString(PyExc_RuntimeError, "list changed size during packing");
            rc = -1;
            break;
        }
        s->index = i;
        rc = pack_obj(st, PySequence_Fast_GET_ITEM(obj, i));
    }
    if (rc == 0)
        st->depth--;
    return rc;
}

static int pack_dict(struct packer *st, PyObject *obj)
{
    Py_ssize_t n = PyDict_GET_SIZE(obj);
    if (pack_len_check(st, (size_t)n, "dict too large to pack") < 0)
        return -1;
    if (enter(st) < 0)
        return -1;
    struct step *s = &st->path[st->depth - 1];
    s->key = NULL;
    int rc = put_map_hdr(st->out, (size_t)n);
    Py_ssize_t pos = 0, done = 0;
    PyObject *key, *value;
    while (rc == 0 && PyDict_Next(obj, &pos, &key, &value)) {
        if (done++ == n) {
            PyErr_SetString(PyExc_RuntimeError, "dict changed size during packing");
            rc = -1;
            break;
        }
        s->kind = STEP_KEY;
        rc = PyUnicode_CheckExact(key) ? pack_str(st, key) : pack_obj(st, key);
        if (rc < 0)
            break;
        /* Hold the key: building an error path calls repr() on it. */
        Py_INCREF(key);
        s->kind = STEP_VALUE;
        s->key = key;
        rc = pack_obj(st, value);
        s->key = NULL;
        Py_DECREF(key);
    }
    if (rc == 0 && done != n) {
        PyErr_SetString(PyExc_RuntimeError, "dict changed size during packing");
        rc = -1;
    }
    if (rc == 0)
        st->depth--;
    return rc;
}

static int pack_obj(struct packer *st, PyObject *obj)
{
    PyTypeObject *t = Py_TYPE(obj);
    /* Exact types first (the common case), then subclasses. bool is an int
     * subclass, so it is tested before int. */
    if (t == &PyUnicode_Type)
        return pack_str(st, obj);
    if (t == &PyLong_Type)
        return pack_int(st, obj);
    if (t == &PyFloat_Type)
        return put_double(st->out, PyFloat_AS_DOUBLE(obj));
    if (t == &PyDict_Type)
        return pack_dict(st, obj);
    if (t == &PyList_Type || t == &PyTuple_Type)
        return pack_seq(st, obj);
    if (obj == Py_None)
        return put_hdr(st->out, 0xc0, 0, 0);
    if (obj == Py_True)
        return put_hdr(st->out, 0xc3, 0, 0);
    if (obj == Py_False)
        return put_hdr(st->out, 0xc2, 0, 0);
    if (t == &PyBytes_Type)
        return pack_bin(st, PyBytes_AS_STRING(obj), (size_t)PyBytes_GET_SIZE(obj));
    if (PyUnicode_Check(obj))
        return pack_str(st, obj);
    if (PyLong_Check(obj))
        return pack_int(st, obj);
    if (PyFloat_Check(obj))
        return put_double(st->out, PyFloat_AS_DOUBLE(obj));
    if (PyDict_Check(obj))
        return pack_dict(st, obj);
    if (PyList_Check(obj) || PyTuple_Check(obj))
        return pack_seq(st, obj);
    if (PyBytes_Check(obj))
        return pack_bin(st, PyBytes_AS_STRING(obj), (size_t)PyBytes_GET_SIZE(obj));
    if (PyByteArray_Check(obj))
        return pack_bin(st, PyByteArray_AS_STRING(obj), (size_t)PyByteArray_GET_SIZE(obj));
    if (PyMemoryView_Check(obj))
        return pack_memoryview(st, obj);
    return pack_type_error(st, obj);
}

int sl_py_pack(PyObject *obj, sl_pbuf *out)
{
    struct packer st;
    st.out = out;
    st.depth = 0;
    return pack_obj(&st, obj);
}

void sl_pbuf_free(sl_pbuf *b)
{
    if (b->bytes != NULL)
        Py_CLEAR(b->bytes);
    else
        free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* packb(): packed straight into a bytes object, shrunk to size at the end. */
PyObject *sl_py_packb(PyObject *obj)
{
    sl_pbuf b = {0};
    b.bytes = PyBytes_FromStringAndSize(NULL, 256);
    if (b.bytes == NULL)
        return NULL;
    b.data = PyBytes_AS_STRING(b.bytes);
    b.cap = 256;
    if (sl_py_pack(obj, &b) < 0) {
        sl_pbuf_free(&b);
        return NULL;
    }
    PyObject *res = b.bytes;
    if (_PyBytes_Resize(&res, (Py_ssize_t)b.len) < 0)
        return NULL;
    return res;
}
