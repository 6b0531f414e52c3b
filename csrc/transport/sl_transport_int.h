/* sl_transport_int.h - structures shared by the transport's own files only.
 *
 * sl_endpoint.c parses where requests go, sl_req.c owns a request's state
 * machine (refcount, completion, waiting, watches, cancel), sl_io.c runs the
 * I/O thread. Nothing outside csrc/transport includes this header.
 */
#ifndef SL_TRANSPORT_INT_H
#define SL_TRANSPORT_INT_H

#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "sl_common.h"
#include "sl_transport.h"

struct sl_endpoint {
    atomic_int refs;
    char *base_url;   /* as given; used in messages */
    char *url_prefix; /* "http://localhost" for unix sockets, else base_url minus trailing '/' */
    char *unix_path;  /* NULL for TCP */
    struct curl_slist *headers; /* shared, read-only once built */
};

typedef enum sl__cmd_kind {
    SL__CMD_SUBMIT,
    SL__CMD_CANCEL,
    SL__CMD_CANCEL_OWNER,
} sl__cmd_kind;

/* A command for the I/O thread. SUBMIT and CANCEL are embedded in the request
 * (each happens at most once per request, so queueing them cannot fail);
 * CANCEL_OWNER is malloc'd. A queued command holds one request reference. */
typedef struct sl__cmd {
    struct sl__cmd *next;
    sl__cmd_kind kind;
    sl_req *req;
    uint64_t owner;
} sl__cmd;

struct sl__transport;

struct sl_req {
    atomic_int refs;
    atomic_int state;   /* enum sl_req_state, never ORPHANED (that one is derived) */
    atomic_uint gen;    /* fork generation the request belongs to */
    pthread_mutex_t mu; /* guards watches; pairs with cond for waiters */
    pthread_cond_t cond;
    sl_watch *watches;

    /* Immutable after sl_req_new. */
    sl_endpoint *ep;
    char method[8];
    char *url;        /* ep->url_prefix + path */
    const char *path; /* points into url */
    char *body;       /* request body; freed by the I/O thread when the transfer ends */
    size_t body_len;
    int64_t timeout_ms;
    uint64_t owner;

    /* Set at submit; then touched by the I/O thread only. */
    struct sl__transport *tr;
    CURL *easy;                /* non-NULL while the transfer is in the multi handle */
    sl_req *io_prev, *io_next; /* the transport's list of transfers in flight */
    int64_t started_ns;        /* first attempt, for retries within the timeout */
    int64_t retry_at_ns;       /* > 0 while parked waiting for a retry */
    unsigned attempts;
    size_t cap; /* allocated size of res.body */
    bool too_large, nomem;
    bool sent; /* a connection was up and the request went out on it (PREREQ) */
    char errbuf[CURL_ERROR_SIZE];
    sl__cmd submit_cmd, cancel_cmd;

    /* Written by the completing thread before state leaves PENDING. */
    sl_result res;
};

/* Current fork generation: bumped in the child by the atfork handler. */
unsigned sl__gen(void);

/* Publish a completion: if still pending, move to state (DONE/CANCELLED),
 * wake waiters and run watches. Returns 1 if this call completed it. The
 * caller must have filled req->res first (for DONE). */
int sl__req_complete(sl_req *req, int state);

/* Fill req->res as a failure with a printf-style message. */
void sl__req_fail(sl_req *req, enum sl_fail fail, long status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Queue a command to req's transport (sl_io.c). -ESHUTDOWN if that transport
 * stopped; the caller keeps its request reference then. */
int sl__tr_enqueue(struct sl__transport *t, sl__cmd *c);

#endif
