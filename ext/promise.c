/* promise.c - _core.Promise: an OperationRef completed from Python.
 *
 * Remote-function batches submit many calls in one request and learn their
 * outcomes from later batched responses, so each call's OperationRef cannot
 * be tied to a transfer of its own. A Promise makes a request that is never
 * submitted, hands out an ordinary OperationRef for it (so result(), await,
 * add_done_callback and cancel behave exactly as for any other ref), and
 * completes it with an HTTP-like outcome: a status and a msgpack body that
 * the ref decodes and passes through its transform, or maps to an error.
 *
 * on_cancel(): called (with the GIL) when the ref is cancelled, so the
 * Python layer can cancel the remote work. Every path that cancels a ref
 * (ref.cancel(), a cancelled awaiting task) runs with the GIL held.
 */
#include <errno.h>
#include <stdint.h>

#include "sl_ext.h"
#include "sl_promise.h"

int sl_promise_add_type(PyObject *module, sl_modstate *st);

typedef struct {
    PyObject_HEAD sl_req *req;
    PyObject *ref;
} Promise;

typedef struct {
    sl_watch w; /* first: the watch pointer is the node pointer */
    PyObject *on_cancel;
} cancel_node;

static sl_endpoint *g_ep; /* guarded by the GIL; a label, never connected to */

/* msgpack {"error": {"code": "internal", "message": ...}}: the outcome of a
 * ref whose promise is dropped before anyone completed it. */
static const char g_dropped[] = "\x81\xa5"
                                "error"
                                "\x82\xa4"
                                "code"
                                "\xa8"
                                "internal"
                                "\xa7"
                                "message"
                                "\xd9\x2f"
                                "the promise was dropped before it was completed";

static int ensure_endpoint(void)
{
    if (g_ep == NULL && sl_endpoint_new("unix:///sandlot-promise", NULL, &g_ep) < 0) {
        PyErr_SetString(PyExc_MemoryError, "cannot create the promise endpoint");
        return -1;
    }
    return 0;
}

static void cancel_watch(sl_watch *w, sl_req *req)
{
    cancel_node *n = (cancel_node *)w;
    PyGILState_STATE gs = PyGILState_Ensure();
    if (sl_req_state(req) == SL_REQ_CANCELLED) {
        PyObject *r = PyObject_CallNoArgs(n->on_cancel);
        if (r == NULL)
            PyErr_WriteUnraisable(n->on_cancel);
        Py_XDECREF(r);
    }
    Py_DECREF(n->on_cancel);
    PyGILState_Release(gs);
    free(n);
}

static int promise_init(Promise *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"label", "transform", "on_cancel", NULL};
    const char *label;
    PyObject *transform = Py_None, *on_cancel = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "s|OO", kwlist, &label, &transform, &on_cancel))
        return -1;
    if (self->req != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Promise already initialised");
        return -1;
    }
    if ((transform != Py_None && !PyCallable_Check(transform)) ||
        (on_cancel != Py_None && !PyCallable_Check(on_cancel))) {
        PyErr_SetString(PyExc_TypeError, "transform and on_cancel must be callables or None");
        return -1;
    }
    if (ensure_endpoint() < 0)
        return -1;
    sl_req *req;
    int rc = sl_req_new(g_ep, "POST", label, NULL, 0, 0, 0, &req);
    if (rc < 0) {
        PyErr_Format(PyExc_ValueError, "bad promise label %R (a path starting with '/')",
                     PyTuple_GET_ITEM(args, 0));
        return -1;
    }
    if (on_cancel != Py_None) {
        cancel_node *n = calloc(1, sizeof(*n));
        if (n == NULL) {
            sl_req_unref(req);
            PyErr_NoMemory();
            return -1;
        }
        n->w.fn = cancel_watch;
        n->on_cancel = Py_NewRef(on_cancel);
        if (sl_req_watch(req, &n->w) < 0) { /* cannot happen: nobody else has req */
            Py_DECREF(n->on_cancel);
            free(n);
        }
    }
    sl_modstate *st = sl_modstate_of_type(Py_TYPE(self));
    sl_req_ref(req); /* one for us, one stolen by the ref */
    PyObject *ref = sl_opref_new(st, req, transform == Py_None ? NULL : transform);
    if (ref == NULL) {
        sl_req_unref(req);
        return -1;
    }
    self->req = req;
    self->ref = ref;
    return 0;
}

