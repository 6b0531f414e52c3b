/* http.c - sandlotd's HTTP front: listening sockets, bearer tokens, body
 * decoding, structured replies and held (long-poll) requests.
 *
 * evhttp does the HTTP/1.1 parsing and keep-alive. Everything a client sends is
 * untrusted: the body goes through sl_mp_check() before msgpack-c sees it, and
 * every failure becomes a 4xx with {"error": {"code", "message"}}.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "sl_common.h"
#include "sl_log.h"
#include "sl_mpcheck.h"
#include "sl_runner.h"

/* Idle keep-alive connections are closed after this; longer than any hold. */
#define CONN_TIMEOUT 120

static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Entity";
    case 503:
        return "Service Unavailable";
    default:
        return "Internal Server Error";
    }
}

static void free_body(const void *data, size_t len, void *extra)
{
    (void)len;
    (void)extra;
    free((void *)data);
}

/* {"error": {"code": "internal", "message": "out of memory"}}, pre-encoded so it
 * can be sent when building a reply failed for lack of memory. */
static const unsigned char oom_body[] = {
    0x81, 0xa5, 'e', 'r', 'r', 'o', 'r', 0x82, 0xa4, 'c', 'o', 'd', 'e', 0xa8, 'i',
    'n',  't',  'e', 'r', 'n', 'a', 'l', 0xa7, 'm',  'e', 's', 's', 'a', 'g',  'e',
    0xad, 'o',  'u', 't', ' ', 'o', 'f', ' ',  'm',  'e', 'm', 'o', 'r', 'y'};

/* Send resp as req's reply; consumes resp's buffer. */
static void send_resp(struct evhttp_request *req, int status, sl_resp *resp)
{
    struct evbuffer *out = evhttp_request_get_output_buffer(req);
    struct evkeyvalq *hdrs = evhttp_request_get_output_headers(req);
    if (evhttp_add_header(hdrs, "Content-Type", "application/msgpack") != 0)
        sl_warn("evhttp_add_header failed");
    int ok = 0;
    if (!resp->failed && resp->sb.size > 0) {
        size_t len = resp->sb.size;
        char *data = msgpack_sbuffer_release(&resp->sb);
        /* Hand the buffer over instead of copying: file reads can be 64 MiB. */
        if (evbuffer_add_reference(out, data, len, free_body, NULL) == 0)
            ok = 1;
        else
            free(data);
    }
    sl_resp_destroy(resp);
    if (!ok) {
        evbuffer_drain(out, evbuffer_get_length(out));
        status = 500;
        if (evbuffer_add(out, oom_body, sizeof(oom_body)) != 0)
            sl_error("cannot even build an error reply");
    }
    evhttp_send_reply(req, status, reason(status), NULL);
}

/* code: the protocol code; NULL for the one of the status. */
static void error_resp(sl_resp *resp, int status, const char *code, const char *msg)
{
    sl_resp_init(resp);
    sl_r_map(resp, 1);
    sl_r_str(resp, "error");
    sl_r_map(resp, 2);
    sl_r_kstr(resp, "code", code != NULL ? code : sl_err_code(status));
    sl_r_kstr(resp, "message", msg);
}

void sl_reply(sl_req *r, int status, sl_resp *resp)
{
    if (r->ev == NULL) {
        sl_error("bug: second reply to one request");
        sl_resp_destroy(resp);
        return;
    }
    struct evhttp_request *req = r->ev;
    r->ev = NULL;
    send_resp(req, status, resp);
}

void sl_reply_err(sl_req *r, const sl_err *e)
{
    sl_resp resp;
    error_resp(&resp, e->status, e->code, e->msg);
    if (e->status >= 500)
        sl_warn("%s: %s", e->code, e->msg);
    sl_reply(r, e->status, &resp);
}

void sl_reply_error(sl_req *r, int status, const char *fmt, ...)
{
    sl_err e;
    e.status = status;
    e.code = sl_err_code(status);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.msg, sizeof(e.msg), fmt, ap);
    va_end(ap);
    sl_reply_err(r, &e);
}

