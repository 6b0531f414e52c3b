/* vminit.c - sandlot-vminit, pid 1 inside a microVM sandbox.
 *
 * The guest kernel runs it from the initramfs the runner's guest builder made
 * (python/sandlot/_vmguest.py). It loads the virtio/erofs/overlay modules
 * listed in /modules.order (Debian's kernel builds them as modules), mounts
 * the read-only root image (EROFS on /dev/vda) under a tmpfs writable layer
 * with overlayfs, moves into it, and then serves the runner over the
 * virtio-serial port named "sl0" with the framing of sl_vmframe.h: the same
 * SPAWN / STARTED / SPAWN_FAILED / EXITED / SIGNAL messages as the container
 * tier's sandlot-init, with each process's stdio multiplexed as frames.
 *
 * The writable layer is a tmpfs in guest RAM on purpose: a memory snapshot
 * then holds the files too, so snapshot and restore need no disk image of
 * their own. Its size is sl.rw= on the kernel command line.
 *
 * Snapshots: a restored copy resumes exactly where the original was, still
 * holding the original's process table. The runner's monitor sends HELLO with
 * arg 1 first on such a copy: every process started so far is detached (its
 * output is read and dropped, its stdin closed) and its id freed, so the new
 * sandbox's ids start afresh. The answer to HELLO is a marker frame the
 * monitor scans for, so a frame the original was half-way through writing
 * when the VM paused cannot desynchronise the stream.
 *
 * Robustness: a malformed frame is dropped; a SPAWN we cannot use is answered
 * with SPAWN_FAILED. pid 1 never exits on its own: if the host side goes away
 * it waits for it to come back (a restored VM's monitor connects anew).
 */
#include "sl_ctl.h"
#include "sl_vmframe.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define MAXP 1024
#define DETACHED 0x80000000u

typedef struct gproc {
    int used;
    uint32_t id;
    pid_t pid;
    int in, out, err; /* our ends; -1 once closed */
    int detached;     /* output read and dropped */
    /* stdin not yet taken by the process: pid 1 must never block on a child
     * that does not read, so writes are non-blocking and the rest waits here */
    unsigned char *pend;
    size_t plen;
    int eof_pending; /* STDIN_EOF came while pend was not empty */
} gproc;

/* A process that stops reading gets at most this much queued stdin; beyond
 * it its stdin is closed (it sees EOF) rather than pid 1 growing without end. */
#define MAX_PENDING (16u << 20)

static gproc procs[MAXP];
static int port = -1;
static sl_vm_rx rx;
static char iobuf[65536];

static void logk(const char *fmt, const char *a, int e)
{
    /* The serial console: only seen when debugging a guest (the runner keeps
     * the last lines in the sandbox dir). */
    fprintf(stderr, "sandlot-vminit: ");
    fprintf(stderr, fmt, a);
    if (e)
        fprintf(stderr, ": %s", strerror(e));
    fputc('\n', stderr);
}

static void send_frame(uint32_t type, uint32_t id, uint32_t arg, const void *p, size_t n)
{
    if (port < 0)
        return;
    if (sl_vm_send(port, type, id, arg, p, n) < 0) {
        /* The host went away mid-write: nothing to do but wait for it. */
    }
}

static void load_modules(void)
{
    FILE *f = fopen("/modules.order", "r");
    if (f == NULL)
        return;
    char line[256];
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = 0;
        if (!line[0])
            continue;
        int fd = open(line, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            logk("open %s", line, errno);
            continue;
        }
        if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)
            logk("load %s", line, errno);
        close(fd);
    }
    fclose(f);
}

static const char *cmdline_get(const char *key, char *out, size_t cap)
{
    char buf[4096];
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return NULL;
    buf[n] = 0;
    size_t kl = strlen(key);
    for (char *t = strtok(buf, " \n"); t; t = strtok(NULL, " \n")) {
        if (strncmp(t, key, kl) == 0 && t[kl] == '=') {
            snprintf(out, cap, "%s", t + kl + 1);
            return out;
        }
    }
    return NULL;
}

