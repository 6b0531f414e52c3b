/* sl_transport.h - the client's HTTP transport to the runner. No Python here.
 *
 * One background I/O thread per process drives libcurl's multi interface
 * (curl_multi_poll/curl_multi_wakeup). Callers never block: they build an
 * sl_req, submit it (a command on a mutex-protected queue, then a wakeup) and
 * later wait on the request's own mutex + condvar, or register an sl_watch
 * that the completing thread calls. The I/O thread touches C memory only; it
 * never calls into Python and never takes the GIL, so ext/ can sit on top
 * without any libcurl callback ever needing the interpreter.
 *
 * Lifetime: sl_req is reference counted. The creator holds one reference; a
 * submitted request holds another for the transport until the I/O thread is
 * done with it, so dropping the creator's reference early (a garbage
 * collected OperationRef) is safe.
 *
 * fork(): a pthread_atfork child handler abandons the parent's transport
 * without touching it (its locks may be held by threads that do not exist in
 * the child). The child starts a fresh I/O thread on its next submit.
 * Requests that were pending at the fork report SL_REQ_ORPHANED in the child
 * and never touch their own locks again there.
 *
 * Errors are negative errno codes.
 */
#ifndef SL_TRANSPORT_H
#define SL_TRANSPORT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

typedef struct sl_endpoint sl_endpoint;
typedef struct sl_req sl_req;
typedef struct sl_watch sl_watch;

/* Largest request timeout accepted (ms); above this "no limit" is simpler. */
#define SL_REQ_MAX_TIMEOUT_MS ((int64_t)365 * 24 * 3600 * 1000)

enum sl_req_state {
    SL_REQ_PENDING = 0,   /* queued or in flight */
    SL_REQ_DONE = 1,      /* finished: a response or a failure, see sl_req_result() */
    SL_REQ_CANCELLED = 2, /* sl_req_cancel() or sl_transport_cancel_owner() won */
    SL_REQ_ORPHANED = 3,  /* pending in a parent process when this process forked */
};

enum sl_fail {
    SL_FAIL_NONE = 0,        /* a complete HTTP response arrived (any status) */
    SL_FAIL_UNAVAILABLE = 1, /* could not connect, connection lost, shut down, orphaned */
    SL_FAIL_TIMEOUT = 2,     /* the request's own timeout expired */
    SL_FAIL_TOO_LARGE = 3,   /* response body above SL_MAX_BODY */
    SL_FAIL_INTERNAL = 4,    /* out of memory or a libcurl misuse: a bug, not the runner */
    SL_FAIL_LOST = 5,        /* the request reached the runner, which went away before answering */
};

typedef struct sl_result {
    long status;       /* HTTP status; 0 when no response header arrived */
    enum sl_fail fail; /* SL_FAIL_NONE when body holds the whole response */
    char *body;        /* malloc'd response body (NULL when empty) */
    size_t body_len;
    char message[320]; /* one line for fail != SL_FAIL_NONE */
} sl_result;

/* A completion hook. fn runs exactly once, on whichever thread completes the
 * request (the I/O thread, or the thread calling sl_req_cancel), with no
 * transport lock held. It must only touch C memory: no Python, no blocking. */
struct sl_watch {
    sl_watch *next;
    void (*fn)(sl_watch *w, sl_req *req);
};

/* --- endpoints ---------------------------------------------------------- */

/* Parse base_url ("unix:///abs/path.sock" or "http://host:port[/prefix]") and
 * prepare the headers every request carries (msgpack content type, no
 * "Expect: 100-continue", "Authorization: Bearer <token>" if token != NULL).
 * -EINVAL: bad URL or token with control characters; -ENAMETOOLONG: socket
 * path longer than sun_path; -ENOMEM. */
int sl_endpoint_new(const char *base_url, const char *token, sl_endpoint **out);
void sl_endpoint_ref(sl_endpoint *ep);
void sl_endpoint_unref(sl_endpoint *ep);
const char *sl_endpoint_base_url(const sl_endpoint *ep);

