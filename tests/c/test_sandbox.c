/* test_sandbox.c - real sandboxes, real processes: sl_ctl, sl_cgroup,
 * sl_sandbox, sl_rm_rf and sandlot-init together.
 *
 *   test_sandbox /path/to/sandlot-init [cycles]
 *
 * Needs root (exits 77, "skipped", otherwise). Runs in a private mount
 * namespace of its own so a failed test cannot leave mounts on the host.
 * Uses /bin/busybox (Debian: busybox-static) for the directory-image test
 * when present. Prints the p50 of `cycles` (default 100) spawn + echo + kill
 * + release cycles.
 */
#include "sl_cgroup.h"
#include "sl_ctl.h"
#include "sl_sandbox.h"
#include "sl_seccomp.h"

#include <dirent.h>
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <linux/seccomp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int failures, checks;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    int n = 0;

    if (!d)
        return -1;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the DIR's own fd */
}

static int exists(const char *path)
{
    struct stat st;

    return lstat(path, &st) == 0;
}

static void write_file(const char *path, const char *data)
{
    FILE *f = fopen(path, "w");

    if (!f || fputs(data, f) < 0 || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
}

/* ------------------------------------------------------------- sl_ctl */

static void test_ctl_codec(void)
{
    char buf[256];
    const char *argv[] = {"printf", "%s|", "", "x", NULL};
    const char *envp[] = {"A=1", "PATH=/bin", NULL};
    sl_ctl_spawn_req req;
    long n = sl_ctl_pack_spawn(buf, sizeof(buf), "/w", argv, envp);

    CHECK(n > 0, "pack: %ld", n);
    CHECK(sl_ctl_unpack_spawn(buf, (size_t)n, &req) == 0, "unpack");
    CHECK(strcmp(req.cwd, "/w") == 0, "cwd %s", req.cwd);
    CHECK(req.argv[0] && strcmp(req.argv[0], "printf") == 0 && strcmp(req.argv[2], "") == 0 &&
              strcmp(req.argv[3], "x") == 0 && req.argv[4] == NULL,
          "argv with an empty element");
    CHECK(req.envp[0] && strcmp(req.envp[1], "PATH=/bin") == 0 && req.envp[2] == NULL, "envp");
    sl_ctl_spawn_req_free(&req);

    n = sl_ctl_pack_spawn(buf, sizeof(buf), NULL, argv, NULL);
    CHECK(n > 0 && sl_ctl_unpack_spawn(buf, (size_t)n, &req) == 0 && req.cwd[0] == '\0' &&
              req.envp[0] == NULL,
          "no cwd, no env");
    sl_ctl_spawn_req_free(&req);
    CHECK(sl_ctl_pack_spawn(buf, 8, "/w", argv, envp) == -E2BIG, "E2BIG");
    {
        const char *none[] = {NULL};

        CHECK(sl_ctl_pack_spawn(buf, sizeof(buf), "/", none, NULL) == -EINVAL, "empty argv");
    }
    /* Malformed payloads. */
    {
        /* Lengths without the literal's own terminating NUL. */
#define BAD(s)                                                                                     \
    {                                                                                              \
        s, sizeof(s) - 1                                                                           \
    }
        static const struct {
            const char *data;
            size_t len;
        } bad[] = {
            BAD("/\0"
                "1\0"
                "sh"), /* no final NUL */
            BAD("/\0"
                "2\0"
                "sh\0"), /* argc larger than the strings */
            BAD("/\0"
                "0\0"
                "sh\0"), /* argc 0 */
            BAD("/\0"
                "x\0"
                "sh\0"), /* not a number */
            BAD("/\0"
                "-1\0"
                "sh\0"), /* negative */
            BAD("/\0"
                "1\0"), /* argc but no argv */
            BAD(""),    /* empty */
            BAD("/\0"
                "1x\0"
                "a\0"), /* trailing junk */
            BAD("/\0"
                "99999999999999999999\0"
                "a\0"),
        };
#undef BAD
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            char tmp[64];

            memcpy(tmp, bad[i].data, bad[i].len);
            CHECK(sl_ctl_unpack_spawn(tmp, bad[i].len, &req) == -EBADMSG, "bad payload %zu", i);
        }
    }
}

static void test_ctl_socket(void)
{
    int sv[2], p[2], fds[3], nfds, before;
    sl_ctl_hdr h = {.type = SL_CTL_SPAWN, .id = 7, .arg = 9}, r;
    char buf[64];

    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0 || pipe(p) < 0) {
        perror("socketpair");
        exit(1);
    }
    before = count_fds();
    /* Payload and fds arrive; fds are CLOEXEC. */
    int three[3] = {p[0], p[1], p[0]};
    CHECK(sl_ctl_send(sv[0], &h, "abc", 3, three, 3) == 0, "send");
    nfds = 3;
    int n = sl_ctl_recv(sv[1], &r, buf, sizeof(buf), fds, &nfds);
    CHECK(n == 3 && memcmp(buf, "abc", 3) == 0 && r.type == SL_CTL_SPAWN && r.id == 7 &&
              r.arg == 9 && nfds == 3,
          "recv n=%d nfds=%d", n, nfds);
    for (int i = 0; i < nfds; i++) {
        CHECK(fcntl(fds[i], F_GETFD) & FD_CLOEXEC, "received fd not CLOEXEC");
        close(fds[i]);
    }
    /* More fds than asked for: rejected, none leaked. */
    CHECK(sl_ctl_send(sv[0], &h, NULL, 0, three, 3) == 0, "send");
    nfds = 2;
    CHECK(sl_ctl_recv(sv[1], &r, buf, sizeof(buf), fds, &nfds) == -EBADMSG && nfds == 0,
          "too many fds");
    /* Truncated: rejected. */
    CHECK(sl_ctl_send(sv[0], &h, "0123456789", 10, three, 1) == 0, "send");
    nfds = 3;
    CHECK(sl_ctl_recv(sv[1], &r, buf, 4, fds, &nfds) == -EBADMSG, "truncated");
    /* Shorter than a header: rejected. */
    CHECK(send(sv[0], "xy", 2, 0) == 2, "raw send");
    CHECK(sl_ctl_recv(sv[1], &r, buf, sizeof(buf), NULL, NULL) == -EBADMSG, "short");
    CHECK(count_fds() == before, "fd leak: %d -> %d", before, count_fds());
    /* Oversized payload refused before sending. */
    CHECK(sl_ctl_send(sv[0], &h, buf, SL_CTL_MAX_MSG, NULL, 0) == -EMSGSIZE, "EMSGSIZE");
    close(sv[0]);
    CHECK(sl_ctl_recv(sv[1], &r, buf, sizeof(buf), NULL, NULL) == -EPIPE, "EOF");
    close(sv[1]);
    close(p[0]);
    close(p[1]);
}

/* ----------------------------------------------------------- sl_rm_rf */

static void test_rm_rf(void)
{
    char base[] = "/tmp/sl-rmrf-XXXXXX", tree[128], outside[128], path[PATH_MAX];
    int fd, before = count_fds();

    if (!mkdtemp(base)) {
        perror("mkdtemp");
        exit(1);
    }
    snprintf(tree, sizeof(tree), "%s/tree", base);
    snprintf(outside, sizeof(outside), "%s/outside", base);
    mkdir(tree, 0755);
    mkdir(outside, 0755);
    snprintf(path, sizeof(path), "%s/keep", outside);
    write_file(path, "keep");
    snprintf(path, sizeof(path), "%s/a", tree);
    mkdir(path, 0755);
    snprintf(path, sizeof(path), "%s/a/file", tree);
    write_file(path, "x");
    snprintf(path, sizeof(path), "%s/a/link-out", tree);
    CHECK(symlink(outside, path) == 0, "symlink");
    snprintf(path, sizeof(path), "%s/a/nodir", tree);
    mkdir(path, 0);
    /* 3000 levels deep: far past PATH_MAX and any fd-per-level scheme. */
    snprintf(path, sizeof(path), "%s/deep", tree);
    mkdir(path, 0755);
    fd = open(path, O_RDONLY | O_DIRECTORY);
    for (int i = 0; i < 3000 && fd >= 0; i++) {
        int nfd;

        mkdirat(fd, "d", 0755);
        nfd = openat(fd, "d", O_RDONLY | O_DIRECTORY);
        close(fd);
        fd = nfd;
    }
    CHECK(fd >= 0, "deep tree");
    if (fd >= 0) {
        int f = openat(fd, "leaf", O_CREAT | O_WRONLY, 0644);

        close(f);
        close(fd);
    }
    /* A mount inside the tree: its contents must survive. */
    snprintf(path, sizeof(path), "%s/mnt", tree);
    mkdir(path, 0755);
    CHECK(mount("tmpfs", path, "tmpfs", 0, "size=64k") == 0, "mount tmpfs: %s", strerror(errno));
    snprintf(path, sizeof(path), "%s/mnt/inmount", tree);
    write_file(path, "m");

    int r = sl_rm_rf(tree);
    CHECK(r == -EXDEV, "rm_rf with a mount inside: %d", r);
    CHECK(exists(path), "file inside the mount was removed");
    snprintf(path, sizeof(path), "%s/keep", outside);
    CHECK(exists(path), "followed a symlink out of the tree");
    snprintf(path, sizeof(path), "%s/a", tree);
    CHECK(!exists(path), "a not removed");
    snprintf(path, sizeof(path), "%s/deep", tree);
    CHECK(!exists(path), "deep tree not removed");
    snprintf(path, sizeof(path), "%s/mnt", tree);
    umount2(path, MNT_DETACH);
    CHECK(sl_rm_rf(tree) == 0 && !exists(tree), "rm_rf after umount");
    CHECK(sl_rm_rf(tree) == 0, "rm_rf of a missing path");
    /* A symlink as the top: the link goes, the target stays. */
    snprintf(path, sizeof(path), "%s/toplink", base);
    CHECK(symlink(outside, path) == 0, "symlink");
    CHECK(sl_rm_rf(path) == 0 && !exists(path) && exists(outside), "top symlink");
    CHECK(sl_rm_rf(base) == 0 && !exists(base), "rm_rf base");
    CHECK(count_fds() == before, "rm_rf leaks fds");
}

