/* codec.c - Python objects <-> msgpack for sandlot._core (packb / unpackb).
 *
 * Packing writes straight into one growing buffer (the storage of the bytes
 * object packb() returns, or a malloc'd request body), exact types first,
 * with the smallest encoding of each value as msgpack-c and msgpack-python
 * choose it. Unpacking first runs
 * sl_mp_check() over the untrusted bytes and then decodes them directly into
 * Python objects. It does not go through msgpack_unpack_next(): msgpack-c's C
 * unpacker has a fixed 32-container stack (MSGPACK_EMBED_STACK_SIZE, baked
 * into libmsgpackc), so it fails on nesting 33..64 that the protocol allows,
 * and its zone would hold a second copy of every str/bin on the way. Since
 * the checker has already proven the framing sound, the decoder below is a
 * short recursive walk whose depth is bounded by max_depth.
 *
 * Nothing here releases the GIL: every step touches Python objects.
 */
#include "sl_codec.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "sl_common.h"
#include "sl_mpcheck.h"

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
static PyObject *pack_to_bytes(PyObject *obj)
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

/* -------------------------------------------------------------- unpacking */

struct decoder {
    const unsigned char *p;
    size_t len;
    size_t pos;
    bool keys; /* use the key cache (main interpreter only) */
};

static PyObject *dec_error(const struct decoder *d, size_t at, const char *what)
{
    (void)d;
    PyErr_Format(PyExc_ValueError, "invalid msgpack: %s at offset %zu", what, at);
    return NULL;
}

/* Bounds-checked reads. sl_mp_check() has already proven the framing, so
 * these never fail on checked input; they keep a checker bug from becoming
 * an out-of-bounds read. */
static int need(const struct decoder *d, size_t n)
{
    return n <= d->len - d->pos;
}

static uint64_t rd_be(struct decoder *d, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = (v << 8) | d->p[d->pos + i];
    d->pos += n;
    return v;
}

static PyObject *dec_obj(struct decoder *d);

static PyObject *dec_str(struct decoder *d, size_t at, size_t n)
{
    if (!need(d, n))
        return dec_error(d, at, "truncated str");
    const unsigned char *src = d->p + d->pos;
    if (n > 1 && n <= 64) {
        /* Short ASCII (most keys and values): one scan, one copy, without
         * the general decoder's set-up. */
        unsigned char any = 0;
        for (size_t i = 0; i < n; i++)
            any |= src[i];
        if (any < 0x80) {
            PyObject *s = PyUnicode_New((Py_ssize_t)n, 127);
            if (s == NULL)
                return NULL;
            memcpy(PyUnicode_DATA(s), src, n);
            d->pos += n;
            return s;
        }
    }
    PyObject *s = PyUnicode_DecodeUTF8((const char *)src, (Py_ssize_t)n, "strict");
    if (s == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            return NULL;
        PyErr_Clear();
        return dec_error(d, at, "str is not valid UTF-8");
    }
    d->pos += n;
    return s;
}

static PyObject *dec_bin(struct decoder *d, size_t at, size_t n)
{
    if (!need(d, n))
        return dec_error(d, at, "truncated bin");
    PyObject *b = PyBytes_FromStringAndSize((const char *)d->p + d->pos, (Py_ssize_t)n);
    if (b != NULL)
        d->pos += n;
    return b;
}

static PyObject *dec_ext(struct decoder *d, size_t at, size_t n)
{
    if (!need(d, 1 + n))
        return dec_error(d, at, "truncated ext");
    int8_t type = (int8_t)d->p[d->pos];
    const unsigned char *body = d->p + d->pos + 1;
    if (type != SL_EXT_BIGINT) {
        PyErr_Format(PyExc_ValueError, "invalid msgpack: unsupported ext type %d at offset %zu",
                     (int)type, at);
        return NULL;
    }
    if (n == 0)
        return dec_error(d, at, "empty big-int ext payload");
    /* _PyLong_FromByteArray has kept this signature since Python 2; the
     * public replacement (PyLong_FromNativeBytes) only exists from 3.13. */
    PyObject *v = _PyLong_FromByteArray(body, n, 1, 1);
    if (v != NULL)
        d->pos += 1 + n;
    return v;
}

