/* sl_io.c - the process's I/O thread: libcurl multi, command queue, fork.
 *
 * Shape (after FFmpeg's libavformat/libcurl.c and libcurl's multi docs): the
 * thread loops { take the command queue; apply it; curl_multi_perform; reap
 * finished transfers; curl_multi_poll }. Other threads only append to the
 * queue under t->mu and call curl_multi_wakeup, the one multi function that
 * is safe to call from another thread. Everything else about the multi
 * handle, the easy handles and the in-flight list belongs to the I/O thread.
 *
 * Connection limits. Long-polls (wait, output) are held by the runner for up
 * to 30 s, and HTTP/1.1 has one request per connection at a time. A per-host
 * cap such as 64 would let 64 parked long-polls queue every short request
 * (exec, stdin, terminate) behind them for up to 30 s. So there is no
 * per-host cap; the only cap is on total connections, sized from the fd
 * limit (half of RLIMIT_NOFILE, within [64, 8192]) so that thousands of
 * long-polls cannot exhaust the process's descriptors. Past it, libcurl
 * queues transfers FIFO. Connections to a local runner over a unix socket are
 * cheap (the runner is one event loop), and the idle cache keeps 64 warm
 * connections for keep-alive; a burst above that opens, then closes, extras.
 *
 * The transport struct itself is never freed: a stale pointer held by a
 * request (req->tr) or by a thread that raced shutdown stays valid, and only
 * the libcurl state is torn down when the thread exits.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "sl_transport_int.h"

#define SL_EASY_POOL_MAX 64
#define SL_IDLE_CONNS 64
#define SL_TOTAL_CONNS_MIN 64
#define SL_TOTAL_CONNS_MAX 8192
/* Connecting to a local runner is instant; a TCP peer that has not answered
 * in 15 s is down for our purposes (libcurl's default is 300 s). */
#define SL_CONNECT_TIMEOUT_MS 15000L
/* Upper bound on one curl_multi_poll; commands and completions wake it. */
#define SL_POLL_MS 1000
/* A unix socket whose listen backlog is full makes connect() fail with
 * EAGAIN at once (no SYN retransmit as with TCP); libcurl 7.88 reports that
 * as CURLE_COULDNT_CONNECT with no OS errno. A burst of 1,000 requests to a
 * runner that has not accept()ed yet hits it, so such a transfer is parked
 * and retried with a growing pause (2, 4, ... 50 ms) for up to 10 s (or the
 * request's timeout) instead of failing as "unavailable". A missing socket
 * (ENOENT) or no listener (ECONNREFUSED) still fails at once. */
#define SL_RETRY_STEP_MS 2
#define SL_RETRY_MAX_DELAY_MS 50
#define SL_RETRY_WINDOW_MS 10000

typedef struct sl__transport {
    pthread_mutex_t mu; /* guards head/tail/stopping */
    sl__cmd *head, *tail;
    bool stopping;
    CURLM *multi;
    pthread_t thread;

    /* I/O thread only. */
    sl_req *inflight; /* in the multi handle, or parked for a retry */
    size_t nparked;
    CURL *pool[SL_EASY_POOL_MAX];
    size_t npool;
} sl__transport;

/* g_lock guards g_tr and g_shut. It is held only for short, non-blocking
 * sections (never while waiting for the GIL), so the atfork prepare handler
 * can take it and the child inherits it in a known, unlocked state. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static sl__transport *g_tr;
/* Shut down transports stay allocated (see the top of this file); keeping a
 * pointer says so to leak checkers. */
static sl__transport *volatile g_retired; /* volatile: the store must not be elided */
static bool g_shut;
static atomic_uint g_gen;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_init_rc;

unsigned sl__gen(void)
{
    return atomic_load_explicit(&g_gen, memory_order_relaxed);
}

static void atfork_prepare(void)
{
    pthread_mutex_lock(&g_lock);
}

