/* sl_rmrf.c - rm -rf for trees that untrusted code wrote.
 *
 * A sandbox's upper dir (and a volume) holds whatever its processes made:
 * symlinks to host paths, directories nested a million deep, names that race.
 * So: every step is relative to an open directory fd, nothing is opened
 * without O_NOFOLLOW, a directory on another device or at a mount root is
 * never entered, and the walk is iterative with a constant number of fds (one
 * per level would run out on deep trees). Going back up uses "..", checked
 * against the (dev, ino) recorded on the way down; on mismatch (the tree was
 * moved under us) we stop.
 *
 * Emptied directories are removed when their parent is rescanned: every
 * directory entry is first tried with rmdir and only entered when that says
 * ENOTEMPTY. Entries that cannot be removed go into a skip list so a rescan
 * does not loop on them, and so does a directory left non-empty because of
 * one.
 */
#include "sl_sandbox.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/* Give up after this many entries that could not be removed (each one costs
 * a linear search on every later entry). */
#define MAX_SKIPS 4096

typedef struct ident {
    dev_t dev;
    ino_t ino;
} ident;

typedef struct ident_vec {
    ident *v;
    size_t n, cap;
} ident_vec;

typedef struct rm_state {
    dev_t dev;       /* the tree's device: other devices are mounts */
    ident_vec stack; /* the directories we are in, top last */
    ident_vec skips; /* entries we failed to remove */
    int err;         /* first error */
} rm_state;

static int vec_push(ident_vec *iv, dev_t dev, ino_t ino)
{
    if (iv->n == iv->cap) {
        size_t cap = iv->cap ? iv->cap * 2 : 64;
        ident *nv = realloc(iv->v, cap * sizeof(*nv));

        if (!nv)
            return -ENOMEM;
        iv->v = nv;
        iv->cap = cap;
    }
    iv->v[iv->n].dev = dev;
    iv->v[iv->n].ino = ino;
    iv->n++;
    return 0;
}

static int vec_has(const ident_vec *iv, dev_t dev, ino_t ino)
{
    for (size_t i = 0; i < iv->n; i++)
        if (iv->v[i].dev == dev && iv->v[i].ino == ino)
            return 1;
    return 0;
}

static void note(rm_state *s, int err)
{
    if (!s->err)
        s->err = -err;
}

/* Remember an entry we could not remove. Returns -1 when there are too many
 * (the caller stops). */
static int skip(rm_state *s, dev_t dev, ino_t ino)
{
    if (s->skips.n >= MAX_SKIPS || vec_push(&s->skips, dev, ino) < 0) {
        note(s, ENOMEM);
        return -1;
    }
    return 0;
}

/* Is this entry a mount point or on another device? */
static int is_mount(const rm_state *s, const struct statx *sx)
{
    if ((sx->stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) &&
        (sx->stx_attributes & STATX_ATTR_MOUNT_ROOT))
        return 1;
    return makedev(sx->stx_dev_major, sx->stx_dev_minor) != s->dev;
}

/* A directory we own but may not read (overlayfs leaves its work dir's
 * "work" at mode 000, and a runner that is not root has no CAP_DAC_OVERRIDE):
 * give ourselves rwx on exactly that inode. Opened O_PATH (which needs no
 * permission on it) and checked against the identity statx saw, and chmod'ed
 * through the fd, so a name swapped for a symlink meanwhile changes nothing. */
