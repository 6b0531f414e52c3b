/* jobs.c - child processes that do slow filesystem work for the loop:
 * `cp -a` for image registration and rm -rf of sandbox dirs and deleted
 * images/volumes. SIGCHLD (main.c) reports their exit here. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sl_log.h"
#include "sl_runner.h"

extern char **environ;

static void on_err_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    sl_job *j = arg;
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n > 0) {
        size_t room = sizeof(j->err) - 1 - j->err_len;
        size_t k = (size_t)n < room ? (size_t)n : room;
        memcpy(j->err + j->err_len, buf, k);
        j->err_len += k;
        j->err[j->err_len] = '\0';
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    event_free(j->err_ev);
    j->err_ev = NULL;
    close(j->err_fd);
    j->err_fd = -1;
}

void sl_jobs_add(sl_runner *rt, sl_job *j)
{
    j->next = rt->jobs;
    rt->jobs = j;
}

int sl_spawnattr_init(posix_spawnattr_t *attr, short extra_flags)
{
    /* The runner ignores SIGPIPE and handles signals through libevent; a
     * child starts with default dispositions and an empty mask. */
    sigset_t none, def;
    sigemptyset(&none);
    sigemptyset(&def);
    sigaddset(&def, SIGPIPE);
    sigaddset(&def, SIGINT);
    sigaddset(&def, SIGTERM);
    sigaddset(&def, SIGCHLD);
    int rc = posix_spawnattr_init(attr);
    if (rc != 0)
        return rc;
    rc = posix_spawnattr_setsigmask(attr, &none);
    rc = rc ? rc : posix_spawnattr_setsigdefault(attr, &def);
    rc = rc ? rc
            : posix_spawnattr_setflags(
                  attr, (short)(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | extra_flags));
    return rc;
}

int sl_job_run(sl_runner *rt, char *const argv[], sl_job_done_fn done, void *arg)
{
    sl_job *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return -1;
    j->err_fd = -1;
    j->done = done;
    j->arg = arg;
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        free(j);
        return -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    int rc = sl_spawnattr_init(&attr, 0);
    rc = rc ? rc : posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    rc = rc ? rc : posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    rc = rc ? rc : posix_spawn_file_actions_adddup2(&fa, p[1], 2);
    /* Accepted client sockets are not O_CLOEXEC (evhttp's listener does not
     * ask for it): close everything above stderr in the child. */
    rc = rc ? rc : posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    rc = rc ? rc : posix_spawnp(&j->pid, argv[0], &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close(p[1]);
    if (rc != 0) {
        close(p[0]);
        free(j);
        errno = rc;
        return -1;
    }
    j->err_fd = p[0];
    sl_job_watch_err(rt, j);
    sl_jobs_add(rt, j);
    return 0;
}

void sl_job_watch_err(sl_runner *rt, sl_job *j)
{
    /* Drained as it comes, so a child that writes a lot to stderr never
     * blocks on a full pipe. */
    int fl = fcntl(j->err_fd, F_GETFL);
    if (fl < 0 || fcntl(j->err_fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
        (j->err_ev = event_new(rt->base, j->err_fd, EV_READ | EV_PERSIST, on_err_readable, j)) ==
            NULL ||
        event_add(j->err_ev, NULL) != 0) {
        /* Not fatal: we only lose the child's error text. */
        if (j->err_ev != NULL)
            event_free(j->err_ev);
        j->err_ev = NULL;
        close(j->err_fd);
        j->err_fd = -1;
    }
}

/* Child side of sl_job_rm: the path is the child's copy of the caller's. */
static int rm_child(void *path)
{
    return sl_rm_rf(path) < 0 ? 1 : 0;
}

int sl_job_rm(sl_runner *rt, const char *path)
{
    return sl_job_fork(rt, -1, rm_child, (void *)path, NULL, NULL) < 0 ? -1 : 0;
}

pid_t sl_job_fork(sl_runner *rt, int keep_fd, int (*fn)(void *), void *fn_arg, sl_job_done_fn done,
                  void *arg)
{
    sl_job *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return -1;
    j->err_fd = -1;
    j->done = done;
    j->arg = arg;
    pid_t pid = fork();
    if (pid < 0) {
        free(j);
        return -1;
    }
    if (pid == 0) {
        /* Only async-signal-safe-ish work here: the runner is
         * single-threaded, so its heap is consistent, and we exit without
         * running atexit. Its sockets and pipes are dropped so that closing a
         * client connection or a sandbox channel is not delayed by this
         * child. keep_fd becomes 3. */
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGPIPE, SIG_IGN);
        signal(SIGCHLD, SIG_DFL);
        if (keep_fd >= 0 && keep_fd != 3 && dup2(keep_fd, 3) < 0)
            _exit(125);
        close_range(keep_fd >= 0 ? 4 : 3, ~0U, 0);
        _exit(fn(fn_arg));
    }
    j->pid = pid;
    sl_jobs_add(rt, j);
    return pid;
}

static void finish(sl_runner *rt, sl_job *j, int status)
{
    if (j->err_fd >= 0) {
        /* The child is gone: whatever it wrote is in the pipe now. */
        char buf[4096];
        ssize_t n;
        while ((n = read(j->err_fd, buf, sizeof(buf))) > 0) {
            size_t room = sizeof(j->err) - 1 - j->err_len;
            size_t k = (size_t)n < room ? (size_t)n : room;
            memcpy(j->err + j->err_len, buf, k);
            j->err_len += k;
            j->err[j->err_len] = '\0';
        }
        if (j->err_ev != NULL)
            event_free(j->err_ev);
        close(j->err_fd);
    }
    /* Trim the trailing newline of cp's message. */
    while (j->err_len > 0 && (j->err[j->err_len - 1] == '\n' || j->err[j->err_len - 1] == '\r'))
        j->err[--j->err_len] = '\0';
    if (j->done != NULL)
        j->done(rt, j->arg, status, j->err);
    else if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        sl_warn("background removal (pid %d) failed", (int)j->pid);
    free(j);
}

int sl_jobs_reaped(sl_runner *rt, pid_t pid, int status)
{
    for (sl_job **pp = &rt->jobs; *pp != NULL; pp = &(*pp)->next) {
        sl_job *j = *pp;
        if (j->pid == pid) {
            *pp = j->next;
            finish(rt, j, status);
            return 1;
        }
    }
    return 0;
}

void sl_jobs_shutdown(sl_runner *rt)
{
    /* Copies are abandoned (their tmp dirs are swept at the next start);
     * removals are allowed to finish so nothing is left half-deleted. */
    for (sl_job *j = rt->jobs; j != NULL; j = j->next) {
        if (j->done != NULL)
            kill(j->pid, SIGKILL);
    }
    while (rt->jobs != NULL) {
        sl_job *j = rt->jobs;
        rt->jobs = j->next;
        int st = 0;
        while (waitpid(j->pid, &st, 0) < 0 && errno == EINTR)
            ;
        finish(rt, j, st);
    }
}
