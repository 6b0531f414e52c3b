/* store.c - images and volumes under the state dir.
 *
 *   <state>/images/<name>/rootfs   registered images (copied from a source dir)
 *   <state>/volumes/<name>         volumes, bind-mounted into sandboxes
 *   <state>/sandboxes/<id>         per-sandbox dirs (lifecycle.c)
 *
 * Names match [A-Za-z0-9][A-Za-z0-9_.-]{0,62}, so they never start with a dot:
 * ".tmp-*" (copies in flight) and ".trash-*" (deletions in flight) cannot
 * collide with them. Copies and deletions run in child processes (jobs.c) so
 * the event loop never waits on a large tree.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sl_log.h"
#include "sl_runner.h"
#include "sl_snap.h"

static const char name_rule[] = "[A-Za-z0-9][A-Za-z0-9_.-]{0,62}";

/* Creation time: the birth time where the filesystem records one. */
static double created_at(const char *path)
{
    struct statx stx;
    if (statx(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW, STATX_BTIME | STATX_MTIME, &stx) == 0) {
        if (stx.stx_mask & STATX_BTIME)
            return (double)stx.stx_btime.tv_sec + stx.stx_btime.tv_nsec / 1e9;
        return (double)stx.stx_mtime.tv_sec + stx.stx_mtime.tv_nsec / 1e9;
    }
    return 0;
}

static int is_dir(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of the entries of dir that pass keep(). */
static int list_names(sl_runner *rt, const char *dir, int (*keep)(sl_runner *, const char *),
                      char ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (d == NULL)
        return -errno;
    size_t cap = 0;
    char **v = NULL;
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d)) != NULL) {
        if (!sl_name_valid(de->d_name) || !keep(rt, de->d_name))
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            char **nv = realloc(v, cap * sizeof(*nv));
            if (nv == NULL) {
                rc = -ENOMEM;
                break;
            }
            v = nv;
        }
        if ((v[*n] = strdup(de->d_name)) == NULL) {
            rc = -ENOMEM;
            break;
        }
        (*n)++;
    }
    closedir(d);
    if (rc < 0) {
        sl_strv_free(v, *n);
        *n = 0;
        return rc;
    }
    if (*n > 0)
        qsort(v, *n, sizeof(*v), cmp_str);
    *out = v;
    return 0;
}

/* ---- startup ---- */

static int make_dir(const char *path)
{
    if (mkdir(path, 0700) < 0 && errno != EEXIST) {
        sl_error("mkdir %s: %s", path, strerror(errno));
        return -1;
    }
    if (!is_dir(path)) {
        sl_error("%s is not a directory", path);
        return -1;
    }
    return 0;
}

/* Remove the ".tmp-*"/".trash-*" leftovers of copies and deletions a
 * previous runner had in flight (sandbox dirs: sweep.c). */
static void sweep(const char *dir, int only_dot)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (only_dot && de->d_name[0] != '.')
            continue;
        char *p = sl_path_join(dir, de->d_name);
        if (p == NULL)
            continue;
        sl_info("removing leftover %s", p);
        /* A sandbox dir of a crashed runner may still carry its disk-limit
         * tmpfs (limits.c); detach it or its RAM stays pinned until reboot.
         * EINVAL (not a mount point) is the normal case. */
        if (umount2(p, MNT_DETACH) == 0)
            sl_info("detached leftover mount %s", p);
        int rc = sl_rm_rf(p);
        if (rc < 0)
            sl_warn("removing %s: %s", p, strerror(-rc));
        free(p);
    }
    closedir(d);
}

