/* capture.c - POST /v1/sandboxes/{id}/snapshot: capturing a sandbox's
 * writable layer as a snapshot (the passes are described at the top of
 * snapshot.c). Each pass runs in a child process (jobs.c) so the loop keeps
 * serving; the sandbox is frozen only for the short second pass. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sl_freeze.h"
#include "sl_log.h"
#include "snap_int.h"

#define FREEZE_TIMEOUT 5.0
/* Holes in sparse files above which a capture is stored as a copy (mkfs.erofs
 * would write them out as zeros; snap_erofs.c). */
#define SPARSE_MAX ((long long)64 << 20)
#define EXIT_SPARSE 4 /* do_build: too sparse for an image */

/* A capture in flight. */
typedef struct snap_job {
    sl_runner *rt;
    char box_id[SL_ID_LEN + 1];
    char id[SNAP_ID_LEN + 1];
    char *tmp;               /* <snapdir>/.tmp-<id> */
    char *final;             /* <snapdir>/<id> */
    char *upper;             /* the sandbox's upper dir */
    char *layer;             /* <tmp>/layer or <tmp>/layer.erofs */
    struct timespec wall_t0; /* entries with ctime >= this are recopied while frozen */
    double t_start;          /* request arrived (monotonic) */
    double t_freeze;         /* freeze started (monotonic) */
    struct event *settle;    /* erofs: the short wait before t0 (start_build) */
    struct snap_job *next;   /* captures in flight */
    sl_hold *hold;
    snap_meta meta;
} snap_job;

/* ---- capture ---- */

/* Captures in flight, one runner per process: a second capture of the same
 * sandbox would thaw it in the middle of the first one's frozen pass. */
static snap_job *inflight;

static void job_free(snap_job *j)
{
    for (snap_job **pp = &inflight; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == j) {
            *pp = j->next;
            break;
        }
    }
    if (j->settle != NULL)
        event_free(j->settle);
    sl__snap_meta_free(&j->meta);
    free(j->tmp);
    free(j->final);
    free(j->upper);
    free(j->layer);
    free(j);
}

static void thaw(sl_runner *rt, const char *box_id)
{
    sl_box *b = sl_reg_find(rt, box_id);
    if (b == NULL || !b->alive)
        return;
    int rc = sl_cgroup_freeze(&b->sbx.cg, 0, FREEZE_TIMEOUT);
    if (rc < 0)
        sl_warn("sandbox %s: thaw after snapshot failed: %s", box_id, strerror(-rc));
}

/* Answer the request and drop the job: why[0] == 0 means success. */
static void finish(sl_runner *rt, snap_job *j, const char *why, int status)
{
    if (why[0] != '\0') {
        sl_warn("snapshot %s of %s failed: %s", j->id, j->box_id, why);
        if (j->hold != NULL)
            sl_hold_error(j->hold, rt->shutting_down ? 503 : status, "snapshot of %s failed: %s",
                          j->box_id, why);
        if (sl_job_rm(rt, j->tmp) < 0)
            sl_warn("cannot remove %s", j->tmp);
    } else {
        sl_info("snapshot %s of %s taken (frozen %.3f s, %.3f s in all)", j->id, j->box_id,
                j->meta.capture_seconds, sl_mono() - j->t_start);
        if (j->hold != NULL) {
            sl_resp resp;
            sl__snap_pack_info(&resp, "snapshot", &j->meta);
            sl_hold_reply(j->hold, 201, &resp);
        }
    }
    job_free(j);
}

static const char *gone(sl_runner *rt, const snap_job *j)
{
    sl_box *b = sl_reg_find(rt, j->box_id);
    return b == NULL || !b->alive || b->killed ? "the sandbox ended while it was being captured"
                                               : NULL;
}

