/* init.c - sandlot-init, pid 1 of every sandbox.
 *
 * Exec'd by sl_sandbox_spawn() from a sealed memfd, statically linked (libc
 * only) so it runs in any root filesystem and needs nothing from it, not even
 * /proc. It talks to sandlotd over the SOCK_SEQPACKET control channel on fd 3
 * (docs/protocol.md section 2): says READY, then starts processes on SPAWN,
 * reports STARTED / SPAWN_FAILED / EXITED, forwards SIGNAL, and reaps every
 * child, orphans included (it is the namespace's reaper).
 *
 * Robustness rules: a malformed message is dropped (a SPAWN we cannot use is
 * answered with SPAWN_FAILED so the runner does not wait forever), never
 * fatal. The channel is only read when poll() says a message is there. Sends
 * are blocking: each message is a dozen bytes plus a short text and the
 * socket buffer holds hundreds of them, so a send only waits if the runner has
 * stopped reading its event loop entirely - and then nothing else init could
 * do would matter; dropping an EXITED instead would lose an exit status.
 * EOF on the channel means the runner is gone: init kills everything and
 * exits, which also tears down the pid namespace.
 *
 * Hardening (docs/security.md). When the runner's seccomp program arrives
 * (SL_CTL_SECCOMP, right after READY and before any SPAWN), init drops its own
 * capability bounding set to the sandbox's set and installs the program on
 * itself. Both are inherited by every child it forks: the filter is compiled
 * by the kernel once per sandbox instead of once per process, and init needs
 * nothing the profile forbids (fork is a clone without namespace flags; wait,
 * kill, signalfd, sockets, prctl, capset, execve are all allowed). Each child
 * then lowers its permitted/effective/inheritable/ambient capabilities and
 * sets no_new_privs just before execve. Without a program (or when installing
 * it failed) init refuses every SPAWN. init keeps its full permitted and
 * effective capabilities: the bounding set only matters at execve, which init
 * never calls, and holding capabilities its children lack is what keeps them
 * from ptrace-ing it or opening /proc/1/mem, /proc/1/environ or anything
 * behind /proc/1/fd/N (the kernel's ptrace access check asks the caller to
 * hold every capability of the target).
 */
#include "sl_ctl.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* A process started on the runner's request, until it is reaped. */
typedef struct tracked {
    pid_t pid;
    uint32_t id;
} tracked;

static tracked *procs;
static size_t nprocs, capprocs;

/* One whole control message; static because it is large for a stack.
 * Aligned so that a SECCOMP payload is a proper struct sock_filter array. */
static _Alignas(8) char msgbuf[SL_CTL_MAX_MSG];

/* Set once the runner's seccomp program is installed on init (and thereby on
 * every later child). Until then every SPAWN fails with harden_err and
 * harden_what: why it is not (yet) installed. */
static int hardened;
static int harden_err = EPROTO;
static const char *harden_what = "no seccomp profile received from the runner";

/* Docker's default capability set without CAP_NET_RAW and CAP_MKNOD (no raw
 * sockets, no device nodes: the sandbox needs neither). Everything else is
 * gone from every set, the bounding set included, so not even a setuid-root
 * binary or a file capability can bring CAP_SYS_ADMIN, CAP_SYS_PTRACE,
 * CAP_SYS_MODULE, CAP_SYS_TIME, CAP_SYS_BOOT or CAP_NET_ADMIN back. */
static const int keep_caps[] = {
    CAP_CHOWN,       CAP_DAC_OVERRIDE, CAP_FOWNER,  CAP_FSETID,           CAP_KILL,
    CAP_SETGID,      CAP_SETUID,       CAP_SETPCAP, CAP_NET_BIND_SERVICE, CAP_SYS_CHROOT,
    CAP_AUDIT_WRITE, CAP_SETFCAP,
};

/* What a spawned child reports when chdir or exec fails. */
typedef struct exec_err {
    int err;
    char msg[200];
} exec_err;

static void send_msg(uint32_t type, uint32_t id, uint32_t arg, const char *text)
{
    sl_ctl_hdr h = {.type = type, .id = id, .arg = arg};

    /* A failure means the runner is gone; the poll loop sees the EOF. */
    (void)sl_ctl_send(SL_CTL_FD, &h, text, text ? strlen(text) : 0, NULL, 0);
}