static PyObject *promise_complete(Promise *self, PyObject *args)
{
    long status;
    Py_buffer body;
    if (!PyArg_ParseTuple(args, "ly*", &status, &body))
        return NULL;
    if (self->req == NULL) {
        PyBuffer_Release(&body);
        PyErr_SetString(PyExc_RuntimeError, "Promise not initialised");
        return NULL;
    }
    int rc = sl_req_resolve(self->req, status, body.buf, (size_t)body.len);
    PyBuffer_Release(&body);
    if (rc < 0)
        return rc == -ENOMEM ? PyErr_NoMemory()
                             : PyErr_Format(PyExc_RuntimeError, "resolve: %d", rc);
    return PyBool_FromLong(rc);
}

static PyObject *promise_done(Promise *self, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(self->req == NULL || sl_req_state(self->req) != SL_REQ_PENDING);
}

static PyObject *promise_get_ref(Promise *self, void *closure)
{
    (void)closure;
    if (self->ref == NULL)
        Py_RETURN_NONE;
    return Py_NewRef(self->ref);
}

static int promise_traverse(Promise *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->ref);
    return 0;
}

static int promise_clear(Promise *self)
{
    Py_CLEAR(self->ref);
    return 0;
}

static void promise_dealloc(Promise *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->req != NULL) {
        /* Nobody can complete it any more: fail it rather than leave
         * whoever holds the ref waiting forever. */
        (void)sl_req_resolve(self->req, 500, g_dropped, sizeof(g_dropped) - 1);
        sl_req_unref(self->req);
        self->req = NULL;
    }
    promise_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef promise_methods[] = {
    {"complete", (PyCFunction)promise_complete, METH_VARARGS,
     "complete(status, body)\n--\n\nComplete the ref with an HTTP status and a "
     "msgpack body; "
     "True if this call completed it."},
    {"done", (PyCFunction)promise_done, METH_NOARGS, "True once completed or cancelled."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef promise_getset[] = {
    {"ref", (getter)promise_get_ref, NULL, "The OperationRef this promise completes.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(promise_doc, "Promise(label, transform=None, on_cancel=None)\n--\n\n"
                          "An OperationRef (.ref) completed by complete(status, body).");

static PyType_Slot promise_slots[] = {
    {Py_tp_doc, (void *)promise_doc},
    {Py_tp_init, promise_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, promise_dealloc},
    {Py_tp_traverse, promise_traverse},
    {Py_tp_clear, promise_clear},
    {Py_tp_methods, promise_methods},
    {Py_tp_getset, promise_getset},
    {0, NULL},
};

static PyType_Spec promise_spec = {
    .name = "sandlot._core.Promise",
    .basicsize = sizeof(Promise),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = promise_slots,
};

/* ------------------------------------------------------------------------ */
/* PromiseBatch: n refs completed together                                   */
/* ------------------------------------------------------------------------ */

/* A chunk of a map() comes back as one decoded list, so its refs are made
 * and completed in C, a few hundred nanoseconds each: ref i is resolved with
 * the msgpack integer i as its body, and its transform is the batch itself,
 * which maps i to values[i] when kinds[i] is 'O' (or kinds is None) and
 * otherwise calls fallback(i) (which raises item i's exception). The value
 * is looked up only when someone first asks. */

struct Batch;

typedef struct {
    sl_watch w; /* first: the watch pointer is the node pointer */
    struct Batch *owner;
    Py_ssize_t index;
} batch_node;

typedef struct Batch {
    PyObject_HEAD Py_ssize_t n;
    sl_req **reqs;
    batch_node *nodes; /* NULL without on_cancel; freed after every req completed */
    PyObject *refs;    /* list of the n OperationRefs */
    PyObject *on_cancel;
    PyObject *fallback; /* fallback(i): item i's outcome when not in values */
    PyObject *values;   /* list of n values, set by complete() */
    PyObject *kinds;    /* str of n 'O'/other, or NULL: all values */
} Batch;

static void batch_cancel_watch(sl_watch *w, sl_req *req)
{
    batch_node *n = (batch_node *)w;
    if (sl_req_state(req) != SL_REQ_CANCELLED)
        return;
    PyGILState_STATE gs = PyGILState_Ensure();
    PyObject *cb = n->owner->on_cancel;
    if (cb != NULL) {
        Py_INCREF(cb);
        PyObject *r = PyObject_CallFunction(cb, "n", n->index);
        if (r == NULL)
            PyErr_WriteUnraisable(cb);
        Py_XDECREF(r);
        Py_DECREF(cb);
    }
    PyGILState_Release(gs);
}

/* msgpack of a non-negative index: fixint, uint16 or uint32. */
static size_t pack_index(Py_ssize_t i, char *out)
{
    if (i < 128) {
        out[0] = (char)i;
        return 1;
    }
    if (i < 65536) {
        out[0] = (char)0xcd;
        out[1] = (char)((i >> 8) & 0xff);
        out[2] = (char)(i & 0xff);
        return 3;
    }
    out[0] = (char)0xce;
    for (int k = 0; k < 4; k++)
        out[1 + k] = (char)(((uint64_t)i >> (8 * (3 - k))) & 0xff);
    return 5;
}

static int batch_init(Batch *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"label", "n", "fallback", "on_cancel", NULL};
    const char *label;
    Py_ssize_t n;
    PyObject *fallback = Py_None, *on_cancel = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "sn|OO", kwlist, &label, &n, &fallback,
                                     &on_cancel))
        return -1;
    if (self->reqs != NULL || self->refs != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "PromiseBatch already initialised");
        return -1;
    }
    if (n < 0 || n > ((Py_ssize_t)1 << 31)) {
        PyErr_Format(PyExc_ValueError, "n must be in [0, 2**31], got %zd", n);
        return -1;
    }
    if ((fallback != Py_None && !PyCallable_Check(fallback)) ||
        (on_cancel != Py_None && !PyCallable_Check(on_cancel))) {
        PyErr_SetString(PyExc_TypeError, "fallback and on_cancel must be callables or None");
        return -1;
    }
    if (ensure_endpoint() < 0)
        return -1;
    PyObject *refs = PyList_New(n);
    if (refs == NULL)
        return -1;
    self->reqs = calloc(n > 0 ? (size_t)n : 1, sizeof(*self->reqs));
    if (on_cancel != Py_None)
        self->nodes = calloc(n > 0 ? (size_t)n : 1, sizeof(*self->nodes));
    if (self->reqs == NULL || (on_cancel != Py_None && self->nodes == NULL)) {
        Py_DECREF(refs);
        PyErr_NoMemory();
        return -1;
    }
    self->refs = refs;
    self->on_cancel = on_cancel != Py_None ? Py_NewRef(on_cancel) : NULL;
    self->fallback = fallback != Py_None ? Py_NewRef(fallback) : NULL;
    sl_modstate *st = sl_modstate_of_type(Py_TYPE(self));
    for (Py_ssize_t i = 0; i < n; i++) {
        sl_req *req;
        int rc = sl_req_new(g_ep, "POST", label, NULL, 0, 0, 0, &req);
        if (rc < 0) {
            if (rc == -ENOMEM)
                PyErr_NoMemory();
            else
                PyErr_Format(PyExc_ValueError, "bad promise label %R (a path starting with '/')",
                             PyTuple_GET_ITEM(args, 0));
            return -1; /* dealloc fails and frees the i made so far */
        }
        if (self->nodes != NULL) {
            batch_node *node = &self->nodes[i];
            node->w.fn = batch_cancel_watch;
            node->owner = self;
            node->index = i;
            (void)sl_req_watch(req, &node->w); /* cannot fail: nobody else has req */
        }
        sl_req_ref(req); /* one for us, one stolen by the ref */
        PyObject *ref = sl_opref_new(st, req, (PyObject *)self);
        if (ref == NULL) {
            /* The watch must not outlive the nodes: complete req now. */
            (void)sl_req_resolve(req, 500, g_dropped, sizeof(g_dropped) - 1);
            sl_req_unref(req);
            return -1;
        }
        self->reqs[i] = req;
        self->n = i + 1;
        PyList_SET_ITEM(refs, i, ref);
    }
    return 0;
}

