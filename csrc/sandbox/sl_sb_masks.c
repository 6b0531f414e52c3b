/* sl_sb_masks.c - paths hidden inside a new sandbox root (child side). */
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
#include <dirent.h>

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

/* Hide what fd (an O_PATH fd of path inside the new root; closed here) holds:
 * a directory behind an empty tmpfs, anything else behind /dev/null. */
static void sl__child_mask_fd(child_ctx *c, int fd, const char *path, enum mask_kind kind)
{
    struct stat st;
    char target[64], src[64], opts[96];

    if (fstat(fd, &st) < 0)
        sl__child_die(c, errno, "mask %s", path);
    sl__proc_fd_path(target, sizeof(target), fd);
    if (S_ISDIR(st.st_mode) && kind == MASK_READONLY && c->emptyfd >= 0) {
        /* Every read-only dir mask shows the same empty, read-only tmpfs: a
         * bind of the first one (the read-only flag comes along) is much
         * cheaper than a new tmpfs superblock each. */
        sl__proc_fd_path(src, sizeof(src), c->emptyfd);
        if (mount(src, target, NULL, MS_BIND, NULL) < 0)
            sl__child_die(c, errno, "mask %s", path);
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
            sl__child_die(c, errno, "mask %s", path);
        if (kind == MASK_READONLY) {
            /* fd is the directory below the mount; walking again gets the
             * tmpfs's root, to bind for the next masks. */
            c->emptyfd = sl__walk(c->rootfd, path, WALK_EXISTING);
            if (c->emptyfd < 0)
                sl__child_die(c, -c->emptyfd, "mask %s", path);
        }
    } else {
        /* A file: tmpfs cannot cover it, /dev/null can (containerd's way;
         * no MS_NODEV, or reading it would fail instead of being empty).
         * The sandbox's own /dev/null, so one bind does: writes vanish, and
         * a chmod reaches only that node (or, where it is a read-only bind
         * of the host's, fails: a bind keeps its source's read-only flag). */
        if (c->nullfd < 0) {
            c->nullfd = sl__walk(c->rootfd, "/dev/null", WALK_EXISTING);
            if (c->nullfd < 0)
                sl__child_die(c, -c->nullfd, "mask %s: open /dev/null", path);
        }
        sl__proc_fd_path(src, sizeof(src), c->nullfd);
        if (mount(src, target, NULL, MS_BIND, NULL) < 0)
            sl__child_die(c, errno, "mask %s", path);
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
        sl__child_die(c, errno, "mask %s", path);
    }
    fd = sl__walk(c->rootfd, real, WALK_EXISTING);
    /* ENOENT: on another host filesystem, which the overlay of "/" does not
     * show (it is an empty directory inside). */
    if (fd == -ENOENT)
        return;
    if (fd < 0)
        sl__child_die(c, -fd, "mask %s", real);
    sl__child_mask_fd(c, fd, real, kind);
}

/* The host image's default masks: secrets, SSH host keys, home dirs. */
static void sl__child_host_masks(child_ctx *c)
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
        sl__child_die(c, errno, "mask %s", HOST_SSH_DIR);
    }
    for (;;) {
        struct dirent *de;
        char path[sizeof(HOST_SSH_DIR) + NAME_MAX + 1];
        size_t l;

        errno = 0;
        de = readdir(d);
        if (!de) {
            if (errno)
                sl__child_die(c, errno, "read %s", HOST_SSH_DIR);
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

/* Default and caller masks, then (host image) the host's secrets. */
void sl__child_masks(child_ctx *c)
{
    const sl_sandbox_config *cfg = c->cfg;

    for (size_t i = 0; i < N_DEFAULT_MASKS + cfg->n_masks; i++) {
        const char *mask = i < N_DEFAULT_MASKS ? default_masks[i] : cfg->masks[i - N_DEFAULT_MASKS];
        int fd;

        if (!mask || mask[0] != '/' || mask[strspn(mask, "/")] == '\0')
            sl__child_die(c, EINVAL, "mask %s", mask ? mask : "(null)");
        fd = sl__walk(c->rootfd, mask, WALK_EXISTING);

        /* Absent here: nothing to hide. Behind a symlink: the caller's mask
         * (its own state dirs) would silently not apply, so that fails the
         * spawn; the caller passes canonical paths. */
        if (fd == -ELOOP && i >= N_DEFAULT_MASKS)
            sl__child_die(c, ELOOP, "mask %s", mask);
        if (fd < 0)
            continue;
        sl__child_mask_fd(c, fd, mask, MASK_READONLY);
    }
    if (strcmp(cfg->rootfs, "/") == 0)
        sl__child_host_masks(c);
    if (strcmp(cfg->rootfs, "/") == 0)
        sl__child_host_masks(c);
}
