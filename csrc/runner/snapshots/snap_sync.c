/* snap_sync.c - make a copy of a directory tree equal to its source again,
 * touching only what changed: the second, frozen pass of a snapshot capture.
 *
 * The first pass (`cp -a` while the sandbox runs) copies the bulk; this pass
 * runs while the sandbox is frozen and fixes up whatever changed meanwhile.
 * An entry whose ctime is older than t0 (taken before the first pass started)
 * has not changed since then, so its first-pass copy is exact: the kernel
 * updates ctime on every data, metadata, xattr, link-count and rename change,
 * from the coarse realtime clock (or a finer one: never earlier), so t0 is
 * read from CLOCK_REALTIME_COARSE and needs no slack. A backward step of the
 * wall clock during a capture would defeat this.
 * Everything else is copied again; entries gone from the source are removed.
 * Whiteouts (char 0/0 devices), opaque dirs and every other xattr come along
 * because the runner is root. Runs in a child process (snapshot.c).
 *
 * Known limit: a file written only through an already-dirty shared mapping
 * gets no new ctime; docs/architecture.md says so.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "sl_sandbox.h"
#include "sl_snap.h"

#define XLIST_MAX 65536
#define XVAL_MAX 65536

typedef struct sync_ctx {
    struct timespec t0;
    char *err;
    size_t errlen;
    char *xlist; /* scratch buffers for xattrs */
    char *xlist2;
    char *xval;
} sync_ctx;

static int fail(sync_ctx *c, int err, const char *what, const char *path)
{
    if (c->err[0] == '\0')
        snprintf(c->err, c->errlen, "%s %.300s: %s", what, path, strerror(err));
    return -err;
}

static int join(char *out, const char *a, const char *b)
{
    return (size_t)snprintf(out, PATH_MAX, "%s/%s", a, b) >= PATH_MAX ? -ENAMETOOLONG : 0;
}

/* Make dst's xattrs exactly src's. */
static int sync_xattrs(sync_ctx *c, const char *src, const char *dst)
{
    ssize_t n = llistxattr(src, c->xlist, XLIST_MAX);
    if (n < 0)
        return errno == ENOTSUP ? 0 : fail(c, errno, "listxattr", src);
    for (ssize_t i = 0; i < n; i += (ssize_t)strlen(c->xlist + i) + 1) {
        const char *name = c->xlist + i;
        ssize_t v = lgetxattr(src, name, c->xval, XVAL_MAX);
        if (v < 0)
            return fail(c, errno, "getxattr", src);
        if (lsetxattr(dst, name, c->xval, (size_t)v, 0) < 0)
            return fail(c, errno, "setxattr", dst);
    }
    ssize_t m = llistxattr(dst, c->xlist2, XLIST_MAX);
    if (m < 0)
        return fail(c, errno, "listxattr", dst);
    for (ssize_t i = 0; i < m; i += (ssize_t)strlen(c->xlist2 + i) + 1) {
        const char *name = c->xlist2 + i;
        int found = 0;
        for (ssize_t k = 0; k < n && !found; k += (ssize_t)strlen(c->xlist + k) + 1)
            found = strcmp(c->xlist + k, name) == 0;
        if (!found && lremovexattr(dst, name) < 0 && errno != ENODATA)
            return fail(c, errno, "removexattr", dst);
    }
    return 0;
}

/* Owner, mode, xattrs and times of st onto dst. Times last: setting the
 * others does not touch mtime, but a dir's children do. */
static int copy_meta(sync_ctx *c, const char *src, const char *dst, const struct stat *st)
{
    if (lchown(dst, st->st_uid, st->st_gid) < 0)
        return fail(c, errno, "chown", dst);
    /* After chown, which clears set-id bits. */
    if (!S_ISLNK(st->st_mode) && chmod(dst, st->st_mode & 07777) < 0)
        return fail(c, errno, "chmod", dst);
    int rc = sync_xattrs(c, src, dst);
    if (rc < 0)
        return rc;
    struct timespec ts[2] = {st->st_atim, st->st_mtim};
    if (utimensat(AT_FDCWD, dst, ts, AT_SYMLINK_NOFOLLOW) < 0)
        return fail(c, errno, "utimensat", dst);
    return 0;
}

