/* fn_calls.c - call records of remote functions: the id table, outcomes and
 * their delivery (a held single-call request, a per-call wait, or a batch
 * channel), cancellation, and the call/channel endpoints. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_fn.h"
#include "sl_log.h"

#define CALL_BUCKETS 8192
#define CHAN_IDLE                                                                                  \
    60.0                 /* an empty, unwatched channel is forgotten after this                    \
                          */
#define BATCH_MAX 100000 /* calls per batch request */
#define DRAIN_DEFAULT 4096

static sl_call *g_calls[CALL_BUCKETS];
static sl_chan *g_chans;

/* ---- lists ---- */

void sl_clist_push(sl_clist *l, sl_call *c)
{
    c->list = l;
    c->next = NULL;
    c->prev = l->tail;
    if (l->tail != NULL)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
    l->n++;
}

void sl_clist_push_front(sl_clist *l, sl_call *c)
{
    c->list = l;
    c->prev = NULL;
    c->next = l->head;
    if (l->head != NULL)
        l->head->prev = c;
    else
        l->tail = c;
    l->head = c;
    l->n++;
}

void sl_clist_remove(sl_call *c)
{
    sl_clist *l = c->list;
    if (l == NULL)
        return;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    else
        l->tail = c->prev;
    l->n--;
    c->prev = c->next = NULL;
    c->list = NULL;
}

/* ---- the id table ---- */

static unsigned bucket_of(const char *id)
{
    uint32_t h = 2166136261u;
    for (const char *s = id; *s != '\0'; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h % CALL_BUCKETS;
}

sl_call *sl_call_find(const char *id)
{
    for (sl_call *c = g_calls[bucket_of(id)]; c != NULL; c = c->hnext) {
        if (strcmp(c->id, id) == 0)
            return c;
    }
    return NULL;
}

static int id_valid(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '-' || ch == '.'))
            return 0;
    }
    return 1;
}

static sl_call *call_new(sl_fn *f, const char *id)
{
    sl_call *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    snprintf(c->id, sizeof(c->id), "%s", id);
    c->fn = f;
    c->submitted_at = sl_now();
    unsigned k = bucket_of(c->id);
    c->hnext = g_calls[k];
    g_calls[k] = c;
    return c;
}

static void call_free(sl_call *c)
{
    sl_clist_remove(c);
    while (c->waiters != NULL)
        sl_hold_error(c->waiters, 500, "call record removed");
    sl_call **pp = &g_calls[bucket_of(c->id)];
    while (*pp != NULL && *pp != c)
        pp = &(*pp)->hnext;
    if (*pp == c)
        *pp = c->hnext;
    free(c->args);
    free(c->data);
    free(c->msg);
    free(c);
}

/* ---- records ---- */

static const char *out_name(enum sl_cout o)
{
    switch (o) {
    case SL_CO_OK:
        return "ok";
    case SL_CO_ERROR:
        return "error";
    case SL_CO_TIMEOUT:
        return "timeout";
    case SL_CO_CANCELLED:
        return "cancelled";
    case SL_CO_CRASHED:
        return "crashed";
    case SL_CO_FAILED:
        return "failed";
    case SL_CO_EXITED:
        return "runner_exited";
    default:
        return "pending";
    }
}

static void pack_call(sl_resp *r, const sl_call *c)
{
    sl_r_map(r, 5);
    sl_r_kstr(r, "call_id", c->id);
    sl_r_kstr(r, "status", c->state == SL_C_DONE ? out_name(c->out) : "pending");
    sl_r_str(r, "data");
    if (c->data != NULL)
        sl_r_bin(r, c->data, c->data_len);
    else
        sl_r_nil(r);
    sl_r_kstr(r, "message", c->msg);
    sl_r_kfloat(r, "duration",
                c->state == SL_C_DONE && c->started_at > 0 ? c->finished_at - c->started_at : 0.0);
}

/* ---- channels ---- */

static sl_chan *chan_find(const char *id)
{
    for (sl_chan *ch = g_chans; ch != NULL; ch = ch->next) {
        if (strcmp(ch->id, id) == 0)
            return ch;
    }
    return NULL;
}

