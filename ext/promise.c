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
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sl_ext.h"
#include "sl_promise.h"
#include "structmember.h"

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

/* A chunk of a map() comes back as one decoded list, so its n refs share one
 * C object instead of each owning an sl_req (a ~1 KiB calloc, a mutex and a
 * condvar, a copied body and a global lock to resolve it): a ref of a batch
 * is (batch, index), its state is one byte of the batch's array, and its
 * value is values[index], read straight from the list without decoding
 * anything. Creating, completing and freeing a ref is then a Python object
 * allocation and a few stores; this is what lets map() approach
 * ProcessPoolExecutor's per-item cost.
 *
 * Every writer (complete, cancel, watch registration) runs with the GIL
 * held, so they never race each other; the mutex and condvar exist for
 * result() waiting with the GIL released. The batch owns no reference to
 * its refs (they reference it; it only borrows pointers to them, see
 * sl_batch_expose), so no cycle ties a chunk's refs together and a consumed
 * batch is freed by reference counting alone. */

typedef struct Batch {
    PyObject_HEAD Py_ssize_t n;
    _Atomic(unsigned char) *state; /* n x enum sl_req_state (never ORPHANED) */
    sl_watch **watches;            /* n LIFO lists, allocated on first watch; under mu */
    pthread_mutex_t mu;            /* pairs with cond for waiters */
    pthread_cond_t cond;
    unsigned gen; /* fork generation: pending items of a parent are orphaned here */
    bool sync_ok; /* mu and cond initialised */
    char *label;  /* the refs' repr path */
    PyObject *on_cancel;
    PyObject *fallback; /* fallback(i): item i's outcome when not in values */
    PyObject *values;   /* list of n values, set by complete() */
    PyObject *kinds;    /* str of n 'O'/other, or NULL: all values */
    PyObject *weakreflist;
    /* The refs of the first refs() call, borrowed (a ref clears its slot
     * when freed), while they are not tracked by the cycle collector; see
     * sl_batch_expose. NULL once exposed. */
    PyObject **untracked;
    bool refs_made;
} Batch;

static bool batch_orphaned(const Batch *b)
{
    return b->gen != sl_transport_gen();
}

int sl_batch_state(PyObject *obj, Py_ssize_t i)
{
    Batch *b = (Batch *)obj;
    int s = atomic_load_explicit(&b->state[i], memory_order_acquire);
    if (s == SL_REQ_PENDING && batch_orphaned(b))
        return SL_REQ_ORPHANED;
    return s;
}

int sl_batch_wait(PyObject *obj, Py_ssize_t i, int64_t deadline_ns)
{
    Batch *b = (Batch *)obj;
    if (sl_batch_state(obj, i) != SL_REQ_PENDING)
        return 0;
    struct timespec ts = sl_timespec_of_ns(deadline_ns);
    pthread_mutex_lock(&b->mu);
    while (atomic_load(&b->state[i]) == SL_REQ_PENDING) {
        if (deadline_ns < 0)
            pthread_cond_wait(&b->cond, &b->mu);
        else if (pthread_cond_timedwait(&b->cond, &b->mu, &ts) == ETIMEDOUT)
            break;
    }
    bool done = atomic_load(&b->state[i]) != SL_REQ_PENDING;
    pthread_mutex_unlock(&b->mu);
    return done ? 0 : -ETIMEDOUT;
}

int sl_batch_watch(PyObject *obj, Py_ssize_t i, sl_watch *w)
{
    Batch *b = (Batch *)obj;
    if (sl_batch_state(obj, i) != SL_REQ_PENDING)
        return -EALREADY;
    pthread_mutex_lock(&b->mu);
    if (b->watches == NULL) {
        b->watches = calloc((size_t)b->n, sizeof(*b->watches));
        if (b->watches == NULL) {
            pthread_mutex_unlock(&b->mu);
            return -ENOMEM;
        }
    }
    w->next = b->watches[i];
    b->watches[i] = w;
    pthread_mutex_unlock(&b->mu);
    return 0;
}

int sl_batch_cancel(PyObject *obj, Py_ssize_t i)
{
    Batch *b = (Batch *)obj;
    if (sl_batch_state(obj, i) != SL_REQ_PENDING)
        return 0;
    pthread_mutex_lock(&b->mu);
    atomic_store_explicit(&b->state[i], SL_REQ_CANCELLED, memory_order_release);
    sl_watch *list = NULL;
    if (b->watches != NULL) {
        list = b->watches[i];
        b->watches[i] = NULL;
    }
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->mu);
    sl_watch_run_list(list, NULL);
    if (b->on_cancel != NULL) {
        PyObject *cb = Py_NewRef(b->on_cancel);
        PyObject *r = PyObject_CallFunction(cb, "n", i);
        if (r == NULL)
            PyErr_WriteUnraisable(cb);
        Py_XDECREF(r);
        Py_DECREF(cb);
    }
    return 1;
}