static void wait_for(const char *path)
{
    /* Devices probe asynchronously after the module load; 5 s is generous. */
    for (int i = 0; i < 1000; i++) {
        if (access(path, F_OK) == 0)
            return;
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
}

static int must(int rc, const char *what)
{
    if (rc < 0) {
        /* Without its root the guest is useless: power off, so the monitor
         * sees QEMU exit and the sandbox ends at once instead of hanging. */
        logk("%s", what, errno);
        sync();
        reboot(RB_POWER_OFF);
    }
    return rc;
}

/* Build the root: erofs /dev/vda + tmpfs upper, overlay, and move into it. */
static void setup_root(void)
{
    char rw[64] = "50%", host[80] = "sandbox";
    cmdline_get("sl.rw", rw, sizeof(rw));
    cmdline_get("sl.id", host, sizeof(host));
    mkdir("/lower", 0755);
    mkdir("/rw", 0755);
    mkdir("/newroot", 0755);
    wait_for("/dev/vda");
    must(mount("/dev/vda", "/lower", "erofs", MS_RDONLY, NULL), "mount erofs /dev/vda");
    char opt[128];
    snprintf(opt, sizeof(opt), "size=%s,mode=0755", rw);
    must(mount("tmpfs", "/rw", "tmpfs", 0, opt), "mount tmpfs /rw");
    mkdir("/rw/upper", 0755);
    mkdir("/rw/work", 0755);
    must(mount("overlay", "/newroot", "overlay", 0,
               "lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work"),
         "mount overlay");
    /* The initramfs stays underneath (it cannot be unmounted); switch_root's
     * move-and-chroot is the way out of it. */
    must(chdir("/newroot"), "chdir /newroot");
    must(mount(".", "/", NULL, MS_MOVE, NULL), "move root");
    must(chroot("."), "chroot");
    must(chdir("/"), "chdir /");
    mkdir("/proc", 0555);
    mkdir("/sys", 0555);
    mkdir("/dev", 0755);
    mkdir("/tmp", 01777);
    mkdir("/run", 0755);
    must(mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL), "mount /proc");
    must(mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL), "mount /sys");
    must(mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755"), "mount /dev");
    mkdir("/dev/shm", 01777);
    mkdir("/dev/pts", 0755);
    mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666");
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
    sethostname(host, strlen(host));
    /* lo up, so a process can listen on and connect to 127.0.0.1. */
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s >= 0) {
        struct ifreq ifr;
        memset(&ifr, 0, sizeof(ifr));
        strcpy(ifr.ifr_name, "lo");
        if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
            ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
            if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
                logk("%s", "bring up lo", errno);
        }
        close(s);
    }
}

/* Find the /dev node of the virtio-serial port named sl0 (no udev here). */
static int open_port(void)
{
    char dev[300] = "";
    for (int i = 0; i < 1000 && !dev[0]; i++) {
        DIR *d = opendir("/sys/class/virtio-ports");
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.')
                continue;
            char p[300], name[64] = "";
            snprintf(p, sizeof(p), "/sys/class/virtio-ports/%s/name", e->d_name);
            int fd = open(p, O_RDONLY | O_CLOEXEC);
            if (fd >= 0) {
                ssize_t n = read(fd, name, sizeof(name) - 1);
                close(fd);
                if (n > 0 && strncmp(name, "sl0", 3) == 0)
                    snprintf(dev, sizeof(dev), "/dev/%.200s", e->d_name);
            }
        }
        if (d)
            closedir(d);
        if (!dev[0]) {
            struct timespec ts = {0, 5000000};
            nanosleep(&ts, NULL);
        }
    }
    if (!dev[0]) {
        logk("%s", "no virtio-serial port named sl0", 0);
        return -1;
    }
    int fd = open(dev, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        logk("open %s", dev, errno);
    return fd;
}

