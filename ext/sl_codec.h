/* sl_codec.h - Python objects <-> msgpack, for ext/.
 *
 * Owned by ext/codec.c (entry points), codec_pack.c and codec_unpack.c. Everything decoded goes
 * through sl_mp_check() (csrc/codec/sl_mpcheck.h) before anything is allocated.
 *
 * Supported: None, bool, int (ext type 1 = two's-complement little-endian
 * bytes for ints outside [-2**63, 2**64)), float, str, bytes, bytearray,
 * memoryview (as bin), list, tuple (as array), dict. Decoding gives list for
 * arrays. See python/sandlot/_core.pyi for the user-visible contract.
 */
#ifndef SL_CODEC_H
#define SL_CODEC_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

#define SL_EXT_BIGINT 1

/* The packer's output: a malloc'd buffer (bytes == NULL; zero-initialise it,
 * take data or release it with sl_pbuf_free), or inside codec.c the storage
 * of a bytes object. */
typedef struct sl_pbuf {
    char *data;
    size_t len, cap;
    PyObject *bytes;
} sl_pbuf;

/* Append the encoding of obj to out. Returns 0, or -1 with a Python exception
 * set (TypeError naming the type and where it was, ValueError for depth). */
int sl_py_pack(PyObject *obj, sl_pbuf *out);
void sl_pbuf_free(sl_pbuf *b);
/* packb(obj): a new bytes object, or NULL with an exception set. */
PyObject *sl_py_packb(PyObject *obj);

/* Decode exactly one object from buf after checking it against the limits.
 * Returns a new reference, or NULL with ValueError set. */
PyObject *sl_py_unpack(const char *buf, size_t len, size_t max_size, unsigned max_depth);

/* json_dumps_fast(obj, prefix=b"", /) (ext/jsonenc.c): prefix +
 * json.dumps(obj, separators=(",", ":")).encode() for plain data, or None
 * when json.dumps itself must be used. */
PyObject *sl_json_dumps_fast(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

/* packb/unpackb for the module's method table (NULL-terminated). */
extern PyMethodDef sl_codec_methods[];

#endif
