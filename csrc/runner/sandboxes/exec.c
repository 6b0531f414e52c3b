/* exec.c - processes inside a sandbox: starting them over the control
 * channel (with stdio pipes as SCM_RIGHTS), their exit, stdin and signals. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sl_common.h"
#include "sl_ctl.h"
#include "sl_log.h"
#include "sl_runner.h"

#define START_TIMEOUT 30.0

static const char *const default_env[] = {
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
};

void sl_env_free(char **envp)
{
    if (envp == NULL)
        return;
    /* Secrets pass through here: do not leave them in freed heap memory. */
    for (char **e = envp; *e != NULL; e++) {
        explicit_bzero(*e, strlen(*e));
        free(*e);
    }
    free(envp);
}

/* Put "k=v" into env[0..*n), replacing an earlier value of k. */
static int env_set(char **env, size_t *n, const char *k, size_t klen, const char *v)
{
    char *s = malloc(klen + strlen(v) + 2);
    if (s == NULL)
        return -1;
    memcpy(s, k, klen);
    s[klen] = '=';
    strcpy(s + klen + 1, v);
    for (size_t i = 0; i < *n; i++) {
        if (strncmp(env[i], k, klen) == 0 && env[i][klen] == '=') {
            explicit_bzero(env[i], strlen(env[i]));
            free(env[i]);
            env[i] = s;
            return 0;
        }
    }
    env[(*n)++] = s;
    return 0;
}

char **sl_env_build(const sl_box *b, const sl_kv *extra, size_t nextra)
{
    size_t cap = SL_ARRAY_LEN(default_env) + b->nenv + b->nsecrets + nextra + 1;
    char **env = calloc(cap, sizeof(*env));
    if (env == NULL)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i < SL_ARRAY_LEN(default_env); i++) {
        const char *eq = strchr(default_env[i], '=');
        if (env_set(env, &n, default_env[i], (size_t)(eq - default_env[i]), eq + 1) < 0)
            goto fail;
    }
    const sl_kv *layers[3] = {b->env, b->secrets, extra};
    size_t counts[3] = {b->nenv, b->nsecrets, nextra};
    for (int l = 0; l < 3; l++) {
        for (size_t i = 0; i < counts[l]; i++) {
            if (env_set(env, &n, layers[l][i].k, strlen(layers[l][i].k), layers[l][i].v) < 0)
                goto fail;
        }
    }
    env[n] = NULL;
    return env;
fail:
    sl_env_free(env);
    return NULL;
}

int sl_spawn_fits(const sl_box *b, const char *cwd, char *const *argv, sl_err *e)
{
    size_t cap = SL_CTL_MAX_MSG - sizeof(sl_ctl_hdr);
    char **envp = sl_env_build(b, NULL, 0);
    if (envp == NULL)
        return sl_err_set(e, 500, "out of memory");
    /* What sl_ctl_pack_spawn writes: NUL-terminated cwd, argc, argv, env. */
    size_t argc = 0, need = strlen(cwd != NULL ? cwd : "") + 1 + 24;
    for (; argv[argc] != NULL; argc++)
        need += strlen(argv[argc]) + 1;
    for (char **v = envp; *v != NULL; v++)
        need += strlen(*v) + 1;
    sl_env_free(envp);
    if (need > cap)
        return sl_err_set(e, 400,
                          "command and environment take %zu bytes, more than the %zu byte limit of "
                          "a spawn",
                          need, cap);
    return 0;
}

static void close_pair(int p[2])
{
    for (int i = 0; i < 2; i++) {
        if (p[i] >= 0)
            close(p[i]);
        p[i] = -1;
    }
}

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

