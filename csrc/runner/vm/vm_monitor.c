/* vm_monitor.c - the VM monitor: one process per microVM sandbox, forked
 * from the runner (vm_spawn.c), between the runner's control channel and the
 * guest.
 *
 * To the runner it is the sandbox's "init": it answers the control protocol
 * of sl_ctl.h on fd `ctl` (a SEQPACKET socket; SPAWN brings the process's
 * three stdio pipe ends as SCM_RIGHTS). To the guest it is the other end of
 * the virtio-serial port "sl0", speaking sl_vmframe.h: SPAWN and SIGNAL go
 * in as frames, STARTED / SPAWN_FAILED / EXITED come back and are passed on
 * as control messages, and stdio is pumped between the runner's pipes and
 * STDIN / STDOUT / STDERR frames. The runner's output buffers, long-polls,
 * stdin and wait code are the container tier's, unchanged.
 *
 * It owns QEMU: starts it (vm_qemu.c), talks QMP to it (vm_qmp.c) for memory
 * snapshots (vm_snap.c), and exits when QEMU does (guest poweroff or panic:
 * the guest runs with panic=-1 and QEMU with -no-reboot; or QEMU killed), so
 * the runner sees the sandbox end, never a hang. When the runner goes (EOF
 * on ctl) it kills QEMU and exits.
 *
 * Blocking writes are deliberate: stdout/stderr pipes are drained by the
 * runner's event loop into its output buffers, and the port is drained by
 * the guest's pid 1; a monitor has nothing else to do in the meantime.
 */
#include "vm_int.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sl_ctl.h"
#include "sl_vmframe.h"
#include "vm_mon.h"

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void mlog(sl_mon *m, const char *fmt, const char *a)
{
    /* Kept for SL_CTL_VM_FAILED: the create's error says what went wrong. */
    char tmp[2048];
    snprintf(tmp, sizeof(tmp), fmt, a);
    size_t n = strnlen(tmp, sizeof(m->why) - 1);
    memcpy(m->why, tmp, n);
    m->why[n] = 0;
}