/* --------------------------------------------------------- sandboxes */

/* Receive one message from the sandbox within timeout_ms. */
static int recv_msg(int fd, sl_ctl_hdr *h, char *text, size_t cap, int timeout_ms)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    double end = now_ms() + timeout_ms;

    for (;;) {
        int left = (int)(end - now_ms()), n;

        if (left <= 0)
            return -ETIMEDOUT;
        if (poll(&pfd, 1, left) < 0 && errno != EINTR)
            return -errno;
        n = sl_ctl_recv(fd, h, text, cap ? cap - 1 : 0, NULL, NULL);
        if (n == -EAGAIN)
            continue;
        if (n >= 0 && cap)
            text[n] = '\0';
        return n;
    }
}

typedef struct proc_io {
    int in_w, out_r, err_r;
} proc_io;

/* Send SPAWN(id) with fresh pipes for stdio. Returns 0 or -errno. */
static int spawn_proc(sl_sandbox *sb, uint32_t id, const char *cwd, const char *const *argv,
                      const char *const *envp, proc_io *io)
{
    static char buf[SL_CTL_MAX_MSG];
    int in[2], out[2], err[2], fds[3], r;
    sl_ctl_hdr h = {.type = SL_CTL_SPAWN, .id = id};
    long n = sl_ctl_pack_spawn(buf, sizeof(buf) - sizeof(h), cwd, argv, envp);

    if (n < 0)
        return (int)n;
    if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0)
        return -errno;
    fds[0] = in[0];
    fds[1] = out[1];
    fds[2] = err[1];
    r = sl_ctl_send(sb->ctl_fd, &h, buf, (size_t)n, fds, 3);
    close(in[0]);
    close(out[1]);
    close(err[1]);
    io->in_w = in[1];
    io->out_r = out[0];
    io->err_r = err[0];
    return r;
}

static void close_io(proc_io *io)
{
    close(io->in_w);
    close(io->out_r);
    close(io->err_r);
}

