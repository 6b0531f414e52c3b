/* client.c - Client: where requests go (an sl_endpoint) and request().
 *
 * A Client is cheap: it holds an endpoint (parsed URL + shared headers) and
 * an owner tag. Connections live in the process-wide transport, so every
 * Client to the same runner shares one keep-alive pool. request() packs the
 * body on the calling thread, queues the request and returns an
 * OperationRef without waiting for any I/O.
 *
 * Dropping a Client does not cancel its requests (their refs still complete:
 * each request holds its own endpoint reference); close() does.
 */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "sl_codec.h"
#include "sl_common.h"
#include "sl_ext.h"

typedef struct {
    PyObject_HEAD sl_endpoint *ep;
    PyObject *base_url; /* str */
    uint64_t owner;     /* tag for close(): cancels only this client's requests */
    int closed;
} Client;

static atomic_uint_fast64_t g_next_owner = 1;

static bool token_ok(const char *t)
{
    if (t[0] == '\0')
        return false;
    for (; *t != '\0'; t++)
        if ((unsigned char)*t <= 0x20 || (unsigned char)*t == 0x7f)
            return false;
    return true;
}

static PyObject *client_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"base_url", "token", NULL};
    PyObject *url;
    const char *token = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U|z:Client", kwlist, &url, &token))
        return NULL;
    const char *curl = PyUnicode_AsUTF8(url);
    if (curl == NULL)
        return NULL;
    if (token != NULL && !token_ok(token)) {
        PyErr_SetString(PyExc_ValueError,
                        "token must be non-empty without whitespace or control characters");
        return NULL;
    }
    sl_endpoint *ep;
    int rc = sl_endpoint_new(curl, token, &ep);
    if (rc == -ENOMEM)
        return PyErr_NoMemory();
    if (rc == -ENAMETOOLONG) {
        PyErr_Format(PyExc_ValueError, "unix socket path too long (max 107 bytes): %R", url);
        return NULL;
    }
    if (rc < 0) {
        PyErr_Format(PyExc_ValueError,
                     "base_url must be \"unix:///abs/path.sock\" or \"http://host:port\", not %R",
                     url);
        return NULL;
    }
    Client *self = (Client *)type->tp_alloc(type, 0);
    if (self == NULL) {
        sl_endpoint_unref(ep);
        return NULL;
    }
    self->ep = ep;
    self->base_url = Py_NewRef(url);
    self->owner = atomic_fetch_add(&g_next_owner, 1);
    self->closed = 0;
    return (PyObject *)self;
}

static int client_traverse(Client *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->base_url);
    return 0;
}

static int client_clear(Client *self)
{
    Py_CLEAR(self->base_url);
    return 0;
}

static void client_dealloc(Client *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    client_clear(self);
    sl_endpoint_unref(self->ep);
    tp->tp_free(self);
    Py_DECREF(tp);
}

/* seconds -> ms for libcurl; 0 = no limit. */
static int timeout_ms(PyObject *obj, int64_t *out)
{
    *out = 0;
    if (obj == Py_None)
        return 0;
    double t = PyFloat_AsDouble(obj);
    if (t == -1.0 && PyErr_Occurred())
        return -1;
    if (isnan(t) || t < 0) {
        PyErr_SetString(PyExc_ValueError, "timeout must be a number >= 0 or None");
        return -1;
    }
    double ms = ceil(t * 1000.0);
    if (ms >= (double)SL_REQ_MAX_TIMEOUT_MS)
        *out = SL_REQ_MAX_TIMEOUT_MS;
    else
        *out = ms < 1 ? 1 : (int64_t)ms; /* 0 s still means "expire", not "no limit" */
    return 0;
}