static int copy_data(sync_ctx *c, const char *src, const char *dst)
{
    int in = open(src, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (in < 0)
        return fail(c, errno, "open", src);
    int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (out < 0) {
        int err = errno;
        close(in);
        return fail(c, err, "create", dst);
    }
    int rc = 0;
    for (;;) {
        ssize_t n = copy_file_range(in, NULL, out, NULL, (size_t)1 << 30, 0);
        if (n == 0)
            break;
        if (n > 0)
            continue;
        if (errno == EINTR)
            continue;
        if (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP) {
            rc = fail(c, errno, "copy", src);
            break;
        }
        /* No in-kernel copy between these files: plain read/write. */
        char buf[65536];
        ssize_t r;
        while ((r = read(in, buf, sizeof(buf))) > 0) {
            for (ssize_t off = 0; off < r;) {
                ssize_t w = write(out, buf + off, (size_t)(r - off));
                if (w < 0) {
                    rc = fail(c, errno, "write", dst);
                    break;
                }
                off += w;
            }
            if (rc < 0)
                break;
        }
        if (r < 0 && rc == 0)
            rc = fail(c, errno, "read", src);
        break;
    }
    close(in);
    if (close(out) < 0 && rc == 0)
        rc = fail(c, errno, "close", dst);
    return rc;
}

static int sync_dir(sync_ctx *c, const char *src, const char *dst);

/* dst does not exist: create it as a copy of src (st). */
static int copy_new(sync_ctx *c, const char *src, const char *dst, const struct stat *st)
{
    int rc = 0;
    switch (st->st_mode & S_IFMT) {
    case S_IFDIR:
        if (mkdir(dst, 0700) < 0)
            return fail(c, errno, "mkdir", dst);
        rc = sync_dir(c, src, dst);
        break;
    case S_IFREG:
        rc = copy_data(c, src, dst);
        break;
    case S_IFLNK: {
        char target[PATH_MAX];
        ssize_t n = readlink(src, target, sizeof(target) - 1);
        if (n < 0)
            return fail(c, errno, "readlink", src);
        target[n] = '\0';
        if (symlink(target, dst) < 0)
            return fail(c, errno, "symlink", dst);
        break;
    }
    default: /* devices (whiteouts are char 0/0), fifos, sockets */
        if (mknod(dst, st->st_mode, st->st_rdev) < 0)
            return fail(c, errno, "mknod", dst);
        break;
    }
    return rc < 0 ? rc : copy_meta(c, src, dst, st);
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted entry names of dir (without . and ..). */
static int list_dir(sync_ctx *c, const char *dir, char ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (d == NULL)
        return fail(c, errno, "opendir", dir);
    size_t cap = 0;
    char **v = NULL;
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nv = realloc(v, cap * sizeof(*nv));
            if (nv == NULL) {
                rc = fail(c, ENOMEM, "list", dir);
                break;
            }
            v = nv;
        }
        if ((v[*n] = strdup(de->d_name)) == NULL) {
            rc = fail(c, ENOMEM, "list", dir);
            break;
        }
        (*n)++;
    }
    closedir(d);
    if (*n > 1)
        qsort(v, *n, sizeof(*v), cmp_name);
    *out = v;
    return rc;
}

static void free_names(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static int changed(const sync_ctx *c, const struct stat *st)
{
    return st->st_ctim.tv_sec > c->t0.tv_sec ||
           (st->st_ctim.tv_sec == c->t0.tv_sec && st->st_ctim.tv_nsec >= c->t0.tv_nsec);
}

/* Make the existing dir dst equal to src (entries, then dst's own metadata
 * where src changed). */
static int sync_dir(sync_ctx *c, const char *src, const char *dst)
{
    char **sn = NULL, **dn = NULL;
    size_t ns = 0, nd = 0;
    char sp[PATH_MAX], dp[PATH_MAX];
    int rc = list_dir(c, src, &sn, &ns);
    if (rc == 0)
        rc = list_dir(c, dst, &dn, &nd);
    /* Entries only in dst: gone from the source. Both lists are sorted. */
    for (size_t i = 0, k = 0; rc == 0 && i < nd; i++) {
        while (k < ns && strcmp(sn[k], dn[i]) < 0)
            k++;
        if (k < ns && strcmp(sn[k], dn[i]) == 0)
            continue;
        if ((rc = join(dp, dst, dn[i])) < 0) {
            fail(c, -rc, "path", dst);
            break;
        }
        int r = sl_rm_rf(dp);
        if (r < 0)
            rc = fail(c, -r, "remove", dp);
    }
    for (size_t i = 0; rc == 0 && i < ns; i++) {
        struct stat s, d;
        if (join(sp, src, sn[i]) < 0 || join(dp, dst, sn[i]) < 0) {
            rc = fail(c, ENAMETOOLONG, "path", sp);
            break;
        }
        if (lstat(sp, &s) < 0) {
            rc = fail(c, errno, "lstat", sp);
            break;
        }
        int have = lstat(dp, &d) == 0;
        if (!have && errno != ENOENT) {
            rc = fail(c, errno, "lstat", dp);
            break;
        }
        int same_type = have && (s.st_mode & S_IFMT) == (d.st_mode & S_IFMT);
        if (same_type && S_ISDIR(s.st_mode)) {
            rc = sync_dir(c, sp, dp);
            if (rc == 0 && changed(c, &s))
                rc = copy_meta(c, sp, dp, &s);
            else if (rc == 0) {
                /* Unchanged dir, but syncing its children moved its mtime. */
                struct timespec ts[2] = {s.st_atim, s.st_mtim};
                if (utimensat(AT_FDCWD, dp, ts, AT_SYMLINK_NOFOLLOW) < 0)
                    rc = fail(c, errno, "utimensat", dp);
            }
            continue;
        }
        if (same_type && !changed(c, &s))
            continue;
        if (have) {
            int r = sl_rm_rf(dp);
            if (r < 0) {
                rc = fail(c, -r, "remove", dp);
                break;
            }
        }
        rc = copy_new(c, sp, dp, &s);
    }
    free_names(sn, ns);
    free_names(dn, nd);
    return rc;
}

int sl_snap_sync(const char *src, const char *dst, const struct timespec *t0, char *err,
                 size_t errlen)
{
    sync_ctx c = {.t0 = *t0, .err = err, .errlen = errlen};
    struct stat s;
    err[0] = '\0';
    c.xlist = malloc(XLIST_MAX);
    c.xlist2 = malloc(XLIST_MAX);
    c.xval = malloc(XVAL_MAX);
    int rc;
    if (c.xlist == NULL || c.xlist2 == NULL || c.xval == NULL)
        rc = fail(&c, ENOMEM, "sync", src);
    else if (lstat(src, &s) < 0)
        rc = fail(&c, errno, "lstat", src);
    else if (mkdir(dst, 0700) < 0 && errno != EEXIST)
        rc = fail(&c, errno, "mkdir", dst);
    else if ((rc = sync_dir(&c, src, dst)) == 0)
        rc = copy_meta(&c, src, dst, &s);
    free(c.xlist);
    free(c.xlist2);
    free(c.xval);
    return rc;
}