/* The transform of every ref: index -> value, or fallback(index). */
static PyObject *batch_call(Batch *self, PyObject *args, PyObject *kwargs)
{
    Py_ssize_t i;
    if (kwargs != NULL || !PyArg_ParseTuple(args, "n", &i)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "PromiseBatch takes one index");
        return NULL;
    }
    if (self->values != NULL && i >= 0 && i < PyList_GET_SIZE(self->values) &&
        (self->kinds == NULL || PyUnicode_READ_CHAR(self->kinds, i) == 'O'))
        return Py_NewRef(PyList_GET_ITEM(self->values, i));
    if (self->fallback != NULL)
        return PyObject_CallFunction(self->fallback, "n", i);
    PyErr_Format(PyExc_RuntimeError, "no outcome for item %zd of a promise batch", i);
    return NULL;
}

static PyObject *batch_complete(Batch *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"values", "kinds", NULL};
    PyObject *values = Py_None, *kinds = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OO", kwlist, &values, &kinds))
        return NULL;
    if (values != Py_None && (!PyList_Check(values) || PyList_GET_SIZE(values) != self->n)) {
        PyErr_Format(PyExc_ValueError, "values must be a list of %zd items", self->n);
        return NULL;
    }
    if (kinds != Py_None &&
        (values == Py_None || !PyUnicode_Check(kinds) || PyUnicode_GET_LENGTH(kinds) != self->n)) {
        PyErr_Format(PyExc_ValueError, "kinds must be a str of %zd characters, with values",
                     self->n);
        return NULL;
    }
    if (values != Py_None) {
        Py_XSETREF(self->values, Py_NewRef(values));
        Py_XSETREF(self->kinds, kinds != Py_None ? Py_NewRef(kinds) : NULL);
    }
    Py_ssize_t done = 0;
    for (Py_ssize_t i = 0; i < self->n; i++) {
        char body[5];
        size_t len = pack_index(i, body);
        int rc = sl_req_resolve(self->reqs[i], 200, body, len);
        if (rc < 0)
            return rc == -ENOMEM ? PyErr_NoMemory()
                                 : PyErr_Format(PyExc_RuntimeError, "resolve: %d", rc);
        done += rc;
    }
    return PyLong_FromSsize_t(done);
}