static PyObject *client_request(Client *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"method", "path", "body", "timeout", "transform", NULL};
    const char *method, *path;
    PyObject *body = Py_None, *timeout = Py_None, *transform = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "ss|O$OO:request", kwlist, &method, &path, &body,
                                     &timeout, &transform))
        return NULL;
    if (self->closed) {
        PyErr_SetString(PyExc_RuntimeError, "Client is closed");
        return NULL;
    }
    if (transform != Py_None && !PyCallable_Check(transform)) {
        PyErr_Format(PyExc_TypeError, "transform must be callable or None, not %.100s",
                     Py_TYPE(transform)->tp_name);
        return NULL;
    }
    int64_t tmo;
    if (timeout_ms(timeout, &tmo) < 0)
        return NULL;

    char *data = NULL;
    size_t len = 0;
    if (body != Py_None) {
        sl_pbuf sb = {0};
        if (sl_py_pack(body, &sb) < 0) {
            sl_pbuf_free(&sb);
            return NULL;
        }
        if (sb.len > SL_MAX_BODY) {
            PyErr_Format(PyExc_ValueError,
                         "request body is %zu bytes, larger than MAX_BODY (%zu bytes)", sb.len,
                         SL_MAX_BODY);
            sl_pbuf_free(&sb);
            return NULL;
        }
        len = sb.len;
        data = sb.data; /* the request owns it now (freed with free()) */
    }

    sl_req *req;
    int rc = sl_req_new(self->ep, method, path, data, len, tmo, self->owner, &req);
    if (rc < 0) {
        free(data);
        if (rc == -ENOMEM)
            return PyErr_NoMemory();
        PyErr_Format(PyExc_ValueError,
                     "bad request %s %s: the method must be GET, POST, PUT, PATCH or DELETE and "
                     "the path must start with '/' and contain no spaces or control characters",
                     method, path);
        return NULL;
    }
    sl_modstate *st = sl_modstate_of_type(Py_TYPE(self));
    PyObject *ref = sl_opref_new(st, req, transform == Py_None ? NULL : transform);
    if (ref == NULL)
        return NULL;
    rc = sl_req_submit(req);
    if (rc < 0) {
        Py_DECREF(ref);
        errno = -rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    return ref;
}

static PyObject *client_close(Client *self, PyObject *unused)
{
    (void)unused;
    if (self->closed)
        Py_RETURN_NONE;
    if (sl_transport_cancel_owner(self->owner) < 0)
        return PyErr_NoMemory();
    self->closed = 1;
    Py_RETURN_NONE;
}

static PyObject *client_get_base_url(Client *self, void *closure)
{
    (void)closure;
    return Py_NewRef(self->base_url);
}

static PyObject *client_repr(Client *self)
{
    return PyUnicode_FromFormat("<sandlot._core.Client %R%s>", self->base_url,
                                self->closed ? " closed" : "");
}

static PyMethodDef client_methods[] = {
    {"request", (PyCFunction)(void (*)(void))client_request, METH_VARARGS | METH_KEYWORDS,
     "request(method, path, body=None, *, timeout=None, transform=None)\n--\n\n"
     "Queue one HTTP request and return an OperationRef at once."},
    {"close", (PyCFunction)client_close, METH_NOARGS,
     "Cancel this client's in-flight requests. Idempotent."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef client_getset[] = {
    {"base_url", (getter)client_get_base_url, NULL, "The runner URL given to the constructor.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(client_doc, "Client(base_url, token=None)\n--\n\n"
                         "A connection pool to one runner, served by the process's I/O thread.");

static PyType_Slot client_slots[] = {
    {Py_tp_doc, (void *)client_doc},
    {Py_tp_new, client_new},
    {Py_tp_dealloc, client_dealloc},
    {Py_tp_traverse, client_traverse},
    {Py_tp_clear, client_clear},
    {Py_tp_repr, client_repr},
    {Py_tp_methods, client_methods},
    {Py_tp_getset, client_getset},
    {0, NULL},
};

static PyType_Spec client_spec = {
    .name = "sandlot._core.Client",
    .basicsize = sizeof(Client),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = client_slots,
};

int sl_client_add_type(PyObject *module, sl_modstate *st)
{
    st->client_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &client_spec, NULL);
    if (st->client_type == NULL || PyModule_AddType(module, st->client_type) < 0)
        return -1;
    return 0;
}
