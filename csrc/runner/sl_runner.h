/* sl_runner.h - sandlotd's shared state and the interfaces between its files.
 *
 * One event loop owns everything below; nothing here is thread-safe and
 * nothing needs to be. Life of a sandbox (sl_box):
 *   create -> running -> (entry exit | timeout | terminate | init died)
 *   -> killed -> init reaped (finalised: every process has an exit code, every
 *   held request answered, cgroup released, per-sandbox dir removed)
 *   -> kept for output reads until terminate or SL_RETENTION -> freed.
 * Terminate hides the record at once (later calls get 404) and frees it when
 * init has been reaped.
 */
#ifndef SL_RUNNER_H
#define SL_RUNNER_H

#include <stdint.h>
#include <spawn.h>
#include <sys/types.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <msgpack.h>

#include "sl_msg.h"
#include "sl_sandbox.h"

#define SL_OUTPUT_KEEP ((size_t)8 << 20)        /* default bytes kept per stream */
#define SL_OUTPUT_KEEP_MIN ((size_t)64 << 10)   /* smallest output_keep */
#define SL_OUTPUT_KEEP_MAX ((size_t)1 << 30)    /* largest output_keep */
#define SL_OUTPUT_CAP ((uint64_t)2 << 30)       /* default --output-cap */
#define SL_OUTPUT_DEFAULT_MAX ((size_t)1 << 20) /* default max_bytes of an output read */
#define SL_OUTPUT_MAX ((size_t)64 << 20)        /* largest max_bytes honoured */
#define SL_POLL_CAP 30.0                        /* long-poll cap, seconds */
#define SL_FILE_MAX ((size_t)64 << 20)          /* files/read limit */
#define SL_STDIN_MAX ((size_t)64 << 20)         /* stdin bytes buffered per process */
#define SL_RETENTION 600.0                      /* default: keep ended sandboxes this long */
#define SL_MAX_PROCS 4096                       /* processes per sandbox, ever */
#define SL_TIMEOUT_DEFAULT 300.0
#define SL_TIMEOUT_MAX 86400.0
#define SL_ID_LEN 19 /* "sb-" + 16 hex */

/* --snapshot-storage: "auto" becomes erofs where the host can mount an
 * erofs image file, dir otherwise (resolved in sl_snap_init). */
enum sl_snap_storage { SL_SNAP_STORAGE_AUTO = 0, SL_SNAP_STORAGE_DIR, SL_SNAP_STORAGE_EROFS };

struct sl_runner;
struct sl_box;
typedef struct sl_netbox sl_netbox;     /* net.c: a sandbox's network options and address */
typedef struct sl_netstate sl_netstate; /* net.c: the pool and the nftables table */
typedef struct sl_tunnel sl_tunnel;     /* tunnel.c: one listed port on a loopback port */
struct sl_proc;
struct sl_hold;

/* ---- held (long-poll) requests: http.c ---- */

typedef void (*sl_hold_fn)(struct sl_hold *h);

/* An HTTP request answered later. It sits on one owner list (a sandbox's
 * waiters, a stream's readers, ...) and on the runner's list of every hold,
 * which is how a closing client connection finds the holds it must drop. */
typedef struct sl_hold {
    struct sl_runner *rt;
    struct evhttp_request *req;
    struct evhttp_connection *conn;
    struct event *timer;           /* NULL: no timeout */
    struct event *watch;           /* client socket readable: it hung up */
    struct sl_hold *gprev, *gnext; /* rt->holds */
    struct sl_hold *prev, *next;   /* owner list */
    struct sl_hold **head;         /* owner list head */
    sl_hold_fn on_timeout;         /* must answer the hold */
    void *obj;                     /* what it waits on (owner-defined) */
    int stream;                    /* output: 0 stdout, 1 stderr */
    uint64_t offset;               /* output: requested offset */
    size_t max_bytes;              /* output: limit */
} sl_hold;

