/* msg.c - typed getters over decoded request maps, and the response builder. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_mpcheck.h"
#include "sl_msg.h"

int sl_err_set(sl_err *e, int status, const char *fmt, ...)
{
    e->status = status;
    e->code = sl_err_code(status);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
    return -1;
}

const char *sl_err_code(int status)
{
    switch (status) {
    case 400:
        return "bad_request";
    case 401:
        return "unauthorized";
    case 404:
        return "not_found";
    case 405:
        return "method_not_allowed";
    case 409:
        return "conflict";
    case 413:
        return "payload_too_large";
    case 415:
        return "unsupported_media_type";
    case 422:
        return "spawn_failed";
    case 503:
        return "unavailable";
    default:
        return "internal";
    }
}

void sl_kv_free(sl_kv *kv, size_t n, int wipe)
{
    if (kv == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        if (wipe && kv[i].v != NULL)
            explicit_bzero(kv[i].v, strlen(kv[i].v));
        free(kv[i].k);
        free(kv[i].v);
    }
    free(kv);
}

void sl_strv_free(char **v, size_t n)
{
    if (v == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

char **sl_strv_dup(char *const *v, size_t n)
{
    char **out = calloc(n + 1, sizeof(*out));
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        out[i] = strdup(v[i]);
        if (out[i] == NULL) {
            sl_strv_free(out, i);
            return NULL;
        }
    }
    return out;
}

const char *sl_msg_type_name(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return "nil";
    case MSGPACK_OBJECT_BOOLEAN:
        return "bool";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return "int";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return "float";
    case MSGPACK_OBJECT_STR:
        return "str";
    case MSGPACK_OBJECT_BIN:
        return "bin";
    case MSGPACK_OBJECT_ARRAY:
        return "array";
    case MSGPACK_OBJECT_MAP:
        return "map";
    case MSGPACK_OBJECT_EXT:
        return "ext";
    }
    return "unknown";
}

int sl_msg_stored_field(const char *raw, size_t len, const char *key, msgpack_unpacked *up,
                        const msgpack_object **out, sl_err *e)
{
    msgpack_unpacked_init(up);
    *out = NULL;
    if (raw == NULL || len == 0)
        return 0;
    /* Stored by the runner itself (fn_registry.c) from a checked body. */
    if (msgpack_unpack_next(up, raw, len, NULL) != MSGPACK_UNPACK_SUCCESS)
        return sl_err_set(e, 500, "stored function options are not msgpack");
    *out = sl_msg_field(&up->data, key);
    return 0;
}

const msgpack_object *sl_msg_field(const msgpack_object *map, const char *key)
{
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t klen = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen &&
            memcmp(k->via.str.ptr, key, klen) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

/* Copy a msgpack str into a C string; NULL (with e set) if it holds a NUL byte
 * (it could not be passed to exec or open unchanged) or on ENOMEM. */
static char *dup_str(const msgpack_object *o, const char *what, sl_err *e)
{
    const char *p = o->via.str.ptr;
    size_t n = o->via.str.size;
    if (memchr(p, '\0', n) != NULL) {
        sl_err_set(e, 400, "%s must not contain NUL bytes", what);
        return NULL;
    }
    char *s = malloc(n + 1);
    if (s == NULL) {
        sl_err_set(e, 500, "malloc: out of memory");
        return NULL;
    }
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

int sl_msg_str(const msgpack_object *map, const char *key, int flags, char **out, sl_err *e)
{
    *out = NULL;
    const msgpack_object *o = sl_msg_field(map, key);
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL) {
        if (flags & SL_REQ)
            return sl_err_set(e, 400, "field '%s' is required", key);
        return 0;
    }
    if (o->type != MSGPACK_OBJECT_STR)
        return sl_err_set(e, 400, "field '%s' must be a string, got %s", key, sl_msg_type_name(o));
    char what[96];
    snprintf(what, sizeof(what), "field '%s'", key);
    *out = dup_str(o, what, e);
    return *out == NULL ? -1 : 0;
}

/* The numeric value of an int or float object; -1 if o is not a number. */
static int as_double(const msgpack_object *o, double *out)
{
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        *out = (double)o->via.u64;
        return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        *out = (double)o->via.i64;
        return 0;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        *out = o->via.f64;
        return 0;
    default:
        return -1;
    }
}

int sl_msg_num(const msgpack_object *map, const char *key, double dflt, double nil_val, double *out,
               sl_err *e)
{
    const msgpack_object *o = sl_msg_field(map, key);
    if (o == NULL) {
        *out = dflt;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_NIL) {
        *out = nil_val;
        return 0;
    }
    if (as_double(o, out) < 0)
        return sl_err_set(e, 400, "field '%s' must be a number, got %s", key, sl_msg_type_name(o));
    if (!isfinite(*out))
        return sl_err_set(e, 400, "field '%s' must be a finite number", key);
    return 0;
}

