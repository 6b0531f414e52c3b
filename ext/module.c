/* module.c - the sandlot._core module: multi-phase init (PEP 489), module
 * state, constants, set_error_mapper, and the interpreter-exit hook.
 *
 * Modelled on CPython's Modules/_asynciomodule.c: heap types created with
 * PyType_FromModuleAndSpec so methods find their module state through their
 * type, and m_traverse/m_clear so the state takes part in GC.
 *
 * Interpreter exit: an atexit callback (which runs before finalisation
 * starts, while other threads can still take the GIL) stops and joins the I/O
 * thread, failing pending requests with "unavailable", then stops the
 * done-callback dispatcher.
 */
#include "sl_codec.h"
#include "sl_common.h"
#include "sl_ext.h"

sl_modstate *sl_modstate_of_type(PyTypeObject *tp)
{
    return (sl_modstate *)PyType_GetModuleState(tp);
}

PyObject *sl_import_attr(const char *mod, const char *attr)
{
    PyObject *m = PyImport_ImportModule(mod);
    if (m == NULL)
        return NULL;
    PyObject *a = PyObject_GetAttrString(m, attr);
    Py_DECREF(m);
    return a;
}

PyObject *sl_exc_fetch(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL)
        return NULL;
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && tb != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

PyObject *sl_exc_raise(PyObject *exc)
{
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    return NULL;
}

PyDoc_STRVAR(set_error_mapper_doc,
             "set_error_mapper(fn)\n--\n\n"
             "Install fn(http_status, code, message) -> exception, used when a failed\n"
             "OperationRef is materialised. None removes it (RuntimeError is raised then).");

static PyObject *set_error_mapper(PyObject *module, PyObject *fn)
{
    sl_modstate *st = PyModule_GetState(module);
    if (fn != Py_None && !PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError, "error mapper must be callable or None, not %.100s",
                     Py_TYPE(fn)->tp_name);
        return NULL;
    }
    Py_XSETREF(st->error_mapper, fn == Py_None ? NULL : Py_NewRef(fn));
    Py_RETURN_NONE;
}

static PyObject *mod_shutdown(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    /* Joining the I/O thread cannot deadlock on the GIL: it never takes it. */
    Py_BEGIN_ALLOW_THREADS sl_transport_shutdown();
    Py_END_ALLOW_THREADS sl_opref_shutdown();
    Py_RETURN_NONE;
}

static PyObject *mod_live_requests(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyLong_FromLong(sl_transport_live_requests());
}

static PyMethodDef mod_methods[] = {
    {"set_error_mapper", set_error_mapper, METH_O, set_error_mapper_doc},
    {"_shutdown", mod_shutdown, METH_NOARGS,
     "Stop the I/O and dispatcher threads (registered with atexit)."},
    {"_live_requests", mod_live_requests, METH_NOARGS,
     "Number of C request objects alive in this process (for tests)."},
    {NULL, NULL, 0, NULL},
};

static int register_atexit(PyObject *module)
{
    PyObject *reg = sl_import_attr("atexit", "register");
    if (reg == NULL)
        return -1;
    PyObject *fn = PyObject_GetAttrString(module, "_shutdown");
    if (fn == NULL) {
        Py_DECREF(reg);
        return -1;
    }
    PyObject *r = PyObject_CallOneArg(reg, fn);
    Py_DECREF(fn);
    Py_DECREF(reg);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int add_long(PyObject *m, const char *name, PyObject *v)
{
    if (v == NULL)
        return -1;
    int rc = PyModule_AddObjectRef(m, name, v);
    Py_DECREF(v);
    return rc;
}

static int mod_exec(PyObject *module)
{
    sl_modstate *st = PyModule_GetState(module);
    if (PyModule_AddFunctions(module, sl_codec_methods) < 0)
        return -1;
    if (sl_opref_add_types(module, st) < 0 || sl_client_add_type(module, st) < 0)
        return -1;
    if (add_long(module, "MAX_BODY", PyLong_FromSize_t(SL_MAX_BODY)) < 0 ||
        add_long(module, "MAX_DEPTH", PyLong_FromLong(SL_MAX_DEPTH)) < 0 ||
        PyModule_AddStringConstant(module, "__version__", SL_VERSION) < 0)
        return -1;
    return register_atexit(module);
}

static int mod_traverse(PyObject *module, visitproc visit, void *arg)
{
    sl_modstate *st = PyModule_GetState(module);
    Py_VISIT(st->ref_type);
    Py_VISIT(st->client_type);
    Py_VISIT(st->waker_type);
    Py_VISIT(st->error_mapper);
    Py_VISIT(st->cancelled_error);
    Py_VISIT(st->get_running_loop);
    Py_VISIT(st->wakers);
    return 0;
}

static int mod_clear(PyObject *module)
{
    sl_modstate *st = PyModule_GetState(module);
    Py_CLEAR(st->ref_type);
    Py_CLEAR(st->client_type);
    Py_CLEAR(st->waker_type);
    Py_CLEAR(st->error_mapper);
    Py_CLEAR(st->cancelled_error);
    Py_CLEAR(st->get_running_loop);
    Py_CLEAR(st->wakers);
    return 0;
}

static void mod_free(void *module)
{
    mod_clear((PyObject *)module);
}

static PyModuleDef_Slot mod_slots[] = {
    {Py_mod_exec, mod_exec},
    {0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sandlot._core",
    .m_doc = "sandlot's C core: libcurl transport on one I/O thread, msgpack codec, "
             "OperationRef futures.",
    .m_size = sizeof(sl_modstate),
    .m_methods = mod_methods,
    .m_slots = mod_slots,
    .m_traverse = mod_traverse,
    .m_clear = mod_clear,
    .m_free = mod_free,
};

PyMODINIT_FUNC PyInit__core(void)
{
    return PyModuleDef_Init(&core_module);
}
