/* s3.c - S3 buckets mounted into a sandbox with s3fs (create body "s3_mounts",
 * Sandbox.create(s3_mounts=...)).
 *
 * Each mount is an `s3fs -f` child of the runner, mounted in the runner's own
 * mount namespace at <dir>/s3/<n> before the sandbox is spawned; the sandbox
 * then gets a bind of it (sl_bind), like a volume. s3fs answers FUSE requests
 * from the host side, so the sandbox needs no network route to the endpoint.
 *
 * Credentials go to s3fs in its environment (AWSACCESSKEYID /
 * AWSSECRETACCESSKEY), never on its command line (world-readable
 * /proc/<pid>/cmdline), never in a file, never in a listing, log or error.
 *
 * Starting a mount blocks the event loop, bounded by S3_START_TIMEOUT: s3fs
 * daemonises before checking the endpoint (it exits 0 and dies later), so it
 * runs in the foreground and the mount is only accepted once a readdir of it
 * (in a forked probe child, killable) succeeds. Doing this asynchronously
 * would turn create into a multi-step state machine; a few seconds at most,
 * only for creates that ask for S3, was judged acceptable.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sl_log.h"
#include "sl_runner.h"

#define S3_MAX_MOUNTS 8
#define S3_START_TIMEOUT 10.0  /* s3fs start + check + first readdir, seconds */
#define S3_CONNECT_TIMEOUT 2.0 /* TCP reachability of the endpoint */

struct sl_s3 {
    char *path; /* inside the sandbox */
    char *bucket;
    char *prefix; /* "" or "a/b" (no leading or trailing '/') */
    char *endpoint;
    char *region;
    char *key_id; /* secret: NULL for a public bucket */
    char *secret; /* secret */
    int read_only;
    char *mnt; /* <dir>/s3/<n> once made */
    pid_t pid; /* s3fs, 0 if not running */
    int pidfd;
    int mounted;
};

static void wipe_free(char *s)
{
    if (s != NULL) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

static int name_ok(const char *s, const char *extra, size_t lo, size_t hi)
{
    size_t n = strlen(s);
    if (n < lo || n > hi)
        return 0;
    for (const char *p = s; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              strchr(extra, *p) != NULL))
            return 0;
    }
    return 1;
}

/* Normalise a prefix in place: strip '/' at both ends; refuse "." / ".." parts
 * and characters s3fs's option parser or its bucket:/path syntax would split. */
static int prefix_ok(char *p)
{
    size_t start = strspn(p, "/");
    memmove(p, p + start, strlen(p + start) + 1);
    size_t n = strlen(p);
    while (n > 0 && p[n - 1] == '/')
        p[--n] = '\0';
    if (n == 0)
        return 1;
    if (strpbrk(p, ",:\\") != NULL || strstr(p, "//") != NULL)
        return 0;
    char *tmp = malloc(n + 2);
    if (tmp == NULL)
        return 0;
    snprintf(tmp, n + 2, "/%s", p);
    int ok = sl_path_abs_clean(tmp);
    free(tmp);
    return ok;
}

/* http(s)://host[:port][/path], with nothing s3fs's -o parser would split. */
static int endpoint_split(const char *url, char *host, size_t hostlen, char *port, size_t portlen)
{
    const char *rest;
    const char *dflt;
    if (strncmp(url, "http://", 7) == 0) {
        rest = url + 7;
        dflt = "80";
    } else if (strncmp(url, "https://", 8) == 0) {
        rest = url + 8;
        dflt = "443";
    } else {
        return -1;
    }
    if (strpbrk(url, ", \t\n\"'") != NULL)
        return -1;
    size_t hlen = strcspn(rest, ":/");
    if (rest[0] == '[') /* [v6]:port */
        hlen = strcspn(rest, "]") + 1;
    if (hlen == 0 || hlen >= hostlen || (rest[0] == '[' && rest[hlen - 1] != ']'))
        return -1;
    if (rest[0] == '[')
        snprintf(host, hostlen, "%.*s", (int)hlen - 2, rest + 1);
    else
        snprintf(host, hostlen, "%.*s", (int)hlen, rest);
    const char *p = rest + hlen;
    if (*p == ':') {
        size_t plen = strspn(p + 1, "0123456789");
        if (plen == 0 || plen >= portlen || (p[1 + plen] != '\0' && p[1 + plen] != '/'))
            return -1;
        snprintf(port, portlen, "%.*s", (int)plen, p + 1);
    } else {
        snprintf(port, portlen, "%s", dflt);
    }
    return 0;
}

