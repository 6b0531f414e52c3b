/* sl_msg.h - typed access to decoded request maps and a response builder.
 *
 * Getters take the request's top-level map, copy what they return (the
 * msgpack zone dies with the request) and, on a type or value problem, fill an
 * sl_err with a message that names the field and what was wrong, e.g.
 * "field 'timeout' must be a number, got str".
 */
#ifndef SL_MSG_H
#define SL_MSG_H

#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

/* An API error: HTTP status, protocol code ("bad_request", ...) and message. */
typedef struct sl_err {
    int status;
    const char *code;
    char msg[512];
} sl_err;

/* Fill e and return -1 (so handlers can `return sl_err_set(...)`). */
int sl_err_set(sl_err *e, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The protocol code for an HTTP status (400 -> "bad_request"). */
const char *sl_err_code(int status);

/* A key/value string pair (env, secrets, volumes). */
typedef struct sl_kv {
    char *k;
    char *v;
} sl_kv;

void sl_kv_free(sl_kv *kv, size_t n, int wipe);
void sl_strv_free(char **v, size_t n);
/* Copy a string vector (NULL-terminated result, n entries). NULL on ENOMEM. */
char **sl_strv_dup(char *const *v, size_t n);

const char *sl_msg_type_name(const msgpack_object *o);
/* Look up key in a map; NULL if absent. */
const msgpack_object *sl_msg_field(const msgpack_object *map, const char *key);

/* key of a map the runner stored as raw msgpack (a function's options):
 * *out NULL when raw is empty, not a map or lacks key. up is initialised
 * here; the caller destroys it whatever this returns. */
int sl_msg_stored_field(const char *raw, size_t len, const char *key, msgpack_unpacked *up,
                        const msgpack_object **out, sl_err *e);

/* A request body: checked against the limits of sl_mpcheck.h (size
 * SL_MAX_BODY, depth 32, counts no larger than the bytes left) before
 * msgpack-c decodes it into up (initialised by the caller), and it must be a
 * map. 0, or -1 with e set (413 too large, 400 malformed or not a map). */
int sl_msg_decode_body(const char *data, size_t len, msgpack_unpacked *up, sl_err *e);

/* Flags for the getters. */
#define SL_REQ 1 /* field must be present and not nil */

/* String without NUL bytes, malloc'd into *out; absent/nil -> *out = NULL. */
int sl_msg_str(const msgpack_object *map, const char *key, int flags, char **out, sl_err *e);
/* int or float; absent -> dflt; nil -> nil_val. */
int sl_msg_num(const msgpack_object *map, const char *key, double dflt, double nil_val, double *out,
               sl_err *e);
/* Integer in [lo, hi]; absent/nil -> dflt. */
int sl_msg_int(const msgpack_object *map, const char *key, int64_t lo, int64_t hi, int64_t dflt,
               int64_t *out, sl_err *e);
int sl_msg_bool(const msgpack_object *map, const char *key, int dflt, int *out, sl_err *e);
/* bin (or str) bytes, pointing into the request; absent/nil -> empty. */
int sl_msg_bytes(const msgpack_object *map, const char *key, int flags, const char **ptr,
                 size_t *len, sl_err *e);
/* Array of strings; absent/nil -> *out = NULL, *n = 0 (error if SL_REQ).
 * A present array must not be empty. Result is NULL-terminated. */
int sl_msg_strv(const msgpack_object *map, const char *key, int flags, char ***out, size_t *n,
                sl_err *e);
/* Map of str -> str; absent/nil -> empty. */
int sl_msg_kvmap(const msgpack_object *map, const char *key, sl_kv **out, size_t *n, sl_err *e);

/* Response builder: a packer writing into an sbuffer that remembers whether
 * any write failed, so packing code need not check every call. */
typedef struct sl_resp {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    int failed;
} sl_resp;

void sl_resp_init(sl_resp *r);
void sl_resp_destroy(sl_resp *r);
void sl_r_map(sl_resp *r, size_t n);
void sl_r_arr(sl_resp *r, size_t n);
void sl_r_str(sl_resp *r, const char *s);
void sl_r_strn(sl_resp *r, const char *s, size_t n);
void sl_r_bin(sl_resp *r, const void *p, size_t n);
void sl_r_int(sl_resp *r, int64_t v);
void sl_r_float(sl_resp *r, double v);
void sl_r_bool(sl_resp *r, int v);
void sl_r_nil(sl_resp *r);
/* Convenience: str key followed by a value. */
void sl_r_kstr(sl_resp *r, const char *k, const char *v); /* v NULL -> nil */
void sl_r_kint(sl_resp *r, const char *k, int64_t v);
void sl_r_kfloat(sl_resp *r, const char *k, double v);
void sl_r_kbool(sl_resp *r, const char *k, int v);

#endif
