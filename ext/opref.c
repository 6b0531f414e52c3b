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
 * Cancelling the asyncio task that awaits a ref cancels the ref too (as
 * asyncio.wrap_future does for concurrent futures): the awaiting code has
 * said it no longer wants the answer, and aborting the transfer frees its
 * connection at once, which matters for 30 s long-polls. A caller that wants
 * the request to survive its awaiter uses asyncio.shield(ref).
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "sl_codec.h"
#include "sl_common.h"
#include "sl_ext.h"
#include "structmember.h"

#define SL_WAIT_SLICE_NS ((int64_t)100 * 1000000) /* signal check interval */

/* A ref is backed either by a request of its own (req) or by item `index`
 * of a PromiseBatch (batch; req is NULL), which map() uses so that one
 * chunk's thousand refs cost no thousand requests (see promise.c). */
typedef struct {
    PyObject_HEAD sl_req *req;
    PyObject *batch; /* PromiseBatch of a batch item (strong), else NULL */
    Py_ssize_t index;
    PyObject *transform; /* callable or NULL; cleared once applied */
    PyObject *value;     /* materialised value (when mat == MAT_DONE and exc == NULL) */
    PyObject *exc;       /* materialised exception instance */
    PyObject *weakreflist;
    int mat;                  /* MAT_* */
    unsigned long mat_thread; /* thread materialising, to catch re-entry */
} OpRef;

enum { MAT_NONE = 0, MAT_BUSY = 1, MAT_DONE = 2 };

static int ref_state(const OpRef *self)
{
    return self->req != NULL ? sl_req_state(self->req) : sl_batch_state(self->batch, self->index);
}

static const char *ref_method(const OpRef *self)
{
    return self->req != NULL ? sl_req_method(self->req) : "POST";
}

static const char *ref_path(const OpRef *self)
{
    return self->req != NULL ? sl_req_path(self->req) : sl_batch_label(self->batch);
}

static int ref_watch(OpRef *self, sl_watch *w)
{
    return self->req != NULL ? sl_req_watch(self->req, w)
                             : sl_batch_watch(self->batch, self->index, w);
}

static int ref_do_cancel(OpRef *self)
{
    return self->req != NULL ? sl_req_cancel(self->req) : sl_batch_cancel(self->batch, self->index);
}

/* ------------------------------------------------------------------------ */
/* Materialising the outcome                                                 */
/* ------------------------------------------------------------------------ */

static PyObject *map_error_obj(sl_modstate *st, long status, PyObject *code, PyObject *msg)
{
    PyObject *r;
    if (st->error_mapper != NULL) {
        PyObject *mapper = Py_NewRef(st->error_mapper); /* it may replace itself */
        r = PyObject_CallFunction(mapper, "lOO", status, code, msg);
        Py_DECREF(mapper);
        if (r == NULL)
            return sl_exc_fetch();
        if (PyExceptionInstance_Check(r))
            return r;
        PyErr_Format(PyExc_TypeError, "error mapper returned %.100s, not an exception instance",
                     Py_TYPE(r)->tp_name);
        Py_DECREF(r);
        return sl_exc_fetch();
    }
    if (status != 0)
        r = PyUnicode_FromFormat("%U: %U (HTTP %ld)", code, msg, status);
    else
        r = PyUnicode_FromFormat("%U: %U", code, msg);
    if (r == NULL)
        return sl_exc_fetch();
    PyObject *e = PyObject_CallOneArg(PyExc_RuntimeError, r);
    Py_DECREF(r);
    return e != NULL ? e : sl_exc_fetch();
}

/* C-string variant; messages come from libcurl or us and may be any bytes. */
static PyObject *map_error(sl_modstate *st, long status, const char *code, const char *msg)
{
    PyObject *c = PyUnicode_FromString(code);
    PyObject *m = c != NULL ? PyUnicode_DecodeUTF8(msg, (Py_ssize_t)strlen(msg), "replace") : NULL;
    PyObject *e = m != NULL ? map_error_obj(st, status, c, m) : sl_exc_fetch();
    Py_XDECREF(c);
    Py_XDECREF(m);
    return e;
}

static const char *fail_code(enum sl_fail f)
{
    switch (f) {
    case SL_FAIL_TIMEOUT:
        return "timeout";
    case SL_FAIL_TOO_LARGE:
        return "payload_too_large";
    case SL_FAIL_INTERNAL:
        return "internal";
    case SL_FAIL_LOST:
        return "runner_exited";
    default:
        return "unavailable";
    }
}

