/* output.c - stdout/stderr of every process and the long-polling output
 * endpoint.
 *
 * Output goes from the pipe into a spool file per stream, an unnamed
 * O_TMPFILE in <state>/sandboxes (the state dir's filesystem; not the
 * sandbox's own dir, which sits on its disk-limit tmpfs when it has one: a
 * sandbox that fills its disk must still get its output). It counts against
 * the runner-wide --output-cap. The runner itself only holds one 64 KiB read
 * buffer, whatever the number of processes or how much they write. A file offset is the stream's
 * absolute offset; what is no longer kept is a punched hole before `base`.
 *
 * How much is kept: the newest `output_keep` bytes per stream (per sandbox,
 * default 8 MiB), and at most --output-cap bytes over all streams of the
 * runner. When a stream is full the sandbox's policy decides:
 *   drop_oldest (default): the oldest bytes go; a reader that had not read
 *       them gets "truncated" and "dropped_bytes" with its next read;
 *   block: the runner stops reading the pipe until a reader catches up, so
 *       the writer blocks (nothing is lost; nothing runs on unread).
 * A spool write that fails (ENOSPC: the state dir's filesystem is full)
 * drops the oldest kept bytes and tries once more, then drops the new bytes.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sl_log.h"
#include "sl_runner.h"

/* Reads per wake-up: a chatty process must not starve the other clients. */
#define READS_PER_WAKE 8
#define READ_CHUNK 65536

/* The event loop is single-threaded: one buffer serves every stream. */
static char iobuf[READ_CHUNK];

static uint64_t kept(const sl_stream *s)
{
    return s->end - s->base;
}

static sl_runner *rt_of(const sl_stream *s)
{
    return s->box->rt;
}

/* Free the file's blocks below base once PUNCH_STEP of them piled up: one
 * fallocate per MiB, not one per read (a punch per 64 KiB chunk made a
 * chatty process several times slower on ext4). force: all of them now. */
#define PUNCH_STEP ((uint64_t)1 << 20)
static void punch(sl_stream *s, int force)
{
    uint64_t to = s->base & ~(uint64_t)4095;
    if (s->spool < 0 || to <= s->punched || (!force && to - s->punched < PUNCH_STEP))
        return;
    if (fallocate(s->spool, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)s->punched,
                  (off_t)(to - s->punched)) < 0 &&
        errno != EOPNOTSUPP)
        sl_debug("punching output spool: %s", strerror(errno));
    s->punched = to;
}

/* Forget [base, upto); its blocks are freed by punch(). */
static void drop_to(sl_stream *s, uint64_t upto)
{
    if (upto <= s->base)
        return;
    if (upto > s->end)
        upto = s->end;
    uint64_t n = upto - s->base;
    /* Bytes no reader had asked for yet are lost to readers. */
    if (upto > s->consumed)
        s->dropped += upto - (s->base > s->consumed ? s->base : s->consumed);
    s->base = upto;
    rt_of(s)->output_bytes -= n;
    punch(s, 0);
}

/* Room for n more bytes under the stream's keep and the runner's cap. */
static uint64_t room(const sl_stream *s)
{
    const sl_runner *rt = rt_of(s);
    uint64_t keep = s->box->output_keep;
    uint64_t mine = kept(s) < keep ? keep - kept(s) : 0;
    uint64_t all = rt->output_bytes < rt->output_cap ? rt->output_cap - rt->output_bytes : 0;
    return mine < all ? mine : all;
}