/* The snapshot's files are on disk: put it under its name, durably. */
static void on_synced(sl_runner *rt, void *arg, int status, const char *err)
{
    (void)err;
    snap_job *j = arg;
    char why[400] = "";
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
        snprintf(why, sizeof(why), "fsync of %s failed", j->tmp);
    } else {
        sl_fault("snapshot-synced");
        if (rename(j->tmp, j->final) < 0) {
            snprintf(why, sizeof(why), "rename %s: %s", j->final, strerror(errno));
        } else {
            int rc = sl_fsync_parent(j->final);
            if (rc < 0)
                sl_warn("fsync of the dir of %s: %s", j->final, strerror(-rc));
            sl_fault("snapshot-renamed");
        }
    }
    finish(rt, j, why, 500);
}

/* The last frozen step ended (status as from waitpid): thaw, then persist
 * the snapshot if that step succeeded and the sandbox is still there. */
static void complete(sl_runner *rt, snap_job *j, const char *what, int status, const char *err)
{
    char why[400] = "";
    int code = 500;
    thaw(rt, j->box_id);
    j->meta.capture_seconds = sl_mono() - j->t_freeze;
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
        snprintf(why, sizeof(why), "%s %s %d: %.300s", what,
                 WIFSIGNALED(status) ? "killed by signal" : "exited with status",
                 WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status), err ? err : "");
    } else if (gone(rt, j) != NULL) {
        snprintf(why, sizeof(why), "%s", gone(rt, j));
        code = 409;
    } else {
        char *meta = sl_path_join(j->tmp, "meta");
        int rc = meta == NULL ? -ENOMEM : sl__snap_write_meta(meta, &j->meta);
        free(meta);
        if (rc < 0) {
            snprintf(why, sizeof(why), "writing meta: %s", strerror(-rc));
        } else {
            sl_fault("snapshot-meta-written");
            /* Layer and meta reach the disk before the snapshot exists under
             * its name (durable.c); the answer waits for that. */
            rc = sl_job_fsync_tree(rt, j->tmp, on_synced, j);
            if (rc == 0)
                return;
            snprintf(why, sizeof(why), "cannot start the fsync of %s: %s", j->tmp, strerror(-rc));
        }
    }
    finish(rt, j, why, code);
}

/* Second pass of the copy path done (frozen throughout). */
static void on_pass2(sl_runner *rt, void *arg, int status, const char *err)
{
    complete(rt, arg, "frozen copy", status, err);
}

/* Frozen rebuild of the image done. */
static void on_rebuilt(sl_runner *rt, void *arg, int status, const char *err)
{
    complete(rt, arg, "frozen mkfs.erofs", status, err);
}

/* What a forked child does; its return value is the exit status. */
typedef int (*child_fn)(snap_job *j, char *msg, size_t msglen);

static int do_sync(snap_job *j, char *msg, size_t msglen)
{
    return sl_snap_sync(j->upper, j->layer, &j->wall_t0, msg, msglen) < 0 ? 1 : 0;
}

/* 0: nothing changed since t0 (the image is exact); 3: something did; 1: error. */
static int do_check(snap_job *j, char *msg, size_t msglen)
{
    int rc = sl_snap_changed_since(j->upper, &j->wall_t0, msg, msglen);
    return rc < 0 ? 1 : rc > 0 ? 3 : 0;
}

/* Run fn in a forked child registered as a job, so SIGCHLD handling
 * (jobs.c) reports its end like any other job's. */
