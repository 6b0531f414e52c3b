/* fn_registry.c - registered remote functions: registration, listing,
 * deletion, the periodic sweep (idle workers, abandoned and unclaimed calls,
 * forgotten functions) and shutdown. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sl_fn.h"
#include "sl_log.h"

#define SWEEP_EVERY 0.25 /* seconds */
#define SPEC_MAX ((size_t)64 << 20)

static struct {
    sl_runner *rt;
    sl_fn *fns;
    struct event *sweep;
} g;

sl_runner *sl_fn_rt(void)
{
    return g.rt;
}

sl_fn *sl_fn_first(void)
{
    return g.fns;
}

sl_fn *sl_fn_find(const char *id)
{
    for (sl_fn *f = g.fns; f != NULL; f = f->next) {
        if (!f->deleted && strcmp(f->id, id) == 0)
            return f;
    }
    return NULL;
}

void sl_fn_touch(sl_fn *f)
{
    f->last_used = sl_now();
}

void sl_fn_free(sl_fn *f)
{
    sl_fn_drop_workers(f);
    sl_calls_free_fn(f);
    sl_fn_direct_free(f);
    free(f->name);
    free(f->spec);
    sl_strv_free(f->cmd, f->ncmd);
    free(f->image);
    free(f->workdir);
    sl_kv_free(f->env, f->nenv, 0);
    sl_kv_free(f->annotations, f->nannotations, 0);
    sl_kv_free(f->mounts, f->nmounts, 0);
    free(f->opts);
    if (f->s3 != NULL)
        explicit_bzero(f->s3, f->s3_len);
    free(f->s3);
    free(f);
}

static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    double now = sl_now();
    sl_fn **pp = &g.fns;
    while (*pp != NULL) {
        sl_fn *f = *pp;
        if (!f->deleted) {
            sl_calls_sweep(f, now);
            sl_fn_reap_idle(f, now);
            /* Forgotten: nothing running, nothing to deliver, unused for the
             * retention period. A client that comes back re-registers. */
            if (f->nworkers == 0 && f->queue.n == 0 && f->finished.n == 0 &&
                now - f->last_used > g.rt->retention) {
                sl_info("function %s (%s) forgotten after %.0f s unused", f->id,
                        f->name != NULL ? f->name : "?", now - f->last_used);
                f->deleted = 1;
                sl_fn_persist_forget(g.rt, f);
            }
        }
        if (f->deleted && f->nworkers == 0 && f->queue.n == 0) {
            *pp = f->next;
            sl_fn_free(f);
            continue;
        }
        pp = &f->next;
    }
    sl_chans_sweep(now);
}

static int ensure_sweep(sl_runner *rt)
{
    g.rt = rt;
    if (g.sweep != NULL)
        return 0;
    g.sweep = event_new(rt->base, -1, EV_PERSIST, on_sweep, NULL);
    struct timeval tv = sl_tv(SWEEP_EVERY);
    if (g.sweep == NULL || event_add(g.sweep, &tv) != 0) {
        if (g.sweep != NULL)
            event_free(g.sweep);
        g.sweep = NULL;
        return -1;
    }
    return 0;
}

static void pack_kv(sl_resp *r, const sl_kv *kv, size_t n)
{
    sl_r_map(r, n);
    for (size_t i = 0; i < n; i++)
        sl_r_kstr(r, kv[i].k, kv[i].v);
}

static void pack_fn(sl_resp *r, const sl_fn *f)
{
    sl_r_map(r, 19);
    sl_r_kstr(r, "function_id", f->id);
    sl_r_kstr(r, "name", f->name);
    sl_r_kstr(r, "image", f->image != NULL ? f->image : "host");
    sl_r_str(r, "cmd");
    sl_r_arr(r, f->ncmd);
    for (size_t i = 0; i < f->ncmd; i++)
        sl_r_str(r, f->cmd[i]);
    sl_r_str(r, "env");
    pack_kv(r, f->env, f->nenv);
    sl_r_str(r, "annotations");
    pack_kv(r, f->annotations, f->nannotations);
    sl_r_str(r, "options");
    if (f->opts != NULL) {
        /* Stored pre-packed: the packer writes straight into this sbuffer. */
        if (msgpack_sbuffer_write(&r->sb, f->opts, f->opts_len) != 0)
            r->failed = 1;
    } else {
        sl_r_nil(r);
    }
    sl_r_kint(r, "max_workers", (int64_t)f->max_workers);
    sl_r_kint(r, "min_workers", (int64_t)f->min_workers);
    sl_r_kint(r, "pipeline", (int64_t)f->pipeline);
    sl_r_kbool(r, "fresh", f->fresh);
    sl_r_str(r, "call_timeout");
    if (f->call_timeout > 0)
        sl_r_float(r, f->call_timeout);
    else
        sl_r_nil(r);
    sl_r_kfloat(r, "idle_timeout", f->idle_timeout);
    sl_r_str(r, "workers");
    sl_fn_pack_workers(r, f);
    sl_r_kint(r, "queued", (int64_t)f->queue.n);
    sl_r_kint(r, "calls", (int64_t)f->ncalls);
    sl_r_kint(r, "ok", (int64_t)f->nok);
    sl_r_kint(r, "errors", (int64_t)f->nerr);
    sl_r_str(r, "direct_dir");
    if (f->direct_dir != NULL && !f->fresh && f->call_timeout <= 0)
        sl_r_str(r, f->direct_dir);
    else
        sl_r_nil(r);
}