static gproc *find(uint32_t id)
{
    for (int i = 0; i < MAXP; i++)
        if (procs[i].used && !procs[i].detached && procs[i].id == id)
            return &procs[i];
    return NULL;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static int exec_search(char *const argv[], char *const envp[])
{
    const char *path = DEFAULT_PATH;
    for (char *const *e = envp; *e; e++)
        if (strncmp(*e, "PATH=", 5) == 0)
            path = *e + 5;
    if (strchr(argv[0], '/')) {
        execve(argv[0], argv, envp);
        return errno;
    }
    int err = ENOENT;
    char buf[4096];
    const char *p = path;
    while (*p) {
        const char *c = strchr(p, ':');
        size_t n = c ? (size_t)(c - p) : strlen(p);
        if (n + strlen(argv[0]) + 2 < sizeof(buf)) {
            snprintf(buf, sizeof(buf), "%.*s/%s", (int)n, n ? p : ".", argv[0]);
            execve(buf, argv, envp);
            if (errno != ENOENT && errno != ENOTDIR)
                err = errno;
        }
        p += n + (c != NULL);
    }
    return err;
}

static void spawn_failed(uint32_t id, int err, const char *text)
{
    send_frame(SL_CTL_SPAWN_FAILED, id, (uint32_t)err, text, strlen(text));
}

static void do_spawn(uint32_t id, const unsigned char *payload, size_t len)
{
    char *copy = malloc(len + 1);
    if (copy == NULL) {
        spawn_failed(id, ENOMEM, "out of memory in the guest");
        return;
    }
    memcpy(copy, payload, len);
    copy[len] = 0;
    sl_ctl_spawn_req req;
    if (find(id) != NULL || sl_ctl_unpack_spawn(copy, len, &req) < 0) {
        free(copy);
        spawn_failed(id, EINVAL, "malformed or duplicate spawn request");
        return;
    }
    gproc *g = NULL;
    for (int i = 0; i < MAXP && g == NULL; i++)
        if (!procs[i].used)
            g = &procs[i];
    int pin[2] = {-1, -1}, pout[2] = {-1, -1}, perr[2] = {-1, -1}, pex[2] = {-1, -1};
    if (g == NULL || pipe2(pin, O_CLOEXEC) < 0 || pipe2(pout, O_CLOEXEC) < 0 ||
        pipe2(perr, O_CLOEXEC) < 0 || pipe2(pex, O_CLOEXEC) < 0) {
        int e = g == NULL ? EAGAIN : errno;
        spawn_failed(id, e, g == NULL ? "too many processes in the guest" : "pipe");
        goto out;
    }
    pid_t pid = fork();
    if (pid == 0) {
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        setsid();
        dup2(pin[0], 0);
        dup2(pout[1], 1);
        dup2(perr[1], 2);
        const char *what = "chdir";
        int e = 0;
        if (req.cwd[0] && chdir(req.cwd) < 0)
            e = errno;
        else if (!req.cwd[0] && chdir("/") < 0)
            e = errno;
        if (e == 0) {
            what = "exec";
            e = exec_search(req.argv, req.envp);
        }
        char msg[512];
        int n = snprintf(msg, sizeof(msg), "%d %s %s", e, what,
                         strcmp(what, "chdir") == 0 ? req.cwd : req.argv[0]);
        if (write(pex[1], msg, (size_t)n) < 0) {
        }
        _exit(127);
    }
    if (pid < 0) {
        spawn_failed(id, errno, "fork");
        goto out;
    }
    close_fd(&pex[1]);
    char msg[512];
    ssize_t n;
    do
        n = read(pex[0], msg, sizeof(msg) - 1);
    while (n < 0 && errno == EINTR);
    if (n > 0) {
        msg[n] = 0;
        int e = atoi(msg);
        char *text = strchr(msg, ' ');
        char out[600];
        snprintf(out, sizeof(out), "%s: %s", text ? text + 1 : "exec", strerror(e));
        waitpid(pid, NULL, 0);
        spawn_failed(id, e, out);
        goto out;
    }
    g->used = 1;
    g->id = id;
    g->pid = pid;
    g->detached = 0;
    g->in = pin[1];
    g->out = pout[0];
    g->err = perr[0];
    pin[1] = pout[0] = perr[0] = -1;
    fcntl(g->out, F_SETFL, O_NONBLOCK);
    fcntl(g->in, F_SETFL, O_NONBLOCK);
    fcntl(g->err, F_SETFL, O_NONBLOCK);
    send_frame(SL_CTL_STARTED, id, (uint32_t)pid, NULL, 0);
out:
    close_fd(&pin[0]);
    close_fd(&pin[1]);
    close_fd(&pout[0]);
    close_fd(&pout[1]);
    close_fd(&perr[0]);
    close_fd(&perr[1]);
    close_fd(&pex[0]);
    close_fd(&pex[1]);
    sl_ctl_spawn_req_free(&req);
    free(copy);
}

/* Read what one output pipe has; forward it unless detached. 0 on EOF. */
static int pump(gproc *g, int which)
{
    int *fd = which == 1 ? &g->out : &g->err;
    for (;;) {
        ssize_t n = read(*fd, iobuf, sizeof(iobuf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return 1; /* EAGAIN: drained for now */
        if (n == 0) {
            close_fd(fd);
            if (!g->detached)
                send_frame(SL_VM_OUT_EOF, g->id, (uint32_t)which, NULL, 0);
            return 0;
        }
        if (!g->detached)
            send_frame(which == 1 ? SL_VM_STDOUT : SL_VM_STDERR, g->id, 0, iobuf, (size_t)n);
    }
}

static void close_in(gproc *g)
{
    close_fd(&g->in);
    free(g->pend);
    g->pend = NULL;
    g->plen = 0;
    g->eof_pending = 0;
}

/* Write what is pending to the process's stdin without blocking. */
static void flush_in(gproc *g)
{
    while (g->in >= 0 && g->plen > 0) {
        ssize_t w = write(g->in, g->pend, g->plen);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            return;
        if (w <= 0) {
            close_in(g); /* reader gone (EPIPE) */
            return;
        }
        memmove(g->pend, g->pend + w, g->plen - (size_t)w);
        g->plen -= (size_t)w;
    }
    if (g->in >= 0 && g->plen == 0 && g->eof_pending)
        close_in(g);
}

static void queue_in(gproc *g, const unsigned char *p, size_t n)
{
    if (g->plen + n > MAX_PENDING) {
        close_in(g);
        return;
    }
    unsigned char *nb = realloc(g->pend, g->plen + n);
    if (nb == NULL) {
        close_in(g);
        return;
    }
    g->pend = nb;
    memcpy(g->pend + g->plen, p, n);
    g->plen += n;
    flush_in(g);
}

static void reap(void)
{
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        for (int i = 0; i < MAXP; i++) {
            gproc *g = &procs[i];
            if (!g->used || g->pid != pid)
                continue;
            /* Forward what it wrote before it died, then its status. */
            if (g->out >= 0)
                pump(g, 1);
            if (g->err >= 0)
                pump(g, 2);
            if (!g->detached)
                send_frame(SL_CTL_EXITED, g->id, (uint32_t)st, NULL, 0);
            close_in(g);
            close_fd(&g->out);
            close_fd(&g->err);
            g->used = 0;
        }
    }
}

static void detach_all(void)
{
    for (int i = 0; i < MAXP; i++) {
        if (!procs[i].used)
            continue;
        procs[i].detached = 1;
        procs[i].id |= DETACHED;
        close_in(&procs[i]);
    }
}

static void handle(const sl_vm_hdr *h, const unsigned char *p)
{
    gproc *g;
    switch (h->type) {
    case SL_CTL_SPAWN:
        do_spawn(h->id, p, h->len);
        break;
    case SL_CTL_SIGNAL:
        if ((g = find(h->id)) != NULL && h->arg > 0 && h->arg < 65)
            if (kill(-g->pid, (int)h->arg) < 0)
                kill(g->pid, (int)h->arg); /* it left its process group */
        break;
    case SL_VM_STDIN:
        if ((g = find(h->id)) != NULL && g->in >= 0 && h->len > 0)
            queue_in(g, p, h->len);
        break;
    case SL_VM_STDIN_EOF:
        if ((g = find(h->id)) != NULL && g->in >= 0) {
            g->eof_pending = 1;
            flush_in(g);
        }
        break;
    case SL_VM_HELLO:
        if (h->arg == 1)
            detach_all();
        send_frame(SL_VM_HELLO, 0x5a5a5a5au, 0xa5a5a5a5u, NULL, 0);
        break;
    case SL_VM_SYNC:
        /* Flush the guest page cache's dirty state is not needed (tmpfs); the
         * answer tells the monitor no host frame is half-handled. */
        send_frame(SL_VM_SYNCED, 0, h->arg, NULL, 0);
        break;
    default:
        break; /* SECCOMP and unknown types: the VM boundary is the sandbox */
    }
}

int main(void)
{
    mkdir("/proc", 0555);
    mount("proc", "/proc", "proc", 0, NULL);
    mkdir("/dev", 0755);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    mkdir("/sys", 0555);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    load_modules();
    setup_root();
    port = open_port();
    if (port < 0) {
        reboot(RB_POWER_OFF); /* the monitor sees QEMU exit: sandbox ended */
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    send_frame(SL_CTL_READY, 0, 0, NULL, 0);
    static struct pollfd pfd[2 + 3 * MAXP];
    static gproc *owner[2 + 3 * MAXP];
    static int which[2 + 3 * MAXP];
    for (;;) {
        int n = 0;
        pfd[n++] = (struct pollfd){.fd = port, .events = POLLIN};
        pfd[n++] = (struct pollfd){.fd = sfd, .events = POLLIN};
        for (int i = 0; i < MAXP; i++) {
            if (!procs[i].used)
                continue;
            if (procs[i].out >= 0) {
                owner[n] = &procs[i];
                which[n] = 1;
                pfd[n++] = (struct pollfd){.fd = procs[i].out, .events = POLLIN};
            }
            if (procs[i].err >= 0) {
                owner[n] = &procs[i];
                which[n] = 2;
                pfd[n++] = (struct pollfd){.fd = procs[i].err, .events = POLLIN};
            }
            if (procs[i].in >= 0 && procs[i].plen > 0) {
                owner[n] = &procs[i];
                which[n] = 0;
                pfd[n++] = (struct pollfd){.fd = procs[i].in, .events = POLLOUT};
            }
        }
        if (poll(pfd, (nfds_t)n, -1) < 0)
            continue;
        for (int i = 2; i < n; i++) {
            if (!pfd[i].revents || !owner[i]->used)
                continue;
            if (which[i] == 0)
                flush_in(owner[i]);
            else if ((which[i] == 1 ? owner[i]->out : owner[i]->err) == pfd[i].fd)
                pump(owner[i], which[i]);
        }
        if (pfd[1].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof(si)) > 0)
                ;
            reap();
        }
        if (pfd[0].revents & POLLIN) {
            long r = sl_vm_rx_fill(&rx, port);
            if (r == 0 || (pfd[0].revents & POLLHUP)) {
                /* No host connected (between a snapshot's pause and the
                 * restored copy's monitor connecting): wait for it. */
                struct timespec ts = {0, 5000000};
                nanosleep(&ts, NULL);
            }
            sl_vm_hdr h;
            const unsigned char *p;
            int k;
            while ((k = sl_vm_rx_next(&rx, &h, &p)) == 1) {
                handle(&h, p);
                sl_vm_rx_drop(&rx);
            }
            if (k < 0)
                sl_vm_rx_reset(&rx); /* corrupt: drop it, the host resyncs */
        } else if (pfd[0].revents & (POLLHUP | POLLERR)) {
            struct timespec ts = {0, 5000000};
            nanosleep(&ts, NULL);
        }
    }
}
