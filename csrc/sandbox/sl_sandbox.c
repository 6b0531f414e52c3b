/* sl_sandbox.c - create one sandbox: namespaces, overlay root, cgroup, init.
 *
 * sl_sandbox_spawn() clones a child straight into new pid, mount, network, IPC
 * and UTS namespaces, fork-style (no separate stack), with SIGCHLD as exit
 * signal, so the runner is its parent and reaps it. While the parent creates
 * the cgroup and moves the child in, the child already builds its root (the
 * two run in parallel); it then waits for "go" on the sync socket before it unshares its
 * cgroup namespace (which must be rooted at the sandbox cgroup) and execs
 * sandlot-init. The same CLOEXEC sync socket carries a failure back ("mount
 * overlay on ...") and reads EOF once the exec succeeded; init then says
 * READY on the control channel.
 *
 * Every mount target inside the new root is opened component by component
 * with O_NOFOLLOW (creating what is missing) and mounted on through its
 * /proc/self/fd path, so a symlink in an image or an upper dir (a snapshot of
 * what untrusted code wrote) can never redirect a mount onto the host.
 *
 * Rootless mode (cfg->userns): CLONE_NEWUSER joins the clone flags, so the
 * new user namespace owns all the others; the parent writes the one-id
 * uid/gid maps (sl_userns.c) and sends "u" before the child touches any
 * file, since until then the child's ids are unmapped and it could create
 * nothing. Mounts copied from the host are locked in there: the host image
 * is assembled by sl_hostroot.c, overlays carry "userxattr", bind remounts
 * keep the flags they inherited, and mknod falls back to binds of the host's
 * device nodes.
 */
#include "sl_sandbox.h"

#include "sl_ctl.h"
#include "sl_hostroot.h"
#include "sl_seccomp.h"
#include "sl_userns.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif

/* How long spawn waits for init's READY before giving up. */
#define SPAWN_TIMEOUT_MS 10000

/* containerd's default masked paths, always applied (cfg->masks adds more). */
static const char *const default_masks[] = {
    "/proc/acpi",        "/proc/asound",        "/proc/interrupts", "/proc/kcore",
    "/proc/keys",        "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
    "/proc/sched_debug", "/proc/scsi",          "/sys/firmware",    "/sys/devices/virtual/powercap",
};

#define N_DEFAULT_MASKS (sizeof(default_masks) / sizeof(default_masks[0]))

/* Host secrets, hidden when the image is the host's own root filesystem
 * ("/"): files behind /dev/null, directories behind an empty read-only tmpfs.
 * Every /etc/ssh/ *_key (the host's private SSH keys) is added to these. A
 * symlink is followed on the host and its target masked (the sandbox sees the
 * same tree). */
static const char *const host_secret_masks[] = {
    "/etc/shadow",   "/etc/shadow-",          "/etc/gshadow",
    "/etc/gshadow-", "/etc/security/opasswd", "/etc/ssl/private",
};

/* Home directories of the host, replaced by an empty *writable* tmpfs (same
 * mode) on the host image: nothing of the host's users shows, and programs
 * that keep state under $HOME (HOME=/root) still work. */
static const char *const host_home_masks[] = {"/root", "/home"};

#define HOST_SSH_DIR "/etc/ssh"

/* Without a user namespace, root inside could write these and reach the
 * host kernel (sysctls, sysrq-trigger reboots the machine): always read-only. */
static const char *const readonly_paths[] = {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                                             "/proc/sysrq-trigger"};

/* Device nodes of the sandbox's /dev: made with mknod (the sandbox's own
 * inodes, so a chmod inside changes nothing outside, and no mount each), or,
 * where mknod is not allowed (a rootless runner), read-only binds of
 * the host's nodes. */
static const char *const dev_nodes[] = {"null", "zero", "full", "random", "urandom", "tty"};

/* What the child sends back on failure; one write, well below PIPE_BUF. */
typedef struct child_err {
    int err;
    char msg[256];
} child_err;

/* The child's state: fds it owns and where it reports. */
typedef struct child_ctx {
    const sl_sandbox_config *cfg;
    int syncfd;        /* child end of the sync socket: "go" in, child_err out (CLOEXEC) */
    int ctlfd;         /* init's end of the control channel */
    int memfd;         /* sandlot-init */
    int rootfd;        /* O_PATH fd of the overlay root */
    int parent_fds[2]; /* the parent's ends, closed first thing */
    int emptyfd;       /* O_PATH fd of the first read-only empty tmpfs mask, or -1 */
    int nullfd;        /* O_PATH fd of the sandbox's /dev/null, or -1 */
    int userns;        /* in a user namespace (cfg->userns) */
} child_ctx;

/* ---------------------------------------------------------------- helpers */

static void fmt_err(char *buf, size_t len, int err, const char *what)
{
    if (buf && len > 0)
        snprintf(buf, len, "%s: %s", what, strerror(err));
}

/* Report err + message to the parent and exit. Only async-signal-safe-ish
 * calls: the child is a fork-style copy of a process that may have threads. */
__attribute__((noreturn, format(printf, 3, 4))) static void child_die(const child_ctx *c, int err,
                                                                      const char *fmt, ...)
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

static int valid_id(const char *id)
{
    size_t l = id ? strlen(id) : 0;

    /* Used as hostname (at most 64 bytes) and as a cgroup directory name. */
    if (l == 0 || l > 63 || id[0] == '.')
        return 0;
    for (size_t i = 0; i < l; i++) {
        char ch = id[i];

        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_' || ch == '.'))
            return 0;
    }
    return 1;
}

/* Paths end up in overlayfs' comma/colon separated option string. */
static int valid_layer_path(const char *p)
{
    return p && p[0] == '/' && !strpbrk(p, ",:\\\n") && strlen(p) < PATH_MAX - 16;
}

static void proc_fd_path(char *buf, size_t len, int fd)
{
    snprintf(buf, len, "/proc/self/fd/%d", fd);
}

enum walk_mode { WALK_EXISTING, WALK_MKDIR, WALK_MKFILE };

