/* durable.c - what the runner acknowledges survives a crash or a power loss.
 *
 * Every store under the state dir is built the same way: write into a
 * ".tmp-*" name, fsync what was written (files and directories), rename(2)
 * into place, fsync the parent directory. A crash before the rename leaves a
 * ".tmp-*" that the next runner sweeps (store.c, snapshot.c); after it, the
 * complete object. Only then is the request answered.
 *
 * fsync of a large tree (a snapshot layer, an image) runs in a forked child
 * registered as a job (jobs.c), so the event loop never waits on the disk.
 *
 * SANDLOT_TEST_FAULT=<point> makes the runner _exit(86) at that named point
 * (sl_fault), as a kill -9 would: the crash tests use it to stop the runner
 * between every two steps of a store. Unset, sl_fault is one branch.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sl_log.h"
#include "sl_runner.h"

int sl_fsync_path(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    /* Some filesystems refuse fsync on a directory fd: nothing to flush then. */
    return rc == -EINVAL ? 0 : rc;
}

int sl_fsync_parent(const char *path)
{
    char *d = strdup(path);
    if (d == NULL)
        return -ENOMEM;
    char *slash = strrchr(d, '/');
    if (slash == d)
        slash[1] = '\0';
    else if (slash != NULL)
        *slash = '\0';
    int rc = sl_fsync_path(slash != NULL ? d : ".");
    free(d);
    return rc;
}

static int tree_err;

static int sync_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)ftw;
    if (flag == FTW_SL || flag == FTW_SLN || !(S_ISREG(st->st_mode) || S_ISDIR(st->st_mode)))
        return 0; /* symlinks, devices, fifos: their parent dir's fsync covers them */
    int rc = sl_fsync_path(path);
    if (rc < 0 && tree_err == 0)
        tree_err = rc;
    return 0;
}

int sl_fsync_tree(const char *path)
{
    tree_err = 0;
    /* Depth first: a dir is synced after what is in it. Physical, and never
     * into another filesystem (a mount point in a capture's scratch dir). */
    if (nftw(path, sync_one, 64, FTW_PHYS | FTW_MOUNT | FTW_DEPTH) < 0)
        return -errno;
    return tree_err;
}

static int fsync_child(void *path)
{
    return sl_fsync_tree(path) < 0 ? 1 : 0;
}

int sl_job_fsync_tree(sl_runner *rt, const char *path, sl_job_done_fn done, void *arg)
{
    /* The child's copy of path is the caller's: the runner is single-threaded. */
    return sl_job_fork(rt, -1, fsync_child, (void *)path, done, arg) < 0 ? -errno : 0;
}

int sl_write_durable(const char *path, const void *data, size_t len)
{
    char *tmp = NULL;
    if (asprintf(&tmp, "%s.tmp", path) < 0)
        return -ENOMEM;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    int rc = 0;
    if (fd < 0) {
        rc = -errno;
    } else {
        const char *p = data;
        size_t left = len;
        while (left > 0 && rc == 0) {
            ssize_t n = write(fd, p, left);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                rc = n < 0 ? -errno : -EIO;
            else
                p += n, left -= (size_t)n;
        }
        if (rc == 0 && fsync(fd) < 0)
            rc = -errno;
        if (close(fd) < 0 && rc == 0)
            rc = -errno;
    }
    if (rc == 0 && rename(tmp, path) < 0)
        rc = -errno;
    if (rc == 0)
        rc = sl_fsync_parent(path);
    else
        unlink(tmp);
    free(tmp);
    return rc;
}

static const char *fault_point;
static int fault_read;

void sl_fault(const char *point)
{
    if (!fault_read) {
        fault_read = 1;
        fault_point = getenv("SANDLOT_TEST_FAULT");
        if (fault_point != NULL && fault_point[0] == '\0')
            fault_point = NULL;
    }
    if (fault_point != NULL && strcmp(fault_point, point) == 0) {
        sl_warn("SANDLOT_TEST_FAULT: exiting at %s, as a crash would", point);
        _exit(86);
    }
}