static int parse_one(struct sl_s3 *m, const msgpack_object *o, size_t i, sl_err *e)
{
    if (o->type != MSGPACK_OBJECT_MAP)
        return sl_err_set(e, 400, "field 's3_mounts[%zu]' must be a map, got %s", i,
                          sl_msg_type_name(o));
    int ro = 0;
    if (sl_msg_str(o, "path", SL_REQ, &m->path, e) < 0 ||
        sl_msg_str(o, "bucket", SL_REQ, &m->bucket, e) < 0 ||
        sl_msg_str(o, "prefix", 0, &m->prefix, e) < 0 ||
        sl_msg_str(o, "endpoint_url", SL_REQ, &m->endpoint, e) < 0 ||
        sl_msg_str(o, "region", 0, &m->region, e) < 0 ||
        sl_msg_str(o, "access_key_id", 0, &m->key_id, e) < 0 ||
        sl_msg_str(o, "secret_access_key", 0, &m->secret, e) < 0 ||
        sl_msg_bool(o, "read_only", 0, &ro, e) < 0) {
        /* Never echo a credential: the getters' messages name only the field. */
        return -1;
    }
    m->read_only = ro;
    if (!sl_path_abs_clean(m->path) || strspn(m->path, "/") == strlen(m->path))
        return sl_err_set(e, 400,
                          "field 's3_mounts[%zu]': path '%.200s' must be absolute, not '/', "
                          "and without '.' or '..' components",
                          i, m->path);
    if (!name_ok(m->bucket, ".-_", 3, 63))
        return sl_err_set(e, 400,
                          "field 's3_mounts[%zu]': bucket '%.64s' must be 3-63 characters "
                          "of [A-Za-z0-9._-]",
                          i, m->bucket);
    if (m->prefix == NULL && (m->prefix = strdup("")) == NULL)
        return sl_err_set(e, 500, "out of memory");
    if (!prefix_ok(m->prefix))
        return sl_err_set(e, 400,
                          "field 's3_mounts[%zu]': prefix '%.200s' must be a key path without "
                          "'.', '..', '//', ',', ':' or '\\'",
                          i, m->prefix);
    char host[256], port[8];
    if (endpoint_split(m->endpoint, host, sizeof(host), port, sizeof(port)) < 0)
        return sl_err_set(e, 400,
                          "field 's3_mounts[%zu]': endpoint_url '%.200s' must be "
                          "http(s)://host[:port][/path] without commas or spaces",
                          i, m->endpoint);
    if (m->region != NULL && !name_ok(m->region, "-_", 1, 64))
        return sl_err_set(e, 400, "field 's3_mounts[%zu]': region '%.64s' is not a region name", i,
                          m->region);
    if ((m->key_id == NULL) != (m->secret == NULL))
        return sl_err_set(e, 400,
                          "field 's3_mounts[%zu]': give both access_key_id and "
                          "secret_access_key, or neither (public bucket)",
                          i);
    if (m->key_id != NULL && (m->key_id[0] == '\0' || m->secret[0] == '\0'))
        return sl_err_set(e, 400, "field 's3_mounts[%zu]': empty credentials", i);
    return 0;
}

