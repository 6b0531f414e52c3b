/* snapshot.c - capture, persist, list, delete and restore filesystem
 * snapshots of sandboxes (layout in sl_snap.h).
 *
 * Two storages, chosen per runner at start (sl_snap_init) and recorded per
 * snapshot ("storage" in meta):
 *
 * "erofs" (where the kernel mounts an erofs image file; snap_erofs.c):
 *  1. `mkfs.erofs` the sandbox's overlay upper dir into one image file while
 *     the sandbox keeps running;
 *  2. freeze its cgroup and check that no entry changed since pass 1 began
 *     (ctime walk); if one did, build the image again while frozen; thaw.
 *  A restore mounts the image (once per runner, lazily) as a lower layer.
 *
 * "dir" (fallback), in two passes so the sandbox is frozen only briefly:
 *  1. `cp -a` the upper dir while the sandbox keeps running (the bulk of
 *     the data; whiteouts, opaque dirs and every xattr come along because
 *     the runner is root);
 *  2. freeze its cgroup, make the copy equal to the upper dir again by
 *     recopying only what changed since pass 1 began (snap_sync.c), thaw.
 *
 * Either way the result is the upper dir as it was at one instant, inside
 * the frozen window. Every pass runs in a child process (jobs.c), so the
 * event loop serves every other sandbox meanwhile. The request is answered
 * when the snapshot is complete and on disk; capture_seconds is the frozen
 * window.
 */
#include <dirent.h>
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
#include "sl_snap.h"

#define FREEZE_TIMEOUT 5.0
/* Holes in sparse files above which a capture is stored as a copy (mkfs.erofs
 * would write them out as zeros; snap_erofs.c). */
#define SPARSE_MAX ((long long)64 << 20)
#define EXIT_SPARSE 4 /* do_build: too sparse for an image */
#define META_MAX ((size_t)1 << 20)
#define SNAP_ID_LEN 19 /* "sn-" + 16 hex */

typedef struct snap_meta {
    char *id;
    char *kind;
    char *sandbox_id;
    char *image;
    char *workdir;
    char *parent;
    char *label;   /* caller's tag (the image builder's cache key), or NULL */
    char *storage; /* "erofs" (layer.erofs) or "dir" (layer/); "dir" if absent */
    char **cmd;
    size_t ncmd;
    sl_kv *env;
    size_t nenv;
    double created_at;
    double capture_seconds;
} snap_meta;

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

static void meta_free(snap_meta *m)
{
    free(m->id);
    free(m->kind);
    free(m->sandbox_id);
    free(m->image);
    free(m->workdir);
    free(m->parent);
    free(m->label);
    free(m->storage);
    sl_strv_free(m->cmd, m->ncmd);
    sl_kv_free(m->env, m->nenv, 0);
    memset(m, 0, sizeof(*m));
}

static char *snap_dir(sl_runner *rt)
{
    return sl_path_join(rt->state_dir, "snapshots");
}

static char *snap_path(sl_runner *rt, const char *id, const char *leaf)
{
    char *p = NULL;
    if (asprintf(&p, "%s/snapshots/%s%s%s", rt->state_dir, id, leaf ? "/" : "", leaf ? leaf : "") <
        0)
        return NULL;
    return p;
}

/* "sn-" and 16 lowercase hex digits: the only ids we ever hand out, so the
 * id can be put into a path safely. */
static int id_valid(const char *id)
{
    if (id == NULL || strlen(id) != SNAP_ID_LEN || strncmp(id, "sn-", 3) != 0)
        return 0;
    for (const char *p = id + 3; *p; p++) {
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return 0;
    }
    return 1;
}

/* Resolve rt->snap_storage: erofs where this host can build and mount an
 * image file (asked for or auto), the copy path otherwise. */