/* A 4xx/5xx: {"error": {"code": str, "message": str}} or "internal". */
static PyObject *error_from_body(sl_modstate *st, OpRef *self, const sl_result *r)
{
    PyObject *v = NULL;
    if (r->body_len > 0) {
        v = sl_py_unpack(r->body, r->body_len, SL_MAX_BODY, SL_MAX_DEPTH);
        if (v == NULL)
            PyErr_Clear();
    }
    if (v != NULL && PyDict_Check(v)) {
        PyObject *err = PyDict_GetItemString(v, "error"); /* borrowed */
        if (err != NULL && PyDict_Check(err)) {
            PyObject *code = PyDict_GetItemString(err, "code");
            PyObject *msg = PyDict_GetItemString(err, "message");
            if (code != NULL && msg != NULL && PyUnicode_Check(code) && PyUnicode_Check(msg)) {
                Py_INCREF(code);
                Py_INCREF(msg);
                Py_DECREF(v);
                PyObject *e = map_error_obj(st, r->status, code, msg);
                Py_DECREF(code);
                Py_DECREF(msg);
                return e;
            }
        }
    }
    Py_XDECREF(v);
    /* Not ours (a proxy page, a crash): show the start of it. */
    size_t n = r->body_len < 200 ? r->body_len : 200;
    PyObject *snippet =
        PyUnicode_DecodeUTF8(r->body != NULL ? r->body : "", (Py_ssize_t)n, "replace");
    if (snippet == NULL)
        return sl_exc_fetch();
    PyObject *msg =
        PyUnicode_FromFormat("HTTP %ld from %s %s with a body that is not a msgpack "
                             "error (%zu bytes): %R",
                             r->status, ref_method(self), ref_path(self), r->body_len, snippet);
    Py_DECREF(snippet);
    if (msg == NULL)
        return sl_exc_fetch();
    PyObject *code = PyUnicode_FromString("internal");
    PyObject *e = code != NULL ? map_error_obj(st, r->status, code, msg) : sl_exc_fetch();
    Py_XDECREF(code);
    Py_DECREF(msg);
    return e;
}

/* Compute the outcome: sets exactly one of *value / *exc. */
static void compute(OpRef *self, PyObject **value, PyObject **exc)
{
    sl_modstate *st = sl_modstate_of_type(Py_TYPE(self));
    *value = *exc = NULL;
    if (self->req == NULL) {
        if (ref_state(self) == SL_REQ_ORPHANED) {
            *exc = map_error(st, 0, "unavailable",
                             "the map() chunk was in flight when this process forked; its "
                             "outcome goes to the parent process only");
            return;
        }
        /* The ref now stores an outcome: it and its siblings must be
         * tracked (sl_batch_expose) unless that outcome cannot hold them. */
        PyObject *v = sl_batch_value(self->batch, self->index);
        if (v != NULL)
            *value = Py_NewRef(v);
        else if ((v = sl_batch_fallback(self->batch, self->index)) != NULL)
            *value = v;
        else
            *exc = sl_exc_fetch();
        if (*exc != NULL || PyObject_IS_GC(*value))
            sl_batch_expose(self->batch);
        return;
    }
    const sl_result *r = sl_req_result(self->req);
    if (r->fail != SL_FAIL_NONE) {
        *exc = map_error(st, r->status, fail_code(r->fail), r->message);
        return;
    }
    if (r->status < 200 || r->status > 299) {
        *exc = error_from_body(st, self, r);
        return;
    }
    /* An empty 2xx body means {} (as an empty request body does). */
    PyObject *v = r->body_len == 0 ? PyDict_New()
                                   : sl_py_unpack(r->body, r->body_len, SL_MAX_BODY, SL_MAX_DEPTH);
    if (v == NULL) {
        PyObject *cause = sl_exc_fetch();
        PyObject *text = cause != NULL ? PyObject_Str(cause) : NULL;
        Py_XDECREF(cause);
        if (text == NULL) {
            *exc = sl_exc_fetch();
            return;
        }
        PyObject *msg =
            PyUnicode_FromFormat("invalid msgpack in the HTTP %ld response to %s %s: %U", r->status,
                                 ref_method(self), ref_path(self), text);
        Py_DECREF(text);
        PyObject *code = msg != NULL ? PyUnicode_FromString("internal") : NULL;
        *exc = code != NULL ? map_error_obj(st, r->status, code, msg) : sl_exc_fetch();
        Py_XDECREF(code);
        Py_XDECREF(msg);
        return;
    }
    PyObject *transform = self->transform;
    self->transform = NULL; /* applied once, whatever happens */
    if (transform != NULL) {
        PyObject *t = PyObject_CallOneArg(transform, v);
        Py_DECREF(transform);
        Py_DECREF(v);
        if (t == NULL)
            *exc = sl_exc_fetch();
        else
            *value = t;
        return;
    }
    *value = v;
}