int sl_store_init(sl_runner *rt)
{
    int rc = sl_mkdir_p(rt->state_dir, 0700);
    if (rc < 0) {
        sl_error("mkdir %s: %s", rt->state_dir, strerror(-rc));
        return -1;
    }
    struct stat st;
    if (stat(rt->state_dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        sl_error("state dir %s is not a directory", rt->state_dir);
        return -1;
    }
    if (st.st_mode & 022) {
        sl_error("state dir %s is group/world writable (mode %04o)", rt->state_dir,
                 (unsigned)(st.st_mode & 07777));
        return -1;
    }
    char *lock = sl_path_join(rt->state_dir, "lock");
    if (lock == NULL)
        return -1;
    rt->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (rt->lock_fd < 0) {
        sl_error("open %s: %s", lock, strerror(errno));
        free(lock);
        return -1;
    }
    if (flock(rt->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        sl_error("state dir %s is in use by another sandlotd (%s is locked)", rt->state_dir, lock);
        free(lock);
        return -1;
    }
    free(lock);
    rt->images_dir = sl_path_join(rt->state_dir, "images");
    rt->volumes_dir = sl_path_join(rt->state_dir, "volumes");
    rt->sandboxes_dir = sl_path_join(rt->state_dir, "sandboxes");
    if (rt->images_dir == NULL || rt->volumes_dir == NULL || rt->sandboxes_dir == NULL)
        return -1;
    if (make_dir(rt->images_dir) < 0 || make_dir(rt->volumes_dir) < 0 ||
        make_dir(rt->sandboxes_dir) < 0)
        return -1;
    sl_sweep_sandboxes(rt);
    sweep(rt->images_dir, 1);
    sweep(rt->volumes_dir, 1);
    return sl_snap_init(rt);
}

/* ---- images ---- */

static char *image_dir(sl_runner *rt, const char *name)
{
    return sl_path_join(rt->images_dir, name);
}

static int image_ok(sl_runner *rt, const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s/rootfs", rt->images_dir, name) < 0)
        return 0;
    int ok = is_dir(p);
    free(p);
    /* Or an image registered from a snapshot (snapshot.c): a file naming it. */
    struct stat st;
    if (!ok && asprintf(&p, "%s/%s/snapshot", rt->images_dir, name) >= 0) {
        ok = lstat(p, &st) == 0 && S_ISREG(st.st_mode);
        free(p);
    }
    return ok;
}

int sl_store_rootfs(sl_runner *rt, const char *image, char **rootfs, sl_err *e)
{
    *rootfs = NULL;
    if (image == NULL || strcmp(image, "host") == 0) {
        *rootfs = strdup("/");
    } else if (strncmp(image, "dir:", 4) == 0) {
        const char *path = image + 4;
        if (path[0] != '/')
            return sl_err_set(e, 400, "image '%.200s': the path after 'dir:' must be absolute",
                              image);
        /* overlayfs option syntax uses ',' ':' and '\\'; refuse rather than
         * guess at escaping. */
        if (strpbrk(path, ",:\\") != NULL)
            return sl_err_set(e, 400, "image '%.200s': the path must not contain ',', ':' or '\\'",
                              image);
        struct stat st;
        if (stat(path, &st) < 0)
            return sl_err_set(e, 400, "image '%.200s': %s: %s", image, path, strerror(errno));
        if (!S_ISDIR(st.st_mode))
            return sl_err_set(e, 400, "image '%.200s': %s is not a directory", image, path);
        *rootfs = strdup(path);
    } else {
        if (sl_name_valid(image) && image_ok(rt, image)) {
            if (asprintf(rootfs, "%s/%s/rootfs", rt->images_dir, image) < 0)
                *rootfs = NULL;
        } else {
            char **names;
            size_t n;
            char list[256] = "";
            if (list_names(rt, rt->images_dir, image_ok, &names, &n) == 0) {
                size_t used = 0;
                for (size_t i = 0; i < n && used < sizeof(list) - 8; i++) {
                    int k =
                        snprintf(list + used, sizeof(list) - used, "%s%s", i ? ", " : "", names[i]);
                    if (k < 0 || (size_t)k >= sizeof(list) - used) {
                        snprintf(list + used, sizeof(list) - used, ", ...");
                        break;
                    }
                    used += (size_t)k;
                }
                sl_strv_free(names, n);
            }
            return sl_err_set(e, 404,
                              "image '%.100s' not found; registered images: %s (or use 'host' or "
                              "'dir:/abs/path')",
                              image, list[0] ? list : "none");
        }
    }
    if (*rootfs == NULL)
        return sl_err_set(e, 500, "out of memory");
    return 0;
}

static void pack_item(sl_resp *resp, const char *name, double at)
{
    sl_r_map(resp, 2);
    sl_r_kstr(resp, "name", name);
    sl_r_kfloat(resp, "created_at", at);
}

static void reply_list(sl_req *r, const char *key, const char *dir,
                       int (*keep)(sl_runner *, const char *))
{
    char **names;
    size_t n;
    int rc = list_names(r->rt, dir, keep, &names, &n);
    if (rc < 0) {
        sl_reply_error(r, 500, "listing %s: %s", dir, strerror(-rc));
        return;
    }
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 1);
    sl_r_str(&resp, key);
    sl_r_arr(&resp, n);
    for (size_t i = 0; i < n; i++) {
        char *p = sl_path_join(dir, names[i]);
        pack_item(&resp, names[i], p != NULL ? created_at(p) : 0);
        free(p);
    }
    sl_strv_free(names, n);
    sl_reply(r, 200, &resp);
}

void sl_h_images(sl_req *r)
{
    reply_list(r, "images", r->rt->images_dir, image_ok);
}

static sl_copy *find_copy(sl_runner *rt, const char *name)
{
    for (sl_copy *c = rt->copies; c != NULL; c = c->next) {
        if (strcmp(c->name, name) == 0)
            return c;
    }
    return NULL;
}

static void free_copy(sl_runner *rt, sl_copy *c)
{
    for (sl_copy **pp = &rt->copies; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    free(c->tmp);
    free(c);
}

static void on_copy_synced(sl_runner *rt, void *arg, int status, const char *err);

/* cp finished: fsync the copy (in a child) before it gets its name. */
static void on_copy_done(sl_runner *rt, void *arg, int status, const char *err)
{
    sl_copy *c = arg;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
        sl_job_fsync_tree(rt, c->tmp, on_copy_synced, c) == 0)
        return;
    on_copy_synced(rt, arg, status, err);
}

static void on_copy_synced(sl_runner *rt, void *arg, int status, const char *err)
{
    sl_copy *c = arg;
    char *final = image_dir(rt, c->name);
    int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (ok)
        sl_fault("image-synced");
    if (ok && final != NULL && rename(c->tmp, final) == 0) {
        (void)sl_fsync_parent(final);
        /* created_at is when the image became usable. */
        utimensat(AT_FDCWD, final, NULL, 0);
        sl_info("image %s registered", c->name);
        if (c->hold != NULL) {
            sl_resp resp;
            sl_resp_init(&resp);
            sl_r_map(&resp, 1);
            sl_r_str(&resp, "image");
            pack_item(&resp, c->name, created_at(final));
            sl_hold_reply(c->hold, 201, &resp);
        }
    } else {
        char why[300];
        if (!ok)
            snprintf(why, sizeof(why), "cp %s %d: %.200s",
                     WIFSIGNALED(status) ? "killed by signal" : "exited with status",
                     WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status),
                     err != NULL ? err : "");
        else
            snprintf(why, sizeof(why), "rename to %s: %s", final ? final : "?", strerror(errno));
        sl_warn("image %s: copy failed: %s", c->name, why);
        if (c->hold != NULL)
            sl_hold_error(c->hold, rt->shutting_down ? 503 : 500, "copying the image failed: %s",
                          why);
        sl_job_rm(rt, c->tmp);
    }
    free(final);
    free_copy(rt, c);
}

