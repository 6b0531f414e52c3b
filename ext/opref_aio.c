/* opref_aio.c - `await ref`: per asyncio loop one _LoopWaker (an eventfd
 * watched with loop.add_reader and a locked C queue). The I/O thread appends
 * completed waiters and writes the eventfd once per burst; the loop's reader
 * callback drains the queue and resolves each asyncio Future. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "sl_opref.h"
#include "structmember.h"

/* ------------------------------------------------------------------------ */
/* _LoopWaker: completion hand-off to one asyncio event loop                 */
/* ------------------------------------------------------------------------ */

typedef struct Waker Waker;

typedef struct aw_node {
    sl_watch w; /* first */
    struct aw_node *next;
    Waker *waker;
    PyObject *ref, *fut; /* strong references (and one to waker), released on the loop */
} aw_node;

struct Waker {
    PyObject_HEAD int efd;
    pid_t pid;
    pthread_mutex_t mu; /* guards head/tail/signalled */
    aw_node *head, *tail;
    /* A wake-up is pending: further completions append without writing the
     * eventfd. Kept under mu (not a bare atomic as in uv_async_send) so the
     * write cannot happen after the loop drained the queue and dropped the
     * last reference to this object, closing the fd. */
    bool signalled;
    PyObject *loop_ref; /* weakref to the loop */
    PyObject *weakreflist;
};

/* Runs on the completing thread: C only. */
static void waker_watch(sl_watch *w, sl_req *req)
{
    (void)req;
    aw_node *n = (aw_node *)w;
    Waker *k = n->waker;
    n->next = NULL;
    pthread_mutex_lock(&k->mu);
    if (k->tail != NULL)
        k->tail->next = n;
    else
        k->head = n;
    k->tail = n;
    if (!k->signalled) {
        k->signalled = true;
        uint64_t one = 1;
        /* EAGAIN only if the counter is about to overflow: already readable. */
        ssize_t rc = write(k->efd, &one, sizeof(one));
        (void)rc;
    }
    pthread_mutex_unlock(&k->mu);
}

static void free_aw_node(aw_node *n)
{
    Py_DECREF(n->ref);
    Py_DECREF(n->fut);
    Py_DECREF((PyObject *)n->waker);
    free(n);
}

/* Resolve fut (an asyncio Future) from a ref that is no longer pending. */
static void deliver(OpRef *ref, PyObject *fut)
{
    PyObject *r = PyObject_CallMethod(fut, "done", NULL);
    if (r == NULL) {
        PyErr_WriteUnraisable(fut);
        return;
    }
    int done = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (done != 0) { /* the awaiting task was cancelled meanwhile (or error) */
        if (done < 0)
            PyErr_WriteUnraisable(fut);
        return;
    }
    if (sl__ref_state(ref) == SL_REQ_CANCELLED) {
        r = PyObject_CallMethod(fut, "cancel", NULL);
    } else if (sl__ref_materialise(ref) < 0) {
        PyObject *e = sl_exc_fetch();
        r = PyObject_CallMethod(fut, "set_exception", "O", e);
        Py_XDECREF(e);
    } else if (ref->exc != NULL) {
        r = PyObject_CallMethod(fut, "set_exception", "O", ref->exc);
        if (r == NULL) {
            /* e.g. StopIteration, which asyncio refuses: pass on why. */
            PyObject *e = sl_exc_fetch();
            r = PyObject_CallMethod(fut, "set_exception", "O", e);
            Py_XDECREF(e);
        }
    } else {
        r = PyObject_CallMethod(fut, "set_result", "O", ref->value);
    }
    if (r == NULL)
        PyErr_WriteUnraisable(fut);
    else
        Py_DECREF(r);
}

static PyObject *waker_drain(Waker *self, PyObject *unused)
{
    (void)unused;
    uint64_t count;
    ssize_t rc = read(self->efd, &count, sizeof(count)); /* reset the eventfd */
    (void)rc;
    pthread_mutex_lock(&self->mu);
    aw_node *list = self->head;
    self->head = self->tail = NULL;
    self->signalled = false;
    pthread_mutex_unlock(&self->mu);
    if (list == NULL)
        Py_RETURN_NONE;

    /* Never hand results to a loop that is closed (its futures can no longer
     * run callbacks); just release the waiters. */
    int closed = 1;
    PyObject *loop = PyWeakref_GetObject(self->loop_ref); /* borrowed */
    if (loop != NULL && loop != Py_None) {
        PyObject *c = PyObject_CallMethod(loop, "is_closed", NULL);
        if (c == NULL) {
            PyErr_WriteUnraisable((PyObject *)self);
        } else {
            closed = PyObject_IsTrue(c);
            Py_DECREF(c);
            if (closed < 0) {
                PyErr_WriteUnraisable((PyObject *)self);
                closed = 1;
            }
        }
    }
    while (list != NULL) {
        aw_node *next = list->next;
        if (!closed)
            deliver((OpRef *)list->ref, list->fut);
        free_aw_node(list);
        list = next;
    }
    Py_RETURN_NONE;
}

static int waker_traverse(Waker *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->loop_ref);
    return 0;
}

static int waker_clear(Waker *self)
{
    Py_CLEAR(self->loop_ref);
    return 0;
}