/* Make value/exc available. Precondition: the request is DONE or ORPHANED. */
static int materialise(OpRef *self)
{
    if (self->mat == MAT_DONE)
        return 0;
    unsigned long me = PyThread_get_thread_ident();
    if (self->mat == MAT_BUSY) {
        if (self->mat_thread == me) {
            PyErr_SetString(PyExc_RuntimeError,
                            "OperationRef result requested from inside its own transform or "
                            "error mapper");
            return -1;
        }
        /* Another thread is running the transform (which released the GIL);
         * wait for it rather than running it twice. Rare, so poll. */
        while (self->mat == MAT_BUSY) {
            Py_BEGIN_ALLOW_THREADS struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
            Py_END_ALLOW_THREADS if (PyErr_CheckSignals() < 0) return -1;
        }
        return 0;
    }
    self->mat = MAT_BUSY;
    self->mat_thread = me;
    PyObject *value, *exc;
    compute(self, &value, &exc);
    if (value == NULL && exc == NULL) /* an error while building the error */
        exc = Py_NewRef(PyExc_MemoryError);
    self->value = value;
    self->exc = exc;
    self->mat = MAT_DONE;
    if (self->req != NULL)
        sl_req_drop_body(self->req);
    return 0;
}

static PyObject *cancelled_error(sl_modstate *st)
{
    if (st->cancelled_error == NULL)
        st->cancelled_error = sl_import_attr("concurrent.futures", "CancelledError");
    return st->cancelled_error;
}

static PyObject *raise_cancelled(OpRef *self)
{
    PyObject *cls = cancelled_error(sl_modstate_of_type(Py_TYPE(self)));
    if (cls != NULL)
        PyErr_SetNone(cls);
    return NULL;
}

/* Wait (GIL released) until not pending. timeout_s < 0: forever. */
static int wait_done(OpRef *self, double timeout_s)
{
    if (ref_state(self) != SL_REQ_PENDING)
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
                         ref_method(self), ref_path(self), secs);
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
/* Done-callback dispatcher: one C thread per process, started lazily        */
/* ------------------------------------------------------------------------ */

typedef struct dispatcher dispatcher;

typedef struct cb_node {
    sl_watch w; /* first: the watch pointer is the node pointer */
    struct cb_node *next;
    dispatcher *disp;
    PyObject *fn, *ref; /* strong references, released by the dispatcher */
} cb_node;

struct dispatcher {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    cb_node *head, *tail;
    bool stop;
    pthread_t thread;
};

/* Guarded by the GIL. Reset (and the old one abandoned) in a fork child. */
static dispatcher *g_disp;
static bool g_disp_shut;
static pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;

static void ext_atfork_child(void)
{
    /* The dispatcher thread does not exist in the child and its mutex may be
     * held: never touch it again; a new one starts on demand. */
    g_disp = NULL;
}

static void ext_atfork_init(void)
{
    (void)pthread_atfork(NULL, NULL, ext_atfork_child);
}

static void call_callback(PyObject *fn, PyObject *ref)
{
    PyObject *r = PyObject_CallOneArg(fn, ref);
    if (r == NULL)
        PyErr_WriteUnraisable(fn);
    else
        Py_DECREF(r);
}

static void *disp_main(void *arg)
{
    dispatcher *d = arg;
    PyGILState_STATE g = PyGILState_Ensure();
    PyThreadState *ts = PyEval_SaveThread();
    for (;;) {
        pthread_mutex_lock(&d->mu);
        while (d->head == NULL && !d->stop)
            pthread_cond_wait(&d->cond, &d->mu);
        cb_node *list = d->head;
        d->head = d->tail = NULL;
        bool stop = d->stop;
        pthread_mutex_unlock(&d->mu);
        if (list != NULL) {
            PyEval_RestoreThread(ts);
            while (list != NULL) {
                cb_node *next = list->next;
                call_callback(list->fn, list->ref);
                Py_DECREF(list->fn);
                Py_DECREF(list->ref);
                free(list);
                list = next;
            }
            ts = PyEval_SaveThread();
        }
        if (stop)
            break;
    }
    PyEval_RestoreThread(ts);
    PyGILState_Release(g);
    return NULL;
}

/* Runs on the completing thread (usually the I/O thread): C only. */
static void disp_watch(sl_watch *w, sl_req *req)
{
    (void)req;
    cb_node *n = (cb_node *)w;
    dispatcher *d = n->disp;
    n->next = NULL;
    pthread_mutex_lock(&d->mu);
    if (d->tail != NULL)
        d->tail->next = n;
    else
        d->head = n;
    d->tail = n;
    pthread_cond_signal(&d->cond);
    pthread_mutex_unlock(&d->mu);
}