static void atfork_parent(void)
{
    pthread_mutex_unlock(&g_lock);
}

/* Only the forking thread exists in the child. The old I/O thread is gone
 * but its transport may be mid-update with t->mu or request mutexes held, so
 * it is abandoned untouched (its memory and sockets leak in the child, which
 * does not disturb the parent's connections). Bumping the generation turns
 * every request pending in the parent into SL_REQ_ORPHANED here. */
static void atfork_child(void)
{
    g_tr = NULL;
    atomic_fetch_add_explicit(&g_gen, 1, memory_order_relaxed);
    pthread_mutex_unlock(&g_lock);
}

static void global_init(void)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        g_init_rc = -ENOMEM;
        return;
    }
    int rc = pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
    g_init_rc = rc == 0 ? 0 : -rc;
}

unsigned sl_transport_gen(void)
{
    /* The atfork handler that bumps the generation is registered here, so
     * that a caller which never submitted a request still sees a fork. */
    pthread_once(&g_once, global_init);
    return sl__gen();
}

/* --- command queue ------------------------------------------------------ */

int sl__tr_enqueue(sl__transport *t, sl__cmd *c)
{
    pthread_mutex_lock(&t->mu);
    if (t->stopping) {
        pthread_mutex_unlock(&t->mu);
        return -ESHUTDOWN;
    }
    c->next = NULL;
    bool was_empty = t->head == NULL;
    if (t->tail != NULL)
        t->tail->next = c;
    else
        t->head = c;
    t->tail = c;
    /* One wakeup per empty->non-empty transition: the thread takes the whole
     * queue at once, so a non-empty queue already has a wakeup in flight.
     * Called under t->mu so it can never race the thread's multi cleanup,
     * which only happens after `stopping` was set under this lock. */
    if (was_empty)
        curl_multi_wakeup(t->multi);
    pthread_mutex_unlock(&t->mu);
    return 0;
}

/* --- easy handles ------------------------------------------------------- */

static void easy_put(sl__transport *t, CURL *e)
{
    /* Reset drops per-transfer options but keeps nothing that matters for
     * keep-alive: connections live in the multi handle's cache. */
    if (t->npool < SL_EASY_POOL_MAX) {
        curl_easy_reset(e);
        t->pool[t->npool++] = e;
    } else {
        curl_easy_cleanup(e);
    }
}

static CURL *easy_get(sl__transport *t)
{
    if (t->npool > 0)
        return t->pool[--t->npool];
    return curl_easy_init();
}