static int start_child(sl_runner *rt, snap_job *j, child_fn fn, sl_job_done_fn done)
{
    sl_job *job = calloc(1, sizeof(*job));
    int p[2];
    if (job == NULL)
        return -ENOMEM;
    if (pipe2(p, O_CLOEXEC) < 0) {
        int err = errno;
        free(job);
        return -err;
    }
    pid_t pid = fork();
    if (pid < 0) {
        int err = errno;
        close(p[0]);
        close(p[1]);
        free(job);
        return -err;
    }
    if (pid == 0) {
        /* The runner is single-threaded, so the heap is usable here. */
        char msg[512] = "";
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        if (dup2(p[1], 2) < 0)
            _exit(2);
        close_range(3, ~0U, 0);
        int code = fn(j, msg, sizeof(msg));
        if (code != 0) {
            ssize_t n = write(2, msg, strlen(msg));
            (void)n;
        }
        _exit(code);
    }
    close(p[1]);
    job->pid = pid;
    job->err_fd = p[0];
    sl_job_watch_err(rt, job); /* mkfs.erofs may say a lot */
    job->done = done;
    job->arg = j;
    job->next = rt->jobs;
    rt->jobs = job;
    return 0;
}

/* Unfrozen build: the sparse check, then mkfs.erofs in its place. */
static int do_build(snap_job *j, char *msg, size_t msglen)
{
    /* A failed walk (the tree changing under it) is left to mkfs.erofs,
     * whose failure leads to the frozen rebuild. */
    if (sl_snap_sparse(j->upper, SPARSE_MAX, msg, msglen) > 0)
        return EXIT_SPARSE;
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0) {
        snprintf(msg, msglen, "/dev/null: %s", strerror(errno));
        return 1;
    }
    /* What posix_spawn gives the other jobs (sl_spawnattr_init). */
    sigset_t none;
    sigemptyset(&none);
    signal(SIGPIPE, SIG_DFL);
    sigprocmask(SIG_SETMASK, &none, NULL);
    char *argv[SL_EROFS_ARGV];
    sl_erofs_mkfs_argv(argv, j->layer, j->upper);
    execvp(argv[0], argv);
    snprintf(msg, msglen, "exec mkfs.erofs: %s", strerror(errno));
    return 1;
}

static void on_pass1(sl_runner *rt, void *arg, int status, const char *err);

/* The tree is too sparse for an image: take the copy path instead. t0 was
 * read before the sparse check, as the copy path needs. */
static void copy_instead(sl_runner *rt, snap_job *j, const char *why_copy)
{
    char why[400] = "";
    char *layer = sl_path_join(j->tmp, "layer"), *mnt = sl_path_join(j->tmp, "mnt");
    char *storage = strdup("dir");
    if (layer == NULL || mnt == NULL || storage == NULL) {
        free(layer);
        free(mnt);
        free(storage);
        snprintf(why, sizeof(why), "out of memory");
        finish(rt, j, why, 500);
        return;
    }
    if (rmdir(mnt) < 0)
        sl_debug("rmdir %s: %s", mnt, strerror(errno));
    free(mnt);
    free(j->layer);
    j->layer = layer;
    free(j->meta.storage);
    j->meta.storage = storage;
    sl_info("snapshot %s of %s: %s; storing a copy", j->id, j->box_id, why_copy);
    char *cp[] = {"cp", "-a", "--reflink=auto", "--", j->upper, j->layer, NULL};
    if (sl_job_run(rt, cp, on_pass1, j) < 0) {
        snprintf(why, sizeof(why), "cannot start cp: %s", strerror(errno));
        finish(rt, j, why, 500);
    }
}

/* Build the image again while the sandbox stays frozen. */
static void rebuild_frozen(sl_runner *rt, snap_job *j, const char *why_again)
{
    char why[400] = "";
    if (unlink(j->layer) < 0 && errno != ENOENT) {
        snprintf(why, sizeof(why), "unlink %s: %s", j->layer, strerror(errno));
    } else {
        char *argv[SL_EROFS_ARGV];
        sl_erofs_mkfs_argv(argv, j->layer, j->upper);
        if (sl_job_run(rt, argv, on_rebuilt, j) == 0) {
            sl_info("snapshot %s: %s changed during the build (%s); building again while frozen",
                    j->id, j->box_id, why_again);
            return;
        }
        snprintf(why, sizeof(why), "cannot start mkfs.erofs: %s", strerror(errno));
    }
    thaw(rt, j->box_id);
    finish(rt, j, why, 500);
}

