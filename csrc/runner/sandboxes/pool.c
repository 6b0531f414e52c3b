/* pool.c - a few pre-set-up sandboxes ("shells") for default creates.
 *
 * Bubblewrap pays for namespaces, mounts and its exec on the critical path of
 * every start; a create with default options here need not. The runner keeps
 * --pool (default 2) sandboxes started exactly as such a create would start
 * them (start_box: image "host", the runner's masks, no limits), and hands
 * one over when a create asks for nothing else: the shell's id, dir, cgroup
 * and init become the new sandbox's. The pool is refilled from the event
 * loop after the reply, and a shell's own set-up (its root, init) runs in
 * its own process while the runner serves others (sl_sandbox_spawn_start;
 * READY is collected at hand-over by sl_sandbox_spawn_finish).
 *
 * A shell is as isolated and clean as a fresh sandbox because it *is* one
 * that nobody used yet: never reused, its own id (hostname, cgroup name) and
 * an empty writable layer; the request's env, secrets, workdir, command and
 * timeout are applied at exec time as for any sandbox. A request with any
 * option a shell was not started with (image, snapshot, volumes, S3,
 * resources, network) is started afresh instead.
 *
 * Read-only host mounts ("mounts") are the one option a shell may carry: the
 * Python client binds its own interpreter into every host-image sandbox
 * when it lives under a masked directory (a pyenv under /root), so most
 * creates of one client carry the same set. The pool keeps shells for one
 * mount set, the last one a default create asked for: a create with another
 * set starts afresh and makes its set the pool's (the old shells are
 * killed). At hand-over every mount source is checked to still be the very
 * file or directory (device and inode) the shell bound, else the shell is
 * dropped, so a host file replaced meanwhile is never shown stale.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "sl_log.h"
#include "sl_runner.h"

#define POOL_MAX 64
/* After a shell failed to start or died idle: wait before trying again, so
 * a host that cannot start sandboxes is not hammered by the pool. */
#define POOL_BACKOFF 1.0
/* A create with more read-only mounts than this is never pooled. */
#define POOL_MAX_MOUNTS 16

typedef struct sl_pool {
    sl_box *shells[POOL_MAX]; /* oldest first: the likeliest to be READY */
    size_t n;
    struct event *refill;
    sl_kv *mounts; /* the shells' read-only mounts: k = path inside, v = host path */
    size_t nmounts;
    struct stat *src;         /* device and inode of each mount source, when the set was taken */
    sl_box *dying;            /* killed shells (old mount set) until reaped, chained by next */
    unsigned long long taken; /* creates served by a shell */
} sl_pool;

size_t sl_pool_count(const sl_runner *rt)
{
    return rt->pool != NULL ? rt->pool->n : 0;
}

static void arm(sl_runner *rt, double delay)
{
    if (rt->pool == NULL || rt->shutting_down || rt->pool->n >= rt->pool_target)
        return;
    struct timeval tv = sl_tv(delay);
    if (evtimer_add(rt->pool->refill, &tv) != 0)
        sl_warn("pool: cannot arm the refill timer");
}

/* Start one shell per call, so requests are served between two. */
static void on_refill(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sl_runner *rt = arg;
    sl_pool *pl = rt->pool;
    if (rt->shutting_down || pl->n >= rt->pool_target || pl->n >= POOL_MAX)
        return;
    /* Shells do not take capacity from users (sl_h_create discounts them),
     * but the pool stops growing at the cap so a full runner stays full. */
    if (rt->nalive >= rt->max_sandboxes + pl->n) {
        arm(rt, POOL_BACKOFF);
        return;
    }
    sl_err e;
    sl_box *s = sl_box_new(rt);
    if (s == NULL || (s->image = strdup("host")) == NULL) {
        sl_box_free(s);
        sl_warn("pool: out of memory");
        arm(rt, POOL_BACKOFF);
        return;
    }
    s->timeout = SL_TIMEOUT_DEFAULT;
    sl_bind binds[POOL_MAX_MOUNTS];
    for (size_t i = 0; i < pl->nmounts; i++) {
        binds[i].host_path = pl->mounts[i].v;
        binds[i].sandbox_path = pl->mounts[i].k;
        binds[i].readonly = 1;
    }
    double t0 = sl_mono();
    if (sl_box_start_shell(s, binds, pl->nmounts, &e) < 0) {
        sl_warn("pool: cannot start a sandbox: %s", e.msg);
        arm(rt, POOL_BACKOFF);
        return;
    }
    pl->shells[pl->n++] = s;
    sl_debug("pool: %s starting (%zu of %zu, %.2f ms in the loop)", s->id, pl->n, rt->pool_target,
             (sl_mono() - t0) * 1e3);
    arm(rt, 0);
}