/* A request while its handler runs. Handlers answer it (sl_reply*), or turn it
 * into a hold (sl_hold_new); either clears r->ev. */
typedef struct sl_req {
    struct sl_runner *rt;
    struct evhttp_request *ev;
    const msgpack_object *body; /* always a map (empty body = {}) */
    const char *p[2];           /* path parameters ({id}, {n} / {name}) */
} sl_req;

typedef void (*sl_handler)(sl_req *r);

/* ---- per process output: output.c ---- */

/* Output goes from the pipe straight into a spool file in the sandbox's dir
 * (so it counts against its disk limit, and not against the runner's
 * memory); the file's offsets are the stream's absolute offsets, and dropped
 * output is a punched hole before base. */
typedef struct sl_stream {
    int fd;           /* read end of the pipe, -1 once closed */
    struct event *ev; /* read event while fd is open */
    struct sl_box *box;
    int spool;         /* the spool file (O_TMPFILE in the sandbox dir), -1 once released */
    uint64_t base;     /* first byte still kept; everything before was dropped */
    uint64_t punched;  /* the file is a hole up to here (<= base, punched in steps) */
    uint64_t end;      /* bytes received so far */
    uint64_t consumed; /* highest offset a reader asked for: what it already has */
    uint64_t dropped;  /* bytes dropped before any reader had them */
    int eof;
    int paused;       /* the "block" policy stopped reading the pipe (window full) */
    sl_hold *readers; /* held output requests */
} sl_stream;

enum sl_pstate { SL_P_STARTING = 0, SL_P_RUNNING = 1, SL_P_EXITED = 2 };

typedef struct sl_proc {
    uint32_t id; /* 0 = entry command */
    struct sl_box *box;
    char **cmd;
    size_t ncmd;
    enum sl_pstate state;
    int exit_code; /* valid once SL_P_EXITED */
    pid_t pid;     /* pid inside the sandbox, 0 before STARTED */
    sl_stream out[2];
    int in_fd;               /* write end of stdin, -1 once closed */
    struct event *in_ev;     /* write event while data is pending */
    struct evbuffer *in_buf; /* stdin bytes not yet accepted by the pipe */
    int in_close_requested;  /* close in_fd once in_buf drains */
    sl_hold *start;          /* create/exec waiting for STARTED / SPAWN_FAILED */
    sl_hold *waiters;        /* procs/{n}/wait */
    int oom_killed;          /* its SIGKILL came from the OOM killer (limits.c) */
} sl_proc;

enum sl_bstatus {
    SL_B_RUNNING = 0,
    SL_B_EXITED,
    SL_B_TIMEOUT,
    SL_B_TERMINATED,
    SL_B_FAILED,
};

