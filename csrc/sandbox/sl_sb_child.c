/* sl_sb_child.c - the sandbox child after clone: root, cgroup wait, pivot_root, exec init. */
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
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#include "sl_ctl.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

__attribute__((noreturn)) void sl__child_main(child_ctx *c)
{
    static char *const init_argv[] = {"sandlot-init", NULL};
    static char *const init_envp[] = {
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", NULL};
    char go;
    ssize_t n;
    int fd, nice0;

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
        sl__child_die(c, errno, "dup");

    /* A self-attaching child is a pre-set-up sandbox nobody waits for yet:
     * it builds its root at the lowest priority, so it takes CPU from no
     * running sandbox (nice, not SCHED_IDLE: it holds mount and cgroup locks
     * others wait for, and must still make progress). sl_sandbox_spawn_finish
     * raises it again when a caller does wait; init runs at ours. */
    if (c->self_attach) {
        /* Join every hierarchy's cgroup ("0": this process), before the
         * cgroup namespace below is rooted at it, and first, at full
         * priority: the move holds cgroup_threadgroup_rwsem for writing,
         * which stops every fork on the host while it is held. */
        for (int i = 0; i < c->cg->n; i++) {
            char path[PATH_MAX];

            snprintf(path, sizeof(path), "%s/cgroup.procs", c->cg->paths[i]);
            fd = open(path, O_WRONLY | O_CLOEXEC);
            if (fd < 0 || write(fd, "0", 1) != 1)
                sl__child_die(c, errno, "join cgroup %s", c->cg->paths[i]);
            close(fd);
        }
    }
    errno = 0;
    nice0 = getpriority(PRIO_PROCESS, 0);
    if (errno != 0)
        nice0 = 0;
    if (c->self_attach)
        (void)setpriority(PRIO_PROCESS, 0, 19);
    if (c->userns) {
        /* Our ids are unmapped (overflow) until the parent wrote the maps:
         * creating a file or mounting with them fails. */
        do
            n = recv(c->syncfd, &go, 1, 0);
        while (n < 0 && errno == EINTR);
        if (n != 1 || go != 'u')
            _exit(1); /* the parent gave up; it reports its own error */
    }
    sl__child_build_root(c);

    /* Wait until the parent has put us into the sandbox cgroup. */
    do
        n = recv(c->syncfd, &go, 1, 0);
    while (n < 0 && errno == EINTR);
    if (n != 1)
        _exit(1); /* the parent gave up; it reports its own error */
    if (c->self_attach)
        (void)setpriority(PRIO_PROCESS, 0, nice0);
    /* Rooted at the sandbox cgroup: /proc/self/cgroup shows "/" inside. */
    if (unshare(CLONE_NEWCGROUP) < 0)
        sl__child_die(c, errno, "unshare cgroup namespace");

    /* runc's trick: pivot_root(".", ".") stacks the old root on top of the
     * new one, and the detach below then drops it, with no temp directory. */
    if (fchdir(c->rootfd) < 0)
        sl__child_die(c, errno, "chdir to new root");
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        sl__child_die(c, errno, "pivot_root");
    if (umount2(".", MNT_DETACH) < 0)
        sl__child_die(c, errno, "detach old root");
    if (chdir("/") < 0)
        sl__child_die(c, errno, "chdir /");
    close(c->rootfd);

    if (sethostname(c->cfg->id, strlen(c->cfg->id)) < 0)
        sl__child_die(c, errno, "sethostname");
    fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        struct ifreq ifr;

        memset(&ifr, 0, sizeof(ifr));
        memcpy(ifr.ifr_name, "lo", 3);
        if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
            sl__child_die(c, errno, "get lo flags");
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
            sl__child_die(c, errno, "bring lo up");
        close(fd);
    } else if (errno != EAFNOSUPPORT) {
        sl__child_die(c, errno, "socket");
    }
    /* The parent created eth0 in our namespace before it sent "go". */
    if (c->cfg->net) {
        const sl_net_config *net = c->cfg->net;
        const char *what = "configure";
        int r = sl_net_if_setup(SL_NET_SANDBOX_IF, net->sandbox_addr, net->prefix, &what);

        if (r < 0)
            sl__child_die(c, -r, "eth0: %s", what);
        r = sl_net_default_route(net->host_addr);
        if (r < 0)
            sl__child_die(c, -r, "eth0: default route");
    }

    /* init gets /dev/null on 0-2 (not the runner's log), the channel on 3 and
     * nothing else: every other fd is closed by the exec. */
    fd = open("/dev/null", O_RDWR);
    if (fd < 0)
        sl__child_die(c, errno, "open /dev/null");
    for (int i = 0; i < 3; i++)
        if (fd != i && dup2(fd, i) < 0)
            sl__child_die(c, errno, "dup2");
    if (fd > 2)
        close(fd);
    if (dup2(c->ctlfd, SL_CTL_FD) < 0)
        sl__child_die(c, errno, "dup2 control channel");
    /* CLOEXEC rather than close: the sync socket and the memfd must live until
     * the exec itself succeeds. */
    if (syscall(SYS_close_range, SL_CTL_FD + 1, ~0U, CLOSE_RANGE_CLOEXEC) < 0) {
        for (int i = SL_CTL_FD + 1; i < 4096; i++)
            fcntl(i, F_SETFD, FD_CLOEXEC);
    }
    /* What the runner was given, not what it raised for itself. */
    if (sl__sandbox_nofile() && setrlimit(RLIMIT_NOFILE, sl__sandbox_nofile()) < 0)
        sl__child_die(c, errno, "setrlimit RLIMIT_NOFILE");
    umask(022);
    syscall(SYS_execveat, c->memfd, "", init_argv, init_envp, AT_EMPTY_PATH);
    if (errno == ENOSYS || errno == ENOENT) {
        /* No execveat (or a tool like valgrind that cannot emulate it): the
         * same memfd through the sandbox's own /proc. */
        char path[64];

        sl__proc_fd_path(path, sizeof(path), c->memfd);
        execve(path, init_argv, init_envp);
    }
    sl__child_die(c, errno, "exec sandlot-init");
}