static PyObject *dec_array(struct decoder *d, size_t at, size_t n)
{
    if (n > d->len - d->pos) /* every item takes a byte; checked already */
        return dec_error(d, at, "array count larger than the input");
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (list == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        PyObject *item = dec_obj(d);
        if (item == NULL) {
            Py_DECREF(list); /* unset slots are NULL, which list_dealloc skips */
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    return list;
}

/* Map keys repeat (a list of records spells the same few keys thousands of
 * times), so short str keys are looked up in a small direct-mapped cache
 * first: a hit costs a hash of a few bytes and a memcmp instead of a new str
 * object, and the cached str already knows its own hash, so the dict insert
 * does not compute it again. Entries hold strong references to immutable
 * strs (at most SL_KEY_CACHE * SL_KEY_MAX bytes in all). Only used in the
 * main interpreter: objects must not cross interpreters. GIL held. */
#define SL_KEY_CACHE 1024 /* entries, a power of two */
#define SL_KEY_MAX 32     /* longest cached key, in UTF-8 bytes */

struct key_entry {
    PyObject *str; /* NULL: empty */
    uint32_t len;
    unsigned char bytes[SL_KEY_MAX];
};

static struct key_entry g_keys[SL_KEY_CACHE];

static inline uint32_t key_hash(const unsigned char *p, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h ^ (h >> 15);
}

/* A new reference to the str for key bytes p[0..n) (n <= SL_KEY_MAX), or
 * NULL with an exception set (invalid UTF-8 raises UnicodeDecodeError). */
static PyObject *cached_key(const unsigned char *p, size_t n)
{
    struct key_entry *e = &g_keys[key_hash(p, n) & (SL_KEY_CACHE - 1)];
    if (e->str != NULL && e->len == n && memcmp(e->bytes, p, n) == 0)
        return Py_NewRef(e->str);
    PyObject *s = PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)n, "strict");
    if (s == NULL)
        return NULL;
    if (PyObject_Hash(s) == -1) { /* cannot fail for a str; keep it honest */
        Py_DECREF(s);
        return NULL;
    }
    Py_XSETREF(e->str, Py_NewRef(s));
    e->len = (uint32_t)n;
    memcpy(e->bytes, p, n);
    return s;
}