int sl_msg_int(const msgpack_object *map, const char *key, int64_t lo, int64_t hi, int64_t dflt,
               int64_t *out, sl_err *e)
{
    const msgpack_object *o = sl_msg_field(map, key);
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL) {
        *out = dflt;
        return 0;
    }
    int64_t v;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 > (uint64_t)INT64_MAX)
            return sl_err_set(e, 400, "field '%s' must be between %lld and %lld", key,
                              (long long)lo, (long long)hi);
        v = (int64_t)o->via.u64;
    } else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        v = o->via.i64;
    } else {
        return sl_err_set(e, 400, "field '%s' must be an integer, got %s", key,
                          sl_msg_type_name(o));
    }
    if (v < lo || v > hi)
        return sl_err_set(e, 400, "field '%s' must be between %lld and %lld, got %lld", key,
                          (long long)lo, (long long)hi, (long long)v);
    *out = v;
    return 0;
}

int sl_msg_bool(const msgpack_object *map, const char *key, int dflt, int *out, sl_err *e)
{
    const msgpack_object *o = sl_msg_field(map, key);
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL) {
        *out = dflt;
        return 0;
    }
    if (o->type != MSGPACK_OBJECT_BOOLEAN)
        return sl_err_set(e, 400, "field '%s' must be a bool, got %s", key, sl_msg_type_name(o));
    *out = o->via.boolean;
    return 0;
}

int sl_msg_bytes(const msgpack_object *map, const char *key, int flags, const char **ptr,
                 size_t *len, sl_err *e)
{
    *ptr = "";
    *len = 0;
    const msgpack_object *o = sl_msg_field(map, key);
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL) {
        if (flags & SL_REQ)
            return sl_err_set(e, 400, "field '%s' is required", key);
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_BIN) {
        *ptr = o->via.bin.ptr;
        *len = o->via.bin.size;
    } else if (o->type == MSGPACK_OBJECT_STR) {
        /* Accepted too: a client in a language without a bytes type sends str. */
        *ptr = o->via.str.ptr;
        *len = o->via.str.size;
    } else {
        return sl_err_set(e, 400, "field '%s' must be bytes, got %s", key, sl_msg_type_name(o));
    }
    if (*ptr == NULL)
        *ptr = "";
    return 0;
}

int sl_msg_strv(const msgpack_object *map, const char *key, int flags, char ***out, size_t *n,
                sl_err *e)
{
    *out = NULL;
    *n = 0;
    const msgpack_object *o = sl_msg_field(map, key);
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL) {
        if (flags & SL_REQ)
            return sl_err_set(e, 400, "field '%s' is required", key);
        return 0;
    }
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return sl_err_set(e, 400, "field '%s' must be an array of strings, got %s", key,
                          sl_msg_type_name(o));
    uint32_t cnt = o->via.array.size;
    if (cnt == 0)
        return sl_err_set(e, 400, "field '%s' must not be empty", key);
    char **v = calloc((size_t)cnt + 1, sizeof(*v));
    if (v == NULL)
        return sl_err_set(e, 500, "malloc: out of memory");
    for (uint32_t i = 0; i < cnt; i++) {
        const msgpack_object *it = &o->via.array.ptr[i];
        char what[96];
        snprintf(what, sizeof(what), "field '%s' item %u", key, i);
        if (it->type != MSGPACK_OBJECT_STR) {
            sl_strv_free(v, i);
            return sl_err_set(e, 400, "%s must be a string, got %s", what, sl_msg_type_name(it));
        }
        v[i] = dup_str(it, what, e);
        if (v[i] == NULL) {
            sl_strv_free(v, i);
            return -1;
        }
    }
    *out = v;
    *n = cnt;
    return 0;
}

int sl_msg_kvmap(const msgpack_object *map, const char *key, sl_kv **out, size_t *n, sl_err *e)
{
    *out = NULL;
    *n = 0;
    const msgpack_object *o = sl_msg_field(map, key);
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (o->type != MSGPACK_OBJECT_MAP)
        return sl_err_set(e, 400, "field '%s' must be a map of str to str, got %s", key,
                          sl_msg_type_name(o));
    uint32_t cnt = o->via.map.size;
    if (cnt == 0)
        return 0;
    sl_kv *kv = calloc(cnt, sizeof(*kv));
    if (kv == NULL)
        return sl_err_set(e, 500, "malloc: out of memory");
    for (uint32_t i = 0; i < cnt; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key;
        const msgpack_object *v = &o->via.map.ptr[i].val;
        char what[160];
        if (k->type != MSGPACK_OBJECT_STR) {
            sl_kv_free(kv, i, 1);
            return sl_err_set(e, 400, "field '%s' keys must be strings, got %s", key,
                              sl_msg_type_name(k));
        }
        snprintf(what, sizeof(what), "field '%s' key", key);
        kv[i].k = dup_str(k, what, e);
        if (kv[i].k == NULL) {
            sl_kv_free(kv, i, 1);
            return -1;
        }
        if (v->type != MSGPACK_OBJECT_STR) {
            sl_err_set(e, 400, "field '%s' value for '%.64s' must be a string, got %s", key,
                       kv[i].k, sl_msg_type_name(v));
            sl_kv_free(kv, i + 1, 1);
            return -1;
        }
        snprintf(what, sizeof(what), "field '%s' value for '%.64s'", key, kv[i].k);
        kv[i].v = dup_str(v, what, e);
        if (kv[i].v == NULL) {
            sl_kv_free(kv, i + 1, 1);
            return -1;
        }
        for (uint32_t j = 0; j < i; j++) {
            if (strcmp(kv[j].k, kv[i].k) == 0) {
                sl_err_set(e, 400, "field '%s' has duplicate key '%.64s'", key, kv[i].k);
                sl_kv_free(kv, i + 1, 1);
                return -1;
            }
        }
    }
    *out = kv;
    *n = cnt;
    return 0;
}