typedef struct sl_box {
    char id[SL_ID_LEN + 1];
    struct sl_runner *rt;
    /* configuration as requested (secrets stay out of everything listed) */
    char **cmd;
    size_t ncmd;
    char *image;
    char *workdir;
    sl_kv *env;
    size_t nenv;
    sl_kv *secrets;
    size_t nsecrets;
    sl_kv *volumes; /* k = mount path, v = volume name */
    size_t nvolumes;
    char *snapshot; /* restored from this snapshot id (snapshot.c), or NULL */
    double timeout;
    double created_at;
    double finished_at; /* 0 while running */
    char *dir;          /* <state>/sandboxes/<id> */
    /* the sandbox itself */
    sl_sandbox sbx;
    int alive;              /* init not reaped yet */
    int dir_made;           /* dir exists and must be removed */
    struct event *ctl_ev;   /* ctl channel readable */
    unsigned ctl_warnings;  /* bad control messages logged (rate limit) */
    struct event *timer;    /* timeout while running, then retention */
    enum sl_bstatus status; /* shown status; RUNNING until finalised */
    enum sl_bstatus ending; /* why it is ending, once killed */
    int killed;             /* sl_sandbox_kill called */
    int finalised;          /* all processes ended, holds answered */
    int hidden;             /* terminated or failed create: not listed */
    int has_exit;
    int exit_code;
    struct sl_proc **procs; /* index = process id; NULL slots for failed spawns */
    size_t nprocs;
    size_t capprocs;
    sl_hold *waiters;           /* sandbox wait */
    struct sl_box *hnext;       /* id hash chain */
    struct sl_box *pnext;       /* init pid hash chain */
    int pid_hashed;             /* in rt->pbuckets */
    pid_t hashed_pid;           /* the init pid it is hashed under (init_pid may be reset first) */
    struct sl_box *prev, *next; /* creation order, all boxes */
    /* resources (limits.c): 0 fields = no limit */
    int has_resources;
    double res_cpu;                /* cores, as asked */
    sl_cgroup_limits limits;       /* memory, pids, cpu quota for the cgroup */
    unsigned long long disk_bytes; /* size of the writable layer's tmpfs */
    unsigned gpu_want;             /* GPUs asked for (gpu.c) */
    char *gpu_type;                /* of this type ("" any), or NULL */
    int gpu_held;                  /* devices claimed: owner == id in rt->gpus */
    struct sl_hold *gpu_term;      /* terminate answered once the GPUs are free */
    long long oom_seen;            /* OOM kills already attributed to a process */
    long long oom_kills;           /* the cgroup's OOM kill count when init was reaped */
    struct sl_s3 *s3;              /* S3 buckets mounted with s3fs (s3.c) */
    size_t ns3;
    sl_netbox *net;     /* "network"/"ports" (net.c); NULL: lo only, the default */
    size_t output_keep; /* bytes of output kept per stream (output.c) */
    int output_block;   /* policy when full: 1 block the writer, 0 drop the oldest */
    /* microVM tier (vm/vm_box.c) */
    int microvm;                   /* isolation "microvm": sbx.init_pid is the VM monitor */
    char *vm_restore;              /* memory snapshot dir to resume, or NULL */
    unsigned long long vm_mem_mb;  /* guest RAM (resources.memory; default 256) */
    unsigned vm_vcpus;             /* vCPUs (resources.cpu rounded up; default 1) */
    struct sl_hold *vm_snap_hold;  /* the snapshot request waiting for SNAPSHOT_DONE */
    struct sl_vmsnap *vm_snap;     /* that capture's state (vm_box.c) */
    struct sl_hold *vm_ready_hold; /* create without a command: answered at READY */
    char *vm_error;                /* the monitor's reason when the VM did not come up */
} sl_box;

/* ---- resource limits: limits.c ---- */

int sl_limits_parse(sl_box *b, const msgpack_object *body, sl_err *e); /* body "resources" */
/* The "resources" of stored function options (raw msgpack map) for a worker. */
int sl_limits_from_opts(sl_box *b, const char *opts, size_t len, sl_err *e);
const sl_cgroup_limits *sl_limits_cgroup(const sl_box *b); /* NULL: none */
void sl_limits_proc_exited(sl_proc *p, int exit_code);     /* OOM attribution of a -9 */
void sl_limits_box_reaped(sl_box *b); /* keep the OOM count before the cgroup goes */
int sl_limits_box_oom(const sl_box *b);
void sl_limits_pack(sl_resp *r, const sl_box *b);                   /* SandboxInfo "resources" */
void sl_limits_pack_health(sl_resp *r, const struct sl_runner *rt); /* health "limits" */

/* ---- network: net.c, tunnel.c ---- */

#define SL_NET_POOL_DEFAULT "10.200.0.0/16"
/* Runner start: the address pool and the nftables table (a missing nftables
 * only makes network requests fail). -1 on a bad pool or no memory. */