static PyObject *dec_map(struct decoder *d, size_t at, size_t n)
{
    if (n > (d->len - d->pos) / 2)
        return dec_error(d, at, "map count larger than the input");
    /* Sized once: no rehash while filling a large map. */
    PyObject *dict = n > 5 ? _PyDict_NewPresized((Py_ssize_t)n) : PyDict_New();
    if (dict == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        size_t kat = d->pos;
        if (!need(d, 1)) {
            Py_DECREF(dict);
            return dec_error(d, kat, "truncated map");
        }
        unsigned char b = d->p[kat];
        /* Arrays and maps become list and dict, which cannot be dict keys.
         * Refuse before building them. */
        if ((b >= 0x80 && b <= 0x9f) || (b >= 0xdc && b <= 0xdf)) {
            Py_DECREF(dict);
            PyErr_Format(PyExc_ValueError, "invalid msgpack: unhashable map key (%s) at offset %zu",
                         (b >= 0x90 && b <= 0x9f) || b == 0xdc || b == 0xdd ? "array" : "map", kat);
            return NULL;
        }
        PyObject *key;
        size_t klen = b >= 0xa0 && b <= 0xbf    ? (size_t)(b & 0x1f)
                      : b == 0xd9 && need(d, 2) ? (size_t)d->p[kat + 1]
                                                : SIZE_MAX;
        size_t kstart = kat + (b == 0xd9 ? 2 : 1);
        if (d->keys && klen <= SL_KEY_MAX && klen <= d->len - kstart) {
            key = cached_key(d->p + kstart, klen);
            if (key == NULL) {
                Py_DECREF(dict);
                if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
                    return NULL;
                PyErr_Clear();
                return dec_error(d, kat, "str is not valid UTF-8");
            }
            d->pos = kstart + klen;
        } else {
            key = dec_obj(d);
        }
        if (key == NULL) {
            Py_DECREF(dict);
            return NULL;
        }
        PyObject *value = dec_obj(d);
        if (value == NULL) {
            Py_DECREF(key);
            Py_DECREF(dict);
            return NULL;
        }
        int rc = PyDict_SetItem(dict, key, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (rc < 0) {
            Py_DECREF(dict);
            if (PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Clear();
                return dec_error(d, kat, "unhashable map key");
            }
            return NULL;
        }
    }
    return dict;
}

static PyObject *dec_obj(struct decoder *d)
{
    size_t at = d->pos;
    if (!need(d, 1))
        return dec_error(d, at, "truncated input");
    unsigned char b = d->p[d->pos++];

    if (b <= 0x7f)
        return PyLong_FromLong(b);
    if (b >= 0xe0)
        return PyLong_FromLong((long)(int8_t)b);
    if (b <= 0x8f)
        return dec_map(d, at, b & 0x0f);
    if (b <= 0x9f)
        return dec_array(d, at, b & 0x0f);
    if (b <= 0xbf)
        return dec_str(d, at, b & 0x1f);

    /* Everything else has a fixed-size field after the type byte. */
    static const unsigned char field[32] = {
        /* c0 */ 0, 0, 0, 0, 1, 2, 4, 1, 2, 4, 4, 8, 1, 2, 4, 8,
        /* d0 */ 1, 2, 4, 8, 1, 1, 1, 1, 1, 1, 2, 4, 2, 4, 2, 4,
    };
    unsigned f = field[b - 0xc0];
    if (!need(d, f))
        return dec_error(d, at, "truncated header");
    switch (b) {
    case 0xc0:
        Py_RETURN_NONE;
    case 0xc2:
        Py_RETURN_FALSE;
    case 0xc3:
        Py_RETURN_TRUE;
    case 0xc4:
    case 0xc5:
    case 0xc6:
        return dec_bin(d, at, (size_t)rd_be(d, f));
    case 0xc7:
    case 0xc8:
    case 0xc9:
        return dec_ext(d, at, (size_t)rd_be(d, f));
    case 0xca: {
        uint32_t u = (uint32_t)rd_be(d, 4);
        float x;
        memcpy(&x, &u, sizeof(x));
        return PyFloat_FromDouble((double)x);
    }
    case 0xcb: {
        uint64_t u = rd_be(d, 8);
        double x;
        memcpy(&x, &u, sizeof(x));
        return PyFloat_FromDouble(x);
    }
    case 0xcc:
    case 0xcd:
    case 0xce:
    case 0xcf:
        return PyLong_FromUnsignedLongLong(rd_be(d, f));
    case 0xd0:
        return PyLong_FromLong((long)(int8_t)rd_be(d, 1));
    case 0xd1:
        return PyLong_FromLong((long)(int16_t)rd_be(d, 2));
    case 0xd2:
        return PyLong_FromLong((long)(int32_t)rd_be(d, 4));
    case 0xd3:
        return PyLong_FromLongLong((long long)(int64_t)rd_be(d, 8));
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
        /* fixext: the data length is implied by the type byte; field[] only
         * reserved the ext type byte, which dec_ext reads itself. */
        return dec_ext(d, at, (size_t)1 << (b - 0xd4));
    case 0xd9:
    case 0xda:
    case 0xdb:
        return dec_str(d, at, (size_t)rd_be(d, f));
    case 0xdc:
    case 0xdd:
        return dec_array(d, at, (size_t)rd_be(d, f));
    case 0xde:
    case 0xdf:
        return dec_map(d, at, (size_t)rd_be(d, f));
    default: /* 0xc1 */
        return dec_error(d, at, "invalid type byte 0xc1");
    }
}

PyObject *sl_py_unpack(const char *buf, size_t len, size_t max_size, unsigned max_depth)
{
    sl_mp_limits lim = {.max_size = max_size, .max_depth = max_depth};
    char err[256];
    int rc = sl_mp_check(buf, len, &lim, err, sizeof(err));
    if (rc < 0) {
        const char *kind = rc == -EMSGSIZE ? "msgpack input too large"
                           : rc == -ELOOP  ? "msgpack nesting too deep"
                                           : "invalid msgpack";
        PyErr_Format(PyExc_ValueError, "%s: %s", kind, err);
        return NULL;
    }
    struct decoder d = {(const unsigned char *)buf, len, 0,
                        PyInterpreterState_Get() == PyInterpreterState_Main()};
    /* The objects built here are new and hold no cycle, and no Python code
     * runs while they are built: a collection triggered by allocating many
     * containers (a list of records) would only walk them for nothing. */
    int gc_was_on = len > 256 ? PyGC_Disable() : 0;
    PyObject *obj = dec_obj(&d);
    if (gc_was_on)
        PyGC_Enable();
    if (obj != NULL && d.pos != len) {
        Py_DECREF(obj);
        return dec_error(&d, d.pos, "trailing bytes");
    }
    return obj;
}

/* ------------------------------------------------------------ Python API */

static PyObject *sl_packb(PyObject *self, PyObject *obj)
{
    (void)self;
    return pack_to_bytes(obj);
}

static PyObject *sl_unpackb(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    static char *kwlist[] = {"data", "max_depth", "max_size", NULL};
    Py_buffer data;
    Py_ssize_t max_depth = SL_MAX_DEPTH;
    Py_ssize_t max_size = (Py_ssize_t)SL_MAX_BODY;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|$nn:unpackb", kwlist, &data, &max_depth,
                                     &max_size))
        return NULL;
    PyObject *res = NULL;
    if (max_depth < 0 || max_size < 0) {
        PyErr_SetString(PyExc_ValueError, "max_depth and max_size must be >= 0");
    } else {
        unsigned depth = (size_t)max_depth > UINT_MAX ? UINT_MAX : (unsigned)max_depth;
        res = sl_py_unpack((const char *)data.buf, (size_t)data.len, (size_t)max_size, depth);
    }
    PyBuffer_Release(&data);
    return res;
}

PyDoc_STRVAR(sl_packb_doc, "packb(obj, /) -> bytes\n\nEncode obj as msgpack. See _core.pyi.");
PyDoc_STRVAR(sl_unpackb_doc, "unpackb(data, *, max_depth=64, max_size=SL_MAX_BODY) -> object\n\n"
                             "Check and decode one msgpack object. See _core.pyi.");

PyMethodDef sl_codec_methods[] = {
    {"packb", (PyCFunction)sl_packb, METH_O, sl_packb_doc},
    {"unpackb", (PyCFunction)(void (*)(void))sl_unpackb, METH_VARARGS | METH_KEYWORDS,
     sl_unpackb_doc},
    {"json_dumps_fast", (PyCFunction)(void (*)(void))sl_json_dumps_fast, METH_FASTCALL,
     "json_dumps_fast(obj, prefix=b'', /) -> bytes | None\n\nprefix + json.dumps(obj, "
     "separators=(',', ':')).encode() for plain data (None, bool, int, float, str, list, "
     "tuple, dict with str keys); None when json.dumps must be used instead."},
    {NULL, NULL, 0, NULL},
};