static void reply_fn(sl_req *r, int status, const sl_fn *f)
{
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 1);
    sl_r_str(&resp, "function");
    pack_fn(&resp, f);
    sl_reply(r, status, &resp);
}

static int under(const char *path, const char *dir)
{
    size_t n = dir != NULL ? strlen(dir) : 0;
    while (n > 1 && dir[n - 1] == '/')
        n--;
    return n > 0 && strncmp(path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

/* A host path the workers see read-only (the client's interpreter and import
 * path when they live under a directory the sandbox masks, e.g. /root or
 * /tmp, and the function's mounted_files). Never the runner's own state nor host secrets:
 * the masks exist to hide those. */
static int check_mount(sl_runner *rt, const char *p, sl_err *e)
{
    static const char *const refused[] = {"/etc", "/proc", "/sys", "/dev", "/boot"};
    if (!sl_path_abs_clean(p) || strspn(p, "/") == strlen(p))
        return sl_err_set(e, 400, "field 'mounts': '%.200s' must be an absolute path, not '/'", p);
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        if (under(p, refused[i]))
            return sl_err_set(e, 400, "field 'mounts': '%.200s' may not be mounted", p);
    }
    if (under(p, rt->state_dir) || under(p, rt->socket_dir) || under(p, rt->log_dir) ||
        under(rt->state_dir, p) || under(rt->socket_dir, p) ||
        (rt->log_dir != NULL && under(rt->log_dir, p)))
        return sl_err_set(e, 400, "field 'mounts': '%.200s' would expose the runner's own state",
                          p);
    struct stat st;
    if (stat(p, &st) < 0)
        return sl_err_set(e, 400, "field 'mounts': '%.200s': %s", p, strerror(errno));
    return 0;
}

int sl_fn_parse(sl_runner *rt, sl_fn *f, const msgpack_object *body, sl_err *e)
{
    const char *spec;
    size_t spec_len;
    if (sl_msg_str(body, "name", 0, &f->name, e) < 0 ||
        sl_msg_bytes(body, "spec", SL_REQ, &spec, &spec_len, e) < 0 ||
        sl_msg_strv(body, "cmd", SL_REQ, &f->cmd, &f->ncmd, e) < 0 ||
        sl_msg_str(body, "image", 0, &f->image, e) < 0 ||
        sl_msg_str(body, "workdir", 0, &f->workdir, e) < 0 ||
        sl_msg_kvmap(body, "env", &f->env, &f->nenv, e) < 0 ||
        sl_msg_kvmap(body, "annotations", &f->annotations, &f->nannotations, e) < 0)
        return -1;
    if (spec_len > SPEC_MAX)
        return sl_err_set(e, 413, "field 'spec' is larger than %zu bytes", SPEC_MAX);
    if ((f->spec = malloc(spec_len > 0 ? spec_len : 1)) == NULL)
        return sl_err_set(e, 500, "out of memory");
    memcpy(f->spec, spec, spec_len);
    f->spec_len = spec_len;
    if (f->cmd[0][0] == '\0')
        return sl_err_set(e, 400, "field 'cmd': the program name must not be empty");
    if (f->workdir != NULL && f->workdir[0] != '/')
        return sl_err_set(e, 400, "field 'workdir' must be an absolute path");
    for (size_t i = 0; i < f->nenv; i++) {
        if (f->env[i].k[0] == '\0' || strchr(f->env[i].k, '=') != NULL)
            return sl_err_set(e, 400, "field 'env': bad variable name '%.64s'", f->env[i].k);
    }
    if (sl_msg_kvmap(body, "mounts", &f->mounts, &f->nmounts, e) < 0)
        return -1;
    for (size_t i = 0; i < f->nmounts; i++) {
        const char *in = f->mounts[i].k;
        if (!sl_path_abs_clean(in) || strspn(in, "/") == strlen(in))
            return sl_err_set(e, 400,
                              "field 'mounts': mount path '%.200s' must be absolute, not '/'", in);
        if (check_mount(rt, f->mounts[i].v, e) < 0)
            return -1;
    }
    if (sl_fn_apply_profiles(f, body, e) < 0)
        return -1;
    {
        /* Every worker starts with this command and environment: one that
         * cannot fit a spawn is refused now, not at every worker start. */
        sl_box probe;
        memset(&probe, 0, sizeof(probe));
        probe.env = f->env;
        probe.nenv = f->nenv;
        if (sl_spawn_fits(&probe, f->workdir, f->cmd, e) < 0)
            return -1;
    }
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int64_t dflt_workers = ncpu < 1 ? 1 : ncpu > 4 ? 4 : ncpu;
    int64_t maxw, minw, pipe;
    if (sl_msg_num(body, "call_timeout", 0, 0, &f->call_timeout, e) < 0 ||
        sl_msg_num(body, "idle_timeout", SL_FN_IDLE, SL_FN_IDLE, &f->idle_timeout, e) < 0 ||
        sl_msg_int(body, "max_workers", 1, SL_FN_MAX_WORKERS, dflt_workers, &maxw, e) < 0 ||
        sl_msg_int(body, "min_workers", 0, SL_FN_MAX_WORKERS, 0, &minw, e) < 0 ||
        sl_msg_int(body, "pipeline", 1, 64, SL_FN_PIPELINE, &pipe, e) < 0 ||
        sl_msg_bool(body, "fresh", 0, &f->fresh, e) < 0)
        return -1;
    if (!(f->call_timeout >= 0) || f->call_timeout > SL_TIMEOUT_MAX)
        return sl_err_set(e, 400, "field 'call_timeout' must be in [0, %.0f] seconds",
                          SL_TIMEOUT_MAX);
    if (!(f->idle_timeout > 0) || f->idle_timeout > SL_TIMEOUT_MAX)
        return sl_err_set(e, 400, "field 'idle_timeout' must be in (0, %.0f] seconds",
                          SL_TIMEOUT_MAX);
    if (minw > maxw)
        return sl_err_set(e, 400, "field 'min_workers' (%lld) exceeds 'max_workers' (%lld)",
                          (long long)minw, (long long)maxw);
    f->max_workers = (size_t)maxw;
    f->min_workers = (size_t)minw;
    f->pipeline = (size_t)pipe;
    /* runner_ids: which runners may run the calls. There is one runner per
     * client connection here, so the list must name this one. */
    char **ids = NULL;
    size_t nids = 0;
    if (sl_msg_strv(body, "runner_ids", 0, &ids, &nids, e) < 0)
        return -1;
    int mine = nids == 0;
    for (size_t i = 0; i < nids; i++)
        mine |= strcmp(ids[i], rt->runner_id) == 0;
    if (!mine) {
        sl_err_set(e, 400,
                   "field 'runner_ids' %s'%.64s'%s does not include this runner "
                   "(runner_id '%s')",
                   nids > 1 ? "[" : "", ids[0], nids > 1 ? ", ...]" : "", rt->runner_id);
        sl_strv_free(ids, nids);
        return -1;
    }
    sl_strv_free(ids, nids);
    const msgpack_object *opts = sl_msg_field(body, "options");
    if (opts != NULL && opts->type != MSGPACK_OBJECT_NIL) {
        if (opts->type != MSGPACK_OBJECT_MAP)
            return sl_err_set(e, 400, "field 'options' must be a map, got %s",
                              sl_msg_type_name(opts));
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        if (msgpack_pack_object(&pk, *opts) != 0) {
            msgpack_sbuffer_destroy(&sb);
            return sl_err_set(e, 500, "out of memory");
        }
        f->opts_len = sb.size; /* release() zeroes it */
        f->opts = msgpack_sbuffer_release(&sb);
        msgpack_sbuffer_destroy(&sb);
        if (f->opts == NULL)
            return sl_err_set(e, 500, "out of memory");
        /* Resources this runner cannot enforce (a rootless one without a
         * delegated cgroup) fail the registration, not every later call. */
        sl_box *probe = calloc(1, sizeof(*probe));
        if (probe == NULL)
            return sl_err_set(e, 500, "out of memory");
        probe->rt = rt; /* gpu: what this runner has */
        int rc = sl_limits_from_opts(probe, f->opts, f->opts_len, e);
        free(probe->gpu_type);
        free(probe);
        if (rc < 0)
            return -1;
    }
    /* S3 buckets every worker mounts (s3.c); kept apart from the echoed options. */
    return sl_s3_pack(body, &f->s3, &f->s3_len, e);
}

sl_fn *sl_fn_add(sl_runner *rt, const char *id, const msgpack_object *body, double created_at,
                 sl_err *e)
{
    if (ensure_sweep(rt) < 0) {
        sl_err_set(e, 500, "cannot start the function sweep timer (libevent)");
        return NULL;
    }
    sl_fn *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        sl_err_set(e, 500, "out of memory");
        return NULL;
    }
    if (id != NULL) {
        snprintf(f->id, sizeof(f->id), "%s", id);
    } else {
        memcpy(f->id, "fn-", 3);
        if (sl_random_hex(f->id + 3, 16) < 0) {
            free(f);
            sl_err_set(e, 500, "getrandom failed");
            return NULL;
        }
    }
    if (sl_fn_parse(rt, f, body, e) < 0) {
        sl_fn_free(f);
        return NULL;
    }
    f->created_at = created_at;
    f->last_used = sl_now();
    sl_fn_direct_init(rt, f);
    f->next = g.fns;
    g.fns = f;
    return f;
}