/* The last line QEMU wrote to its log ("" if none): its own reason. */
static void qemu_reason(sl_mon *m, char *out, size_t cap)
{
    char p[4200], buf[2048];
    out[0] = 0;
    snprintf(p, sizeof(p), "%s/qemu.log", m->cfg->dir);
    FILE *f = fopen(p, "re");
    if (f == NULL)
        return;
    while (fgets(buf, sizeof(buf), f) != NULL) {
        buf[strcspn(buf, "\n")] = 0;
        size_t n = strnlen(buf, cap - 1);
        if (n > 0) {
            memcpy(out, buf, n);
            out[n] = 0;
        }
    }
    fclose(f);
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static mproc *mp_find(sl_mon *m, uint32_t id)
{
    for (int i = 0; i < MON_MAXP; i++)
        if (m->procs[i].used && m->procs[i].id == id)
            return &m->procs[i];
    return NULL;
}

static void mp_free(mproc *p)
{
    close_fd(&p->in);
    close_fd(&p->out);
    close_fd(&p->err);
    p->used = 0;
}

void sl__mon_ctl_send(sl_mon *m, uint32_t type, uint32_t id, uint32_t arg, const void *p, size_t n)
{
    sl_ctl_hdr h = {.type = type, .id = id, .arg = arg};
    if (sl_ctl_send(m->ctl, &h, p, n, NULL, 0) < 0 && errno != EPIPE) {
        /* The runner is gone or stopped reading; the ctl EOF handles it. */
    }
}

int sl__mon_send(sl_mon *m, uint32_t type, uint32_t id, uint32_t arg, const void *p, size_t n)
{
    int rc = sl_vm_send(m->port, type, id, arg, p, n);
    if (rc < 0)
        mlog(m, "write to the guest port: %s", strerror(-rc));
    return rc;
}

/* Connect to QEMU's end of the virtio-serial port. */
static int connect_port(sl_mon *m, double timeout)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int n = snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/%s", m->cfg->dir, VM_PORT);
    if (n < 0 || (size_t)n >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    double deadline = mono() + timeout;
    for (;;) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -errno;
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            return fd;
        int e = errno;
        close(fd);
        if ((e != ENOENT && e != ECONNREFUSED) || mono() > deadline)
            return -e;
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
}

/* One frame from the guest. */
void sl__mon_frame(sl_mon *m, const sl_vm_hdr *h, const unsigned char *p)
{
    mproc *mp;
    switch (h->type) {
    case SL_CTL_READY:
        if (!m->ready) {
            m->ready = 1;
            sl__mon_ctl_send(m, SL_CTL_READY, 0, 0, NULL, 0);
        }
        break;
    case SL_CTL_STARTED:
    case SL_CTL_SPAWN_FAILED:
        sl__mon_ctl_send(m, h->type, h->id, h->arg, p, h->len > 1024 ? 1024 : h->len);
        if (h->type == SL_CTL_SPAWN_FAILED && (mp = mp_find(m, h->id)) != NULL)
            mp_free(mp);
        break;
    case SL_CTL_EXITED:
        /* Output frames of this process came before (the guest drains its
         * pipes first): close our ends so the runner sees EOF. */
        if ((mp = mp_find(m, h->id)) != NULL)
            mp_free(mp);
        sl__mon_ctl_send(m, SL_CTL_EXITED, h->id, h->arg, NULL, 0);
        break;
    case SL_VM_STDOUT:
    case SL_VM_STDERR:
        if ((mp = mp_find(m, h->id)) != NULL) {
            int *fd = h->type == SL_VM_STDOUT ? &mp->out : &mp->err;
            size_t off = 0;
            while (*fd >= 0 && off < h->len) {
                ssize_t w = write(*fd, p + off, h->len - off);
                if (w < 0 && errno == EINTR)
                    continue;
                if (w <= 0) {
                    close_fd(fd); /* the runner closed its end */
                    break;
                }
                off += (size_t)w;
            }
        }
        break;
    case SL_VM_OUT_EOF:
        if ((mp = mp_find(m, h->id)) != NULL)
            close_fd(h->arg == 1 ? &mp->out : &mp->err);
        break;
    case SL_VM_SYNCED:
        m->synced = h->arg;
        break;
    default:
        break;
    }
}

/* A control message from the runner. Returns -1 when the channel is done. */
static int on_ctl(sl_mon *m)
{
    sl_ctl_hdr h;
    int fds[SL_CTL_MAX_FDS], nfds = SL_CTL_MAX_FDS;
    int rc = sl_ctl_recv(m->ctl, &h, m->msg, SL_CTL_MAX_MSG, fds, &nfds);
    if (rc == -EAGAIN || rc == -EINTR || rc == -EBADMSG)
        return 0;
    if (rc < 0)
        return -1;
    size_t len = (size_t)rc;
    switch (h.type) {
    case SL_CTL_SPAWN: {
        mproc *slot = NULL;
        for (int i = 0; i < MON_MAXP && slot == NULL; i++)
            if (!m->procs[i].used)
                slot = &m->procs[i];
        if (nfds != 3 || slot == NULL || mp_find(m, h.id) != NULL) {
            for (int i = 0; i < nfds; i++)
                close(fds[i]);
            const char *why = "bad spawn request for the microVM monitor";
            sl__mon_ctl_send(m, SL_CTL_SPAWN_FAILED, h.id, EINVAL, why, strlen(why));
            return 0;
        }
        *slot = (mproc){.used = 1, .id = h.id, .in = fds[0], .out = fds[1], .err = fds[2]};
        sl__mon_send(m, SL_CTL_SPAWN, h.id, 0, m->msg, len);
        return 0;
    }
    case SL_CTL_SIGNAL:
        sl__mon_send(m, SL_CTL_SIGNAL, h.id, h.arg, NULL, 0);
        break;
    case SL_CTL_VM_SNAPSHOT:
        m->msg[len < SL_CTL_MAX_MSG ? len : SL_CTL_MAX_MSG - 1] = 0;
        sl__mon_snapshot(m, m->msg);
        break;
    default:
        break; /* SECCOMP: the VM boundary is this tier's sandbox */
    }
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    return 0;
}

/* Stdin bytes from the runner for process p. */
static void on_stdin(sl_mon *m, mproc *p)
{
    ssize_t r;
    do
        r = read(p->in, m->io, sizeof(m->io));
    while (r < 0 && errno == EINTR);
    if (r > 0) {
        sl__mon_send(m, SL_VM_STDIN, p->id, 0, m->io, (size_t)r);
        return;
    }
    if (r < 0 && errno == EAGAIN)
        return;
    close_fd(&p->in);
    sl__mon_send(m, SL_VM_STDIN_EOF, p->id, 0, NULL, 0);
}

/* Read the port; 0, or -1 when the guest side is gone for good. With
 * m->resync set, bytes before the guest's HELLO marker are dropped. */
int sl__mon_on_port(sl_mon *m)
{
    long r = sl_vm_rx_fill(&m->rx, m->port);
    if (r == -EAGAIN || r == -EINTR)
        return 0;
    if (r <= 0)
        return -1;
    if (m->resync) {
        static const unsigned char marker[SL_VM_HDR] = {
            SL_VM_HELLO, 0, 0, 0, 0x5a, 0x5a, 0x5a, 0x5a, 0xa5, 0xa5, 0xa5, 0xa5, 0, 0, 0, 0};
        size_t i = 0;
        while (i + SL_VM_HDR <= m->rx.len && memcmp(m->rx.buf + i, marker, SL_VM_HDR) != 0)
            i++;
        if (i + SL_VM_HDR > m->rx.len) {
            /* Keep the tail that may be the start of the marker. */
            size_t keep = m->rx.len < SL_VM_HDR ? m->rx.len : SL_VM_HDR - 1;
            memmove(m->rx.buf, m->rx.buf + m->rx.len - keep, keep);
            m->rx.len = keep;
            return 0;
        }
        memmove(m->rx.buf, m->rx.buf + i + SL_VM_HDR, m->rx.len - i - SL_VM_HDR);
        m->rx.len -= i + SL_VM_HDR;
        m->resync = 0;
        m->ready = 1;
        sl__mon_ctl_send(m, SL_CTL_READY, 0, 0, NULL, 0);
    }
    sl_vm_hdr h;
    const unsigned char *p;
    int k;
    while ((k = sl_vm_rx_next(&m->rx, &h, &p)) == 1) {
        sl__mon_frame(m, &h, p);
        sl_vm_rx_drop(&m->rx);
    }
    if (k < 0) {
        mlog(m, "%s", "corrupt frame from the guest: stopping the VM");
        return -1;
    }
    return 0;
}

static _Noreturn void finish(sl_mon *m, int code);

/* The VM did not come up (or stopped before it did): tell the runner why. */
static _Noreturn void fail(sl_mon *m)
{
    char q[400], msg[1024];
    qemu_reason(m, q, sizeof(q));
    snprintf(msg, sizeof(msg), "%s%s%s", m->why[0] ? m->why : "QEMU exited", q[0] ? "; qemu: " : "",
             q);
    sl__mon_ctl_send(m, SL_CTL_VM_FAILED, 0, 0, msg, strlen(msg));
    finish(m, 1);
}

static _Noreturn void finish(sl_mon *m, int code)
{
    if (m->qemu > 0) {
        kill(m->qemu, SIGKILL);
        waitpid(m->qemu, NULL, 0);
    }
    if (m->ram[0] && m->ram_fd < 0)
        unlink(m->ram); /* QEMU never got as far as mapping it */
    _exit(code);
}

/* Boot or resume: start QEMU, connect the port, and for a resume run the
 * incoming migration and greet the guest. */
static int start(sl_mon *m)
{
    char err[300] = "";
    int in_fd = -1;
    if (m->cfg->restore_dir == NULL) {
        if (sl__vm_ram_path(m->cfg->id, m->ram, sizeof(m->ram)) < 0)
            return -1;
    } else {
        char p[4200];
        snprintf(p, sizeof(p), "%s/%s", m->cfg->restore_dir, VM_SNAP_STATE);
        in_fd = open(p, O_RDONLY | O_CLOEXEC);
        if (in_fd < 0) {
            mlog(m, "open the snapshot's device state: %s", strerror(errno));
            return -1;
        }
    }
    m->qemu = sl__vm_qemu_start(m->cfg, m->ram, in_fd, err, sizeof(err));
    if (in_fd >= 0)
        close(in_fd);
    if (m->qemu < 0) {
        mlog(m, "%s", err);
        return -1;
    }
    char qpath[4200];
    snprintf(qpath, sizeof(qpath), "%s/%s", m->cfg->dir, VM_QMP);
    int rc = sl__qmp_connect(&m->qmp, qpath, 30);
    if (rc < 0) {
        mlog(m, "QMP: %s", strerror(-rc));
        return -1;
    }
    if (m->ram[0]) {
        /* QEMU has mapped its RAM file by the time QMP answers: keep a
         * handle for snapshots and unlink the name, so the memory goes with
         * the last process holding it even if monitor and QEMU are killed
         * (a name in /dev/shm would outlive them). */
        m->ram_fd = open(m->ram, O_RDONLY | O_CLOEXEC);
        if (m->ram_fd < 0) {
            mlog(m, "open the guest RAM file: %s", strerror(errno));
            return -1;
        }
        unlink(m->ram);
        snprintf(m->ram, sizeof(m->ram), "/proc/self/fd/%d", m->ram_fd);
    }
    m->port = connect_port(m, 10);
    if (m->port < 0) {
        mlog(m, "connect to the guest port: %s", strerror(-m->port));
        return -1;
    }
    if (m->cfg->restore_dir != NULL) {
        char out[512];
        const char *steps[] = {
            "{\"execute\":\"migrate-set-capabilities\",\"arguments\":{\"capabilities\":"
            "[{\"capability\":\"x-ignore-shared\",\"state\":true}]}}",
            "{\"execute\":\"migrate-incoming\",\"arguments\":{\"uri\":\"fd:3\"}}",
        };
        for (size_t i = 0; i < 2; i++) {
            if ((rc = sl__qmp_cmd(&m->qmp, steps[i], -1, out, sizeof(out), 30)) < 0) {
                mlog(m, "restore: %s", rc == -EIO ? out : strerror(-rc));
                return -1;
            }
        }
        if (sl__mon_wait_migration(m, 60, out, sizeof(out)) < 0) {
            mlog(m, "restore: %s", out);
            return -1;
        }
        if ((rc = sl__qmp_cmd(&m->qmp, "{\"execute\":\"cont\"}", -1, out, sizeof(out), 30)) < 0) {
            mlog(m, "restore: cont: %s", rc == -EIO ? out : strerror(-rc));
            return -1;
        }
        /* Detach the original's processes and find the frame boundary. */
        m->resync = 1;
        if (sl__mon_send(m, SL_VM_HELLO, 0, 1, NULL, 0) < 0)
            return -1;
    }
    return 0;
}

_Noreturn void sl_vm_monitor_main(const sl_vm_config *cfg, int ctl)
{
    static sl_mon mon;
    sl_mon *m = &mon;
    m->cfg = cfg;
    m->ctl = ctl;
    m->port = -1;
    m->qmp.fd = -1;
    m->ram_fd = -1;
    for (int i = 0; i < MON_MAXP; i++)
        m->procs[i].in = m->procs[i].out = m->procs[i].err = -1;
    signal(SIGPIPE, SIG_IGN);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    m->sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if ((m->msg = malloc(SL_CTL_MAX_MSG)) == NULL || m->sfd < 0)
        finish(m, 1);
    if (start(m) < 0)
        fail(m);
    double boot_deadline = mono() + SL_VM_BOOT_TIMEOUT;
    static struct pollfd pfd[3 + MON_MAXP];
    static mproc *owner[3 + MON_MAXP];
    for (;;) {
        int n = 0;
        pfd[n++] = (struct pollfd){.fd = m->sfd, .events = POLLIN};
        pfd[n++] = (struct pollfd){.fd = m->port, .events = POLLIN};
        /* Requests wait in the socket until the guest is up. */
        pfd[n++] = (struct pollfd){.fd = m->ready ? m->ctl : -1, .events = POLLIN};
        for (int i = 0; i < MON_MAXP && m->ready; i++) {
            if (m->procs[i].used && m->procs[i].in >= 0) {
                owner[n] = &m->procs[i];
                pfd[n++] = (struct pollfd){.fd = m->procs[i].in, .events = POLLIN};
            }
        }
        int pr = poll(pfd, (nfds_t)n, m->ready ? -1 : 200);
        if (pr < 0 && errno != EINTR)
            finish(m, 1);
        if (!m->ready && mono() > boot_deadline) {
            mlog(m, "%s", "the guest did not come up in time");
            fail(m);
        }
        if (pr <= 0)
            continue;
        if (pfd[0].revents) {
            struct signalfd_siginfo si;
            while (read(m->sfd, &si, sizeof(si)) > 0)
                ;
            int st;
            if (waitpid(m->qemu, &st, WNOHANG) == m->qemu) {
                m->qemu = -1; /* guest powered off, panicked, or QEMU was killed */
                if (!m->ready) {
                    mlog(m, "%s", "QEMU exited before the guest came up");
                    fail(m);
                }
                finish(m, 0);
            }
        }
        if (pfd[1].revents && sl__mon_on_port(m) < 0) {
            if (!m->ready) {
                /* QEMU closed the port: it is exiting; its reason is in its log. */
                int st;
                waitpid(m->qemu, &st, 0);
                m->qemu = -1;
                mlog(m, "%s", "the VM stopped before the guest came up");
                fail(m);
            }
            finish(m, 1);
        }
        if (pfd[2].revents && on_ctl(m) < 0)
            finish(m, 0); /* the runner is gone */
        for (int i = 3; i < n; i++)
            if (pfd[i].revents && owner[i]->used && owner[i]->in >= 0)
                on_stdin(m, owner[i]);
    }
}
