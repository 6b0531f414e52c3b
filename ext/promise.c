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
    if (g_ep == NULL) {
        int rc = sl_endpoint_new("unix:///sandlot-promise", NULL, &g_ep);
        if (rc < 0) {
            PyErr_SetString(PyExc_MemoryError, "cannot create the promise endpoint");
            return -1;
        }
    }
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
        static const char body[] = "\x81\xa5"
                                   "error"
                                   "\x82\xa4"
                                   "code"
                                   "\xa8"
                                   "internal"
                                   "\xa7"
                                   "message"
                                   "\xd9\x2f"
                                   "the promise was dropped before it was completed";
        (void)sl_req_resolve(self->req, 500, body, sizeof(body) - 1);
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

int sl_promise_add_type(PyObject *module, sl_modstate *st)
{
    (void)st;
    PyObject *tp = PyType_FromModuleAndSpec(module, &promise_spec, NULL);
    if (tp == NULL)
        return -1;
    int rc = PyModule_AddType(module, (PyTypeObject *)tp);
    Py_DECREF(tp);
    return rc;
}
