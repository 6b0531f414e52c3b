/* fn_profiles.c - runner-side presets for remote functions ("profiles"):
 * a named image, environment and options that a registration selects with
 * profile_ids / profile_names (`sandlot profile create NAME ...`). Values
 * the registration gives itself win; profiles apply in the order listed. */
#include <stdlib.h>
#include <string.h>

#include "sl_fn.h"
#include "sl_log.h"

typedef struct sl_profile {
    char id[SL_FN_ID_LEN + 1]; /* "pf-" + 16 hex */
    char *name;
    char *image;
    sl_kv *env;
    size_t nenv;
    char *opts; /* raw msgpack map, echoed */
    size_t opts_len;
    double created_at;
    struct sl_profile *next;
} sl_profile;

static sl_profile *g_profiles;

static sl_profile *find(const char *key)
{
    for (sl_profile *p = g_profiles; p != NULL; p = p->next) {
        if (strcmp(p->id, key) == 0 || strcmp(p->name, key) == 0)
            return p;
    }
    return NULL;
}

static void profile_free(sl_profile *p)
{
    free(p->name);
    free(p->image);
    sl_kv_free(p->env, p->nenv, 0);
    free(p->opts);
    free(p);
}

static void pack_profile(sl_resp *r, const sl_profile *p)
{
    sl_r_map(r, 6);
    sl_r_kstr(r, "profile_id", p->id);
    sl_r_kstr(r, "name", p->name);
    sl_r_kstr(r, "image", p->image);
    sl_r_str(r, "env");
    sl_r_map(r, p->nenv);
    for (size_t i = 0; i < p->nenv; i++)
        sl_r_kstr(r, p->env[i].k, p->env[i].v);
    sl_r_str(r, "options");
    if (p->opts != NULL) {
        if (msgpack_sbuffer_write(&r->sb, p->opts, p->opts_len) != 0)
            r->failed = 1;
    } else {
        sl_r_nil(r);
    }
    sl_r_kfloat(r, "created_at", p->created_at);
}

static int pack_raw(const msgpack_object *o, char **out, size_t *len, sl_err *e)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    if (msgpack_pack_object(&pk, *o) != 0) {
        msgpack_sbuffer_destroy(&sb);
        return sl_err_set(e, 500, "out of memory");
    }
    *len = sb.size; /* release() zeroes it */
    *out = msgpack_sbuffer_release(&sb);
    msgpack_sbuffer_destroy(&sb);
    return *out != NULL ? 0 : sl_err_set(e, 500, "out of memory");
}

void sl_h_profile_create(sl_req *r)
{
    sl_err e;
    sl_profile *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        sl_reply_error(r, 500, "out of memory");
        return;
    }
    const msgpack_object *opts = sl_msg_field(r->body, "options");
    int rc = sl_msg_str(r->body, "name", SL_REQ, &p->name, &e);
    if (rc == 0 && !sl_name_valid(p->name))
        rc = sl_err_set(&e, 400, "field 'name' must match [A-Za-z0-9][A-Za-z0-9_.-]{0,62}");
    if (rc == 0 && find(p->name) != NULL)
        rc = sl_err_set(&e, 409, "profile '%.64s' already exists", p->name);
    if (rc == 0)
        rc = sl_msg_str(r->body, "image", 0, &p->image, &e);
    if (rc == 0)
        rc = sl_msg_kvmap(r->body, "env", &p->env, &p->nenv, &e);
    for (size_t i = 0; rc == 0 && i < p->nenv; i++) {
        if (p->env[i].k[0] == '\0' || strchr(p->env[i].k, '=') != NULL)
            rc = sl_err_set(&e, 400, "field 'env': bad variable name '%.64s'", p->env[i].k);
    }
    if (rc == 0 && opts != NULL && opts->type != MSGPACK_OBJECT_NIL) {
        if (opts->type != MSGPACK_OBJECT_MAP)
            rc = sl_err_set(&e, 400, "field 'options' must be a map, got %s",
                            sl_msg_type_name(opts));
        else
            rc = pack_raw(opts, &p->opts, &p->opts_len, &e);
    }
    if (rc == 0) {
        memcpy(p->id, "pf-", 3);
        if (sl_random_hex(p->id + 3, 16) < 0)
            rc = sl_err_set(&e, 500, "getrandom failed");
    }
    if (rc < 0) {
        profile_free(p);
        sl_reply_err(r, &e);
        return;
    }
    p->created_at = sl_now();
    p->next = g_profiles;
    g_profiles = p;
    sl_info("profile %s (%s) created", p->id, p->name);
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 1);
    sl_r_str(&resp, "profile");
    pack_profile(&resp, p);
    sl_reply(r, 201, &resp);
}