int sl_proc_launch(sl_proc *p, const char *cwd, char *const *argv, char *const *envp, sl_err *e)
{
    sl_box *b = p->box;
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
    char *buf = NULL;
    long len = 0;
    int rc = -1;
    if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
        sl_err_set(e, errno == EMFILE || errno == ENFILE ? 503 : 500, "pipe2: %s", strerror(errno));
        goto out;
    }
    /* Only the runner's ends are non-blocking; the child gets ordinary pipes. */
    if (set_nonblock(in[1]) < 0 || set_nonblock(out[0]) < 0 || set_nonblock(err[0]) < 0) {
        sl_err_set(e, 500, "fcntl O_NONBLOCK: %s", strerror(errno));
        goto out;
    }
    /* Readers exist before the process does, so no output can be missed. */
    p->in_buf = evbuffer_new();
    if (p->in_buf == NULL) {
        sl_err_set(e, 500, "evbuffer_new: out of memory");
        goto out;
    }
    for (int i = 0; i < 2; i++) {
        int *rd = i == 0 ? &out[0] : &err[0];
        if (sl_stream_open(b, &p->out[i], *rd) < 0) {
            sl_err_set(e, errno == ENOSPC || errno == EMFILE || errno == ENFILE ? 503 : 500,
                       "cannot spool the output of the process in %s: %s", b->rt->sandboxes_dir,
                       strerror(errno));
            goto out;
        }
        *rd = -1;
    }
    size_t cap = SL_CTL_MAX_MSG - sizeof(sl_ctl_hdr);
    buf = malloc(cap);
    if (buf == NULL) {
        sl_err_set(e, 500, "malloc: out of memory");
        goto out;
    }
    len = sl_ctl_pack_spawn(buf, cap, cwd, (const char *const *)argv, (const char *const *)envp);
    if (len < 0) {
        if (len == -E2BIG)
            sl_err_set(e, 400, "command and environment exceed the %zu byte limit of a spawn", cap);
        else
            sl_err_set(e, 400, "cannot encode the spawn request: %s", strerror((int)-len));
        len = 0;
        goto out;
    }
    sl_ctl_hdr h = {.type = SL_CTL_SPAWN, .id = p->id, .arg = 0};
    int fds[3] = {in[0], out[1], err[1]};
    int src = sl_ctl_send(b->sbx.ctl_fd, &h, buf, (size_t)len, fds, 3);
    if (src < 0) {
        sl_err_set(e, src == -EAGAIN ? 503 : 500, "sending SPAWN to sandlot-init: %s",
                   strerror(-src));
        goto out;
    }
    p->in_fd = in[1];
    in[1] = -1;
    rc = 0;
out:
    if (buf != NULL) {
        explicit_bzero(buf, (size_t)len);
        free(buf);
    }
    /* The child's ends now live in init (or nowhere): ours must go so that
     * EOF on stdout/stderr means every writer is gone. */
    close_pair(in);
    close_pair(out);
    close_pair(err);
    return rc;
}

static void reply_proc(sl_hold *h, int status, const sl_proc *p)
{
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 1);
    sl_r_str(&resp, "process");
    sl_pack_proc(&resp, p);
    sl_hold_reply(h, status, &resp);
}

void sl_proc_started(sl_proc *p, pid_t pid)
{
    if (p->state != SL_P_STARTING) {
        sl_debug("sandbox %s: duplicate STARTED for process %u ignored", p->box->id, p->id);
        return;
    }
    p->state = SL_P_RUNNING;
    p->pid = pid;
    if (p->id == 0)
        sl_box_entry_started(p->box);
    else if (p->start != NULL)
        reply_proc(p->start, 201, p);
}

void sl_proc_spawn_failed(sl_proc *p, int err, const char *what)
{
    if (p->state != SL_P_STARTING) {
        sl_debug("sandbox %s: SPAWN_FAILED for running process %u ignored", p->box->id, p->id);
        return;
    }
    /* init's text already names the step and the error ("exec foo: No such
     * file or directory"); only synthesise one when it sent none. */
    char msg[512];
    if (what[0])
        snprintf(msg, sizeof(msg), "%s", what);
    else
        snprintf(msg, sizeof(msg), "spawn: %s", strerror(err));
    if (p->id == 0) {
        sl_box_entry_failed(p->box, msg);
        return;
    }
    sl_info("sandbox %s: process %u could not start: %s", p->box->id, p->id, msg);
    if (p->start != NULL)
        sl_hold_error(p->start, 422, "%s", msg);
    sl_proc_drop(p);
}

