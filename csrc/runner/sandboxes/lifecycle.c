/* lifecycle.c - create, list, get, wait and terminate sandboxes, and what
 * happens when one ends (entry exit, timeout, terminate, init dying). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sl_fn.h"
#include "sl_log.h"
#include "sl_runner.h"
#include "sl_snap.h"

/* How long init may take to answer the entry's SPAWN. */
#define START_TIMEOUT 30.0
/* A microVM boots first; without KVM (TCG) on a busy host that takes long. */
#define VM_START_TIMEOUT 180.0

sl_box *sl_req_box(sl_req *r)
{
    sl_box *b = r->p[0] != NULL ? sl_reg_find(r->rt, r->p[0]) : NULL;
    if (b == NULL && sl_sweep_was_lost(r->rt, r->p[0]))
        sl_reply_error(r, 404,
                       "sandbox '%.64s' was lost: the runner it ran under exited (crash, kill "
                       "or restart) and its processes ended with it",
                       r->p[0]);
    else if (b == NULL)
        sl_reply_error(r, 404, "sandbox '%.64s' not found", r->p[0] != NULL ? r->p[0] : "");
    return b;
}

void sl_pack_box_reply(sl_resp *r, const sl_box *b)
{
    sl_resp_init(r);
    sl_r_map(r, 1);
    sl_r_str(r, "sandbox");
    sl_pack_box(r, b);
}

/* {"sandbox": SandboxInfo}: the answer of create, get and terminate. */
static void pack_box_resp(sl_resp *resp, const sl_box *b)
{
    sl_resp_init(resp);
    sl_r_map(resp, 1);
    sl_r_str(resp, "sandbox");
    sl_pack_box(resp, b);
}

static void reply_box(sl_req *r, int status, const sl_box *b)
{
    sl_resp resp;
    pack_box_resp(&resp, b);
    sl_reply(r, status, &resp);
}

static void pack_wait(sl_resp *resp, const sl_box *b)
{
    sl_resp_init(resp);
    sl_r_map(resp, 3);
    sl_r_kbool(resp, "done", b->finalised);
    sl_r_str(resp, "exit_code");
    if (b->finalised && b->has_exit)
        sl_r_int(resp, b->exit_code);
    else
        sl_r_nil(resp);
    sl_r_kstr(resp, "status", sl_box_status_name(b->status));
}

/* ---- ending ---- */

void sl_box_end(sl_box *b, enum sl_bstatus why)
{
    if (b->killed)
        return;
    b->killed = 1;
    b->ending = why;
    if (b->finished_at == 0)
        b->finished_at = sl_now();
    if (b->timer != NULL)
        evtimer_del(b->timer);
    sl_info("sandbox %s ending (%s)", b->id, sl_box_status_name(why));
    sl_net_stop(b); /* tunnels close now, not when init is reaped */
    if (b->alive)
        sl_sandbox_kill(&b->sbx);
}

void sl_box_finalise(sl_box *b)
{
    if (b->finalised)
        return;
    b->finalised = 1;
    if (b->ending == SL_B_RUNNING)
        b->ending = SL_B_FAILED;
    if (b->finished_at == 0)
        b->finished_at = sl_now();
    for (size_t i = 0; i < b->nprocs; i++) {
        sl_proc *p = b->procs[i];
        if (p == NULL)
            continue;
        if (p->start != NULL) {
            if (b->rt->shutting_down)
                sl_hold_error(p->start, 503,
                              "the runner exited while this call was running (it was stopped)");
            else if (p->id == 0)
                sl_hold_error(p->start, 500, "sandbox %s ended before its command started", b->id);
            else
                sl_hold_error(p->start, 409, "sandbox %s ended before process %u started", b->id,
                              p->id);
        }
        /* An exec that never started was answered with an error: forget it. */
        if (p->id != 0 && p->state == SL_P_STARTING) {
            sl_proc_drop(p);
            continue;
        }
        /* Whatever still ran was killed with the sandbox. */
        if (p->state != SL_P_EXITED)
            sl_proc_finish(p, -SIGKILL);
        sl_proc_close_stdin(p);
        sl_stream_finish(&p->out[0]);
        sl_stream_finish(&p->out[1]);
    }
    b->status = b->ending;
    sl_proc *entry = b->nprocs > 0 ? b->procs[0] : NULL;
    if (b->cmd != NULL && entry != NULL && entry->state == SL_P_EXITED) {
        b->has_exit = 1;
        b->exit_code = entry->exit_code;
    }
    while (b->waiters != NULL) {
        sl_resp resp;
        pack_wait(&resp, b);
        sl_hold_reply(b->waiters, 200, &resp);
    }
}

