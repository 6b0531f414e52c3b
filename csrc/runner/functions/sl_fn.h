/* sl_fn.h - remote functions: registered functions, their warm worker pools
 * and their calls (docs/protocol.md section 4).
 *
 * A function owns a FIFO of queued calls and a pool of worker sandboxes. A
 * worker is a hidden sandbox whose entry command serves calls one at a time
 * over its stdin/stdout as length-prefixed frames; the runner keeps up to
 * `pipeline` calls in flight per worker so the pipe never runs dry, and the
 * oldest in-flight call is the one running. A call lives in exactly one list
 * at a time: its function's queue, a worker's in-flight list, a channel's
 * done list, or its function's finished list until it is delivered.
 *
 * Worker frames (both directions): uint32 big-endian length of what follows,
 * then a uint64 big-endian sequence number; runner -> worker the rest is the
 * function spec (seq 0, first frame) or a call's argument blob; worker ->
 * runner a kind byte follows the length ('R' ready, 'O' result, 'E' raised,
 * 'F' could not load the function, 'L' a lease ended), then the sequence
 * number and the payload.
 *
 * Leases (fn_direct.c): a client on the runner's host may take an idle
 * worker for itself. The runner sends that worker a lease frame (payload
 * "\x01<socket name>\n<idle seconds>"); the worker connects to the client's
 * socket in the function's direct dir (bound read-only into every worker at
 * SL_FN_DIRECT_MOUNT) and serves calls there with the same frames, one at a
 * time, until the client closes it or it is idle that long; then it sends
 * 'L' and is an ordinary worker again. While leased the pool dispatches
 * nothing to it and never reaps it; it stays a sandbox of the pool (same
 * limits, killed with the function, by POST .../lease/cancel, or on death).
 */
#ifndef SL_FN_H
#define SL_FN_H

#include "sl_runner.h"

#define SL_FN_ID_LEN 19       /* "fn-" + 16 hex */
#define SL_CALL_ID_MAX 63     /* client-chosen ids: [A-Za-z0-9_.-]{1,63} */
#define SL_FN_MAX_WORKERS 256 /* upper bound of max_workers */
#define SL_FN_PIPELINE 8      /* default calls in flight per worker */
#define SL_FN_IDLE 60.0       /* default idle seconds before a worker is reaped */
#define SL_FN_FRAME_MAX ((size_t)80 << 20)
#define SL_FN_DIRECT_MOUNT "/run/sandlot-direct"

struct sl_fn;
struct sl_worker;
struct sl_chan;

enum sl_cstate { SL_C_QUEUED = 0, SL_C_SENT, SL_C_DONE };

enum sl_cout {
    SL_CO_NONE = 0,
    SL_CO_OK,        /* data: the serialized return value */
    SL_CO_ERROR,     /* data: the worker's description of the exception */
    SL_CO_TIMEOUT,   /* max_timeout_seconds passed; the worker was replaced */
    SL_CO_CANCELLED, /* cancelled queued, or running (worker replaced) */
    SL_CO_CRASHED,   /* the worker died while running it */
    SL_CO_FAILED,    /* no worker could be started / the function did not load */
    SL_CO_EXITED,    /* the runner shut down (stop, restart) before it finished */
};

typedef struct sl_call {
    char id[SL_CALL_ID_MAX + 1];
    struct sl_fn *fn;
    enum sl_cstate state;
    enum sl_cout out;
    uint64_t seq; /* frame sequence number once sent */
    char *args;   /* freed once written to a worker */
    size_t args_len;
    char *data; /* worker payload (result or error description) */
    size_t data_len;
    char *msg; /* runner-side message (timeout, crash, ...) */
    double submitted_at, started_at, finished_at;
    int attached;         /* submitted by .../call: abandoned when its request is gone */
    struct sl_chan *chan; /* batch calls: completion goes to this channel */
    struct sl_worker *worker;
    sl_hold *waiters;
    struct sl_call *hnext;       /* id hash */
    struct sl_call *prev, *next; /* the one list it is on */
    struct sl_clist *list;
} sl_call;

typedef struct sl_clist {
    sl_call *head, *tail;
    size_t n;
} sl_clist;

enum sl_wstate { SL_W_STARTING = 0, SL_W_READY, SL_W_GONE };

typedef struct sl_worker {
    struct sl_fn *fn;
    char box_id[SL_ID_LEN + 1];
    sl_box *box; /* check with sl_fn_worker_box(): it may be gone */
    int in_fd, out_fd;
    struct event *rev, *wev, *timer;
    struct evbuffer *to, *from;
    enum sl_wstate state;
    int leased; /* serving a client's direct socket (fn_direct.c) */
    sl_clist inflight;
    uint64_t served;
    double started_at, idle_since;
    struct sl_worker *prev, *next;
} sl_worker;