void sl_pool_pack_health(sl_resp *r, const sl_runner *rt)
{
    const sl_pool *pl = rt->pool;
    sl_r_map(r, 4);
    sl_r_kint(r, "size", (int64_t)rt->pool_target);
    sl_r_kint(r, "shells", pl != NULL ? (int64_t)pl->n : 0);
    sl_r_kint(r, "taken", pl != NULL ? (int64_t)pl->taken : 0);
    sl_r_kint(r, "mounts", pl != NULL ? (int64_t)pl->nmounts : 0);
}

int sl_pool_start(sl_runner *rt)
{
    if (rt->pool_target == 0)
        return 0;
    if (rt->pool_target > POOL_MAX)
        rt->pool_target = POOL_MAX;
    rt->pool = calloc(1, sizeof(*rt->pool));
    if (rt->pool == NULL)
        return -1;
    rt->pool->refill = evtimer_new(rt->base, on_refill, rt);
    if (rt->pool->refill == NULL) {
        free(rt->pool);
        rt->pool = NULL;
        return -1;
    }
    arm(rt, 0);
    return 0;
}

static void remove_at(sl_pool *pl, size_t i)
{
    memmove(&pl->shells[i], &pl->shells[i + 1], (pl->n - i - 1) * sizeof(pl->shells[0]));
    pl->n--;
}

/* A shell that is gone (init reaped, by us or by SIGCHLD): free the rest. */
static void dispose(sl_runner *rt, sl_box *s, int now)
{
    sl_reg_pid_del(rt, s);
    s->alive = 0;
    rt->nalive--;
    sl_sandbox_release(&s->sbx);
    /* At shutdown no job may be left behind: remove the dir right here. */
    if (s->dir_made && (now ? sl_rm_rf(s->dir) : sl_job_rm(rt, s->dir)) < 0)
        sl_warn("pool: could not remove %s", s->dir);
    s->dir_made = 0;
    sl_box_free(s);
}

static int eligible(const sl_box *b, size_t nmounts)
{
    /* A pooled shell is a container: a microVM create never takes one. */
    return !b->microvm && b->image != NULL && strcmp(b->image, "host") == 0 &&
           b->snapshot == NULL && b->nvolumes == 0 && nmounts <= POOL_MAX_MOUNTS && b->ns3 == 0 &&
           sl_limits_cgroup(b) == NULL && b->disk_bytes == 0 && b->net == NULL && !b->has_resources;
}

/* Same set of (inside, host) pairs, in any order. */
static int same_mounts(const sl_pool *pl, const sl_kv *m, size_t n)
{
    if (n != pl->nmounts)
        return 0;
    for (size_t i = 0; i < n; i++) {
        size_t j = 0;
        while (j < n &&
               !(strcmp(m[i].k, pl->mounts[j].k) == 0 && strcmp(m[i].v, pl->mounts[j].v) == 0))
            j++;
        if (j == n)
            return 0;
    }
    return 1;
}

/* Every mount source still the file or directory the shells bound. */
static int sources_unchanged(const sl_pool *pl)
{
    for (size_t i = 0; i < pl->nmounts; i++) {
        struct stat st;
        if (lstat(pl->mounts[i].v, &st) < 0 || st.st_dev != pl->src[i].st_dev ||
            st.st_ino != pl->src[i].st_ino ||
            (st.st_mode & S_IFMT) != (pl->src[i].st_mode & S_IFMT))
            return 0;
    }
    return 1;
}

/* Kill every shell (they are reaped through SIGCHLD: sl_pool_reaped). */
static void flush(sl_runner *rt)
{
    sl_pool *pl = rt->pool;
    while (pl->n > 0) {
        sl_box *s = pl->shells[--pl->n];
        sl_sandbox_kill(&s->sbx);
        s->next = pl->dying;
        pl->dying = s;
    }
}

