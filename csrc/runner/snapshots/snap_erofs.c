/* snap_erofs.c - snapshot layers stored as one EROFS image file each.
 *
 * Why: the copy path creates one ext4 inode per file of the upper dir, and
 * file creation on this host costs 30-400 us under load, so 20,000 files
 * take seconds. `mkfs.erofs` writes the same tree as one file, sequentially
 * (no per-file creation), and the kernel mounts a regular file as erofs
 * directly (CONFIG_EROFS_FS_BACKED_BY_FILE, no loop device). The mounted
 * image is an ordinary read-only overlay lower layer: whiteouts (char 0/0),
 * trusted.overlay.* xattrs, hard links, owners, modes and mtimes are kept.
 *
 * Consistency (snapshot.c drives it): the image is built while the sandbox
 * runs, then the sandbox is frozen and sl_snap_changed_since() walks the
 * upper dir. If no entry's ctime is at or after t0 (read before the build
 * began), nothing changed during the build, so the image is the upper dir
 * at the freeze; only then is it kept. Otherwise the image is built again
 * while frozen. The ctime argument is snap_sync.c's: every data, metadata,
 * xattr, link-count and rename change bumps the changed inode's ctime and
 * a create/unlink/rename bumps the parent dir's, up to the root, which
 * always exists; timestamps come from the coarse clock or a finer one.
 *
 * Mounts: <snap>/mnt, made at first use by a restore, detached at delete and
 * runner stop, and detached at start when a previous runner died with them.
 *
 * Sparse files: mkfs.erofs 1.5 writes their holes out as zeros (a 1 GiB
 * sparse file costs 1 GiB and seconds), while `cp -a` keeps them sparse, so
 * a tree with many holes is stored as a copy instead (sl_snap_sparse).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sl_log.h"
#include "sl_snap.h"

#define EROFS_MAGIC 0xE0F5E1E2U /* EROFS_SUPER_MAGIC_V1, linux/magic.h */

extern char **environ;

void sl_erofs_mkfs_argv(char *argv[SL_EROFS_ARGV], const char *image, const char *src)
{
    /* Uncompressed: compressing 200 MB would cost more than writing it.
     * Extended inodes keep each file's own mtime (compact ones share the
     * build time) and 32-bit owners. */
    argv[0] = "mkfs.erofs";
    argv[1] = "--quiet";
    argv[2] = "-Eforce-inode-extended";
    argv[3] = (char *)image;
    argv[4] = (char *)src;
    argv[5] = NULL;
}

/* Run argv to completion with stdout/stdin on /dev/null; the exit status. */
static int run_wait(char *argv[], int *status)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    pid_t pid;
    posix_spawn_file_actions_init(&fa);
    int rc = sl_spawnattr_init(&attr, 0);
    rc = rc ? rc : posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    rc = rc ? rc : posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    rc = rc ? rc : posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    rc = rc ? rc : posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    rc = rc ? rc : posix_spawnp(&pid, argv[0], &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc != 0)
        return -rc;
    while (waitpid(pid, status, 0) < 0) {
        if (errno != EINTR)
            return -errno;
    }
    return 0;
}

int sl_erofs_probe(const char *scratch, char *why, size_t whylen)
{
    char src[PATH_MAX], img[PATH_MAX], mnt[PATH_MAX];
    if ((size_t)snprintf(src, sizeof(src), "%s/src", scratch) >= sizeof(src) ||
        (size_t)snprintf(img, sizeof(img), "%s/img", scratch) >= sizeof(img) ||
        (size_t)snprintf(mnt, sizeof(mnt), "%s/mnt", scratch) >= sizeof(mnt)) {
        snprintf(why, whylen, "state dir path too long");
        return 0;
    }
    int ok = 0;
    if (mkdir(scratch, 0700) < 0 || mkdir(src, 0700) < 0 || mkdir(mnt, 0700) < 0) {
        snprintf(why, whylen, "mkdir under %s: %s", scratch, strerror(errno));
        goto out;
    }
    char *argv[SL_EROFS_ARGV];
    sl_erofs_mkfs_argv(argv, img, src);
    int st = 0, rc = run_wait(argv, &st);
    if (rc < 0) {
        snprintf(why, whylen, "cannot run mkfs.erofs (package erofs-utils): %s", strerror(-rc));
        goto out;
    }
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
        snprintf(why, whylen, "mkfs.erofs failed on an empty dir (status %d)", st);
        goto out;
    }
    /* ENODEV: no erofs in this kernel; ENOTBLK: erofs, but only on block
     * devices (no CONFIG_EROFS_FS_BACKED_BY_FILE). */
    if (mount(img, mnt, "erofs", MS_RDONLY, NULL) < 0) {
        snprintf(why, whylen, "mounting an erofs image file: %s", strerror(errno));
        goto out;
    }
    if (umount2(mnt, MNT_DETACH) < 0)
        sl_warn("umount %s: %s", mnt, strerror(errno));
    ok = 1;
out:
    rc = sl_rm_rf(scratch);
    if (rc < 0 && rc != -ENOENT)
        sl_warn("removing %s: %s", scratch, strerror(-rc));
    return ok;
}