/* libcurl write callback: C buffers only (no Python, no locks). */
static size_t on_write(char *data, size_t size, size_t nmemb, void *userdata)
{
    sl_req *req = userdata;
    size_t n = size * nmemb;
    sl_result *res = &req->res;
    if (n > SL_MAX_BODY - res->body_len) {
        req->too_large = true;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    size_t need = res->body_len + n;
    if (need > req->cap) {
        size_t cap = req->cap * 2;
        if (req->cap == 0) {
            /* Size the buffer from Content-Length when the server sent one,
             * so a large body is not copied log2(size) times. */
            curl_off_t cl = -1;
            if (curl_easy_getinfo(req->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl) == CURLE_OK &&
                cl > 0 && (uint64_t)cl <= SL_MAX_BODY)
                cap = (size_t)cl;
        }
        if (cap < 4096)
            cap = 4096;
        if (cap < need)
            cap = need;
        if (cap > SL_MAX_BODY)
            cap = SL_MAX_BODY;
        char *nb = realloc(res->body, cap);
        if (nb == NULL) {
            req->nomem = true;
            return 0;
        }
        res->body = nb;
        req->cap = cap;
    }
    memcpy(res->body + res->body_len, data, n);
    res->body_len = need;
    return n;
}

/* Called once a connection is up, just before the request goes out on it:
 * from then on a lost connection means the runner had the request. */
static int on_prereq(void *arg, char *conn_primary_ip, char *conn_local_ip, int conn_primary_port,
                     int conn_local_port)
{
    (void)conn_primary_ip;
    (void)conn_local_ip;
    (void)conn_primary_port;
    (void)conn_local_port;
    ((sl_req *)arg)->sent = true;
    return CURL_PREREQFUNC_OK;
}

static CURLcode configure(sl_req *req, CURL *e, int64_t now)
{
    const sl_endpoint *ep = req->ep;
    CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (rc == CURLE_OK)                                                                        \
            rc = curl_easy_setopt(e, opt, val);                                                    \
    } while (0)
    SET(CURLOPT_URL, req->url);
    if (ep->unix_path != NULL)
        SET(CURLOPT_UNIX_SOCKET_PATH, ep->unix_path);
    SET(CURLOPT_HTTPHEADER, ep->headers);
    /* No SIGALRM-based DNS timeouts: signals belong to the application. */
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_PRIVATE, (void *)req);
    SET(CURLOPT_WRITEFUNCTION, on_write);
    SET(CURLOPT_WRITEDATA, (void *)req);
    SET(CURLOPT_ERRORBUFFER, req->errbuf);
    SET(CURLOPT_PREREQFUNCTION, on_prereq);
    SET(CURLOPT_PREREQDATA, (void *)req);
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    /* http_proxy in the environment must not reroute runner traffic. */
    SET(CURLOPT_PROXY, "");
#if LIBCURL_VERSION_NUM >= 0x075500
    SET(CURLOPT_PROTOCOLS_STR, "http");
#endif
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_CONNECTTIMEOUT_MS, SL_CONNECT_TIMEOUT_MS);
    SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)SL_MAX_BODY);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    if (req->timeout_ms > 0) {
        /* On a retry the timeout still counts from the first attempt. */
        int64_t left = req->timeout_ms - (now - req->started_ns) / 1000000;
        SET(CURLOPT_TIMEOUT_MS, (long)(left > 1 ? left : 1));
    }
    if (strcmp(req->method, "GET") == 0 && req->body == NULL) {
        SET(CURLOPT_HTTPGET, 1L);
    } else {
        SET(CURLOPT_POST, 1L);
        SET(CURLOPT_POSTFIELDS, req->body != NULL ? req->body : "");
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        if (strcmp(req->method, "POST") != 0)
            SET(CURLOPT_CUSTOMREQUEST, req->method);
    }
#undef SET
    return rc;
}

/* --- in-flight list ----------------------------------------------------- */

static void link_req(sl__transport *t, sl_req *req)
{
    req->io_prev = NULL;
    req->io_next = t->inflight;
    if (t->inflight != NULL)
        t->inflight->io_prev = req;
    t->inflight = req;
}

static void unlink_req(sl__transport *t, sl_req *req)
{
    if (req->io_prev != NULL)
        req->io_prev->io_next = req->io_next;
    else
        t->inflight = req->io_next;
    if (req->io_next != NULL)
        req->io_next->io_prev = req->io_prev;
    req->io_prev = req->io_next = NULL;
}

/* Take req out of the multi handle and the in-flight list and recycle its
 * easy handle; the caller then drops the transport's reference. A handle
 * whose transfer failed is not recycled: libcurl keeps its CURLINFO_OS_ERRNO
 * across curl_easy_reset, which would mislabel a later failure. */
static void detach(sl__transport *t, sl_req *req, bool reuse)
{
    if (req->retry_at_ns > 0) {
        t->nparked--;
        req->retry_at_ns = 0;
    } else {
        curl_multi_remove_handle(t->multi, req->easy);
    }
    unlink_req(t, req);
    if (reuse)
        easy_put(t, req->easy);
    else
        curl_easy_cleanup(req->easy);
    req->easy = NULL;
    /* The request body is not needed after the transfer. */
    free(req->body);
    req->body = NULL;
}