static int parse_arr(sl_box *b, const msgpack_object *arr, sl_err *e)
{
    if (arr == NULL || arr->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (arr->type != MSGPACK_OBJECT_ARRAY)
        return sl_err_set(e, 400, "field 's3_mounts' must be an array of maps, got %s",
                          sl_msg_type_name(arr));
    size_t n = arr->via.array.size;
    if (n == 0)
        return 0;
    if (n > S3_MAX_MOUNTS)
        return sl_err_set(e, 400, "field 's3_mounts': at most %d mounts, got %zu", S3_MAX_MOUNTS,
                          n);
    b->s3 = calloc(n, sizeof(*b->s3));
    if (b->s3 == NULL)
        return sl_err_set(e, 500, "out of memory");
    b->ns3 = n;
    for (size_t i = 0; i < n; i++) {
        b->s3[i].pidfd = -1;
        if (parse_one(&b->s3[i], &arr->via.array.ptr[i], i, e) < 0)
            return -1;
        for (size_t j = 0; j < i; j++) {
            if (strcmp(b->s3[j].path, b->s3[i].path) == 0)
                return sl_err_set(e, 400, "field 's3_mounts': path '%.200s' given twice",
                                  b->s3[i].path);
        }
    }
    return 0;
}

int sl_s3_parse(sl_box *b, const msgpack_object *body, sl_err *e)
{
    return parse_arr(b, sl_msg_field(body, "s3_mounts"), e);
}

int sl_s3_pack(const msgpack_object *body, char **raw, size_t *len, sl_err *e)
{
    *raw = NULL;
    *len = 0;
    const msgpack_object *arr = sl_msg_field(body, "s3_mounts");
    sl_box tmp;
    memset(&tmp, 0, sizeof(tmp));
    int rc = parse_arr(&tmp, arr, e); /* the same checks as a create, now */
    size_t n = tmp.ns3;
    sl_s3_release(&tmp);
    if (rc < 0 || n == 0)
        return rc;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    if (msgpack_pack_object(&pk, *arr) != 0) {
        explicit_bzero(sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
        return sl_err_set(e, 500, "out of memory");
    }
    *len = sb.size;
    *raw = msgpack_sbuffer_release(&sb);
    return 0;
}

int sl_s3_from_raw(sl_box *b, const char *raw, size_t len, sl_err *e)
{
    if (raw == NULL || len == 0)
        return 0;
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    int rc;
    /* Packed by sl_s3_pack from a checked body. */
    if (msgpack_unpack_next(&up, raw, len, NULL) != MSGPACK_UNPACK_SUCCESS)
        rc = sl_err_set(e, 500, "stored s3_mounts are not msgpack");
    else
        rc = parse_arr(b, &up.data, e);
    msgpack_unpacked_destroy(&up);
    return rc;
}

/* ---- mounting ---- */

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void nap(long ms)
{
    struct timespec ts = {.tv_sec = 0, .tv_nsec = ms * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Is path a mount point in the runner's namespace? Reads mountinfo rather
 * than stat()ing the path: a stat of a FUSE mount whose daemon is stuck
 * would block. Paths with spaces are escaped there; ours have none. */
static int is_mounted(const char *path)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (f == NULL)
        return 0;
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof(line), f) != NULL) {
        /* id parent major:minor root mountpoint ... */
        char *save = NULL, *tok = strtok_r(line, " ", &save);
        for (int k = 0; tok != NULL && k < 4; k++)
            tok = strtok_r(NULL, " ", &save);
        found = tok != NULL && strcmp(tok, path) == 0;
    }
    fclose(f);
    return found;
}

/* TCP connect to the endpoint within S3_CONNECT_TIMEOUT: tells "unreachable"
 * apart from "refused by the server" in the error, and fails fast where s3fs
 * would retry. 0, or -1 with why filled. */
static int reachable(const char *url, char *why, size_t whylen)
{
    char host[256], port[8];
    if (endpoint_split(url, host, sizeof(host), port, sizeof(port)) < 0) {
        snprintf(why, whylen, "bad URL");
        return -1;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    int g = getaddrinfo(host, port, &hints, &res);
    if (g != 0) {
        snprintf(why, whylen, "cannot resolve '%.100s': %s", host, gai_strerror(g));
        return -1;
    }
    int ok = -1;
    snprintf(why, whylen, "no address");
    for (struct addrinfo *a = res; a != NULL && ok < 0; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            snprintf(why, whylen, "socket: %s", strerror(errno));
            continue;
        }
        int rc = connect(fd, a->ai_addr, a->ai_addrlen);
        if (rc < 0 && errno == EINPROGRESS) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            int pr;
            while ((pr = poll(&pfd, 1, (int)(S3_CONNECT_TIMEOUT * 1000))) < 0 && errno == EINTR)
                ;
            int soerr = 0;
            socklen_t sl = sizeof(soerr);
            if (pr == 0) {
                errno = ETIMEDOUT;
            } else if (pr < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0) {
                /* errno set */
            } else {
                errno = soerr;
                rc = soerr == 0 ? 0 : -1;
            }
        }
        if (rc == 0)
            ok = 0;
        else
            snprintf(why, whylen, "%s", strerror(errno));
        close(fd);
    }
    freeaddrinfo(res);
    return ok;
}

