/* sl_userns.c - uid/gid maps of a rootless sandbox and locked mount flags.
 *
 * One id each, written by the parent (the runner) between clone and "go":
 * the kernel allows an unprivileged process exactly this much (its own euid
 * and egid, with setgroups denied), so no setuid helper (newuidmap) and no
 * /etc/subuid entry is needed. A wider map would let the sandbox own files
 * as uids other than the runner's, which would then be ids of other host
 * users; with one id there is no such question.
 */
#include "sl_userns.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

/* Write text to /proc/<pid>/<file> in one write (the kernel parses a map
 * only from a single write at offset 0). Returns 0 or -errno. */
static int write_proc(pid_t pid, const char *file, const char *text)
{
    char path[64];
    size_t len = strlen(text);
    ssize_t n;
    int fd, err = 0;

    snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, file);
    fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    do
        n = write(fd, text, len);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        err = -errno;
    else if ((size_t)n != len)
        err = -EIO;
    if (close(fd) < 0 && !err)
        err = -errno;
    return err;
}

int sl_userns_map(pid_t pid, const char **what)
{
    char map[64];
    int err;

    if (pid <= 0)
        return -EINVAL;
    *what = "setgroups";
    /* ENOENT: a kernel before 3.19 has no setgroups file and no such rule. */
    err = write_proc(pid, "setgroups", "deny");
    if (err && err != -ENOENT)
        return err;
    *what = "uid_map";
    snprintf(map, sizeof(map), "0 %u 1\n", (unsigned)geteuid());
    if ((err = write_proc(pid, "uid_map", map)) < 0)
        return err;
    *what = "gid_map";
    snprintf(map, sizeof(map), "0 %u 1\n", (unsigned)getegid());
    return write_proc(pid, "gid_map", map);
}

int sl_userns_probe(char *why, size_t whylen)
{
    struct utsname u;
    int major = 0, minor = 0, st = 0;
    pid_t pid;

    if (uname(&u) == 0 && sscanf(u.release, "%d.%d", &major, &minor) == 2 &&
        (major < 5 || (major == 5 && minor < 11))) {
        snprintf(why, whylen, "Linux %s cannot mount overlayfs in a user namespace (needs 5.11+)",
                 u.release);
        return -ENOSYS;
    }
    /* In a child: a user namespace cannot be left again. */
    pid = fork();
    if (pid < 0) {
        snprintf(why, whylen, "fork: %s", strerror(errno));
        return -errno;
    }
    if (pid == 0)
        _exit(unshare(CLONE_NEWUSER) < 0 ? (errno & 0xff ? errno & 0xff : 1) : 0);
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR) {
            snprintf(why, whylen, "waitpid: %s", strerror(errno));
            return -errno;
        }
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 0;
    {
        int err = WIFEXITED(st) ? WEXITSTATUS(st) : EIO;

        snprintf(why, whylen,
                 "the kernel refuses this user a user namespace (unshare: %s); rootless mode "
                 "needs unprivileged user namespaces (sysctl user.max_user_namespaces > 0, "
                 "kernel.unprivileged_userns_clone = 1 where it exists, no AppArmor or seccomp "
                 "rule against them), or run sandlotd as root",
                 strerror(err));
        return -err;
    }
}

unsigned long sl_userns_locked_flags(const char *path)
{
    static const struct {
        unsigned long st, ms;
    } map[] = {
        {ST_NOSUID, MS_NOSUID},     {ST_NODEV, MS_NODEV},     {ST_NOEXEC, MS_NOEXEC},
        {ST_RDONLY, MS_RDONLY},     {ST_NOATIME, MS_NOATIME}, {ST_NODIRATIME, MS_NODIRATIME},
        {ST_RELATIME, MS_RELATIME},
    };
    struct statvfs sv;
    unsigned long flags = 0;

    if (statvfs(path, &sv) < 0)
        return 0;
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (sv.f_flag & map[i].st)
            flags |= map[i].ms;
    return flags;
}