static void reset_signals(void)
{
    sigset_t none;

    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            signal(sig, SIG_DFL); /* fails harmlessly for the RT signals libc keeps */
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

/* Report from the child and exit; errfd is CLOEXEC, so success is its EOF. */
__attribute__((noreturn)) static void child_fail(int errfd, int err, const char *what,
                                                 const char *arg)
{
    exec_err e;
    const char *desc = strerrordesc_np(err);

    memset(&e, 0, sizeof(e));
    e.err = err;
    snprintf(e.msg, sizeof(e.msg), "%s %s: %s", what, arg, desc ? desc : "Unknown error");
    if (write(errfd, &e, sizeof(e)) < 0) {
        /* the parent then reports a generic failure */
    }
    _exit(127);
}

/* execvpe() with the PATH of the new environment (glibc's execvpe searches
 * the caller's PATH) and DEFAULT_PATH when it has none. Returns errno. */
static int exec_search(char *const argv[], char *const envp[])
{
    const char *file = argv[0], *path = DEFAULT_PATH;
    char buf[PATH_MAX];
    int saw_eacces = 0;

    if (!*file)
        return ENOENT;
    if (strchr(file, '/')) {
        execve(file, argv, envp);
        return errno;
    }
    for (size_t i = 0; envp[i]; i++)
        if (strncmp(envp[i], "PATH=", 5) == 0)
            path = envp[i] + 5;
    for (const char *p = path;;) {
        const char *end = strchrnul(p, ':');
        size_t dl = (size_t)(end - p);

        /* An empty PATH element means the current directory. */
        if (snprintf(buf, sizeof(buf), "%.*s%s%s", (int)dl, dl ? p : ".", "/", file) <
            (int)sizeof(buf)) {
            execve(buf, argv, envp);
            switch (errno) {
            case EACCES:
                saw_eacces = 1;
                break;
            case ENOENT:
            case ENOTDIR:
            case ESTALE:
            case ENODEV:
            case ETIMEDOUT:
            case ELOOP:
            case ENAMETOOLONG:
                break;
            default:
                return errno; /* found but not runnable (ENOEXEC, E2BIG...) */
            }
        }
        if (!*end)
            break;
        p = end + 1;
    }
    return saw_eacces ? EACCES : ENOENT;
}

static uint64_t keep_mask(void)
{
    uint64_t keep = 0;

    for (size_t i = 0; i < sizeof(keep_caps) / sizeof(keep_caps[0]); i++)
        keep |= 1ULL << keep_caps[i];
    return keep;
}

/* Drop everything but keep_caps from init's bounding set (inherited by every
 * child; it is what execve draws a root process's new capabilities from).
 * Returns 0 or an errno. */
static int drop_bounding_set(void)
{
    uint64_t keep = keep_mask();

    /* Capabilities are numbered densely: EINVAL means we passed the
     * kernel's last one. */
    for (int cap = 0; cap < 64; cap++) {
        if (keep & (1ULL << cap))
            continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
            if (errno == EINVAL)
                break;
            return errno;
        }
    }
    return 0;
}

/* In a child: reduce the other capability sets to keep_caps. Returns 0 or
 * an errno and sets *what to the step that failed. */
static int drop_caps(const char **what)
{
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    uint64_t keep = keep_mask();

    /* Ambient capabilities survive execve of non-setuid binaries. (EINVAL:
     * a kernel before 4.3 has none.) */
    *what = "clear ambient";
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        return errno;
    /* Inheritable stays empty (CVE-2022-24769: with it non-empty, a file's
     * inheritable capabilities would be granted to a non-root user). */
    memset(data, 0, sizeof(data));
    data[0].effective = data[0].permitted = (uint32_t)keep;
    data[1].effective = data[1].permitted = (uint32_t)(keep >> 32);
    *what = "capset";
    if (syscall(SYS_capset, &hdr, data) < 0)
        return errno;
    return 0;
}

/* In the forked child (which inherited init's bounding set and seccomp
 * filter): become a session leader with the given stdio, drop the remaining
 * privileges, then exec. Never returns. */
