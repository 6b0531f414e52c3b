/* main.c - sandlotd: command line, daemonising, signals and the event loop.
 *
 *   sandlotd --socket PATH --state-dir DIR [--init PATH] [--listen HOST:PORT]
 *            [--token-file FILE] [--log-file FILE] [--log-level LEVEL]
 *            [--pidfile FILE] [--max-sandboxes N] [--retention SECONDS] [--daemon]
 *            [--net-pool CIDR] [--pull-max-bytes N]
 *            [--pool N] [--output-cap BYTES]
 *   sandlotd --version
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sl_common.h"
#include "sl_fn.h" /* sl_fn_persist_load */
#include "sl_log.h"
#include "sl_oci.h"
#include "sl_runner.h"
#include "sl_userns.h"

#define DEFAULT_MAX_SANDBOXES 1000
/* Pre-set-up sandboxes kept ready for default creates (pool.c). */
#define DEFAULT_POOL 2
#define MAX_POOL 64

typedef struct opts {
    const char *socket;
    const char *state_dir;
    const char *init;
    const char *listen;
    const char *token_file;
    const char *log_file;
    const char *pidfile;
    const char *net_pool;
    enum sl_log_level level;
    size_t max_sandboxes;
    size_t pool;
    double retention;
    uint64_t output_cap;
    int snap_storage;
    unsigned long long pull_max_bytes;
    int default_microvm;     /* --default-isolation microvm */
    const char *microvm_dir; /* --microvm-dir */
    const char *gpus[64];    /* --gpu, repeatable */
    size_t ngpus;
    int daemon;
} opts;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: sandlotd --socket PATH --state-dir DIR [--init PATH]\n"
            "                [--listen HOST:PORT] [--token-file FILE] [--log-file FILE]\n"
            "                [--log-level debug|info|warn|error] [--pidfile FILE]\n"
            "                [--max-sandboxes N] [--retention SECONDS] [--daemon]\n"
            "                [--snapshot-storage auto|erofs|dir]\n"
            "                [--output-cap BYTES]   (unread output kept, all sandboxes)\n"
            "                [--net-pool CIDR]   (sandbox addresses, default " SL_NET_POOL_DEFAULT
            ")\n"
            "                [--pull-max-bytes N]   (unpacked bytes per pulled image, default "
            "64 GiB)\n"
            "                [--pool N]   (pre-set-up sandboxes for default creates, 0..64, "
            "default 2)\n"
            "                [--default-isolation container|microvm] [--microvm-dir DIR]\n"
            "                [--gpu /dev/nvidiaN[=TYPE] | --gpu auto]...   (GPUs for sandboxes)\n"
            "       sandlotd --version\n");
}

/* Absolute version of path (the daemon chdirs to /). */
static char *absolute(const char *path)
{
    if (path[0] == '/')
        return strdup(path);
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof(cwd)) == NULL)
        return NULL;
    return sl_path_join(cwd, path);
}

static char *dir_of(const char *path)
{
    char *d = strdup(path);
    if (d == NULL)
        return NULL;
    char *slash = strrchr(d, '/');
    if (slash == d)
        slash[1] = '\0';
    else if (slash != NULL)
        *slash = '\0';
    return d;
}

/* Strip trailing slashes so masks and comparisons see one spelling. */
static void trim_slashes(char *p)
{
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/')
        p[--n] = '\0';
}