static void complete_failed(sl_req *req, enum sl_fail fail, const char *msg)
{
    sl__req_fail(req, fail, 0, "%s", msg);
    sl__req_complete(req, SL_REQ_DONE);
}

static void start_transfer(sl__transport *t, sl_req *req, bool stopping)
{
    if (atomic_load(&req->state) != SL_REQ_PENDING) {
        sl_req_unref(req); /* cancelled while queued */
        return;
    }
    if (stopping) {
        complete_failed(req, SL_FAIL_UNAVAILABLE, "the sandlot client is shutting down");
        sl_req_unref(req);
        return;
    }
    CURL *e = easy_get(t);
    if (e == NULL) {
        complete_failed(req, SL_FAIL_INTERNAL, "out of memory creating a curl handle");
        sl_req_unref(req);
        return;
    }
    int64_t now = sl_now_ns();
    req->started_ns = now;
    req->easy = e;
    CURLcode rc = configure(req, e, now);
    CURLMcode mc = rc == CURLE_OK ? curl_multi_add_handle(t->multi, e) : CURLM_OK;
    if (rc != CURLE_OK || mc != CURLM_OK) {
        req->easy = NULL;
        easy_put(t, e);
        sl__req_fail(req, SL_FAIL_INTERNAL, 0, "cannot start request %s %s: %s", req->method,
                     req->path, rc != CURLE_OK ? curl_easy_strerror(rc) : curl_multi_strerror(mc));
        sl__req_complete(req, SL_REQ_DONE);
        sl_req_unref(req);
        return;
    }
    link_req(t, req);
}

/* --- completion ----------------------------------------------------------- */

static const char *errno_text(long err, char *buf, size_t len)
{
    /* GNU strerror_r: thread-safe, returns a pointer to the message. */
    return strerror_r((int)err, buf, len);
}

/* Why did connecting to a unix socket fail? Asked of the kernel directly:
 * libcurl reports a full backlog (EAGAIN) with no OS errno at all, and
 * CURLINFO_OS_ERRNO is not reset between transfers on a recycled handle, so
 * it may describe an older failure. Returns the errno of a fresh non-blocking
 * connect(), or 0 if that one succeeded (a momentary condition, retried). */
static long probe_unix(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    size_t len = strlen(path); /* < sizeof(sun_path): checked by sl_endpoint_new */
    memcpy(sun.sun_path, path, len + 1);
    long rc = connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0 ? 0 : errno;
    close(fd);
    return rc;
}

/* Park a transfer whose unix-socket connect hit a full backlog for a retry. */
static bool maybe_park(sl__transport *t, sl_req *req, CURLcode code, long oserr, int64_t now)
{
    if (code != CURLE_COULDNT_CONNECT || (oserr != 0 && oserr != EAGAIN) ||
        req->ep->unix_path == NULL || req->res.body_len != 0 || req->sent)
        return false;
    int64_t delay_ms = (int64_t)SL_RETRY_STEP_MS * (req->attempts + 1);
    if (delay_ms > SL_RETRY_MAX_DELAY_MS)
        delay_ms = SL_RETRY_MAX_DELAY_MS;
    int64_t at = now + delay_ms * 1000000;
    int64_t window_ms = SL_RETRY_WINDOW_MS;
    if (req->timeout_ms > 0 && req->timeout_ms < window_ms)
        window_ms = req->timeout_ms;
    if (at >= req->started_ns + window_ms * 1000000)
        return false;
    curl_multi_remove_handle(t->multi, req->easy);
    req->attempts++;
    req->retry_at_ns = at;
    t->nparked++;
    return true;
}