/* Open path (absolute, relative to rootfd) as an O_PATH fd, one component at a
 * time with O_NOFOLLOW, so no symlink anywhere in it is followed. Missing
 * components are created as directories (WALK_MKDIR), or the last one as an
 * empty file (WALK_MKFILE). Returns the fd or -errno; -ELOOP means a symlink
 * was in the way. ".." is refused. */
static int walk(int rootfd, const char *path, enum walk_mode mode)
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

/* ------------------------------------------------------------------ child */

/* Mount onto path inside the new root (created as mode asks). Dies on error. */
static void child_mount(const child_ctx *c, const char *src, const char *path, const char *fstype,
                        unsigned long flags, const char *data, enum walk_mode mode)
{
    char target[64];
    int fd = walk(c->rootfd, path, mode);

    if (fd < 0)
        child_die(c, -fd, "mount %s on %s", fstype ? fstype : src, path);
    proc_fd_path(target, sizeof(target), fd);
    if (mount(src, target, fstype, flags, data) < 0)
        child_die(c, errno, "mount %s on %s", fstype ? fstype : src, path);
    close(fd);
}

/* Remount the mount at path (inside the new root) with flags. */
static void child_remount(const child_ctx *c, const char *path, unsigned long flags)
{
    char target[64];
    int fd = walk(c->rootfd, path, WALK_EXISTING);

    if (fd < 0)
        child_die(c, -fd, "remount %s", path);
    proc_fd_path(target, sizeof(target), fd);
    /* In a user namespace a bind keeps the host mount's flags locked, and a
     * remount that would drop one is EPERM: keep them (they only restrict). */
    if (c->userns)
        flags |= sl_userns_locked_flags(target);
    if (mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | flags, NULL) < 0)
        child_die(c, errno, "remount %s", path);
    close(fd);
}

/* Bind host_path onto path inside the root, then apply flags (MS_RDONLY...).
 * The source is opened O_NOFOLLOW too: a volume dir swapped for a symlink
 * must not bind some other host directory. */
static void child_bind(const child_ctx *c, const char *host_path, const char *path,
                       unsigned long flags)
{
    char src[64];
    struct stat st;
    int sfd = open(host_path, O_PATH | O_NOFOLLOW | O_CLOEXEC);

    if (sfd < 0)
        child_die(c, errno, "bind %s", host_path);
    if (fstat(sfd, &st) < 0)
        child_die(c, errno, "bind %s", host_path);
    if (S_ISLNK(st.st_mode))
        child_die(c, ELOOP, "bind %s", host_path);
    proc_fd_path(src, sizeof(src), sfd);
    child_mount(c, src, path, NULL, MS_BIND | MS_REC, NULL,
                S_ISDIR(st.st_mode) ? WALK_MKDIR : WALK_MKFILE);
    close(sfd);
    if (flags)
        child_remount(c, path, flags);
}