static int is_erofs(const char *mnt)
{
    struct statfs sf;
    return statfs(mnt, &sf) == 0 && (unsigned)sf.f_type == EROFS_MAGIC;
}

int sl_erofs_mount(const char *image, const char *mnt, sl_err *e)
{
    /* Mounted by an earlier restore of this runner: the image never changes,
     * so that mount is this image. */
    if (is_erofs(mnt))
        return 0;
    if (mount(image, mnt, "erofs", MS_RDONLY, NULL) < 0)
        return sl_err_set(e, 500, "mounting snapshot image %s: %s", image, strerror(errno));
    return 0;
}

void sl_erofs_umount(const char *mnt)
{
    /* Detach: a dying sandbox's overlay may still hold the layer; it keeps
     * its reference and the image goes away with the last one. */
    while (is_erofs(mnt)) {
        if (umount2(mnt, MNT_DETACH) < 0) {
            if (errno != EINVAL && errno != ENOENT)
                sl_warn("umount %s: %s", mnt, strerror(errno));
            return;
        }
    }
}

/* ---- walks of the upper dir ---- */

/* Called for every entry below the root (and the root, name "."): 0 to go
 * on, 1 to stop the walk with that answer, or -errno. */
typedef int (*visit_fn)(const struct stat *st, const char *name, void *ctx, char *err,
                        size_t errlen);

/* Takes ownership of dirfd. */
static int walk(int dirfd, visit_fn visit, void *ctx, int depth, char *err, size_t errlen)
{
    DIR *d = fdopendir(dirfd);
    if (d == NULL) {
        int rc = -errno;
        close(dirfd);
        snprintf(err, errlen, "opendir: %s", strerror(-rc));
        return rc;
    }
    int rc = 0;
    struct dirent *de;
    errno = 0;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        struct stat st;
        if (fstatat(dirfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            rc = -errno;
            snprintf(err, errlen, "stat %.200s: %s", de->d_name, strerror(-rc));
            break;
        }
        rc = visit(&st, de->d_name, ctx, err, errlen);
        if (rc == 0 && S_ISDIR(st.st_mode)) {
            if (depth >= 4096) {
                rc = -ELOOP;
                snprintf(err, errlen, "tree deeper than 4096 levels");
                break;
            }
            int sub = openat(dirfd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub < 0) {
                rc = -errno;
                snprintf(err, errlen, "open %.200s: %s", de->d_name, strerror(-rc));
                break;
            }
            rc = walk(sub, visit, ctx, depth + 1, err, errlen);
        }
        errno = 0;
    }
    if (rc == 0 && errno != 0) {
        rc = -errno;
        snprintf(err, errlen, "readdir: %s", strerror(-rc));
    }
    closedir(d);
    return rc;
}

static int walk_root(const char *root, visit_fn visit, void *ctx, char *err, size_t errlen)
{
    err[0] = '\0';
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int rc = -errno;
        snprintf(err, errlen, "open %.300s: %s", root, strerror(-rc));
        return rc;
    }
    struct stat st;
    int rc = fstat(fd, &st) < 0 ? -errno : 0;
    if (rc < 0)
        snprintf(err, errlen, "stat %.300s: %s", root, strerror(-rc));
    else
        rc = visit(&st, ".", ctx, err, errlen);
    if (rc != 0) {
        close(fd);
        return rc;
    }
    return walk(fd, visit, ctx, 0, err, errlen);
}

static int visit_newer(const struct stat *st, const char *name, void *ctx, char *err, size_t errlen)
{
    const struct timespec *t0 = ctx;
    if (st->st_ctim.tv_sec < t0->tv_sec ||
        (st->st_ctim.tv_sec == t0->tv_sec && st->st_ctim.tv_nsec < t0->tv_nsec))
        return 0;
    /* Said in the log: which entry made the capture build again. */
    snprintf(err, errlen, "%.200s changed %.3f s after the build began", name,
             (double)(st->st_ctim.tv_sec - t0->tv_sec) + (st->st_ctim.tv_nsec - t0->tv_nsec) / 1e9);
    return 1;
}

int sl_snap_changed_since(const char *root, const struct timespec *t0, char *err, size_t errlen)
{
    return walk_root(root, visit_newer, (void *)t0, err, errlen);
}

typedef struct holes_ctx {
    long long limit, holes;
} holes_ctx;

static int visit_holes(const struct stat *st, const char *name, void *ctx, char *err, size_t errlen)
{
    holes_ctx *h = ctx;
    if (!S_ISREG(st->st_mode))
        return 0;
    long long hole = (long long)st->st_size - (long long)st->st_blocks * 512;
    if (hole > 0)
        h->holes += hole;
    if (h->holes <= h->limit)
        return 0;
    snprintf(err, errlen, "more than %lld MiB of holes in sparse files (%.200s)", h->limit >> 20,
             name);
    return 1;
}

int sl_snap_sparse(const char *root, long long limit, char *err, size_t errlen)
{
    holes_ctx h = {limit, 0};
    return walk_root(root, visit_holes, &h, err, errlen);
}