void sl_h_image_add(sl_req *r)
{
    sl_runner *rt = r->rt;
    sl_err e;
    char *name = NULL, *source = NULL, *dst = NULL;
    sl_copy *c = NULL;
    if (sl_msg_str(r->body, "name", SL_REQ, &name, &e) < 0 ||
        sl_msg_str(r->body, "source", SL_REQ, &source, &e) < 0)
        goto fail;
    if (!sl_name_valid(name)) {
        sl_err_set(&e, 400, "image name '%.64s' must match %s", name, name_rule);
        goto fail;
    }
    if (strcmp(name, "host") == 0) {
        sl_err_set(&e, 400, "'host' is reserved for the host's root filesystem");
        goto fail;
    }
    if (source[0] != '/') {
        sl_err_set(&e, 400, "field 'source' must be an absolute path, got '%.200s'", source);
        goto fail;
    }
    struct stat st;
    if (stat(source, &st) < 0 || !S_ISDIR(st.st_mode)) {
        sl_err_set(&e, 400, "source %.200s is not a directory", source);
        goto fail;
    }
    char *existing = image_dir(rt, name);
    int exists = existing == NULL || access(existing, F_OK) == 0;
    free(existing);
    if (exists || find_copy(rt, name) != NULL) {
        sl_err_set(&e, 409, "image '%s' already exists", name);
        goto fail;
    }
    c = calloc(1, sizeof(*c));
    char rnd[9], *tmp = NULL;
    if (c == NULL || sl_random_hex(rnd, 8) < 0 ||
        asprintf(&tmp, "%s/.tmp-%s-%s", rt->images_dir, name, rnd) < 0) {
        sl_err_set(&e, 500, "out of memory");
        goto fail;
    }
    c->tmp = tmp;
    if (asprintf(&dst, "%s/rootfs", c->tmp) < 0) {
        dst = NULL;
        sl_err_set(&e, 500, "out of memory");
        goto fail;
    }
    snprintf(c->name, sizeof(c->name), "%s", name);
    if (mkdir(c->tmp, 0755) < 0) {
        sl_err_set(&e, 500, "mkdir %s: %s", c->tmp, strerror(errno));
        goto fail;
    }
    char *argv[] = {"cp", "-a", "--reflink=auto", "--", source, dst, NULL};
    if (sl_job_run(rt, argv, on_copy_done, c) < 0) {
        rmdir(c->tmp);
        sl_err_set(&e, 500, "cannot start cp: %s", strerror(errno));
        goto fail;
    }
    c->next = rt->copies;
    rt->copies = c;
    sl_info("image %s: copying %s", name, source);
    /* No timeout: a large tree takes as long as it takes. */
    sl_hold_new(r, &c->hold, -1, NULL, c);
    c = NULL;
    goto done;
fail:
    sl_reply_err(r, &e);
done:
    if (c != NULL) {
        free(c->tmp);
        free(c);
    }
    free(dst);
    free(name);
    free(source);
}