static void pack_proc_wait(sl_resp *resp, const sl_proc *p)
{
    sl_resp_init(resp);
    sl_r_map(resp, 2);
    sl_r_kbool(resp, "done", p->state == SL_P_EXITED);
    sl_r_str(resp, "exit_code");
    if (p->state == SL_P_EXITED)
        sl_r_int(resp, p->exit_code);
    else
        sl_r_nil(resp);
}

void sl_proc_finish(sl_proc *p, int exit_code)
{
    if (p->state == SL_P_EXITED)
        return;
    p->state = SL_P_EXITED;
    p->exit_code = exit_code;
    while (p->waiters != NULL) {
        sl_resp resp;
        pack_proc_wait(&resp, p);
        sl_hold_reply(p->waiters, 200, &resp);
    }
}

void sl_proc_exited(sl_proc *p, int wait_status)
{
    if (p->state == SL_P_EXITED)
        return; /* e.g. already marked -9 by terminate */
    if (p->state == SL_P_STARTING)
        sl_proc_started(p, 0); /* EXITED implies it started */
    int code = sl_exit_code(wait_status);
    sl_debug("sandbox %s: process %u exited with %d", p->box->id, p->id, code);
    sl_limits_proc_exited(p, code);
    sl_proc_finish(p, code);
    /* The entry command's end is the sandbox's end. */
    if (p->id == 0)
        sl_box_end(p->box, SL_B_EXITED);
}

/* ---- stdin ---- */

void sl_proc_close_stdin(sl_proc *p)
{
    if (p->in_ev != NULL) {
        event_free(p->in_ev);
        p->in_ev = NULL;
    }
    if (p->in_fd >= 0) {
        close(p->in_fd);
        p->in_fd = -1;
    }
    if (p->in_buf != NULL)
        evbuffer_drain(p->in_buf, evbuffer_get_length(p->in_buf));
}

/* Push buffered stdin into the pipe. Returns -1 if the reader is gone. */
static int flush_stdin(sl_proc *p)
{
    while (evbuffer_get_length(p->in_buf) > 0) {
        int n = evbuffer_write(p->in_buf, p->in_fd);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            if (errno == EINTR)
                continue;
            return -1; /* EPIPE: the process closed its stdin or exited */
        }
        if (n == 0)
            return 0;
    }
    return 0;
}

static void on_stdin_writable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sl_proc *p = arg;
    if (flush_stdin(p) < 0) {
        sl_debug("sandbox %s: stdin of process %u: reader gone", p->box->id, p->id);
        sl_proc_close_stdin(p);
        return;
    }
    if (evbuffer_get_length(p->in_buf) == 0) {
        event_del(p->in_ev);
        if (p->in_close_requested)
            sl_proc_close_stdin(p);
    }
}

/* The process for r->p[1] of box b; answers 404 and returns NULL. Processes
 * that have not started yet are not visible. */
static sl_proc *req_proc(sl_req *r, sl_box *b)
{
    sl_proc *p = sl_box_proc(b, r->p[1]);
    if (p == NULL || p->state == SL_P_STARTING) {
        sl_reply_error(r, 404, "process '%.32s' not found in sandbox %s",
                       r->p[1] != NULL ? r->p[1] : "", b->id);
        return NULL;
    }
    return p;
}

static int box_running(sl_req *r, sl_box *b)
{
    if (!b->alive || b->killed || b->finalised) {
        sl_reply_error(r, 409, "sandbox %s is not running", b->id);
        return 0;
    }
    return 1;
}