int sl_net_init(struct sl_runner *rt, const char *pool);
void sl_net_shutdown(struct sl_runner *rt);                               /* delete the table */
int sl_net_parse(sl_box *b, const msgpack_object *body, sl_err *e);       /* "network", "ports" */
int sl_net_from_opts(sl_box *b, const char *opts, size_t len, sl_err *e); /* workers */
/* Before spawn: address, nft elements, allocation lock held. */
int sl_net_prepare(sl_box *b, sl_err *e);
const sl_net_config *sl_net_config_of(const sl_box *b); /* NULL: lo only */
int sl_net_spawned(sl_box *b, sl_err *e);               /* after spawn: unlock, open the tunnels */
void sl_net_stop(sl_box *b);    /* the sandbox is ending: close its tunnels */
void sl_net_release(sl_box *b); /* tunnels, nft elements, address; idempotent */
void sl_net_free(sl_box *b);
void sl_net_pack(sl_resp *r, const sl_box *b); /* SandboxInfo "network" */
void sl_net_pack_health(sl_resp *r, const struct sl_runner *rt);
void sl_h_tunnels(sl_req *r);
int sl_tunnels_open(sl_box *b, uint32_t addr, const uint16_t *ports, size_t nports,
                    sl_tunnel **list, sl_err *e);
void sl_tunnels_close(sl_tunnel **list);
void sl_tunnels_pack(sl_resp *r, const sl_tunnel *list);

/* ---- S3 buckets mounted with s3fs: s3.c ---- */

int sl_s3_parse(sl_box *b, const msgpack_object *body, sl_err *e); /* body "s3_mounts" */
/* Function registration: check body "s3_mounts" and keep it as raw msgpack
 * (*raw NULL if absent; it holds credentials: wipe before freeing, never echo). */
int sl_s3_pack(const msgpack_object *body, char **raw, size_t *len, sl_err *e);
int sl_s3_from_raw(sl_box *b, const char *raw, size_t len, sl_err *e); /* for a worker */
/* Mount every bucket under b->dir (blocks, bounded) and fill binds[0..ns3). */
int sl_s3_mount(sl_box *b, sl_bind *binds, sl_err *e);
void sl_s3_release(sl_box *b); /* unmount, stop s3fs, wipe credentials; idempotent */

/* ---- background children: jobs.c ---- */

typedef void (*sl_job_done_fn)(struct sl_runner *rt, void *arg, int status, const char *err);

typedef struct sl_job {
    pid_t pid;
    int err_fd; /* child's stderr (for cp), -1 if none */
    struct event *err_ev;
    char err[1024]; /* first bytes of its stderr */
    size_t err_len;
    sl_job_done_fn done; /* NULL for fire-and-forget jobs */
    void *arg;
    struct sl_job *next;
} sl_job;

/* An image registration in flight. */
typedef struct sl_copy {
    char name[64];
    char *tmp; /* <state>/images/.tmp-<name>-<rand> */
    sl_hold *hold;
    struct sl_copy *next;
} sl_copy;

/* Initial buckets of the id and init-pid hash tables; they double whenever
 * they hold more boxes than buckets, so lookups stay O(1) at 10,000 boxes. */
#define SL_HASH_BUCKETS 256

typedef struct sl_listener {
    struct sl_runner *rt;
    int tcp; /* requests need the bearer token */
} sl_listener;

