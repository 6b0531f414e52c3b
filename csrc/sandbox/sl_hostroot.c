/* sl_hostroot.c - the host image's root for a sandbox in a user namespace
 * (see sl_hostroot.h for why "/" cannot simply be the overlay's lower layer).
 *
 * Every path taken from a snapshot layer or the new root is opened with
 * openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) and mounted on through its
 * /proc/self/fd path, so a symlink that untrusted code left in a layer can
 * never redirect a mount onto the host. Runs in the fork-style clone child of
 * a single-threaded runner, so malloc and opendir are safe.
 */
#include "sl_hostroot.h"

#include "sl_mountinfo.h"
#include "sl_userns.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Host directories a sandbox gets its own mounts on (proc, sysfs, a fresh
 * /dev, tmpfs): never overlaid, they stay empty skeleton directories. */
static const char *const own_mounts[] = {"/proc", "/sys",     "/dev",  "/tmp",
                                         "/run",  "/var/tmp", "/root", "/home"};

/* A growable list of strings. */
typedef struct strlist {
    char **v;
    size_t n, cap;
} strlist;

static int list_add(strlist *l, const char *s)
{
    char *d;

    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 32;
        char **nv = realloc(l->v, cap * sizeof(*nv));

        if (!nv)
            return -ENOMEM;
        l->v = nv;
        l->cap = cap;
    }
    if (!(d = strdup(s)))
        return -ENOMEM;
    l->v[l->n++] = d;
    return 0;
}

static void list_free(strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof(*l));
}

typedef struct ctx {
    const sl_hostroot *h;
    strlist stops;    /* absolute host paths: mount points and excluded paths */
    strlist overlays; /* relative paths (no leading '/') to overlay */
    strlist files;    /* relative paths of regular files to bind read-only */
    char *what;
    size_t whatlen;
} ctx;

__attribute__((format(printf, 3, 4))) static int fail(ctx *c, int err, const char *fmt, ...)
{
    va_list ap;

    if (c->what && c->whatlen) {
        va_start(ap, fmt);
        vsnprintf(c->what, c->whatlen, fmt, ap);
        va_end(ap);
    }
    return err < 0 ? err : -err;
}

/* Every mount point of this mount namespace but "/" itself. */
static int read_mounts(ctx *c)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    char *line = NULL;
    size_t cap = 0;
    int err = 0;

    if (!f)
        return fail(c, errno, "open /proc/self/mountinfo");
    while (!err && getline(&line, &cap, f) > 0) {
        /* id parent maj:min root mountpoint ... */
        char *save = NULL, *tok = strtok_r(line, " ", &save);

        for (int i = 0; tok && i < 4; i++)
            tok = strtok_r(NULL, " ", &save);
        if (!tok)
            continue;
        sl_mountinfo_unescape(tok);
        if (strcmp(tok, "/") != 0)
            err = list_add(&c->stops, tok);
    }
    free(line);
    fclose(f);
    return err ? fail(c, err, "read /proc/self/mountinfo") : 0;
}

/* Add path, canonical where it exists (the walk below sees real paths). */
static int add_stop(ctx *c, const char *path)
{
    char real[PATH_MAX];

    if (!path || path[0] != '/')
        return 0;
    return list_add(&c->stops, realpath(path, real) ? real : path);
}

enum kind { K_OVERLAY, K_STOP, K_WALK };

/* What to do with host directory path: it is (or lies below) a stop, it
 * holds a stop further down, or it can be overlaid whole. */
static enum kind classify(const ctx *c, const char *path)
{
    size_t pl = strlen(path);
    enum kind k = K_OVERLAY;

    for (size_t i = 0; i < c->stops.n; i++) {
        const char *s = c->stops.v[i];
        size_t sl = strlen(s);

        if (sl <= pl && strncmp(s, path, sl) == 0 && (path[sl] == '/' || path[sl] == '\0'))
            return K_STOP;
        if (sl > pl && strncmp(s, path, pl) == 0 && s[pl] == '/')
            k = K_WALK;
    }
    return k;
}

/* Mirror host directory "/rel" into skel dir sfd: symlinks as they are,
 * directories empty (overlaid, walked into, or left empty), regular files
 * as empty placeholders for a bind. */
