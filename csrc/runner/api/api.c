/* api.c - the route table of the runner API (docs/protocol.md section 1)
 * and the health endpoint. */
#include <string.h>
#include <unistd.h>

#include "sl_cgroup.h"
#include "sl_common.h"
#include "sl_fn.h"
#include "sl_runner.h"
#include "sl_oci.h"
#include "sl_snap.h"

static void h_health(sl_req *r);

typedef struct route {
    enum evhttp_cmd_type method;
    const char *pattern; /* '*' matches one path segment */
    sl_handler fn;
} route;

static const route routes[] = {
    {EVHTTP_REQ_GET, "/v1/health", h_health},
    {EVHTTP_REQ_POST, "/v1/sandboxes", sl_h_create},
    {EVHTTP_REQ_GET, "/v1/sandboxes", sl_h_list},
    {EVHTTP_REQ_GET, "/v1/sandboxes/*", sl_h_get},
    {EVHTTP_REQ_POST, "/v1/sandboxes/*/wait", sl_h_wait},
    {EVHTTP_REQ_POST, "/v1/sandboxes/*/terminate", sl_h_terminate},
    {EVHTTP_REQ_POST, "/v1/sandboxes/*/exec", sl_h_exec},
    {EVHTTP_REQ_GET, "/v1/sandboxes/*/procs", sl_h_procs},
    {EVHTTP_REQ_GET, "/v1/sandboxes/*/procs/*", sl_h_proc},
    {EVHTTP_REQ_POST, "/v1/sandboxes/*/procs/*/wait", sl_h_proc_wait},
    {EVHTTP_REQ_POST, "/v1/sandboxes/*/procs/*/output", sl_h_output},
    {EVHTTP_REQ_POST, "/v1/sandboxes/*/procs/*/stdin", sl_h_stdin},
    {EVHTTP_REQ_POST, "/v1/sandboxes/*/procs/*/signal", sl_h_signal},
    {EVHTTP_REQ_POST, "/v1/sandboxes/*/files/read", sl_h_file_read},
    {EVHTTP_REQ_POST, "/v1/sandboxes/*/files/write", sl_h_file_write},
    {EVHTTP_REQ_GET, "/v1/sandboxes/*/tunnels", sl_h_tunnels},
    {EVHTTP_REQ_GET, "/v1/images", sl_h_images},
    {EVHTTP_REQ_POST, "/v1/images", sl_h_image_add},
    {EVHTTP_REQ_POST, "/v1/images/pull", sl_h_image_pull},
    {EVHTTP_REQ_GET, "/v1/images/pulls/*", sl_h_image_pull_get},
    {EVHTTP_REQ_GET, "/v1/images/pulled", sl_h_images_pulled},
    {EVHTTP_REQ_POST, "/v1/images/*/delete", sl_h_image_delete},
    {EVHTTP_REQ_GET, "/v1/volumes", sl_h_volumes},
    {EVHTTP_REQ_POST, "/v1/volumes", sl_h_volume_add},
    {EVHTTP_REQ_POST, "/v1/volumes/*/delete", sl_h_volume_delete},
    /* remote functions (fn_*.c, docs/protocol.md section 4) */
    {EVHTTP_REQ_POST, "/v1/functions", sl_h_fn_create},
    {EVHTTP_REQ_GET, "/v1/functions", sl_h_fn_list},
    {EVHTTP_REQ_GET, "/v1/functions/*", sl_h_fn_get},
    {EVHTTP_REQ_POST, "/v1/functions/*/delete", sl_h_fn_delete},
    {EVHTTP_REQ_POST, "/v1/functions/*/call", sl_h_fn_call},
    {EVHTTP_REQ_POST, "/v1/functions/*/calls", sl_h_fn_calls},
    {EVHTTP_REQ_POST, "/v1/functions/*/lease", sl_h_fn_lease},
    {EVHTTP_REQ_POST, "/v1/functions/*/lease/cancel", sl_h_fn_lease_cancel},
    {EVHTTP_REQ_POST, "/v1/calls/cancel", sl_h_calls_cancel},
    {EVHTTP_REQ_POST, "/v1/calls/*/wait", sl_h_call_wait},
    {EVHTTP_REQ_POST, "/v1/channels/*/wait", sl_h_chan_wait},
    {EVHTTP_REQ_POST, "/v1/profiles", sl_h_profile_create},
    {EVHTTP_REQ_GET, "/v1/profiles", sl_h_profile_list},
    {EVHTTP_REQ_POST, "/v1/profiles/*/delete", sl_h_profile_delete},
    {EVHTTP_REQ_POST, "/v1/sandboxes/*/snapshot", sl_h_snapshot},
    {EVHTTP_REQ_GET, "/v1/snapshots", sl_h_snapshots},
    {EVHTTP_REQ_GET, "/v1/snapshots/*", sl_h_snapshot_get},
    {EVHTTP_REQ_POST, "/v1/snapshots/*/delete", sl_h_snapshot_delete},
    {EVHTTP_REQ_POST, "/v1/snapshots/*/register", sl_h_snapshot_register},
};