/* ---- held requests ---- */

static void hold_unlink(sl_hold *h)
{
    sl_runner *rt = h->rt;
    if (h->gprev != NULL)
        h->gprev->gnext = h->gnext;
    else
        rt->holds = h->gnext;
    if (h->gnext != NULL)
        h->gnext->gprev = h->gprev;
    if (h->head != NULL) {
        if (h->prev != NULL)
            h->prev->next = h->next;
        else
            *h->head = h->next;
        if (h->next != NULL)
            h->next->prev = h->prev;
    }
    h->head = NULL;
    h->prev = h->next = h->gprev = h->gnext = NULL;
    if (h->timer != NULL) {
        event_free(h->timer);
        h->timer = NULL;
    }
    if (h->watch != NULL) {
        event_free(h->watch);
        h->watch = NULL;
    }
}

static void hold_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sl_hold *h = arg;
    if (h->on_timeout != NULL)
        h->on_timeout(h);
    else
        sl_hold_error(h, 500, "request timed out inside the runner");
}

/* Forget every hold on conn. If libevent already detached a request (its
 * client hung up and its connection is NULL) freeing it is ours to do; a
 * request still attached is freed by libevent along with the connection. */
static void drop_holds_of(sl_runner *rt, struct evhttp_connection *conn)
{
    sl_hold *h = rt->holds;
    while (h != NULL) {
        sl_hold *next = h->gnext;
        if (h->conn == conn) {
            struct evhttp_request *req = h->req;
            hold_unlink(h);
            free(h);
            if (evhttp_request_get_connection(req) == NULL)
                evhttp_request_free(req);
        }
        h = next;
    }
}

/* A client connection is being freed: its held requests must never be
 * answered. */
static void on_conn_close(struct evhttp_connection *conn, void *arg)
{
    drop_holds_of(arg, conn);
}

/* evhttp (2.1) stops reading a connection while its request is being
 * answered, so it would notice a client that hung up only when the answer is
 * written, up to SL_POLL_CAP later. We watch the socket ourselves: readable
 * with nothing to read means EOF, and the connection is freed at once (which
 * drops the hold through on_conn_close). */
static void on_hold_peer(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    sl_hold *h = arg;
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0)
        return; /* a pipelined request: evhttp reads it after our answer */
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        if (event_add(h->watch, NULL) != 0)
            sl_warn("event_add failed; a hung-up client will be noticed late");
        return;
    }
    sl_debug("client hung up during a held request");
    /* Drop our side first, so nothing depends on libevent calling the close
     * callback, then free the connection (and with it the request). */
    struct evhttp_connection *conn = h->conn;
    drop_holds_of(h->rt, conn);
    evhttp_connection_free(conn);
}

sl_hold *sl_hold_new(sl_req *r, sl_hold **list, double timeout, sl_hold_fn on_timeout, void *obj)
{
    sl_runner *rt = r->rt;
    sl_hold *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        sl_reply_error(r, 500, "calloc: out of memory");
        return NULL;
    }
    h->rt = rt;
    h->on_timeout = on_timeout;
    h->obj = obj;
    if (timeout >= 0) {
        h->timer = evtimer_new(rt->base, hold_timer_cb, h);
        struct timeval tv = sl_tv(timeout);
        if (h->timer == NULL || evtimer_add(h->timer, &tv) != 0) {
            if (h->timer != NULL)
                event_free(h->timer);
            free(h);
            sl_reply_error(r, 500, "evtimer_add failed");
            return NULL;
        }
    }
    h->req = r->ev;
    h->conn = evhttp_request_get_connection(r->ev);
    if (h->conn != NULL) {
        evhttp_connection_set_closecb(h->conn, on_conn_close, rt);
        struct bufferevent *bev = evhttp_connection_get_bufferevent(h->conn);
        evutil_socket_t fd = bev != NULL ? bufferevent_getfd(bev) : -1;
        if (fd >= 0)
            h->watch = event_new(rt->base, fd, EV_READ, on_hold_peer, h);
        if (h->watch != NULL && event_add(h->watch, NULL) != 0) {
            event_free(h->watch);
            h->watch = NULL;
        }
    }
    r->ev = NULL;
    h->gnext = rt->holds;
    if (rt->holds != NULL)
        rt->holds->gprev = h;
    rt->holds = h;
    if (list != NULL) {
        h->head = list;
        h->next = *list;
        if (*list != NULL)
            (*list)->prev = h;
        *list = h;
    }
    return h;
}

