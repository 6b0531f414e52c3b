/* sl_sb_dev.c - /proc, /sys and /dev of a new sandbox root (child side). */
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

/* Without a user namespace, root inside could write these and reach the
 * host kernel (sysctls, sysrq-trigger reboots the machine): always read-only. */
static const char *const readonly_paths[] = {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                                             "/proc/sysrq-trigger"};

/* Device nodes of the sandbox's /dev: made with mknod (the sandbox's own
 * inodes, so a chmod inside changes nothing outside, and no mount each), or,
 * where mknod is not allowed (a rootless runner), read-only binds of
 * the host's nodes. */
static const char *const dev_nodes[] = {"null", "zero", "full", "random", "urandom", "tty"};

/* /proc of the new pid namespace and /sys of the new network namespace. */
void sl__child_proc_sys(child_ctx *c)
{
    /* We are pid 1 of the new pid namespace: this proc shows only the sandbox.
     * Read-only as a whole: the mode and owner of a global entry
     * (/proc/meminfo, /proc/slabinfo...) live in one kernel object shared by
     * every proc mount, so a chmod or chown by root in here would change them
     * for the host and every other sandbox. Writes through /proc/self/fd/N
     * (/dev/stdout) still work (they land on the target's own mount); what
     * fails with EROFS is writing the per-process knobs (oom_score_adj, comm
     * of another thread...). The read-only binds below are kept as a second
     * wall for the entries that reach the kernel. */
    sl__child_mount(c, "proc", "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL,
                    WALK_MKDIR);
    for (size_t i = 0; i < sizeof(readonly_paths) / sizeof(readonly_paths[0]); i++) {
        int fd = sl__walk(c->rootfd, readonly_paths[i], WALK_EXISTING);
        char target[64];

        if (fd < 0)
            continue; /* not in this kernel's proc */
        sl__proc_fd_path(target, sizeof(target), fd);
        if (mount(target, target, NULL, MS_BIND | MS_REC, NULL) < 0)
            sl__child_die(c, errno, "bind %s", readonly_paths[i]);
        close(fd);
        sl__child_remount(c, readonly_paths[i], MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC);
    }
    sl__child_dev(c);
    {
        /* sysfs of the new network namespace (shows only lo). */
        int fd = sl__walk(c->rootfd, "/sys", WALK_MKDIR);
        char target[64];

        if (fd < 0)
            sl__child_die(c, -fd, "mount sysfs on /sys");
        sl__proc_fd_path(target, sizeof(target), fd);
        if (mount("sysfs", target, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) <
            0) {
            /* Not allowed (e.g. nested without CAP_SYS_ADMIN over the netns):
             * fall back to the host's /sys, read-only. */
            if (errno != EPERM && errno != EACCES)
                sl__child_die(c, errno, "mount sysfs on /sys");
            if (mount("/sys", target, NULL, MS_BIND | MS_REC, NULL) < 0)
                sl__child_die(c, errno, "bind /sys");
            close(fd);
            sl__child_remount(c, "/sys", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC);
        } else {
            close(fd);
        }
    }
}

void sl__child_dev(const child_ctx *c)
{
    char path[64];
    int devfd;

    sl__child_mount(c, "tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k",
                    WALK_MKDIR);
    /* A fresh tmpfs: nothing in it can be a symlink, plain *at() calls do. */
    devfd = sl__walk(c->rootfd, "/dev", WALK_EXISTING);
    if (devfd < 0)
        sl__child_die(c, -devfd, "open /dev");
    {
        int dfd = openat(devfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        static const char *const links[][2] = {
            {"/proc/self/fd", "fd"},       {"/proc/self/fd/0", "stdin"},
            {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"},
            {"pts/ptmx", "ptmx"},
        };

        if (dfd < 0)
            sl__child_die(c, errno, "open /dev");
        for (size_t i = 0; i < sizeof(dev_nodes) / sizeof(dev_nodes[0]); i++) {
            char host[32];
            struct stat st;
            mode_t mode;

            snprintf(host, sizeof(host), "/dev/%s", dev_nodes[i]);
            snprintf(path, sizeof(path), "/dev/%s", dev_nodes[i]);
            if (stat(host, &st) < 0)
                sl__child_die(c, errno, "stat %s", host);
            if (!S_ISCHR(st.st_mode))
                sl__child_die(c, ENODEV, "%s", host);
            mode = st.st_mode & 0777;
            /* fchmodat: mknod's mode went through the runner's umask. */
            if (mknodat(dfd, dev_nodes[i], S_IFCHR | mode, st.st_rdev) == 0) {
                if (fchmodat(dfd, dev_nodes[i], mode, 0) < 0)
                    sl__child_die(c, errno, "chmod %s", path);
                continue;
            }
            if (errno != EPERM)
                sl__child_die(c, errno, "mknod %s", path);
            /* Read-only: a bound node is the host's own inode, and a chmod or
             * chown through a writable bind would change the host's
             * /dev/null. Data still flows: a read-only mount does not stop
             * writes to a device. */
            sl__child_bind(c, host, path, MS_RDONLY | MS_NOSUID | MS_NOEXEC);
        }
        for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++)
            if (symlinkat(links[i][0], dfd, links[i][1]) < 0)
                sl__child_die(c, errno, "symlink /dev/%s", links[i][1]);
        if (mkdirat(dfd, "pts", 0755) < 0 || mkdirat(dfd, "shm", 01777) < 0)
            sl__child_die(c, errno, "mkdir in /dev");
        close(dfd);
    }
    close(devfd);
    /* newinstance: the sandbox's ptys are its own, not the host's. */
    sl__child_mount(c, "devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
                    "newinstance,ptmxmode=0666,mode=0620", WALK_EXISTING);
    sl__child_mount(c, "tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777",
                    WALK_EXISTING);
}
