/* opref.c - OperationRef: a future completed in C by the transport's I/O thread.
 *
 * Three ways to learn about completion, none of which needs a thread per ref
 * or the GIL on the I/O thread:
 *
 *   result()/exception(): wait on the request's condvar with the GIL
 *     released, waking every 100 ms to run PyErr_CheckSignals (Ctrl-C).
 *   add_done_callback(fn): a C node on the request's watch list; at
 *     completion the I/O thread moves it to the dispatcher's queue, and one
 *     lazily started dispatcher thread takes the GIL and calls fn(ref).
 *   await ref: per asyncio loop one _LoopWaker (an eventfd watched with
 *     loop.add_reader and a locked C queue). The I/O thread appends completed
 *     waiters and writes the eventfd once per burst (a flag remembers that a
 *     wake-up is already pending, as libuv's uv_async_send does); the loop's
 *     reader callback drains the queue and resolves each asyncio Future.
 *
 * The value is materialised lazily, with the GIL, by whoever first asks:
 * decode the body, apply `transform` once, or build the exception through
 * the error mapper; the outcome is cached on the ref.
 *
 * The object and its state accessors are in sl_opref.h; materialising is
 * opref_outcome.c, the callback dispatcher opref_disp.c, await opref_aio.c.
 *
 * Cancelling the asyncio task that awaits a ref cancels the ref too (as
 * asyncio.wrap_future does for concurrent futures): the awaiting code has
 * said it no longer wants the answer, and aborting the transfer frees its
 * connection at once, which matters for 30 s long-polls. A caller that wants
 * the request to survive its awaiter uses asyncio.shield(ref).
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_common.h"
#include "sl_opref.h"
#include "structmember.h"

#define SL_WAIT_SLICE_NS ((int64_t)100 * 1000000) /* signal check interval */

/* Wait (GIL released) until not pending. timeout_s < 0: forever. */
static int wait_done(OpRef *self, double timeout_s)
{
    if (sl__ref_state(self) != SL_REQ_PENDING)
        return 0;
    int64_t deadline = -1;
    if (timeout_s >= 0) {
        /* Clamp so that absurd timeouts do not overflow. */
        double ns = timeout_s * 1e9;
        deadline = sl_now_ns() + (ns > 1e17 ? (int64_t)1e17 : (int64_t)ns);
    }
    for (;;) {
        int64_t slice = sl_now_ns() + SL_WAIT_SLICE_NS;
        if (deadline >= 0 && deadline < slice)
            slice = deadline;
        int rc;
        /* The batch stays alive: this ref holds it. */
        Py_BEGIN_ALLOW_THREADS rc = self->req != NULL
                                        ? sl_req_wait(self->req, slice)
                                        : sl_batch_wait(self->batch, self->index, slice);
        Py_END_ALLOW_THREADS if (rc == 0) return 0;
        if (PyErr_CheckSignals() < 0)
            return -1;
        if (deadline >= 0 && sl_now_ns() >= deadline) {
            /* PyErr_Format has no %g: format the number here. */
            char secs[32];
            snprintf(secs, sizeof(secs), "%g", timeout_s);
            PyErr_Format(PyExc_TimeoutError, "OperationRef for %s %s not done after %s s",
                         sl__ref_method(self), sl__ref_path(self), secs);
            return -1;
        }
    }
}

static int parse_timeout(PyObject *obj, double *out)
{
    if (obj == NULL || obj == Py_None) {
        *out = -1;
        return 0;
    }
    double t = PyFloat_AsDouble(obj);
    if (t == -1.0 && PyErr_Occurred())
        return -1;
    if (isnan(t)) {
        PyErr_SetString(PyExc_ValueError, "timeout must not be NaN");
        return -1;
    }
    *out = t < 0 ? 0 : t;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* OperationRef                                                              */
/* ------------------------------------------------------------------------ */

static OpRef *ref_alloc(sl_modstate *st, sl_req *req, PyObject *batch, Py_ssize_t index,
                        PyObject *transform, bool track)
{
    OpRef *self = PyObject_GC_New(OpRef, st->ref_type);
    if (self == NULL)
        return NULL;
    self->req = req;
    self->batch = Py_XNewRef(batch);
    self->index = index;
    self->transform = Py_XNewRef(transform);
    self->value = NULL;
    self->exc = NULL;
    self->weakreflist = NULL;
    self->mat = MAT_NONE;
    self->mat_thread = 0;
    if (track)
        PyObject_GC_Track(self);
    return self;
}

PyObject *sl_opref_new(sl_modstate *st, sl_req *req, PyObject *transform)
{
    OpRef *self = ref_alloc(st, req, NULL, 0, transform, true);
    if (self == NULL)
        sl_req_unref(req);
    return (PyObject *)self;
}

PyObject *sl_opref_new_item(sl_modstate *st, PyObject *batch, Py_ssize_t i, bool track)
{
    return (PyObject *)ref_alloc(st, NULL, batch, i, NULL, track);
}

static int ref_traverse(OpRef *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->batch);
    Py_VISIT(self->transform);
    Py_VISIT(self->value);
    Py_VISIT(self->exc);
    return 0;
}

static int ref_clear(OpRef *self)
{
    Py_CLEAR(self->transform);
    Py_CLEAR(self->value);
    Py_CLEAR(self->exc);
    return 0;
}

