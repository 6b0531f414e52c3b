/* output.c - stdout/stderr of every process: a bounded buffer per stream
 * (the newest SL_OUTPUT_KEEP bytes, addressed by absolute offsets) and the
 * long-polling output endpoint. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sl_log.h"
#include "sl_runner.h"

/* Reads per wake-up: a chatty process must not starve the other clients. */
#define READS_PER_WAKE 8
#define READ_CHUNK 65536

static uint64_t stream_end(const sl_stream *s)
{
    return s->base + evbuffer_get_length(s->buf);
}

/* Append the reply for a read at offset into resp. */
static void pack_output(sl_resp *resp, const sl_stream *s, uint64_t offset, size_t max)
{
    uint64_t end = stream_end(s);
    int truncated = 0;
    uint64_t start = offset;
    if (start < s->base) {
        start = s->base;
        truncated = 1;
    }
    if (start > end)
        start = end;
    size_t n = end - start < max ? (size_t)(end - start) : max;
    sl_resp_init(resp);
    sl_r_map(resp, 4);
    sl_r_str(resp, "data");
    (void)msgpack_pack_bin(&resp->pk, n);
    /* Copy straight from the evbuffer's chunks into the reply. */
    if (n > 0) {
        struct evbuffer_ptr pos;
        if (evbuffer_ptr_set(s->buf, &pos, (size_t)(start - s->base), EVBUFFER_PTR_SET) != 0) {
            resp->failed = 1;
        } else {
            size_t left = n;
            while (left > 0 && !resp->failed) {
                struct evbuffer_iovec v[16];
                int nv = evbuffer_peek(s->buf, (ev_ssize_t)left, &pos, v, 16);
                if (nv <= 0) {
                    resp->failed = 1;
                    break;
                }
                int used = nv < 16 ? nv : 16;
                for (int i = 0; i < used && left > 0; i++) {
                    size_t k = v[i].iov_len < left ? v[i].iov_len : left;
                    (void)msgpack_pack_bin_body(&resp->pk, v[i].iov_base, k);
                    left -= k;
                    if (left > 0 && evbuffer_ptr_set(s->buf, &pos, k, EVBUFFER_PTR_ADD) != 0)
                        resp->failed = 1;
                }
            }
        }
    }
    /* offset: where the next read should start. */
    sl_r_kint(resp, "offset", (int64_t)(start + n));
    sl_r_kbool(resp, "eof", s->eof && start + n == end);
    sl_r_kbool(resp, "truncated", truncated);
}

static void answer(sl_hold *h, sl_stream *s)
{
    sl_resp resp;
    pack_output(&resp, s, h->offset, h->max_bytes);
    sl_hold_reply(h, 200, &resp);
}

/* Answer every reader whose condition now holds. */
static void wake_readers(sl_stream *s)
{
    uint64_t end = stream_end(s);
    sl_hold *h = s->readers;
    while (h != NULL) {
        sl_hold *next = h->next;
        if (s->eof || end > h->offset)
            answer(h, s);
        h = next;
    }
}

static void close_fd(sl_stream *s)
{
    if (s->ev != NULL) {
        event_free(s->ev);
        s->ev = NULL;
    }
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
}

/* Read what the pipe has (up to limit reads); returns 1 at EOF. */
static int read_some(sl_stream *s, int limit)
{
    int eof = 0;
    for (int i = 0; i < limit; i++) {
        int n = evbuffer_read(s->buf, s->fd, READ_CHUNK);
        if (n > 0)
            continue;
        if (n == 0) {
            eof = 1;
        } else if (errno == EINTR) {
            continue;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
            sl_warn("reading process output: %s", strerror(errno));
            eof = 1;
        }
        break;
    }
    size_t len = evbuffer_get_length(s->buf);
    if (len > SL_OUTPUT_KEEP) {
        size_t drop = len - SL_OUTPUT_KEEP;
        evbuffer_drain(s->buf, drop);
        s->base += drop;
    }
    return eof;
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sl_stream *s = arg;
    if (read_some(s, READS_PER_WAKE)) {
        s->eof = 1;
        close_fd(s);
    }
    wake_readers(s);
}