static sl_chan *chan_get(const char *id)
{
    sl_chan *ch = chan_find(id);
    if (ch != NULL)
        return ch;
    ch = calloc(1, sizeof(*ch));
    if (ch == NULL)
        return NULL;
    snprintf(ch->id, sizeof(ch->id), "%s", id);
    ch->last_used = sl_now();
    ch->next = g_chans;
    g_chans = ch;
    return ch;
}

/* Answer h with up to max finished calls of ch; those are delivered and freed.
 */
static void chan_answer(sl_hold *h, sl_req *r, sl_chan *ch, size_t max)
{
    size_t n = ch->done.n < max ? ch->done.n : max;
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 2);
    sl_r_str(&resp, "calls");
    sl_r_arr(&resp, n);
    for (size_t i = 0; i < n; i++) {
        sl_call *c = ch->done.head;
        pack_call(&resp, c);
        call_free(c);
    }
    sl_r_kint(&resp, "pending", (int64_t)(ch->pending + ch->done.n));
    ch->last_used = sl_now();
    if (h != NULL)
        sl_hold_reply(h, 200, &resp);
    else
        sl_reply(r, 200, &resp);
}

static void on_chan_timeout(sl_hold *h)
{
    chan_answer(h, NULL, h->obj, (size_t)h->max_bytes);
}

/* ---- outcomes ---- */

void sl_call_finish(sl_call *c, enum sl_cout out, char *data, size_t data_len, char *msg)
{
    sl_clist_remove(c);
    c->state = SL_C_DONE;
    c->out = out;
    c->data = data;
    c->data_len = data_len;
    c->msg = msg;
    c->finished_at = sl_now();
    c->worker = NULL;
    free(c->args);
    c->args = NULL;
    if (c->fn != NULL) {
        if (out == SL_CO_OK)
            c->fn->nok++;
        else
            c->fn->nerr++;
    }
    sl_fn *f = c->fn;
    c->fn = NULL; /* a finished call outlives neither need nor guarantee of its
                     function */
    sl_chan *ch = c->chan;
    if (ch != NULL)
        ch->pending--;
    if (c->waiters != NULL) {
        /* Delivered to whoever holds a request for it: done with it. */
        while (c->waiters != NULL) {
            sl_resp resp;
            sl_resp_init(&resp);
            sl_r_map(&resp, 2);
            sl_r_kbool(&resp, "done", 1);
            sl_r_str(&resp, "call");
            pack_call(&resp, c);
            sl_hold_reply(c->waiters, 200, &resp);
        }
        call_free(c);
        return;
    }
    if (ch != NULL) {
        sl_clist_push(&ch->done, c);
        if (ch->waiters != NULL)
            chan_answer(ch->waiters, NULL, ch, (size_t)ch->waiters->max_bytes);
        return;
    }
    if (f != NULL)
        sl_clist_push(&f->finished, c);
    else
        call_free(c);
}

void sl_call_fail(sl_call *c, enum sl_cout out, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    char *msg = strdup(buf); /* NULL on ENOMEM: the status alone still says what happened */
    sl_call_finish(c, out, NULL, 0, msg);
}

static int cancel_call(sl_call *c)
{
    if (c->state == SL_C_QUEUED) {
        sl_call_fail(c, SL_CO_CANCELLED, "call %s cancelled before it started", c->id);
        return 1;
    }
    if (c->state == SL_C_SENT) {
        sl_fn_cancel_sent(c);
        return 1;
    }
    return 0;
}

/* ---- sweeping ---- */

static void sweep_list(sl_clist *l, double now)
{
    sl_call *c = l->head;
    while (c != NULL) {
        sl_call *next = c->next;
        /* A single call whose request went away (the client cancelled or
         * died): nobody can learn its outcome, so stop spending on it. */
        if (c->attached && c->waiters == NULL && c->state != SL_C_DONE) {
            sl_info("call %s abandoned by its client: cancelling it", c->id);
            cancel_call(c);
        }
        c = next;
        (void)now;
    }
}