/* Make m the pool's mount set (copied; sources stat'ed now). 0 or -1. */
static int set_mounts(sl_pool *pl, const sl_kv *m, size_t n)
{
    sl_kv *kv = n > 0 ? calloc(n, sizeof(*kv)) : NULL;
    struct stat *src = n > 0 ? calloc(n, sizeof(*src)) : NULL;
    int ok = n == 0 || (kv != NULL && src != NULL);
    for (size_t i = 0; ok && i < n; i++) {
        kv[i].k = strdup(m[i].k);
        kv[i].v = strdup(m[i].v);
        ok = kv[i].k != NULL && kv[i].v != NULL && lstat(m[i].v, &src[i]) == 0;
    }
    if (!ok) {
        if (kv != NULL)
            sl_kv_free(kv, n, 0);
        free(src);
        return -1;
    }
    if (pl->mounts != NULL)
        sl_kv_free(pl->mounts, pl->nmounts, 0);
    free(pl->src);
    pl->mounts = kv;
    pl->nmounts = n;
    pl->src = src;
    return 0;
}

int sl_pool_take(sl_box *b, const sl_kv *mounts, size_t nmounts)
{
    sl_runner *rt = b->rt;
    sl_pool *pl = rt->pool;
    if (pl == NULL || rt->shutting_down)
        return 0;
    if (!eligible(b, nmounts))
        return 0;
    if (!same_mounts(pl, mounts, nmounts) || !sources_unchanged(pl)) {
        /* This client's set from now on: the next creates find shells. */
        sl_debug("pool: new mount set (%zu mounts); restarting the pool", nmounts);
        flush(rt);
        if (set_mounts(pl, mounts, nmounts) < 0)
            sl_warn("pool: cannot keep the mount set (a source is gone, or out of memory)");
        else
            arm(rt, 0);
        return 0;
    }
    while (pl->n > 0) {
        sl_box *s = pl->shells[0];
        char errbuf[512] = "";
        remove_at(pl, 0);
        arm(rt, 0);
        /* Normally READY long ago; else wait for it like a fresh spawn would. */
        int r =
            s->sbx.sync_fd >= 0 ? sl_sandbox_spawn_finish(&s->sbx, -1, errbuf, sizeof(errbuf)) : 0;
        if (r < 0) {
            /* spawn_finish killed, reaped and released it already. */
            sl_warn("pool: %s failed to start: %s", s->id,
                    errbuf[0] != '\0' ? errbuf : strerror(-r));
            dispose(rt, s, 0);
            continue;
        }
        sl_box_drop_pidfd(s);
        sl_reg_pid_del(rt, s);
        memcpy(b->id, s->id, sizeof(b->id));
        b->sbx = s->sbx;
        free(b->dir);
        b->dir = s->dir;
        b->dir_made = s->dir_made;
        b->alive = 1;
        sl_reg_pid_add(rt, b);
        s->dir = NULL;
        s->dir_made = 0;
        s->alive = 0;
        sl_box_free(s);
        pl->taken++;
        sl_debug("pool: sandbox %s taken (%zu left)", b->id, pl->n);
        return 1;
    }
    return 0;
}

int sl_pool_reaped(sl_runner *rt, sl_box *b, int wait_status)
{
    sl_pool *pl = rt->pool;
    if (pl == NULL)
        return 0;
    for (sl_box **pp = &pl->dying; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == b) {
            *pp = b->next;
            b->next = NULL;
            dispose(rt, b, 0);
            return 1;
        }
    }
    for (size_t i = 0; i < pl->n; i++) {
        if (pl->shells[i] != b)
            continue;
        remove_at(pl, i);
        sl_warn("pool: idle sandbox %s died (%s %d)", b->id,
                WIFSIGNALED(wait_status) ? "signal" : "exit status",
                WIFSIGNALED(wait_status) ? WTERMSIG(wait_status) : WEXITSTATUS(wait_status));
        dispose(rt, b, 0);
        arm(rt, POOL_BACKOFF);
        return 1;
    }
    return 0;
}

void sl_pool_shutdown(sl_runner *rt)
{
    sl_pool *pl = rt->pool;
    if (pl == NULL)
        return;
    evtimer_del(pl->refill);
    flush(rt);
    while (pl->dying != NULL) {
        sl_box *s = pl->dying;
        int st;
        pl->dying = s->next;
        s->next = NULL;
        while (waitpid(s->sbx.init_pid, &st, 0) < 0 && errno == EINTR)
            ;
        dispose(rt, s, 1);
    }
    event_free(pl->refill);
    if (pl->mounts != NULL)
        sl_kv_free(pl->mounts, pl->nmounts, 0);
    free(pl->src);
    free(pl);
    rt->pool = NULL;
}