int sl_stream_open(sl_runner *rt, sl_stream *s, int fd)
{
    s->buf = evbuffer_new();
    if (s->buf == NULL)
        return -1;
    s->ev = event_new(rt->base, fd, EV_READ | EV_PERSIST, on_readable, s);
    if (s->ev == NULL || event_add(s->ev, NULL) != 0) {
        if (s->ev != NULL)
            event_free(s->ev);
        s->ev = NULL;
        return -1;
    }
    s->fd = fd;
    return 0;
}

void sl_stream_finish(sl_stream *s)
{
    if (s->buf == NULL)
        return;
    if (s->fd >= 0) {
        /* Everything in the sandbox is dead or dying: take what the pipe
         * still holds, then stop. A pipe buffer is small, so this is quick. */
        read_some(s, 1024);
        close_fd(s);
    }
    s->eof = 1;
    wake_readers(s);
}

void sl_stream_free(sl_stream *s)
{
    close_fd(s);
    while (s->readers != NULL)
        sl_hold_error(s->readers, 500, "output stream removed");
    if (s->buf != NULL) {
        evbuffer_free(s->buf);
        s->buf = NULL;
    }
}

static void on_output_timeout(sl_hold *h)
{
    answer(h, h->obj);
}

void sl_h_output(sl_req *r)
{
    sl_box *b = sl_req_box(r);
    if (b == NULL)
        return;
    sl_proc *p = sl_box_proc(b, r->p[1]);
    if (p == NULL || p->state == SL_P_STARTING) {
        sl_reply_error(r, 404, "process '%.32s' not found in sandbox %s",
                       r->p[1] != NULL ? r->p[1] : "", b->id);
        return;
    }
    sl_err e;
    char *stream = NULL;
    int64_t offset, max_bytes;
    double t;
    if (sl_msg_str(r->body, "stream", 0, &stream, &e) < 0 ||
        sl_msg_int(r->body, "offset", 0, INT64_MAX, 0, &offset, &e) < 0 ||
        sl_msg_int(r->body, "max_bytes", 1, (int64_t)SL_OUTPUT_MAX, (int64_t)SL_OUTPUT_DEFAULT_MAX,
                   &max_bytes, &e) < 0 ||
        sl_msg_num(r->body, "timeout", 0, SL_POLL_CAP, &t, &e) < 0) {
        free(stream);
        sl_reply_err(r, &e);
        return;
    }
    int idx = 0;
    if (stream != NULL && strcmp(stream, "stderr") == 0) {
        idx = 1;
    } else if (stream != NULL && strcmp(stream, "stdout") != 0) {
        sl_reply_error(r, 400, "field 'stream' must be \"stdout\" or \"stderr\", got \"%.32s\"",
                       stream);
        free(stream);
        return;
    }
    free(stream);
    if (t < 0) {
        sl_reply_error(r, 400, "field 'timeout' must be >= 0, got %g", t);
        return;
    }
    if (t > SL_POLL_CAP)
        t = SL_POLL_CAP;
    sl_stream *s = &p->out[idx];
    if (s->buf == NULL) {
        sl_reply_error(r, 500, "process %u has no output buffer", p->id);
        return;
    }
    if (s->eof || stream_end(s) > (uint64_t)offset || t == 0) {
        sl_resp resp;
        pack_output(&resp, s, (uint64_t)offset, (size_t)max_bytes);
        sl_reply(r, 200, &resp);
        return;
    }
    sl_hold *h = sl_hold_new(r, &s->readers, t, on_output_timeout, s);
    if (h != NULL) {
        h->stream = idx;
        h->offset = (uint64_t)offset;
        h->max_bytes = (size_t)max_bytes;
    }
}