static int parse_args(int argc, char **argv, opts *o)
{
    static const struct option longopts[] = {
        {"socket", required_argument, NULL, 's'},
        {"state-dir", required_argument, NULL, 'd'},
        {"init", required_argument, NULL, 'i'},
        {"listen", required_argument, NULL, 'l'},
        {"token-file", required_argument, NULL, 't'},
        {"log-file", required_argument, NULL, 'L'},
        {"log-level", required_argument, NULL, 'v'},
        {"pidfile", required_argument, NULL, 'p'},
        {"max-sandboxes", required_argument, NULL, 'm'},
        {"retention", required_argument, NULL, 'r'},
        {"snapshot-storage", required_argument, NULL, 'S'},
        {"daemon", no_argument, NULL, 'D'},
        {"net-pool", required_argument, NULL, 'n'},
        {"pull-max-bytes", required_argument, NULL, 'B'},
        {"pool", required_argument, NULL, 'P'},
        {"output-cap", required_argument, NULL, 'O'},
        {"default-isolation", required_argument, NULL, 'I'},
        {"microvm-dir", required_argument, NULL, 'M'},
        {"gpu", required_argument, NULL, 'G'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof(*o));
    o->level = SL_LOG_INFO;
    o->max_sandboxes = DEFAULT_MAX_SANDBOXES;
    o->pool = DEFAULT_POOL;
    o->retention = SL_RETENTION;
    o->output_cap = SL_OUTPUT_CAP;
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 's':
            o->socket = optarg;
            break;
        case 'd':
            o->state_dir = optarg;
            break;
        case 'i':
            o->init = optarg;
            break;
        case 'l':
            o->listen = optarg;
            break;
        case 't':
            o->token_file = optarg;
            break;
        case 'L':
            o->log_file = optarg;
            break;
        case 'p':
            o->pidfile = optarg;
            break;
        case 'v':
            if (sl_log_parse_level(optarg, &o->level) < 0) {
                fprintf(stderr, "sandlotd: --log-level must be debug, info, warn or error\n");
                return -1;
            }
            break;
        case 'm': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end != '\0' || v < 1 || v > 100000) {
                fprintf(stderr, "sandlotd: --max-sandboxes must be 1..100000\n");
                return -1;
            }
            o->max_sandboxes = (size_t)v;
            break;
        }
        case 'P': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end != '\0' || optarg[0] == '\0' || v < 0 || v > MAX_POOL) {
                fprintf(stderr, "sandlotd: --pool must be 0..%d\n", MAX_POOL);
                return -1;
            }
            o->pool = (size_t)v;
            break;
        }
        case 'r': {
            char *end;
            double v = strtod(optarg, &end);
            if (*end != '\0' || !(v >= 0) || v > 86400 * 30) {
                fprintf(stderr, "sandlotd: --retention must be 0..2592000 seconds\n");
                return -1;
            }
            o->retention = v;
            break;
        }
        case 'I':
            if (strcmp(optarg, "container") != 0 && strcmp(optarg, "microvm") != 0) {
                fprintf(stderr, "sandlotd: --default-isolation must be container or microvm\n");
                return -1;
            }
            o->default_microvm = strcmp(optarg, "microvm") == 0;
            break;
        case 'M':
            o->microvm_dir = optarg;
            break;
        case 'G':
            if (o->ngpus >= sizeof(o->gpus) / sizeof(o->gpus[0])) {
                fprintf(stderr, "sandlotd: --gpu given more than %zu times\n",
                        sizeof(o->gpus) / sizeof(o->gpus[0]));
                return -1;
            }
            o->gpus[o->ngpus++] = optarg;
            break;
        case 'S':
            if (strcmp(optarg, "auto") == 0) {
                o->snap_storage = SL_SNAP_STORAGE_AUTO;
            } else if (strcmp(optarg, "erofs") == 0) {
                o->snap_storage = SL_SNAP_STORAGE_EROFS;
            } else if (strcmp(optarg, "dir") == 0) {
                o->snap_storage = SL_SNAP_STORAGE_DIR;
            } else {
                fprintf(stderr, "sandlotd: --snapshot-storage must be auto, erofs or dir\n");
                return -1;
            }
            break;
        case 'O': {
            char *end;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (*end != '\0' || optarg[0] == '-' || v < SL_OUTPUT_KEEP_MIN) {
                fprintf(stderr, "sandlotd: --output-cap must be a byte count >= %zu\n",
                        SL_OUTPUT_KEEP_MIN);
                return -1;
            }
            o->output_cap = v;
            break;
        }
        case 'D':
            o->daemon = 1;
            break;
        case 'n':
            o->net_pool = optarg;
            break;
        case 'B': {
            char *end;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (*end != '\0' || v == 0 || optarg[0] == '-') {
                fprintf(stderr, "sandlotd: --pull-max-bytes must be a positive byte count\n");
                return -1;
            }
            o->pull_max_bytes = v;
            break;
        }
        case 'V':
            printf("sandlotd %s\n", SL_VERSION);
            exit(0);
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "sandlotd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return -1;
    }
    if (o->socket == NULL || o->state_dir == NULL) {
        fprintf(stderr, "sandlotd: --socket and --state-dir are required\n");
        usage(stderr);
        return -1;
    }
    return 0;
}

