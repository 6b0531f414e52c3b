/* jsonenc.c - _core.json_dumps_fast: json.dumps for plain data, in one C pass.
 *
 * Serialization.JSON is the default for remote functions, and encoding the
 * arguments of a 10,000-item map() with json.dumps costs more than the rest
 * of the client's work together (~135 ns an item: the encoder builds a list
 * of string fragments and joins them). This writes the same bytes as
 * json.dumps(obj, separators=(",", ":")).encode() (ensure_ascii, allow_nan,
 * insertion order) straight into one buffer, for exactly None, bool, int,
 * float, str, list, tuple and dict with str keys. Anything else (a subclass,
 * which json may treat specially, a non-str key, nesting deeper than
 * SL_JSON_DEPTH, which may be a cycle) makes it return None, and the caller
 * uses json.dumps itself, so every error and every corner case stays
 * json's own. No Python code runs while encoding (only exact built-in types
 * are visited), so the containers cannot change under the encoder.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "sl_codec.h"

#define SL_JSON_DEPTH 64

typedef struct {
    char *buf;
    size_t len, cap;
} jbuf;

enum { J_OK = 0, J_FALLBACK = 1, J_ERROR = -1 }; /* J_ERROR: a Python exception is set */

static int jb_reserve(jbuf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return J_OK;
    size_t cap = b->cap < 256 ? 256 : b->cap;
    while (cap - b->len < extra) {
        if (cap > ((size_t)PY_SSIZE_T_MAX) / 2) {
            PyErr_NoMemory();
            return J_ERROR;
        }
        cap *= 2;
    }
    char *p = realloc(b->buf, cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return J_ERROR;
    }
    b->buf = p;
    b->cap = cap;
    return J_OK;
}

static int jb_put(jbuf *b, const char *s, size_t n)
{
    if (jb_reserve(b, n) != J_OK)
        return J_ERROR;
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    return J_OK;
}

static int jb_putc(jbuf *b, char c)
{
    if (b->len == b->cap && jb_reserve(b, 1) != J_OK)
        return J_ERROR;
    b->buf[b->len++] = c;
    return J_OK;
}

/* As json's py_encode_basestring_ascii: printable ASCII as is, the usual
 * two-character escapes, everything else \uXXXX (lowercase hex, surrogate
 * pairs above the BMP). */
static int enc_str(jbuf *b, PyObject *s)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    /* Worst case 12 bytes per character (a surrogate pair), plus quotes. */
    if ((size_t)n > ((size_t)PY_SSIZE_T_MAX - 2) / 12) {
        PyErr_NoMemory();
        return J_ERROR;
    }
    if (jb_reserve(b, (size_t)n * 12 + 2) != J_OK)
        return J_ERROR;
    static const char hex[] = "0123456789abcdef";
    char *o = b->buf + b->len;
    *o++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c >= ' ' && c <= '~' && c != '\\' && c != '"') {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '\\':
            *o++ = '\\';
            break;
        case '"':
            *o++ = '"';
            break;
        case '\b':
            *o++ = 'b';
            break;
        case '\f':
            *o++ = 'f';
            break;
        case '\n':
            *o++ = 'n';
            break;
        case '\r':
            *o++ = 'r';
            break;
        case '\t':
            *o++ = 't';
            break;
        default:
            if (c >= 0x10000) {
                Py_UCS4 v = c - 0x10000;
                Py_UCS4 hi = 0xd800 | ((v >> 10) & 0x3ff);
                *o++ = 'u';
                *o++ = hex[(hi >> 12) & 0xf];
                *o++ = hex[(hi >> 8) & 0xf];
                *o++ = hex[(hi >> 4) & 0xf];
                *o++ = hex[hi & 0xf];
                *o++ = '\\';
                c = 0xdc00 | (v & 0x3ff);
            }
            *o++ = 'u';
            *o++ = hex[(c >> 12) & 0xf];
            *o++ = hex[(c >> 8) & 0xf];
            *o++ = hex[(c >> 4) & 0xf];
            *o++ = hex[c & 0xf];
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->buf);
    return J_OK;
}