/* Rename dir/name aside and remove it in the background. */
static int trash(sl_runner *rt, const char *dir, const char *name, sl_err *e)
{
    char rnd[17];
    char *from = sl_path_join(dir, name), *to = NULL;
    int rc = -1;
    if (from == NULL || sl_random_hex(rnd, 16) < 0 || asprintf(&to, "%s/.trash-%s", dir, rnd) < 0) {
        to = NULL;
        sl_err_set(e, 500, "out of memory");
        goto out;
    }
    if (rename(from, to) < 0) {
        sl_err_set(e, 500, "rename %s: %s", from, strerror(errno));
        goto out;
    }
    if (sl_job_rm(rt, to) < 0)
        sl_warn("cannot start removal of %s", to);
    rc = 0;
out:
    free(from);
    free(to);
    return rc;
}

static void reply_empty(sl_req *r)
{
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 0);
    sl_reply(r, 200, &resp);
}

void sl_h_image_delete(sl_req *r)
{
    sl_runner *rt = r->rt;
    const char *name = r->p[0];
    sl_err e;
    if (!sl_name_valid(name) || !image_ok(rt, name)) {
        sl_reply_error(r, 404, "image '%.64s' not found", name);
        return;
    }
    for (sl_box *b = rt->first; b != NULL; b = b->next) {
        if (b->alive && strcmp(b->image, name) == 0) {
            sl_reply_error(r, 409, "image '%s' is in use by sandbox %s", name, b->id);
            return;
        }
    }
    if (trash(rt, rt->images_dir, name, &e) < 0) {
        sl_reply_err(r, &e);
        return;
    }
    sl_info("image %s deleted", name);
    reply_empty(r);
}