static void finish(sl__transport *t, sl_req *req, CURLcode code)
{
    CURL *e = req->easy;
    long status = 0, oserr = 0;
    char ebuf[128];
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(e, CURLINFO_OS_ERRNO, &oserr);
    const char *base = req->ep->base_url;

    if (code == CURLE_COULDNT_CONNECT && req->ep->unix_path != NULL)
        oserr = probe_unix(req->ep->unix_path);
    if (code != CURLE_OK && maybe_park(t, req, code, oserr, sl_now_ns()))
        return;
    detach(t, req, code == CURLE_OK);
    if (code == CURLE_OK) {
        req->res.status = status;
        req->res.fail = SL_FAIL_NONE;
    } else if (req->too_large || code == CURLE_FILESIZE_EXCEEDED) {
        sl__req_fail(req, SL_FAIL_TOO_LARGE, status,
                     "response to %s %s is larger than the %zu-byte limit (SL_MAX_BODY)",
                     req->method, req->path, SL_MAX_BODY);
    } else if (req->nomem || code == CURLE_OUT_OF_MEMORY) {
        sl__req_fail(req, SL_FAIL_INTERNAL, status, "out of memory receiving the response to %s %s",
                     req->method, req->path);
    } else if (code == CURLE_OPERATION_TIMEDOUT && req->timeout_ms > 0) {
        sl__req_fail(req, SL_FAIL_TIMEOUT, 0, "%s %s to %s timed out after %.3f s", req->method,
                     req->path, base, (double)req->timeout_ms / 1000.0);
    } else if (code == CURLE_OPERATION_TIMEDOUT) { /* only the connect timeout applies */
        sl__req_fail(req, SL_FAIL_TIMEOUT, 0, "connecting to %s timed out after %ld s", base,
                     SL_CONNECT_TIMEOUT_MS / 1000);
    } else if (req->sent && (code == CURLE_COULDNT_CONNECT || code == CURLE_GOT_NOTHING ||
                             code == CURLE_RECV_ERROR || code == CURLE_SEND_ERROR ||
                             code == CURLE_PARTIAL_FILE)) {
        /* libcurl retries a request whose reused connection died once on a
         * fresh connect: a refused connect after the request went out still
         * means the runner went away while it held the request. */
        sl__req_fail(req, SL_FAIL_LOST, 0,
                     "the runner exited while this call was running (%s %s to %s: %s)", req->method,
                     req->path, base,
                     code == CURLE_COULDNT_CONNECT ? "connection closed before the answer, "
                                                     "reconnecting refused"
                     : req->errbuf[0] != '\0'      ? req->errbuf
                                                   : curl_easy_strerror(code));
    } else if (code == CURLE_COULDNT_CONNECT) {
        if (oserr != 0 && oserr != EAGAIN)
            sl__req_fail(req, SL_FAIL_UNAVAILABLE, 0, "cannot connect to %s: %s", base,
                         errno_text(oserr, ebuf, sizeof(ebuf)));
        else if (req->ep->unix_path != NULL) /* see SL_RETRY_WINDOW_MS */
            sl__req_fail(req, SL_FAIL_UNAVAILABLE, 0,
                         "cannot connect to %s: connection not accepted (listen backlog full)",
                         base);
        else
            sl__req_fail(req, SL_FAIL_UNAVAILABLE, 0, "cannot connect to %s: %s", base,
                         req->errbuf[0] != '\0' ? req->errbuf : curl_easy_strerror(code));
    } else if (code == CURLE_URL_MALFORMAT || code == CURLE_UNSUPPORTED_PROTOCOL ||
               code == CURLE_BAD_FUNCTION_ARGUMENT) {
        sl__req_fail(req, SL_FAIL_INTERNAL, 0, "%s %s to %s: %s", req->method, req->path, base,
                     req->errbuf[0] != '\0' ? req->errbuf : curl_easy_strerror(code));
    } else {
        sl__req_fail(req, SL_FAIL_UNAVAILABLE, 0, "%s %s to %s failed: %s", req->method, req->path,
                     base, req->errbuf[0] != '\0' ? req->errbuf : curl_easy_strerror(code));
    }
    sl__req_complete(req, SL_REQ_DONE);
    sl_req_unref(req);
}