static int enc_int(jbuf *b, PyObject *v)
{
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred())
        return J_ERROR;
    if (overflow != 0) { /* int.__repr__ of a big int: still no Python code */
        PyObject *s = PyObject_Str(v);
        if (s == NULL)
            return J_ERROR;
        Py_ssize_t n;
        const char *u = PyUnicode_AsUTF8AndSize(s, &n);
        int rc = u != NULL ? jb_put(b, u, (size_t)n) : J_ERROR;
        Py_DECREF(s);
        return rc;
    }
    /* Digits backwards: snprintf would be most of the cost of a small int. */
    char tmp[24];
    char *e = tmp + sizeof(tmp), *p = e;
    unsigned long long u = x < 0 ? 0ULL - (unsigned long long)x : (unsigned long long)x;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (x < 0)
        *--p = '-';
    return jb_put(b, p, (size_t)(e - p));
}

static int enc_float(jbuf *b, PyObject *v)
{
    double x = PyFloat_AS_DOUBLE(v);
    if (!isfinite(x)) {
        const char *s = isnan(x) ? "NaN" : x > 0 ? "Infinity" : "-Infinity";
        return jb_put(b, s, strlen(s));
    }
    /* float.__repr__, which json uses. */
    char *s = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (s == NULL)
        return J_ERROR;
    int rc = jb_put(b, s, strlen(s));
    PyMem_Free(s);
    return rc;
}

static int enc_obj(jbuf *b, PyObject *v, int depth);

static int enc_seq(jbuf *b, PyObject *const *items, Py_ssize_t n, int depth)
{
    if (jb_putc(b, '[') != J_OK)
        return J_ERROR;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i > 0 && jb_putc(b, ',') != J_OK)
            return J_ERROR;
        int rc = enc_obj(b, items[i], depth + 1);
        if (rc != J_OK)
            return rc;
    }
    return jb_putc(b, ']');
}

static int enc_dict(jbuf *b, PyObject *d, int depth)
{
    if (jb_putc(b, '{') != J_OK)
        return J_ERROR;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    bool first = true;
    while (PyDict_Next(d, &pos, &k, &v)) {
        if (!PyUnicode_CheckExact(k))
            return J_FALLBACK; /* json turns int/float/bool/None keys into text */
        if (!first && jb_putc(b, ',') != J_OK)
            return J_ERROR;
        first = false;
        int rc = enc_str(b, k);
        if (rc == J_OK)
            rc = jb_putc(b, ':');
        if (rc == J_OK)
            rc = enc_obj(b, v, depth + 1);
        if (rc != J_OK)
            return rc;
    }
    return jb_putc(b, '}');
}

static int enc_obj(jbuf *b, PyObject *v, int depth)
{
    if (depth > SL_JSON_DEPTH)
        return J_FALLBACK;
    if (v == Py_None)
        return jb_put(b, "null", 4);
    if (v == Py_True)
        return jb_put(b, "true", 4);
    if (v == Py_False)
        return jb_put(b, "false", 5);
    PyTypeObject *t = Py_TYPE(v);
    if (t == &PyLong_Type)
        return enc_int(b, v);
    if (t == &PyUnicode_Type)
        return enc_str(b, v);
    if (t == &PyFloat_Type)
        return enc_float(b, v);
    if (t == &PyTuple_Type)
        return enc_seq(b, &PyTuple_GET_ITEM(v, 0), PyTuple_GET_SIZE(v), depth);
    if (t == &PyList_Type)
        return enc_seq(b, PySequence_Fast_ITEMS(v), PyList_GET_SIZE(v), depth);
    if (t == &PyDict_Type)
        return enc_dict(b, v, depth);
    return J_FALLBACK;
}

PyObject *sl_json_dumps_fast(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "json_dumps_fast(obj, prefix=b'', /)");
        return NULL;
    }
    jbuf b = {NULL, 0, 0};
    int rc = J_OK;
    if (nargs == 2) {
        if (!PyBytes_Check(args[1])) {
            PyErr_SetString(PyExc_TypeError, "prefix must be bytes");
            return NULL;
        }
        rc = jb_put(&b, PyBytes_AS_STRING(args[1]), (size_t)PyBytes_GET_SIZE(args[1]));
    }
    if (rc == J_OK)
        rc = enc_obj(&b, args[0], 0);
    PyObject *res;
    if (rc == J_OK)
        res = PyBytes_FromStringAndSize(b.buf != NULL ? b.buf : "", (Py_ssize_t)b.len);
    else if (rc == J_FALLBACK)
        res = Py_NewRef(Py_None);
    else
        res = NULL;
    free(b.buf);
    return res;
}
