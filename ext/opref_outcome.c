/* opref_outcome.c - an OperationRef's value or exception, materialised
 * lazily with the GIL by whoever first asks: decode the body, apply the
 * transform once, or build the exception through the error mapper. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_codec.h"
#include "sl_common.h"
#include "sl_opref.h"

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
    PyObject *msg = PyUnicode_FromFormat("HTTP %ld from %s %s with a body that is not a msgpack "
                                         "error (%zu bytes): %R",
                                         r->status, sl__ref_method(self), sl__ref_path(self),
                                         r->body_len, snippet);
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
        if (sl__ref_state(self) == SL_REQ_ORPHANED) {
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
                                 sl__ref_method(self), sl__ref_path(self), text);
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
int sl__ref_materialise(OpRef *self)
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

PyObject *sl__ref_raise_cancelled(OpRef *self)
{
    PyObject *cls = cancelled_error(sl_modstate_of_type(Py_TYPE(self)));
    if (cls != NULL)
        PyErr_SetNone(cls);
    return NULL;
}