void sl_h_profile_list(sl_req *r)
{
    size_t n = 0;
    for (sl_profile *p = g_profiles; p != NULL; p = p->next)
        n++;
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 1);
    sl_r_str(&resp, "profiles");
    sl_r_arr(&resp, n);
    for (sl_profile *p = g_profiles; p != NULL; p = p->next)
        pack_profile(&resp, p);
    sl_reply(r, 200, &resp);
}

void sl_h_profile_delete(sl_req *r)
{
    sl_profile **pp = &g_profiles;
    while (*pp != NULL && (r->p[0] == NULL ||
                           (strcmp((*pp)->name, r->p[0]) != 0 && strcmp((*pp)->id, r->p[0]) != 0)))
        pp = &(*pp)->next;
    if (*pp == NULL) {
        sl_reply_error(r, 404, "profile '%.64s' not found", r->p[0] != NULL ? r->p[0] : "");
        return;
    }
    sl_profile *p = *pp;
    *pp = p->next;
    profile_free(p);
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 0);
    sl_reply(r, 200, &resp);
}

/* Add k=v to the function's env unless it sets k itself. */
static int env_default(sl_fn *f, const sl_kv *kv, sl_err *e)
{
    for (size_t i = 0; i < f->nenv; i++) {
        if (strcmp(f->env[i].k, kv->k) == 0)
            return 0;
    }
    sl_kv *n = realloc(f->env, (f->nenv + 1) * sizeof(*n));
    if (n == NULL)
        return sl_err_set(e, 500, "out of memory");
    f->env = n;
    f->env[f->nenv].k = strdup(kv->k);
    f->env[f->nenv].v = strdup(kv->v);
    if (f->env[f->nenv].k == NULL || f->env[f->nenv].v == NULL) {
        free(f->env[f->nenv].k);
        free(f->env[f->nenv].v);
        return sl_err_set(e, 500, "out of memory");
    }
    f->nenv++;
    return 0;
}

static int apply_list(sl_fn *f, const msgpack_object *body, const char *field, int image_given,
                      sl_err *e)
{
    char **keys = NULL;
    size_t n = 0;
    if (sl_msg_strv(body, field, 0, &keys, &n, e) < 0)
        return -1;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        sl_profile *p = find(keys[i]);
        if (p == NULL) {
            rc = sl_err_set(e, 404,
                            "field '%s': profile '%.64s' not found (create it with "
                            "`sandlot profile create NAME ...`)",
                            field, keys[i]);
            break;
        }
        if (!image_given && f->image == NULL && p->image != NULL &&
            (f->image = strdup(p->image)) == NULL)
            rc = sl_err_set(e, 500, "out of memory");
        for (size_t k = 0; k < p->nenv && rc == 0; k++)
            rc = env_default(f, &p->env[k], e);
    }
    sl_strv_free(keys, n);
    return rc;
}

int sl_fn_apply_profiles(sl_fn *f, const msgpack_object *body, sl_err *e)
{
    int image_given = f->image != NULL;
    if (apply_list(f, body, "profile_ids", image_given, e) < 0 ||
        apply_list(f, body, "profile_names", image_given, e) < 0)
        return -1;
    return 0;
}

void sl_fn_profiles_shutdown(void)
{
    while (g_profiles != NULL) {
        sl_profile *p = g_profiles;
        g_profiles = p->next;
        profile_free(p);
    }
}