/* The most telling line of s3fs's log: its last critical/error message,
 * without the timestamp and source location. */
static void log_reason(const char *logpath, char *out, size_t outlen)
{
    out[0] = '\0';
    FILE *f = fopen(logpath, "re");
    if (f == NULL)
        return;
    char line[1024];
    while (fgets(line, sizeof(line), f) != NULL) {
        char *p = strstr(line, "[CRT]");
        if (p == NULL)
            p = strstr(line, "[ERR]");
        /* Generic lines that follow the telling one. */
        if (p == NULL || strstr(p, "Exiting FUSE event loop") != NULL ||
            strstr(p, "retry to connect by signature version 2") != NULL)
            continue;
        p += 5;
        char *colon = strstr(p, "): ");
        if (colon != NULL)
            p = colon + 3;
        p += strspn(p, " ");
        p[strcspn(p, "\n")] = '\0';
        snprintf(out, outlen, "%s", p);
    }
    fclose(f);
}

/* readdir of the mount in a child, killed after the deadline: the first
 * FUSE request waits for s3fs's endpoint check. 0 or a positive errno. */
static int probe(const char *mnt, double deadline)
{
    pid_t pid = fork();
    if (pid < 0)
        return errno;
    if (pid == 0) {
        DIR *d = opendir(mnt);
        if (d == NULL)
            _exit(errno & 0xff);
        errno = 0;
        struct dirent *de = readdir(d);
        _exit(de == NULL && errno != 0 ? (errno & 0xff) : 0);
    }
    int st;
    for (;;) {
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid)
            break;
        if (w < 0 && errno != EINTR)
            return EIO;
        if (mono() > deadline) {
            kill(pid, SIGKILL);
            while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                ;
            return ETIMEDOUT;
        }
        nap(10);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : EIO;
}

