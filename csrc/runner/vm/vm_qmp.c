/* vm_qmp.c - a minimal QMP client for the VM monitor: QEMU's JSON monitor
 * over a unix socket, one command at a time, events skipped. The monitor
 * only needs stop/cont/migrate/query-migrate/getfd, so no JSON parser: a
 * reply is recognised by its top-level "return" or "error" key (QEMU writes
 * one object per line). */
#include "vm_int.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Read one line (without '\n') into line; 0 or -errno (-ETIMEDOUT). */
static int read_line(sl_qmp *q, char *line, size_t cap, double deadline)
{
    for (;;) {
        char *nl = memchr(q->buf, '\n', q->len);
        if (nl != NULL) {
            size_t n = (size_t)(nl - q->buf);
            size_t c = n < cap - 1 ? n : cap - 1;
            memcpy(line, q->buf, c);
            line[c] = 0;
            memmove(q->buf, nl + 1, q->len - n - 1);
            q->len -= n + 1;
            return 0;
        }
        if (q->len == sizeof(q->buf))
            q->len = 0; /* a line longer than the buffer: an event we do not need */
        double left = deadline - now();
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = q->fd, .events = POLLIN};
        int pr = poll(&p, 1, (int)(left * 1000) + 1);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            return pr < 0 ? -errno : -ETIMEDOUT;
        ssize_t r = read(q->fd, q->buf + q->len, sizeof(q->buf) - q->len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return r < 0 ? -errno : -EPIPE;
        q->len += (size_t)r;
    }
}

/* Wait for the reply to the last command: 0 "return", -EIO "error". */
static int reply(sl_qmp *q, char *out, size_t cap, double deadline)
{
    char line[8192];
    for (;;) {
        int rc = read_line(q, line, sizeof(line), deadline);
        if (rc < 0)
            return rc;
        if (strncmp(line, "{\"return\"", 9) == 0) {
            if (out != NULL && cap > 0)
                snprintf(out, cap, "%s", line);
            return 0;
        }
        if (strncmp(line, "{\"error\"", 8) == 0) {
            if (out != NULL && cap > 0) {
                const char *d = strstr(line, "\"desc\": \"");
                snprintf(out, cap, "%s", d != NULL ? d + 9 : line);
                char *end = strchr(out, '"');
                if (end != NULL)
                    *end = 0;
            }
            return -EIO;
        }
        /* {"event": ...} and the greeting: not a reply */
    }
}

int sl__qmp_connect(sl_qmp *q, const char *path, double timeout)
{
    q->fd = -1;
    q->len = 0;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    strcpy(sa.sun_path, path);
    double deadline = now() + timeout;
    for (;;) {
        q->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (q->fd < 0)
            return -errno;
        if (connect(q->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            break;
        int e = errno;
        close(q->fd);
        q->fd = -1;
        if ((e != ENOENT && e != ECONNREFUSED) || now() > deadline)
            return -e;
        struct timespec ts = {0, 2000000}; /* QEMU is still starting */
        nanosleep(&ts, NULL);
    }
    char line[4096];
    int rc = read_line(q, line, sizeof(line), deadline + 5); /* the greeting */
    if (rc == 0)
        rc = sl__qmp_cmd(q, "{\"execute\":\"qmp_capabilities\"}", -1, NULL, 0, timeout + 5);
    if (rc < 0)
        sl__qmp_close(q);
    return rc;
}

int sl__qmp_cmd(sl_qmp *q, const char *json, int pass_fd, char *out, size_t cap, double timeout)
{
    size_t len = strlen(json);
    struct iovec iov = {(void *)json, len};
    union {
        struct cmsghdr h;
        char b[CMSG_SPACE(sizeof(int))];
    } c;
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    if (pass_fd >= 0) {
        memset(&c, 0, sizeof(c));
        m.msg_control = c.b;
        m.msg_controllen = sizeof(c.b);
        struct cmsghdr *h = CMSG_FIRSTHDR(&m);
        h->cmsg_level = SOL_SOCKET;
        h->cmsg_type = SCM_RIGHTS;
        h->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(h), &pass_fd, sizeof(int));
    }
    ssize_t w;
    do
        w = sendmsg(q->fd, &m, MSG_NOSIGNAL);
    while (w < 0 && errno == EINTR);
    if (w < 0)
        return -errno;
    if ((size_t)w != len)
        return -EIO; /* commands are short; a partial send means a broken socket */
    return reply(q, out, cap, now() + timeout);
}

void sl__qmp_close(sl_qmp *q)
{
    if (q->fd >= 0)
        close(q->fd);
    q->fd = -1;
}