#define MAX_SEGS 8
#define SEG_MAX 128

/* Split "/a/b/c" into segments. Returns the count, or -1 for a path we will
 * never route (empty segments, too long). */
static int split(const char *path, char segs[MAX_SEGS][SEG_MAX])
{
    int n = 0;
    const char *s = path;
    if (*s != '/')
        return -1;
    while (*s == '/') {
        s++;
        const char *e = strchr(s, '/');
        size_t len = e != NULL ? (size_t)(e - s) : strlen(s);
        if (len == 0 || len >= SEG_MAX || n == MAX_SEGS)
            return -1;
        memcpy(segs[n], s, len);
        segs[n][len] = '\0';
        n++;
        s += len;
    }
    return n;
}

/* Does the pattern match; fills params with pointers into segs. */
static int match(const char *pattern, char segs[MAX_SEGS][SEG_MAX], int nseg, const char **params)
{
    char psegs[MAX_SEGS][SEG_MAX];
    int np = split(pattern, psegs);
    if (np != nseg)
        return 0;
    int k = 0;
    for (int i = 0; i < np; i++) {
        if (strcmp(psegs[i], "*") == 0) {
            if (k < 2)
                params[k++] = segs[i];
        } else if (strcmp(psegs[i], segs[i]) != 0) {
            return 0;
        }
    }
    return 1;
}

void sl_api_dispatch(sl_req *r, enum evhttp_cmd_type method, const char *path)
{
    char segs[MAX_SEGS][SEG_MAX];
    int nseg = split(path, segs);
    int path_known = 0;
    if (nseg > 0) {
        for (size_t i = 0; i < SL_ARRAY_LEN(routes); i++) {
            const char *params[2] = {NULL, NULL};
            if (!match(routes[i].pattern, segs, nseg, params))
                continue;
            if (routes[i].method != method) {
                path_known = 1;
                continue;
            }
            r->p[0] = params[0];
            r->p[1] = params[1];
            routes[i].fn(r);
            return;
        }
    }
    if (path_known)
        sl_reply_error(r, 405, "%s is not allowed on %.200s",
                       method == EVHTTP_REQ_GET ? "GET" : "POST", path);
    else
        sl_reply_error(r, 404, "no such route: %.200s", path);
}

static void h_health(sl_req *r)
{
    sl_runner *rt = r->rt;
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 13);
    sl_r_kbool(&resp, "ok", 1);
    sl_r_kstr(&resp, "version", SL_VERSION);
    sl_r_kstr(&resp, "runner_id", rt->runner_id);
    sl_r_kint(&resp, "pid", (int64_t)getpid());
    sl_r_kstr(&resp, "cgroup", sl_cgroup_mode_name(sl_cgroup_detect()));
    sl_r_kint(&resp, "sandboxes", (int64_t)rt->nvisible);
    sl_r_kfloat(&resp, "uptime", sl_mono() - rt->started_at);
    /* Rootless: sandboxes run in a user namespace, uid 0 inside = this uid. */
    sl_r_kbool(&resp, "rootless", rt->userns);
    sl_r_kint(&resp, "uid", (int64_t)geteuid());
    sl_r_str(&resp, "limits"); /* which resources limits this host enforces */
    sl_limits_pack_health(&resp, rt);
    sl_r_str(&resp, "network"); /* nftables table and address pool (net.c) */
    sl_net_pack_health(&resp, rt);
    sl_r_str(&resp, "pool"); /* pre-set-up sandboxes (pool.c) */
    sl_pool_pack_health(&resp, rt);
    sl_r_str(&resp, "microvm"); /* can isolation "microvm" run here, and how (vm_box.c) */
    sl_vm_pack_health(&resp, rt);
    sl_reply(r, 200, &resp);
}