/* Read the bearer token; never logged. */
static int load_token(sl_runner *rt, const opts *o)
{
    char *tok = NULL;
    if (o->token_file != NULL) {
        int fd = open(o->token_file, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            sl_error("cannot open token file %s: %s", o->token_file, strerror(errno));
            return -1;
        }
        struct stat st;
        if (fstat(fd, &st) == 0 && (st.st_mode & 044))
            sl_warn("token file %s is readable by group/others", o->token_file);
        char buf[4097];
        size_t len = 0;
        ssize_t n;
        while (len < sizeof(buf) - 1 && (n = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0)
            len += (size_t)n;
        close(fd);
        buf[len] = '\0';
        tok = strdup(buf);
        explicit_bzero(buf, sizeof(buf));
    } else if (getenv("SANDLOT_TOKEN") != NULL) {
        tok = strdup(getenv("SANDLOT_TOKEN"));
    } else {
        return 0;
    }
    if (tok == NULL)
        return -1;
    size_t n = strlen(tok);
    while (n > 0 &&
           (tok[n - 1] == '\n' || tok[n - 1] == '\r' || tok[n - 1] == ' ' || tok[n - 1] == '\t'))
        tok[--n] = '\0';
    if (n == 0) {
        sl_error("the token is empty");
        free(tok);
        return -1;
    }
    rt->token = tok;
    rt->token_len = n;
    return 0;
}

/* Fork twice; the original process waits on a pipe and exits 0 only once the
 * daemon reports that it listens (so the starter can connect at once), or 1
 * if the daemon died first (its errors already went to our shared stderr). */
static int daemonize(int *notify_fd)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        perror("sandlotd: pipe2");
        return -1;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("sandlotd: fork");
        return -1;
    }
    if (pid > 0) {
        close(p[1]);
        char c = 0;
        ssize_t n;
        while ((n = read(p[0], &c, 1)) < 0 && errno == EINTR)
            ;
        int st;
        waitpid(pid, &st, 0);
        _exit(n == 1 && c == 'R' ? 0 : 1);
    }
    close(p[0]);
    if (setsid() < 0) {
        perror("sandlotd: setsid");
        _exit(1);
    }
    pid = fork();
    if (pid < 0) {
        perror("sandlotd: fork");
        _exit(1);
    }
    if (pid > 0)
        _exit(0);
    if (chdir("/") < 0) {
        perror("sandlotd: chdir /");
        _exit(1);
    }
    *notify_fd = p[1];
    return 0;
}

static void detach_stdio(void)
{
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0)
        return;
    int logfd = sl_log_fd();
    dup2(null, STDIN_FILENO);
    dup2(null, STDOUT_FILENO);
    /* stderr goes to the log file if there is one, so crashes leave a trace. */
    dup2(logfd != STDERR_FILENO ? logfd : null, STDERR_FILENO);
    close(null);
}