static int build_skel(ctx *c, const char *rel, int sfd)
{
    char host[PATH_MAX];
    DIR *d;
    int err = 0;

    snprintf(host, sizeof(host), "/%s", rel);
    d = opendir(host);
    if (!d)
        return errno == EACCES ? 0 : fail(c, errno, "read %s", host); /* shown empty */
    for (;;) {
        struct dirent *de;
        struct stat st;
        char child[PATH_MAX], crel[PATH_MAX];

        errno = 0;
        if (!(de = readdir(d))) {
            if (errno)
                err = fail(c, errno, "read %s", host);
            break;
        }
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue; /* gone meanwhile */
        if ((size_t)snprintf(crel, sizeof(crel), "%s%s%s", rel, *rel ? "/" : "", de->d_name) >=
                sizeof(crel) ||
            (size_t)snprintf(child, sizeof(child), "/%s", crel) >= sizeof(child)) {
            err = fail(c, ENAMETOOLONG, "skeleton of %s", host);
            break;
        }
        if (S_ISLNK(st.st_mode)) {
            char target[PATH_MAX];
            ssize_t n = readlinkat(dirfd(d), de->d_name, target, sizeof(target) - 1);

            if (n < 0)
                continue;
            target[n] = '\0';
            if (symlinkat(target, sfd, de->d_name) < 0) {
                err = fail(c, errno, "skeleton symlink %s", child);
                break;
            }
        } else if (S_ISDIR(st.st_mode)) {
            enum kind k = classify(c, child);

            /* fchmodat: mkdir's mode went through the umask. */
            if (mkdirat(sfd, de->d_name, 0700) < 0 ||
                fchmodat(sfd, de->d_name, st.st_mode & 07777, 0) < 0) {
                err = fail(c, errno, "skeleton dir %s", child);
                break;
            }
            if (k == K_OVERLAY) {
                err = list_add(&c->overlays, crel);
            } else if (k == K_WALK) {
                int nfd = openat(sfd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

                if (nfd < 0) {
                    err = fail(c, errno, "skeleton dir %s", child);
                    break;
                }
                err = build_skel(c, crel, nfd);
                close(nfd);
            }
            if (err)
                break;
        } else if (S_ISREG(st.st_mode)) {
            int fd =
                openat(sfd, de->d_name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);

            if (fd < 0) {
                err = fail(c, errno, "skeleton file %s", child);
                break;
            }
            close(fd);
            if (classify(c, child) == K_OVERLAY && (err = list_add(&c->files, crel)) < 0)
                break;
        }
        /* Sockets, fifos, device nodes at this level: left out. */
    }
    closedir(d);
    if (err < 0 && c->what && !c->what[0])
        fail(c, err, "skeleton of %s", host);
    return err < 0 ? err : 0;
}

/* openat2 below dirfd without following any symlink. */
static int open_beneath(int dirfd, const char *rel, int flags)
{
    struct open_how how = {.flags = (unsigned long long)(flags | O_PATH | O_CLOEXEC),
                           .resolve =
                               RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS};
    long fd = syscall(SYS_openat2, dirfd, rel, &how, sizeof(how));

    return fd < 0 ? -errno : (int)fd;
}

/* mkdir -p dir/rel with the host's modes along the way. */
static int mkdir_under(const char *dir, const char *rel)
{
    char path[PATH_MAX], host[PATH_MAX];
    size_t dl = strlen(dir);

    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, rel) >= sizeof(path))
        return -ENAMETOOLONG;
    for (char *p = path + dl + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char save = *p;
            struct stat st;
            mode_t mode = 0755;

            *p = '\0';
            snprintf(host, sizeof(host), "/%s", path + dl + 1);
            if (stat(host, &st) == 0)
                mode = st.st_mode & 07777;
            if (mkdir(path, 0700) == 0) {
                if (chmod(path, mode) < 0)
                    return -errno;
            } else if (errno != EEXIST) {
                return -errno;
            }
            *p = save;
            if (!save)
                return 0;
        }
    }
}

static void fd_path(char *buf, size_t len, int fd)
{
    snprintf(buf, len, "/proc/self/fd/%d", fd);
}

/* The overlay of host directory "/rel" as a detached mount (*mfd, or -1 to
 * leave the directory empty); number i names its work dir.
 *
 * Detached, and made before the root's overlay exists: the kernel warns
 * ("upperdir is in-use") about an overlay whose upper dir lies below a dir
 * that is already some overlay's upper, and <dir>/upper/<rel> lies below the
 * root's <dir>/upper. Made first, none is in use yet, and moving the mounts
 * into place later checks nothing more. */