PyObject *sl_batch_value(PyObject *obj, Py_ssize_t i)
{
    Batch *b = (Batch *)obj;
    if (b->values != NULL && i < PyList_GET_SIZE(b->values) &&
        (b->kinds == NULL || PyUnicode_READ_CHAR(b->kinds, i) == 'O'))
        return PyList_GET_ITEM(b->values, i);
    return NULL;
}

PyObject *sl_batch_fallback(PyObject *obj, Py_ssize_t i)
{
    Batch *b = (Batch *)obj;
    if (b->fallback != NULL) {
        PyObject *fb = Py_NewRef(b->fallback); /* it may drop the batch's reference */
        PyObject *r = PyObject_CallFunction(fb, "n", i);
        Py_DECREF(fb);
        return r;
    }
    PyErr_Format(PyExc_RuntimeError, "no outcome for item %zd of a promise batch", i);
    return NULL;
}

const char *sl_batch_label(PyObject *obj)
{
    return ((Batch *)obj)->label;
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
    if (self->state != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "PromiseBatch already initialised");
        return -1;
    }
    if (n < 0 || n > ((Py_ssize_t)1 << 31)) {
        PyErr_Format(PyExc_ValueError, "n must be in [0, 2**31], got %zd", n);
        return -1;
    }
    if (label[0] != '/') {
        PyErr_Format(PyExc_ValueError, "bad promise label %R (a path starting with '/')",
                     PyTuple_GET_ITEM(args, 0));
        return -1;
    }
    if ((fallback != Py_None && !PyCallable_Check(fallback)) ||
        (on_cancel != Py_None && !PyCallable_Check(on_cancel))) {
        PyErr_SetString(PyExc_TypeError, "fallback and on_cancel must be callables or None");
        return -1;
    }
    self->label = strdup(label);
    /* calloc: every item starts SL_REQ_PENDING (0). */
    self->state = calloc(n > 0 ? (size_t)n : 1, sizeof(*self->state));
    if (self->label == NULL || self->state == NULL) {
        free(self->label);
        free(self->state);
        self->label = NULL;
        self->state = NULL;
        PyErr_NoMemory();
        return -1;
    }
    int rc = -pthread_mutex_init(&self->mu, NULL);
    if (rc == 0) {
        rc = sl_monotonic_cond_init(&self->cond);
        if (rc != 0)
            pthread_mutex_destroy(&self->mu);
    }
    if (rc != 0) {
        errno = -rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1; /* dealloc frees state and label */
    }
    self->sync_ok = true;
    self->gen = sl_transport_gen();
    self->n = n;
    self->on_cancel = on_cancel != Py_None ? Py_NewRef(on_cancel) : NULL;
    self->fallback = fallback != Py_None ? Py_NewRef(fallback) : NULL;
    return 0;
}

static bool batch_ready(Batch *self)
{
    if (self->state != NULL && self->sync_ok)
        return true;
    PyErr_SetString(PyExc_RuntimeError, "PromiseBatch not initialised");
    return false;
}

/* Why refs start untracked: 10,000 tracked refs that live through a map()
 * are promoted to the oldest generation and trigger full collections of the
 * whole heap, ~1.2 ms per 10,000-item map (more than creating them). A ref
 * of a batch can only be part of a cycle through the batch: its fallback
 * and on_cancel (which map() keeps free of user objects: see _Chunk) or a
 * value a ref handed out, which user code could make point back at a ref.
 * So the refs stay untracked until a ref hands out a value that is itself
 * a container (a list, a dict, even one not tracked yet), or an exception;
 * then every ref of the batch is tracked, as any other ref is. A map of
 * numbers or strings never pays for the collector. */
void sl_batch_expose(PyObject *obj)
{
    Batch *b = (Batch *)obj;
    PyObject **refs = b->untracked;
    if (refs == NULL)
        return;
    b->untracked = NULL;
    for (Py_ssize_t i = 0; i < b->n; i++) {
        if (refs[i] != NULL && !PyObject_GC_IsTracked(refs[i]))
            PyObject_GC_Track(refs[i]);
    }
    free(refs);
}

void sl_batch_forget(PyObject *obj, Py_ssize_t i, PyObject *ref)
{
    Batch *b = (Batch *)obj;
    if (b->untracked != NULL && b->untracked[i] == ref)
        b->untracked[i] = NULL;
}