static int pwrite_all(int fd, const char *data, size_t n, uint64_t off)
{
    while (n > 0) {
        ssize_t w = pwrite(fd, data, n, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? -errno : -EIO;
        data += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

/* Keep n new bytes of output (drop_oldest, or whatever block mode let in). */
static void append(sl_stream *s, const char *data, size_t n)
{
    sl_runner *rt = rt_of(s);
    uint64_t keep = s->box->output_keep;
    /* More than the window holds at once: only its newest part can stay. */
    if (n > keep) {
        drop_to(s, s->end);
        s->dropped += n - keep;
        s->end += n - keep;
        s->base = s->end;
        data += n - keep;
        n = (size_t)keep;
    }
    uint64_t r = room(s);
    if (r < n)
        drop_to(s, s->base + (n - r < kept(s) ? n - r : kept(s)));
    /* The runner-wide cap taken by other streams: what still does not fit is
     * dropped here rather than taken from another sandbox. */
    r = room(s);
    if (r < n) {
        s->dropped += n - r;
        s->end += n - r;
        s->base = s->end;
        data += n - r;
        n = (size_t)r;
    }
    if (n == 0)
        return;
    int rc = s->spool >= 0 ? pwrite_all(s->spool, data, n, s->end) : -EBADF;
    if (rc < 0 && s->spool >= 0 && (kept(s) > 0 || s->base > s->punched)) {
        /* ENOSPC: the filesystem is full; make room from our own. */
        drop_to(s, s->end);
        punch(s, 1);
        rc = pwrite_all(s->spool, data, n, s->end);
    }
    if (rc < 0) {
        sl_debug("sandbox %s: output spool: %s; %zu bytes dropped", s->box->id, strerror(-rc), n);
        s->dropped += n;
        s->end += n;
        s->base = s->end;
        return;
    }
    s->end += n;
    rt->output_bytes += n;
}

/* Append the reply for a read at offset into resp. */
static void pack_output(sl_resp *resp, const sl_stream *s, uint64_t offset, size_t max)
{
    uint64_t start = offset, skipped = 0;
    if (start < s->base) {
        skipped = s->base - start;
        start = s->base;
    }
    if (start > s->end)
        start = s->end;
    size_t n = s->end - start < max ? (size_t)(s->end - start) : max;
    if (s->spool < 0)
        n = 0;
    sl_resp_init(resp);
    sl_r_map(resp, 5);
    sl_r_str(resp, "data");
    (void)msgpack_pack_bin(&resp->pk, n);
    /* Straight from the spool file into the reply, one buffer at a time. */
    for (size_t done = 0; done < n && !resp->failed;) {
        size_t want = n - done < sizeof(iobuf) ? n - done : sizeof(iobuf);
        ssize_t got = pread(s->spool, iobuf, want, (off_t)(start + done));
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            sl_warn("sandbox %s: reading the output spool: %s", s->box->id,
                    got < 0 ? strerror(errno) : "short file");
            resp->failed = 1;
            break;
        }
        (void)msgpack_pack_bin_body(&resp->pk, iobuf, (size_t)got);
        done += (size_t)got;
    }
    /* offset: where the next read should start. */
    sl_r_kint(resp, "offset", (int64_t)(start + n));
    sl_r_kbool(resp, "eof", s->eof && start + n == s->end);
    sl_r_kbool(resp, "truncated", skipped > 0);
    sl_r_kint(resp, "dropped_bytes", (int64_t)skipped);
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

/* Block policy: read the pipe again once readers made room. */
static void resume(sl_stream *s)
{
    if (s->paused && s->ev != NULL && room(s) > 0) {
        s->paused = 0;
        if (event_add(s->ev, NULL) != 0)
            sl_warn("sandbox %s: cannot watch an output pipe again", s->box->id);
    }
}

/* A reader asked for offset: it has everything before it. */
static void consumed_upto(sl_stream *s, uint64_t offset)
{
    if (offset > s->end)
        offset = s->end;
    if (offset <= s->consumed)
        return;
    s->consumed = offset;
    /* What was read need not be kept in block mode: that is the room. */
    if (s->box->output_block)
        drop_to(s, offset);
    resume(s);
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
    sl_hold *h = s->readers;
    while (h != NULL) {
        sl_hold *next = h->next;
        if (s->eof || s->end > h->offset)
            answer(h, s);
        h = next;
    }
}

/* Read what the pipe has (up to limit reads); returns 1 at EOF. force: keep
 * reading past a full window (the sandbox is gone; drop the oldest). */
static int read_some(sl_stream *s, int limit, int force)
{
    for (int i = 0; i < limit; i++) {
        size_t want = sizeof(iobuf);
        if (s->box->output_block && !force) {
            uint64_t r = room(s);
            if (r == 0) {
                /* Full: leave the rest in the pipe; the writer blocks on it. */
                if (s->ev != NULL && !s->paused) {
                    event_del(s->ev);
                    s->paused = 1;
                }
                return 0;
            }
            if (r < want)
                want = (size_t)r;
        }
        ssize_t n = read(s->fd, iobuf, want);
        if (n > 0) {
            append(s, iobuf, (size_t)n);
            continue;
        }
        if (n == 0)
            return 1;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            sl_warn("reading process output: %s", strerror(errno));
            return 1;
        }
        break;
    }
    return 0;
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sl_stream *s = arg;
    if (read_some(s, READS_PER_WAKE, 0)) {
        s->eof = 1;
        close_fd(s);
    }
    wake_readers(s);
}

/* An unnamed file in dir; a named one, unlinked at once, where the
 * filesystem has no O_TMPFILE. */
static int open_spool(const char *dir)
{
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
        return fd < 0 ? -errno : fd;
    char *path = NULL;
    if (asprintf(&path, "%s/.output-XXXXXX", dir) < 0)
        return -ENOMEM;
    fd = mkostemp(path, O_CLOEXEC);
    int err = errno;
    if (fd >= 0)
        unlink(path);
    free(path);
    return fd < 0 ? -err : fd;
}

int sl_stream_open(sl_box *b, sl_stream *s, int fd)
{
    s->box = b;
    /* In the sandboxes dir, not the sandbox's own: a sandbox that fills its
     * disk must still get its output (and the dir is on the disk tmpfs). */
    s->spool = open_spool(b->rt->sandboxes_dir);
    if (s->spool < 0) {
        int err = -s->spool;
        s->spool = -1;
        errno = err;
        return -1;
    }
    s->ev = event_new(b->rt->base, fd, EV_READ | EV_PERSIST, on_readable, s);
    if (s->ev == NULL || event_add(s->ev, NULL) != 0) {
        if (s->ev != NULL)
            event_free(s->ev);
        s->ev = NULL;
        close(s->spool);
        s->spool = -1;
        errno = ENOMEM;
        return -1;
    }
    s->fd = fd;
    return 0;
}

void sl_stream_finish(sl_stream *s)
{
    if (s->box == NULL)
        return;
    if (s->fd >= 0) {
        /* Everything in the sandbox is dead or dying: take what the pipe
         * still holds, then stop. A pipe buffer is small, so this is quick. */
        read_some(s, 1024, 1);
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
    if (s->box != NULL)
        s->box->rt->output_bytes -= kept(s);
    s->base = s->end;
    if (s->spool >= 0) {
        close(s->spool);
        s->spool = -1;
    }
}

int sl_output_parse(sl_box *b, const msgpack_object *body, sl_err *e)
{
    char *policy = NULL;
    int64_t keep;
    b->output_keep = SL_OUTPUT_KEEP;
    b->output_block = 0;
    if (sl_msg_str(body, "output_policy", 0, &policy, e) < 0 ||
        sl_msg_int(body, "output_keep", (int64_t)SL_OUTPUT_KEEP_MIN, (int64_t)SL_OUTPUT_KEEP_MAX,
                   (int64_t)SL_OUTPUT_KEEP, &keep, e) < 0) {
        free(policy);
        return -1;
    }
    b->output_keep = (size_t)keep;
    if (policy != NULL && strcmp(policy, "block") == 0) {
        b->output_block = 1;
    } else if (policy != NULL && strcmp(policy, "drop_oldest") != 0) {
        sl_err_set(e, 400,
                   "field 'output_policy' must be \"drop_oldest\" or \"block\", got \"%.32s\"",
                   policy);
        free(policy);
        return -1;
    }
    free(policy);
    return 0;
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
    if (s->box == NULL) {
        sl_reply_error(r, 500, "process %u has no output stream", p->id);
        return;
    }
    consumed_upto(s, (uint64_t)offset);
    if (s->eof || s->end > (uint64_t)offset || t == 0) {
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