void sl_calls_sweep(sl_fn *f, double now)
{
    sweep_list(&f->queue, now);
    for (sl_worker *w = f->workers; w != NULL;) {
        sl_worker *next = w->next;
        /* Cancelling a running call can free w: scan a copy of the ids. */
        size_t n = 0;
        char ids[SL_FN_PIPELINE * 8][SL_CALL_ID_MAX + 1];
        for (sl_call *c = w->inflight.head; c != NULL && n < SL_FN_PIPELINE * 8; c = c->next) {
            if (c->attached && c->waiters == NULL)
                snprintf(ids[n++], sizeof(ids[0]), "%s", c->id);
        }
        for (size_t i = 0; i < n; i++) {
            sl_call *c = sl_call_find(ids[i]);
            if (c != NULL && c->state == SL_C_SENT) {
                sl_info("call %s abandoned by its client: cancelling it", c->id);
                cancel_call(c);
            }
        }
        w = next;
    }
    double keep = sl_fn_rt() != NULL ? sl_fn_rt()->retention : SL_RETENTION;
    while (f->finished.head != NULL && f->finished.head->finished_at < now - keep)
        call_free(f->finished.head);
}

void sl_chans_sweep(double now)
{
    double keep = sl_fn_rt() != NULL ? sl_fn_rt()->retention : SL_RETENTION;
    sl_chan **pp = &g_chans;
    while (*pp != NULL) {
        sl_chan *ch = *pp;
        while (ch->done.head != NULL && ch->done.head->finished_at < now - keep)
            call_free(ch->done.head);
        if (ch->pending == 0 && ch->done.n == 0 && ch->waiters == NULL &&
            ch->last_used < now - CHAN_IDLE) {
            *pp = ch->next;
            free(ch);
            continue;
        }
        pp = &ch->next;
    }
}

void sl_calls_free_fn(sl_fn *f)
{
    while (f->queue.head != NULL)
        call_free(f->queue.head);
    while (f->finished.head != NULL)
        call_free(f->finished.head);
}

void sl_calls_shutdown(void)
{
    for (unsigned k = 0; k < CALL_BUCKETS; k++) {
        while (g_calls[k] != NULL) {
            sl_call *c = g_calls[k];
            while (c->waiters != NULL)
                sl_hold_error(c->waiters, 503, "runner shutting down");
            call_free(c);
        }
    }
    while (g_chans != NULL) {
        sl_chan *ch = g_chans;
        while (ch->waiters != NULL)
            sl_hold_error(ch->waiters, 503, "runner shutting down");
        g_chans = ch->next;
        free(ch);
    }
}

/* ---- endpoints ---- */

static sl_fn *req_fn(sl_req *r)
{
    sl_fn *f = r->p[0] != NULL ? sl_fn_find(r->p[0]) : NULL;
    if (f == NULL)
        sl_reply_error(r, 404, "function '%.64s' not found", r->p[0] != NULL ? r->p[0] : "");
    return f;
}

static char *copy_bytes(const char *p, size_t n)
{
    char *d = malloc(n > 0 ? n : 1);
    if (d != NULL && n > 0)
        memcpy(d, p, n);
    return d;
}

/* POST /v1/functions/{id}/call: submit one call and hold the request until
 * it finishes, so a warm round trip is one HTTP request. */
void sl_h_fn_call(sl_req *r)
{
    sl_fn *f = req_fn(r);
    if (f == NULL)
        return;
    sl_err e;
    const char *args;
    size_t args_len;
    char *id = NULL;
    if (sl_msg_bytes(r->body, "args", SL_REQ, &args, &args_len, &e) < 0 ||
        sl_msg_str(r->body, "call_id", 0, &id, &e) < 0) {
        sl_reply_err(r, &e);
        return;
    }
    char gen[24];
    if (id == NULL) {
        memcpy(gen, "c-", 2);
        if (sl_random_hex(gen + 2, 16) < 0) {
            sl_reply_error(r, 500, "getrandom failed");
            return;
        }
    } else if (!id_valid(id, SL_CALL_ID_MAX)) {
        sl_reply_error(r, 400, "field 'call_id' must match [A-Za-z0-9_.-]{1,63}, got '%.64s'", id);
        free(id);
        return;
    } else if (sl_call_find(id) != NULL) {
        sl_reply_error(r, 409, "call '%.64s' already exists", id);
        free(id);
        return;
    }
    sl_call *c = call_new(f, id != NULL ? id : gen);
    free(id);
    if (c == NULL || (c->args = copy_bytes(args, args_len)) == NULL) {
        if (c != NULL)
            call_free(c);
        sl_reply_error(r, 500, "out of memory");
        return;
    }
    c->args_len = args_len;
    c->attached = 1;
    f->ncalls++;
    sl_fn_touch(f);
    sl_clist_push(&f->queue, c);
    /* Hold first: the pump may finish the call at once (no worker can start). */
    if (sl_hold_new(r, &c->waiters, -1, NULL, c) == NULL) {
        call_free(c);
        return;
    }
    sl_fn_pump(f);
}