/* refs(): n new OperationRefs, in order (the batch keeps none of them). */
static PyObject *batch_refs(Batch *self, PyObject *unused)
{
    (void)unused;
    if (!batch_ready(self))
        return NULL;
    sl_modstate *st = sl_modstate_of_type(Py_TYPE(self));
    PyObject *list = PyList_New(self->n);
    if (list == NULL)
        return NULL;
    /* Only the first call's refs start untracked (one slot per item). */
    bool track = true;
    if (!self->refs_made) {
        self->refs_made = true;
        self->untracked = calloc(self->n > 0 ? (size_t)self->n : 1, sizeof(*self->untracked));
        track = self->untracked == NULL; /* out of memory: just track them */
    }
    for (Py_ssize_t i = 0; i < self->n; i++) {
        PyObject *ref = sl_opref_new_item(st, (PyObject *)self, i, track);
        if (ref == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        if (!track)
            self->untracked[i] = ref;
        PyList_SET_ITEM(list, i, ref);
    }
    return list;
}

static PyObject *batch_complete(Batch *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"values", "kinds", NULL};
    PyObject *values = Py_None, *kinds = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OO", kwlist, &values, &kinds))
        return NULL;
    if (!batch_ready(self))
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
    /* In a fork child nothing pending here can complete (as for requests). */
    if (batch_orphaned(self))
        return PyLong_FromLong(0);
    Py_ssize_t pending = 0;
    for (Py_ssize_t i = 0; i < self->n; i++)
        pending += atomic_load_explicit(&self->state[i], memory_order_relaxed) == SL_REQ_PENDING;
    if (pending == 0) /* a late second outcome must not change what done refs see */
        return PyLong_FromLong(0);
    if (values != Py_None) {
        Py_XSETREF(self->values, Py_NewRef(values));
        Py_XSETREF(self->kinds, kinds != Py_None ? Py_NewRef(kinds) : NULL);
    }
    pthread_mutex_lock(&self->mu);
    for (Py_ssize_t i = 0; i < self->n; i++) {
        if (atomic_load_explicit(&self->state[i], memory_order_relaxed) == SL_REQ_PENDING)
            atomic_store_explicit(&self->state[i], SL_REQ_DONE, memory_order_release);
    }
    /* Nothing is pending any more, so nobody can add a watch: take them all. */
    sl_watch **watches = self->watches;
    self->watches = NULL;
    pthread_cond_broadcast(&self->cond);
    pthread_mutex_unlock(&self->mu);
    if (watches != NULL) {
        for (Py_ssize_t i = 0; i < self->n; i++)
            sl_watch_run_list(watches[i], NULL);
        free(watches);
    }
    return PyLong_FromSsize_t(pending);
}

static Py_ssize_t batch_len(Batch *self)
{
    return self->n;
}

static int batch_traverse(Batch *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->on_cancel);
    Py_VISIT(self->fallback);
    Py_VISIT(self->values);
    Py_VISIT(self->kinds);
    return 0;
}

static int batch_clear(Batch *self)
{
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
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    /* Every ref and every watch node (which holds its ref) is gone, so
     * nobody waits here. In a fork child the mutex may be held by a thread
     * that no longer exists: leave it. */
    if (self->sync_ok && !batch_orphaned(self)) {
        pthread_cond_destroy(&self->cond);
        pthread_mutex_destroy(&self->mu);
    }
    free(self->untracked); /* every ref is gone: all slots are NULL */
    free(self->watches);
    free(self->state);
    free(self->label);
    batch_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef batch_methods[] = {
    {"refs", (PyCFunction)batch_refs, METH_NOARGS,
     "refs()\n--\n\nn new OperationRefs for the items, in order (the batch keeps none)."},
    {"complete", (PyCFunction)(void (*)(void))batch_complete, METH_VARARGS | METH_KEYWORDS,
     "complete(values=None, kinds=None)\n--\n\nComplete every pending ref: ref i's "
     "value is values[i] when kinds is None or kinds[i] == 'O', else "
     "fallback(i) (which may raise). Returns how many refs this call "
     "completed (cancelled or already completed refs are skipped)."},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(batch_doc, "PromiseBatch(label, n, fallback=None, on_cancel=None)\n--\n\n"
                        "n OperationRefs (refs()) completed together by complete(values, "
                        "kinds). on_cancel(i) is called when ref i is cancelled.");

static PyMemberDef batch_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(Batch, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot batch_slots[] = {
    {Py_tp_members, batch_members}, {Py_tp_doc, (void *)batch_doc},
    {Py_tp_init, batch_init},       {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, batch_dealloc}, {Py_tp_traverse, batch_traverse},
    {Py_tp_clear, batch_clear},     {Py_tp_methods, batch_methods},
    {Py_sq_length, batch_len},      {0, NULL},
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