static void child_dev(const child_ctx *c)
{
    char path[64];
    int devfd;

    child_mount(c, "tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k",
                WALK_MKDIR);
    /* A fresh tmpfs: nothing in it can be a symlink, plain *at() calls do. */
    devfd = walk(c->rootfd, "/dev", WALK_EXISTING);
    if (devfd < 0)
        child_die(c, -devfd, "open /dev");
    {
        int dfd = openat(devfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        static const char *const links[][2] = {
            {"/proc/self/fd", "fd"},       {"/proc/self/fd/0", "stdin"},
            {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"},
            {"pts/ptmx", "ptmx"},
        };

        if (dfd < 0)
            child_die(c, errno, "open /dev");
        for (size_t i = 0; i < sizeof(dev_nodes) / sizeof(dev_nodes[0]); i++) {
            char host[32];
            struct stat st;
            mode_t mode;

            snprintf(host, sizeof(host), "/dev/%s", dev_nodes[i]);
            snprintf(path, sizeof(path), "/dev/%s", dev_nodes[i]);
            if (stat(host, &st) < 0)
                child_die(c, errno, "stat %s", host);
            if (!S_ISCHR(st.st_mode))
                child_die(c, ENODEV, "%s", host);
            mode = st.st_mode & 0777;
            /* fchmodat: mknod's mode went through the runner's umask. */
            if (mknodat(dfd, dev_nodes[i], S_IFCHR | mode, st.st_rdev) == 0) {
                if (fchmodat(dfd, dev_nodes[i], mode, 0) < 0)
                    child_die(c, errno, "chmod %s", path);
                continue;
            }
            if (errno != EPERM)
                child_die(c, errno, "mknod %s", path);
            /* Read-only: a bound node is the host's own inode, and a chmod or
             * chown through a writable bind would change the host's
             * /dev/null. Data still flows: a read-only mount does not stop
             * writes to a device. */
            child_bind(c, host, path, MS_RDONLY | MS_NOSUID | MS_NOEXEC);
        }
        for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++)
            if (symlinkat(links[i][0], dfd, links[i][1]) < 0)
                child_die(c, errno, "symlink /dev/%s", links[i][1]);
        if (mkdirat(dfd, "pts", 0755) < 0 || mkdirat(dfd, "shm", 01777) < 0)
            child_die(c, errno, "mkdir in /dev");
        close(dfd);
    }
    close(devfd);
    /* newinstance: the sandbox's ptys are its own, not the host's. */
    child_mount(c, "devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
                "newinstance,ptmxmode=0666,mode=0620", WALK_EXISTING);
    child_mount(c, "tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777",
                WALK_EXISTING);
}

enum mask_kind {
    MASK_READONLY, /* empty read-only dir / empty file */
    MASK_EMPTY_RW, /* empty writable dir (host home directories) */
};

/* Hide what fd (an O_PATH fd of path inside the new root; closed here) holds:
 * a directory behind an empty tmpfs, anything else behind /dev/null. */
static void child_mask_fd(child_ctx *c, int fd, const char *path, enum mask_kind kind)
{
    struct stat st;
    char target[64], src[64], opts[96];

    if (fstat(fd, &st) < 0)
        child_die(c, errno, "mask %s", path);
    proc_fd_path(target, sizeof(target), fd);
    if (S_ISDIR(st.st_mode) && kind == MASK_READONLY && c->emptyfd >= 0) {
        /* Every read-only dir mask shows the same empty, read-only tmpfs: a
         * bind of the first one (the read-only flag comes along) is much
         * cheaper than a new tmpfs superblock each. */
        proc_fd_path(src, sizeof(src), c->emptyfd);
        if (mount(src, target, NULL, MS_BIND, NULL) < 0)
            child_die(c, errno, "mask %s", path);
    } else if (S_ISDIR(st.st_mode)) {
        unsigned long flags = MS_NOSUID | MS_NODEV;

        if (kind == MASK_READONLY) {
            flags |= MS_RDONLY | MS_NOEXEC;
            snprintf(opts, sizeof(opts), "mode=555,size=4k");
        } else {
            /* In a user namespace the host's owner (root) is not mapped:
             * the sandbox's own root owns its empty home instead. */
            snprintf(opts, sizeof(opts), "mode=%o,uid=%u,gid=%u", (unsigned)(st.st_mode & 07777),
                     c->userns ? 0U : (unsigned)st.st_uid, c->userns ? 0U : (unsigned)st.st_gid);
        }
        if (mount("tmpfs", target, "tmpfs", flags, opts) < 0)
            child_die(c, errno, "mask %s", path);
        if (kind == MASK_READONLY) {
            /* fd is the directory below the mount; walking again gets the
             * tmpfs's root, to bind for the next masks. */
            c->emptyfd = walk(c->rootfd, path, WALK_EXISTING);
            if (c->emptyfd < 0)
                child_die(c, -c->emptyfd, "mask %s", path);
        }
    } else {
        /* A file: tmpfs cannot cover it, /dev/null can (containerd's way;
         * no MS_NODEV, or reading it would fail instead of being empty).
         * The sandbox's own /dev/null, so one bind does: writes vanish, and
         * a chmod reaches only that node (or, where it is a read-only bind
         * of the host's, fails: a bind keeps its source's read-only flag). */
        if (c->nullfd < 0) {
            c->nullfd = walk(c->rootfd, "/dev/null", WALK_EXISTING);
            if (c->nullfd < 0)
                child_die(c, -c->nullfd, "mask %s: open /dev/null", path);
        }
        proc_fd_path(src, sizeof(src), c->nullfd);
        if (mount(src, target, NULL, MS_BIND, NULL) < 0)
            child_die(c, errno, "mask %s", path);
    }
    close(fd);
}

/* Mask a host path on the host image. The child still sees the host's tree
 * (pivot_root comes later), so realpath() here resolves symlinks the way the
 * sandbox would; the canonical path is then walked without following any. */
static void child_host_mask(child_ctx *c, const char *path, enum mask_kind kind)
{
    char real[PATH_MAX];
    int fd;

    if (!realpath(path, real)) {
        if (errno == ENOENT || errno == ENOTDIR)
            return; /* nothing to hide */
        child_die(c, errno, "mask %s", path);
    }
    fd = walk(c->rootfd, real, WALK_EXISTING);
    /* ENOENT: on another host filesystem, which the overlay of "/" does not
     * show (it is an empty directory inside). */
    if (fd == -ENOENT)
        return;
    if (fd < 0)
        child_die(c, -fd, "mask %s", real);
    child_mask_fd(c, fd, real, kind);
}

/* The host image's default masks: secrets, SSH host keys, home dirs. */
static void child_host_masks(child_ctx *c)
{
    DIR *d;

    for (size_t i = 0; i < sizeof(host_secret_masks) / sizeof(host_secret_masks[0]); i++)
        child_host_mask(c, host_secret_masks[i], MASK_READONLY);
    for (size_t i = 0; i < sizeof(host_home_masks) / sizeof(host_home_masks[0]); i++)
        child_host_mask(c, host_home_masks[i], MASK_EMPTY_RW);
    /* The runner is single-threaded, so opendir's malloc is safe here. */
    d = opendir(HOST_SSH_DIR);
    if (!d) {
        if (errno == ENOENT || errno == ENOTDIR)
            return;
        child_die(c, errno, "mask %s", HOST_SSH_DIR);
    }
    for (;;) {
        struct dirent *de;
        char path[sizeof(HOST_SSH_DIR) + NAME_MAX + 1];
        size_t l;

        errno = 0;
        de = readdir(d);
        if (!de) {
            if (errno)
                child_die(c, errno, "read %s", HOST_SSH_DIR);
            break;
        }
        l = strlen(de->d_name);
        /* ssh_host_*_key are private; their .pub files and the configs are not. */
        if (l <= 4 || strcmp(de->d_name + l - 4, "_key") != 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", HOST_SSH_DIR, de->d_name);
        child_host_mask(c, path, MASK_READONLY);
    }
    closedir(d);
}

/* The overlay with extra layers (snapshots) over rootfs.
 *
 * overlayfs refuses (ELOOP, "overlapping lowerdir path") a lower layer that
 * lies below another lower layer's root in the same filesystem, which every
 * snapshot layer in the state dir does when rootfs is the host's "/". So the
 * base is first wrapped in a read-only overlay of its own (rootfs under an
 * empty tmpfs) at <dir>/base: a different superblock, so no layer is a
 * descendant of another any more; whiteouts in the snapshot layers still hide
 * the base's files because the wrapper is an ordinary lower layer. That makes
 * the root a stack of depth 2, the kernel's maximum.
 *
 * The new mount API
 * adds lower layers one fsconfig("lowerdir+") at a time, so the stack is not
 * limited by mount(2)'s one-page option string; kernels before 6.8 reject
 * "lowerdir+" (EINVAL) or lack fsopen (ENOSYS) and get the option string,
 * which fails with E2BIG once the paths do not fit a page. */
static void mount_layers(const child_ctx *c, const char *upper, const char *work, const char *root)
{
    const sl_sandbox_config *cfg = c->cfg;
    char opts[4096], empty[PATH_MAX], base[PATH_MAX];
    size_t used;
    int fs, err;

    snprintf(empty, sizeof(empty), "%s/base-empty", cfg->dir);
    snprintf(base, sizeof(base), "%s/base", cfg->dir);
    if ((mkdir(empty, 0755) < 0 && errno != EEXIST) || (mkdir(base, 0755) < 0 && errno != EEXIST))
        child_die(c, errno, "mkdir %s/base*", cfg->dir);
    if (mount("tmpfs", empty, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "size=4k,mode=755") < 0)
        child_die(c, errno, "mount tmpfs on %s", empty);
    if ((size_t)snprintf(opts, sizeof(opts), "lowerdir=%s:%s%s", empty, cfg->rootfs,
                         c->userns ? ",userxattr" : "") >= sizeof(opts))
        child_die(c, ENAMETOOLONG, "overlay options for %s", base);
    if (mount("overlay", base, "overlay", MS_RDONLY, opts) < 0)
        child_die(c, errno, "mount base overlay of %s on %s", cfg->rootfs, base);

    fs = fsopen("overlay", FSOPEN_CLOEXEC);
    err = fs < 0 ? errno : 0;
    for (size_t i = 0; !err && i <= cfg->n_layers; i++) {
        const char *l = i < cfg->n_layers ? cfg->layers[i] : base;

        if (fsconfig(fs, FSCONFIG_SET_STRING, "lowerdir+", l, 0) < 0)
            err = errno;
    }
    if (!err) {
        int mfd = -1;

        /* userxattr: trusted.* xattrs need CAP_SYS_ADMIN on the host. */
        if ((c->userns && fsconfig(fs, FSCONFIG_SET_FLAG, "userxattr", NULL, 0) < 0) ||
            fsconfig(fs, FSCONFIG_SET_STRING, "upperdir", upper, 0) < 0 ||
            fsconfig(fs, FSCONFIG_SET_STRING, "workdir", work, 0) < 0 ||
            fsconfig(fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0 ||
            (mfd = fsmount(fs, FSMOUNT_CLOEXEC, 0)) < 0 ||
            move_mount(mfd, "", AT_FDCWD, root, MOVE_MOUNT_F_EMPTY_PATH) < 0)
            child_die(c, errno, "mount overlay (%zu layers) on %s", cfg->n_layers + 1, root);
        close(mfd);
        close(fs);
        return;
    }
    if (fs >= 0)
        close(fs);
    if (err != ENOSYS && err != EINVAL)
        child_die(c, err, "fsconfig overlay lowerdir+");
    used = (size_t)snprintf(opts, sizeof(opts), "lowerdir=");
    for (size_t i = 0; i <= cfg->n_layers && used < sizeof(opts); i++)
        used += (size_t)snprintf(opts + used, sizeof(opts) - used, "%s%s", i ? ":" : "",
                                 i < cfg->n_layers ? cfg->layers[i] : base);
    if (used < sizeof(opts))
        used += (size_t)snprintf(opts + used, sizeof(opts) - used, ",upperdir=%s,workdir=%s%s",
                                 upper, work, c->userns ? ",userxattr" : "");
    if (used >= sizeof(opts))
        child_die(c, E2BIG, "overlay options for %zu layers", cfg->n_layers + 1);
    if (mount("overlay", root, "overlay", 0, opts) < 0)
        child_die(c, errno, "mount overlay on %s", root);
}

/* Everything inside the root that does not need the cgroup: runs while the
 * parent creates it. */
static void child_build_root(child_ctx *c)
{
    const sl_sandbox_config *cfg = c->cfg;
    char upper[PATH_MAX], work[PATH_MAX], root[PATH_MAX], opts[3 * PATH_MAX + 64];

    /* Nothing we mount may propagate back to the host's mount namespace. */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        child_die(c, errno, "make / rprivate");
    snprintf(upper, sizeof(upper), "%s/upper", cfg->dir);
    snprintf(work, sizeof(work), "%s/work", cfg->dir);
    snprintf(root, sizeof(root), "%s/root", cfg->dir);
    if (mkdir(upper, 0755) < 0 && errno != EEXIST)
        child_die(c, errno, "mkdir %s", upper);
    if (mkdir(work, 0700) < 0 && errno != EEXIST)
        child_die(c, errno, "mkdir %s", work);
    if (mkdir(root, 0755) < 0 && errno != EEXIST)
        child_die(c, errno, "mkdir %s", root);
    if (c->userns && strcmp(cfg->rootfs, "/") == 0) {
        sl_hostroot h = {.dir = cfg->dir,
                         .root = root,
                         .layers = cfg->layers,
                         .n_layers = cfg->n_layers,
                         .excluded = cfg->masks,
                         .n_excluded = cfg->n_masks};
        char what[256];
        int err = sl_hostroot_mount(&h, what, sizeof(what));

        if (err < 0)
            child_die(c, -err, "host image root: %s", what);
    } else if (cfg->n_layers > 0) {
        mount_layers(c, upper, work, root);
    } else {
        snprintf(opts, sizeof(opts), "lowerdir=%s,upperdir=%s,workdir=%s%s", cfg->rootfs, upper,
                 work, c->userns ? ",userxattr" : "");
        if (mount("overlay", root, "overlay", 0, opts) < 0)
            child_die(c, errno, "mount overlay on %s", root);
    }
    c->rootfd = open(root, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (c->rootfd < 0)
        child_die(c, errno, "open %s", root);

    /* We are pid 1 of the new pid namespace: this proc shows only the sandbox.
     * Read-only as a whole: the mode and owner of a global entry
     * (/proc/meminfo, /proc/slabinfo...) live in one kernel object shared by
     * every proc mount, so a chmod or chown by root in here would change them
     * for the host and every other sandbox. Writes through /proc/self/fd/N
     * (/dev/stdout) still work (they land on the target's own mount); what
     * fails with EROFS is writing the per-process knobs (oom_score_adj, comm
     * of another thread...). The read-only binds below are kept as a second
     * wall for the entries that reach the kernel. */
    child_mount(c, "proc", "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL,
                WALK_MKDIR);
    for (size_t i = 0; i < sizeof(readonly_paths) / sizeof(readonly_paths[0]); i++) {
        int fd = walk(c->rootfd, readonly_paths[i], WALK_EXISTING);
        char target[64];

        if (fd < 0)
            continue; /* not in this kernel's proc */
        proc_fd_path(target, sizeof(target), fd);
        if (mount(target, target, NULL, MS_BIND | MS_REC, NULL) < 0)
            child_die(c, errno, "bind %s", readonly_paths[i]);
        close(fd);
        child_remount(c, readonly_paths[i], MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC);
    }
    child_dev(c);
    {
        /* sysfs of the new network namespace (shows only lo). */
        int fd = walk(c->rootfd, "/sys", WALK_MKDIR);
        char target[64];

        if (fd < 0)
            child_die(c, -fd, "mount sysfs on /sys");
        proc_fd_path(target, sizeof(target), fd);
        if (mount("sysfs", target, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) <
            0) {
            /* Not allowed (e.g. nested without CAP_SYS_ADMIN over the netns):
             * fall back to the host's /sys, read-only. */
            if (errno != EPERM && errno != EACCES)
                child_die(c, errno, "mount sysfs on /sys");
            if (mount("/sys", target, NULL, MS_BIND | MS_REC, NULL) < 0)
                child_die(c, errno, "bind /sys");
            close(fd);
            child_remount(c, "/sys", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC);
        } else {
            close(fd);
        }
    }
    child_mount(c, "tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", WALK_MKDIR);
    child_mount(c, "tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755", WALK_MKDIR);
    child_mount(c, "tmpfs", "/var/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", WALK_MKDIR);

    for (size_t i = 0; i < N_DEFAULT_MASKS + cfg->n_masks; i++) {
        const char *mask = i < N_DEFAULT_MASKS ? default_masks[i] : cfg->masks[i - N_DEFAULT_MASKS];
        int fd;

        if (!mask || mask[0] != '/' || mask[strspn(mask, "/")] == '\0')
            child_die(c, EINVAL, "mask %s", mask ? mask : "(null)");
        fd = walk(c->rootfd, mask, WALK_EXISTING);

        /* Absent here: nothing to hide. Behind a symlink: the caller's mask
         * (its own state dirs) would silently not apply, so that fails the
         * spawn; the caller passes canonical paths. */
        if (fd == -ELOOP && i >= N_DEFAULT_MASKS)
            child_die(c, ELOOP, "mask %s", mask);
        if (fd < 0)
            continue;
        child_mask_fd(c, fd, mask, MASK_READONLY);
    }
    if (strcmp(cfg->rootfs, "/") == 0)
        child_host_masks(c);
    for (size_t i = 0; i < cfg->n_binds; i++) {
        const sl_bind *b = &cfg->binds[i];

        /* Absolute, and not the root itself (that would replace the image). */
        if (!b->host_path || b->host_path[0] != '/' || !b->sandbox_path ||
            b->sandbox_path[0] != '/' || b->sandbox_path[strspn(b->sandbox_path, "/")] == '\0')
            child_die(c, EINVAL, "bind %s", b->sandbox_path ? b->sandbox_path : "(null)");
        child_bind(c, b->host_path, b->sandbox_path,
                   MS_NOSUID | MS_NODEV | (b->readonly ? MS_RDONLY : 0));
    }
}

__attribute__((noreturn)) static void child_main(child_ctx *c)
{
    static char *const init_argv[] = {"sandlot-init", NULL};
    static char *const init_envp[] = {
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", NULL};
    char go;
    ssize_t n;
    int fd;

    /* If the runner dies, so does the sandbox (this survives the exec). */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    /* Our copies of the parent's ends would hide its death from the recv
     * below and keep the channel open past init. */
    for (int i = 0; i < 2; i++)
        close(c->parent_fds[i]);
    /* Keep our fds clear of 0-3 so the dup2s at the end cannot clobber them. */
    c->syncfd = fcntl(c->syncfd, F_DUPFD_CLOEXEC, 10);
    if (c->syncfd < 0)
        _exit(1);
    c->ctlfd = fcntl(c->ctlfd, F_DUPFD_CLOEXEC, 10);
    c->memfd = fcntl(c->memfd, F_DUPFD_CLOEXEC, 10);
    if (c->ctlfd < 0 || c->memfd < 0)
        child_die(c, errno, "dup");

    if (c->userns) {
        /* Our ids are unmapped (overflow) until the parent wrote the maps:
         * creating a file or mounting with them fails. */
        do
            n = recv(c->syncfd, &go, 1, 0);
        while (n < 0 && errno == EINTR);
        if (n != 1 || go != 'u')
            _exit(1); /* the parent gave up; it reports its own error */
    }
    child_build_root(c);

    /* Wait until the parent has put us into the sandbox cgroup. */
    do
        n = recv(c->syncfd, &go, 1, 0);
    while (n < 0 && errno == EINTR);
    if (n != 1)
        _exit(1); /* the parent gave up; it reports its own error */
    /* Rooted at the sandbox cgroup: /proc/self/cgroup shows "/" inside. */
    if (unshare(CLONE_NEWCGROUP) < 0)
        child_die(c, errno, "unshare cgroup namespace");

    /* runc's trick: pivot_root(".", ".") stacks the old root on top of the
     * new one, and the detach below then drops it, with no temp directory. */
    if (fchdir(c->rootfd) < 0)
        child_die(c, errno, "chdir to new root");
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        child_die(c, errno, "pivot_root");
    if (umount2(".", MNT_DETACH) < 0)
        child_die(c, errno, "detach old root");
    if (chdir("/") < 0)
        child_die(c, errno, "chdir /");
    close(c->rootfd);

    if (sethostname(c->cfg->id, strlen(c->cfg->id)) < 0)
        child_die(c, errno, "sethostname");
    fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        struct ifreq ifr;

        memset(&ifr, 0, sizeof(ifr));
        memcpy(ifr.ifr_name, "lo", 3);
        if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
            child_die(c, errno, "get lo flags");
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
            child_die(c, errno, "bring lo up");
        close(fd);
    } else if (errno != EAFNOSUPPORT) {
        child_die(c, errno, "socket");
    }
    /* The parent created eth0 in our namespace before it sent "go". */
    if (c->cfg->net) {
        const sl_net_config *net = c->cfg->net;
        const char *what = "configure";
        int r = sl_net_if_setup(SL_NET_SANDBOX_IF, net->sandbox_addr, net->prefix, &what);

        if (r < 0)
            child_die(c, -r, "eth0: %s", what);
        r = sl_net_default_route(net->host_addr);
        if (r < 0)
            child_die(c, -r, "eth0: default route");
    }

    /* init gets /dev/null on 0-2 (not the runner's log), the channel on 3 and
     * nothing else: every other fd is closed by the exec. */
    fd = open("/dev/null", O_RDWR);
    if (fd < 0)
        child_die(c, errno, "open /dev/null");
    for (int i = 0; i < 3; i++)
        if (fd != i && dup2(fd, i) < 0)
            child_die(c, errno, "dup2");
    if (fd > 2)
        close(fd);
    if (dup2(c->ctlfd, SL_CTL_FD) < 0)
        child_die(c, errno, "dup2 control channel");
    /* CLOEXEC rather than close: the sync socket and the memfd must live until
     * the exec itself succeeds. */
    if (syscall(SYS_close_range, SL_CTL_FD + 1, ~0U, CLOSE_RANGE_CLOEXEC) < 0) {
        for (int i = SL_CTL_FD + 1; i < 4096; i++)
            fcntl(i, F_SETFD, FD_CLOEXEC);
    }
    umask(022);
    syscall(SYS_execveat, c->memfd, "", init_argv, init_envp, AT_EMPTY_PATH);
    if (errno == ENOSYS || errno == ENOENT) {
        /* No execveat (or a tool like valgrind that cannot emulate it): the
         * same memfd through the sandbox's own /proc. */
        char path[64];

        proc_fd_path(path, sizeof(path), c->memfd);
        execve(path, init_argv, init_envp);
    }
    child_die(c, errno, "exec sandlot-init");
}

/* ----------------------------------------------------------------- parent */

/* The first fields of the kernel's struct clone_args (CLONE_ARGS_SIZE_VER0),
 * spelled out to avoid <linux/sched.h> clashing with <sched.h>. */
struct clone_args_v0 {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
};

/* Fork-style clone into new namespaces. Returns like fork(); *pidfd gets a
 * pidfd where clone3 exists, else -1. */
static pid_t clone_ns(unsigned long flags, int *pidfd)
{
    struct clone_args_v0 args;
    long r;

    *pidfd = -1;
    memset(&args, 0, sizeof(args));
    args.flags = flags | CLONE_PIDFD;
    args.pidfd = (uint64_t)(uintptr_t)pidfd;
    args.exit_signal = SIGCHLD;
    r = syscall(SYS_clone3, &args, sizeof(args));
    if (r < 0 && (errno == ENOSYS || errno == E2BIG)) {
        *pidfd = -1;
        /* flags first, then the stack (NULL: share the copy, like fork) on
         * every architecture sandlot builds for except s390. */
        r = syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, NULL);
    }
    return (pid_t)r;
}

static long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void reap(pid_t pid, int *status)
{
    int st = 0;

    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (status)
        *status = st;
}

static void describe_status(char *buf, size_t len, int st)
{
    if (WIFEXITED(st))
        snprintf(buf, len, "sandlot-init exited with status %d before it was ready",
                 WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(buf, len, "sandlot-init killed by signal %d before it was ready", WTERMSIG(st));
    else
        snprintf(buf, len, "sandlot-init ended before it was ready");
}

int sl_sandbox_spawn(const sl_sandbox_config *cfg, sl_sandbox *out, char *errbuf, size_t errlen)
{
    int sv[2] = {-1, -1}, sync[2] = {-1, -1}, pidfd = -1, err = 0;
    int child_done = 0;
    const struct sock_filter *filter;
    size_t nfilter;
    char msg[320];
    sigset_t all, old;
    pid_t pid;

    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!out)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    out->init_pid = -1;
    out->ctl_fd = out->pidfd = -1;
    out->cg.v2_index = out->cg.freezer_index = -1;
    if (!cfg || !valid_id(cfg->id) || !valid_layer_path(cfg->rootfs) ||
        !valid_layer_path(cfg->dir) || cfg->init_memfd < 0 || (cfg->n_binds && !cfg->binds) ||
        (cfg->n_masks && !cfg->masks)) {
        fmt_err(errbuf, errlen, EINVAL, "invalid sandbox config");
        return -EINVAL;
    }
    for (size_t i = 0; i < cfg->n_layers; i++) {
        if (!cfg->layers || !valid_layer_path(cfg->layers[i])) {
            fmt_err(errbuf, errlen, EINVAL, "invalid sandbox config (layer path)");
            return -EINVAL;
        }
    }

    /* Built once (normally by sl_sandbox_load_init); no sandbox without it. */
    err = -sl_seccomp_default(&filter, &nfilter);
    if (err) {
        fmt_err(errbuf, errlen, err, "build seccomp profile");
        return -err;
    }
    if (nfilter == 0 || nfilter > SL_CTL_MAX_FILTER) {
        fmt_err(errbuf, errlen, E2BIG, "build seccomp profile");
        return -E2BIG;
    }
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        err = errno;
        fmt_err(errbuf, errlen, err, "socketpair");
        return -err;
    }
    /* A full SPAWN (SL_CTL_MAX_MSG) must fit the send buffer of one message;
     * the kernel doubles this and caps it at net.core.wmem_max * 2. */
    {
        int sz = SL_CTL_MAX_MSG + 64 * 1024;

        setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    }
    /* The sync socket: "go" to the child once it is in its cgroup, a
     * child_err back on failure, EOF when the exec closed the child's end.
     * A socket rather than pipes so that a child that died early is an EPIPE
     * (MSG_NOSIGNAL), not a SIGPIPE for the runner. */
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sync) < 0) {
        err = errno;
        fmt_err(errbuf, errlen, err, "socketpair");
        goto fail_fds;
    }

    /* The size-capped writable layer: a tmpfs on dir before the child makes
     * upper/ and work/ in it. Mounted here, in the runner's namespace, so the
     * runner (snapshots, files) sees the same upper dir as the overlay. */
    if (cfg->disk_bytes && cfg->userns) {
        fmt_err(errbuf, errlen, EPERM, "a disk limit needs a root runner (it mounts a tmpfs)");
        err = EPERM;
        goto fail_fds;
    }
    if (cfg->disk_bytes) {
        char opts[64];

        snprintf(opts, sizeof(opts), "size=%llu,mode=0700", cfg->disk_bytes);
        if (mount("tmpfs", cfg->dir, "tmpfs", MS_NOSUID | MS_NODEV, opts) < 0) {
            err = errno;
            fmt_err(errbuf, errlen, err, "mount disk tmpfs on dir");
            goto fail_fds;
        }
        if (!(out->disk_mnt = strdup(cfg->dir))) {
            umount2(cfg->dir, MNT_DETACH);
            err = ENOMEM;
            fmt_err(errbuf, errlen, err, "strdup");
            goto fail_fds;
        }
    }

    /* No runner signal handler may run in the child (libevent's would write
     * into the runner's own wakeup pipe); init resets the mask itself. */
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    pid = clone_ns(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS |
                       (cfg->userns ? CLONE_NEWUSER : 0),
                   &pidfd);
    if (pid == 0) {
        child_ctx c = {.cfg = cfg,
                       .syncfd = sync[1],
                       .ctlfd = sv[1],
                       .memfd = cfg->init_memfd,
                       .rootfd = -1,
                       .parent_fds = {sv[0], sync[0]},
                       .emptyfd = -1,
                       .nullfd = -1,
                       .userns = cfg->userns};
        child_main(&c);
    }
    err = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        fmt_err(errbuf, errlen, err, "clone");
        goto fail_fds;
    }
    close(sv[1]);
    close(sync[1]);
    sv[1] = sync[1] = -1;
    if (cfg->userns) {
        const char *what = "uid_map";
        char m[64];

        err = -sl_userns_map(pid, &what);
        if (!err && send(sync[0], "u", 1, MSG_NOSIGNAL) != 1 && errno != EPIPE)
            err = errno ? errno : EIO; /* EPIPE: the child died; its report says why */
        if (err) {
            snprintf(m, sizeof(m), "write %s of the sandbox's user namespace", what);
            fmt_err(errbuf, errlen, err, m);
            goto fail_child;
        }
    }

    err = -sl_cgroup_create(&out->cg, cfg->id, cfg->limits != NULL && cfg->limits->memory_bytes);
    if (err) {
        fmt_err(errbuf, errlen, err, "create cgroup");
        goto fail_child;
    }
    /* Limits before the child joins: nothing it runs is ever unlimited. */
    if (cfg->limits) {
        const char *what = "cgroup";

        err = -sl_cgroup_set_limits(&out->cg, cfg->limits, &what);
        if (err) {
            char m[64];

            snprintf(m, sizeof(m), "set %s limit", what);
            fmt_err(errbuf, errlen, err, m);
            goto fail_child;
        }
    }
    err = -sl_cgroup_attach(&out->cg, pid);
    if (err) {
        fmt_err(errbuf, errlen, err, "join cgroup");
        goto fail_child;
    }
    /* The pair, peer born inside the child's namespace as eth0, before "go":
     * the child configures it before it execs init. */
    if (cfg->net) {
        const char *what = "configure";

        err = -sl_net_veth_create(cfg->net->host_if, pid, SL_NET_SANDBOX_IF);
        if (err) {
            fmt_err(errbuf, errlen, err, "create veth pair");
            goto fail_child;
        }
        memcpy(out->net_if, cfg->net->host_if, sizeof(out->net_if));
        out->net_if[sizeof(out->net_if) - 1] = '\0';
        err = -sl_net_if_setup(cfg->net->host_if, cfg->net->host_addr, cfg->net->prefix, &what);
        if (err) {
            char m[64];

            snprintf(m, sizeof(m), "host side of the veth pair: %s", what);
            fmt_err(errbuf, errlen, err, m);
            goto fail_child;
        }
    }
    if (send(sync[0], "g", 1, MSG_NOSIGNAL) != 1) {
        /* EPIPE: the child already failed; its report is still queued. */
        if (errno != EPIPE) {
            err = errno ? errno : EIO;
            fmt_err(errbuf, errlen, err, "send go");
            goto fail_child;
        }
    }
    if (fcntl(sv[0], F_SETFL, O_NONBLOCK) < 0) {
        err = errno;
        fmt_err(errbuf, errlen, err, "fcntl");
        goto fail_child;
    }

    /* Wait for the sync socket (data: the child failed; EOF: exec'd) and for
     * READY on the channel (EOF there: init died). */
    {
        long deadline = now_ms() + SPAWN_TIMEOUT_MS;
        struct pollfd pfd[2] = {{.fd = sync[0], .events = POLLIN}, {.fd = sv[0], .events = POLLIN}};

        for (;;) {
            long left = deadline - now_ms();
            int r;

            if (left <= 0) {
                err = ETIMEDOUT;
                fmt_err(errbuf, errlen, err, "waiting for sandlot-init");
                goto fail_child;
            }
            r = poll(pfd, 2, (int)left);
            if (r < 0 && errno != EINTR) {
                err = errno;
                fmt_err(errbuf, errlen, err, "poll");
                goto fail_child;
            }
            if (r <= 0)
                continue;
            if (pfd[0].revents) {
                child_err ce;
                ssize_t n = recv(sync[0], &ce, sizeof(ce), MSG_DONTWAIT);

                if (n == (ssize_t)sizeof(ce)) {
                    ce.msg[sizeof(ce.msg) - 1] = '\0';
                    err = ce.err > 0 ? ce.err : EIO;
                    if (errbuf && errlen)
                        snprintf(errbuf, errlen, "%s", ce.msg);
                    goto fail_child;
                }
                if (n < 0 && (errno == EINTR || errno == EAGAIN))
                    continue;
                pfd[0].fd = -1; /* EOF: the exec went through (or the child died) */
            }
            if (pfd[1].revents) {
                sl_ctl_hdr hdr;
                int r2 = sl_ctl_recv(sv[0], &hdr, NULL, 0, NULL, NULL);

                if (r2 == -EAGAIN || r2 == -EINTR)
                    continue;
                if (r2 == 0 && hdr.type == SL_CTL_READY)
                    break;
                if (r2 == -EPIPE) {
                    /* Prefer the child's own words if it left any. */
                    child_err ce;

                    if (pfd[0].fd >= 0 &&
                        recv(sync[0], &ce, sizeof(ce), MSG_DONTWAIT) == (ssize_t)sizeof(ce)) {
                        ce.msg[sizeof(ce.msg) - 1] = '\0';
                        err = ce.err > 0 ? ce.err : EIO;
                        if (errbuf && errlen)
                            snprintf(errbuf, errlen, "%s", ce.msg);
                        goto fail_child;
                    }
                    int st;

                    reap(pid, &st);
                    child_done = 1;
                    describe_status(msg, sizeof(msg), st);
                    err = ECHILD;
                    if (errbuf && errlen)
                        snprintf(errbuf, errlen, "%s", msg);
                    goto fail_child;
                }
                err = r2 < 0 ? -r2 : EPROTO;
                fmt_err(errbuf, errlen, err, "waiting for READY from sandlot-init");
                goto fail_child;
            }
        }
    }
    /* The seccomp profile goes to init before anything else can: the channel
     * is ordered, so it arrives before the caller's first SPAWN, and init
     * refuses to spawn without it. */
    {
        sl_ctl_hdr sh = {.type = SL_CTL_SECCOMP, .id = 0, .arg = (uint32_t)nfilter};

        err = -sl_ctl_send(sv[0], &sh, filter, nfilter * sizeof(*filter), NULL, 0);
        if (err) {
            fmt_err(errbuf, errlen, err, "send seccomp profile to sandlot-init");
            goto fail_child;
        }
    }
    close(sync[0]);
    out->init_pid = pid;
    out->ctl_fd = sv[0];
    out->pidfd = pidfd;
    return 0;