static void reap(sl__transport *t)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(t->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        /* m is invalid once the handle is removed: copy what we need. */
        CURLcode code = m->data.result;
        void *priv = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
        finish(t, priv, code);
    }
}

/* Re-add parked transfers whose retry time came; returns the poll timeout. */
static int retry_due(sl__transport *t)
{
    if (t->nparked == 0)
        return SL_POLL_MS;
    int64_t now = sl_now_ns(), next = now + (int64_t)SL_POLL_MS * 1000000;
    for (sl_req *req = t->inflight, *nx; req != NULL; req = nx) {
        nx = req->io_next;
        if (req->retry_at_ns == 0)
            continue;
        if (req->retry_at_ns > now) {
            if (req->retry_at_ns < next)
                next = req->retry_at_ns;
            continue;
        }
        req->retry_at_ns = 0;
        t->nparked--;
        CURLcode rc = configure(req, req->easy, now); /* refresh the remaining timeout */
        CURLMcode mc = rc == CURLE_OK ? curl_multi_add_handle(t->multi, req->easy) : CURLM_OK;
        if (rc != CURLE_OK || mc != CURLM_OK) {
            /* detach() must not remove a handle that is not in the multi. */
            req->retry_at_ns = 1;
            t->nparked++;
            detach(t, req, true);
            sl__req_fail(req, SL_FAIL_INTERNAL, 0, "cannot retry %s %s", req->method, req->path);
            sl__req_complete(req, SL_REQ_DONE);
            sl_req_unref(req);
        }
    }
    int64_t ms = (next - now) / 1000000;
    return ms < 0 ? 0 : (int)ms;
}

/* --- commands ------------------------------------------------------------- */

static void cancel_owner(sl__transport *t, uint64_t owner)
{
    for (sl_req *req = t->inflight, *nx; req != NULL; req = nx) {
        nx = req->io_next;
        if (req->owner != owner)
            continue;
        sl__req_complete(req, SL_REQ_CANCELLED);
        detach(t, req, true);
        sl_req_unref(req);
    }
}

static void run_cmds(sl__transport *t, sl__cmd *c, bool stopping)
{
    while (c != NULL) {
        sl__cmd *next = c->next;
        sl_req *req = c->req;
        switch (c->kind) {
        case SL__CMD_SUBMIT:
            start_transfer(t, req, stopping);
            break;
        case SL__CMD_CANCEL:
            /* Already marked cancelled by the caller; if the transfer is
             * still here, drop it (closing its connection). */
            if (req->easy != NULL) {
                detach(t, req, true);
                sl_req_unref(req); /* the transport's reference */
            }
            sl_req_unref(req); /* the command's reference */
            break;
        case SL__CMD_CANCEL_OWNER:
            cancel_owner(t, c->owner);
            free(c);
            break;
        }
        c = next;
    }
}

static void fail_all(sl__transport *t)
{
    while (t->inflight != NULL) {
        sl_req *req = t->inflight;
        detach(t, req, true);
        complete_failed(req, SL_FAIL_UNAVAILABLE, "the sandlot client is shutting down");
        sl_req_unref(req);
    }
}

static void *io_main(void *arg)
{
    sl__transport *t = arg;
    for (;;) {
        pthread_mutex_lock(&t->mu);
        sl__cmd *cmds = t->head;
        t->head = t->tail = NULL;
        bool stopping = t->stopping;
        pthread_mutex_unlock(&t->mu);

        run_cmds(t, cmds, stopping);
        if (stopping)
            break;
        int running = 0;
        curl_multi_perform(t->multi, &running);
        reap(t);
        int timeout = retry_due(t);
        curl_multi_poll(t->multi, NULL, 0, timeout, NULL);
    }
    fail_all(t);
    while (t->npool > 0)
        curl_easy_cleanup(t->pool[--t->npool]);
    curl_multi_cleanup(t->multi);
    t->multi = NULL;
    return NULL;
}

