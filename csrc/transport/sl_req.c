/* sl_req.c - one request's life: refcount, completion, waiting, watches, cancel.
 *
 * A request leaves SL_REQ_PENDING exactly once, by a compare-and-swap under
 * its own mutex: the I/O thread's completion and a user's cancel can race,
 * and whoever wins the CAS is the one that wakes waiters and runs watches.
 * Readers check the state with a lock-free acquire load first, which is also
 * what keeps the fork child away from locks a vanished thread may hold.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sl_transport_int.h"

static atomic_long g_live_reqs;
static pthread_once_t g_condattr_once = PTHREAD_ONCE_INIT;
static pthread_condattr_t g_condattr;
static int g_condattr_rc;

/* Waiters use CLOCK_MONOTONIC deadlines so that a wall-clock jump neither
 * fires nor postpones a timeout. */
static void condattr_init(void)
{
    g_condattr_rc = pthread_condattr_init(&g_condattr);
    if (g_condattr_rc == 0)
        g_condattr_rc = pthread_condattr_setclock(&g_condattr, CLOCK_MONOTONIC);
}

int sl_monotonic_cond_init(pthread_cond_t *cond)
{
    pthread_once(&g_condattr_once, condattr_init);
    if (g_condattr_rc != 0)
        return -g_condattr_rc;
    return -pthread_cond_init(cond, &g_condattr);
}

struct timespec sl_timespec_of_ns(int64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    return ts;
}

int64_t sl_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static bool method_ok(const char *m)
{
    static const char *const allowed[] = {"GET", "POST", "PUT", "PATCH", "DELETE"};
    for (size_t i = 0; i < SL_ARRAY_LEN(allowed); i++)
        if (strcmp(m, allowed[i]) == 0)
            return true;
    return false;
}

static bool path_ok(const char *p)
{
    if (p[0] != '/')
        return false;
    for (; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= 0x20 || c == 0x7f)
            return false;
    }
    return true;
}

int sl_req_new(sl_endpoint *ep, const char *method, const char *path, char *body, size_t body_len,
               int64_t timeout_ms, uint64_t owner, sl_req **out)
{
    *out = NULL;
    if (ep == NULL || method == NULL || path == NULL || !method_ok(method) || !path_ok(path))
        return -EINVAL;
    if (body == NULL && body_len != 0)
        return -EINVAL;
    if (body_len > SL_MAX_BODY)
        return -EMSGSIZE;
    pthread_once(&g_condattr_once, condattr_init);
    if (g_condattr_rc != 0)
        return -g_condattr_rc;

    sl_req *req = calloc(1, sizeof(*req));
    if (req == NULL)
        return -ENOMEM;
    size_t plen = strlen(ep->url_prefix);
    req->url = malloc(plen + strlen(path) + 1);
    if (req->url == NULL) {
        free(req);
        return -ENOMEM;
    }
    int rc = pthread_mutex_init(&req->mu, NULL);
    if (rc != 0) {
        free(req->url);
        free(req);
        return -rc;
    }
    rc = pthread_cond_init(&req->cond, &g_condattr);
    if (rc != 0) {
        pthread_mutex_destroy(&req->mu);
        free(req->url);
        free(req);
        return -rc;
    }
    memcpy(req->url, ep->url_prefix, plen);
    strcpy(req->url + plen, path);
    req->path = req->url + plen;
    snprintf(req->method, sizeof(req->method), "%s", method);
    atomic_init(&req->refs, 1);
    atomic_init(&req->state, SL_REQ_PENDING);
    atomic_init(&req->gen, sl__gen());
    sl_endpoint_ref(ep);
    req->ep = ep;
    req->body = body;
    req->body_len = body_len;
    req->timeout_ms = timeout_ms <= 0 ? 0 : timeout_ms;
    if (req->timeout_ms > SL_REQ_MAX_TIMEOUT_MS)
        req->timeout_ms = SL_REQ_MAX_TIMEOUT_MS;
    req->owner = owner;
    atomic_fetch_add_explicit(&g_live_reqs, 1, memory_order_relaxed);
    *out = req;
    return 0;
}

void sl_req_ref(sl_req *req)
{
    atomic_fetch_add_explicit(&req->refs, 1, memory_order_relaxed);
}

void sl_req_unref(sl_req *req)
{
    if (req == NULL || atomic_fetch_sub_explicit(&req->refs, 1, memory_order_acq_rel) != 1)
        return;
    /* The transport's reference covers the whole transfer, so no easy handle
     * can still point here. In a fork child the mutex may be "held" by a
     * thread that no longer exists; destroy's EBUSY is harmless then. */
    free(req->body);
    free(req->res.body);
    free(req->url);
    pthread_cond_destroy(&req->cond);
    pthread_mutex_destroy(&req->mu);
    sl_endpoint_unref(req->ep);
    free(req);
    atomic_fetch_sub_explicit(&g_live_reqs, 1, memory_order_relaxed);
}

