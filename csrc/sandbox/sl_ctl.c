/* sl_ctl.c - messages on the sandlotd <-> sandlot-init control channel.
 *
 * Linked into both sandlotd and the static sandlot-init, so it uses libc only.
 * The channel is a SOCK_SEQPACKET socketpair: one sendmsg() is one message and
 * the kernel keeps the boundaries, so there is no framing code here, only the
 * header, the payload and SCM_RIGHTS.
 */
#include "sl_ctl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* Room for a few more fds than any message legitimately carries: a peer that
 * sends too many then shows up as "too many fds" (which we close) instead of
 * silently dropped ones. */
#define CTL_FD_ROOM (SL_CTL_MAX_FDS + 5)

int sl_ctl_send(int sock, const sl_ctl_hdr *hdr, const void *payload, size_t len, const int *fds,
                int nfds)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * SL_CTL_MAX_FDS)];
    } ctrl;
    struct iovec iov[2];
    struct msghdr msg;

    if (!hdr || nfds < 0 || nfds > SL_CTL_MAX_FDS || (nfds > 0 && !fds) || (len > 0 && !payload))
        return -EINVAL;
    if (len > SL_CTL_MAX_MSG - sizeof(*hdr))
        return -EMSGSIZE;
    memset(&msg, 0, sizeof(msg));
    iov[0].iov_base = (void *)hdr;
    iov[0].iov_len = sizeof(*hdr);
    iov[1].iov_base = (void *)payload;
    iov[1].iov_len = len;
    msg.msg_iov = iov;
    msg.msg_iovlen = len > 0 ? 2 : 1;
    if (nfds > 0) {
        struct cmsghdr *cm;

        memset(&ctrl, 0, sizeof(ctrl));
        msg.msg_control = ctrl.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
    }
    for (;;) {
        /* MSG_NOSIGNAL: a dead peer must be an error code, not a SIGPIPE that
         * kills the runner. */
        ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);

        if (n >= 0)
            /* SEQPACKET sends are all or nothing. */
            return (size_t)n == sizeof(*hdr) + len ? 0 : -EIO;
        if (errno != EINTR)
            return -errno;
    }
}

static void close_fds(int *fds, int n)
{
    for (int i = 0; i < n; i++)
        close(fds[i]);
}

int sl_ctl_recv(int sock, sl_ctl_hdr *hdr, void *buf, size_t cap, int *fds, int *nfds)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * CTL_FD_ROOM)];
    } ctrl;
    int got[CTL_FD_ROOM];
    int ngot = 0, want = nfds ? *nfds : 0, bad = 0;
    struct iovec iov[2];
    struct msghdr msg;
    struct cmsghdr *cm;
    ssize_t n;

    if (!hdr || (cap > 0 && !buf) || want < 0 || (want > 0 && !fds))
        return -EINVAL;
    if (nfds)
        *nfds = 0;
    memset(&msg, 0, sizeof(msg));
    iov[0].iov_base = hdr;
    iov[0].iov_len = sizeof(*hdr);
    iov[1].iov_base = buf;
    iov[1].iov_len = cap;
    msg.msg_iov = iov;
    msg.msg_iovlen = cap > 0 ? 2 : 1;
    msg.msg_control = ctrl.buf;
    msg.msg_controllen = sizeof(ctrl.buf);
    do
        /* MSG_CMSG_CLOEXEC: received fds must not leak into anything the
         * receiver execs before it has decided what to do with them. */
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;

    /* Collect every fd first, whatever else is wrong with the message, so
     * that a rejected message never leaks descriptors into this process. */
    for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS &&
            cm->cmsg_len >= CMSG_LEN(0)) {
            size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            const unsigned char *p = CMSG_DATA(cm);

            for (size_t i = 0; i < k; i++) {
                int fd;

                memcpy(&fd, p + i * sizeof(int), sizeof(int));
                if (ngot < CTL_FD_ROOM)
                    got[ngot++] = fd;
                else
                    close(fd);
            }
        } else {
            bad = 1; /* credentials or anything else: not part of the protocol */
        }
    }
    if (n == 0 && ngot == 0)
        return -EPIPE; /* SEQPACKET: a zero-length read is the peer's close */
    if (bad || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || (size_t)n < sizeof(*hdr) ||
        ngot > want) {
        close_fds(got, ngot);
        return -EBADMSG;
    }
    if (ngot > 0)
        memcpy(fds, got, sizeof(int) * (size_t)ngot);
    if (nfds)
        *nfds = ngot;
    return (int)((size_t)n - sizeof(*hdr));
}

/* Append s and its NUL at *off; -E2BIG when it does not fit. */
static int put_str(char *buf, size_t cap, size_t *off, const char *s)
{
    size_t l = strlen(s) + 1;

    if (l > cap - *off)
        return -E2BIG;
    memcpy(buf + *off, s, l);
    *off += l;
    return 0;
}

long sl_ctl_pack_spawn(char *buf, size_t cap, const char *cwd, const char *const *argv,
                       const char *const *envp)
{
    char num[24];
    size_t off = 0, argc = 0;

    if (!buf || !argv || !argv[0])
        return -EINVAL;
    while (argv[argc])
        argc++;
    snprintf(num, sizeof(num), "%zu", argc);
    if (put_str(buf, cap, &off, cwd ? cwd : "") < 0 || put_str(buf, cap, &off, num) < 0)
        return -E2BIG;
    for (size_t i = 0; i < argc; i++)
        if (put_str(buf, cap, &off, argv[i]) < 0)
            return -E2BIG;
    for (size_t i = 0; envp && envp[i]; i++)
        if (put_str(buf, cap, &off, envp[i]) < 0)
            return -E2BIG;
    return (long)off;
}

int sl_ctl_unpack_spawn(char *buf, size_t len, sl_ctl_spawn_req *req)
{
    size_t nstr = 0, argc = 0, pos, i;
    char *end;
    char **vec;

    if (!req)
        return -EINVAL;
    memset(req, 0, sizeof(*req));
    if (!buf || len == 0 || buf[len - 1] != '\0')
        return -EBADMSG;
    for (pos = 0; pos < len; pos++)
        nstr += buf[pos] == '\0';
    if (nstr < 3) /* cwd, argc, argv[0] */
        return -EBADMSG;

    pos = strlen(buf) + 1; /* skip cwd */
    if (buf[pos] < '1' || buf[pos] > '9')
        return -EBADMSG;
    errno = 0;
    unsigned long long v = strtoull(buf + pos, &end, 10);
    if (errno || *end != '\0' || v > nstr - 2)
        return -EBADMSG;
    argc = (size_t)v;
    pos = (size_t)(end - buf) + 1;

    /* argv strings + NULL + env strings + NULL; nstr - 2 strings remain. */
    vec = calloc(nstr - 2 + 2, sizeof(char *));
    if (!vec)
        return -ENOMEM;
    size_t nenv = nstr - 2 - argc, k = 0;
    for (i = 0; i < argc; i++) {
        vec[k++] = buf + pos;
        pos += strlen(buf + pos) + 1;
    }
    vec[k++] = NULL;
    for (i = 0; i < nenv; i++) {
        vec[k++] = buf + pos;
        pos += strlen(buf + pos) + 1;
    }
    vec[k] = NULL;
    req->cwd = buf;
    req->argv = vec;
    req->envp = vec + argc + 1;
    req->vec = vec;
    return 0;
}

void sl_ctl_spawn_req_free(sl_ctl_spawn_req *req)
{
    if (!req)
        return;
    free(req->vec);
    memset(req, 0, sizeof(*req));
}