static PyObject *batch_get_refs(Batch *self, void *closure)
{
    (void)closure;
    if (self->refs == NULL)
        return PyList_New(0);
    return Py_NewRef(self->refs);
}

static Py_ssize_t batch_len(Batch *self)
{
    return self->n;
}

static int batch_traverse(Batch *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->refs);
    Py_VISIT(self->on_cancel);
    Py_VISIT(self->fallback);
    Py_VISIT(self->values);
    Py_VISIT(self->kinds);
    return 0;
}

static int batch_clear(Batch *self)
{
    Py_CLEAR(self->refs);
    Py_CLEAR(self->on_cancel);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->values);
    Py_CLEAR(self->kinds);
    return 0;
}

static void batch_dealloc(Batch *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    /* Fail what nobody can complete any more; this also runs (and so
     * retires) every cancel watch before the nodes are freed. */
    for (Py_ssize_t i = 0; i < self->n; i++) {
        (void)sl_req_resolve(self->reqs[i], 500, g_dropped, sizeof(g_dropped) - 1);
        sl_req_unref(self->reqs[i]);
    }
    free(self->reqs);
    free(self->nodes);
    batch_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef batch_methods[] = {
    {"complete", (PyCFunction)(void (*)(void))batch_complete, METH_VARARGS | METH_KEYWORDS,
     "complete(values=None, kinds=None)\n--\n\nComplete every pending ref: ref i's "
     "value is values[i] when kinds is None or kinds[i] == 'O', else "
     "fallback(i) (which may raise). Returns how many refs this call "
     "completed (cancelled or already completed refs are skipped)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef batch_getset[] = {
    {"refs", (getter)batch_get_refs, NULL, "The n OperationRefs, in order.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(batch_doc, "PromiseBatch(label, n, fallback=None, on_cancel=None)\n--\n\n"
                        "n OperationRefs (.refs) completed together by complete(values, "
                        "kinds). on_cancel(i) is called when ref i is cancelled.");

static PyType_Slot batch_slots[] = {
    {Py_tp_doc, (void *)batch_doc},
    {Py_tp_init, batch_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, batch_dealloc},
    {Py_tp_traverse, batch_traverse},
    {Py_tp_clear, batch_clear},
    {Py_tp_methods, batch_methods},
    {Py_tp_getset, batch_getset},
    {Py_sq_length, batch_len},
    {Py_tp_call, batch_call},
    {0, NULL},
};

static PyType_Spec batch_spec = {
    .name = "sandlot._core.PromiseBatch",
    .basicsize = sizeof(Batch),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = batch_slots,
};

int sl_promise_add_type(PyObject *module, sl_modstate *st)
{
    (void)st;
    PyObject *tp = PyType_FromModuleAndSpec(module, &promise_spec, NULL);
    if (tp == NULL)
        return -1;
    int rc = PyModule_AddType(module, (PyTypeObject *)tp);
    Py_DECREF(tp);
    if (rc < 0)
        return -1;
    tp = PyType_FromModuleAndSpec(module, &batch_spec, NULL);
    if (tp == NULL)
        return -1;
    rc = PyModule_AddType(module, (PyTypeObject *)tp);
    Py_DECREF(tp);
    return rc;
}