void sl_hold_reply(sl_hold *h, int status, sl_resp *resp)
{
    struct evhttp_request *req = h->req;
    hold_unlink(h);
    free(h);
    send_resp(req, status, resp);
}

void sl_hold_error(sl_hold *h, int status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (status >= 500)
        sl_warn("%s: %s", sl_err_code(status), msg);
    sl_resp resp;
    error_resp(&resp, status, NULL, msg);
    sl_hold_reply(h, status, &resp);
}

/* ---- request entry point ---- */

/* Compare in time that depends only on the expected length, so a wrong token
 * reveals nothing about how much of it was right. */
static int ct_equal(const char *given, size_t glen, const char *want, size_t wlen)
{
    volatile unsigned char diff = (unsigned char)(glen != wlen);
    for (size_t i = 0; i < wlen; i++) {
        unsigned char g = i < glen ? (unsigned char)given[i] : 0;
        diff |= (unsigned char)(g ^ (unsigned char)want[i]);
    }
    return diff == 0;
}

static int auth_ok(sl_runner *rt, struct evhttp_request *req)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (h == NULL || rt->token == NULL || strncasecmp(h, "Bearer ", 7) != 0)
        return 0;
    const char *tok = h + 7;
    while (*tok == ' ')
        tok++;
    return ct_equal(tok, strlen(tok), rt->token, rt->token_len);
}

static int content_type_ok(struct evhttp_request *req)
{
    const char *ct = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
    if (ct == NULL)
        return 0;
    while (*ct == ' ')
        ct++;
    size_t n = strcspn(ct, "; \t");
    return (n == 19 && strncasecmp(ct, "application/msgpack", n) == 0) ||
           (n == 21 && strncasecmp(ct, "application/x-msgpack", n) == 0);
}

static const char *method_name(enum evhttp_cmd_type m)
{
    switch (m) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_TRACE:
        return "TRACE";
    case EVHTTP_REQ_CONNECT:
        return "CONNECT";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    }
    return "?";
}

static void on_request(struct evhttp_request *req, void *arg)
{
    sl_listener *l = arg;
    sl_runner *rt = l->rt;
    static const msgpack_object empty_map = {.type = MSGPACK_OBJECT_MAP};
    sl_req r = {.rt = rt, .ev = req, .body = &empty_map};
    const char *path = NULL;
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);

    /* Authentication comes before anything else so that an unauthenticated
     * client learns nothing, not even which routes exist. */
    if (l->tcp && !auth_ok(rt, req)) {
        sl_reply_error(&r, 401, "missing or wrong bearer token");
        goto out;
    }
    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
    if (path == NULL) {
        sl_reply_error(&r, 400, "request has no path");
        goto out;
    }
    sl_debug("%s %s", method_name(method), path);
    if (method != EVHTTP_REQ_GET && method != EVHTTP_REQ_POST) {
        sl_reply_error(&r, 405, "method %s not allowed; the API uses GET and POST",
                       method_name(method));
        goto out;
    }
    if (rt->shutting_down) {
        sl_reply_error(&r, 503, "runner is shutting down");
        goto out;
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    if (len > 0) {
        if (len > SL_MAX_BODY) {
            sl_reply_error(&r, 413, "body of %zu bytes exceeds the limit of %zu", len,
                           (size_t)SL_MAX_BODY);
            goto out;
        }
        if (!content_type_ok(req)) {
            const char *ct =
                evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
            sl_reply_error(&r, 415, "body must have Content-Type application/msgpack, got %.64s",
                           ct != NULL ? ct : "none");
            goto out;
        }
        const char *data = (const char *)evbuffer_pullup(in, -1);
        if (data == NULL) {
            sl_reply_error(&r, 500, "evbuffer_pullup: out of memory");
            goto out;
        }
        sl_err e;
        if (sl_msg_decode_body(data, len, &up, &e) < 0) {
            sl_reply_err(&r, &e);
            goto out;
        }
        r.body = &up.data;
    }
    sl_api_dispatch(&r, method, path);
out:
    if (r.ev != NULL)
        sl_reply_error(&r, 500, "bug: handler for %.200s did not answer",
                       path != NULL ? path : "?");
    msgpack_unpacked_destroy(&up);
}