static void ref_dealloc(OpRef *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    /* First, so that code run by the clears below (a __del__ that asks a
     * sibling for its value) cannot have the batch track this ref again. */
    if (self->batch != NULL)
        sl_batch_forget(self->batch, self->index, (PyObject *)self);
    PyObject_GC_UnTrack(self); /* a no-op for a batch ref never tracked */
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    ref_clear(self);
    /* The transport holds its own reference while the transfer runs. */
    if (self->req != NULL)
        sl_req_unref(self->req);
    /* Not in ref_clear: a cleared ref must still have a state to report. */
    Py_XDECREF(self->batch);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *outcome(OpRef *self, bool want_exception)
{
    int s = sl__ref_state(self);
    if (s == SL_REQ_CANCELLED)
        return sl__ref_raise_cancelled(self);
    if (self->req == NULL && s == SL_REQ_DONE && self->mat == MAT_NONE) {
        /* The common map() case: the value sits in the batch's list. */
        PyObject *v = sl_batch_value(self->batch, self->index);
        if (v != NULL) {
            if (want_exception)
                return Py_NewRef(Py_None);
            if (PyObject_IS_GC(v)) /* user code may make it hold a ref */
                sl_batch_expose(self->batch);
            return Py_NewRef(v);
        }
    }
    if (sl__ref_materialise(self) < 0)
        return NULL;
    if (want_exception)
        return Py_NewRef(self->exc != NULL ? self->exc : Py_None);
    if (self->exc != NULL)
        return sl_exc_raise(self->exc);
    return Py_NewRef(self->value);
}

/* The timeout argument of result()/exception(), parsed by hand: vectorcall
 * keeps result() on a completed ref to a few tens of nanoseconds, which is
 * what collecting 10,000 map() results costs per item. */
static int timeout_arg(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                       PyObject *kwnames, PyObject **t)
{
    *t = Py_None;
    Py_ssize_t nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs + nkw > 1) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most 1 argument (%zd given)", fname,
                     nargs + nkw);
        return -1;
    }
    if (nargs == 1) {
        *t = args[0];
    } else if (nkw == 1) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, 0);
        if (!PyUnicode_Check(name) || PyUnicode_CompareWithASCIIString(name, "timeout") != 0) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R", fname,
                         name);
            return -1;
        }
        *t = args[0];
    }
    return 0;
}

static PyObject *ref_result(OpRef *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *t;
    double timeout;
    if (timeout_arg("result", args, nargs, kwnames, &t) < 0 || parse_timeout(t, &timeout) < 0 ||
        wait_done(self, timeout) < 0)
        return NULL;
    return outcome(self, false);
}

static PyObject *ref_exception(OpRef *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    PyObject *t;
    double timeout;
    if (timeout_arg("exception", args, nargs, kwnames, &t) < 0 || parse_timeout(t, &timeout) < 0 ||
        wait_done(self, timeout) < 0)
        return NULL;
    return outcome(self, true);
}

static PyObject *ref_done(OpRef *self, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(sl__ref_state(self) != SL_REQ_PENDING);
}

static PyObject *ref_cancelled(OpRef *self, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(sl__ref_state(self) == SL_REQ_CANCELLED);
}

static PyObject *ref_cancel(OpRef *self, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(sl__ref_do_cancel(self));
}

static PyObject *ref_repr(OpRef *self)
{
    static const char *const names[] = {"pending", "done", "cancelled", "orphaned"};
    int s = sl__ref_state(self);
    if (self->req == NULL)
        return PyUnicode_FromFormat("<OperationRef %s %s[%zd] %s>", sl__ref_method(self),
                                    sl__ref_path(self), self->index, names[s]);
    return PyUnicode_FromFormat("<OperationRef %s %s %s>", sl__ref_method(self), sl__ref_path(self),
                                names[s]);
}

static PyMethodDef ref_methods[] = {
    {"result", (PyCFunction)(void (*)(void))ref_result, METH_FASTCALL | METH_KEYWORDS,
     "result(timeout=None)\n--\n\nBlock (GIL released) until done; return the value or raise."},
    {"exception", (PyCFunction)(void (*)(void))ref_exception, METH_FASTCALL | METH_KEYWORDS,
     "exception(timeout=None)\n--\n\nBlock until done; return the exception or None."},
    {"done", (PyCFunction)ref_done, METH_NOARGS, "True once completed or cancelled."},
    {"cancelled", (PyCFunction)ref_cancelled, METH_NOARGS, "True if cancelled."},
    {"cancel", (PyCFunction)ref_cancel, METH_NOARGS,
     "Abort the request if still pending; True if this call cancelled it."},
    {"add_done_callback", (PyCFunction)sl__ref_add_done_callback, METH_O,
     "Call fn(ref) once done (now if already done, else from the dispatcher thread)."},
    {"_on_future_done", (PyCFunction)sl__ref_on_future_done, METH_O,
     "Internal: cancel the request when an awaiting asyncio future is cancelled."},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, "OperationRef[T]"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef ref_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(OpRef, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(ref_doc, "A future for one request to the runner, completed by the C I/O thread.");

static PyType_Slot ref_slots[] = {
    {Py_tp_doc, (void *)ref_doc}, {Py_tp_dealloc, ref_dealloc}, {Py_tp_traverse, ref_traverse},
    {Py_tp_clear, ref_clear},     {Py_tp_repr, ref_repr},       {Py_tp_methods, ref_methods},
    {Py_tp_members, ref_members}, {Py_am_await, sl__ref_await}, {0, NULL},
};

static PyType_Spec ref_spec = {
    .name = "sandlot._core.OperationRef",
    .basicsize = sizeof(OpRef),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = ref_slots,
};

int sl_promise_add_type(PyObject *module, sl_modstate *st); /* promise.c */

int sl_opref_add_types(PyObject *module, sl_modstate *st)
{
    if (sl_promise_add_type(module, st) < 0)
        return -1;
    st->ref_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &ref_spec, NULL);
    if (st->ref_type == NULL || PyModule_AddType(module, st->ref_type) < 0)
        return -1;
    st->waker_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &sl__waker_spec, NULL);
    return st->waker_type == NULL ? -1 : 0;
}