static int unlock_dir(int fd, const char *name, dev_t dev, ino_t ino)
{
    char path[64];
    struct stat st;
    int pfd, rc = -1;

    if (geteuid() == 0)
        return -1; /* root reads it anyway: EACCES means something else */
    pfd = openat(fd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (pfd < 0)
        return -1;
    if (fstat(pfd, &st) == 0 && st.st_dev == dev && st.st_ino == ino && st.st_uid == geteuid()) {
        snprintf(path, sizeof(path), "/proc/self/fd/%d", pfd);
        rc = chmod(path, 0700);
    }
    close(pfd);
    return rc;
}

/* One pass over the directory at fd: unlink files, rmdir empty dirs. Returns
 * 1 with *child set to an fd of a non-empty subdirectory to enter, 0 when the
 * pass is complete (*skipped says whether anything was left behind), -1 to
 * abort. */
static int scan(rm_state *s, int fd, int *child, int *skipped)
{
    struct dirent *de;
    DIR *d;
    int dfd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    *child = -1;
    if (dfd < 0) {
        note(s, errno);
        return -1;
    }
    d = fdopendir(dfd);
    if (!d) {
        note(s, errno);
        close(dfd);
        return -1;
    }
    for (;;) {
        struct statx sx;
        dev_t dev;
        int cfd;

        errno = 0;
        de = readdir(d);
        if (!de) {
            if (errno) {
                note(s, errno);
                closedir(d);
                return -1;
            }
            break;
        }
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (statx(fd, de->d_name, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_TYPE | STATX_INO,
                  &sx) < 0) {
            if (errno == ENOENT)
                continue;
            /* Cannot identify it, so cannot skip it on the next pass. */
            note(s, errno);
            closedir(d);
            return -1;
        }
        dev = makedev(sx.stx_dev_major, sx.stx_dev_minor);
        if (vec_has(&s->skips, dev, sx.stx_ino)) {
            *skipped = 1;
            continue;
        }
        if (!S_ISDIR(sx.stx_mode)) {
            if (unlinkat(fd, de->d_name, 0) == 0 || errno == ENOENT)
                continue;
            note(s, errno);
        } else if (is_mount(s, &sx)) {
            note(s, EXDEV);
        } else if (unlinkat(fd, de->d_name, AT_REMOVEDIR) == 0 || errno == ENOENT) {
            continue;
        } else if (errno != ENOTEMPTY && errno != EEXIST) {
            note(s, errno);
        } else {
            struct stat st;

            cfd = openat(fd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (cfd < 0 && errno == EACCES && unlock_dir(fd, de->d_name, dev, sx.stx_ino) == 0)
                cfd = openat(fd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (cfd >= 0 && fstat(cfd, &st) == 0 && st.st_dev == dev && st.st_ino == sx.stx_ino) {
                if (vec_push(&s->stack, dev, sx.stx_ino) < 0) {
                    note(s, ENOMEM);
                    close(cfd);
                    closedir(d);
                    return -1;
                }
                *child = cfd;
                closedir(d);
                return 1;
            }
            /* Swapped for something else between statx and open. */
            note(s, cfd < 0 ? errno : ESTALE);
            if (cfd >= 0)
                close(cfd);
        }
        *skipped = 1;
        if (skip(s, dev, sx.stx_ino) < 0) {
            closedir(d);
            return -1;
        }
    }
    closedir(d);
    return 0;
}

int sl_rm_rf(const char *path)
{
    rm_state s;
    struct stat st, top;
    int fd, skipped = 0;

    if (!path || !*path)
        return -EINVAL;
    if (lstat(path, &top) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISDIR(top.st_mode))
        return unlink(path) < 0 && errno != ENOENT ? -errno : 0;
    fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0 || st.st_dev != top.st_dev || st.st_ino != top.st_ino) {
        close(fd);
        return -ESTALE;
    }
    memset(&s, 0, sizeof(s));
    s.dev = st.st_dev;
    if (vec_push(&s.stack, st.st_dev, st.st_ino) < 0) {
        close(fd);
        return -ENOMEM;
    }

    for (;;) {
        int child, r = scan(&s, fd, &child, &skipped);

        if (r < 0) {
            /* Leave this directory as it is and carry on with the rest. */
            skipped = 1;
        } else if (r == 1) {
            close(fd);
            fd = child;
            skipped = 0;
            continue;
        }
        /* fd is done (empty, or left with entries we could not remove). */
        if (s.stack.n == 1)
            break;
        {
            ident me = s.stack.v[s.stack.n - 1], up = s.stack.v[s.stack.n - 2];
            int pfd = openat(fd, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

            close(fd);
            fd = -1;
            if (pfd < 0 || fstat(pfd, &st) < 0 || st.st_dev != up.dev || st.st_ino != up.ino) {
                /* Moved under us: we no longer know where we are. */
                note(&s, pfd < 0 ? errno : ESTALE);
                if (pfd >= 0)
                    close(pfd);
                break;
            }
            s.stack.n--;
            /* Not emptied: the parent must neither retry nor enter it again. */
            if (skipped && skip(&s, me.dev, me.ino) < 0) {
                close(pfd);
                break;
            }
            fd = pfd;
            /* Whether the parent is left non-empty is decided by its rescan. */
            skipped = 0;
        }
    }
    if (fd >= 0)
        close(fd);
    if (s.stack.n == 1 && !skipped && rmdir(path) < 0 && errno != ENOENT)
        note(&s, errno);
    free(s.stack.v);
    free(s.skips.v);
    return s.err;
}