/* Frozen check of an erofs capture done. */
static void on_checked(sl_runner *rt, void *arg, int status, const char *err)
{
    snap_job *j = arg;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 3 && !rt->shutting_down) {
        rebuild_frozen(rt, j, err ? err : "");
        return;
    }
    complete(rt, j, "frozen check", status, err);
}

/* Pass 1 (sandbox running) ended: freeze it. 0, or -1 after finishing j. */
static int freeze_after_pass1(sl_runner *rt, snap_job *j, int status)
{
    char why[400] = "";
    if (WIFSIGNALED(status) || rt->shutting_down) {
        snprintf(why, sizeof(why), "copy interrupted");
        finish(rt, j, why, 500);
        return -1;
    }
    if (gone(rt, j) != NULL) {
        snprintf(why, sizeof(why), "%s", gone(rt, j));
        finish(rt, j, why, 409);
        return -1;
    }
    sl_box *b = sl_reg_find(rt, j->box_id);
    j->t_freeze = sl_mono();
    int rc = sl_cgroup_freeze(&b->sbx.cg, 1, FREEZE_TIMEOUT);
    if (rc < 0) {
        if (rc != -ENOTSUP)
            thaw(rt, j->box_id); /* undo a half-done freeze */
        snprintf(why, sizeof(why), "cannot freeze the sandbox for a consistent copy: %s",
                 rc != -ENOTSUP ? strerror(-rc)
                 : rt->userns ? "no cgroup freezer (a rootless runner freezes through a delegated "
                                "cgroup, and has none)"
                              : "no cgroup freezer on this host");
        finish(rt, j, why, 500);
        return -1;
    }
    return 0;
}

static void start_frozen(sl_runner *rt, snap_job *j, child_fn fn, sl_job_done_fn done)
{
    int rc = start_child(rt, j, fn, done);
    if (rc < 0) {
        char why[400];
        thaw(rt, j->box_id);
        snprintf(why, sizeof(why), "cannot start the frozen pass: %s", strerror(-rc));
        finish(rt, j, why, 500);
    }
}

/* Copy path: first pass (sandbox running) done: freeze, fix up what changed. */
static void on_pass1(sl_runner *rt, void *arg, int status, const char *err)
{
    snap_job *j = arg;
    /* cp fails on files that vanish under it while the sandbox runs; the
     * frozen pass copies or removes exactly those, so that is no error. */
    if (WIFEXITED(status) && WEXITSTATUS(status) != 0)
        sl_debug("snapshot %s: first pass: %s", j->id, err ? err : "");
    if (freeze_after_pass1(rt, j, status) == 0)
        start_frozen(rt, j, do_sync, on_pass2);
}

/* Erofs path: image built while the sandbox ran: freeze, then keep it if
 * nothing changed meanwhile. */
static void on_built(sl_runner *rt, void *arg, int status, const char *err)
{
    snap_job *j = arg;
    if (WIFEXITED(status) && WEXITSTATUS(status) == EXIT_SPARSE && !rt->shutting_down &&
        gone(rt, j) == NULL) {
        copy_instead(rt, j, err ? err : "sparse files");
        return;
    }
    if (freeze_after_pass1(rt, j, status) < 0)
        return;
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
        /* mkfs.erofs stops at a file that vanished under it: the tree was
         * changing, so build it again from the frozen tree. */
        sl_debug("snapshot %s: mkfs.erofs while running: %s", j->id, err ? err : "");
        rebuild_frozen(rt, j, "mkfs.erofs failed");
        return;
    }
    start_frozen(rt, j, do_check, on_checked);
}