fail_child:
    if (!child_done) {
        if (pidfd >= 0)
            syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
        else
            kill(pid, SIGKILL);
        reap(pid, NULL);
    }
    sl_cgroup_destroy(&out->cg);
    if (out->net_if[0]) {
        (void)sl_net_link_del(out->net_if);
        out->net_if[0] = '\0';
    }
fail_fds:
    if (out->disk_mnt) {
        umount2(out->disk_mnt, MNT_DETACH);
        free(out->disk_mnt);
        out->disk_mnt = NULL;
    }
    for (int i = 0; i < 2; i++) {
        if (sv[i] >= 0)
            close(sv[i]);
        if (sync[i] >= 0)
            close(sync[i]);
    }
    if (pidfd >= 0)
        close(pidfd);
    return -err;
}

void sl_sandbox_kill(sl_sandbox *sb)
{
    if (!sb)
        return;
    sl_cgroup_kill(&sb->cg);
    /* Killing pid 1 of the namespace makes the kernel kill every other
     * process in it, cgroup or not. */
    if (sb->init_pid <= 0)
        return; /* never spawned (or released): kill(0 or -1) would hit us */
    if (sb->pidfd >= 0)
        syscall(SYS_pidfd_send_signal, sb->pidfd, SIGKILL, NULL, 0);
    else
        kill(sb->init_pid, SIGKILL);
}