static int pick_storage(sl_runner *rt, const char *dir)
{
    if (rt->snap_storage == SL_SNAP_STORAGE_DIR) {
        sl_info("snapshots: stored as directory copies (--snapshot-storage dir)");
        return 0;
    }
    char rnd[17], *scratch = NULL, why[300] = "";
    /* A .tmp- name: swept at the next start if this runner dies here. */
    if (sl_random_hex(rnd, 16) < 0 || asprintf(&scratch, "%s/.tmp-probe-%s", dir, rnd) < 0) {
        sl_error("out of memory");
        return -1;
    }
    int ok = sl_erofs_probe(scratch, why, sizeof(why));
    free(scratch);
    if (ok) {
        rt->snap_storage = SL_SNAP_STORAGE_EROFS;
        sl_info("snapshots: stored as erofs images");
        return 0;
    }
    if (rt->snap_storage == SL_SNAP_STORAGE_EROFS) {
        sl_error("--snapshot-storage erofs: not usable on this host: %s", why);
        return -1;
    }
    rt->snap_storage = SL_SNAP_STORAGE_DIR;
    sl_warn("snapshots: stored as directory copies (slower capture): erofs unusable: %s", why);
    return 0;
}

int sl_snap_init(sl_runner *rt)
{
    char *dir = snap_dir(rt);
    if (dir == NULL)
        return -1;
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        sl_error("mkdir %s: %s", dir, strerror(errno));
        free(dir);
        return -1;
    }
    /* Captures that were in flight when a previous runner died, and image
     * mounts it left (a restore mounts them again when needed). */
    DIR *d = opendir(dir);
    if (d != NULL) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (id_valid(de->d_name)) {
                char *mnt = snap_path(rt, de->d_name, "mnt");
                if (mnt != NULL)
                    sl_erofs_umount(mnt);
                free(mnt);
                continue;
            }
            if (strncmp(de->d_name, ".tmp-", 5) != 0 && strncmp(de->d_name, ".trash-", 7) != 0)
                continue;
            char *p = sl_path_join(dir, de->d_name);
            if (p != NULL) {
                sl_info("removing leftover %s", p);
                int rc = sl_rm_rf(p);
                if (rc < 0)
                    sl_warn("removing %s: %s", p, strerror(-rc));
            }
            free(p);
        }
        closedir(d);
    }
    int rc = pick_storage(rt, dir);
    free(dir);
    return rc;
}

void sl_snap_shutdown(sl_runner *rt)
{
    char *dir = snap_dir(rt);
    DIR *d = dir != NULL ? opendir(dir) : NULL;
    free(dir);
    if (d == NULL)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        char *mnt = id_valid(de->d_name) ? snap_path(rt, de->d_name, "mnt") : NULL;
        if (mnt != NULL)
            sl_erofs_umount(mnt);
        free(mnt);
    }
    closedir(d);
}

/* ---- meta file ---- */

static void pack_meta(sl_resp *r, const snap_meta *m)
{
    sl_r_map(r, 12);
    sl_r_kstr(r, "snapshot_id", m->id);
    sl_r_kstr(r, "kind", m->kind);
    sl_r_kstr(r, "storage", m->storage);
    sl_r_kstr(r, "sandbox_id", m->sandbox_id);
    sl_r_kstr(r, "image", m->image);
    sl_r_kstr(r, "workdir", m->workdir);
    sl_r_kstr(r, "parent", m->parent);
    sl_r_kstr(r, "label", m->label);
    sl_r_str(r, "cmd");
    if (m->cmd == NULL) {
        sl_r_nil(r);
    } else {
        sl_r_arr(r, m->ncmd);
        for (size_t i = 0; i < m->ncmd; i++)
            sl_r_str(r, m->cmd[i]);
    }
    sl_r_str(r, "env");
    sl_r_map(r, m->nenv);
    for (size_t i = 0; i < m->nenv; i++) {
        sl_r_str(r, m->env[i].k);
        sl_r_str(r, m->env[i].v);
    }
    sl_r_kfloat(r, "created_at", m->created_at);
    sl_r_kfloat(r, "capture_seconds", m->capture_seconds);
}

static int write_meta(const char *path, const snap_meta *m)
{
    sl_resp r;
    sl_resp_init(&r);
    pack_meta(&r, m);
    int rc = -ENOMEM;
    if (!r.failed) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) {
            rc = -errno;
        } else {
            ssize_t n = write(fd, r.sb.data, r.sb.size);
            rc = n == (ssize_t)r.sb.size ? 0 : (n < 0 ? -errno : -EIO);
            if (close(fd) < 0 && rc == 0)
                rc = -errno;
        }
    }
    sl_resp_destroy(&r);
    return rc;
}