/* POST /v1/functions/{id}/calls: {"channel", "prefix", "args": [bin]} ->
 * calls "<prefix>.<i>" whose outcomes go to the channel. */
void sl_h_fn_calls(sl_req *r)
{
    sl_fn *f = req_fn(r);
    if (f == NULL)
        return;
    sl_err e;
    char *chan = NULL, *prefix = NULL;
    if (sl_msg_str(r->body, "channel", SL_REQ, &chan, &e) < 0 ||
        sl_msg_str(r->body, "prefix", SL_REQ, &prefix, &e) < 0) {
        free(chan);
        sl_reply_err(r, &e);
        return;
    }
    const msgpack_object *arr = sl_msg_field(r->body, "args");
    int bad = 0;
    if (!id_valid(chan, SL_CALL_ID_MAX) || !id_valid(prefix, 40)) {
        sl_reply_error(r, 400,
                       "fields 'channel' and 'prefix' must match [A-Za-z0-9_.-] "
                       "(at most 63 and "
                       "40 characters)");
        bad = 1;
    } else if (arr == NULL || arr->type != MSGPACK_OBJECT_ARRAY) {
        sl_reply_error(r, 400, "field 'args' must be an array of bytes");
        bad = 1;
    } else if (arr->via.array.size > BATCH_MAX) {
        sl_reply_error(r, 400, "at most %d calls per batch, got %u", BATCH_MAX,
                       (unsigned)arr->via.array.size);
        bad = 1;
    }
    uint32_t n = bad ? 0 : arr->via.array.size;
    for (uint32_t i = 0; i < n && !bad; i++) {
        const msgpack_object *o = &arr->via.array.ptr[i];
        if (o->type != MSGPACK_OBJECT_BIN) {
            sl_reply_error(r, 400, "field 'args'[%u] must be bytes, got %s", (unsigned)i,
                           sl_msg_type_name(o));
            bad = 1;
        }
    }
    char id[SL_CALL_ID_MAX + 1];
    if (!bad && n > 0) {
        snprintf(id, sizeof(id), "%s.0", prefix);
        if (sl_call_find(id) != NULL) {
            sl_reply_error(r, 409, "calls with prefix '%.40s' already exist", prefix);
            bad = 1;
        }
    }
    sl_chan *ch = bad ? NULL : chan_get(chan);
    if (!bad && ch == NULL) {
        sl_reply_error(r, 500, "out of memory");
        bad = 1;
    }
    free(chan);
    if (bad) {
        free(prefix);
        return;
    }
    ch->last_used = sl_now();
    uint32_t made = 0;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *o = &arr->via.array.ptr[i];
        snprintf(id, sizeof(id), "%s.%u", prefix, (unsigned)i);
        sl_call *c = call_new(f, id);
        if (c == NULL || (c->args = copy_bytes(o->via.bin.ptr, o->via.bin.size)) == NULL) {
            if (c != NULL)
                call_free(c);
            break;
        }
        c->args_len = o->via.bin.size;
        c->chan = ch;
        ch->pending++;
        sl_clist_push(&f->queue, c);
        made++;
    }
    free(prefix);
    f->ncalls += made;
    sl_fn_touch(f);
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 1);
    sl_r_kint(&resp, "accepted", made);
    if (made < n)
        sl_reply_error(r, 500, "out of memory after %u of %u calls", (unsigned)made, (unsigned)n);
    else
        sl_reply(r, 200, &resp);
    if (made < n)
        sl_resp_destroy(&resp);
    sl_fn_pump(f);
}