void sl_sandbox_release(sl_sandbox *sb)
{
    if (!sb)
        return;
    sl_cgroup_destroy(&sb->cg);
    /* The veth pair goes with the network namespace, which dies with init
     * (the kernel's cleanup_net, a workqueue): deleting it here would cost
     * the caller an RCU grace period (~18 ms) for nothing. */
    sb->net_if[0] = '\0';
    /* Detach: the kernel frees the tmpfs once the last user (a lingering
     * copy in a snapshot job, say) lets go; the caller then removes dir. */
    if (sb->disk_mnt) {
        (void)umount2(sb->disk_mnt, MNT_DETACH); /* EINVAL: not mounted any more */
        free(sb->disk_mnt);
        sb->disk_mnt = NULL;
    }
    if (sb->ctl_fd >= 0)
        close(sb->ctl_fd);
    /* A zeroed struct has pidfd 0: only trust it when spawn filled it in. */
    if (sb->init_pid > 0 && sb->pidfd >= 0)
        close(sb->pidfd);
    sb->ctl_fd = sb->pidfd = -1;
    sb->init_pid = -1;
}

int sl_sandbox_load_init(const char *path)
{
    static const unsigned seals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL;
    char buf[65536];
    struct stat st;
    int in, mfd, err = 0;
    off_t total = 0;

    if (!path)
        return -EINVAL;
    {
        /* Build the seccomp profile now, once, so that a broken libseccomp
         * stops the runner at start instead of failing every sandbox. */
        const struct sock_filter *f;
        size_t n;

        err = sl_seccomp_default(&f, &n);
        if (err < 0)
            return err;
    }
    in = open(path, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return -errno;
    if (fstat(in, &st) < 0) {
        err = errno;
        close(in);
        return -err;
    }
    if (!S_ISREG(st.st_mode) || st.st_size <= 0) {
        close(in);
        return -ENOEXEC;
    }
    /* MFD_EXEC (Linux 6.3+) says we mean to exec it, which keeps working
     * when vm.memfd_noexec asks for non-executable memfds by default. */
    mfd = memfd_create("sandlot-init", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC);
    if (mfd < 0 && errno == EINVAL)
        mfd = memfd_create("sandlot-init", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (mfd < 0) {
        err = errno;
        close(in);
        return -err;
    }
    for (;;) {
        ssize_t n = read(in, buf, sizeof(buf));

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            err = errno;
            break;
        }
        if (n == 0)
            break;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(mfd, buf + off, (size_t)(n - off));

            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                err = errno;
                break;
            }
            off += w;
        }
        if (err)
            break;
        total += n;
    }
    close(in);
    if (!err && total == 0)
        err = ENOEXEC;
    /* Sealed: nobody (not even a process that gets hold of /proc/1/exe inside
     * a sandbox) can change what every later sandbox runs as pid 1. */
    if (!err && fcntl(mfd, F_ADD_SEALS, seals) < 0)
        err = errno;
    if (err) {
        close(mfd);
        return -err;
    }
    return mfd;
}