void sl_h_stdin(sl_req *r)
{
    sl_box *b = sl_req_box(r);
    if (b == NULL)
        return;
    sl_proc *p = req_proc(r, b);
    if (p == NULL)
        return;
    sl_err e;
    const char *data;
    size_t len;
    int close_it;
    if (sl_msg_bytes(r->body, "data", 0, &data, &len, &e) < 0 ||
        sl_msg_bool(r->body, "close", 0, &close_it, &e) < 0) {
        sl_reply_err(r, &e);
        return;
    }
    if (!box_running(r, b))
        return;
    if (p->state == SL_P_EXITED) {
        sl_reply_error(r, 409, "process %u has exited", p->id);
        return;
    }
    if (p->in_fd < 0 || p->in_close_requested) {
        sl_reply_error(r, 409, "stdin of process %u is closed", p->id);
        return;
    }
    size_t pending = evbuffer_get_length(p->in_buf);
    size_t take = len;
    if (pending + take > SL_STDIN_MAX)
        take = pending < SL_STDIN_MAX ? SL_STDIN_MAX - pending : 0;
    if (take > 0 && evbuffer_add(p->in_buf, data, take) != 0) {
        sl_reply_error(r, 500, "evbuffer_add: out of memory");
        return;
    }
    if (close_it && take == len)
        p->in_close_requested = 1;
    if (flush_stdin(p) < 0) {
        sl_proc_close_stdin(p);
        sl_reply_error(r, 409, "process %u closed its stdin", p->id);
        return;
    }
    if (evbuffer_get_length(p->in_buf) > 0) {
        if (p->in_ev == NULL)
            p->in_ev =
                event_new(b->rt->base, p->in_fd, EV_WRITE | EV_PERSIST, on_stdin_writable, p);
        if (p->in_ev == NULL || event_add(p->in_ev, NULL) != 0) {
            sl_reply_error(r, 500, "libevent: cannot watch the stdin pipe");
            return;
        }
    } else if (p->in_close_requested) {
        sl_proc_close_stdin(p);
    }
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 1);
    sl_r_kint(&resp, "written", (int64_t)take);
    sl_reply(r, 200, &resp);
}

/* ---- exec, procs, wait, signal ---- */

static void on_start_timeout(sl_hold *h)
{
    sl_proc *p = h->obj;
    sl_hold_error(h, 500, "sandlot-init did not answer the spawn of process %u within %.0f s",
                  p->id, START_TIMEOUT);
}

void sl_h_exec(sl_req *r)
{
    sl_box *b = sl_req_box(r);
    if (b == NULL)
        return;
    sl_err e;
    char **cmd = NULL, *workdir = NULL, **envp = NULL;
    size_t ncmd = 0, nenv = 0;
    sl_kv *env = NULL;
    if (sl_msg_strv(r->body, "cmd", SL_REQ, &cmd, &ncmd, &e) < 0 ||
        sl_msg_kvmap(r->body, "env", &env, &nenv, &e) < 0 ||
        sl_msg_str(r->body, "workdir", 0, &workdir, &e) < 0)
        goto fail;
    if (cmd[0][0] == '\0') {
        sl_err_set(&e, 400, "field 'cmd': the program name must not be empty");
        goto fail;
    }
    for (size_t i = 0; i < nenv; i++) {
        if (env[i].k[0] == '\0' || strchr(env[i].k, '=') != NULL) {
            sl_err_set(&e, 400,
                       "field 'env': variable name '%.64s' must be non-empty and "
                       "must not contain '='",
                       env[i].k);
            goto fail;
        }
    }
    if (workdir != NULL && workdir[0] != '/') {
        sl_err_set(&e, 400, "field 'workdir' must be an absolute path, got '%.200s'", workdir);
        goto fail;
    }
    if (!box_running(r, b))
        goto done;
    sl_proc *p = sl_proc_new(b);
    if (p == NULL) {
        sl_err_set(&e, 503, "sandbox %s cannot start more processes (limit %d)", b->id,
                   SL_MAX_PROCS);
        goto fail;
    }
    p->cmd = cmd;
    p->ncmd = ncmd;
    cmd = NULL;
    envp = sl_env_build(b, env, nenv);
    if (envp == NULL) {
        sl_proc_drop(p);
        sl_err_set(&e, 500, "out of memory");
        goto fail;
    }
    if (sl_proc_launch(p, workdir != NULL ? workdir : b->workdir, p->cmd, envp, &e) < 0) {
        sl_proc_drop(p);
        goto fail;
    }
    sl_debug("sandbox %s: spawning process %u", b->id, p->id);
    sl_hold_new(r, &p->start, START_TIMEOUT, on_start_timeout, p);
    goto done;
fail:
    sl_reply_err(r, &e);
done:
    sl_env_free(envp);
    sl_strv_free(cmd, ncmd);
    sl_kv_free(env, nenv, 0);
    free(workdir);
}

