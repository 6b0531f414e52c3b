/* snapshot.c - filesystem snapshots of sandboxes: storage choice, the meta
 * file, restore, list, get, delete and images registered from snapshots
 * (layout in sl_snap.h). Capture is in capture.c.
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
#include "sl_oci.h"
#include "snap_int.h"

#define META_MAX ((size_t)1 << 20)

void sl__snap_meta_free(snap_meta *m)
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

char *sl__snap_path(sl_runner *rt, const char *id, const char *leaf)
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
                char *mnt = sl__snap_path(rt, de->d_name, "mnt");
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
        char *mnt = id_valid(de->d_name) ? sl__snap_path(rt, de->d_name, "mnt") : NULL;
        if (mnt != NULL)
            sl_erofs_umount(mnt);
        free(mnt);
    }
    closedir(d);
}

/* ---- meta file ---- */

void sl__snap_pack_meta(sl_resp *r, const snap_meta *m)
{
    sl_r_map(r, 13);
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
    sl_r_kfloat(r, "size", m->size_bytes);
}

void sl__snap_pack_info(sl_resp *r, const char *key, const snap_meta *m)
{
    sl_resp_init(r);
    sl_r_map(r, 1);
    sl_r_str(r, key);
    sl__snap_pack_meta(r, m);
}

int sl__snap_write_meta(const char *path, const snap_meta *m)
{
    sl_resp r;
    sl_resp_init(&r);
    sl__snap_pack_meta(&r, m);
    int rc = -ENOMEM;
    if (!r.failed) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) {
            rc = -errno;
        } else {
            ssize_t n = write(fd, r.sb.data, r.sb.size);
            rc = n == (ssize_t)r.sb.size ? 0 : (n < 0 ? -errno : -EIO);
            if (rc == 0 && fsync(fd) < 0)
                rc = -errno;
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
    char *path = sl__snap_path(rt, id, "meta");
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
            sl_msg_num(o, "capture_seconds", 0, 0, &m->capture_seconds, e) < 0 ||
            sl_msg_num(o, "size", 0, 0, &m->size_bytes, e) < 0) {
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
    if (rc == 0 && strcmp(m->storage, "dir") != 0 && strcmp(m->storage, "erofs") != 0 &&
        strcmp(m->storage, "vm") != 0)
        rc = sl_err_set(e, 500, "snapshot %s: unknown storage '%.32s'", id, m->storage);
    if (rc < 0)
        sl__snap_meta_free(m);
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
        if ((v[k] = sl__snap_path(rt, cur, erofs ? "mnt" : "layer")) == NULL) {
            sl__snap_meta_free(&m);
            rc = sl_err_set(e, 500, "out of memory");
            break;
        }
        if (erofs) {
            /* Mounted at the first restore after the runner started; stays
             * mounted for later ones until delete or stop. */
            char *img = sl__snap_path(rt, cur, "layer.erofs");
            rc = img == NULL ? sl_err_set(e, 500, "out of memory") : sl_erofs_mount(img, v[k], e);
            free(img);
            if (rc < 0) {
                k++;
                sl__snap_meta_free(&m);
                break;
            }
        }
        k++;
        free(cur);
        cur = m.parent;
        m.parent = NULL;
        sl__snap_meta_free(&m);
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
    if (strcmp(m.kind, "memory") == 0) {
        /* A memory checkpoint resumes a microVM: its processes come back as
         * they were, so no entry command is replayed (the request's runs). */
        if (b->image != NULL && strcmp(b->image, m.image) != 0) {
            sl_err_set(e, 400,
                       "snapshot %s is a memory checkpoint of image '%.100s'; leave image out",
                       m.id, m.image);
            goto out;
        }
        if (b->image == NULL) {
            b->image = m.image;
            m.image = NULL;
        }
        b->microvm = 1;
        if ((b->vm_restore = sl__snap_path(b->rt, m.id, NULL)) == NULL) {
            sl_err_set(e, 500, "out of memory");
            goto out;
        }
        if (b->workdir == NULL) {
            b->workdir = m.workdir;
            m.workdir = NULL;
        }
        rc = 0;
        goto out;
    }
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
    sl__snap_meta_free(&m);
    return rc;
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
        sl__snap_meta_free(&v[i]);
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
        sl__snap_pack_meta(&resp, &v[i]);
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
    sl__snap_pack_info(&resp, "snapshot", &m);
    sl__snap_meta_free(&m);
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
    sl__snap_meta_free(&m);
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
    char rnd[17], *from = sl__snap_path(rt, id, NULL), *to = NULL;
    if (from == NULL || sl_random_hex(rnd, 16) < 0 ||
        asprintf(&to, "%s/snapshots/.trash-%s", rt->state_dir, rnd) < 0) {
        free(from);
        sl_reply_error(r, 500, "out of memory");
        return;
    }
    /* No running sandbox uses it (checked above): drop the image mount, or
     * the removal below would walk into a read-only filesystem. */
    char *mnt = sl__snap_path(rt, id, "mnt");
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
    /* a pulled image: its Env and WorkingDir (images/oci_api.c) */
    int rc = sl_oci_alias_config(b, b->image, e);
    free(b->image);
    b->image = NULL;
    return rc;
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
    sl__snap_meta_free(&m);
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
    int ok = fd >= 0 && write(fd, r->p[0], len) == (ssize_t)len && fsync(fd) == 0;
    if (fd >= 0 && close(fd) < 0)
        ok = 0;
    ok = ok && sl_fsync_path(tmp) == 0;
    /* rename(2) onto a missing name: a racing registration gets EEXIST/ENOTEMPTY. */
    if (!ok || rename(tmp, final) < 0) {
        sl_err_set(&e, errno == EEXIST || errno == ENOTEMPTY ? 409 : 500,
                   "registering image '%s': %s", name, strerror(errno));
        sl_rm_rf(tmp);
        goto fail;
    }
    (void)sl_fsync_parent(final);
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
