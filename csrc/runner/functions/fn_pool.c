/* fn_pool.c - the warm worker sandboxes of a remote function: starting
 * them, framing calls over their stdin/stdout, dispatch from the queue,
 * per-call timeouts, cancel, death and idle reaping. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sl_fn.h"
#include "sl_log.h"

#define READ_CHUNK ((size_t)1 << 20)
#define READS_PER_WAKE 16
#define START_FAILURE_TEXT 400

static void worker_gone(sl_worker *w, enum sl_cout head_out, const char *head_msg);

sl_box *sl_fn_worker_box(sl_worker *w)
{
    /* The box is hidden and freed by lifecycle.c once its init is reaped,
     * which may already have happened: only trust a pointer still listed
     * under the same random id. */
    sl_runner *rt = sl_fn_rt();
    if (w->box == NULL || rt == NULL)
        return NULL;
    for (sl_box *b = rt->first; b != NULL; b = b->next) {
        if (b == w->box && strcmp(b->id, w->box_id) == 0)
            return b;
    }
    w->box = NULL;
    return NULL;
}

static void put_be(unsigned char *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        p[i] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

static uint64_t get_be(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

static void flush(sl_worker *w)
{
    while (evbuffer_get_length(w->to) > 0) {
        int n = evbuffer_write(w->to, w->in_fd);
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (event_add(w->wev, NULL) != 0)
                sl_warn("event_add failed on worker %s stdin", w->box_id);
            return;
        }
        /* EPIPE: the worker is gone; its stdout EOF says so and cleans up. */
        evbuffer_drain(w->to, evbuffer_get_length(w->to));
        return;
    }
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    flush(arg);
}

static void free_cb(const void *data, size_t len, void *arg)
{
    (void)len;
    (void)arg;
    free((void *)data);
}

/* Queue one frame: length, sequence number, payload (ownership taken when
 * own is set: the payload is referenced, not copied). */
static int send_frame(sl_worker *w, uint64_t seq, char *payload, size_t len, int own)
{
    unsigned char hdr[12];
    put_be(hdr, (uint64_t)(len + 8), 4);
    put_be(hdr + 4, seq, 8);
    if (evbuffer_add(w->to, hdr, sizeof(hdr)) != 0)
        return -1;
    if (len > 0) {
        int rc = own ? evbuffer_add_reference(w->to, payload, len, free_cb, NULL)
                     : evbuffer_add(w->to, payload, len);
        if (rc != 0)
            return -1;
    }
    return 0;
}

static void arm_timer(sl_worker *w)
{
    sl_fn *f = w->fn;
    sl_call *head = w->inflight.head;
    if (head == NULL) {
        evtimer_del(w->timer);
        return;
    }
    head->started_at = sl_now();
    if (f->call_timeout > 0) {
        struct timeval tv = sl_tv(f->call_timeout);
        if (evtimer_add(w->timer, &tv) != 0)
            sl_warn("cannot arm the call timeout of worker %s", w->box_id);
    }
}

static void dispatch(sl_worker *w, sl_call *c)
{
    sl_fn *f = w->fn;
    sl_clist_remove(c);
    c->seq = ++f->next_seq;
    c->state = SL_C_SENT;
    c->worker = w;
    sl_clist_push(&w->inflight, c);
    /* Copied, not referenced: the call keeps its arguments until it has an
     * outcome, so it can be resent if this worker dies before running it. */
    if (send_frame(w, c->seq, c->args, c->args_len, 0) < 0) {
        sl_call_fail(c, SL_CO_FAILED, "out of memory queueing the call for its worker");
        return;
    }
    if (w->inflight.n == 1)
        arm_timer(w);
    /* Written by sl_fn_pump once it has queued all it will: one write for
     * a whole pipelined batch. */
}

static void fail_queue(sl_fn *f, enum sl_cout out, const char *msg)
{
    while (f->queue.head != NULL)
        sl_call_fail(f->queue.head, out, "%s", msg);
}

/* ---- frames from the worker ---- */

static void on_result(sl_worker *w, int kind, uint64_t seq, char *payload, size_t len)
{
    sl_fn *f = w->fn;
    sl_call *c = w->inflight.head;
    while (c != NULL && c->seq != seq)
        c = c->next;
    if (c == NULL) {
        free(payload); /* a call cancelled while it waited in the pipe */
    } else {
        int was_head = c == w->inflight.head;
        sl_call_finish(c, kind == 'O' ? SL_CO_OK : SL_CO_ERROR, payload, len, NULL);
        if (was_head)
            arm_timer(w);
    }
    w->served++;
    if (w->inflight.n == 0)
        w->idle_since = sl_now();
    if (f->fresh) /* one call per sandbox: this one is spent */
        worker_gone(w, SL_CO_NONE, NULL);
}

/* Returns -1 once w is gone. */
static int handle_frame(sl_worker *w, int kind, uint64_t seq, char *payload, size_t len)
{
    sl_fn *f = w->fn;
    switch (kind) {
    case 'R':
        free(payload);
        if (w->state == SL_W_STARTING) {
            w->state = SL_W_READY;
            f->nstarting--;
            f->start_failures = 0;
            w->idle_since = sl_now();
            sl_debug("function %s: worker %s ready in %.3f s", f->id, w->box_id,
                     sl_now() - w->started_at);
        }
        return 0;
    case 'F': {
        char msg[1200];
        snprintf(msg, sizeof(msg), "the function could not be loaded in its worker sandbox: %.*s",
                 (int)(len < 1000 ? len : 1000), payload != NULL ? payload : "");
        free(payload);
        sl_warn("function %s: %s", f->id, msg);
        fail_queue(f, SL_CO_FAILED, msg);
        worker_gone(w, SL_CO_FAILED, msg);
        return -1;
    }
    case 'L': /* the lease ended: an ordinary worker again */
        free(payload);
        if (w->leased) {
            w->leased = 0;
            w->idle_since = sl_now();
            sl_debug("function %s: worker %s back from its lease", f->id, w->box_id);
        }
        return 0;
    case 'O':
    case 'E': {
        int fresh = f->fresh;
        on_result(w, kind, seq, payload, len);
        return fresh ? -1 : 0;
    }
    default:
        free(payload);
        worker_gone(w, SL_CO_CRASHED,
                    "the worker sent a malformed frame (did the function "
                    "write to the protocol file descriptors?)");
        return -1;
    }
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sl_worker *w = arg;
    sl_fn *f = w->fn;
    int eof = 0;
    for (int i = 0; i < READS_PER_WAKE; i++) {
        int n = evbuffer_read(w->from, w->out_fd, (int)READ_CHUNK);
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
            eof = 1;
        break;
    }
    for (;;) {
        size_t have = evbuffer_get_length(w->from);
        unsigned char hdr[13];
        if (have < 4)
            break;
        if (evbuffer_copyout(w->from, hdr, 4) != 4)
            break;
        uint64_t n = get_be(hdr, 4);
        if (n < 9 || n > SL_FN_FRAME_MAX) {
            worker_gone(w, SL_CO_CRASHED,
                        "the worker sent a malformed frame (did the function write to the "
                        "protocol file descriptors?)");
            return;
        }
        if (have < 4 + n)
            break;
        if (evbuffer_remove(w->from, hdr, 13) != 13)
            break;
        size_t len = (size_t)n - 9;
        char *payload = NULL;
        if (len > 0) {
            payload = malloc(len);
            if (payload == NULL || evbuffer_remove(w->from, payload, len) != (int)len) {
                free(payload);
                worker_gone(w, SL_CO_CRASHED, "out of memory reading a result in the runner");
                return;
            }
        }
        if (handle_frame(w, hdr[4], get_be(hdr + 5, 8), payload, len) < 0) {
            sl_fn_pump(f);
            return;
        }
    }
    if (eof) {
        worker_gone(w, SL_CO_CRASHED, NULL);
        sl_fn_pump(f);
        return;
    }
    sl_fn_pump(f);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sl_worker *w = arg;
    sl_fn *f = w->fn;
    char msg[200];
    snprintf(msg, sizeof(msg),
             "the call exceeded max_timeout_seconds=%g; its worker sandbox was "
             "killed and replaced",
             f->call_timeout);
    worker_gone(w, SL_CO_TIMEOUT, msg);
    sl_fn_pump(f);
}

/* ---- life and death of workers ---- */

static void worker_free(sl_worker *w)
{
    if (w->rev != NULL)
        event_free(w->rev);
    if (w->wev != NULL)
        event_free(w->wev);
    if (w->timer != NULL)
        event_free(w->timer);
    if (w->in_fd >= 0)
        close(w->in_fd);
    if (w->out_fd >= 0)
        close(w->out_fd);
    if (w->to != NULL)
        evbuffer_free(w->to);
    if (w->from != NULL)
        evbuffer_free(w->from);
    free(w);
}

static void unlink_worker(sl_worker *w)
{
    sl_fn *f = w->fn;
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        f->workers = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    f->nworkers--;
    if (w->state == SL_W_STARTING)
        f->nstarting--;
}

/* Why the worker's process ended, as far as the runner knows yet. */
static void death_text(sl_worker *w, char *buf, size_t cap)
{
    sl_box *b = sl_fn_worker_box(w);
    sl_proc *p = b != NULL && b->nprocs > 0 ? b->procs[0] : NULL;
    if (p != NULL && p->state == SL_P_EXITED && p->exit_code < 0)
        snprintf(buf, cap, " (killed by signal %d%s)", -p->exit_code,
                 -p->exit_code == SIGKILL ? ", e.g. out of memory" : "");
    else if (p != NULL && p->state == SL_P_EXITED)
        snprintf(buf, cap, " (exit status %d)", p->exit_code);
    else
        buf[0] = '\0';
}

/* End w: the oldest in-flight call gets head_out (SL_CO_NONE: w was idle or
 * its call already has its outcome; head_msg NULL: a death message), later
 * ones go back to the front of the queue in order, the sandbox is killed. */
static void worker_gone(sl_worker *w, enum sl_cout head_out, const char *head_msg)
{
    sl_fn *f = w->fn;
    int starting = w->state == SL_W_STARTING;
    w->state = SL_W_GONE;
    char why[96];
    death_text(w, why, sizeof(why));
    if (starting && head_out == SL_CO_CRASHED) {
        f->start_failures++;
        int ready = 0;
        for (sl_worker *o = f->workers; o != NULL; o = o->next)
            ready += o != w && o->state == SL_W_READY;
        if (!ready) {
            char msg[300];
            snprintf(msg, sizeof(msg),
                     "the worker sandbox exited before loading the function%s; is the "
                     "interpreter present in the image and sandlot importable there?",
                     why);
            fail_queue(f, SL_CO_FAILED, msg);
        }
    }
    sl_call *head = w->inflight.head;
    if (head != NULL && head_out != SL_CO_NONE) {
        if (head_msg != NULL)
            sl_call_fail(head, head_out, "%s", head_msg);
        else
            sl_call_fail(head, head_out,
                         "the worker running this call died%s (a crash, os._exit, or the "
                         "sandbox being killed); the pool replaced it",
                         why);
    }
    while (w->inflight.tail != NULL) {
        sl_call *c = w->inflight.tail;
        sl_clist_remove(c);
        c->state = SL_C_QUEUED;
        c->worker = NULL;
        /* Its arguments went to the dead worker; it cannot be resent. */
        if (c->args == NULL) {
            sl_call_fail(c, head_out == SL_CO_NONE ? SL_CO_CRASHED : head_out,
                         "the worker holding this call died before running it");
            continue;
        }
        sl_clist_push_front(&f->queue, c);
    }
    unlink_worker(w);
    sl_box *b = sl_fn_worker_box(w);
    if (b != NULL)
        sl_box_end(b, SL_B_TERMINATED);
    sl_debug("function %s: worker %s gone after %llu calls", f->id, w->box_id,
             (unsigned long long)w->served);
    worker_free(w);
}

static char **kv_env(const sl_kv *kv, size_t n, sl_kv **out)
{
    sl_kv *d = calloc(n > 0 ? n : 1, sizeof(*d));
    if (d == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        d[i].k = strdup(kv[i].k);
        d[i].v = strdup(kv[i].v);
        if (d[i].k == NULL || d[i].v == NULL) {
            sl_kv_free(d, i + 1, 0);
            return NULL;
        }
    }
    *out = d;
    return (char **)d; /* non-NULL: success */
}

static int spawn_worker(sl_fn *f, sl_err *e)
{
    sl_runner *rt = sl_fn_rt();
    sl_box *b = sl_box_new(rt);
    if (b == NULL)
        return sl_err_set(e, 500, "cannot allocate a sandbox record");
    b->cmd = sl_strv_dup(f->cmd, f->ncmd);
    b->ncmd = f->ncmd;
    b->image = strdup(f->image != NULL ? f->image : "host");
    b->workdir = f->workdir != NULL ? strdup(f->workdir) : NULL;
    b->timeout = SL_TIMEOUT_MAX;
    if (b->cmd == NULL || b->image == NULL || (f->workdir != NULL && b->workdir == NULL) ||
        (f->nenv > 0 && kv_env(f->env, f->nenv, &b->env) == NULL)) {
        sl_box_free(b);
        return sl_err_set(e, 500, "out of memory");
    }
    b->nenv = f->nenv;
    /* The function's resources bind each of its workers. */
    if (sl_limits_from_opts(b, f->opts, f->opts_len, e) < 0 ||
        sl_net_from_opts(b, f->opts, f->opts_len, e) < 0 ||
        sl_s3_from_raw(b, f->s3, f->s3_len, e) < 0) {
        sl_s3_release(b);
        sl_box_free(b);
        return -1;
    }
    size_t nbinds = f->nmounts + (f->direct_dir != NULL);
    sl_bind *binds = nbinds > 0 ? calloc(nbinds, sizeof(*binds)) : NULL;
    if (nbinds > 0 && binds == NULL) {
        sl_box_free(b);
        return sl_err_set(e, 500, "out of memory");
    }
    for (size_t i = 0; i < f->nmounts; i++) {
        binds[i].host_path = f->mounts[i].v;
        binds[i].sandbox_path = f->mounts[i].k;
        binds[i].readonly = 1;
    }
    if (f->direct_dir != NULL) {
        /* Read-only: a worker can connect to a client's socket there (a
         * socket needs no write access to the mount) but create nothing. */
        binds[f->nmounts].host_path = f->direct_dir;
        binds[f->nmounts].sandbox_path = SL_FN_DIRECT_MOUNT;
        binds[f->nmounts].readonly = 1;
    }
    int rc = sl_box_launch(b, 1, binds, nbinds, e);
    free(binds);
    if (rc < 0)
        return -1;
    sl_worker *w = calloc(1, sizeof(*w));
    sl_proc *p = b->procs[0];
    if (w == NULL)
        goto fail;
    w->in_fd = w->out_fd = -1;
    w->fn = f;
    w->box = b;
    snprintf(w->box_id, sizeof(w->box_id), "%s", b->id);
    /* The protocol is ours: stop the output buffer from reading stdout and
     * keep our own descriptors (the box closes its copies when it ends). */
    if (p->out[0].ev != NULL)
        event_del(p->out[0].ev);
    w->out_fd = fcntl(p->out[0].fd, F_DUPFD_CLOEXEC, 0);
    w->in_fd = fcntl(p->in_fd, F_DUPFD_CLOEXEC, 0);
    w->to = evbuffer_new();
    w->from = evbuffer_new();
    w->rev = event_new(rt->base, w->out_fd, EV_READ | EV_PERSIST, on_readable, w);
    w->wev = event_new(rt->base, w->in_fd, EV_WRITE, on_writable, w);
    w->timer = evtimer_new(rt->base, on_timeout, w);
    if (w->out_fd < 0 || w->in_fd < 0 || w->to == NULL || w->from == NULL || w->rev == NULL ||
        w->wev == NULL || w->timer == NULL || event_add(w->rev, NULL) != 0 ||
        send_frame(w, 0, f->spec, f->spec_len, 0) < 0)
        goto fail;
    w->state = SL_W_STARTING;
    w->started_at = sl_now();
    w->next = f->workers;
    if (f->workers != NULL)
        f->workers->prev = w;
    f->workers = w;
    f->nworkers++;
    f->nstarting++;
    flush(w);
    sl_debug("function %s: worker %s starting", f->id, b->id);
    return 0;
fail:
    if (w != NULL)
        worker_free(w);
    sl_box_end(b, SL_B_TERMINATED);
    return sl_err_set(e, 500, "cannot set up the worker's pipes (libevent/fcntl)");
}

/* ---- dispatch ---- */

static void pump(sl_fn *f);

void sl_fn_pump(sl_fn *f)
{
    pump(f);
    for (sl_worker *w = f->workers; w != NULL; w = w->next) {
        if (evbuffer_get_length(w->to) > 0)
            flush(w);
    }
}

static void pump(sl_fn *f)
{
    if (f->deleted)
        return;
    size_t depth = f->fresh ? 1 : f->pipeline;
    while (f->nworkers < f->min_workers) {
        sl_err e;
        if (spawn_worker(f, &e) < 0) {
            sl_warn("function %s: cannot start a worker: %s", f->id, e.msg);
            break;
        }
    }
    while (f->queue.n > 0) {
        sl_worker *idle = NULL, *best = NULL;
        for (sl_worker *w = f->workers; w != NULL; w = w->next) {
            if (w->state != SL_W_READY || w->leased || w->inflight.n >= depth)
                continue;
            if (w->inflight.n == 0 && idle == NULL)
                idle = w;
            if (best == NULL || w->inflight.n < best->inflight.n)
                best = w;
        }
        if (idle != NULL) {
            dispatch(idle, f->queue.head);
            continue;
        }
        /* Everyone is busy: grow the pool while there is more waiting than
         * the workers already starting will take, then pipeline the rest
         * behind running calls. */
        if (f->nworkers < f->max_workers && f->nstarting < f->queue.n) {
            sl_err e;
            if (spawn_worker(f, &e) < 0) {
                sl_warn("function %s: cannot start a worker: %s", f->id, e.msg);
                if (f->nworkers == 0) {
                    char msg[600];
                    snprintf(msg, sizeof(msg), "no worker sandbox could be started: %s", e.msg);
                    fail_queue(f, SL_CO_FAILED, msg);
                }
                return;
            }
            continue;
        }
        if (best != NULL && f->queue.n > f->nstarting) {
            dispatch(best, f->queue.head);
            continue;
        }
        break;
    }
}

void sl_fn_cancel_sent(sl_call *c)
{
    sl_worker *w = c->worker;
    if (w == NULL || c != w->inflight.head) {
        /* Still waiting in the worker's pipe: it will run and its result be
         * dropped; the client hears "cancelled" now. */
        sl_call_fail(c, SL_CO_CANCELLED, "call %s cancelled before it started", c->id);
        return;
    }
    sl_fn *f = w->fn;
    char msg[160];
    snprintf(msg, sizeof(msg),
             "call %.64s cancelled while running; its worker sandbox was killed "
             "and replaced",
             c->id);
    worker_gone(w, SL_CO_CANCELLED, msg);
    sl_fn_pump(f);
}

int sl_fn_lease(sl_fn *f, const char *name, char box_id[SL_ID_LEN + 1], sl_err *e)
{
    if (f->direct_dir == NULL)
        return sl_err_set(e, 409, "function %s has no direct socket dir", f->id);
    if (f->fresh || f->call_timeout > 0)
        return sl_err_set(e, 409,
                          "function %s is fresh_sandbox or has max_timeout_seconds: its "
                          "calls go through the runner",
                          f->id);
    sl_worker *w = f->workers;
    while (w != NULL && (w->state != SL_W_READY || w->leased || w->inflight.n > 0))
        w = w->next;
    if (w == NULL || f->queue.n > 0)
        return sl_err_set(e, 409, "function %s has no idle worker to lease", f->id);
    /* The worker ends the lease itself after idle_timeout without a call,
     * so a forgotten lease returns the worker to the pool and its reaping. */
    char payload[128];
    int n = snprintf(payload, sizeof(payload), "\x01%s\n%g", name, f->idle_timeout);
    if (n < 0 || (size_t)n >= sizeof(payload))
        return sl_err_set(e, 400, "socket name too long");
    if (send_frame(w, ++f->next_seq, payload, (size_t)n, 0) < 0)
        return sl_err_set(e, 500, "out of memory");
    w->leased = 1;
    flush(w);
    snprintf(box_id, SL_ID_LEN + 1, "%s", w->box_id);
    sl_debug("function %s: worker %s leased to socket %s", f->id, w->box_id, name);
    return 0;
}

int sl_fn_lease_kill(sl_fn *f, const char *box_id)
{
    for (sl_worker *w = f->workers; w != NULL; w = w->next) {
        if (w->leased && strcmp(w->box_id, box_id) == 0) {
            sl_info("function %s: leased worker %s killed (its call was cancelled)", f->id,
                    w->box_id);
            worker_gone(w, SL_CO_NONE, NULL);
            sl_fn_pump(f);
            return 1;
        }
    }
    return 0;
}

void sl_fn_reap_idle(sl_fn *f, double now)
{
    sl_worker *w = f->workers;
    while (w != NULL) {
        sl_worker *next = w->next;
        if (w->state == SL_W_READY && !w->leased && w->inflight.n == 0 &&
            f->nworkers > f->min_workers && now - w->idle_since >= f->idle_timeout) {
            sl_info("function %s: reaping worker %s idle for %.0f s", f->id, w->box_id,
                    now - w->idle_since);
            worker_gone(w, SL_CO_NONE, NULL);
        }
        w = next;
    }
}

void sl_fn_retire_all(sl_fn *f)
{
    while (f->workers != NULL)
        worker_gone(f->workers, SL_CO_CANCELLED, "the function was deleted");
}

void sl_fn_drop_workers(sl_fn *f)
{
    /* Shutdown: lifecycle.c kills every box right after; only free ours. */
    while (f->workers != NULL) {
        sl_worker *w = f->workers;
        f->workers = w->next;
        worker_free(w);
    }
    f->nworkers = f->nstarting = 0;
}

void sl_fn_pack_workers(sl_resp *r, const sl_fn *f)
{
    static const char *const names[] = {"starting", "ready", "gone"};
    sl_r_arr(r, f->nworkers);
    size_t n = 0;
    for (const sl_worker *w = f->workers; w != NULL && n < f->nworkers; w = w->next, n++) {
        sl_r_map(r, 5);
        sl_r_kstr(r, "sandbox_id", w->box_id);
        sl_r_kstr(r, "state", names[w->state]);
        sl_r_kbool(r, "leased", w->leased);
        sl_r_kint(r, "served", (int64_t)w->served);
        sl_r_kint(r, "inflight", (int64_t)w->inflight.n);
    }
    if (n != f->nworkers)
        r->failed = 1;
}
