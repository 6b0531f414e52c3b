/* sl_sb_walk.c - symlink-safe paths inside a new root, and the mount helpers.
 *
 * Every mount target inside the new root is opened component by component
 * with O_NOFOLLOW (creating what is missing) and mounted on through its
 * /proc/self/fd path, so a symlink in an image or an upper dir (a snapshot of
 * what untrusted code wrote) can never redirect a mount onto the host.
 */
#include "sl_sb_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdarg.h>
#include <sys/socket.h>

#include "sl_userns.h"

/* Report err + message to the parent and exit. Only async-signal-safe-ish
 * calls: the child is a fork-style copy of a process that may have threads. */
void sl__child_die(const child_ctx *c, int err, const char *fmt, ...)
{
    child_err e;
    va_list ap;
    size_t l;
    const char *desc = strerrordesc_np(err);

    memset(&e, 0, sizeof(e));
    e.err = err ? err : EIO;
    va_start(ap, fmt);
    vsnprintf(e.msg, sizeof(e.msg), fmt, ap);
    va_end(ap);
    l = strlen(e.msg);
    snprintf(e.msg + l, sizeof(e.msg) - l, ": %s", desc ? desc : "Unknown error");
    if (send(c->syncfd, &e, sizeof(e), MSG_NOSIGNAL) < 0) {
        /* Nothing left to tell; the parent sees EOF and our exit status. */
    }
    _exit(1);
}

void sl__proc_fd_path(char *buf, size_t len, int fd)
{
    snprintf(buf, len, "/proc/self/fd/%d", fd);
}

/* Open path (absolute, relative to rootfd) as an O_PATH fd, one component at a
 * time with O_NOFOLLOW, so no symlink anywhere in it is followed. Missing
 * components are created as directories (WALK_MKDIR), or the last one as an
 * empty file (WALK_MKFILE). Returns the fd or -errno; -ELOOP means a symlink
 * was in the way. ".." is refused. */
int sl__walk(int rootfd, const char *path, enum walk_mode mode)
{
    int fd = openat(rootfd, ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    const char *p = path;

    if (fd < 0)
        return -errno;
    for (;;) {
        char comp[NAME_MAX + 1];
        const char *end, *rest;
        size_t len;
        int last, nfd, flags;

        while (*p == '/')
            p++;
        if (!*p)
            return fd;
        end = strchrnul(p, '/');
        len = (size_t)(end - p);
        if (len > NAME_MAX) {
            close(fd);
            return -ENAMETOOLONG;
        }
        memcpy(comp, p, len);
        comp[len] = '\0';
        p = end;
        if (strcmp(comp, ".") == 0)
            continue;
        if (strcmp(comp, "..") == 0) {
            close(fd);
            return -EINVAL;
        }
        for (rest = p; *rest == '/'; rest++) {
        }
        last = *rest == '\0';
        /* O_PATH|O_NOFOLLOW on a symlink opens the link itself: caught below. */
        flags = O_PATH | O_NOFOLLOW | O_CLOEXEC | (last ? 0 : O_DIRECTORY);
        nfd = openat(fd, comp, flags);
        if (nfd < 0 && errno == ENOENT && mode != WALK_EXISTING) {
            int r;

            if (!last || mode == WALK_MKDIR) {
                r = mkdirat(fd, comp, 0755);
            } else {
                r = openat(fd, comp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
                if (r >= 0)
                    r = close(r);
            }
            if (r < 0 && errno != EEXIST) {
                int err = errno;

                close(fd);
                return -err;
            }
            nfd = openat(fd, comp, flags);
        }
        if (nfd < 0) {
            int err = errno;
            struct stat st;

            if (err == ENOTDIR && fstatat(fd, comp, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                S_ISLNK(st.st_mode))
                err = ELOOP;
            close(fd);
            return -err;
        }
        close(fd);
        fd = nfd;
        if (last) {
            struct stat st;

            int err = 0;

            if (fstat(fd, &st) < 0)
                err = errno;
            else if (S_ISLNK(st.st_mode))
                err = ELOOP;
            if (err) {
                close(fd);
                return -err;
            }
            return fd;
        }
    }
}

/* Mount onto path inside the new root (created as mode asks). Dies on error. */
void sl__child_mount(const child_ctx *c, const char *src, const char *path, const char *fstype,
                     unsigned long flags, const char *data, enum walk_mode mode)
{
    char target[64];
    int fd = sl__walk(c->rootfd, path, mode);

    if (fd < 0)
        sl__child_die(c, -fd, "mount %s on %s", fstype ? fstype : src, path);
    sl__proc_fd_path(target, sizeof(target), fd);
    if (mount(src, target, fstype, flags, data) < 0)
        sl__child_die(c, errno, "mount %s on %s", fstype ? fstype : src, path);
    close(fd);
}

/* Remount the mount at path (inside the new root) with flags. */
void sl__child_remount(const child_ctx *c, const char *path, unsigned long flags)
{
    char target[64];
    int fd = sl__walk(c->rootfd, path, WALK_EXISTING);

    if (fd < 0)
        sl__child_die(c, -fd, "remount %s", path);
    sl__proc_fd_path(target, sizeof(target), fd);
    /* In a user namespace a bind keeps the host mount's flags locked, and a
     * remount that would drop one is EPERM: keep them (they only restrict). */
    if (c->userns)
        flags |= sl_userns_locked_flags(target);
    if (mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | flags, NULL) < 0)
        sl__child_die(c, errno, "remount %s", path);
    close(fd);
}

/* Bind host_path onto path inside the root, then apply flags (MS_RDONLY...).
 * The source is opened O_NOFOLLOW too: a volume dir swapped for a symlink
 * must not bind some other host directory. */
void sl__child_bind(const child_ctx *c, const char *host_path, const char *path,
                    unsigned long flags)
{
    char src[64];
    struct stat st;
    int sfd = open(host_path, O_PATH | O_NOFOLLOW | O_CLOEXEC);

    if (sfd < 0)
        sl__child_die(c, errno, "bind %s", host_path);
    if (fstat(sfd, &st) < 0)
        sl__child_die(c, errno, "bind %s", host_path);
    if (S_ISLNK(st.st_mode))
        sl__child_die(c, ELOOP, "bind %s", host_path);
    sl__proc_fd_path(src, sizeof(src), sfd);
    sl__child_mount(c, src, path, NULL, MS_BIND | MS_REC, NULL,
                    S_ISDIR(st.st_mode) ? WALK_MKDIR : WALK_MKFILE);
    close(sfd);
    if (flags)
        sl__child_remount(c, path, flags);
}