void sl_h_fn_create(sl_req *r)
{
    sl_err e;
    sl_fn *f = sl_fn_add(r->rt, NULL, r->body, sl_now(), &e);
    if (f == NULL) {
        sl_reply_err(r, &e);
        return;
    }
    /* Durable before it is acknowledged: a runner that restarts knows it. */
    if (sl_fn_persist_save(r->rt, f, r->body, &e) < 0) {
        f->deleted = 1; /* freed by the sweep */
        sl_reply_err(r, &e);
        return;
    }
    sl_info("function %s (%s) registered: up to %zu workers, image %s", f->id,
            f->name != NULL ? f->name : "?", f->max_workers, f->image != NULL ? f->image : "host");
    sl_fn_pump(f); /* starts min_workers */
    reply_fn(r, 201, f);
}

void sl_h_fn_list(sl_req *r)
{
    size_t n = 0;
    for (sl_fn *f = g.fns; f != NULL; f = f->next)
        n += !f->deleted;
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 1);
    sl_r_str(&resp, "functions");
    sl_r_arr(&resp, n);
    for (sl_fn *f = g.fns; f != NULL; f = f->next) {
        if (!f->deleted)
            pack_fn(&resp, f);
    }
    sl_reply(r, 200, &resp);
}

static sl_fn *req_fn(sl_req *r)
{
    sl_fn *f = r->p[0] != NULL ? sl_fn_find(r->p[0]) : NULL;
    if (f == NULL)
        sl_reply_error(r, 404, "function '%.64s' not found", r->p[0] != NULL ? r->p[0] : "");
    return f;
}