/* Load <snapdir>/<id>/meta. 404 for an id that is not (or no longer) there. */
static int read_meta(sl_runner *rt, const char *id, snap_meta *m, sl_err *e)
{
    memset(m, 0, sizeof(*m));
    if (!id_valid(id))
        return sl_err_set(e, 404, "snapshot '%.64s' not found (snapshot ids look like sn-<16 hex>)",
                          id ? id : "");
    char *path = snap_path(rt, id, "meta");
    if (path == NULL)
        return sl_err_set(e, 500, "out of memory");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        free(path);
        if (err == ENOENT)
            return sl_err_set(e, 404, "snapshot '%s' not found (never created, or deleted)", id);
        return sl_err_set(e, 500, "open meta of snapshot %s: %s", id, strerror(err));
    }
    free(path);
    char *buf = malloc(META_MAX);
    if (buf == NULL) {
        close(fd);
        return sl_err_set(e, 500, "out of memory");
    }
    size_t len = 0;
    ssize_t n;
    while (len < META_MAX && (n = read(fd, buf + len, META_MAX - len)) > 0)
        len += (size_t)n;
    close(fd);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    int rc = 0;
    if (msgpack_unpack_next(&up, buf, len, NULL) != MSGPACK_UNPACK_SUCCESS ||
        up.data.type != MSGPACK_OBJECT_MAP) {
        rc = sl_err_set(e, 500, "snapshot %s: meta file is corrupt", id);
    } else {
        const msgpack_object *o = &up.data;
        const msgpack_object *cmd = sl_msg_field(o, "cmd");
        if (sl_msg_str(o, "snapshot_id", SL_REQ, &m->id, e) < 0 ||
            sl_msg_str(o, "kind", SL_REQ, &m->kind, e) < 0 ||
            sl_msg_str(o, "sandbox_id", 0, &m->sandbox_id, e) < 0 ||
            sl_msg_str(o, "image", SL_REQ, &m->image, e) < 0 ||
            sl_msg_str(o, "workdir", 0, &m->workdir, e) < 0 ||
            sl_msg_str(o, "parent", 0, &m->parent, e) < 0 ||
            sl_msg_str(o, "label", 0, &m->label, e) < 0 ||
            sl_msg_str(o, "storage", 0, &m->storage, e) < 0 ||
            (cmd != NULL && cmd->type == MSGPACK_OBJECT_ARRAY &&
             sl_msg_strv(o, "cmd", 0, &m->cmd, &m->ncmd, e) < 0) ||
            sl_msg_kvmap(o, "env", &m->env, &m->nenv, e) < 0 ||
            sl_msg_num(o, "created_at", 0, 0, &m->created_at, e) < 0 ||
            sl_msg_num(o, "capture_seconds", 0, 0, &m->capture_seconds, e) < 0) {
            char why[400];
            snprintf(why, sizeof(why), "%.250s", e->msg);
            rc = sl_err_set(e, 500, "snapshot %s: meta file: %s", id, why);
        }
    }
    msgpack_unpacked_destroy(&up);
    free(buf);
    /* Snapshots from before erofs storage are copies. */
    if (rc == 0 && m->storage == NULL && (m->storage = strdup("dir")) == NULL)
        rc = sl_err_set(e, 500, "out of memory");
    if (rc == 0 && strcmp(m->storage, "dir") != 0 && strcmp(m->storage, "erofs") != 0)
        rc = sl_err_set(e, 500, "snapshot %s: unknown storage '%.32s'", id, m->storage);
    if (rc < 0)
        meta_free(m);
    return rc;
}

/* ---- restore ---- */