static void free_box(sl_box *b)
{
    sl_reg_unlink(b->rt, b);
    sl_box_free(b);
}

/* The box's timer: the timeout while it runs, the retention period after. */
static void on_box_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sl_box *b = arg;
    if (!b->finalised) {
        sl_info("sandbox %s reached its timeout of %.3f s", b->id, b->timeout);
        sl_box_end(b, SL_B_TIMEOUT);
    } else if (!b->alive) {
        sl_info("sandbox %s removed after the retention period", b->id);
        free_box(b);
    }
}

/* 1 if <dir>/upper (the sandbox's writable layer) holds no entry at all. */
static int layer_is_empty(const char *dir)
{
    char *upper = sl_path_join(dir, "upper");
    int fd = upper != NULL ? open(upper, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) : -1;
    free(upper);
    if (fd < 0)
        return 0;
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        close(fd);
        return 0;
    }
    int empty = 1;
    struct dirent *de;
    while (empty && (de = readdir(d)) != NULL)
        empty = strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0;
    closedir(d);
    return empty;
}

void sl_box_init_reaped(sl_box *b, int st)
{
    sl_runner *rt = b->rt;
    b->alive = 0;
    rt->nalive--;
    sl_reg_pid_del(rt, b);
    /* Init's last messages (EXITED of processes) may still be queued. */
    sl_ctl_drain(b);
    if (b->microvm)
        sl_vm_box_ended(b); /* a snapshot waiting on the monitor fails now */
    if (!b->killed) {
        sl_warn("sandlot-init of sandbox %s died on its own (%s %d)", b->id,
                WIFSIGNALED(st) ? "signal" : "exit status",
                WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        sl_box_end(b, SL_B_FAILED);
    }
    /* No sl_sandbox_kill here: init's pid may already be reused, and the
     * kernel killed everything in the pid namespace when init died. */
    sl_box_finalise(b);
    sl_limits_box_reaped(b);
    sl_sandbox_release(&b->sbx);
    sl_net_release(b);
    sl_gpu_release(b); /* nothing of the sandbox can hold the device now */
    while (b->gpu_term != NULL) {
        sl_resp resp;
        pack_box_resp(&resp, b);
        sl_hold_reply(b->gpu_term, 200, &resp);
    }
    sl_s3_release(b); /* unmount before the dir is removed */
    if (b->dir_made) {
        b->dir_made = 0;
        /* Nothing written: a handful of empty dirs, removed right here (a
         * fork of the runner costs more than that); else in a child. */
        if (layer_is_empty(b->dir) ? sl_rm_rf(b->dir) < 0 : sl_job_rm(rt, b->dir) < 0)
            sl_warn("could not remove %s", b->dir);
    }
    sl_debug("sandbox %s reaped", b->id);
    if (b->hidden) {
        free_box(b);
        return;
    }
    struct timeval tv = sl_tv(rt->retention);
    if (b->timer == NULL || evtimer_add(b->timer, &tv) != 0)
        sl_warn("cannot arm the retention timer of %s", b->id);
}

void sl_box_entry_started(sl_box *b)
{
    sl_proc *entry = b->procs[0];
    if (entry->start == NULL)
        return;
    sl_info("sandbox %s running (entry pid %d inside)", b->id, (int)entry->pid);
    sl_resp resp;
    pack_box_resp(&resp, b);
    sl_hold_reply(entry->start, 201, &resp);
}

/* The create request failed after the sandbox existed: nobody learns its id,
 * so it is torn down and never listed. */
static void abandon(sl_box *b)
{
    sl_reg_hide(b->rt, b);
    sl_box_end(b, SL_B_FAILED);
}

void sl_box_entry_failed(sl_box *b, const char *msg)
{
    sl_proc *entry = b->procs[0];
    sl_info("sandbox %s: entry command could not start: %s", b->id, msg);
    if (entry->start != NULL)
        sl_hold_error(entry->start, 422, "%s", msg);
    entry->state = SL_P_EXITED;
    entry->exit_code = -1;
    abandon(b);
}

static void on_start_timeout(sl_hold *h)
{
    sl_proc *p = h->obj;
    sl_box *b = p->box;
    sl_hold_error(h, 500, "sandlot-init of %s did not answer the spawn request within %.0f s",
                  b->id, START_TIMEOUT);
    abandon(b);
}

static void on_vm_ready_timeout(sl_hold *h)
{
    sl_box *b = h->obj;
    sl_hold_error(h, 500, "microVM %s did not come up within %.0f s", b->id, VM_START_TIMEOUT);
    abandon(b);
}

/* ---- create ---- */

static int check_env(const sl_kv *kv, size_t n, const char *field, sl_err *e)
{
    for (size_t i = 0; i < n; i++) {
        if (kv[i].k[0] == '\0' || strchr(kv[i].k, '=') != NULL)
            return sl_err_set(e, 400,
                              "field '%s': variable name '%.64s' must be non-empty "
                              "and must not contain '='",
                              field, kv[i].k);
    }
    return 0;
}

int sl_box_parse_create(sl_box *b, const msgpack_object *body, sl_err *e)
{
    const msgpack_object *cmd = sl_msg_field(body, "cmd");
    /* An empty array means "no command", like nil: Sandbox.create(cmd=()). */
    if (!(cmd != NULL && cmd->type == MSGPACK_OBJECT_ARRAY && cmd->via.array.size == 0)) {
        if (sl_msg_strv(body, "cmd", 0, &b->cmd, &b->ncmd, e) < 0)
            return -1;
        if (b->cmd != NULL && b->cmd[0][0] == '\0')
            return sl_err_set(e, 400, "field 'cmd': the program name must not be empty");
    }
    if (sl_msg_str(body, "image", 0, &b->image, e) < 0 ||
        sl_msg_str(body, "snapshot", 0, &b->snapshot, e) < 0)
        return -1;
    if (sl_msg_kvmap(body, "env", &b->env, &b->nenv, e) < 0 ||
        check_env(b->env, b->nenv, "env", e) < 0)
        return -1;
    if (sl_msg_kvmap(body, "secrets", &b->secrets, &b->nsecrets, e) < 0 ||
        check_env(b->secrets, b->nsecrets, "secrets", e) < 0)
        return -1;
    if (sl_msg_str(body, "workdir", 0, &b->workdir, e) < 0)
        return -1;
    if (b->workdir != NULL && b->workdir[0] != '/')
        return sl_err_set(e, 400, "field 'workdir' must be an absolute path, got '%.200s'",
                          b->workdir);
    if (sl_msg_num(body, "timeout", SL_TIMEOUT_DEFAULT, SL_TIMEOUT_DEFAULT, &b->timeout, e) < 0 ||
        sl_limits_parse(b, body, e) < 0 || sl_net_parse(b, body, e) < 0 ||
        sl_output_parse(b, body, e) < 0 || sl_vm_parse(b, body, e) < 0)
        return -1;
    if (!(b->timeout > 0) || b->timeout > SL_TIMEOUT_MAX)
        return sl_err_set(e, 400, "field 'timeout' must be > 0 and <= %.0f seconds, got %g",
                          SL_TIMEOUT_MAX, b->timeout);
    if (sl_msg_kvmap(body, "volumes", &b->volumes, &b->nvolumes, e) < 0)
        return -1;
    for (size_t i = 0; i < b->nvolumes; i++) {
        const char *path = b->volumes[i].k;
        if (!sl_path_abs_clean(path) || strcmp(path, "/") == 0 || strspn(path, "/") == strlen(path))
            return sl_err_set(e, 400,
                              "field 'volumes': mount path '%.200s' must be absolute, not '/', "
                              "and without '.' or '..' components",
                              path);
        if (!sl_name_valid(b->volumes[i].v))
            return sl_err_set(e, 400,
                              "field 'volumes': volume name '%.64s' must match "
                              "[A-Za-z0-9][A-Za-z0-9_.-]{0,62}",
                              b->volumes[i].v);
    }
    /* After env and workdir: a pulled image's config goes under them. */
    if (b->image != NULL && sl_snap_alias(b, e) < 0)
        return -1;
    /* With a snapshot, sl_snap_apply takes the image from it. */
    if (b->image == NULL && b->snapshot == NULL && (b->image = strdup("host")) == NULL)
        return sl_err_set(e, 500, "strdup: out of memory");
    if (b->snapshot != NULL && sl_snap_apply(b, e) < 0)
        return -1;
    return 0;
}

/* Resolve the image and volumes, make the per-sandbox dir and start init. */
/* extra: more binds after the volumes (function workers' read-only mounts). */
/* shell: only start it (sl_sandbox_spawn_start), for the pool (pool.c). */
static int start_box(sl_box *b, const sl_bind *extra, size_t nextra, int shell, sl_err *e)
{
    sl_runner *rt = b->rt;
    char *rootfs = NULL;
    char **vpaths = NULL;
    sl_bind *binds = NULL;
    char **layers = NULL;
    size_t nlayers = 0;
    int rc = -1;
    if (b->microvm) {
        if (nextra > 0 || b->ns3 > 0)
            return sl_err_set(e, 400,
                              "mounts and S3 buckets are not available with isolation "
                              "'microvm' yet; use isolation 'container'");
        if (b->gpu_want > 0)
            return sl_err_set(e, 400,
                              "GPUs are not passed into microVMs; use isolation 'container'");
        return sl_vm_start_box(b, e);
    }
    if (sl_store_rootfs(rt, b->image, &rootfs, e) < 0)
        goto out;
    if (b->snapshot != NULL && sl_snap_layers(rt, b->snapshot, &layers, &nlayers, e) < 0)
        goto out;
    /* Held from here until init is reaped (or this create fails). */
    if (sl_gpu_claim(b, e) < 0)
        goto out;
    size_t ngpu = sl_gpu_nbinds(b);
    if (b->nvolumes + nextra + b->ns3 + ngpu > 0) {
        vpaths = calloc(b->nvolumes + 1, sizeof(*vpaths));
        binds = calloc(b->nvolumes + nextra + b->ns3 + ngpu, sizeof(*binds));
        if (vpaths == NULL || binds == NULL) {
            sl_err_set(e, 500, "calloc: out of memory");
            goto out;
        }
    }
    for (size_t i = 0; i < b->nvolumes; i++) {
        if (sl_store_volume(rt, b->volumes[i].v, &vpaths[i], e) < 0)
            goto out;
        binds[i].host_path = vpaths[i];
        binds[i].sandbox_path = b->volumes[i].k;
        binds[i].readonly = 0;
    }
    for (size_t i = 0; i < nextra; i++)
        binds[b->nvolumes + i] = extra[i];
    b->dir = sl_path_join(rt->sandboxes_dir, b->id);
    if (b->dir == NULL) {
        sl_err_set(e, 500, "out of memory");
        goto out;
    }
    if (mkdir(b->dir, 0700) < 0) {
        sl_err_set(e, 500, "mkdir %s: %s", b->dir, strerror(errno));
        goto out;
    }
    b->dir_made = 1;
    /* S3 mounts live under the dir, in the runner's namespace (s3.c). */
    if (b->ns3 > 0 && sl_s3_mount(b, binds + b->nvolumes + nextra, e) < 0)
        goto out;
    /* Hide the runner's own state from sandboxes that see the host's root. */
    const char *masks[3];
    size_t nmasks = 0;
    masks[nmasks++] = rt->state_dir;
    masks[nmasks++] = rt->socket_dir;
    if (rt->log_dir != NULL)
        masks[nmasks++] = rt->log_dir;
    sl_sandbox_config cfg = {
        .id = b->id,
        .rootfs = rootfs,
        .layers = (const char *const *)layers,
        .n_layers = nlayers,
        .dir = b->dir,
        .init_memfd = rt->init_memfd,
        .binds = binds,
        .n_binds = b->nvolumes + nextra + b->ns3,
        .masks = masks,
        .n_masks = nmasks,
        .limits = sl_limits_cgroup(b),
        .disk_bytes = b->disk_bytes,
        .userns = rt->userns,
    };
    if (ngpu > 0)
        cfg.n_binds += sl_gpu_binds(b, binds + cfg.n_binds);
    if (sl_net_prepare(b, e) < 0)
        goto out;
    cfg.net = sl_net_config_of(b);
    char errbuf[512] = "";
    int src = shell ? sl_sandbox_spawn_start(&cfg, &b->sbx, errbuf, sizeof(errbuf))
                    : sl_sandbox_spawn(&cfg, &b->sbx, errbuf, sizeof(errbuf));
    if (src < 0) {
        sl_err_set(e, src == -EAGAIN || src == -ENOMEM ? 503 : 500, "sandbox setup failed: %s",
                   errbuf[0] ? errbuf : strerror(-src));
        goto out;
    }
    if (!shell)
        sl_box_drop_pidfd(b);
    b->alive = 1;
    rt->nalive++;
    sl_reg_pid_add(rt, b);
    if (sl_net_spawned(b, e) < 0) {
        /* Nothing runs in it yet and nobody knows its id: kill and reap it
         * here, as a failed spawn would have. */
        int st;
        sl_sandbox_kill(&b->sbx);
        while (waitpid(b->sbx.init_pid, &st, 0) < 0 && errno == EINTR)
            ;
        sl_sandbox_release(&b->sbx);
        sl_reg_pid_del(rt, b);
        b->alive = 0;
        rt->nalive--;
        goto out;
    }
    rc = 0;
out:
    if (rc < 0 && !b->alive)
        sl_net_release(b); /* a live one is released when init is reaped */
    if (rc < 0)
        sl_s3_release(b); /* before any rm -rf of the dir can reach a bucket */
    if (rc < 0 && !b->alive)
        sl_gpu_release(b);
    free(rootfs);
    sl_strv_free(layers, nlayers);
    if (vpaths != NULL) {
        for (size_t i = 0; i < b->nvolumes; i++)
            free(vpaths[i]);
    }
    free(vpaths);
    free(binds);
    return rc;
}

void sl_h_create(sl_req *r)
{
    sl_runner *rt = r->rt;
    sl_err e;
    /* Pre-set-up sandboxes (pool.c) do not count against the cap. */
    if (rt->nalive - sl_pool_count(rt) >= rt->max_sandboxes) {
        sl_reply_error(r, 503, "runner at capacity: %zu sandboxes", rt->nalive - sl_pool_count(rt));
        return;
    }
    sl_box *b = sl_box_new(rt);
    if (b == NULL) {
        sl_reply_error(r, 500, "cannot allocate a sandbox record");
        return;
    }
    sl_kv *mounts = NULL;
    sl_bind *mbinds = NULL;
    size_t nmounts = 0;
    /* An entry command that cannot be sent to init is refused before the
     * sandbox is built (it used to fail only after). */
    int bad = sl_box_parse_create(b, r->body, &e) < 0 ||
              (b->cmd != NULL && sl_spawn_fits(b, b->workdir, b->cmd, &e) < 0) ||
              sl_mounts_parse(r->body, &mounts, &nmounts, &mbinds, &e) < 0 ||
              sl_s3_parse(b, r->body, &e) < 0 ||
              (!sl_pool_take(b, mounts, nmounts) && start_box(b, mbinds, nmounts, 0, &e) < 0);
    free(mbinds);
    sl_kv_free(mounts, nmounts, 0);
    if (bad) {
        sl_s3_release(b);
        if (b->dir_made)
            sl_rm_rf(b->dir); /* empty: spawn leaves nothing behind on failure */
        sl_box_free(b);
        sl_reply_err(r, &e);
        return;
    }
    b->created_at = sl_now();
    sl_reg_add(rt, b);
    b->timer = evtimer_new(rt->base, on_box_timer, b);
    struct timeval tv = sl_tv(b->timeout);
    if (b->timer == NULL || evtimer_add(b->timer, &tv) != 0 || sl_ctl_watch(b) < 0) {
        abandon(b);
        sl_reply_error(r, 500, "cannot watch sandbox %s (libevent)", b->id);
        return;
    }
    sl_info("sandbox %s created (image %s, init pid %d)", b->id, b->image, (int)b->sbx.init_pid);
    if (b->cmd == NULL && b->microvm) {
        /* Answer once the guest is up (or say why it did not come up), so
         * that create returns a sandbox that can exec at once. */
        sl_hold_new(r, &b->vm_ready_hold, VM_START_TIMEOUT, on_vm_ready_timeout, b);
        return;
    }
    if (b->cmd == NULL) {
        reply_box(r, 201, b);
        return;
    }
    sl_proc *entry = sl_proc_new(b);
    if (entry == NULL || (entry->cmd = sl_strv_dup(b->cmd, b->ncmd)) == NULL) {
        abandon(b);
        sl_reply_error(r, 500, "out of memory");
        return;
    }
    entry->ncmd = b->ncmd;
    char **envp = sl_env_build(b, NULL, 0);
    int rc = envp != NULL ? sl_proc_launch(entry, b->workdir, b->cmd, envp, &e)
                          : sl_err_set(&e, 500, "out of memory");
    sl_env_free(envp);
    if (rc < 0) {
        abandon(b);
        sl_reply_err(r, &e);
        return;
    }
    /* Answer only once init reports STARTED or SPAWN_FAILED, so that a
     * missing binary or bad workdir is this request's error. */
    sl_hold_new(r, &entry->start, b->microvm ? VM_START_TIMEOUT : START_TIMEOUT, on_start_timeout,
                entry);
}

/* Start a box the caller filled in (cmd, image, env, workdir, timeout) with
 * no HTTP request behind it: the function pools' workers (fn_pool.c). On
 * failure the box is freed or abandoned and must not be touched again. */
int sl_box_launch(sl_box *b, int hidden, const sl_bind *binds, size_t nbinds, sl_err *e)
{
    sl_runner *rt = b->rt;
    if (rt->nalive - sl_pool_count(rt) >= rt->max_sandboxes) {
        sl_box_free(b);
        return sl_err_set(e, 503, "runner at capacity: %zu sandboxes",
                          rt->nalive - sl_pool_count(rt));
    }
    if (start_box(b, binds, nbinds, 0, e) < 0) {
        sl_s3_release(b);
        if (b->dir_made)
            sl_rm_rf(b->dir);
        sl_box_free(b);
        return -1;
    }
    b->created_at = sl_now();
    sl_reg_add(rt, b);
    if (hidden)
        sl_reg_hide(rt, b);
    b->timer = evtimer_new(rt->base, on_box_timer, b);
    struct timeval tv = sl_tv(b->timeout);
    if (b->timer == NULL || evtimer_add(b->timer, &tv) != 0 || sl_ctl_watch(b) < 0) {
        abandon(b);
        return sl_err_set(e, 500, "cannot watch sandbox %s (libevent)", b->id);
    }
    sl_proc *entry = sl_proc_new(b);
    if (entry == NULL || (entry->cmd = sl_strv_dup(b->cmd, b->ncmd)) == NULL) {
        abandon(b);
        return sl_err_set(e, 500, "out of memory");
    }
    entry->ncmd = b->ncmd;
    char **envp = sl_env_build(b, NULL, 0);
    int rc = envp != NULL ? sl_proc_launch(entry, b->workdir, b->cmd, envp, e)
                          : sl_err_set(e, 500, "out of memory");
    sl_env_free(envp);
    if (rc < 0) {
        abandon(b);
        return -1;
    }
    return 0;
}

/* Init is our child and is reaped only in on_sigchld, which marks the box
 * dead in the same callback: until then its pid cannot be reused, so
 * kill(pid) is as safe as the pidfd, and one fd per sandbox fewer lets a
 * runner whose hard fd limit it cannot raise (no CAP_SYS_RESOURCE) hold
 * 10,000 sandboxes. */
void sl_box_drop_pidfd(sl_box *b)
{
    if (b->sbx.init_pid > 0 && b->sbx.pidfd >= 0) {
        close(b->sbx.pidfd);
        b->sbx.pidfd = -1;
    }
}

int sl_box_start_shell(sl_box *b, const sl_bind *binds, size_t nbinds, sl_err *e)
{
    if (start_box(b, binds, nbinds, 1, e) < 0) {
        if (b->dir_made)
            sl_rm_rf(b->dir);
        sl_box_free(b);
        return -1;
    }
    return 0;
}

/* ---- list, get, wait, terminate ---- */

void sl_h_list(sl_req *r)
{
    sl_runner *rt = r->rt;
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 1);
    sl_r_str(&resp, "sandboxes");
    sl_r_arr(&resp, rt->nvisible);
    size_t n = 0;
    for (sl_box *b = rt->first; b != NULL; b = b->next) {
        if (!b->hidden) {
            sl_pack_box(&resp, b);
            n++;
        }
    }
    if (n != rt->nvisible) {
        sl_error("bug: %zu visible sandboxes counted, %zu listed", rt->nvisible, n);
        resp.failed = 1;
    }
    sl_reply(r, 200, &resp);
}