/* Read fd to EOF (bounded by time and size). */
static size_t read_all(int fd, char *buf, size_t cap, int timeout_ms)
{
    size_t len = 0;
    double end = now_ms() + timeout_ms;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};

    while (len + 1 < cap) {
        int left = (int)(end - now_ms());
        ssize_t n;

        if (left <= 0 || poll(&pfd, 1, left) <= 0)
            break;
        n = read(fd, buf + len, cap - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    return len;
}

/* Run argv to completion: STARTED, output, EXITED. Returns the raw wait
 * status or -1; *out gets stdout. */
static int run(sl_sandbox *sb, uint32_t id, const char *cwd, const char *const *argv, char *out,
               size_t cap, char *errout, size_t errcap)
{
    static const char *const env[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", NULL};
    sl_ctl_hdr h;
    char text[256];
    proc_io io;
    int r = spawn_proc(sb, id, cwd, argv, env, &io);

    if (r < 0) {
        fprintf(stderr, "spawn_proc: %s\n", strerror(-r));
        return -1;
    }
    close(io.in_w);
    io.in_w = -1;
    r = recv_msg(sb->ctl_fd, &h, text, sizeof(text), 5000);
    if (r < 0 || h.type != SL_CTL_STARTED || h.id != id) {
        fprintf(stderr, "expected STARTED(%u), got r=%d type=%u id=%u arg=%u '%s'\n", id, r, h.type,
                h.id, h.arg, r >= 0 ? text : "");
        close(io.out_r);
        close(io.err_r);
        return -1;
    }
    read_all(io.out_r, out, cap, 5000);
    if (errout)
        read_all(io.err_r, errout, errcap, 1000);
    close(io.out_r);
    close(io.err_r);
    r = recv_msg(sb->ctl_fd, &h, text, sizeof(text), 5000);
    if (r < 0 || h.type != SL_CTL_EXITED || h.id != id) {
        fprintf(stderr, "expected EXITED(%u), got r=%d type=%u\n", id, r, h.type);
        return -1;
    }
    return (int)h.arg;
}

static int sh(sl_sandbox *sb, uint32_t id, const char *script, char *out, size_t cap)
{
    const char *argv[] = {"/bin/sh", "-c", script, NULL};
    char err[512];
    int st = run(sb, id, NULL, argv, out, cap, err, sizeof(err));

    if (st != 0)
        fprintf(stderr, "  [sh '%s' status %d stderr: %s]\n", script, st, err);
    return st;
}

/* Kill, reap and release; checks that everything is gone. */
static void teardown(sl_sandbox *sb, const char *dir, int check)
{
    char paths[SL_CG_MAX_PATHS][PATH_MAX];
    int n = sb->cg.n, st = 0;
    pid_t w;

    for (int i = 0; i < n; i++)
        snprintf(paths[i], sizeof(paths[i]), "%s", sb->cg.paths[i]);
    sl_sandbox_kill(sb);
    sl_sandbox_kill(sb); /* twice is fine */
    do
        w = waitpid(sb->init_pid, &st, 0);
    while (w < 0 && errno == EINTR);
    if (check)
        CHECK(w == sb->init_pid && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL,
              "init reaped: w=%d st=%#x", (int)w, st);
    sl_sandbox_kill(sb); /* after the reap: must not hit anything (pidfd) */
    sl_sandbox_release(sb);
    sl_sandbox_release(sb);
    if (check)
        for (int i = 0; i < n; i++)
            CHECK(!exists(paths[i]), "cgroup dir left: %s", paths[i]);
    if (dir) {
        int r = sl_rm_rf(dir);

        if (check)
            CHECK(r == 0 && !exists(dir), "rm_rf %s: %d", dir, r);
    }
}

static void test_host_sandbox(int memfd)
{
    char dir[] = "/tmp/sl-sandbox-XXXXXX", vol[] = "/tmp/sl-vol-XXXXXX",
         rovol[] = "/tmp/sl-ro-XXXXXX";
    char errbuf[256], out[8192], path[PATH_MAX], text[256];
    sl_sandbox sb;
    sl_ctl_hdr h;
    proc_io io;
    int r, st;

    if (!mkdtemp(dir) || !mkdtemp(vol) || !mkdtemp(rovol)) {
        perror("mkdtemp");
        exit(1);
    }
    snprintf(path, sizeof(path), "%s/ro-file", rovol);
    write_file(path, "ro\n");
    /* A host dir to mask (outside /tmp, which is a fresh tmpfs inside anyway). */
    char maskdir[] = "/var/lib/sl-mask-XXXXXX";
    if (!mkdtemp(maskdir)) {
        perror("mkdtemp");
        exit(1);
    }
    snprintf(path, sizeof(path), "%s/secret", maskdir);
    write_file(path, "secret\n");
    const char *masks[] = {maskdir, "/etc/hostname"};
    sl_bind binds[] = {{vol, "/mnt/vol", 0}, {rovol, "/mnt/deep/ro", 1}};
    sl_sandbox_config cfg = {.id = "sb-test0000000001",
                             .rootfs = "/",
                             .dir = dir,
                             .init_memfd = memfd,
                             .binds = binds,
                             .n_binds = 2,
                             .masks = masks,
                             .n_masks = 2};
    r = sl_sandbox_spawn(&cfg, &sb, errbuf, sizeof(errbuf));
    CHECK(r == 0, "spawn: %d %s", r, errbuf);
    if (r != 0)
        return;
    CHECK(sb.init_pid > 0 && sb.ctl_fd >= 0, "sandbox fields");
    CHECK(fcntl(sb.ctl_fd, F_GETFL) & O_NONBLOCK, "ctl_fd not O_NONBLOCK");
    CHECK(fcntl(sb.ctl_fd, F_GETFD) & FD_CLOEXEC, "ctl_fd not CLOEXEC");
    if (sl_cgroup_detect() != SL_CG_NONE)
        CHECK(sb.cg.n > 0, "no cgroup created on a host with cgroups");
    for (int i = 0; i < sb.cg.n; i++) {
        char procs[PATH_MAX], line[64] = "";
        FILE *f;

        snprintf(procs, sizeof(procs), "%s/cgroup.procs", sb.cg.paths[i]);
        f = fopen(procs, "r");
        CHECK(f && fgets(line, sizeof(line), f) && atoi(line) == sb.init_pid, "init not in %s (%s)",
              sb.cg.paths[i], line);
        if (f)
            fclose(f);
    }

    /* The brief's command: output, STARTED/EXITED, a private pid namespace. */
    {
        const char *argv[] = {"/bin/sh", "-c", "echo hello; echo $$; ls /proc | grep -c '^[0-9]'",
                              NULL};
        char err[256];
        int pid_in = 0, nproc = 0;

        st = run(&sb, 0, NULL, argv, out, sizeof(out), err, sizeof(err));
        CHECK(st == 0, "status %d (stderr %s)", st, err);
        CHECK(sscanf(out, "hello\n%d\n%d\n", &pid_in, &nproc) == 2, "output: '%s'", out);
        CHECK(pid_in > 1 && pid_in < 10, "pid inside %d", pid_in);
        CHECK(nproc >= 2 && nproc <= 5, "processes visible: %d", nproc);
    }
    /* Missing binary and bad cwd: SPAWN_FAILED with the errno. */
    {
        const char *argv[] = {"definitely-not-a-binary", NULL};
        const char *env[] = {NULL};

        CHECK(spawn_proc(&sb, 1, NULL, argv, env, &io) == 0, "spawn_proc");
        r = recv_msg(sb.ctl_fd, &h, text, sizeof(text), 5000);
        CHECK(r >= 0 && h.type == SL_CTL_SPAWN_FAILED && h.id == 1 && h.arg == ENOENT &&
                  strcmp(text, "exec definitely-not-a-binary: No such file or directory") == 0,
              "missing binary: r=%d type=%u arg=%u '%s'", r, h.type, h.arg, text);
        close_io(&io);
        const char *argv2[] = {"/bin/true", NULL};
        CHECK(spawn_proc(&sb, 2, "/nope", argv2, env, &io) == 0, "spawn_proc");
        r = recv_msg(sb.ctl_fd, &h, text, sizeof(text), 5000);
        CHECK(r >= 0 && h.type == SL_CTL_SPAWN_FAILED && h.id == 2 && h.arg == ENOENT &&
                  strcmp(text, "chdir /nope: No such file or directory") == 0,
              "bad cwd: r=%d type=%u arg=%u '%s'", r, h.type, h.arg, text);
        close_io(&io);
        /* Not executable: EACCES. */
        const char *argv3[] = {"/etc/passwd", NULL};
        CHECK(spawn_proc(&sb, 3, NULL, argv3, env, &io) == 0, "spawn_proc");
        r = recv_msg(sb.ctl_fd, &h, text, sizeof(text), 5000);
        CHECK(r >= 0 && h.type == SL_CTL_SPAWN_FAILED && h.arg == EACCES, "EACCES: %u '%s'", h.arg,
              text);
        close_io(&io);
        /* PATH comes from the given env: none means the default PATH. */
        const char *argv4[] = {"true", NULL};
        CHECK(run(&sb, 4, "/tmp", argv4, out, sizeof(out), NULL, 0) == 0, "PATH default");
    }
    /* cwd, env, and argv with an empty element pass through exactly. */
    {
        const char *argv[] = {"sh", "-c", "pwd; echo \"[$1][$2]\"; echo $HOME", "sh", "",
                              "b",  NULL};

        st = run(&sb, 5, "/usr", argv, out, sizeof(out), NULL, 0);
        CHECK(st == 0 && strcmp(out, "/usr\n[][b]\n/root\n") == 0, "cwd/argv/env: '%s'", out);
    }
    /* Network: only lo, and it is up. */
    CHECK(sh(&sb, 6, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '", out, sizeof(out)) == 0 &&
              strcmp(out, "lo\n") == 0,
          "/proc/net/dev: '%s'", out);
    CHECK(sh(&sb, 7, "ip -o link | cut -d: -f2 | tr -d ' '", out, sizeof(out)) == 0 &&
              strcmp(out, "lo\n") == 0,
          "ip link: '%s'", out);
    CHECK(sh(&sb, 8, "ip -o link show lo", out, sizeof(out)) == 0 && strstr(out, ",UP"),
          "lo not up: '%s'", out);
    CHECK(sh(&sb, 9, "ls /sys/class/net", out, sizeof(out)) == 0 && strcmp(out, "lo\n") == 0,
          "sysfs of the netns: '%s'", out);
    /* Filesystem: writes land in the upper dir, not on the host. */
    unlink("/etc/sandlot-test");
    CHECK(sh(&sb, 10, "echo inside > /etc/sandlot-test && cat /etc/sandlot-test", out,
             sizeof(out)) == 0 &&
              strcmp(out, "inside\n") == 0,
          "write /etc: '%s'", out);
    CHECK(!exists("/etc/sandlot-test"), "/etc/sandlot-test leaked to the host");
    snprintf(path, sizeof(path), "%s/upper/etc/sandlot-test", dir);
    CHECK(exists(path), "not in the upper dir");
    /* UTS, cgroup namespace, masks, read-only /proc/sys and /sys. */
    CHECK(sh(&sb, 11, "hostname", out, sizeof(out)) == 0 && strcmp(out, "sb-test0000000001\n") == 0,
          "hostname: '%s'", out);
    CHECK(sh(&sb, 12, "grep -vc ':/$' /proc/self/cgroup || true", out, sizeof(out)) == 0 &&
              strcmp(out, "0\n") == 0,
          "cgroup namespace not rooted at the sandbox: '%s'", out);
    /* The caller's masks: an empty read-only dir, an empty file. */
    snprintf(path, sizeof(path),
             "ls -A %s | wc -l; ! touch %s/x 2>/dev/null && wc -c < /etc/hostname", maskdir,
             maskdir);
    CHECK(sh(&sb, 31, path, out, sizeof(out)) == 0 && strcmp(out, "0\n0\n") == 0,
          "caller masks: '%s'", out);
    /* The default masks apply without being asked for. (Which /proc files
     * exist depends on the kernel config; interrupts always does.) */
    CHECK(sh(&sb, 13,
             "wc -c < /proc/interrupts; ls /sys/firmware | wc -l; for f in /proc/kcore /proc/keys "
             "/proc/timer_list; do test -e $f && cat $f; done; true",
             out, sizeof(out)) == 0 &&
              strcmp(out, "0\n0\n") == 0,
          "masks: '%s'", out);
    CHECK(sh(&sb, 14,
             "! (echo 3 > /proc/sys/vm/drop_caches) 2>/dev/null && "
             "! (echo c > /proc/sysrq-trigger) 2>/dev/null && ! touch /sys/x 2>/dev/null",
             out, sizeof(out)) == 0,
          "/proc/sys, /proc/sysrq-trigger or /sys writable");
    CHECK(sh(&sb, 15,
             "mount | grep -c ' on /tmp type tmpfs\\| on /run type tmpfs\\| on /var/tmp "
             "type tmpfs\\| on /dev/shm type tmpfs\\| on /dev/pts type devpts'",
             out, sizeof(out)) == 0 &&
              strcmp(out, "5\n") == 0,
          "fresh tmpfs mounts: '%s'", out);
    CHECK(sh(&sb, 16, "ls /dev | tr '\\n' ' '", out, sizeof(out)) == 0 &&
              strcmp(out,
                     "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero ") == 0,
          "/dev: '%s'", out);
    CHECK(sh(&sb, 17, "head -c 4 /dev/urandom | wc -c; echo x > /dev/null; test -c /dev/ptmx", out,
             sizeof(out)) == 0 &&
              strcmp(out, "4\n") == 0,
          "devices: '%s'", out);
    /* No fd leaks: the child has 0-2 (+ ls's own dir fd). init has 0-3 and
     * its signalfd (once it is done with our spawn: hence the sleep); their
     * numbers are listable, but none can be opened: init holds capabilities
     * its children lack, so the ptrace access check fails. */
    CHECK(sh(&sb, 18,
             "ls /proc/self/fd | tr '\\n' ' '; sleep 0.2; ls /proc/1/fd | wc -l; readlink "
             "/proc/1/fd/3 "
             "2>/dev/null || echo denied",
             out, sizeof(out)) == 0 &&
              strcmp(out, "0 1 2 3 5\ndenied\n") == 0,
          "fds: '%s'", out);
    /* pid 1 is sandlot-init from the sealed memfd: not writable (CVE-2019-5736). */
    CHECK(sh(&sb, 30, "tr '\\0' ' ' < /proc/1/cmdline; ! (echo x >> /proc/1/exe) 2>/dev/null", out,
             sizeof(out)) == 0 &&
              strcmp(out, "sandlot-init ") == 0,
          "init exe: '%s'", out);
    /* Each process is its own session leader. */
    CHECK(sh(&sb, 19, "ps -o sid= -p $$; echo $$", out, sizeof(out)) == 0, "ps");
    {
        int sid = -1, self = -2;

        CHECK(sscanf(out, "%d %d", &sid, &self) == 2 && sid == self, "setsid: '%s'", out);
    }
    /* Binds: rw volume visible on the host, ro one read-only. */
    CHECK(sh(&sb, 20,
             "echo v > /mnt/vol/from-sandbox && cat /mnt/deep/ro/ro-file && ! touch "
             "/mnt/deep/ro/x 2>/dev/null",
             out, sizeof(out)) == 0 &&
              strcmp(out, "ro\n") == 0,
          "binds: '%s'", out);
    snprintf(path, sizeof(path), "%s/from-sandbox", vol);
    CHECK(exists(path), "rw bind not shared with the host");
    /* Orphans are reaped by init: no zombies after a double fork. */
    CHECK(sh(&sb, 21, "(sleep 0.1 &) ; exit 0", out, sizeof(out)) == 0, "orphan");
    usleep(300 * 1000);
    CHECK(sh(&sb, 22, "cat /proc/[0-9]*/stat | cut -d' ' -f3 | grep -c Z || true", out,
             sizeof(out)) == 0 &&
              strcmp(out, "0\n") == 0,
          "zombies: '%s'", out);
    /* SIGNAL goes to the process group: SIGTERM ends sleep and its shell. */
    {
        const char *argv[] = {"/bin/sh", "-c", "sleep 1000; echo not-reached", NULL};
        const char *env[] = {NULL};

        CHECK(spawn_proc(&sb, 23, NULL, argv, env, &io) == 0, "spawn");
        r = recv_msg(sb.ctl_fd, &h, text, sizeof(text), 5000);
        CHECK(r >= 0 && h.type == SL_CTL_STARTED && h.id == 23, "STARTED");
        sl_ctl_hdr sig = {.type = SL_CTL_SIGNAL, .id = 23, .arg = SIGTERM};
        CHECK(sl_ctl_send(sb.ctl_fd, &sig, NULL, 0, NULL, 0) == 0, "send SIGNAL");
        r = recv_msg(sb.ctl_fd, &h, text, sizeof(text), 5000);
        CHECK(r >= 0 && h.type == SL_CTL_EXITED && h.id == 23 && WIFSIGNALED(h.arg) &&
                  WTERMSIG(h.arg) == SIGTERM,
              "signalled: r=%d type=%u arg=%#x", r, h.type, h.arg);
        read_all(io.out_r, out, sizeof(out), 1000);
        CHECK(out[0] == '\0', "the shell went on: '%s'", out);
        close_io(&io);
    }
    /* stdin is the pipe we passed. */
    {
        const char *argv[] = {"/bin/cat", NULL};
        const char *env[] = {NULL};

        CHECK(spawn_proc(&sb, 24, NULL, argv, env, &io) == 0, "spawn");
        r = recv_msg(sb.ctl_fd, &h, text, sizeof(text), 5000);
        CHECK(r >= 0 && h.type == SL_CTL_STARTED, "STARTED");
        CHECK(write(io.in_w, "piped\n", 6) == 6, "write stdin");
        close(io.in_w);
        io.in_w = -1;
        read_all(io.out_r, out, sizeof(out), 5000);
        CHECK(strcmp(out, "piped\n") == 0, "cat: '%s'", out);
        r = recv_msg(sb.ctl_fd, &h, text, sizeof(text), 5000);
        CHECK(r >= 0 && h.type == SL_CTL_EXITED && h.arg == 0, "cat exit");
        close(io.out_r);
        close(io.err_r);
    }
    /* Bad messages do not kill init: junk, an unknown type, a SPAWN without fds. */
    {
        sl_ctl_hdr junk = {.type = 999, .id = 1};
        sl_ctl_hdr nofds = {.type = SL_CTL_SPAWN, .id = 25};
        char payload[64];
        const char *argv[] = {"/bin/true", NULL};
        long n = sl_ctl_pack_spawn(payload, sizeof(payload), NULL, argv, NULL);

        CHECK(send(sb.ctl_fd, "x", 1, 0) == 1, "send junk");
        CHECK(sl_ctl_send(sb.ctl_fd, &junk, "zz", 2, NULL, 0) == 0, "send unknown");
        CHECK(sl_ctl_send(sb.ctl_fd, &nofds, payload, (size_t)n, NULL, 0) == 0, "send");
        r = recv_msg(sb.ctl_fd, &h, text, sizeof(text), 5000);
        CHECK(r >= 0 && h.type == SL_CTL_SPAWN_FAILED && h.id == 25 && h.arg == EINVAL,
              "SPAWN without fds: type=%u arg=%u", h.type, h.arg);
        CHECK(sh(&sb, 26, "echo alive", out, sizeof(out)) == 0 && strcmp(out, "alive\n") == 0,
              "init survived bad messages");
    }
    /* A 200 KiB argv travels in one message. */
    {
        /* (One string may not exceed 128 KiB: the kernel's MAX_ARG_STRLEN.) */
        static char big[100 * 1024];
        const char *argv[] = {"/bin/sh", "-c", "echo $((${#1} + ${#2}))", "sh", big, big, NULL};

        memset(big, 'a', sizeof(big) - 1);
        st = run(&sb, 27, NULL, argv, out, sizeof(out), NULL, 0);
        CHECK(st == 0 && atoi(out) == 2 * ((int)sizeof(big) - 1), "big argv: st=%d '%s'", st, out);
    }
    /* sl_sandbox_kill: a sleeping process dies with the sandbox. */
    {
        const char *argv[] = {"/bin/sleep", "1000", NULL};
        const char *env[] = {NULL};

        CHECK(spawn_proc(&sb, 28, NULL, argv, env, &io) == 0, "spawn");
        r = recv_msg(sb.ctl_fd, &h, text, sizeof(text), 5000);
        CHECK(r >= 0 && h.type == SL_CTL_STARTED, "STARTED sleep");
        teardown(&sb, dir, 1);
        /* The sleep held the stdout pipe: EOF proves it is dead. */
        read_all(io.out_r, out, sizeof(out), 5000);
        struct pollfd pfd = {.fd = io.out_r, .events = POLLIN};
        char c;
        CHECK(poll(&pfd, 1, 0) == 1 && read(io.out_r, &c, 1) == 0, "sleep still alive");
        close_io(&io);
    }
    snprintf(path, sizeof(path), "%s/from-sandbox", vol);
    CHECK(exists(path), "rm_rf of the sandbox dir touched the volume");
    sl_rm_rf(vol);
    sl_rm_rf(rovol);
    sl_rm_rf(maskdir);
}

/* Python run inside the sandbox: each line "name result errno" of a raw
 * syscall that the profile must refuse (or, for the last ones, allow). The
 * syscall numbers come from this build's headers. */
static const char hardening_py[] =
    "import ctypes\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "L = ctypes.c_long\n"
    "def t(name, nr, *a):\n"
    "    ctypes.set_errno(0)\n"
    "    r = libc.syscall(L(nr), *[L(x) if isinstance(x, int) else x for x in a])\n"
    "    print(name, 0 if r >= 0 else ctypes.get_errno())\n"
    "t('unshare-user', %d, 0x10000000)\n"
    "t('unshare-mnt', %d, 0x20000)\n"
    "t('mount', %d, b'none', b'/mnt', b'tmpfs', 0, 0)\n"
    "t('umount2', %d, b'/proc', 2)\n"
    "t('clone-newpid', %d, 0x20000000 | 17, 0, 0, 0, 0)\n"
    "t('clone3', %d, 0, 0)\n"
    "t('ptrace-traceme', %d, 0, 0, 0, 0)\n"
    "t('keyctl', %d, 0, -3, 0)\n"
    "t('bpf', %d, 0, 0, 0)\n"
    "t('personality-norandom', %d, 0x0040000)\n"
    "t('personality-hi', %d, 0x100000000)\n"
    "t('personality-query', %d, 0xffffffff)\n"
    "t('personality-linux', %d, 0)\n"
    "t('ioctl-tiocsti-hi', %d, 0, 0x100000000 | %d, 0)\n";

static const char hardening_expect[] = "unshare-user 1\n"
                                       "unshare-mnt 1\n"
                                       "mount 1\n"
                                       "umount2 1\n"
                                       "clone-newpid 1\n"
                                       "clone3 38\n"
                                       "ptrace-traceme 1\n"
                                       "keyctl 1\n"
                                       "bpf 1\n"
                                       "personality-norandom 1\n"
                                       "personality-hi 1\n"
                                       "personality-query 0\n"
                                       "personality-linux 0\n"
                                       "ioctl-tiocsti-hi 1\n";

/* Capabilities, no_new_privs, seccomp and the host image's masks, as seen by
 * processes init spawns. */
static void test_hardening(int memfd)
{
    char dir[] = "/tmp/sl-hard-XXXXXX", errbuf[256], out[4096], script[4096], key[128] = "";
    sl_sandbox sb;
    struct stat st;
    int r;

    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
    /* A fake private host key: it must be masked like a real one. It has to
     * live on the real root filesystem (the overlay of "/" shows no mounts),
     * so it is created and removed right here. */
    if (stat("/etc/ssh", &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(key, sizeof(key), "/etc/ssh/sandlot_test_%d_key", (int)getpid());
        write_file(key, "PRIVATE\n");
    }
    sl_sandbox_config cfg = {.id = "sb-hardening", .rootfs = "/", .dir = dir, .init_memfd = memfd};
    r = sl_sandbox_spawn(&cfg, &sb, errbuf, sizeof(errbuf));
    CHECK(r == 0, "spawn: %d %s", r, errbuf);
    if (r != 0) {
        if (key[0])
            unlink(key);
        return;
    }
    /* Docker's default set minus NET_RAW and MKNOD, in every set but the
     * (empty) inheritable and ambient ones; no_new_privs; a filter. */
    CHECK(
        sh(&sb, 1,
           "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status "
           "| tr -s '\\t' ' '",
           out, sizeof(out)) == 0 &&
            strcmp(out, "CapInh: 0000000000000000\nCapPrm: 00000000a00405fb\n"
                        "CapEff: 00000000a00405fb\nCapBnd: 00000000a00405fb\n"
                        "CapAmb: 0000000000000000\nNoNewPrivs: 1\nSeccomp: 2\n") == 0,
        "capabilities: '%s'", out);
    /* init itself: filtered and bounded too (its children inherit both),
     * but with every capability in its effective set. */
    CHECK(sh(&sb, 12,
             "grep -E '^(CapEff|CapBnd|Seccomp):' /proc/1/status | tr -s '\\t' ' '; "
             "grep -q '^CapEff:.*ffffff' /proc/1/status && echo full",
             out, sizeof(out)) == 0 &&
              strncmp(out, "CapEff: ", 8) == 0 &&
              strstr(out, "\nCapBnd: 00000000a00405fb\nSeccomp: 2\nfull\n"),
          "init: '%s'", out);
    /* The filter's verdicts (EPERM = 1, ENOSYS = 38 for clone3). Several of
     * these (a user namespace, PTRACE_TRACEME, keyctl, personality) need no
     * capability at all, so only the filter can have refused them. */
    snprintf(script, sizeof(script), hardening_py, SYS_unshare, SYS_unshare, SYS_mount, SYS_umount2,
             SYS_clone, SYS_clone3, SYS_ptrace, SYS_keyctl, SYS_bpf, SYS_personality,
             SYS_personality, SYS_personality, SYS_personality, SYS_ioctl, TIOCSTI);
    {
        const char *argv[] = {"/usr/bin/python3", "-c", script, NULL};
        char err[1024];
        int st2 = run(&sb, 2, NULL, argv, out, sizeof(out), err, sizeof(err));

        CHECK(st2 == 0 && strcmp(out, hardening_expect) == 0, "seccomp verdicts: st=%d '%s' %s",
              st2, out, err);
    }
    /* The same through ordinary tools. */
    CHECK(sh(&sb, 3,
             "unshare -U true 2>&1 && echo ESCAPED; mount -t tmpfs none /mnt 2>/dev/null && echo "
             "MOUNTED; setarch $(uname -m) -R true 2>/dev/null && echo NORANDOM; true",
             out, sizeof(out)) == 0 &&
              strstr(out, "Operation not permitted") && !strstr(out, "ESCAPED") &&
              !strstr(out, "MOUNTED") && !strstr(out, "NORANDOM"),
          "tools: '%s'", out);
#ifdef __x86_64__
    /* Another ABI is not filtered by number: the process is killed. x32
     * (syscall numbers with bit 30) and i386 (int 0x80 from a 64-bit process). */
    {
        const char *x32[] = {"/usr/bin/python3", "-c",
                             "import ctypes; ctypes.CDLL(None).syscall(0x40000000 | 39); "
                             "print('alive')",
                             NULL};
        const char *i386[] = {
            "/usr/bin/python3", "-c",
            "import ctypes, mmap\n"
            "m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
            "m.write(b'\\xb8\\x14\\x00\\x00\\x00\\xcd\\x80\\xc3')  # mov eax, 20; int 0x80; ret\n"
            "a = ctypes.addressof(ctypes.c_char.from_buffer(m))\n"
            "print(ctypes.CFUNCTYPE(ctypes.c_int)(a)())\n",
            NULL};
        int st2 = run(&sb, 4, NULL, x32, out, sizeof(out), NULL, 0);

        CHECK(st2 >= 0 && WIFSIGNALED(st2) && WTERMSIG(st2) == SIGSYS && out[0] == '\0',
              "x32 syscall: st=%#x '%s'", st2, out);
        st2 = run(&sb, 5, NULL, i386, out, sizeof(out), NULL, 0);
        CHECK(st2 >= 0 && WIFSIGNALED(st2) && WTERMSIG(st2) == SIGSYS && out[0] == '\0',
              "int 0x80: st=%#x '%s'", st2, out);
    }
#endif
    /* Only the first profile counts: a later allow-all one is ignored, a
     * malformed one too, and init survives both. */
    {
        struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
        sl_ctl_hdr h = {.type = SL_CTL_SECCOMP, .id = 0, .arg = 1};

        CHECK(sl_ctl_send(sb.ctl_fd, &h, &allow, sizeof(allow), NULL, 0) == 0, "send SECCOMP");
        h.arg = 7;
        CHECK(sl_ctl_send(sb.ctl_fd, &h, &allow, sizeof(allow), NULL, 0) == 0, "send SECCOMP");
        CHECK(sh(&sb, 6,
                 "grep '^Seccomp:' /proc/self/status; unshare -U true 2>/dev/null || echo "
                 "refused",
                 out, sizeof(out)) == 0 &&
                  strcmp(out, "Seccomp:\t2\nrefused\n") == 0,
              "second profile: '%s'", out);
    }
    /* The /dev nodes (and the /dev/null behind file masks) are the sandbox's
     * own: a chmod or chown inside must never reach the host's inodes (a
     * chmod 000 /dev/null would break the host); data must flow. (The
     * attack sets the mode and owner they have: harmless if it reaches the
     * host, where the ctime shows it.) */
    {
        struct stat before, after;

        CHECK(stat("/dev/null", &before) == 0, "stat /dev/null");
        CHECK(sh(&sb, 13,
                 "for d in /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty "
                 "/etc/shadow; do test -e $d || continue; chmod $(stat -c %a $d) $d; chown "
                 "$(stat -c %u:%g $d) $d; done 2>/dev/null; echo data > /dev/null && head -c 3 "
                 "/dev/zero | wc -c; stat -c %t:%T /dev/null /dev/tty",
                 out, sizeof(out)) == 0 &&
                  strcmp(out, "3\n1:3\n5:0\n") == 0,
              "/dev: '%s'", out);
        CHECK(stat("/dev/null", &after) == 0 && after.st_ctim.tv_sec == before.st_ctim.tv_sec &&
                  after.st_ctim.tv_nsec == before.st_ctim.tv_nsec &&
                  after.st_mode == before.st_mode,
              "host /dev/null changed");
    }
    /* Global /proc entries have one mode and owner for every proc mount on
     * the machine: /proc is read-only, so neither can change. (The attack
     * sets the mode and owner they have.) /dev/stdout still works. */
    CHECK(sh(&sb, 14,
             "for f in /proc/buddyinfo /proc/meminfo /proc/slabinfo /proc/kallsyms; do test -e $f "
             "|| continue; chmod $(stat -c %a $f) $f 2>/dev/null && echo chmod $f; chown "
             "$(stat -c %u:%g $f) $f 2>/dev/null && echo chown $f; done; echo out > /dev/stdout",
             out, sizeof(out)) == 0 &&
              strcmp(out, "out\n") == 0,
          "/proc metadata: '%s'", out);
    /* Host secrets are hidden; the home dirs are empty but usable. */
    if (lstat("/root", &st) == 0 && S_ISDIR(st.st_mode)) {
        char want[64];

        snprintf(want, sizeof(want), "0\n0\nrw\n%o\n", (unsigned)(st.st_mode & 07777));
        CHECK(sh(&sb, 7,
                 "cat /etc/shadow /etc/gshadow | wc -c; ls -A /root /home | grep -vc ':$\\|^$'; "
                 "touch /root/x && echo rw; stat -c %a /root",
                 out, sizeof(out)) == 0 &&
                  strcmp(out, want) == 0,
              "host masks: '%s' (want '%s')", out, want);
    }
    if (key[0]) {
        snprintf(script, sizeof(script), "wc -c < %s; cat /etc/ssh/*_key | grep -c PRIVATE || true",
                 key);
        CHECK(sh(&sb, 8, script, out, sizeof(out)) == 0 && strcmp(out, "0\n0\n") == 0,
              "ssh key mask: '%s'", out);
        unlink(key);
    }
    /* init's own memory, environment and fds are out of reach (it holds
     * capabilities the children lack, so the ptrace access check fails). */
    CHECK(sh(&sb, 9,
             "for f in mem environ fd/0; do cat /proc/1/$f >/dev/null 2>&1 && echo read $f; "
             "done; true",
             out, sizeof(out)) == 0 &&
              out[0] == '\0',
          "init reachable: '%s'", out);
    /* kill -9 -1 inside: every process of the sandbox but init dies (the
     * caller too, eventually), init survives and keeps spawning. The script
     * first makes sure it is in the sandbox's pid namespace: a broken one
     * must fail the test, not kill every process on the machine. */
    {
        const char *argv[] = {"/bin/sh", "-c",
                              "[ \"$(ls -d /proc/[0-9]* | wc -l)\" -lt 30 ] || exit 99; "
                              "sleep 1000 & sleep 0.05; kill -9 -1; echo survived",
                              NULL};
        int st2 = run(&sb, 10, NULL, argv, out, sizeof(out), NULL, 0);

        CHECK(st2 >= 0 && st2 != 99 << 8, "kill -1 run: %#x", st2);
        CHECK(kill(sb.init_pid, 0) == 0, "init died");
        CHECK(sh(&sb, 11, "ps -e -o comm= | grep -c sleep || true", out, sizeof(out)) == 0 &&
                  strcmp(out, "0\n") == 0,
              "sleep survived kill -1: '%s'", out);
    }
    teardown(&sb, dir, 1);
}

static void test_spawn_failures(int memfd)
{
    char dir[] = "/tmp/sl-fail-XXXXXX", errbuf[256];
    sl_sandbox sb;
    int r, before = count_fds();

    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
    sl_sandbox_config cfg = {
        .id = "sb-fail", .rootfs = "/nonexistent-rootfs", .dir = dir, .init_memfd = memfd};
    r = sl_sandbox_spawn(&cfg, &sb, errbuf, sizeof(errbuf));
    CHECK(r == -ENOENT && strstr(errbuf, "mount overlay on ") &&
              strstr(errbuf, ": No such file or directory"),
          "bad rootfs: %d '%s'", r, errbuf);
    CHECK(sb.ctl_fd == -1 && sb.cg.n == 0, "failure left state behind");
    CHECK(waitpid(-1, NULL, WNOHANG) == -1 && errno == ECHILD, "child not reaped");
    CHECK(!exists("/sys/fs/cgroup/unified/sandlot/sb-fail") &&
              !exists("/sys/fs/cgroup/pids/sandlot/sb-fail"),
          "cgroup left behind");

    /* A bind target behind a symlink (/bin -> usr/bin on merged-/usr hosts). */
    struct stat st;
    if (lstat("/bin", &st) == 0 && S_ISLNK(st.st_mode)) {
        sl_bind b = {"/tmp", "/bin/sandlot-escape", 0};

        cfg.rootfs = "/";
        cfg.binds = &b;
        cfg.n_binds = 1;
        r = sl_sandbox_spawn(&cfg, &sb, errbuf, sizeof(errbuf));
        CHECK(r == -ELOOP && strstr(errbuf, "/bin/sandlot-escape"),
              "symlinked bind target: %d '%s'", r, errbuf);
        CHECK(!exists("/usr/bin/sandlot-escape"), "created through the symlink");
        cfg.n_binds = 0;
        cfg.binds = NULL;
        /* A caller's mask behind a symlink would not apply: refused. */
        const char *m[] = {"/bin/sh"};
        cfg.masks = m;
        cfg.n_masks = 1;
        r = sl_sandbox_spawn(&cfg, &sb, errbuf, sizeof(errbuf));
        CHECK(r == -ELOOP && strstr(errbuf, "mask /bin/sh"), "symlinked mask: %d '%s'", r, errbuf);
        cfg.masks = NULL;
        cfg.n_masks = 0;
    }
    cfg.id = "../evil";
    CHECK(sl_sandbox_spawn(&cfg, &sb, errbuf, sizeof(errbuf)) == -EINVAL, "bad id accepted");
    cfg.id = "sb-x";
    cfg.rootfs = "/tmp/a,upperdir=/";
    CHECK(sl_sandbox_spawn(&cfg, &sb, errbuf, sizeof(errbuf)) == -EINVAL, "comma accepted");
    CHECK(sl_rm_rf(dir) == 0, "rm_rf");
    CHECK(count_fds() == before, "spawn failures leak fds: %d -> %d", before, count_fds());
}

/* The v1 fallback kill (freezer, SIGKILL each member, thaw), forced on a host
 * that has cgroup.kill by hiding the v2 directory from sl_cgroup_kill. */
/* The pool's two-step spawn: _start returns at once, the child joins its
 * cgroup itself and builds its root at nice 19; _finish collects READY; the
 * sandbox is then what sl_sandbox_spawn makes (init in every cgroup, at our
 * priority, running commands). A child that fails is reported by _finish. */
static void test_spawn_start_finish(int memfd)
{
    char dir[] = "/tmp/sl-pool-XXXXXX", errbuf[256], out[256], err[256];
    sl_sandbox sb;
    int r;

    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
    sl_sandbox_config cfg = {.id = "sb-pooltest", .rootfs = "/", .dir = dir, .init_memfd = memfd};
    r = sl_sandbox_spawn_start(&cfg, &sb, errbuf, sizeof(errbuf));
    CHECK(r == 0, "spawn_start: %d %s", r, errbuf);
    if (r != 0)
        return;
    CHECK(sb.init_pid > 0 && sb.sync_fd >= 0, "spawn_start fields");
    r = sl_sandbox_spawn_finish(&sb, 0, errbuf, sizeof(errbuf));
    CHECK(r == 0 || r == -EINPROGRESS, "finish(0): %d %s", r, errbuf);
    if (r == -EINPROGRESS)
        r = sl_sandbox_spawn_finish(&sb, -1, errbuf, sizeof(errbuf));
    CHECK(r == 0 && sb.sync_fd < 0, "finish(-1): %d %s", r, errbuf);
    if (r != 0)
        return;
    for (int i = 0; i < sb.cg.n; i++) {
        char procs[PATH_MAX], line[64] = "";
        FILE *f;

        snprintf(procs, sizeof(procs), "%s/cgroup.procs", sb.cg.paths[i]);
        f = fopen(procs, "r");
        CHECK(f && fgets(line, sizeof(line), f) && atoi(line) == sb.init_pid,
              "self-attached init not in %s (%s)", sb.cg.paths[i], line);
        if (f)
            fclose(f);
    }
    errno = 0;
    int ours = getpriority(PRIO_PROCESS, 0),
        init_prio = getpriority(PRIO_PROCESS, (id_t)sb.init_pid);
    CHECK(errno == 0 && init_prio == ours, "init runs at nice %d, not ours (%d)", init_prio, ours);
    {
        const char *argv[] = {"/bin/sh", "-c", "hostname", NULL};
        int st = run(&sb, 0, NULL, argv, out, sizeof(out), err, sizeof(err));

        CHECK(st == 0 && strcmp(out, "sb-pooltest\n") == 0, "status %d out '%s' err '%s'", st, out,
              err);
    }
    teardown(&sb, dir, 1);

    /* A child that cannot build its root: _start still returns 0, _finish
     * reports the child's own words and leaves nothing behind. */
    char dir2[] = "/tmp/sl-pool-XXXXXX";
    if (!mkdtemp(dir2)) {
        perror("mkdtemp");
        exit(1);
    }
    sl_bind bad[] = {{"/nonexistent-sandlot-pool-source", "/mnt/x", 1}};
    sl_sandbox_config cfg2 = {.id = "sb-pooltest2",
                              .rootfs = "/",
                              .dir = dir2,
                              .init_memfd = memfd,
                              .binds = bad,
                              .n_binds = 1};
    r = sl_sandbox_spawn_start(&cfg2, &sb, errbuf, sizeof(errbuf));
    CHECK(r == 0, "spawn_start (bad bind): %d %s", r, errbuf);
    if (r == 0) {
        char paths[SL_CG_MAX_PATHS][PATH_MAX];
        int n = sb.cg.n;

        for (int i = 0; i < n; i++)
            snprintf(paths[i], sizeof(paths[i]), "%s", sb.cg.paths[i]);
        r = sl_sandbox_spawn_finish(&sb, -1, errbuf, sizeof(errbuf));
        CHECK(r == -ENOENT && strstr(errbuf, "nonexistent-sandlot-pool-source"),
              "finish (bad bind): %d '%s'", r, errbuf);
        CHECK(sb.init_pid == -1 && sb.ctl_fd == -1 && sb.sync_fd == -1, "fields after a failure");
        for (int i = 0; i < n; i++)
            CHECK(!exists(paths[i]), "cgroup dir left: %s", paths[i]);
    }
    CHECK(sl_rm_rf(dir2) == 0, "rm_rf");
}

static void test_freezer_kill(int memfd)
{
    char dir[] = "/tmp/sl-frz-XXXXXX", errbuf[256], text[64];
    sl_sandbox sb;
    sl_ctl_hdr h;
    proc_io io;
    int st = 0;

    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
    sl_sandbox_config cfg = {.id = "sb-freezer", .rootfs = "/", .dir = dir, .init_memfd = memfd};
    if (sl_sandbox_spawn(&cfg, &sb, errbuf, sizeof(errbuf)) != 0) {
        CHECK(0, "spawn: %s", errbuf);
        return;
    }
    if (sb.cg.freezer_index < 0) {
        fprintf(stderr, "SKIP freezer kill: no v1 freezer here\n");
        teardown(&sb, dir, 1);
        return;
    }
    const char *argv[] = {"/bin/sleep", "1000", NULL};
    const char *env[] = {NULL};
    CHECK(spawn_proc(&sb, 1, NULL, argv, env, &io) == 0, "spawn");
    CHECK(recv_msg(sb.ctl_fd, &h, text, sizeof(text), 5000) >= 0 && h.type == SL_CTL_STARTED,
          "STARTED");
    sl_cgroup cg = sb.cg;
    cg.v2_index = -1;
    sl_cgroup_kill(&cg);
    CHECK(waitpid(sb.init_pid, &st, 0) == sb.init_pid && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL,
          "freezer kill did not kill init: %#x", st);
    char out[16];
    read_all(io.out_r, out, sizeof(out), 5000); /* EOF: the sleep is gone too */
    struct pollfd pfd = {.fd = io.out_r, .events = POLLIN};
    CHECK(poll(&pfd, 1, 0) == 1 && read(io.out_r, out, 1) == 0, "sleep survived");
    close_io(&io);
    sl_sandbox_release(&sb);
    CHECK(sl_rm_rf(dir) == 0, "rm_rf");
}

static int copy_file(const char *from, const char *to, mode_t mode)
{
    char buf[65536];
    int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, mode);
    ssize_t n;

    if (in < 0 || out < 0)
        return -1;
    while ((n = read(in, buf, sizeof(buf))) > 0)
        if (write(out, buf, (size_t)n) != n)
            return -1;
    close(in);
    return close(out);
}

static void test_dir_image(int memfd)
{
    char img[] = "/tmp/sl-img-XXXXXX", dir[] = "/tmp/sl-imgsb-XXXXXX", path[PATH_MAX];
    char errbuf[256], out[4096];
    sl_sandbox sb;
    int r;

    if (access("/bin/busybox", X_OK) != 0) {
        fprintf(stderr, "SKIP dir image: no /bin/busybox (apt-get install busybox-static)\n");
        return;
    }
    if (!mkdtemp(img) || !mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
    snprintf(path, sizeof(path), "%s/bin", img);
    mkdir(path, 0755);
    snprintf(path, sizeof(path), "%s/bin/busybox", img);
    CHECK(copy_file("/bin/busybox", path, 0755) == 0, "copy busybox");
    snprintf(path, sizeof(path), "%s/bin/sh", img);
    CHECK(symlink("busybox", path) == 0, "symlink sh");
    sl_sandbox_config cfg = {.id = "sb-busybox", .rootfs = img, .dir = dir, .init_memfd = memfd};
    r = sl_sandbox_spawn(&cfg, &sb, errbuf, sizeof(errbuf));
    CHECK(r == 0, "spawn in a dir image: %d %s", r, errbuf);
    if (r != 0)
        return;
    CHECK(sh(&sb, 0, "echo hi from busybox; /bin/busybox ls / | /bin/busybox tr '\\n' ' '", out,
             sizeof(out)) == 0 &&
              strcmp(out, "hi from busybox\nbin dev proc run sys tmp var ") == 0,
          "busybox: '%s'", out);
    CHECK(sh(&sb, 1, "/bin/busybox ls /proc | /bin/busybox grep -c '^[0-9]'", out, sizeof(out)) ==
                  0 &&
              atoi(out) >= 2 && atoi(out) <= 4,
          "busybox proc: '%s'", out);
    teardown(&sb, dir, 1);
    snprintf(path, sizeof(path), "%s/proc", img);
    CHECK(!exists(path), "the image itself was modified");
    sl_rm_rf(img);
}

/* A user namespace from a root caller (uid 0 maps to 0): not a security
 * boundary by itself, but the same code path as a rootless runner's, here
 * under the sanitizers: the host image assembled by sl_hostroot.c, userxattr
 * overlays, locked-flag remounts, and the disk cap refused. */
static void test_userns_sandbox(int memfd)
{
    char dir[] = "/tmp/sl-userns-XXXXXX", errbuf[256], out[4096], probe[128];
    sl_sandbox sb;

    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
    sl_sandbox_config cfg = {
        .id = "sb-userns", .rootfs = "/", .dir = dir, .init_memfd = memfd, .userns = 1};

    cfg.disk_bytes = 1 << 20;
    CHECK(sl_sandbox_spawn(&cfg, &sb, errbuf, sizeof(errbuf)) == -EPERM &&
              strstr(errbuf, "root runner"),
          "disk cap in a user namespace: %s", errbuf);
    cfg.disk_bytes = 0;
    if (sl_sandbox_spawn(&cfg, &sb, errbuf, sizeof(errbuf)) != 0) {
        CHECK(0, "userns spawn: %s", errbuf);
        sl_rm_rf(dir);
        return;
    }
    CHECK(sh(&sb, 1, "tr -s ' ' < /proc/self/uid_map", out, sizeof(out)) == 0 &&
              strcmp(out, " 0 0 1\n") == 0,
          "uid_map: '%s'", out);
    CHECK(sh(&sb, 2, "tr '\\0' ' ' < /proc/1/cmdline; hostname; ls /usr/bin/sh /etc/passwd", out,
             sizeof(out)) == 0 &&
              strcmp(out, "sandlot-init sb-userns\n/etc/passwd\n/usr/bin/sh\n") == 0,
          "init, hostname and the host image: '%s'", out);
    /* Writes land in the upper dir, laid out as with one overlay of "/". */
    snprintf(probe, sizeof(probe), "/etc/sl-userns-probe-%d", (int)getpid());
    {
        char cmd[512];

        snprintf(cmd, sizeof(cmd), "echo in > %s && cat %s && mkdir /sl-top && ls -d /sl-top",
                 probe, probe);
        CHECK(sh(&sb, 3, cmd, out, sizeof(out)) == 0 && strcmp(out, "in\n/sl-top\n") == 0,
              "writes inside: '%s'", out);
    }
    CHECK(!exists(probe), "a write inside reached the host: %s", probe);
    {
        char up[PATH_MAX];

        snprintf(up, sizeof(up), "%s/upper%s", dir, probe);
        CHECK(exists(up), "not in the upper dir: %s", up);
        snprintf(up, sizeof(up), "%s/upper/sl-top", dir);
        CHECK(exists(up), "not in the upper dir: %s", up);
    }
    /* The usual walls stand: read-only /proc/sys, masked secrets, no mount. */
    CHECK(sh(&sb, 4,
             "! echo 1 > /proc/sys/kernel/ctrl-alt-del 2>/dev/null && "
             "[ ! -s /etc/shadow ] && ! mount -t tmpfs x /mnt 2>/dev/null && echo walls",
             out, sizeof(out)) == 0 &&
              strcmp(out, "walls\n") == 0,
          "walls: '%s'", out);
    teardown(&sb, dir, 1);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static void bench(int memfd, int cycles)
{
    double *total = calloc((size_t)cycles, sizeof(double));
    double *spawn = calloc((size_t)cycles, sizeof(double));
    char dir[PATH_MAX], errbuf[256], out[256], id[32];
    int done = 0;

    if (!total || !spawn) {
        perror("calloc");
        exit(1);
    }
    for (int i = 0; i < cycles; i++) {
        sl_sandbox sb;
        const char *argv[] = {"/bin/echo", "hi", NULL};
        double t0 = now_ms(), t1;

        snprintf(dir, sizeof(dir), "/tmp/sl-bench-%d-%d", (int)getpid(), i);
        snprintf(id, sizeof(id), "sb-bench-%d", i);
        if (mkdir(dir, 0700) < 0) {
            perror("mkdir");
            break;
        }
        sl_sandbox_config cfg = {.id = id, .rootfs = "/", .dir = dir, .init_memfd = memfd};
        if (sl_sandbox_spawn(&cfg, &sb, errbuf, sizeof(errbuf)) != 0) {
            CHECK(0, "bench spawn %d: %s", i, errbuf);
            sl_rm_rf(dir);
            break;
        }
        t1 = now_ms();
        int st = run(&sb, 0, NULL, argv, out, sizeof(out), NULL, 0);
        CHECK(st == 0 && strcmp(out, "hi\n") == 0, "bench echo %d: %d '%s'", i, st, out);
        teardown(&sb, dir, i < 3);
        spawn[done] = t1 - t0;
        total[done++] = now_ms() - t0;
    }
    if (done > 0) {
        qsort(total, (size_t)done, sizeof(double), cmp_double);
        qsort(spawn, (size_t)done, sizeof(double), cmp_double);
        printf("bench: %d cycles of spawn+echo+kill+release+rm_rf: p50 %.2f ms, p90 %.2f ms, max "
               "%.2f ms; sl_sandbox_spawn alone p50 %.2f ms\n",
               done, total[done / 2], total[done * 9 / 10], total[done - 1], spawn[done / 2]);
    }
    free(total);
    free(spawn);
}

/* A veth pair (sl_net.c): eth0 inside with its address and default route,
 * the host side addressed, the pair gone with the namespace; a taken host
 * name fails the spawn cleanly. Addresses from 10.203.255.252/30, checked
 * against the host's routes first; no packet is sent. */
static void test_veth(int memfd)
{
    char dir[] = "/tmp/sl-net-XXXXXX", errbuf[256], out[4096];
    sl_net_config net = {.host_if = "sltestveth0", .prefix = 30};
    sl_sandbox sb;
    int r;

    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
    inet_pton(AF_INET, "10.203.255.253", &net.host_addr);
    inet_pton(AF_INET, "10.203.255.254", &net.sandbox_addr);
    r = sl_net_route_overlaps(htonl(0x0acbfffc), 30);
    if (r != 0) {
        fprintf(stderr, "SKIP veth: 10.203.255.252/30 is routed on this host (%d)\n", r);
        rmdir(dir);
        return;
    }
    sl_sandbox_config cfg = {
        .id = "sb-veth", .rootfs = "/", .dir = dir, .init_memfd = memfd, .net = &net};
    if (sl_sandbox_spawn(&cfg, &sb, errbuf, sizeof(errbuf)) != 0) {
        CHECK(0, "spawn with a veth: %s", errbuf);
        sl_rm_rf(dir);
        return;
    }
    CHECK(if_nametoindex("sltestveth0") > 0, "host side missing");
    CHECK(sl_net_route_overlaps(htonl(0x0acbfffc), 30) == 1, "host side route not seen");
    CHECK(sl_net_route_overlaps(htonl(0x0acbfff8), 30) == 0, "the neighbouring /30 overlaps");
    CHECK(sh(&sb, 1, "ls /sys/class/net; cat /proc/net/route", out, sizeof(out)) == 0, "sh");
    /* eth0 and lo; default route (dest 0) via 10.203.255.253 (FDFFCB0A). */
    CHECK(strstr(out, "eth0\nlo\n") == out, "interfaces: %s", out);
    CHECK(strstr(out, "eth0\t00000000\tFDFFCB0A") != NULL, "default route: %s", out);
    teardown(&sb, dir, 1);
    /* The pair goes with the namespace (the kernel's cleanup runs async). */
    for (int i = 0; i < 100 && if_nametoindex("sltestveth0") > 0; i++)
        usleep(50000);
    CHECK(if_nametoindex("sltestveth0") == 0, "veth pair left behind");
    CHECK(sl_net_link_del("sltestveth0") == 0, "deleting a missing link is not an error");

    /* A host name in use: the spawn fails, nothing is left. */
    CHECK(sl_net_veth_create("sltestveth1", getpid(), "sltestpeer1") == 0, "make a veth");
    if (!mkdtemp(strcpy(dir, "/tmp/sl-net-XXXXXX"))) {
        perror("mkdtemp");
        exit(1);
    }
    snprintf(net.host_if, sizeof(net.host_if), "sltestveth1");
    r = sl_sandbox_spawn(&cfg, &sb, errbuf, sizeof(errbuf));
    CHECK(r == -EEXIST && strstr(errbuf, "create veth pair") != NULL, "taken name: %d %s", r,
          errbuf);
    CHECK(sl_net_link_del("sltestveth1") == 0 && if_nametoindex("sltestpeer1") == 0,
          "delete the veth");
    CHECK(sl_rm_rf(dir) == 0, "rm_rf");
}

int main(int argc, char **argv)
{
    int memfd, cycles = argc > 2 ? atoi(argv[2]) : 100;

    if (argc < 2) {
        fprintf(stderr, "usage: %s /path/to/sandlot-init [cycles]\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (strcmp(argv[1], "--dump-seccomp") == 0) {
        const struct sock_filter *prog;
        size_t n;
        int r = sl_seccomp_default(&prog, &n);

        if (r < 0) {
            fprintf(stderr, "seccomp profile: %s\n", strerror(-r));
            return 1;
        }
        /* (The personality() prefix is not in libseccomp's pseudo code.) */
        printf("# %zu BPF instructions in all\n", n);
        return sl_seccomp_dump(STDOUT_FILENO) < 0;
    }
    if (geteuid() != 0) {
        fprintf(stderr, "SKIP: test_sandbox needs root\n");
        return 77;
    }
    /* Our own mount namespace: the rm_rf test mounts, and a crash must not
     * leave anything mounted on the host. */
    if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) {
        perror("unshare mount namespace");
        return 1;
    }
    printf("cgroup layout: %s\n", sl_cgroup_mode_name(sl_cgroup_detect()));

    test_ctl_codec();
    test_ctl_socket();
    test_rm_rf();

    memfd = sl_sandbox_load_init(argv[1]);
    if (memfd < 0) {
        fprintf(stderr, "load init %s: %s\n", argv[1], strerror(-memfd));
        return 1;
    }
    {
        int seals = fcntl(memfd, F_GET_SEALS);

        CHECK(seals == (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL), "seals %#x",
              seals);
        CHECK(write(memfd, "x", 1) < 0 && errno == EPERM, "sealed memfd is writable");
        CHECK(fcntl(memfd, F_GETFD) & FD_CLOEXEC, "memfd not CLOEXEC");
        CHECK(sl_sandbox_load_init("/nonexistent") == -ENOENT, "load missing");
        CHECK(sl_sandbox_load_init("/tmp") == -EISDIR || sl_sandbox_load_init("/tmp") == -ENOEXEC,
              "load a directory");
    }
    int fds_before = count_fds();

    test_host_sandbox(memfd);
    test_hardening(memfd);
    test_spawn_failures(memfd);
    test_dir_image(memfd);
    test_freezer_kill(memfd);
    test_spawn_start_finish(memfd);
    test_userns_sandbox(memfd);
    test_veth(memfd);
    if (cycles > 0)
        bench(memfd, cycles);
    CHECK(count_fds() == fds_before, "fd leak over the sandbox tests: %d -> %d", fds_before,
          count_fds());
    CHECK(waitpid(-1, NULL, WNOHANG) == -1 && errno == ECHILD, "unreaped children");
    close(memfd);
    printf("%s: %d checks, %d failures\n", failures ? "FAIL" : "OK", checks, failures);
    return failures ? 1 : 0;
}
