/* opref_disp.c - add_done_callback: a C node on the request's watch list,
 * moved at completion (by the I/O thread, without the GIL) to the queue of
 * one lazily started dispatcher thread, which takes the GIL and calls fn(ref). */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>

#include "sl_opref.h"

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

void sl__call_callback(PyObject *fn, PyObject *ref)
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
                sl__call_callback(list->fn, list->ref);
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

PyObject *sl__ref_add_done_callback(OpRef *self, PyObject *fn)
{
    if (!PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError, "callback must be callable, not %.100s",
                     Py_TYPE(fn)->tp_name);
        return NULL;
    }
    if (sl__ref_state(self) != SL_REQ_PENDING) {
        sl__call_callback(fn, (PyObject *)self);
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
    int rc = sl__ref_watch(self, &n->w);
    if (rc < 0) {
        Py_DECREF(n->fn);
        Py_DECREF(n->ref);
        free(n);
        if (rc == -ENOMEM)
            return PyErr_NoMemory();
        sl__call_callback(fn, (PyObject *)self); /* completed meanwhile */
    }
    Py_RETURN_NONE;
}