typedef struct sl_runner {
    struct event_base *base;
    struct evhttp *http_unix;
    struct evhttp *http_tcp;
    sl_listener l_unix, l_tcp;
    struct evhttp_bound_socket *bound_unix, *bound_tcp;
    char *socket_path;
    char *socket_dir;
    char *state_dir;
    char *log_path; /* NULL: stderr */
    char *log_dir;
    char *pidfile;
    char *images_dir;
    char *volumes_dir;
    char *sandboxes_dir;
    /* Ids of the sandboxes an earlier runner on this state dir had when it
     * exited (sweep.c), sorted: a request for one is told it was lost. */
    char **lost_ids;
    size_t nlost;
    int lock_fd; /* flock on <state>/lock: one runner per state dir */
    char *token; /* TCP bearer token */
    size_t token_len;
    int init_memfd;
    int userns; /* not root: every sandbox gets a user namespace (rootless mode) */
    char runner_id[24];
    double started_at;
    int shutting_down;
    size_t max_sandboxes;
    int snap_storage; /* SL_SNAP_STORAGE_*: how snapshot layers are stored (snapshot.c) */
    unsigned long long pull_max_bytes; /* --pull-max-bytes: unpacked bytes per pulled image */
    double retention;                  /* seconds an ended sandbox stays listed */
    sl_box **buckets;                  /* by id (hnext), nbuckets of them */
    size_t nbuckets;
    size_t nhashed;    /* boxes in buckets */
    sl_box **pbuckets; /* live boxes and pool shells by init pid (pnext) */
    size_t npbuckets;
    size_t npids;
    uint64_t output_cap;   /* --output-cap: output kept in spool files, all streams together */
    uint64_t output_bytes; /* kept now (output.c) */
    sl_box *first, *last;
    size_t nvisible; /* listed sandboxes */
    size_t nalive;   /* sandboxes whose init is not reaped */
    sl_hold *holds;
    sl_job *jobs;
    sl_copy *copies;
    sl_netstate *net;     /* net.c */
    size_t pool_target;   /* --pool: pre-set-up sandboxes to keep (pool.c) */
    struct sl_pool *pool; /* pool.c */
    /* microVM tier (vm/vm_box.c) */
    int default_microvm;      /* --default-isolation microvm */
    char *vm_guest_dir;       /* --microvm-dir: kernel, initramfs, host-root image */
    int vm_ok;                /* microVMs can run (accel chosen) */
    const char *vm_accel;     /* "kvm" or "tcg" */
    const char *vm_qemu;      /* qemu-system-x86_64 */
    char vm_why[512];         /* what is missing (vm_ok 0), or a note (tcg fallback) */
    unsigned long vm_tsc_khz; /* tcg: host TSC rate passed to guests (vm_probe.c) */
    /* GPUs given with --gpu (sandboxes/gpu.c) */
    struct sl_gpu *gpus;
    size_t ngpus;
} sl_runner;

/* ---- GPUs handed to sandboxes: sandboxes/gpu.c ---- */
typedef struct sl_gpu {
    char *path;                /* its character device, e.g. /dev/nvidia0 */
    char *type;                /* "A100" as given after '=', or "" */
    char owner[SL_ID_LEN + 1]; /* the sandbox holding it, "" when free */
} sl_gpu;
int sl_gpu_add(sl_runner *rt, const char *spec); /* --gpu PATH[=TYPE] | auto; -1 logged */
void sl_gpu_free_all(sl_runner *rt);
int sl_gpu_parse(sl_box *b, const msgpack_object *v, const char *field, sl_err *e);
int sl_gpu_claim(sl_box *b, sl_err *e); /* before spawn: 503 when not enough are free */
void sl_gpu_release(sl_box *b);         /* idempotent */
size_t sl_gpu_nbinds(const sl_box *b);  /* at most this many device binds */
size_t sl_gpu_binds(const sl_box *b, sl_bind *out);
void sl_gpu_pack_box(sl_resp *r, const sl_box *b);        /* resources "gpu" */
void sl_gpu_pack_health(sl_resp *r, const sl_runner *rt); /* health limits "gpus" */

/* ---- microVM tier: vm/vm_box.c ---- */
void sl_vm_runner_init(sl_runner *rt);                             /* probe; logs what it found */
int sl_vm_parse(sl_box *b, const msgpack_object *body, sl_err *e); /* body "isolation" */
int sl_vm_start_box(sl_box *b, sl_err *e);                         /* start_box for a microVM */
void sl_vm_snapshot_req(sl_req *r, sl_box *b);                     /* POST .../snapshot */
void sl_vm_snapshot_done(sl_box *b, int err, const char *msg);     /* monitor's answer */
void sl_vm_box_ended(sl_box *b);                                   /* init reaped: fail holds */
void sl_vm_ready(sl_box *b);                                       /* guest up: answer create */
void sl_vm_failed(sl_box *b, const char *why);                     /* monitor's last words */
void sl_pack_box_reply(sl_resp *r, const sl_box *b);               /* {"sandbox": box} */
void sl_vm_pack_health(sl_resp *r, const sl_runner *rt);           /* health "microvm" */