int sl_snap_layers(sl_runner *rt, const char *id, char ***layers, size_t *n, sl_err *e)
{
    *layers = NULL;
    *n = 0;
    char **v = calloc(SL_SNAP_MAX_DEPTH + 1, sizeof(*v));
    if (v == NULL)
        return sl_err_set(e, 500, "out of memory");
    char *cur = strdup(id);
    int rc = cur == NULL ? sl_err_set(e, 500, "out of memory") : 0;
    size_t k = 0;
    while (rc == 0 && cur != NULL) {
        snap_meta m;
        if (k == SL_SNAP_MAX_DEPTH) {
            rc = sl_err_set(e, 400, "snapshot %s stacks more than %d snapshots", id,
                            SL_SNAP_MAX_DEPTH);
            break;
        }
        if (read_meta(rt, cur, &m, e) < 0) {
            if (e->status == 404 && strcmp(cur, id) != 0) {
                char why[300];
                snprintf(why, sizeof(why), "%.250s", e->msg);
                sl_err_set(e, 500, "snapshot %s: its parent is missing: %s", id, why);
            }
            rc = -1;
            break;
        }
        int erofs = strcmp(m.storage, "erofs") == 0;
        if ((v[k] = snap_path(rt, cur, erofs ? "mnt" : "layer")) == NULL) {
            meta_free(&m);
            rc = sl_err_set(e, 500, "out of memory");
            break;
        }
        if (erofs) {
            /* Mounted at the first restore after the runner started; stays
             * mounted for later ones until delete or stop. */
            char *img = snap_path(rt, cur, "layer.erofs");
            rc = img == NULL ? sl_err_set(e, 500, "out of memory") : sl_erofs_mount(img, v[k], e);
            free(img);
            if (rc < 0) {
                k++;
                meta_free(&m);
                break;
            }
        }
        k++;
        free(cur);
        cur = m.parent;
        m.parent = NULL;
        meta_free(&m);
    }
    free(cur);
    if (rc < 0) {
        sl_strv_free(v, k);
        return -1;
    }
    *layers = v;
    *n = k;
    return 0;
}

int sl_snap_apply(sl_box *b, sl_err *e)
{
    snap_meta m;
    if (read_meta(b->rt, b->snapshot, &m, e) < 0)
        return -1;
    int rc = -1;
    if (b->image == NULL) {
        b->image = m.image;
        m.image = NULL;
    } else if (strcmp(b->image, m.image) != 0) {
        sl_err_set(e, 400,
                   "snapshot %s was taken on image '%.100s'; it cannot be restored on image "
                   "'%.100s' (leave image out)",
                   m.id, m.image, b->image);
        goto out;
    }
    if (b->workdir == NULL) {
        b->workdir = m.workdir;
        m.workdir = NULL;
    }
    if (b->cmd == NULL && m.cmd != NULL) {
        b->cmd = m.cmd;
        b->ncmd = m.ncmd;
        m.cmd = NULL;
        m.ncmd = 0;
    }
    /* env: the snapshot's, then the request's on top. */
    if (m.nenv > 0) {
        sl_kv *kv = calloc(m.nenv + b->nenv, sizeof(*kv));
        if (kv == NULL) {
            sl_err_set(e, 500, "out of memory");
            goto out;
        }
        size_t n = 0;
        for (size_t i = 0; i < m.nenv; i++) {
            int overridden = 0;
            for (size_t j = 0; j < b->nenv && !overridden; j++)
                overridden = strcmp(b->env[j].k, m.env[i].k) == 0;
            if (overridden)
                continue;
            kv[n++] = m.env[i];
            m.env[i].k = m.env[i].v = NULL;
        }
        for (size_t j = 0; j < b->nenv; j++)
            kv[n++] = b->env[j];
        free(b->env);
        b->env = kv;
        b->nenv = n;
    }
    rc = 0;
out:
    meta_free(&m);
    return rc;
}

/* ---- capture ---- */

static void pack_info(sl_resp *r, const char *key, const snap_meta *m)
{
    sl_resp_init(r);
    sl_r_map(r, 1);
    sl_r_str(r, key);
    pack_meta(r, m);
}

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
    meta_free(&j->meta);
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
            pack_info(&resp, "snapshot", &j->meta);
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
        int rc = meta == NULL ? -ENOMEM : write_meta(meta, &j->meta);
        free(meta);
        if (rc < 0)
            snprintf(why, sizeof(why), "writing meta: %s", strerror(-rc));
        else if (rename(j->tmp, j->final) < 0)
            snprintf(why, sizeof(why), "rename %s: %s", j->final, strerror(errno));
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