void sl_h_get(sl_req *r)
{
    sl_box *b = sl_req_box(r);
    if (b != NULL)
        reply_box(r, 200, b);
}

static void on_wait_timeout(sl_hold *h)
{
    sl_resp resp;
    pack_wait(&resp, h->obj);
    sl_hold_reply(h, 200, &resp);
}

/* Parse a long-poll timeout: absent -> 0 (answer now), nil -> the cap. */
static int poll_timeout(const msgpack_object *body, double *t, sl_err *e)
{
    if (sl_msg_num(body, "timeout", 0, SL_POLL_CAP, t, e) < 0)
        return -1;
    if (*t < 0)
        return sl_err_set(e, 400, "field 'timeout' must be >= 0, got %g", *t);
    if (*t > SL_POLL_CAP)
        *t = SL_POLL_CAP;
    return 0;
}

void sl_h_wait(sl_req *r)
{
    sl_box *b = sl_req_box(r);
    if (b == NULL)
        return;
    sl_err e;
    double t;
    if (poll_timeout(r->body, &t, &e) < 0) {
        sl_reply_err(r, &e);
        return;
    }
    if (b->finalised || t <= 0) {
        sl_resp resp;
        pack_wait(&resp, b);
        sl_reply(r, 200, &resp);
        return;
    }
    sl_hold_new(r, &b->waiters, t, on_wait_timeout, b);
}