typedef struct sl_fn {
    char id[SL_FN_ID_LEN + 1];
    char *name;
    char *spec; /* opaque: the first frame every worker gets */
    size_t spec_len;
    char **cmd;
    size_t ncmd;
    char *image;
    char *workdir;
    sl_kv *env;
    size_t nenv;
    sl_kv *mounts; /* read-only binds: k = path inside, v = host path */
    size_t nmounts;
    double call_timeout; /* 0: none */
    double idle_timeout;
    size_t max_workers, min_workers, pipeline;
    int fresh;  /* one worker per call, then it is discarded */
    char *opts; /* raw msgpack map of stored options, echoed in info */
    size_t opts_len;
    char *direct_dir; /* host dir of direct sockets, bound into workers; NULL: none */
    char *s3;         /* raw msgpack "s3_mounts" (s3.c): holds credentials, never echoed */
    size_t s3_len;
    sl_kv *annotations;
    size_t nannotations;
    sl_clist queue, finished;
    sl_worker *workers;
    size_t nworkers, nstarting;
    uint64_t next_seq;
    uint64_t ncalls, nok, nerr;
    unsigned start_failures; /* consecutive */
    double created_at, last_used;
    int deleted;
    struct sl_fn *next;
} sl_fn;

typedef struct sl_chan {
    char id[SL_CALL_ID_MAX + 1];
    sl_clist done;
    size_t pending;
    sl_hold *waiters;
    double last_used;
    struct sl_chan *next;
} sl_chan;

/* fn_registry.c */
sl_runner *sl_fn_rt(void);
sl_fn *sl_fn_find(const char *id);
/* A registration body into f (not yet listed); 0, or -1 with e set. */
int sl_fn_parse(sl_runner *rt, sl_fn *f, const msgpack_object *body, sl_err *e);
void sl_fn_free(sl_fn *f); /* one that is on no list */
/* Parse body into a new listed function with this id (NULL: a new random
 * one) and creation time; NULL with e set. */
sl_fn *sl_fn_add(sl_runner *rt, const char *id, const msgpack_object *body, double created_at,
                 sl_err *e);
sl_fn *sl_fn_first(void);
void sl_fn_touch(sl_fn *f);
void sl_h_fn_create(sl_req *r);
void sl_h_fn_list(sl_req *r);
void sl_h_fn_get(sl_req *r);
void sl_h_fn_delete(sl_req *r);
void sl_fn_shutdown(sl_runner *rt);

/* fn_persist.c: registrations kept in <state>/functions across restarts */
int sl_fn_persist_save(sl_runner *rt, const sl_fn *f, const msgpack_object *body, sl_err *e);
void sl_fn_persist_forget(sl_runner *rt, const sl_fn *f); /* deleted or forgotten */
void sl_fn_persist_load(sl_runner *rt);                   /* at start */

/* fn_profiles.c */
void sl_h_profile_create(sl_req *r);
void sl_h_profile_list(sl_req *r);
void sl_h_profile_delete(sl_req *r);
/* Fill the image and env defaults of f from body's profile_ids/profile_names. */
int sl_fn_apply_profiles(sl_fn *f, const msgpack_object *body, sl_err *e);
void sl_fn_profiles_shutdown(void);

/* fn_pool.c */
void sl_fn_pump(sl_fn *f); /* dispatch queued calls, start workers */
void sl_fn_cancel_sent(sl_call *c);
void sl_fn_reap_idle(sl_fn *f, double now);
void sl_fn_retire_all(sl_fn *f);
void sl_fn_drop_workers(sl_fn *f); /* shutdown: free without touching boxes */
sl_box *sl_fn_worker_box(sl_worker *w);
/* Lease an idle ready worker to the client socket `name` in f->direct_dir:
 * 0 with its sandbox id in box_id, or -1 with e set (409: none idle). */
int sl_fn_lease(sl_fn *f, const char *name, char box_id[SL_ID_LEN + 1], sl_err *e);
/* Kill the leased worker box_id (a direct call cancelled): 1 if it was. */
int sl_fn_lease_kill(sl_fn *f, const char *box_id);
void sl_fn_pack_workers(sl_resp *r, const sl_fn *f);

/* fn_direct.c */
/* Create f's direct dir under the state dir (best effort: no dir, no
 * leases) and remove it with its leftover sockets. */
void sl_fn_direct_init(sl_runner *rt, sl_fn *f);
void sl_fn_direct_free(sl_fn *f);
void sl_h_fn_lease(sl_req *r);
void sl_h_fn_lease_cancel(sl_req *r);

/* fn_calls.c */
void sl_clist_push(sl_clist *l, sl_call *c);
void sl_clist_push_front(sl_clist *l, sl_call *c);
void sl_clist_remove(sl_call *c);
sl_call *sl_call_find(const char *id);
/* Record the outcome (takes data/msg ownership), deliver or park it. */
void sl_call_finish(sl_call *c, enum sl_cout out, char *data, size_t data_len, char *msg);
void sl_call_fail(sl_call *c, enum sl_cout out, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void sl_calls_sweep(sl_fn *f, double now);
void sl_chans_sweep(double now);
void sl_calls_free_fn(sl_fn *f);
void sl_calls_shutdown(void);
void sl_h_fn_call(sl_req *r);
void sl_h_fn_calls(sl_req *r);
void sl_h_call_wait(sl_req *r);
void sl_h_calls_cancel(sl_req *r);
void sl_h_chan_wait(sl_req *r);

#endif