static dispatcher *disp_get(void)
{
    if (g_disp != NULL)
        return g_disp;
    if (g_disp_shut) {
        PyErr_SetString(PyExc_RuntimeError, "sandlot is shutting down");
        return NULL;
    }
    pthread_once(&g_atfork_once, ext_atfork_init);
    dispatcher *d = calloc(1, sizeof(*d));
    if (d == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    int rc = pthread_mutex_init(&d->mu, NULL);
    if (rc == 0) {
        rc = pthread_cond_init(&d->cond, NULL);
        if (rc != 0)
            pthread_mutex_destroy(&d->mu);
    }
    if (rc == 0) {
        /* Signals go to the main thread, where Python handles them. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        rc = pthread_create(&d->thread, NULL, disp_main, d);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (rc != 0) {
            pthread_cond_destroy(&d->cond);
            pthread_mutex_destroy(&d->mu);
        }
    }
    if (rc != 0) {
        free(d);
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    g_disp = d;
    return d;
}

void sl_opref_shutdown(void)
{
    dispatcher *d = g_disp;
    g_disp = NULL;
    g_disp_shut = true;
    if (d == NULL)
        return;
    pthread_mutex_lock(&d->mu);
    d->stop = true;
    pthread_cond_signal(&d->cond);
    pthread_mutex_unlock(&d->mu);
    /* Bounded: a callback stuck forever must not hang interpreter exit. If
     * the join times out, the thread is left to the interpreter, which ends
     * it when it next tries to take the GIL during finalisation. The struct
     * is never freed for the same reason. */
    Py_BEGIN_ALLOW_THREADS struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 2;
    pthread_timedjoin_np(d->thread, NULL, &ts);
    Py_END_ALLOW_THREADS
}

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
    if (ref_state(ref) == SL_REQ_CANCELLED) {
        r = PyObject_CallMethod(fut, "cancel", NULL);
    } else if (materialise(ref) < 0) {
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

static PyType_Spec waker_spec = {
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
    int s = ref_state(self);
    if (s == SL_REQ_CANCELLED)
        return raise_cancelled(self);
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
    if (materialise(self) < 0)
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
    return PyBool_FromLong(ref_state(self) != SL_REQ_PENDING);
}

static PyObject *ref_cancelled(OpRef *self, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(ref_state(self) == SL_REQ_CANCELLED);
}

static PyObject *ref_cancel(OpRef *self, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(ref_do_cancel(self));
}

static PyObject *ref_add_done_callback(OpRef *self, PyObject *fn)
{
    if (!PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError, "callback must be callable, not %.100s",
                     Py_TYPE(fn)->tp_name);
        return NULL;
    }
    if (ref_state(self) != SL_REQ_PENDING) {
        call_callback(fn, (PyObject *)self);
        Py_RETURN_NONE;
    }
    dispatcher *d = disp_get();
    if (d == NULL)
        return NULL;
    cb_node *n = calloc(1, sizeof(*n));
    if (n == NULL)
        return PyErr_NoMemory();
    n->w.fn = disp_watch;
    n->disp = d;
    n->fn = Py_NewRef(fn);
    n->ref = Py_NewRef((PyObject *)self);
    int rc = ref_watch(self, &n->w);
    if (rc < 0) {
        Py_DECREF(n->fn);
        Py_DECREF(n->ref);
        free(n);
        if (rc == -ENOMEM)
            return PyErr_NoMemory();
        call_callback(fn, (PyObject *)self); /* completed meanwhile */
    }
    Py_RETURN_NONE;
}

/* fut.add_done_callback target: propagate the awaiting task's cancellation. */
static PyObject *ref_on_future_done(OpRef *self, PyObject *fut)
{
    PyObject *r = PyObject_CallMethod(fut, "cancelled", NULL);
    if (r == NULL)
        return NULL;
    int c = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (c < 0)
        return NULL;
    if (c)
        ref_do_cancel(self);
    Py_RETURN_NONE;
}

static PyObject *ref_await(OpRef *self)
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
    if (ref_state(self) != SL_REQ_PENDING) {
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
        int rc = ref_watch(self, &n->w);
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

static PyObject *ref_repr(OpRef *self)
{
    static const char *const names[] = {"pending", "done", "cancelled", "orphaned"};
    int s = ref_state(self);
    if (self->req == NULL)
        return PyUnicode_FromFormat("<OperationRef %s %s[%zd] %s>", ref_method(self),
                                    ref_path(self), self->index, names[s]);
    return PyUnicode_FromFormat("<OperationRef %s %s %s>", ref_method(self), ref_path(self),
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
    {"add_done_callback", (PyCFunction)ref_add_done_callback, METH_O,
     "Call fn(ref) once done (now if already done, else from the dispatcher thread)."},
    {"_on_future_done", (PyCFunction)ref_on_future_done, METH_O,
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
    {Py_tp_members, ref_members}, {Py_am_await, ref_await},     {0, NULL},
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
    st->waker_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &waker_spec, NULL);
    return st->waker_type == NULL ? -1 : 0;
}