/* ---- listening ---- */

static struct evhttp *new_http(sl_runner *rt, sl_listener *l)
{
    struct evhttp *http = evhttp_new(rt->base);
    if (http == NULL)
        return NULL;
    evhttp_set_max_body_size(http, (ev_ssize_t)SL_MAX_BODY);
    evhttp_set_max_headers_size(http, 64 * 1024);
    evhttp_set_timeout(http, CONN_TIMEOUT);
    /* Accept every method so that the wrong one gets our 405 with a msgpack
     * body instead of evhttp's HTML 501. */
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                         EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                         EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    evhttp_set_gencb(http, on_request, l);
    return http;
}

/* The socket's directory must be ours and closed to others: anyone who can
 * write there could swap the socket for their own. */
static int check_socket_dir(const char *dir)
{
    struct stat st;
    if (stat(dir, &st) < 0) {
        if (errno != ENOENT) {
            sl_error("stat %s: %s", dir, strerror(errno));
            return -1;
        }
        char *parent = strdup(dir);
        if (parent == NULL)
            return -1;
        char *slash = strrchr(parent, '/');
        if (slash != NULL && slash != parent) {
            *slash = '\0';
            int rc = sl_mkdir_p(parent, 0755);
            if (rc < 0) {
                sl_error("mkdir %s: %s", parent, strerror(-rc));
                free(parent);
                return -1;
            }
        }
        free(parent);
        if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
            sl_error("mkdir %s: %s", dir, strerror(errno));
            return -1;
        }
        if (stat(dir, &st) < 0) {
            sl_error("stat %s: %s", dir, strerror(errno));
            return -1;
        }
    }
    if (!S_ISDIR(st.st_mode)) {
        sl_error("socket directory %s is not a directory", dir);
        return -1;
    }
    if (st.st_uid != geteuid()) {
        sl_error("socket directory %s is owned by uid %u, not by us (uid %u)", dir,
                 (unsigned)st.st_uid, (unsigned)geteuid());
        return -1;
    }
    if (st.st_mode & 022) {
        sl_error("socket directory %s is group/world writable (mode %04o); use a 0700 directory",
                 dir, (unsigned)(st.st_mode & 07777));
        return -1;
    }
    return 0;
}

/* Remove a leftover socket only if no runner answers on it. */
static int clear_stale_socket(const struct sockaddr_un *sa)
{
    struct stat st;
    if (lstat(sa->sun_path, &st) < 0)
        return errno == ENOENT ? 0 : (sl_error("lstat %s: %s", sa->sun_path, strerror(errno)), -1);
    if (!S_ISSOCK(st.st_mode)) {
        sl_error("%s exists and is not a socket; refusing to replace it", sa->sun_path);
        return -1;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        sl_error("socket: %s", strerror(errno));
        return -1;
    }
    int rc = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
    int err = errno;
    close(fd);
    if (rc == 0 || err == EAGAIN || err == EINPROGRESS) {
        sl_error("another process is listening on %s", sa->sun_path);
        return -1;
    }
    if (err != ECONNREFUSED && err != ENOENT) {
        sl_error("connect %s: %s", sa->sun_path, strerror(err));
        return -1;
    }
    sl_info("removing stale socket %s", sa->sun_path);
    if (unlink(sa->sun_path) < 0 && errno != ENOENT) {
        sl_error("unlink %s: %s", sa->sun_path, strerror(errno));
        return -1;
    }
    return 0;
}