static int write_pidfile(const char *path)
{
    char *tmp = NULL;
    if (asprintf(&tmp, "%s.tmp", path) < 0)
        return -1;
    FILE *f = fopen(tmp, "we");
    if (f == NULL) {
        sl_error("cannot write %s: %s", tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    fprintf(f, "%d\n", (int)getpid());
    int rc = fclose(f);
    if (rc != 0 || rename(tmp, path) < 0) {
        sl_error("cannot write pidfile %s: %s", path, strerror(errno));
        unlink(tmp);
        free(tmp);
        return -1;
    }
    free(tmp);
    return 0;
}

/* ---- signals ---- */

static void on_sigchld(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    sl_runner *rt = arg;
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        sl_box *b = sl_reg_find_init(rt, pid);
        if (b != NULL && sl_pool_reaped(rt, b, st))
            continue; /* a pre-set-up sandbox died before anyone used it */
        if (b != NULL)
            sl_box_init_reaped(b, st);
        else if (!sl_jobs_reaped(rt, pid, st))
            sl_debug("reaped unknown child %d", (int)pid);
    }
}

static void on_stop(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    sl_runner *rt = arg;
    if (rt->shutting_down)
        return;
    sl_info("%s: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
    rt->shutting_down = 1;
    /* Stop accepting and remove the socket first: clients then see "no runner"
     * instead of a runner that will not answer. */
    if (rt->bound_unix != NULL) {
        evhttp_del_accept_socket(rt->http_unix, rt->bound_unix);
        rt->bound_unix = NULL;
        unlink(rt->socket_path);
    }
    if (rt->bound_tcp != NULL) {
        evhttp_del_accept_socket(rt->http_tcp, rt->bound_tcp);
        rt->bound_tcp = NULL;
    }
    sl_pool_shutdown(rt);
    sl_lifecycle_shutdown(rt);
    sl_net_shutdown(rt); /* after every sandbox's elements are gone */
    sl_jobs_shutdown(rt);
    sl_oci_shutdown(rt); /* after the jobs: no pull child is left */
    sl_store_shutdown(rt);
    /* Give the answers to held requests a moment to reach their clients. */
    struct timeval tv = {0, 200000};
    event_base_loopexit(rt->base, &tv);
}

static void free_runner(sl_runner *rt)
{
    free(rt->socket_path);
    free(rt->socket_dir);
    free(rt->state_dir);
    free(rt->log_path);
    free(rt->log_dir);
    free(rt->pidfile);
    free(rt->images_dir);
    free(rt->volumes_dir);
    free(rt->sandboxes_dir);
    free(rt->buckets);
    free(rt->pbuckets);
    sl_strv_free(rt->lost_ids, rt->nlost);
    sl_gpu_free_all(rt);
    if (rt->token != NULL) {
        explicit_bzero(rt->token, rt->token_len);
        free(rt->token);
    }
}

static void raise_nofile(void)
{
    /* Every process costs three pipes and every client a socket. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    sl_sandbox_set_nofile(&rl); /* sandboxes keep what we were given */
    /* Each live sandbox holds an fd here (its control channel), each client
     * a socket: 10,000 sandboxes need more than a usual soft limit. With
     * CAP_SYS_RESOURCE the hard limit goes up too, to fs.nr_open. */
    rlim_t want = 1048576;
    FILE *f = fopen("/proc/sys/fs/nr_open", "re");
    unsigned long long nr_open = 0;
    if (f != NULL) {
        if (fscanf(f, "%llu", &nr_open) == 1 && nr_open > 0 && nr_open < want)
            want = (rlim_t)nr_open;
        fclose(f);
    }
    if (geteuid() == 0 && rl.rlim_max < want) {
        struct rlimit hi = {want, want};
        if (setrlimit(RLIMIT_NOFILE, &hi) == 0)
            return;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max > want ? want : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            sl_warn("setrlimit RLIMIT_NOFILE: %s", strerror(errno));
    }
}

int main(int argc, char **argv)
{
    opts o;
    if (parse_args(argc, argv, &o) < 0)
        return 1;
    sl_runner rt_storage;
    sl_runner *rt = &rt_storage;
    memset(rt, 0, sizeof(*rt));
    rt->init_memfd = -1;
    rt->lock_fd = -1;
    rt->max_sandboxes = o.max_sandboxes;
    rt->pool_target = o.pool;
    /* Rootless mode: without root the runner cannot mount, so each sandbox
     * gets a user namespace in which it can (docs/architecture.md). */
    rt->userns = geteuid() != 0;
    rt->retention = o.retention;
    rt->output_cap = o.output_cap;
    rt->snap_storage = o.snap_storage;
    rt->pull_max_bytes = o.pull_max_bytes ? o.pull_max_bytes : SL_OCI_MAX_BYTES_DEFAULT;
    rt->default_microvm = o.default_microvm;
    if (o.microvm_dir != NULL && (rt->vm_guest_dir = strdup(o.microvm_dir)) == NULL) {
        sl_error("out of memory");
        return 1;
    }
    sl_vm_runner_init(rt);
    int rc = sl_log_open(o.log_file, o.level);
    if (rc < 0) {
        fprintf(stderr, "sandlotd: cannot open log file %s: %s\n", o.log_file, strerror(-rc));
        return 1;
    }
    sl_log_echo_stderr(1);
    for (size_t i = 0; i < o.ngpus; i++)
        if (sl_gpu_add(rt, o.gpus[i]) < 0) {
            sl_gpu_free_all(rt);
            return 1;
        }
    int status = 1, notify = -1, pid_written = 0;
    struct event *sigs[3] = {NULL, NULL, NULL};
    char *init_path = NULL;

    rt->socket_path = absolute(o.socket);
    rt->state_dir = absolute(o.state_dir);
    rt->pidfile = o.pidfile != NULL ? absolute(o.pidfile) : NULL;
    rt->log_path = o.log_file != NULL ? absolute(o.log_file) : NULL;
    if (rt->socket_path == NULL || rt->state_dir == NULL ||
        (o.pidfile != NULL && rt->pidfile == NULL) ||
        (o.log_file != NULL && rt->log_path == NULL)) {
        sl_error("out of memory or no current directory");
        goto out;
    }
    trim_slashes(rt->state_dir);
    rt->socket_dir = dir_of(rt->socket_path);
    rt->log_dir = rt->log_path != NULL ? dir_of(rt->log_path) : NULL;
    if (rt->socket_dir == NULL || (rt->log_path != NULL && rt->log_dir == NULL))
        goto out;
    /* Masking "/" would hide everything; a log in / is simply not masked. */
    if (rt->log_dir != NULL && strcmp(rt->log_dir, "/") == 0) {
        free(rt->log_dir);
        rt->log_dir = NULL;
    }
    if (load_token(rt, &o) < 0)
        goto out;
    if (o.listen != NULL && rt->token == NULL) {
        sl_error("--listen needs a bearer token: pass --token-file FILE or set SANDLOT_TOKEN");
        goto out;
    }
    if (o.init != NULL) {
        init_path = absolute(o.init);
    } else {
        /* Default: sandlot-init next to this executable. */
        char self[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
        if (n > 0) {
            self[n] = '\0';
            char *d = dir_of(self);
            init_path = d != NULL ? sl_path_join(d, "sandlot-init") : NULL;
            free(d);
        }
    }
    if (init_path == NULL) {
        sl_error("cannot determine the path of sandlot-init; pass --init");
        goto out;
    }
    if (o.daemon && daemonize(&notify) < 0)
        goto out;

    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    rt->started_at = sl_mono();
    memcpy(rt->runner_id, "rn-", 3);
    if (sl_random_hex(rt->runner_id + 3, 16) < 0) {
        sl_error("getrandom failed");
        goto out;
    }
    if (sl_store_init(rt) < 0)
        goto out;
    if (rt->userns) {
        char why[512];

        /* Better one clear error now than a failed clone at every create. */
        if (sl_userns_probe(why, sizeof(why)) < 0) {
            sl_error("cannot run rootless: %s", why);
            goto out;
        }
    }
    rt->init_memfd = sl_sandbox_load_init(init_path);
    if (rt->init_memfd < 0) {
        sl_error("cannot load sandlot-init from %s: %s", init_path, strerror(-rt->init_memfd));
        goto out;
    }
    rt->base = event_base_new();
    if (rt->base == NULL) {
        sl_error("event_base_new failed");
        goto out;
    }
    if (sl_reg_init(rt) < 0) {
        sl_error("out of memory");
        goto out;
    }
    if (sl_net_init(rt, o.net_pool) < 0)
        goto out;
    const int signums[3] = {SIGINT, SIGTERM, SIGCHLD};
    for (int i = 0; i < 3; i++) {
        sigs[i] =
            evsignal_new(rt->base, signums[i], signums[i] == SIGCHLD ? on_sigchld : on_stop, rt);
        if (sigs[i] == NULL || evsignal_add(sigs[i], NULL) != 0) {
            sl_error("cannot install signal handlers");
            goto out;
        }
    }
    sl_fn_persist_load(rt); /* before the first request can name one */
    if (sl_http_start(rt, o.listen) < 0)
        goto out;
    if (sl_pool_start(rt) < 0) {
        sl_error("cannot start the sandbox pool (out of memory)");
        goto out;
    }
    if (rt->pidfile != NULL) {
        if (write_pidfile(rt->pidfile) < 0)
            goto out;
        pid_written = 1;
    }
    sl_info("sandlotd %s ready (runner %s, pid %d, state %s, init %s%s)", SL_VERSION, rt->runner_id,
            (int)getpid(), rt->state_dir, init_path,
            rt->userns ? ", rootless: sandboxes get a user namespace" : "");
    sl_log_echo_stderr(0);
    if (notify >= 0) {
        detach_stdio();
        char c = 'R';
        if (write(notify, &c, 1) != 1)
            sl_warn("cannot notify the starting process");
        close(notify);
        notify = -1;
    }
    if (event_base_dispatch(rt->base) < 0) {
        sl_error("event loop failed");
        goto out;
    }
    sl_info("stopped");
    status = 0;
out:
    /* Also reached on start errors: undo what was set up. */
    if (rt->base != NULL && !rt->shutting_down) {
        rt->shutting_down = 1;
        sl_lifecycle_shutdown(rt);
        sl_jobs_shutdown(rt);
    }
    sl_net_shutdown(rt);
    sl_http_free(rt);
    for (int i = 0; i < 3; i++) {
        if (sigs[i] != NULL)
            event_free(sigs[i]);
    }
    if (rt->base != NULL)
        event_base_free(rt->base);
    if (rt->init_memfd >= 0)
        close(rt->init_memfd);
    if (pid_written)
        unlink(rt->pidfile);
    if (rt->lock_fd >= 0)
        close(rt->lock_fd);
    free(init_path);
    free_runner(rt);
    sl_log_close();
    return status;
}