static int fill_meta(snap_job *j, const sl_box *b, sl_err *e)
{
    snap_meta *m = &j->meta;
    m->created_at = sl_now();
    int erofs = j->rt->snap_storage == SL_SNAP_STORAGE_EROFS;
    if ((m->id = strdup(j->id)) == NULL || (m->kind = strdup("filesystem")) == NULL ||
        (m->storage = strdup(erofs ? "erofs" : "dir")) == NULL ||
        (m->sandbox_id = strdup(b->id)) == NULL || (m->image = strdup(b->image)) == NULL ||
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
    if (j->tmp == NULL || (j->final = snap_path(rt, j->id, NULL)) == NULL ||
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

/* ---- list, get, delete ---- */

static char *alias_target(sl_runner *rt, const char *name);

static int cmp_created(const void *a, const void *b)
{
    const snap_meta *x = a, *y = b;
    return x->created_at < y->created_at ? -1 : x->created_at > y->created_at;
}

/* Every readable snapshot, oldest first. */
static int load_all(sl_runner *rt, snap_meta **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    char *dir = snap_dir(rt);
    DIR *d = dir != NULL ? opendir(dir) : NULL;
    free(dir);
    if (d == NULL)
        return -errno;
    size_t cap = 0;
    snap_meta *v = NULL;
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d)) != NULL) {
        if (!id_valid(de->d_name))
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            snap_meta *nv = realloc(v, cap * sizeof(*nv));
            if (nv == NULL) {
                rc = -ENOMEM;
                break;
            }
            v = nv;
        }
        sl_err e;
        if (read_meta(rt, de->d_name, &v[*n], &e) < 0) {
            sl_warn("%s", e.msg);
            continue;
        }
        (*n)++;
    }
    closedir(d);
    if (*n > 1)
        qsort(v, *n, sizeof(*v), cmp_created);
    *out = v;
    return rc;
}

static void free_all(snap_meta *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        meta_free(&v[i]);
    free(v);
}

void sl_h_snapshots(sl_req *r)
{
    snap_meta *v;
    size_t n;
    int rc = load_all(r->rt, &v, &n);
    if (rc < 0) {
        free_all(v, n);
        sl_reply_error(r, 500, "listing snapshots: %s", strerror(-rc));
        return;
    }
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 1);
    sl_r_str(&resp, "snapshots");
    sl_r_arr(&resp, n);
    for (size_t i = 0; i < n; i++)
        pack_meta(&resp, &v[i]);
    free_all(v, n);
    sl_reply(r, 200, &resp);
}

void sl_h_snapshot_get(sl_req *r)
{
    snap_meta m;
    sl_err e;
    if (read_meta(r->rt, r->p[0], &m, &e) < 0) {
        sl_reply_err(r, &e);
        return;
    }
    sl_resp resp;
    pack_info(&resp, "snapshot", &m);
    meta_free(&m);
    sl_reply(r, 200, &resp);
}

void sl_h_snapshot_delete(sl_req *r)
{
    sl_runner *rt = r->rt;
    const char *id = r->p[0];
    snap_meta m;
    sl_err e;
    if (read_meta(rt, id, &m, &e) < 0) {
        sl_reply_err(r, &e);
        return;
    }
    meta_free(&m);
    for (sl_box *b = rt->first; b != NULL; b = b->next) {
        /* A killed sandbox's root goes away with its init: not a user. */
        if (b->alive && !b->killed && b->snapshot != NULL && strcmp(b->snapshot, id) == 0) {
            sl_reply_error(r, 409, "snapshot %s is in use by sandbox %s", id, b->id);
            return;
        }
    }
    snap_meta *v;
    size_t n;
    if (load_all(rt, &v, &n) < 0) {
        free_all(v, n);
        sl_reply_error(r, 500, "listing snapshots failed");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (v[i].parent != NULL && strcmp(v[i].parent, id) == 0) {
            sl_reply_error(r, 409, "snapshot %s is the parent of snapshot %s; delete that first",
                           id, v[i].id);
            free_all(v, n);
            return;
        }
    }
    free_all(v, n);
    /* An image registered from it (<images>/<name>/snapshot) would dangle. */
    DIR *d = opendir(rt->images_dir);
    if (d != NULL) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (!sl_name_valid(de->d_name))
                continue;
            char *target = alias_target(rt, de->d_name);
            int uses = target != NULL && strcmp(target, id) == 0;
            free(target);
            if (uses) {
                sl_reply_error(r, 409, "snapshot %s is registered as image '%s'; delete that first",
                               id, de->d_name);
                closedir(d);
                return;
            }
        }
        closedir(d);
    }
    char rnd[17], *from = snap_path(rt, id, NULL), *to = NULL;
    if (from == NULL || sl_random_hex(rnd, 16) < 0 ||
        asprintf(&to, "%s/snapshots/.trash-%s", rt->state_dir, rnd) < 0) {
        free(from);
        sl_reply_error(r, 500, "out of memory");
        return;
    }
    /* No running sandbox uses it (checked above): drop the image mount, or
     * the removal below would walk into a read-only filesystem. */
    char *mnt = snap_path(rt, id, "mnt");
    if (mnt != NULL)
        sl_erofs_umount(mnt);
    free(mnt);
    if (rename(from, to) < 0) {
        sl_reply_error(r, 500, "rename %s: %s", from, strerror(errno));
    } else {
        if (sl_job_rm(rt, to) < 0)
            sl_warn("cannot start removal of %s", to);
        sl_info("snapshot %s deleted", id);
        sl_resp resp;
        sl_resp_init(&resp);
        sl_r_map(&resp, 0);
        sl_reply(r, 200, &resp);
    }
    free(from);
    free(to);
}