/* ---- response builder ---- */

static int resp_write(void *data, const char *buf, size_t len)
{
    sl_resp *r = data;
    if (r->failed)
        return -1;
    if (msgpack_sbuffer_write(&r->sb, buf, len) != 0) {
        r->failed = 1;
        return -1;
    }
    return 0;
}

void sl_resp_init(sl_resp *r)
{
    msgpack_sbuffer_init(&r->sb);
    msgpack_packer_init(&r->pk, r, resp_write);
    r->failed = 0;
}

void sl_resp_destroy(sl_resp *r)
{
    msgpack_sbuffer_destroy(&r->sb);
    msgpack_sbuffer_init(&r->sb);
}

/* The packer's return values are ignored on purpose: resp_write records any
 * failure in r->failed, which the HTTP layer checks before sending. */
void sl_r_map(sl_resp *r, size_t n)
{
    (void)msgpack_pack_map(&r->pk, n);
}

void sl_r_arr(sl_resp *r, size_t n)
{
    (void)msgpack_pack_array(&r->pk, n);
}

void sl_r_strn(sl_resp *r, const char *s, size_t n)
{
    (void)msgpack_pack_str_with_body(&r->pk, s, n);
}

void sl_r_str(sl_resp *r, const char *s)
{
    if (s == NULL)
        sl_r_nil(r);
    else
        sl_r_strn(r, s, strlen(s));
}

void sl_r_bin(sl_resp *r, const void *p, size_t n)
{
    (void)msgpack_pack_bin_with_body(&r->pk, p, n);
}

void sl_r_int(sl_resp *r, int64_t v)
{
    (void)msgpack_pack_int64(&r->pk, v);
}

void sl_r_float(sl_resp *r, double v)
{
    (void)msgpack_pack_double(&r->pk, v);
}

void sl_r_bool(sl_resp *r, int v)
{
    if (v)
        (void)msgpack_pack_true(&r->pk);
    else
        (void)msgpack_pack_false(&r->pk);
}

void sl_r_nil(sl_resp *r)
{
    (void)msgpack_pack_nil(&r->pk);
}

void sl_r_kstr(sl_resp *r, const char *k, const char *v)
{
    sl_r_str(r, k);
    sl_r_str(r, v);
}

void sl_r_kint(sl_resp *r, const char *k, int64_t v)
{
    sl_r_str(r, k);
    sl_r_int(r, v);
}

void sl_r_kfloat(sl_resp *r, const char *k, double v)
{
    sl_r_str(r, k);
    sl_r_float(r, v);
}

void sl_r_kbool(sl_resp *r, const char *k, int v)
{
    sl_r_str(r, k);
    sl_r_bool(r, v);
}

/* msgpack-c's unpacker has a fixed stack of 32 nested containers (see
 * sl_mpcheck.h); no request needs more than 3. */
#define REQ_MAX_DEPTH 32

int sl_msg_decode_body(const char *data, size_t len, msgpack_unpacked *up, sl_err *e)
{
    sl_mp_limits lim;
    sl_mp_limits_default(&lim);
    lim.max_depth = REQ_MAX_DEPTH;
    char why[256] = "";
    /* msgpack-c trusts the counts in its input: nothing reaches it unchecked. */
    int rc = sl_mp_check(data, len, &lim, why, sizeof(why));
    if (rc == -EMSGSIZE)
        return sl_err_set(e, 413, "body too large: %s", why);
    if (rc < 0)
        return sl_err_set(e, 400, "malformed msgpack body: %s", why);
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack_next(up, data, len, &off);
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len)
        return sl_err_set(e, 400, "malformed msgpack body (msgpack-c: %d)", (int)ur);
    if (up->data.type != MSGPACK_OBJECT_MAP)
        return sl_err_set(e, 400, "request body must be a msgpack map, got %s",
                          sl_msg_type_name(&up->data));
    return 0;
}