static int make_dir_overlay(ctx *c, const char *rel, size_t i, int *mfd)
{
    const sl_hostroot *h = c->h;
    char lower[4096], upper[PATH_MAX], work[PATH_MAX];
    int lfds[64], nl = 0, fs = -1, err = 0;
    size_t used = 0;

    *mfd = -1;
    snprintf(work, sizeof(work), "%s/ovlwork", h->dir);
    if (mkdir(work, 0700) < 0 && errno != EEXIST)
        return fail(c, errno, "mkdir %s", work);
    snprintf(upper, sizeof(upper), "%s/upper", h->dir);
    if ((err = mkdir_under(upper, rel)) < 0)
        return fail(c, err, "mkdir upper/%s", rel);
    snprintf(upper, sizeof(upper), "%s/upper/%s", h->dir, rel);
    snprintf(work, sizeof(work), "%s/ovlwork/%zu", h->dir, i);
    if (mkdir(work, 0700) < 0 && errno != EEXIST)
        return fail(c, errno, "mkdir %s", work);
    lower[0] = '\0';
    for (size_t l = 0; l < h->n_layers; l++) {
        int lroot = open(h->layers[l], O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), fd;
        char p[64];

        if (nl == (int)(sizeof(lfds) / sizeof(lfds[0]))) {
            if (lroot >= 0)
                close(lroot);
            err = fail(c, E2BIG, "more than %d snapshot layers change /%s", nl, rel);
            goto out;
        }
        if (lroot < 0) {
            err = fail(c, errno, "open layer %s", h->layers[l]);
            goto out;
        }
        fd = open_beneath(lroot, rel, O_DIRECTORY);
        close(lroot);
        if (fd < 0)
            continue; /* this layer changed nothing there */
        lfds[nl++] = fd;
        fd_path(p, sizeof(p), fd);
        used += (size_t)snprintf(lower + used, used < sizeof(lower) ? sizeof(lower) - used : 0,
                                 "%s:", p);
    }
    if (used < sizeof(lower))
        used += (size_t)snprintf(lower + used, sizeof(lower) - used, "/%s", rel);
    if (strpbrk(rel, ":\\"))
        goto out; /* lowerdir's separators in a host name: that dir is shown empty */
    if (used >= sizeof(lower)) {
        err = fail(c, E2BIG, "overlay options for /%s", rel);
        goto out;
    }
    fs = fsopen("overlay", FSOPEN_CLOEXEC);
    if (fs < 0) {
        err = fail(c, errno, "fsopen overlay (rootless mode needs Linux 5.11 or later)");
        goto out;
    }
    if (fsconfig(fs, FSCONFIG_SET_STRING, "lowerdir", lower, 0) < 0 ||
        fsconfig(fs, FSCONFIG_SET_STRING, "upperdir", upper, 0) < 0 ||
        fsconfig(fs, FSCONFIG_SET_STRING, "workdir", work, 0) < 0 ||
        fsconfig(fs, FSCONFIG_SET_FLAG, "userxattr", NULL, 0) < 0 ||
        fsconfig(fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0 ||
        (*mfd = fsmount(fs, FSMOUNT_CLOEXEC, 0)) < 0) {
        *mfd = -1;
        /* A host directory the runner's user may not read (lost+found):
         * left empty, which is all that user could see of it anyway. */
        if (errno != EACCES && errno != EPERM)
            err = fail(c, errno, "mount overlay of /%s", rel);
    }
out:
    if (fs >= 0)
        close(fs);
    for (int k = 0; k < nl; k++)
        close(lfds[k]);
    return err;
}

/* Move the detached overlay mfd onto root/rel (closed here). */
static int attach_dir_overlay(ctx *c, int rootfd, const char *rel, int mfd)
{
    int tfd = open_beneath(rootfd, rel, O_DIRECTORY), err = 0;

    /* Not a directory in the root: a snapshot layer deleted or replaced it. */
    if (tfd >= 0 &&
        move_mount(mfd, "", tfd, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
        err = fail(c, errno, "move overlay of /%s into place", rel);
    if (tfd >= 0)
        close(tfd);
    close(mfd);
    return err;
}

/* A read-only bind of host file "/rel" on root/rel. */
static int bind_file(ctx *c, int rootfd, const char *rel)
{
    char host[PATH_MAX], src[64], target[64];
    int sfd, tfd, err = 0;
    struct stat st;

    snprintf(host, sizeof(host), "/%s", rel);
    tfd = open_beneath(rootfd, rel, 0);
    if (tfd < 0)
        return 0;
    sfd = open(host, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (sfd < 0 || fstat(sfd, &st) < 0 || !S_ISREG(st.st_mode)) {
        if (sfd >= 0)
            close(sfd);
        close(tfd);
        return 0; /* gone or replaced meanwhile */
    }
    fd_path(src, sizeof(src), sfd);
    fd_path(target, sizeof(target), tfd);
    if (mount(src, target, NULL, MS_BIND, NULL) < 0) {
        err = fail(c, errno, "bind %s", host);
        goto out;
    }
    /* tfd is the placeholder below the bind: open again to get the bind. */
    close(tfd);
    if ((tfd = open_beneath(rootfd, rel, 0)) < 0) {
        err = fail(c, -tfd, "open %s", host);
        goto out;
    }
    fd_path(target, sizeof(target), tfd);
    if (mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | sl_userns_locked_flags(target),
              NULL) < 0)
        err = fail(c, errno, "remount %s read-only", host);
out:
    close(sfd);
    if (tfd >= 0)
        close(tfd);
    return err;
}

int sl_hostroot_mount(const sl_hostroot *h, char *what, size_t whatlen)
{
    ctx c = {.h = h, .what = what, .whatlen = whatlen};
    char skel[PATH_MAX], opts[4096];
    size_t used;
    int sfd = -1, rootfd = -1, *mfds = NULL, err;

    if (what && whatlen)
        what[0] = '\0';
    if ((err = read_mounts(&c)) < 0)
        goto out;
    for (size_t i = 0; i < sizeof(own_mounts) / sizeof(own_mounts[0]); i++)
        if ((err = add_stop(&c, own_mounts[i])) < 0)
            goto out;
    if ((err = add_stop(&c, h->dir)) < 0)
        goto out;
    for (size_t i = 0; i < h->n_excluded; i++)
        if ((err = add_stop(&c, h->excluded[i])) < 0)
            goto out;
    for (size_t i = 0; i < h->n_layers; i++)
        if ((err = add_stop(&c, h->layers[i])) < 0)
            goto out;

    snprintf(skel, sizeof(skel), "%s/skel", h->dir);
    if (mkdir(skel, 0755) < 0 && errno != EEXIST) {
        err = fail(&c, errno, "mkdir %s", skel);
        goto out;
    }
    sfd = open(skel, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (sfd < 0) {
        err = fail(&c, errno, "open %s", skel);
        goto out;
    }
    if ((err = build_skel(&c, "", sfd)) < 0)
        goto out;
    if (!(mfds = malloc((c.overlays.n + 1) * sizeof(*mfds)))) {
        err = fail(&c, ENOMEM, "mount fds");
        goto out;
    }
    for (size_t i = 0; i < c.overlays.n; i++)
        mfds[i] = -1;
    for (size_t i = 0; i < c.overlays.n; i++)
        if ((err = make_dir_overlay(&c, c.overlays.v[i], i, &mfds[i])) < 0)
            goto out;

    /* The root: skeleton below any snapshot layers, the sandbox's upper on top. */
    used = (size_t)snprintf(opts, sizeof(opts), "lowerdir=");
    for (size_t i = 0; i < h->n_layers && used < sizeof(opts); i++)
        used += (size_t)snprintf(opts + used, sizeof(opts) - used, "%s:", h->layers[i]);
    if (used < sizeof(opts))
        used += (size_t)snprintf(opts + used, sizeof(opts) - used,
                                 "%s,upperdir=%s/upper,workdir=%s/work,userxattr", skel, h->dir,
                                 h->dir);
    if (used >= sizeof(opts)) {
        err = fail(&c, E2BIG, "overlay options for %zu layers", h->n_layers + 1);
        goto out;
    }
    if (mount("overlay", h->root, "overlay", 0, opts) < 0) {
        err = fail(&c, errno, "mount overlay on %s", h->root);
        goto out;
    }
    rootfd = open(h->root, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (rootfd < 0) {
        err = fail(&c, errno, "open %s", h->root);
        goto out;
    }
    for (size_t i = 0; i < c.overlays.n; i++) {
        int mfd = mfds[i];

        mfds[i] = -1;
        if (mfd >= 0 && (err = attach_dir_overlay(&c, rootfd, c.overlays.v[i], mfd)) < 0)
            goto out;
    }
    for (size_t i = 0; i < c.files.n; i++)
        if ((err = bind_file(&c, rootfd, c.files.v[i])) < 0)
            goto out;
    err = 0;
out:
    for (size_t i = 0; mfds && i < c.overlays.n; i++)
        if (mfds[i] >= 0)
            close(mfds[i]);
    free(mfds);
    if (rootfd >= 0)
        close(rootfd);
    if (sfd >= 0)
        close(sfd);
    list_free(&c.stops);
    list_free(&c.overlays);
    list_free(&c.files);
    return err;
}