/* --- requests ----------------------------------------------------------- */

/* Create a request (refcount 1). method is one of GET POST PUT PATCH DELETE;
 * path starts with '/' and has no spaces or control characters (-EINVAL
 * otherwise). body (malloc'd, may be NULL) is owned by the request on success
 * only. timeout_ms <= 0 means no limit. owner tags the request for
 * sl_transport_cancel_owner(). */
int sl_req_new(sl_endpoint *ep, const char *method, const char *path, char *body, size_t body_len,
               int64_t timeout_ms, uint64_t owner, sl_req **out);
void sl_req_ref(sl_req *req);
void sl_req_unref(sl_req *req);

/* Queue the request to this process's I/O thread, starting it on first use.
 * Never blocks on I/O. After the transport shut down, the request completes
 * at once with SL_FAIL_UNAVAILABLE. -ENOMEM/-EAGAIN if the thread cannot be
 * started (the request then stays pending forever; drop it). */
int sl_req_submit(sl_req *req);

/* enum sl_req_state; lock-free. */
int sl_req_state(const sl_req *req);

/* Wait until the request is no longer pending or CLOCK_MONOTONIC reaches
 * deadline_ns (< 0: no deadline). 0 when done, -ETIMEDOUT otherwise. */
int sl_req_wait(sl_req *req, int64_t deadline_ns);

/* Cancel a pending request: 1 if this call moved it to SL_REQ_CANCELLED (its
 * watches run on this thread and the I/O thread is told to abort the
 * transfer), 0 if it had already completed, been cancelled or orphaned. */
int sl_req_cancel(sl_req *req);

/* Register w to run at completion: 0, or -EALREADY if the request is no
 * longer pending (w will not run; the caller handles completion itself). */
int sl_req_watch(sl_req *req, sl_watch *w);

/* Run a detached list of watches (pushed LIFO) in registration order, each
 * with req (NULL for watches of something other than a request, e.g. the
 * extension's batch refs). */
void sl_watch_run_list(sl_watch *list, sl_req *req);

/* The outcome once sl_req_state() is SL_REQ_DONE or SL_REQ_ORPHANED (the
 * latter is a synthesised "unavailable"). NULL while pending or cancelled. */
const sl_result *sl_req_result(const sl_req *req);

/* Free the response body once the caller has decoded it (result->body becomes
 * NULL). Only for SL_REQ_DONE; callers serialise this themselves. */
void sl_req_drop_body(sl_req *req);

const char *sl_req_method(const sl_req *req);
const char *sl_req_path(const sl_req *req);

/* --- the process-wide transport ---------------------------------------- */

/* Cancel every pending request tagged with owner (as if sl_req_cancel had
 * been called on each). Asynchronous: done by the I/O thread. 0 or -ENOMEM. */
int sl_transport_cancel_owner(uint64_t owner);

/* Stop and join the I/O thread; pending requests complete with
 * SL_FAIL_UNAVAILABLE, later submits fail the same way at once. For
 * interpreter exit. Idempotent. */
void sl_transport_shutdown(void);

/* The fork generation, bumped in a fork child: things made by the parent
 * that only its threads could complete compare it to know they never will. */
unsigned sl_transport_gen(void);

/* Number of sl_req objects alive in this process (for leak tests). */
long sl_transport_live_requests(void);

/* CLOCK_MONOTONIC in nanoseconds. */
int64_t sl_now_ns(void);

/* pthread_cond_init for CLOCK_MONOTONIC deadlines (sl_now_ns), as every wait
 * with a deadline here uses: 0 or a negative errno. */
int sl_monotonic_cond_init(pthread_cond_t *cond);
/* ns (CLOCK_MONOTONIC) as an absolute timespec for pthread_cond_timedwait. */
struct timespec sl_timespec_of_ns(int64_t ns);

#endif
