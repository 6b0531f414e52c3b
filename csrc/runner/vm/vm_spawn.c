/* vm_spawn.c - start a microVM sandbox: its cgroup, the control channel and
 * the monitor process (which starts QEMU). Unlike sl_sandbox_spawn it does
 * not wait for the guest: a cold boot takes long enough (seconds without
 * KVM) that blocking the runner's loop for it would stall every other
 * client. Requests sent meanwhile wait in the channel; the monitor reads it
 * only once the guest's init said READY. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sl_vm.h"

int sl_vm_spawn(const sl_vm_config *cfg, sl_sandbox *out, char *errbuf, size_t errlen)
{
    int sv[2];
    memset(&out->cg, 0, sizeof(out->cg));
    out->cg.v2_index = out->cg.freezer_index = -1;
    out->init_pid = -1;
    out->ctl_fd = -1;
    out->pidfd = -1;
    out->disk_mnt = NULL;
    out->net_if[0] = 0;
    out->kill_cgroup = 1; /* QEMU is not in a pid namespace under the monitor */
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        snprintf(errbuf, errlen, "socketpair: %s", strerror(errno));
        return -errno;
    }
    /* A cgroup of its own: the sandbox's kill reaches QEMU through it, and
     * its memory shows apart from the runner's. */
    int rc = sl_cgroup_create(&out->cg, cfg->id, 0);
    if (rc < 0) {
        snprintf(errbuf, errlen, "cgroup for %s: %s", cfg->id, strerror(-rc));
        close(sv[0]);
        close(sv[1]);
        return rc;
    }
    pid_t pid = fork();
    if (pid < 0) {
        rc = -errno;
        snprintf(errbuf, errlen, "fork: %s", strerror(errno));
        sl_cgroup_destroy(&out->cg);
        close(sv[0]);
        close(sv[1]);
        return rc;
    }
    if (pid == 0) {
        /* The monitor: nothing of the runner's but the channel and stderr. */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        for (int s = 1; s < 32; s++)
            if (s != SIGKILL && s != SIGSTOP)
                signal(s, SIG_DFL);
        if (sl_cgroup_attach(&out->cg, getpid()) < 0)
            _exit(1);
        if (dup2(sv[1], 3) < 0)
            _exit(1);
        for (int fd = 4; fd < 65536; fd++)
            if (close(fd) < 0 && errno == EBADF && fd > 1024)
                break;
        int fl = fcntl(3, F_GETFD);
        if (fl >= 0)
            fcntl(3, F_SETFD, fl | FD_CLOEXEC);
        setsid();
        sl_vm_monitor_main(cfg, 3);
    }
    close(sv[1]);
    out->init_pid = pid;
    out->ctl_fd = sv[0];
    int fl = fcntl(sv[0], F_GETFL);
    if (fl < 0 || fcntl(sv[0], F_SETFL, fl | O_NONBLOCK) < 0) {
        snprintf(errbuf, errlen, "fcntl: %s", strerror(errno));
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        sl_cgroup_destroy(&out->cg);
        close(sv[0]);
        out->init_pid = -1;
        out->ctl_fd = -1;
        return -EIO;
    }
    long pfd = syscall(SYS_pidfd_open, pid, 0);
    out->pidfd = pfd >= 0 ? (int)pfd : -1;
    return 0;
}