/* --- lifecycle ------------------------------------------------------------ */

static long total_conn_cap(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
        return SL_TOTAL_CONNS_MAX;
    long cap = (long)(rl.rlim_cur / 2);
    if (cap < SL_TOTAL_CONNS_MIN)
        cap = SL_TOTAL_CONNS_MIN;
    if (cap > SL_TOTAL_CONNS_MAX)
        cap = SL_TOTAL_CONNS_MAX;
    return cap;
}

static int tr_start(sl__transport **out)
{
    sl__transport *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return -ENOMEM;
    int rc = pthread_mutex_init(&t->mu, NULL);
    if (rc != 0) {
        free(t);
        return -rc;
    }
    t->multi = curl_multi_init();
    if (t->multi == NULL) {
        rc = -ENOMEM;
        goto fail;
    }
    if (curl_multi_setopt(t->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L) != CURLM_OK ||
        curl_multi_setopt(t->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, total_conn_cap()) != CURLM_OK ||
        curl_multi_setopt(t->multi, CURLMOPT_MAXCONNECTS, (long)SL_IDLE_CONNS) != CURLM_OK) {
        rc = -EINVAL;
        goto fail;
    }

    /* The I/O thread must never run a signal handler (Python's would only
     * set a flag, but it belongs on the main thread): block everything for
     * the new thread, which inherits the mask. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&t->thread, NULL, io_main, t);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        rc = -rc;
        goto fail;
    }
    *out = t;
    return 0;
fail:
    if (t->multi != NULL)
        curl_multi_cleanup(t->multi);
    pthread_mutex_destroy(&t->mu);
    free(t);
    return rc;
}

int sl_req_submit(sl_req *req)
{
    pthread_once(&g_once, global_init);
    if (g_init_rc < 0)
        return g_init_rc;

    pthread_mutex_lock(&g_lock);
    if (!g_shut && g_tr == NULL) {
        int rc = tr_start(&g_tr);
        if (rc < 0) {
            pthread_mutex_unlock(&g_lock);
            return rc;
        }
    }
    sl__transport *t = g_shut ? NULL : g_tr;
    atomic_store(&req->gen, sl__gen());
    pthread_mutex_unlock(&g_lock);

    req->tr = t;
    if (t != NULL) {
        sl_req_ref(req); /* the transport's reference, dropped by the I/O thread */
        req->submit_cmd.kind = SL__CMD_SUBMIT;
        req->submit_cmd.req = req;
        if (sl__tr_enqueue(t, &req->submit_cmd) == 0)
            return 0;
        sl_req_unref(req);
    }
    complete_failed(req, SL_FAIL_UNAVAILABLE, "the sandlot client is shutting down");
    return 0;
}

int sl_transport_cancel_owner(uint64_t owner)
{
    pthread_mutex_lock(&g_lock);
    sl__transport *t = g_tr;
    pthread_mutex_unlock(&g_lock);
    if (t == NULL)
        return 0;
    sl__cmd *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -ENOMEM;
    c->kind = SL__CMD_CANCEL_OWNER;
    c->owner = owner;
    if (sl__tr_enqueue(t, c) < 0)
        free(c);
    return 0;
}

void sl_transport_shutdown(void)
{
    pthread_mutex_lock(&g_lock);
    sl__transport *t = g_tr;
    g_tr = NULL;
    g_shut = true;
    pthread_mutex_unlock(&g_lock);
    if (t == NULL)
        return;
    pthread_mutex_lock(&t->mu);
    t->stopping = true;
    curl_multi_wakeup(t->multi);
    pthread_mutex_unlock(&t->mu);
    pthread_join(t->thread, NULL);
    pthread_mutex_lock(&g_lock);
    g_retired = t;
    pthread_mutex_unlock(&g_lock);
}
