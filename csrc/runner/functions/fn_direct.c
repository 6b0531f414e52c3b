/* fn_direct.c - direct sockets: a client on the runner's host calls a
 * leased warm worker over a unix socket, without an HTTP request and the
 * runner's relay per call (docs/architecture.md, "Direct calls").
 *
 * Each function gets a dir <state>/direct/<function id> (0700, the runner's
 * user: the same trust boundary as the runner's own socket). A client binds
 * a listening socket there, then POST /v1/functions/{id}/lease {"socket":
 * name}: the runner picks an idle worker and sends it a lease frame
 * (fn_pool.c), the worker connects to the socket through its read-only bind
 * of the dir and serves calls on that connection until it is closed. The
 * runner keeps the worker in its pool throughout: the sandbox's limits
 * apply, deleting the function or POST .../lease/cancel kills it, and its
 * death is seen as ever. Only plain pooled functions lease (no
 * fresh_sandbox, no max_timeout_seconds: those need the runner per call).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sl_fn.h"
#include "sl_sandbox.h" /* sl_rm_rf */
#include "sl_log.h"
#include "sl_msg.h"

void sl_fn_direct_init(sl_runner *rt, sl_fn *f)
{
    if (rt->state_dir == NULL)
        return;
    char top[4096], dir[4096];
    int n = snprintf(top, sizeof(top), "%s/direct", rt->state_dir);
    int m = snprintf(dir, sizeof(dir), "%s/direct/%s", rt->state_dir, f->id);
    if (n < 0 || m < 0 || (size_t)m >= sizeof(dir))
        return;
    /* A registration kept across a restart (fn_persist.c) may find the dir
     * its earlier runner left, with stale sockets: start it afresh. */
    int rc = sl_rm_rf(dir);
    if (rc < 0)
        sl_warn("function %s: cannot clear %s: %s", f->id, dir, strerror(-rc));
    if ((mkdir(top, 0700) < 0 && errno != EEXIST) || mkdir(dir, 0700) < 0) {
        sl_warn("function %s: no direct socket dir (%s: %s); calls go through the runner", f->id,
                dir, strerror(errno));
        return;
    }
    f->direct_dir = strdup(dir);
    if (f->direct_dir == NULL)
        (void)rmdir(dir);
}

void sl_fn_direct_free(sl_fn *f)
{
    if (f->direct_dir == NULL)
        return;
    /* Sockets of clients that died before unlinking theirs. */
    if (sl_rm_rf(f->direct_dir) < 0)
        sl_warn("function %s: cannot remove %s: %s", f->id, f->direct_dir, strerror(errno));
    free(f->direct_dir);
    f->direct_dir = NULL;
}

static sl_fn *req_fn(sl_req *r)
{
    sl_fn *f = r->p[0] != NULL ? sl_fn_find(r->p[0]) : NULL;
    if (f == NULL || f->deleted)
        sl_reply_error(r, 404, "function '%.64s' not found", r->p[0] != NULL ? r->p[0] : "");
    return f != NULL && !f->deleted ? f : NULL;
}

static int name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63 || s[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return 0;
    }
    return 1;
}

/* POST /v1/functions/{id}/lease {"socket": name} -> {"lease": {"worker": id}};
 * 409 when no worker is idle (the client keeps using HTTP calls). */
void sl_h_fn_lease(sl_req *r)
{
    sl_fn *f = req_fn(r);
    if (f == NULL)
        return;
    sl_err e;
    char *name = NULL;
    if (sl_msg_str(r->body, "socket", SL_REQ, &name, &e) < 0) {
        sl_reply_err(r, &e);
        return;
    }
    if (!name_valid(name)) {
        sl_reply_error(r, 400, "field 'socket' must match [A-Za-z0-9_.-]{1,63}, got '%.64s'", name);
        free(name);
        return;
    }
    char box_id[SL_ID_LEN + 1];
    int rc = sl_fn_lease(f, name, box_id, &e);
    free(name);
    if (rc < 0) {
        sl_reply_err(r, &e);
        return;
    }
    sl_fn_touch(f);
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 1);
    sl_r_str(&resp, "lease");
    sl_r_map(&resp, 2);
    sl_r_kstr(&resp, "worker", box_id);
    sl_r_kstr(&resp, "dir", f->direct_dir);
    sl_reply(r, 200, &resp);
}

/* POST /v1/functions/{id}/lease/cancel {"worker": id}: a direct call was
 * cancelled; its worker is killed (and replaced as the pool needs). */
void sl_h_fn_lease_cancel(sl_req *r)
{
    sl_fn *f = req_fn(r);
    if (f == NULL)
        return;
    sl_err e;
    char *id = NULL;
    if (sl_msg_str(r->body, "worker", SL_REQ, &id, &e) < 0) {
        sl_reply_err(r, &e);
        return;
    }
    int killed = sl_fn_lease_kill(f, id);
    free(id);
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 1);
    sl_r_kbool(&resp, "killed", killed);
    sl_reply(r, 200, &resp);
}