void sl_h_fn_get(sl_req *r)
{
    sl_fn *f = req_fn(r);
    if (f != NULL)
        reply_fn(r, 200, f);
}

void sl_h_fn_delete(sl_req *r)
{
    sl_fn *f = req_fn(r);
    if (f == NULL)
        return;
    f->deleted = 1; /* first: no pump may start workers while it goes */
    sl_fn_persist_forget(r->rt, f);
    sl_fn_retire_all(f);
    while (f->queue.head != NULL)
        sl_call_fail(f->queue.head, SL_CO_CANCELLED, "the function was deleted");
    sl_info("function %s deleted", f->id);
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 0);
    sl_reply(r, 200, &resp);
}

void sl_fn_shutdown(sl_runner *rt)
{
    (void)rt;
    while (g.fns != NULL) {
        sl_fn *f = g.fns;
        g.fns = f->next;
        /* In-flight calls are answered by sl_calls_shutdown below. */
        for (sl_worker *w = f->workers; w != NULL; w = w->next) {
            while (w->inflight.head != NULL) {
                sl_call *c = w->inflight.head;
                sl_clist_remove(c);
                sl_clist_push(&f->queue, c);
            }
        }
        sl_fn_drop_workers(f);
        while (f->queue.head != NULL)
            sl_call_fail(f->queue.head, SL_CO_EXITED,
                         "the runner exited while this call was running (it was stopped)");
        sl_fn_free(f);
    }
    sl_calls_shutdown();
    sl_fn_profiles_shutdown();
    if (g.sweep != NULL) {
        event_free(g.sweep);
        g.sweep = NULL;
    }
}