/* A terminated GPU sandbox whose init is not reaped by then: answer anyway. */
#define GPU_TERM_TIMEOUT 10.0

static void on_gpu_term_timeout(sl_hold *h)
{
    sl_resp resp;
    pack_box_resp(&resp, h->obj);
    sl_hold_reply(h, 200, &resp);
}

void sl_h_terminate(sl_req *r)
{
    sl_box *b = sl_req_box(r);
    if (b == NULL)
        return;
    sl_box_end(b, SL_B_TERMINATED);
    /* Answer everything now; init is reaped (and the record freed) later. */
    sl_box_finalise(b);
    if (b->gpu_held && b->alive)
        /* Except this one: its GPUs are free only once init is reaped (its
         * processes may hold the device until then), and a client that
         * terminated one to start the next must find them free. */
        sl_hold_new(r, &b->gpu_term, GPU_TERM_TIMEOUT, on_gpu_term_timeout, b);
    else
        reply_box(r, 200, b);
    sl_reg_hide(r->rt, b);
    sl_info("sandbox %s terminated", b->id);
    if (!b->alive)
        free_box(b);
}

/* ---- shutdown ---- */

void sl_lifecycle_shutdown(sl_runner *rt)
{
    sl_sweep_note_shutdown(rt);
    sl_fn_shutdown(rt); /* function pools let go of their workers first */
    for (sl_box *b = rt->first; b != NULL; b = b->next) {
        if (b->alive)
            sl_box_end(b, SL_B_TERMINATED);
        sl_box_finalise(b);
    }
    /* Blocking is fine now: nothing else is served. SIGKILL makes it quick. */
    for (sl_box *b = rt->first; b != NULL; b = b->next) {
        if (!b->alive)
            continue;
        kill(b->sbx.init_pid, SIGKILL);
        int st;
        while (waitpid(b->sbx.init_pid, &st, 0) < 0 && errno == EINTR)
            ;
        b->alive = 0;
        rt->nalive--;
        sl_reg_pid_del(rt, b);
        sl_ctl_drain(b);
        sl_sandbox_release(&b->sbx);
        sl_net_release(b);
    }
    while (rt->first != NULL) {
        sl_box *b = rt->first;
        sl_s3_release(b);
        if (b->dir_made) {
            int rc = sl_rm_rf(b->dir);
            if (rc < 0)
                sl_warn("removing %s: %s", b->dir, strerror(-rc));
        }
        free_box(b);
    }
}
