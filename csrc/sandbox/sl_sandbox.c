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
 * The child side lives in sl_sb_*.c (see sl_sb_int.h): mount targets are
 * walked without following symlinks (sl_sb_walk.c), so a symlink in an image
 * or an upper dir can never redirect a mount onto the host.
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
#include "sl_sb_int.h"

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
#include <sys/resource.h>
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

static struct rlimit child_nofile;
static int child_nofile_set;

void sl_sandbox_set_nofile(const struct rlimit *rl)
{
    child_nofile_set = rl != NULL;
    if (rl)
        child_nofile = *rl;
}

const struct rlimit *sl__sandbox_nofile(void)
{
    return child_nofile_set ? &child_nofile : NULL;
}

/* How long spawn waits for init's READY before giving up. */
#define SPAWN_TIMEOUT_MS 10000

/* ---------------------------------------------------------------- helpers */

static void fmt_err(char *buf, size_t len, int err, const char *what)
{
    if (buf && len > 0)
        snprintf(buf, len, "%s: %s", what, strerror(err));
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

/* self_attach: the child moves itself into its cgroup (sl_sandbox_spawn_start);
 * else the parent moves it, in parallel with the child's root set-up. */
static int spawn_start(const sl_sandbox_config *cfg, sl_sandbox *out, char *errbuf, size_t errlen,
                       int self_attach)
{
    int sv[2] = {-1, -1}, sync[2] = {-1, -1}, pidfd = -1, err = 0;
    const struct sock_filter *filter;
    size_t nfilter;
    sigset_t all, old;
    pid_t pid;

    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!out)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    out->init_pid = -1;
    out->ctl_fd = out->pidfd = out->sync_fd = -1;
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

    /* The cgroup (and its limits) exists before the clone, so that a child
     * that joins it itself (self_attach) finds the paths in its copy of our
     * memory. Limits before the child joins: nothing it runs is ever
     * unlimited. */
    err = -sl_cgroup_create(&out->cg, cfg->id, cfg->limits != NULL && cfg->limits->memory_bytes);
    if (err) {
        fmt_err(errbuf, errlen, err, "create cgroup");
        goto fail_cg;
    }
    if (cfg->limits) {
        const char *what = "cgroup";

        err = -sl_cgroup_set_limits(&out->cg, cfg->limits, &what);
        if (err) {
            char m[64];

            snprintf(m, sizeof(m), "set %s limit", what);
            fmt_err(errbuf, errlen, err, m);
            goto fail_cg;
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
                       .userns = cfg->userns,
                       .cg = &out->cg,
                       .self_attach = self_attach};
        sl__child_main(&c);
    }
    err = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        fmt_err(errbuf, errlen, err, "clone");
        goto fail_cg;
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

    /* Moving a process between cgroups waits for an RCU grace period (the
     * cgroup_threadgroup_rwsem write side: 5-15 ms here); a self-attaching
     * child pays it in its own time, off the caller's. */
    err = self_attach ? 0 : -sl_cgroup_attach(&out->cg, pid);
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

    out->init_pid = pid;
    out->ctl_fd = sv[0];
    out->pidfd = pidfd;
    out->sync_fd = sync[0];
    out->deadline_ms = now_ms() + SPAWN_TIMEOUT_MS;
    return 0;

fail_child : {
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
    goto fail_fds;
fail_cg:
    sl_cgroup_destroy(&out->cg);
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

/* A started spawn failed: kill and reap the child (unless child_done: it
 * was reaped already), remove its cgroup, veth and disk tmpfs, close the fds. */
static void spawn_abort(sl_sandbox *out, int child_done)
{
    if (!child_done && out->init_pid > 0) {
        if (out->pidfd >= 0)
            syscall(SYS_pidfd_send_signal, out->pidfd, SIGKILL, NULL, 0);
        else
            kill(out->init_pid, SIGKILL);
        reap(out->init_pid, NULL);
    }
    sl_cgroup_destroy(&out->cg);
    if (out->net_if[0]) {
        (void)sl_net_link_del(out->net_if);
        out->net_if[0] = '\0';
    }
    if (out->disk_mnt) {
        umount2(out->disk_mnt, MNT_DETACH);
        free(out->disk_mnt);
        out->disk_mnt = NULL;
    }
    if (out->ctl_fd >= 0)
        close(out->ctl_fd);
    if (out->sync_fd >= 0)
        close(out->sync_fd);
    if (out->pidfd >= 0)
        close(out->pidfd);
    out->ctl_fd = out->sync_fd = out->pidfd = -1;
    out->init_pid = -1;
}

/* The child runs and builds its root on its own from here on. */
int sl_sandbox_spawn_finish(sl_sandbox *out, int wait_ms, char *errbuf, size_t errlen)
{
    const struct sock_filter *filter;
    size_t nfilter;
    int err, child_done = 0;
    char msg[320];

    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!out || out->init_pid <= 0 || out->sync_fd < 0)
        return -EINVAL;
    err = -sl_seccomp_default(&filter, &nfilter);
    if (err) {
        fmt_err(errbuf, errlen, err, "build seccomp profile");
        goto fail_child;
    }
    /* Someone waits now: a pre-set-up child still at nice 19 gets ours. */
    if (wait_ms != 0) {
        errno = 0;
        int prio = getpriority(PRIO_PROCESS, 0);

        if (errno == 0)
            (void)setpriority(PRIO_PROCESS, (id_t)out->init_pid, prio);
    }
    /* Wait for the sync socket (data: the child failed; EOF: exec'd) and for
     * READY on the channel (EOF there: init died). */
    {
        long until = wait_ms < 0 ? out->deadline_ms : now_ms() + wait_ms;
        struct pollfd pfd[2] = {{.fd = out->sync_fd, .events = POLLIN},
                                {.fd = out->ctl_fd, .events = POLLIN}};

        if (until > out->deadline_ms)
            until = out->deadline_ms;
        for (;;) {
            long left = until - now_ms();
            int r;

            if (left <= 0 && now_ms() >= out->deadline_ms) {
                err = ETIMEDOUT;
                fmt_err(errbuf, errlen, err, "waiting for sandlot-init");
                goto fail_child;
            }
            if (left < 0)
                left = 0;
            r = poll(pfd, 2, (int)left);
            if (r == 0 && left == 0 && now_ms() < out->deadline_ms)
                return -EINPROGRESS; /* not READY yet: the caller looks again later */
            if (r < 0 && errno != EINTR) {
                err = errno;
                fmt_err(errbuf, errlen, err, "poll");
                goto fail_child;
            }
            if (r <= 0)
                continue;
            if (pfd[0].revents) {
                child_err ce;
                ssize_t n = recv(out->sync_fd, &ce, sizeof(ce), MSG_DONTWAIT);

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
                int r2 = sl_ctl_recv(out->ctl_fd, &hdr, NULL, 0, NULL, NULL);

                if (r2 == -EAGAIN || r2 == -EINTR)
                    continue;
                if (r2 == 0 && hdr.type == SL_CTL_READY)
                    break;
                if (r2 == -EPIPE) {
                    /* Prefer the child's own words if it left any. */
                    child_err ce;

                    if (pfd[0].fd >= 0 &&
                        recv(out->sync_fd, &ce, sizeof(ce), MSG_DONTWAIT) == (ssize_t)sizeof(ce)) {
                        ce.msg[sizeof(ce.msg) - 1] = '\0';
                        err = ce.err > 0 ? ce.err : EIO;
                        if (errbuf && errlen)
                            snprintf(errbuf, errlen, "%s", ce.msg);
                        goto fail_child;
                    }
                    int st;

                    reap(out->init_pid, &st);
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

        err = -sl_ctl_send(out->ctl_fd, &sh, filter, nfilter * sizeof(*filter), NULL, 0);
        if (err) {
            fmt_err(errbuf, errlen, err, "send seccomp profile to sandlot-init");
            goto fail_child;
        }
    }
    close(out->sync_fd);
    out->sync_fd = -1;
    return 0;

fail_child:
    spawn_abort(out, child_done);
    return -err;
}

int sl_sandbox_spawn_start(const sl_sandbox_config *cfg, sl_sandbox *out, char *errbuf,
                           size_t errlen)
{
    /* In a user namespace the child cannot write the host's cgroup files. */
    return spawn_start(cfg, out, errbuf, errlen, !cfg || !cfg->userns);
}

int sl_sandbox_spawn(const sl_sandbox_config *cfg, sl_sandbox *out, char *errbuf, size_t errlen)
{
    int r = spawn_start(cfg, out, errbuf, errlen, 0);

    return r < 0 ? r : sl_sandbox_spawn_finish(out, -1, errbuf, errlen);
}

void sl_sandbox_kill(sl_sandbox *sb)
{
    if (!sb)
        return;
    /* Killing pid 1 of the namespace makes the kernel kill every other
     * process in it (and refuse new ones: a fork bomb ends too), cgroup or
     * not, and every process of the sandbox is in its pid namespace. The
     * cgroup kill is only the fallback without an init: cgroup.kill (and the
     * v1 freeze) takes cgroup_threadgroup_rwsem for writing, which waits an
     * RCU grace period (5-50 ms measured here) in the caller's loop. */
    if (sb->init_pid <= 0 || sb->kill_cgroup) {
        /* Never spawned (or released): kill(0 or -1) would hit us. */
        sl_cgroup_kill(&sb->cg);
        if (sb->init_pid <= 0)
            return;
    }
    if (sb->pidfd >= 0)
        syscall(SYS_pidfd_send_signal, sb->pidfd, SIGKILL, NULL, 0);
    else
        kill(sb->init_pid, SIGKILL);
}

void sl_sandbox_release(sl_sandbox *sb)
{
    if (!sb)
        return;
    if (sb->kill_cgroup)
        sl_cgroup_kill(&sb->cg); /* what outlived init (a microVM's QEMU) goes too */
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
    if (sb->init_pid > 0 && sb->sync_fd >= 0)
        close(sb->sync_fd);
    sb->ctl_fd = sb->pidfd = sb->sync_fd = -1;
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