static void waker_dealloc(Waker *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    waker_clear(self);
    /* Queued nodes hold a reference to us, so the queue is empty here. In a
     * fork child the mutex may be held by a vanished thread: leave it. */
    if (self->efd >= 0)
        close(self->efd);
    if (self->pid == getpid())
        pthread_mutex_destroy(&self->mu);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef waker_methods[] = {
    {"_drain", (PyCFunction)waker_drain, METH_NOARGS, "Reader callback: resolve completed awaits."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef waker_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(Waker, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot waker_slots[] = {
    {Py_tp_dealloc, waker_dealloc}, {Py_tp_traverse, waker_traverse}, {Py_tp_clear, waker_clear},
    {Py_tp_methods, waker_methods}, {Py_tp_members, waker_members},   {0, NULL},
};

PyType_Spec sl__waker_spec = {
    .name = "sandlot._core._LoopWaker",
    .basicsize = sizeof(Waker),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = waker_slots,
};

static Waker *waker_new(sl_modstate *st, PyObject *loop)
{
    Waker *k = PyObject_GC_New(Waker, st->waker_type);
    if (k == NULL)
        return NULL;
    k->efd = -1;
    k->pid = getpid();
    k->head = k->tail = NULL;
    k->signalled = false;
    k->loop_ref = NULL;
    k->weakreflist = NULL;
    int rc = pthread_mutex_init(&k->mu, NULL);
    if (rc != 0) {
        k->pid = 0; /* nothing to destroy */
        PyObject_GC_Track(k);
        Py_DECREF(k);
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    PyObject_GC_Track(k);
    k->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (k->efd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(k);
        return NULL;
    }
    k->loop_ref = PyWeakref_NewRef(loop, NULL);
    if (k->loop_ref == NULL) {
        Py_DECREF(k);
        return NULL;
    }
    PyObject *cb = PyObject_GetAttrString((PyObject *)k, "_drain");
    PyObject *r = cb != NULL ? PyObject_CallMethod(loop, "add_reader", "iO", k->efd, cb) : NULL;
    Py_XDECREF(cb);
    if (r == NULL) {
        Py_DECREF(k);
        return NULL;
    }
    Py_DECREF(r);
    return k;
}

/* The loop's waker (new reference), created on first use. */
static Waker *waker_for(sl_modstate *st, PyObject *loop)
{
    if (st->wakers == NULL) {
        PyObject *cls = sl_import_attr("weakref", "WeakKeyDictionary");
        if (cls == NULL)
            return NULL;
        st->wakers = PyObject_CallNoArgs(cls);
        Py_DECREF(cls);
        if (st->wakers == NULL)
            return NULL;
    }
    PyObject *k = PyObject_GetItem(st->wakers, loop);
    if (k == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError))
            return NULL;
        PyErr_Clear();
    } else if (((Waker *)k)->pid != getpid()) {
        /* Inherited over fork(): the eventfd is shared with the parent. */
        PyObject *r = PyObject_CallMethod(loop, "remove_reader", "i", ((Waker *)k)->efd);
        if (r == NULL)
            PyErr_Clear();
        Py_XDECREF(r);
        Py_CLEAR(k);
    }
    if (k != NULL)
        return (Waker *)k;
    Waker *w = waker_new(st, loop);
    if (w == NULL)
        return NULL;
    if (PyObject_SetItem(st->wakers, loop, (PyObject *)w) < 0) {
        Py_DECREF(w);
        return NULL;
    }
    return w;
}

/* fut.add_done_callback target: propagate the awaiting task's cancellation. */
PyObject *sl__ref_on_future_done(OpRef *self, PyObject *fut)
{
    PyObject *r = PyObject_CallMethod(fut, "cancelled", NULL);
    if (r == NULL)
        return NULL;
    int c = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (c < 0)
        return NULL;
    if (c)
        sl__ref_do_cancel(self);
    Py_RETURN_NONE;
}

PyObject *sl__ref_await(OpRef *self)
{
    sl_modstate *st = sl_modstate_of_type(Py_TYPE(self));
    if (st->get_running_loop == NULL) {
        st->get_running_loop = sl_import_attr("asyncio", "get_running_loop");
        if (st->get_running_loop == NULL)
            return NULL;
    }
    PyObject *loop = PyObject_CallNoArgs(st->get_running_loop);
    if (loop == NULL)
        return NULL;
    PyObject *it = NULL;
    PyObject *fut = PyObject_CallMethod(loop, "create_future", NULL);
    if (fut == NULL)
        goto out;
    if (sl__ref_state(self) != SL_REQ_PENDING) {
        deliver(self, fut); /* no round trip through the waker */
    } else {
        Waker *k = waker_for(st, loop);
        if (k == NULL)
            goto out;
        PyObject *cb = PyObject_GetAttrString((PyObject *)self, "_on_future_done");
        PyObject *r = cb != NULL ? PyObject_CallMethod(fut, "add_done_callback", "O", cb) : NULL;
        Py_XDECREF(cb);
        if (r == NULL) {
            Py_DECREF(k);
            goto out;
        }
        Py_DECREF(r);
        aw_node *n = calloc(1, sizeof(*n));
        if (n == NULL) {
            Py_DECREF(k);
            PyErr_NoMemory();
            goto out;
        }
        n->w.fn = waker_watch;
        n->waker = k; /* takes the reference */
        n->ref = Py_NewRef((PyObject *)self);
        n->fut = Py_NewRef(fut);
        int rc = sl__ref_watch(self, &n->w);
        if (rc < 0) {
            free_aw_node(n);
            if (rc == -ENOMEM) {
                PyErr_NoMemory();
                goto out;
            }
            deliver(self, fut); /* completed meanwhile */
        }
    }
    PyTypeObject *ft = Py_TYPE(fut);
    if (ft->tp_as_async != NULL && ft->tp_as_async->am_await != NULL)
        it = ft->tp_as_async->am_await(fut);
    else
        it = PyObject_CallMethod(fut, "__await__", NULL);
out:
    Py_XDECREF(fut);
    Py_DECREF(loop);
    return it;
}
