/* codec_unpack.c - msgpack -> Python objects (unpackb, response bodies),
 * after sl_mp_check() has checked the untrusted bytes against the limits.
 * Part of the codec described in codec.c.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "sl_codec.h"
#include "sl_common.h"
#include "sl_mpcheck.h"

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