/* ---- util.c ---- */
double sl_now(void);                              /* unix time */
double sl_mono(void);                             /* monotonic seconds */
int sl_random_hex(char *out, size_t nhex);        /* nhex hex chars + NUL; 0 or -errno */
int sl_name_valid(const char *s);                 /* [A-Za-z0-9][A-Za-z0-9_.-]{0,62} */
char *sl_path_join(const char *a, const char *b); /* NULL on ENOMEM */
int sl_mkdir_p(const char *path, mode_t mode);    /* 0 or -errno */
int sl_exit_code(int wait_status);                /* WEXITSTATUS or -WTERMSIG */
struct timeval sl_tv(double seconds);
int sl_path_abs_clean(const char *p); /* absolute, no "." / ".." components */

/* ---- http.c ---- */
int sl_http_start(sl_runner *rt, const char *listen_addr);
void sl_http_free(sl_runner *rt);
void sl_reply(sl_req *r, int status, sl_resp *resp);
void sl_reply_err(sl_req *r, const sl_err *e);
void sl_reply_error(sl_req *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Hold r on *list; answered by on_timeout after timeout seconds (< 0: never).
 * Returns NULL after answering r with 500 if memory ran out. */
sl_hold *sl_hold_new(sl_req *r, sl_hold **list, double timeout, sl_hold_fn on_timeout, void *obj);
void sl_hold_reply(sl_hold *h, int status, sl_resp *resp);
void sl_hold_error(sl_hold *h, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- api.c ---- */
void sl_api_dispatch(sl_req *r, enum evhttp_cmd_type method, const char *path);

/* ---- registry.c ---- */
sl_box *sl_box_new(sl_runner *rt); /* fresh id, not yet registered */
void sl_box_free(sl_box *b);
void sl_reg_add(sl_runner *rt, sl_box *b);
void sl_reg_hide(sl_runner *rt, sl_box *b); /* id lookups fail from now on */
void sl_reg_unlink(sl_runner *rt, sl_box *b);
sl_box *sl_reg_find(sl_runner *rt, const char *id);
sl_box *sl_reg_find_init(sl_runner *rt, pid_t pid); /* O(1): the init pid hash */
int sl_reg_init(sl_runner *rt);                     /* 0 or -ENOMEM */
void sl_reg_pid_add(sl_runner *rt, sl_box *b);      /* once init_pid is set (alive) */
void sl_reg_pid_del(sl_runner *rt, sl_box *b);      /* when init is reaped; idempotent */
sl_proc *sl_proc_new(sl_box *b);                    /* next process id; NULL on ENOMEM/limit */
sl_proc *sl_box_proc(sl_box *b, const char *n);
void sl_proc_drop(sl_proc *p); /* remove from its box and free */
void sl_proc_free(sl_proc *p);

/* ---- info.c ---- */
const char *sl_box_status_name(enum sl_bstatus s);
void sl_pack_box(sl_resp *r, const sl_box *b);
void sl_pack_proc(sl_resp *r, const sl_proc *p);

/* ---- lifecycle.c ---- */
void sl_h_create(sl_req *r);
void sl_h_list(sl_req *r);
void sl_h_get(sl_req *r);
void sl_h_wait(sl_req *r);
void sl_h_terminate(sl_req *r);
sl_box *sl_req_box(sl_req *r);                   /* box for r->p[0]; answers 404 and returns NULL */
void sl_box_end(sl_box *b, enum sl_bstatus why); /* kill; idempotent */
void sl_box_finalise(sl_box *b);                 /* every process ended, every hold answered */
void sl_box_entry_started(sl_box *b);
void sl_box_entry_failed(sl_box *b, const char *msg);
void sl_box_init_reaped(sl_box *b, int wait_status);
void sl_lifecycle_shutdown(sl_runner *rt);
/* At start: remove the dirs, cgroups and mounts of sandboxes of an earlier
 * runner on this state dir (sweep.c). */
void sl_sweep_sandboxes(sl_runner *rt);
/* At shutdown: record the sandboxes ending with this runner as lost for
 * the next one (a restart). */
void sl_sweep_note_shutdown(sl_runner *rt);
/* 1 if id names a sandbox swept at start (see sl_runner.lost_ids). */
int sl_sweep_was_lost(const sl_runner *rt, const char *id);
/* Start a caller-filled box without a request (function workers); 0 or -1
 * with e set, the box then being freed or abandoned. */
int sl_box_launch(sl_box *b, int hidden, const sl_bind *binds, size_t nbinds, sl_err *e);
/* The create request's own fields into b (cmd, image, snapshot, env,
 * secrets, workdir, timeout, resources, network, volumes); builds nothing.
 * 0, or -1 with e set. Also the libFuzzer target's entry (tests/c). */
int sl_box_parse_create(sl_box *b, const msgpack_object *body, sl_err *e);

/* Start a default sandbox (image "host", nothing else) for the pool without
 * waiting for its init: sl_sandbox_spawn_start. 0, or -1 with e set and the
 * box freed. */
int sl_box_start_shell(sl_box *b, const sl_bind *binds, size_t nbinds, sl_err *e);
void sl_box_drop_pidfd(sl_box *b); /* after a complete spawn: kill by pid (lifecycle.c) */

/* ---- pool.c: pre-set-up sandboxes for default creates ---- */
int sl_pool_start(sl_runner *rt); /* fill the pool (in the loop); 0 or -1 */
/* If b's request can use a pre-set-up sandbox (default options: image
 * "host", no snapshot, volumes, S3, limits, disk or network, and the
 * pool's set of read-only mounts), make b that sandbox (id, dir, init) and
 * return 1; 0: start b afresh (its mount set becomes the pool's). */
int sl_pool_take(sl_box *b, const sl_kv *mounts, size_t nmounts);
int sl_pool_reaped(sl_runner *rt, sl_box *b, int wait_status); /* 1: b was a pool shell */
size_t sl_pool_count(const sl_runner *rt);                     /* shells alive in the pool */
void sl_pool_shutdown(sl_runner *rt); /* kill, reap and remove every shell */
/* {"size": --pool, "shells": in the pool now, "taken": creates served from it,
 *  "mounts": size of the mount set it keeps shells for} */
void sl_pool_pack_health(sl_resp *r, const sl_runner *rt);

/* ---- ctlchan.c ---- */
int sl_ctl_watch(sl_box *b);  /* start reading the box's control channel */
void sl_ctl_drain(sl_box *b); /* handle whatever is queued, then stop watching */

/* ---- exec.c ---- */
/* Send SPAWN for p (pipes, SCM_RIGHTS). The answer arrives on the channel. */
int sl_proc_launch(sl_proc *p, const char *cwd, char *const *argv, char *const *envp, sl_err *e);
/* The environment of a process: defaults, the sandbox's env and secrets, then
 * extra (exec's env). NULL-terminated "K=V"; free with sl_env_free (wipes). */
char **sl_env_build(const sl_box *b, const sl_kv *extra, size_t nextra);
/* Refuse (400) an entry command whose argv and environment would not fit
 * one SPAWN message, before anything is built for it. */
int sl_spawn_fits(const sl_box *b, const char *cwd, char *const *argv, sl_err *e);
void sl_env_free(char **envp);
void sl_proc_started(sl_proc *p, pid_t pid);
void sl_proc_spawn_failed(sl_proc *p, int err, const char *what);
void sl_proc_exited(sl_proc *p, int wait_status);
void sl_proc_finish(sl_proc *p, int exit_code); /* mark ended, answer waiters */
void sl_proc_close_stdin(sl_proc *p);
void sl_h_exec(sl_req *r);
void sl_h_procs(sl_req *r);
void sl_h_proc(sl_req *r);
void sl_h_proc_wait(sl_req *r);
void sl_h_stdin(sl_req *r);
void sl_h_signal(sl_req *r);

/* ---- output.c ---- */
/* "output_policy" ("drop_oldest", "block") and "output_keep" (bytes) of a
 * create body; defaults without them. */
int sl_output_parse(sl_box *b, const msgpack_object *body, sl_err *e);
int sl_stream_open(sl_box *b, sl_stream *s, int fd);
void sl_stream_finish(sl_stream *s); /* read what is left, EOF, answer readers */
void sl_stream_free(sl_stream *s);
void sl_h_output(sl_req *r);

/* ---- files.c ---- */
void sl_h_file_read(sl_req *r);
void sl_h_file_write(sl_req *r);

/* ---- store.c ---- */
int sl_store_init(sl_runner *rt);
int sl_store_rootfs(sl_runner *rt, const char *image, char **rootfs, sl_err *e);
int sl_store_volume(sl_runner *rt, const char *name, char **path, sl_err *e);
void sl_h_images(sl_req *r);
void sl_h_image_add(sl_req *r);
void sl_h_image_delete(sl_req *r);
void sl_h_volumes(sl_req *r);
void sl_h_volume_add(sl_req *r);
void sl_h_volume_delete(sl_req *r);
void sl_store_shutdown(sl_runner *rt);

/* ---- jobs.c ---- */
/* posix_spawnattr for a runner child: empty signal mask, default dispositions
 * for the signals the runner handles, plus extra_flags (e.g. POSIX_SPAWN_SETSID).
 * Returns 0 or an errno value; the caller destroys attr either way (glibc's
 * posix_spawnattr_init cannot fail). */
int sl_spawnattr_init(posix_spawnattr_t *attr, short extra_flags);
/* Run argv in a child; done(rt, arg, wait_status, stderr_text) when it exits. */
int sl_job_run(sl_runner *rt, char *const argv[], sl_job_done_fn done, void *arg);
/* Read j->err_fd (a pipe from the child's stderr) into j->err as it comes. */
void sl_job_watch_err(sl_runner *rt, sl_job *j);
/* Remove path (sl_rm_rf) in a child so a large tree never stalls the loop. */
int sl_job_rm(sl_runner *rt, const char *path);
/* Fork a child that runs fn(fn_arg) (its return value is the exit status)
 * with only keep_fd (as fd 3, -1: none) beyond stdio; done() when it exits.
 * The child's pid, or -1. */
pid_t sl_job_fork(sl_runner *rt, int keep_fd, int (*fn)(void *), void *fn_arg, sl_job_done_fn done,
                  void *arg);
int sl_jobs_reaped(sl_runner *rt, pid_t pid, int status); /* 1 if pid was a job */
void sl_jobs_add(sl_runner *rt, sl_job *j);               /* a child forked by the caller */

/* ---- durable stores: storage/durable.c ---- */

int sl_fsync_path(const char *path);   /* fsync a file or dir; 0 or -errno */
int sl_fsync_parent(const char *path); /* fsync the dir holding path */
int sl_fsync_tree(const char *path);   /* every file and dir below path (blocking) */
/* sl_fsync_tree in a child job; done(rt, arg, wait_status, "") when it ends. */
int sl_job_fsync_tree(sl_runner *rt, const char *path, sl_job_done_fn done, void *arg);
/* path.tmp, fsync, rename to path, fsync the dir. */
int sl_write_durable(const char *path, const void *data, size_t len);
/* Test-only: _exit(86) here if SANDLOT_TEST_FAULT names this point. */
void sl_fault(const char *point);
void sl_jobs_shutdown(sl_runner *rt); /* wait for every job */

#endif