/* Erofs path: take t0 and build the image while the sandbox runs. */
static void start_build(sl_runner *rt, snap_job *j)
{
    char why[400] = "";
    if (rt->shutting_down) {
        snprintf(why, sizeof(why), "the runner is stopping");
        finish(rt, j, why, 503);
        return;
    }
    if (gone(rt, j) != NULL) {
        snprintf(why, sizeof(why), "%s", gone(rt, j));
        finish(rt, j, why, 409);
        return;
    }
    clock_gettime(CLOCK_REALTIME_COARSE, &j->wall_t0);
    int rc = start_child(rt, j, do_build, on_built);
    if (rc < 0) {
        snprintf(why, sizeof(why), "cannot start mkfs.erofs: %s", strerror(-rc));
        finish(rt, j, why, 500);
    }
}

static void on_settled(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    snap_job *j = arg;
    event_free(j->settle);
    j->settle = NULL;
    start_build(j->rt, j);
}

/* How long the erofs path waits between the request and t0. Inode times
 * here are multigrain (kernel 6.13+): a change gets a fine-grained ctime up
 * to one tick ahead of CLOCK_REALTIME_COARSE, which t0 must be read from
 * (a later change may still get a coarse stamp). So a sandbox that stopped
 * writing just before the request, as one does after its setup, would look
 * changed and be rebuilt while frozen; changes older than a tick and a bit
 * compare below t0. Two ticks plus 2 ms: 10 ms at HZ=250. */
static struct timeval settle_delay(void)
{
    struct timespec res;
    long us = 10000;
    if (clock_getres(CLOCK_REALTIME_COARSE, &res) == 0 && res.tv_sec == 0)
        us = 2 * (res.tv_nsec / 1000) + 2000;
    struct timeval tv = {us / 1000000, us % 1000000};
    return tv;
}

int sl__snap_fill_meta(snap_meta *m, const char *id, const char *kind, const char *storage,
                       const sl_box *b, sl_err *e)
{
    m->created_at = sl_now();
    if ((m->id = strdup(id)) == NULL || (m->kind = strdup(kind)) == NULL ||
        (m->storage = strdup(storage)) == NULL || (m->sandbox_id = strdup(b->id)) == NULL ||
        (m->image = strdup(b->image)) == NULL ||
        (b->workdir != NULL && (m->workdir = strdup(b->workdir)) == NULL) ||
        (b->snapshot != NULL && (m->parent = strdup(b->snapshot)) == NULL) ||
        (b->cmd != NULL && (m->cmd = sl_strv_dup(b->cmd, b->ncmd)) == NULL))
        return sl_err_set(e, 500, "out of memory");
    m->ncmd = b->cmd != NULL ? b->ncmd : 0;
    if (b->nenv > 0) {
        if ((m->env = calloc(b->nenv, sizeof(*m->env))) == NULL)
            return sl_err_set(e, 500, "out of memory");
        for (size_t i = 0; i < b->nenv; i++) {
            m->nenv = i + 1;
            if ((m->env[i].k = strdup(b->env[i].k)) == NULL ||
                (m->env[i].v = strdup(b->env[i].v)) == NULL)
                return sl_err_set(e, 500, "out of memory");
        }
    }
    return 0;
}

static int fill_meta(snap_job *j, const sl_box *b, sl_err *e)
{
    int erofs = j->rt->snap_storage == SL_SNAP_STORAGE_EROFS;
    return sl__snap_fill_meta(&j->meta, j->id, "filesystem", erofs ? "erofs" : "dir", b, e);
}