/* ---- volumes ---- */

static int volume_ok(sl_runner *rt, const char *name)
{
    char *p = sl_path_join(rt->volumes_dir, name);
    int ok = p != NULL && is_dir(p);
    free(p);
    return ok;
}

int sl_store_volume(sl_runner *rt, const char *name, char **path, sl_err *e)
{
    *path = NULL;
    if (!sl_name_valid(name))
        return sl_err_set(e, 400, "volume name '%.64s' must match %s", name, name_rule);
    *path = sl_path_join(rt->volumes_dir, name);
    if (*path == NULL)
        return sl_err_set(e, 500, "out of memory");
    if (mkdir(*path, 0755) == 0) {
        /* A new volume is acknowledged only once its entry is on disk. */
        int rc = sl_fsync_parent(*path);
        if (rc < 0)
            sl_warn("fsync of %s: %s", rt->volumes_dir, strerror(-rc));
        sl_fault("volume-created");
    } else if (errno != EEXIST) {
        sl_err_set(e, 500, "mkdir %s: %s", *path, strerror(errno));
        free(*path);
        *path = NULL;
        return -1;
    }
    if (!is_dir(*path)) {
        sl_err_set(e, 500, "volume %s is not a directory", *path);
        free(*path);
        *path = NULL;
        return -1;
    }
    return 0;
}

void sl_h_volumes(sl_req *r)
{
    reply_list(r, "volumes", r->rt->volumes_dir, volume_ok);
}

void sl_h_volume_add(sl_req *r)
{
    sl_runner *rt = r->rt;
    sl_err e;
    char *name = NULL, *path = NULL;
    int create;
    if (sl_msg_str(r->body, "name", SL_REQ, &name, &e) < 0 ||
        sl_msg_bool(r->body, "create_if_missing", 0, &create, &e) < 0)
        goto fail;
    if (!sl_name_valid(name)) {
        sl_err_set(&e, 400, "volume name '%.64s' must match %s", name, name_rule);
        goto fail;
    }
    if (!volume_ok(rt, name)) {
        if (!create) {
            sl_err_set(&e, 404, "volume '%s' not found", name);
            goto fail;
        }
        if (sl_store_volume(rt, name, &path, &e) < 0)
            goto fail;
        sl_info("volume %s created", name);
    } else if ((path = sl_path_join(rt->volumes_dir, name)) == NULL) {
        sl_err_set(&e, 500, "out of memory");
        goto fail;
    }
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 1);
    sl_r_str(&resp, "volume");
    pack_item(&resp, name, created_at(path));
    sl_reply(r, 200, &resp);
    goto done;
fail:
    sl_reply_err(r, &e);
done:
    free(name);
    free(path);
}

void sl_h_volume_delete(sl_req *r)
{
    sl_runner *rt = r->rt;
    const char *name = r->p[0];
    sl_err e;
    if (!sl_name_valid(name) || !volume_ok(rt, name)) {
        sl_reply_error(r, 404, "volume '%.64s' not found", name);
        return;
    }
    for (sl_box *b = rt->first; b != NULL; b = b->next) {
        if (!b->alive)
            continue;
        for (size_t i = 0; i < b->nvolumes; i++) {
            if (strcmp(b->volumes[i].v, name) == 0) {
                sl_reply_error(r, 409, "volume '%s' is mounted by sandbox %s", name, b->id);
                return;
            }
        }
    }
    if (trash(rt, rt->volumes_dir, name, &e) < 0) {
        sl_reply_err(r, &e);
        return;
    }
    sl_info("volume %s deleted", name);
    reply_empty(r);
}

void sl_store_shutdown(sl_runner *rt)
{
    /* Copies in flight are killed by sl_jobs_shutdown; their done callbacks
     * answer the held requests and free the records. */
    sl_snap_shutdown(rt);
}