static void stop_one(struct sl_s3 *m, int reap)
{
    if (m->mounted || (m->mnt != NULL && m->pid > 0)) {
        /* Lazy: nothing in the sandbox uses it any more (or it never ran). */
        if (umount2(m->mnt, MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT)
            sl_warn("umount %s: %s", m->mnt, strerror(errno));
        m->mounted = 0;
    }
    if (m->pid > 0) {
        /* The pidfd cannot hit a recycled pid if main.c reaped s3fs already. */
        if (m->pidfd >= 0)
            syscall(SYS_pidfd_send_signal, m->pidfd, reap ? SIGKILL : SIGTERM, NULL, 0);
        else if (reap)
            kill(m->pid, SIGKILL); /* not reaped yet (only we wait for it here): still ours */
        if (reap) {
            int st;
            while (waitpid(m->pid, &st, 0) < 0 && errno == EINTR)
                ;
        }
        m->pid = 0;
    }
    if (m->pidfd >= 0) {
        close(m->pidfd);
        m->pidfd = -1;
    }
}

static int spawn_s3fs(struct sl_s3 *m, const char *logpath, sl_err *e, size_t i)
{
    char src[400], opts[800];
    snprintf(src, sizeof(src), "%s%s%s", m->bucket, m->prefix[0] ? ":/" : "", m->prefix);
    /* retries=1 and short timeouts: a create must fail in seconds, not minutes. */
    int n = snprintf(opts, sizeof(opts),
                     "url=%s,use_path_request_style,retries=1,connect_timeout=3,"
                     "readwrite_timeout=30,allow_other,dbglevel=err%s%s%s%s",
                     m->endpoint, m->read_only ? ",ro" : "",
                     m->key_id == NULL ? ",public_bucket=1" : "",
                     m->region != NULL ? ",endpoint=" : "", m->region != NULL ? m->region : "");
    if (n < 0 || (size_t)n >= sizeof(opts))
        return sl_err_set(e, 400, "field 's3_mounts[%zu]': options too long", i);
    char *argv[] = {"s3fs", src, m->mnt, "-f", "-o", opts, NULL};
    char *kid = NULL, *sec = NULL;
    if (m->key_id != NULL) {
        /* asprintf leaves its pointer undefined on failure: reset it. */
        if (asprintf(&kid, "AWSACCESSKEYID=%s", m->key_id) < 0)
            kid = NULL;
        if (asprintf(&sec, "AWSSECRETACCESSKEY=%s", m->secret) < 0)
            sec = NULL;
        if (kid == NULL || sec == NULL) {
            wipe_free(kid);
            wipe_free(sec);
            return sl_err_set(e, 500, "out of memory");
        }
    }
    char *envp[] = {"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME=/nonexistent", kid,
                    sec, NULL};
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    /* Own session: a terminal's ^C to the runner's group must not unmount. */
    int rc = sl_spawnattr_init(&attr, POSIX_SPAWN_SETSID);
    rc = rc ? rc : posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    rc = rc ? rc
            : posix_spawn_file_actions_addopen(&fa, 1, logpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    rc = rc ? rc : posix_spawn_file_actions_adddup2(&fa, 1, 2);
    rc = rc ? rc : posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    rc = rc ? rc : posix_spawnp(&m->pid, "s3fs", &fa, &attr, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    wipe_free(kid);
    wipe_free(sec);
    if (rc != 0) {
        m->pid = 0;
        if (rc == ENOENT)
            return sl_err_set(e, 500,
                              "s3_mounts need s3fs on the runner's host (Debian: apt-get "
                              "install s3fs), and it is not in PATH");
        return sl_err_set(e, 500, "cannot start s3fs: %s", strerror(rc));
    }
    m->pidfd = (int)syscall(SYS_pidfd_open, m->pid, 0);
    return 0;
}

static int mount_one(sl_box *b, struct sl_s3 *m, size_t i, sl_err *e)
{
    char why[256];
    if (reachable(m->endpoint, why, sizeof(why)) < 0)
        return sl_err_set(e, 422,
                          "s3_mounts[%zu]: endpoint %.200s is unreachable (%s); "
                          "bucket '%.64s' not mounted",
                          i, m->endpoint, why, m->bucket);
    char buf[64];
    snprintf(buf, sizeof(buf), "s3/%zu", i);
    if ((m->mnt = sl_path_join(b->dir, buf)) == NULL)
        return sl_err_set(e, 500, "out of memory");
    snprintf(buf, sizeof(buf), "s3/%zu.log", i);
    char *logpath = sl_path_join(b->dir, buf);
    if (logpath == NULL)
        return sl_err_set(e, 500, "out of memory");
    int rc = -1;
    if (sl_mkdir_p(m->mnt, 0700) < 0) {
        sl_err_set(e, 500, "mkdir %s: %s", m->mnt, strerror(errno));
        goto out;
    }
    /* mountinfo shows canonical paths: compare against one. */
    char *real = realpath(m->mnt, NULL);
    if (real == NULL) {
        sl_err_set(e, 500, "realpath %s: %s", m->mnt, strerror(errno));
        goto out;
    }
    free(m->mnt);
    m->mnt = real;
    if (spawn_s3fs(m, logpath, e, i) < 0)
        goto out;
    double t0 = mono(), deadline = t0 + S3_START_TIMEOUT;
    const char *fail = NULL;
    int perr = 0;
    for (;;) {
        int st;
        pid_t w = waitpid(m->pid, &st, WNOHANG);
        if (w == m->pid) {
            m->pid = 0; /* reaped here: nothing left to stop */
            fail = "s3fs exited";
            break;
        }
        if (is_mounted(m->mnt)) {
            m->mounted = 1;
            perr = probe(m->mnt, deadline);
            if (perr == 0 && waitpid(m->pid, &st, WNOHANG) == 0) {
                rc = 0;
                break;
            }
            fail = perr == ETIMEDOUT ? "no answer" : "the bucket could not be listed";
            /* s3fs logs why as it exits: give it a moment. */
            for (int k = 0; k < 50 && waitpid(m->pid, &st, WNOHANG) == 0; k++)
                nap(20);
            break;
        }
        if (mono() > deadline) {
            fail = "no answer";
            perr = ETIMEDOUT;
            break;
        }
        nap(10);
    }
    if (rc == 0) {
        sl_info("sandbox %s: bucket %s mounted at %s (%.0f ms)", b->id, m->bucket, m->path,
                (mono() - t0) * 1000);
        goto out;
    }
    char reason[300];
    log_reason(logpath, reason, sizeof(reason));
    stop_one(m, 1);
    if (perr == ETIMEDOUT)
        sl_err_set(e, 422,
                   "s3_mounts[%zu]: bucket '%.64s' at %.200s did not answer within %.0f s; "
                   "not mounted%s%.200s",
                   i, m->bucket, m->endpoint, S3_START_TIMEOUT, reason[0] ? ": " : "", reason);
    else
        sl_err_set(e, 422,
                   "s3_mounts[%zu]: s3fs could not access bucket '%.64s' at %.200s (%s: "
                   "wrong credentials, no such bucket, or access denied)%s%.200s",
                   i, m->bucket, m->endpoint, fail, reason[0] ? ": " : "", reason);
out:
    if (rc < 0 && m->pid > 0)
        stop_one(m, 1);
    unlink(logpath);
    free(logpath);
    return rc;
}

int sl_s3_mount(sl_box *b, sl_bind *binds, sl_err *e)
{
    for (size_t i = 0; i < b->ns3; i++) {
        struct sl_s3 *m = &b->s3[i];
        if (mount_one(b, m, i, e) < 0) {
            for (size_t j = 0; j < i; j++)
                stop_one(&b->s3[j], 1);
            return -1;
        }
        binds[i].host_path = m->mnt;
        binds[i].sandbox_path = m->path;
        binds[i].readonly = m->read_only;
    }
    return 0;
}

void sl_s3_release(sl_box *b)
{
    for (size_t i = 0; i < b->ns3; i++) {
        struct sl_s3 *m = &b->s3[i];
        stop_one(m, 0);
        free(m->path);
        free(m->bucket);
        free(m->prefix);
        free(m->endpoint);
        free(m->region);
        wipe_free(m->key_id);
        wipe_free(m->secret);
        free(m->mnt);
    }
    free(b->s3);
    b->s3 = NULL;
    b->ns3 = 0;
}