static int listen_unix(sl_runner *rt)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(rt->socket_path) >= sizeof(sa.sun_path)) {
        sl_error("socket path %s is longer than %zu bytes", rt->socket_path,
                 sizeof(sa.sun_path) - 1);
        return -1;
    }
    strcpy(sa.sun_path, rt->socket_path);
    if (check_socket_dir(rt->socket_dir) < 0 || clear_stale_socket(&sa) < 0)
        return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        sl_error("socket: %s", strerror(errno));
        return -1;
    }
    /* The umask makes the socket 0600 from the moment it exists. */
    mode_t old = umask(0177);
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    int err = errno;
    umask(old);
    if (rc < 0) {
        sl_error("bind %s: %s", sa.sun_path, strerror(err));
        close(fd);
        return -1;
    }
    if (chmod(sa.sun_path, 0600) < 0 || listen(fd, 1024) < 0) {
        sl_error("listen on %s: %s", sa.sun_path, strerror(errno));
        close(fd);
        unlink(sa.sun_path);
        return -1;
    }
    rt->bound_unix = evhttp_accept_socket_with_handle(rt->http_unix, fd);
    if (rt->bound_unix == NULL) {
        sl_error("evhttp_accept_socket_with_handle failed");
        close(fd);
        unlink(sa.sun_path);
        return -1;
    }
    sl_info("listening on unix:%s", sa.sun_path);
    return 0;
}

static int listen_tcp(sl_runner *rt, const char *addr)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    if (colon == NULL || colon == addr || (size_t)(colon - addr) >= sizeof(host)) {
        sl_error("--listen wants HOST:PORT, got %s", addr);
        return -1;
    }
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    /* [::1]:8080 */
    if (host[0] == '[') {
        size_t n = strlen(host);
        if (n < 3 || host[n - 1] != ']') {
            sl_error("--listen: bad IPv6 address in %s", addr);
            return -1;
        }
        memmove(host, host + 1, n - 2);
        host[n - 2] = '\0';
    }
    char *end = NULL;
    long port = strtol(colon + 1, &end, 10);
    if (*(colon + 1) == '\0' || *end != '\0' || port < 1 || port > 65535) {
        sl_error("--listen: bad port in %s", addr);
        return -1;
    }
    rt->bound_tcp = evhttp_bind_socket_with_handle(rt->http_tcp, host, (ev_uint16_t)port);
    if (rt->bound_tcp == NULL) {
        sl_error("cannot listen on %s: %s", addr, strerror(errno));
        return -1;
    }
    sl_info("listening on tcp:%s (bearer token required)", addr);
    return 0;
}

int sl_http_start(sl_runner *rt, const char *listen_addr)
{
    rt->l_unix.rt = rt;
    rt->l_unix.tcp = 0;
    rt->l_tcp.rt = rt;
    rt->l_tcp.tcp = 1;
    rt->http_unix = new_http(rt, &rt->l_unix);
    if (rt->http_unix == NULL) {
        sl_error("evhttp_new failed");
        return -1;
    }
    if (listen_unix(rt) < 0)
        return -1;
    if (listen_addr != NULL) {
        if (rt->token == NULL || rt->token_len == 0) {
            sl_error("--listen needs a token (--token-file or SANDLOT_TOKEN)");
            return -1;
        }
        rt->http_tcp = new_http(rt, &rt->l_tcp);
        if (rt->http_tcp == NULL) {
            sl_error("evhttp_new failed");
            return -1;
        }
        if (listen_tcp(rt, listen_addr) < 0)
            return -1;
    }
    return 0;
}

void sl_http_free(sl_runner *rt)
{
    /* Freeing an evhttp closes its connections (dropping any holds through
     * on_conn_close) and its listening sockets. */
    if (rt->http_tcp != NULL) {
        evhttp_free(rt->http_tcp);
        rt->http_tcp = NULL;
    }
    if (rt->http_unix != NULL) {
        evhttp_free(rt->http_unix);
        rt->http_unix = NULL;
        if (rt->bound_unix != NULL && rt->socket_path != NULL)
            unlink(rt->socket_path);
    }
    rt->bound_unix = rt->bound_tcp = NULL;
}