__attribute__((noreturn)) static void run_child(const sl_ctl_spawn_req *req, const int fds[3],
                                                int errfd)
{
    int hi[3], efd;

    reset_signals();
    /* Own session and process group: SIGNAL goes to the whole group, and the
     * process cannot reach a terminal of ours (CVE-2017-5226). */
    setsid();
    /* Lift every fd we keep above the range we are about to fill, so that no
     * dup2 overwrites one still to be moved. */
    for (int i = 0; i < 3; i++) {
        hi[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 10);
        if (hi[i] < 0)
            child_fail(errfd, errno, "dup", "stdio");
    }
    efd = fcntl(errfd, F_DUPFD_CLOEXEC, 10);
    if (efd < 0)
        child_fail(errfd, errno, "dup", "error pipe");
    for (int i = 0; i < 3; i++)
        if (dup2(hi[i], i) < 0)
            child_fail(efd, errno, "dup2", "stdio");
    /* The error pipe on 3 (CLOEXEC, so exec closes it); nothing else stays,
     * in particular not the control channel. */
    if (dup3(efd, 3, O_CLOEXEC) < 0)
        child_fail(efd, errno, "dup3", "error pipe");
    efd = 3;
    if (syscall(SYS_close_range, 4U, ~0U, 0U) < 0) {
        long max = sysconf(_SC_OPEN_MAX);

        for (long fd = 4; fd < (max > 0 && max < 65536 ? max : 65536); fd++)
            close((int)fd);
    }
    const char *cwd = req->cwd[0] ? req->cwd : "/";
    if (chdir(cwd) < 0)
        child_fail(efd, errno, "chdir", cwd);

    const char *what;
    int err = drop_caps(&what);
    if (err)
        child_fail(efd, err, "drop capabilities:", what);
    /* no_new_privs: execve can no longer raise privileges (setuid bits and
     * file capabilities are ignored), and the process may stack filters of
     * its own (which can only restrict it further). */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        child_fail(efd, errno, "set", "no_new_privs");
    child_fail(efd, exec_search(req->argv, req->envp), "exec", req->argv[0]);
}

static void spawn_failed(uint32_t id, int err, const char *text)
{
    send_msg(SL_CTL_SPAWN_FAILED, id, (uint32_t)err, text);
}

static void do_spawn(uint32_t id, char *payload, size_t len, int *fds, int nfds)
{
    sl_ctl_spawn_req req;
    exec_err e;
    int ep[2], r;
    ssize_t n;
    pid_t pid;

    if (nfds != 3) {
        spawn_failed(id, EINVAL, "bad spawn message: expected 3 fds");
        goto out_fds;
    }
    /* Fail closed: no process runs without the seccomp profile. */
    if (!hardened) {
        spawn_failed(id, harden_err, harden_what);
        goto out_fds;
    }
    r = sl_ctl_unpack_spawn(payload, len, &req);
    if (r < 0) {
        spawn_failed(id, -r, r == -ENOMEM ? "out of memory" : "bad spawn message");
        goto out_fds;
    }
    if (nprocs == capprocs) {
        size_t cap = capprocs ? capprocs * 2 : 16;
        tracked *np = realloc(procs, cap * sizeof(*np));

        if (!np) {
            spawn_failed(id, ENOMEM, "out of memory");
            goto out_req;
        }
        procs = np;
        capprocs = cap;
    }
    if (pipe2(ep, O_CLOEXEC) < 0) {
        spawn_failed(id, errno, "pipe");
        goto out_req;
    }
    pid = fork();
    if (pid < 0) {
        spawn_failed(id, errno, "fork");
        close(ep[0]);
        close(ep[1]);
        goto out_req;
    }
    if (pid == 0)
        run_child(&req, fds, ep[1]);
    close(ep[1]);
    /* Blocks only until the child's exec (or its failure): EOF means the exec
     * went through. This is not the channel, and chdir + exec are quick. */
    do
        n = read(ep[0], &e, sizeof(e));
    while (n < 0 && errno == EINTR);
    close(ep[0]);
    if (n == (ssize_t)sizeof(e)) {
        e.msg[sizeof(e.msg) - 1] = '\0';
        /* The child is reaped by the SIGCHLD loop; untracked, so no EXITED. */
        spawn_failed(id, e.err, e.msg);
    } else if (n != 0) {
        spawn_failed(id, EIO, "exec: no report from child");
    } else {
        procs[nprocs].pid = pid;
        procs[nprocs].id = id;
        nprocs++;
        send_msg(SL_CTL_STARTED, id, (uint32_t)pid, NULL);
    }
out_req:
    sl_ctl_spawn_req_free(&req);
out_fds:
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
}

/* Install the runner's seccomp program (payload: count instructions) on init
 * itself, after dropping the bounding set. Only the first one counts, so
 * nothing can swap in a laxer one later (stacking one would not loosen the
 * first anyway); a malformed one is dropped, and every SPAWN then fails with
 * the reason, which the runner reports. */