void sl_h_procs(sl_req *r)
{
    sl_box *b = sl_req_box(r);
    if (b == NULL)
        return;
    size_t n = 0;
    for (size_t i = 0; i < b->nprocs; i++)
        n += b->procs[i] != NULL && b->procs[i]->state != SL_P_STARTING;
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 1);
    sl_r_str(&resp, "processes");
    sl_r_arr(&resp, n);
    for (size_t i = 0; i < b->nprocs; i++) {
        if (b->procs[i] != NULL && b->procs[i]->state != SL_P_STARTING)
            sl_pack_proc(&resp, b->procs[i]);
    }
    sl_reply(r, 200, &resp);
}

void sl_h_proc(sl_req *r)
{
    sl_box *b = sl_req_box(r);
    if (b == NULL)
        return;
    sl_proc *p = req_proc(r, b);
    if (p == NULL)
        return;
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 1);
    sl_r_str(&resp, "process");
    sl_pack_proc(&resp, p);
    sl_reply(r, 200, &resp);
}

static void on_proc_wait_timeout(sl_hold *h)
{
    sl_resp resp;
    pack_proc_wait(&resp, h->obj);
    sl_hold_reply(h, 200, &resp);
}

void sl_h_proc_wait(sl_req *r)
{
    sl_box *b = sl_req_box(r);
    if (b == NULL)
        return;
    sl_proc *p = req_proc(r, b);
    if (p == NULL)
        return;
    sl_err e;
    double t;
    if (sl_msg_num(r->body, "timeout", 0, SL_POLL_CAP, &t, &e) < 0) {
        sl_reply_err(r, &e);
        return;
    }
    if (t < 0) {
        sl_reply_error(r, 400, "field 'timeout' must be >= 0, got %g", t);
        return;
    }
    if (t > SL_POLL_CAP)
        t = SL_POLL_CAP;
    if (p->state == SL_P_EXITED || t == 0) {
        sl_resp resp;
        pack_proc_wait(&resp, p);
        sl_reply(r, 200, &resp);
        return;
    }
    sl_hold_new(r, &p->waiters, t, on_proc_wait_timeout, p);
}

void sl_h_signal(sl_req *r)
{
    sl_box *b = sl_req_box(r);
    if (b == NULL)
        return;
    sl_proc *p = req_proc(r, b);
    if (p == NULL)
        return;
    sl_err e;
    int64_t sig;
    if (sl_msg_int(r->body, "signal", 1, SIGRTMAX, 0, &sig, &e) < 0) {
        sl_reply_err(r, &e);
        return;
    }
    if (sig == 0) {
        sl_reply_error(r, 400, "field 'signal' is required");
        return;
    }
    if (!box_running(r, b))
        return;
    if (p->state == SL_P_EXITED) {
        sl_reply_error(r, 409, "process %u has exited", p->id);
        return;
    }
    sl_ctl_hdr h = {.type = SL_CTL_SIGNAL, .id = p->id, .arg = (uint32_t)sig};
    int rc = sl_ctl_send(b->sbx.ctl_fd, &h, NULL, 0, NULL, 0);
    if (rc < 0) {
        sl_reply_error(r, rc == -EAGAIN ? 503 : 500, "sending SIGNAL to sandlot-init: %s",
                       strerror(-rc));
        return;
    }
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 0);
    sl_reply(r, 200, &resp);
}
