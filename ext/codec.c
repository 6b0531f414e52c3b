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
 * the checker has already proven the framing sound, the decoder is a
 * short recursive walk whose depth is bounded by max_depth.
 *
 * Nothing here releases the GIL: every step touches Python objects.
 *
 * The packer is codec_pack.c, the decoder codec_unpack.c; this file is the
 * module's packb/unpackb/json_dumps_fast entry points.
 */
#include <limits.h>

#include "sl_codec.h"
#include "sl_common.h"

/* ------------------------------------------------------------ Python API */

static PyObject *sl_packb(PyObject *self, PyObject *obj)
{
    (void)self;
    return sl_py_packb(obj);
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