static void do_seccomp(uint32_t count, const char *payload, size_t len)
{
    struct sock_fprog prog;
    int err;

    if (hardened || count == 0 || count > SL_CTL_MAX_FILTER ||
        len != (size_t)count * sizeof(struct sock_filter))
        return;
    err = drop_bounding_set();
    if (err) {
        harden_err = err;
        harden_what = "drop the capability bounding set";
        return;
    }
    /* init holds CAP_SYS_ADMIN, so the filter needs no no_new_privs here
     * (each child sets that itself). The kernel copies the program; msgbuf
     * (the payload) is reused afterwards. */
    prog.len = (unsigned short)count;
    prog.filter = (struct sock_filter *)(void *)payload;
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0) {
        harden_err = errno;
        harden_what = "install the seccomp profile";
        return;
    }
    hardened = 1;
}

static void do_signal(uint32_t id, uint32_t sig)
{
    if (sig == 0 || sig >= NSIG)
        return;
    for (size_t i = 0; i < nprocs; i++) {
        if (procs[i].id != id)
            continue;
        /* The process leads its own group (setsid): signal all of it. */
        if (kill(-procs[i].pid, (int)sig) < 0)
            kill(procs[i].pid, (int)sig);
        return;
    }
}

static void reap_all(int sfd)
{
    struct signalfd_siginfo si;

    /* Drain: several SIGCHLDs collapse into one anyway. */
    while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
    }
    for (;;) {
        int st;
        pid_t pid = waitpid(-1, &st, WNOHANG);

        if (pid < 0 && errno == EINTR)
            continue;
        if (pid <= 0)
            return;
        for (size_t i = 0; i < nprocs; i++) {
            if (procs[i].pid != pid)
                continue;
            send_msg(SL_CTL_EXITED, procs[i].id, (uint32_t)st, NULL);
            procs[i] = procs[--nprocs];
            break;
        }
    }
}

__attribute__((noreturn)) static void shutdown_all(void)
{
    /* As pid 1 of the sandbox's namespace, -1 means every other process in
     * it. Anywhere else (started by hand or by a test outside a pid
     * namespace) -1 would be every process on the host: then only our own
     * process groups are killed. */
    if (getpid() == 1) {
        kill(-1, SIGKILL);
    } else {
        for (size_t i = 0; i < nprocs; i++)
            if (kill(-procs[i].pid, SIGKILL) < 0)
                kill(procs[i].pid, SIGKILL);
    }
    _exit(0);
}

/* Read and act on one message. */
static void handle_channel(void)
{
    sl_ctl_hdr h;
    int fds[SL_CTL_MAX_FDS], nfds = SL_CTL_MAX_FDS;
    int n = sl_ctl_recv(SL_CTL_FD, &h, msgbuf, sizeof(msgbuf), fds, &nfds);

    if (n < 0) {
        switch (-n) {
        case EBADMSG: /* dropped (its fds already closed) */
        case EAGAIN:
        case EINTR:
        case ENOMEM:
        case ENOBUFS:
            return;
        default: /* EOF, or fd 3 is not a usable socket at all */
            shutdown_all();
        }
    }
    switch (h.type) {
    case SL_CTL_SPAWN:
        do_spawn(h.id, msgbuf, (size_t)n, fds, nfds);
        return;
    case SL_CTL_SIGNAL:
        do_signal(h.id, h.arg);
        break;
    case SL_CTL_SECCOMP:
        do_seccomp(h.arg, msgbuf, (size_t)n);
        break;
    default:
        break; /* unknown: ignore */
    }
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
}

int main(void)
{
    sigset_t chld;
    int sfd;

    /* Nothing but 0-2 and the channel should be open (the runner's clone
     * child marks everything else close-on-exec); make sure, so that no
     * runner descriptor can ever be inherited by a sandboxed process. */
    if (syscall(SYS_close_range, SL_CTL_FD + 1U, ~0U, 0U) < 0) {
        for (int fd = SL_CTL_FD + 1; fd < 1024; fd++)
            close(fd);
    }
    reset_signals();
    /* Sends use MSG_NOSIGNAL; this only covers stray writes. */
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0)
        return 1;
    /* Children must not inherit the channel even between fork and exec. */
    if (fcntl(SL_CTL_FD, F_SETFD, FD_CLOEXEC) < 0)
        return 1;

    send_msg(SL_CTL_READY, 0, 0, NULL);
    for (;;) {
        struct pollfd pfd[2] = {{.fd = SL_CTL_FD, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};

        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR || errno == ENOMEM)
                continue;
            shutdown_all();
        }
        /* Reap first: an EXITED for a process must follow its STARTED, and
         * STARTED is sent before the spawn handler returns. */
        if (pfd[1].revents)
            reap_all(sfd);
        if (pfd[0].revents & POLLNVAL)
            shutdown_all();
        if (pfd[0].revents)
            handle_channel();
    }
}