long sl_transport_live_requests(void)
{
    return atomic_load_explicit(&g_live_reqs, memory_order_relaxed);
}

int sl_req_state(const sl_req *req)
{
    int s = atomic_load_explicit(&((sl_req *)req)->state, memory_order_acquire);
    if (s == SL_REQ_PENDING &&
        atomic_load_explicit(&((sl_req *)req)->gen, memory_order_relaxed) != sl__gen())
        return SL_REQ_ORPHANED;
    return s;
}

void sl__req_fail(sl_req *req, enum sl_fail fail, long status, const char *fmt, ...)
{
    va_list ap;
    req->res.fail = fail;
    req->res.status = status;
    free(req->res.body);
    req->res.body = NULL;
    req->res.body_len = 0;
    va_start(ap, fmt);
    vsnprintf(req->res.message, sizeof(req->res.message), fmt, ap);
    va_end(ap);
}

int sl__req_complete(sl_req *req, int state)
{
    pthread_mutex_lock(&req->mu);
    int expected = SL_REQ_PENDING;
    if (!atomic_compare_exchange_strong(&req->state, &expected, state)) {
        pthread_mutex_unlock(&req->mu);
        return 0;
    }
    sl_watch *list = req->watches;
    req->watches = NULL;
    pthread_cond_broadcast(&req->cond);
    pthread_mutex_unlock(&req->mu);

    sl_watch_run_list(list, req);
    return 1;
}

void sl_watch_run_list(sl_watch *list, sl_req *req)
{
    /* Watches were pushed LIFO; run them in registration order. Read next
     * before calling fn, which may hand w to another thread that frees it. */
    sl_watch *ordered = NULL;
    while (list != NULL) {
        sl_watch *next = list->next;
        list->next = ordered;
        ordered = list;
        list = next;
    }
    while (ordered != NULL) {
        sl_watch *next = ordered->next;
        ordered->fn(ordered, req);
        ordered = next;
    }
}

int sl_req_wait(sl_req *req, int64_t deadline_ns)
{
    if (sl_req_state(req) != SL_REQ_PENDING)
        return 0;
    struct timespec ts = sl_timespec_of_ns(deadline_ns);
    pthread_mutex_lock(&req->mu);
    while (atomic_load(&req->state) == SL_REQ_PENDING) {
        if (deadline_ns < 0) {
            pthread_cond_wait(&req->cond, &req->mu);
        } else if (pthread_cond_timedwait(&req->cond, &req->mu, &ts) == ETIMEDOUT) {
            break;
        }
    }
    bool done = atomic_load(&req->state) != SL_REQ_PENDING;
    pthread_mutex_unlock(&req->mu);
    return done ? 0 : -ETIMEDOUT;
}

int sl_req_cancel(sl_req *req)
{
    if (sl_req_state(req) != SL_REQ_PENDING)
        return 0;
    if (!sl__req_complete(req, SL_REQ_CANCELLED))
        return 0;
    /* Waiters are already woken; now have the I/O thread drop the transfer
     * so the connection is closed and the runner sees the client go. */
    if (req->tr != NULL) {
        sl_req_ref(req);
        req->cancel_cmd.kind = SL__CMD_CANCEL;
        req->cancel_cmd.req = req;
        if (sl__tr_enqueue(req->tr, &req->cancel_cmd) < 0)
            sl_req_unref(req);
    }
    return 1;
}

int sl_req_watch(sl_req *req, sl_watch *w)
{
    if (sl_req_state(req) != SL_REQ_PENDING)
        return -EALREADY;
    pthread_mutex_lock(&req->mu);
    if (atomic_load(&req->state) != SL_REQ_PENDING) {
        pthread_mutex_unlock(&req->mu);
        return -EALREADY;
    }
    w->next = req->watches;
    req->watches = w;
    pthread_mutex_unlock(&req->mu);
    return 0;
}

const sl_result *sl_req_result(const sl_req *req)
{
    static const sl_result orphaned = {
        .status = 0,
        .fail = SL_FAIL_UNAVAILABLE,
        .message = "the request was in flight when this process forked; it continues in "
                   "the parent process only",
    };
    switch (sl_req_state(req)) {
    case SL_REQ_DONE:
        return &req->res;
    case SL_REQ_ORPHANED:
        return &orphaned;
    default:
        return NULL;
    }
}

void sl_req_drop_body(sl_req *req)
{
    if (sl_req_state(req) != SL_REQ_DONE)
        return;
    free(req->res.body);
    req->res.body = NULL;
    req->res.body_len = 0;
}

const char *sl_req_method(const sl_req *req)
{
    return req->method;
}

const char *sl_req_path(const sl_req *req)
{
    return req->path;
}