static void reply_wait(sl_hold *h, sl_req *r, sl_call *c)
{
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 2);
    sl_r_kbool(&resp, "done", c != NULL && c->state == SL_C_DONE);
    sl_r_str(&resp, "call");
    if (c != NULL)
        pack_call(&resp, c);
    else
        sl_r_nil(&resp);
    if (h != NULL)
        sl_hold_reply(h, 200, &resp);
    else
        sl_reply(r, 200, &resp);
}

static void on_call_wait_timeout(sl_hold *h)
{
    reply_wait(h, NULL, h->obj);
}

static int poll_timeout(const msgpack_object *body, double *t, sl_err *e)
{
    if (sl_msg_num(body, "timeout", 0, SL_POLL_CAP, t, e) < 0)
        return -1;
    if (!(*t >= 0))
        return sl_err_set(e, 400, "field 'timeout' must be >= 0, got %g", *t);
    if (*t > SL_POLL_CAP)
        *t = SL_POLL_CAP;
    return 0;
}

/* POST /v1/calls/{id}/wait {"timeout"}: a finished call is delivered (and
 * forgotten); a running one holds the request. */
void sl_h_call_wait(sl_req *r)
{
    sl_call *c = r->p[0] != NULL ? sl_call_find(r->p[0]) : NULL;
    if (c == NULL) {
        sl_reply_error(r, 404,
                       "call '%.64s' not found (unknown, or its result was already "
                       "delivered)",
                       r->p[0] != NULL ? r->p[0] : "");
        return;
    }
    sl_err e;
    double t;
    if (poll_timeout(r->body, &t, &e) < 0) {
        sl_reply_err(r, &e);
        return;
    }
    if (c->state == SL_C_DONE) {
        reply_wait(NULL, r, c);
        if (c->chan != NULL && c->list == &c->chan->done)
            c->chan->last_used = sl_now();
        call_free(c);
        return;
    }
    if (t <= 0) {
        reply_wait(NULL, r, c);
        return;
    }
    sl_hold_new(r, &c->waiters, t, on_call_wait_timeout, c);
}

/* POST /v1/calls/cancel {"call_ids": [str]} */
void sl_h_calls_cancel(sl_req *r)
{
    sl_err e;
    char **ids = NULL;
    size_t n = 0;
    if (sl_msg_strv(r->body, "call_ids", SL_REQ, &ids, &n, &e) < 0) {
        sl_reply_err(r, &e);
        return;
    }
    int64_t done = 0;
    for (size_t i = 0; i < n; i++) {
        sl_call *c = sl_call_find(ids[i]);
        if (c != NULL && cancel_call(c))
            done++;
    }
    sl_strv_free(ids, n);
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 1);
    sl_r_kint(&resp, "cancelled", done);
    sl_reply(r, 200, &resp);
}

/* POST /v1/channels/{ch}/wait {"timeout", "max"} -> finished calls. */
void sl_h_chan_wait(sl_req *r)
{
    sl_err e;
    double t;
    int64_t max;
    if (poll_timeout(r->body, &t, &e) < 0 ||
        sl_msg_int(r->body, "max", 1, INT32_MAX, DRAIN_DEFAULT, &max, &e) < 0) {
        sl_reply_err(r, &e);
        return;
    }
    sl_chan *ch = r->p[0] != NULL ? chan_find(r->p[0]) : NULL;
    if (ch == NULL) {
        sl_resp resp;
        sl_resp_init(&resp);
        sl_r_map(&resp, 2);
        sl_r_str(&resp, "calls");
        sl_r_arr(&resp, 0);
        sl_r_kint(&resp, "pending", 0);
        sl_reply(r, 200, &resp);
        return;
    }
    if (ch->done.n > 0 || t <= 0 || ch->pending == 0) {
        chan_answer(NULL, r, ch, (size_t)max);
        return;
    }
    sl_hold *h = sl_hold_new(r, &ch->waiters, t, on_chan_timeout, ch);
    if (h != NULL)
        h->max_bytes = (size_t)max;
}
