/* sl_opref.h - the OperationRef object, shared by the files that make it
 * up (internal to ext/; the rest of the module sees only sl_ext.h):
 *
 *   opref.c          the type: result()/exception()/done()/cancel(), repr
 *   opref_outcome.c  materialising a ref's value or exception, error mapping
 *   opref_disp.c     add_done_callback: the done-callback dispatcher thread
 *   opref_aio.c      await: one _LoopWaker (eventfd) per asyncio loop
 */
#ifndef SL_OPREF_H
#define SL_OPREF_H

#include "sl_ext.h"

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

static inline int sl__ref_state(const OpRef *self)
{
    return self->req != NULL ? sl_req_state(self->req) : sl_batch_state(self->batch, self->index);
}

static inline const char *sl__ref_method(const OpRef *self)
{
    return self->req != NULL ? sl_req_method(self->req) : "POST";
}

static inline const char *sl__ref_path(const OpRef *self)
{
    return self->req != NULL ? sl_req_path(self->req) : sl_batch_label(self->batch);
}

static inline int sl__ref_watch(OpRef *self, sl_watch *w)
{
    return self->req != NULL ? sl_req_watch(self->req, w)
                             : sl_batch_watch(self->batch, self->index, w);
}

static inline int sl__ref_do_cancel(OpRef *self)
{
    return self->req != NULL ? sl_req_cancel(self->req) : sl_batch_cancel(self->batch, self->index);
}

/* opref_outcome.c: make value/exc available (the request is DONE or
 * ORPHANED); -1 only for re-entry or a signal. */
int sl__ref_materialise(OpRef *self);
/* Raise concurrent.futures.CancelledError; always NULL. */
PyObject *sl__ref_raise_cancelled(OpRef *self);

/* opref_disp.c */
/* Call fn(ref), reporting (not raising) its exception. GIL held. */
void sl__call_callback(PyObject *fn, PyObject *ref);
/* ref.add_done_callback(fn). */
PyObject *sl__ref_add_done_callback(OpRef *self, PyObject *fn);

/* opref_aio.c */
PyObject *sl__ref_on_future_done(OpRef *self, PyObject *fut);
PyObject *sl__ref_await(OpRef *self);
extern PyType_Spec sl__waker_spec;

#endif