void sl_h_snapshot(sl_req *r)
{
    sl_runner *rt = r->rt;
    sl_box *b = sl_req_box(r);
    if (b == NULL)
        return;
    if (!b->alive || b->killed) {
        sl_reply_error(r, 409,
                       "sandbox %s is not running (status %s); only a running sandbox "
                       "can be snapshotted",
                       b->id, sl_box_status_name(b->killed ? b->ending : b->status));
        return;
    }
    if (b->microvm) {
        sl_vm_snapshot_req(r, b); /* a memory checkpoint (vm/vm_box.c) */
        return;
    }
    for (snap_job *o = inflight; o != NULL; o = o->next) {
        if (strcmp(o->box_id, b->id) == 0) {
            sl_reply_error(r, 409, "a snapshot of sandbox %s (%s) is already being taken", b->id,
                           o->id);
            return;
        }
    }
    sl_err e;
    snap_job *j = calloc(1, sizeof(*j));
    if (j == NULL) {
        sl_reply_error(r, 500, "out of memory");
        return;
    }
    j->rt = rt;
    int erofs = rt->snap_storage == SL_SNAP_STORAGE_EROFS;
    snprintf(j->box_id, sizeof(j->box_id), "%s", b->id);
    memcpy(j->id, "sn-", 3);
    if (sl_random_hex(j->id + 3, 16) < 0) {
        sl_err_set(&e, 500, "getrandom failed");
        goto fail;
    }
    if (fill_meta(j, b, &e) < 0 || sl_msg_str(r->body, "label", 0, &j->meta.label, &e) < 0)
        goto fail;
    if (j->meta.label != NULL && strlen(j->meta.label) > 200) {
        sl_err_set(&e, 400, "field 'label' must be at most 200 bytes");
        goto fail;
    }
    if (asprintf(&j->tmp, "%s/snapshots/.tmp-%s", rt->state_dir, j->id) < 0)
        j->tmp = NULL;
    if (j->tmp == NULL || (j->final = sl__snap_path(rt, j->id, NULL)) == NULL ||
        (j->upper = sl_path_join(b->dir, "upper")) == NULL ||
        (j->layer = sl_path_join(j->tmp, erofs ? "layer.erofs" : "layer")) == NULL) {
        sl_err_set(&e, 500, "out of memory");
        goto fail;
    }
    if (mkdir(j->tmp, 0700) < 0) {
        sl_err_set(&e, 500, "mkdir %s: %s", j->tmp, strerror(errno));
        free(j->tmp);
        j->tmp = NULL;
        goto fail;
    }
    char *mnt = erofs ? sl_path_join(j->tmp, "mnt") : NULL;
    if (erofs && (mnt == NULL || mkdir(mnt, 0700) < 0)) {
        sl_err_set(&e, 500, "mkdir %s/mnt: %s", j->tmp,
                   mnt == NULL ? "out of memory" : strerror(errno));
        free(mnt);
        sl_rm_rf(j->tmp);
        goto fail;
    }
    free(mnt);
    /* Entries changed at or after this instant are recopied while frozen.
     * The clock file timestamps come from (see snap_sync.c). */
    clock_gettime(CLOCK_REALTIME_COARSE, &j->wall_t0);
    j->t_start = sl_mono();
    char *cp[] = {"cp", "-a", "--reflink=auto", "--", j->upper, j->layer, NULL};
    struct timeval delay = settle_delay();
    if (erofs) {
        /* No timer (out of memory): start now, a rebuild is only slower. */
        j->settle = evtimer_new(rt->base, on_settled, j);
        if (j->settle != NULL && evtimer_add(j->settle, &delay) != 0) {
            event_free(j->settle);
            j->settle = NULL;
        }
    } else if (sl_job_run(rt, cp, on_pass1, j) < 0) {
        sl_err_set(&e, 500, "cannot start cp: %s", strerror(errno));
        sl_rm_rf(j->tmp);
        goto fail;
    }
    j->next = inflight;
    inflight = j;
    sl_info("snapshot %s of %s: %s %s", j->id, b->id, erofs ? "building an image of" : "copying",
            j->upper);
    /* No timeout: the copy takes as long as the upper dir needs. */
    sl_hold_new(r, &j->hold, -1, NULL, j);
    if (erofs && j->settle == NULL)
        start_build(rt, j);
    return;
fail:
    job_free(j);
    sl_reply_err(r, &e);
}
