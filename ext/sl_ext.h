/* sl_ext.h - module state and declarations shared by ext/module.c, ext/opref.c
 * and ext/client.c (the CPython side of sandlot._core).
 *
 * Everything Python-specific lives in ext/; csrc/transport knows nothing of
 * the interpreter. Per-interpreter things (types, the error mapper, cached
 * imports, per-event-loop wakers) are module state; process-wide things (the
 * I/O thread, the callback dispatcher thread) are C globals, because there is
 * one of each per process whatever the number of module objects.
 */
#ifndef SL_EXT_H
#define SL_EXT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdbool.h>

#include "sl_transport.h"

typedef struct sl_modstate {
    PyTypeObject *ref_type;     /* OperationRef */
    PyTypeObject *client_type;  /* Client */
    PyTypeObject *waker_type;   /* _LoopWaker: one wake-up fd per asyncio loop */
    PyObject *error_mapper;     /* set_error_mapper(fn), or NULL */
    PyObject *cancelled_error;  /* concurrent.futures.CancelledError, imported lazily */
    PyObject *get_running_loop; /* asyncio.get_running_loop, imported lazily */
    PyObject *wakers;           /* weakref.WeakKeyDictionary: loop -> _LoopWaker, lazily */
} sl_modstate;

/* module.c */
sl_modstate *sl_modstate_of_type(PyTypeObject *tp);
/* Import module `mod` and return a new reference to its attribute `attr`. */
PyObject *sl_import_attr(const char *mod, const char *attr);
/* Take the raised exception as a normalised instance (new reference, with its
 * traceback attached); NULL if none is set. */
PyObject *sl_exc_fetch(void);
/* Raise exc (an exception instance; borrowed). Always returns NULL. */
PyObject *sl_exc_raise(PyObject *exc);

/* opref.c */
int sl_opref_add_types(PyObject *module, sl_modstate *st);
/* A new OperationRef for a request that is about to be submitted. Steals
 * the caller's reference to req, even on failure. transform may be NULL. */
PyObject *sl_opref_new(sl_modstate *st, sl_req *req, PyObject *transform);
/* A new OperationRef for item i of a PromiseBatch (holds the batch); not
 * tracked by the cycle collector unless track (see sl_batch_expose). */
PyObject *sl_opref_new_item(sl_modstate *st, PyObject *batch, Py_ssize_t i, bool track);
/* Stop the done-callback dispatcher thread (interpreter exit; GIL held). */
void sl_opref_shutdown(void);

/* promise.c: the items of a PromiseBatch, for the OperationRefs that point
 * into it. With the GIL, except sl_batch_state and sl_batch_wait (any thread,
 * only C memory; the caller keeps the batch alive). Same conventions as the
 * sl_req_* functions they stand in for. */
int sl_batch_state(PyObject *batch, Py_ssize_t i); /* enum sl_req_state */
int sl_batch_wait(PyObject *batch, Py_ssize_t i, int64_t deadline_ns);
/* 1 if this call cancelled item i (its watches and on_cancel(i) have run). */
int sl_batch_cancel(PyObject *batch, Py_ssize_t i);
/* 0, -EALREADY if item i is no longer pending, -ENOMEM. */
int sl_batch_watch(PyObject *batch, Py_ssize_t i, sl_watch *w);
/* Item i's value when complete() carried it (borrowed), else NULL (no error). */
PyObject *sl_batch_value(PyObject *batch, Py_ssize_t i);
/* fallback(i): a new reference, or NULL with an exception set. */
PyObject *sl_batch_fallback(PyObject *batch, Py_ssize_t i);
const char *sl_batch_label(PyObject *batch);
/* Track every untracked ref of the batch: a ref handed out a tracked value
 * or stored an outcome (promise.c explains why refs start untracked). */
void sl_batch_expose(PyObject *batch);
/* Ref `ref` of item i is being freed: drop its borrowed slot. */
void sl_batch_forget(PyObject *batch, Py_ssize_t i, PyObject *ref);

/* client.c */
int sl_client_add_type(PyObject *module, sl_modstate *st);

#endif