/* ---- images registered from snapshots ---- */

/* The snapshot id an alias image names, or NULL (not an alias / unreadable). */
static char *alias_target(sl_runner *rt, const char *name)
{
    char *p = NULL, buf[64];
    if (asprintf(&p, "%s/%s/snapshot", rt->images_dir, name) < 0)
        return NULL;
    int fd = open(p, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    free(p);
    if (fd < 0)
        return NULL;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return NULL;
    buf[n] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
    return id_valid(buf) ? strdup(buf) : NULL;
}

int sl_snap_alias(sl_box *b, sl_err *e)
{
    if (!sl_name_valid(b->image) || strcmp(b->image, "host") == 0)
        return 0;
    char *id = alias_target(b->rt, b->image);
    if (id == NULL)
        return 0;
    if (b->snapshot != NULL) {
        free(id);
        return sl_err_set(e, 400,
                          "image '%.64s' is built from snapshot layers; start it without "
                          "'snapshot'",
                          b->image);
    }
    b->snapshot = id;
    free(b->image);
    b->image = NULL;
    return 0;
}

void sl_h_snapshot_register(sl_req *r)
{
    sl_runner *rt = r->rt;
    snap_meta m;
    sl_err e;
    char *name = NULL, *tmp = NULL, *file = NULL, *final = NULL;
    if (read_meta(rt, r->p[0], &m, &e) < 0) {
        sl_reply_err(r, &e);
        return;
    }
    meta_free(&m);
    if (sl_msg_str(r->body, "name", SL_REQ, &name, &e) < 0)
        goto fail;
    if (!sl_name_valid(name) || strcmp(name, "host") == 0) {
        sl_err_set(&e, 400, "image name '%.64s' must match [A-Za-z0-9][A-Za-z0-9_.-]{0,62}", name);
        goto fail;
    }
    char rnd[9];
    if (sl_random_hex(rnd, 8) < 0 ||
        asprintf(&tmp, "%s/.tmp-%s-%s", rt->images_dir, name, rnd) < 0) {
        tmp = NULL;
        sl_err_set(&e, 500, "out of memory");
        goto fail;
    }
    if ((file = sl_path_join(tmp, "snapshot")) == NULL ||
        (final = sl_path_join(rt->images_dir, name)) == NULL) {
        sl_err_set(&e, 500, "out of memory");
        goto fail;
    }
    if (access(final, F_OK) == 0) {
        sl_err_set(&e, 409, "image '%s' already exists", name);
        goto fail;
    }
    if (mkdir(tmp, 0755) < 0) {
        sl_err_set(&e, 500, "mkdir %s: %s", tmp, strerror(errno));
        goto fail;
    }
    int fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    size_t len = strlen(r->p[0]);
    int ok = fd >= 0 && write(fd, r->p[0], len) == (ssize_t)len;
    if (fd >= 0 && close(fd) < 0)
        ok = 0;
    /* rename(2) onto a missing name: a racing registration gets EEXIST/ENOTEMPTY. */
    if (!ok || rename(tmp, final) < 0) {
        sl_err_set(&e, errno == EEXIST || errno == ENOTEMPTY ? 409 : 500,
                   "registering image '%s': %s", name, strerror(errno));
        sl_rm_rf(tmp);
        goto fail;
    }
    sl_info("image %s registered from snapshot %s", name, r->p[0]);
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 1);
    sl_r_str(&resp, "image");
    sl_r_map(&resp, 2);
    sl_r_kstr(&resp, "name", name);
    sl_r_kstr(&resp, "snapshot_id", r->p[0]);
    sl_reply(r, 201, &resp);
    goto done;
fail:
    sl_reply_err(r, &e);
done:
    free(name);
    free(tmp);
    free(file);
    free(final);
}
