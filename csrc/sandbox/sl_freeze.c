/* sl_freeze.c - freeze and thaw a sandbox's cgroup (see sl_freeze.h). */
#include "sl_freeze.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int write_str(const char *dir, const char *file, const char *val)
{
    char path[4096];
    int fd, err = 0;
    size_t len = strlen(val);

    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, file) >= sizeof(path))
        return -ENAMETOOLONG;
    fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (write(fd, val, len) != (ssize_t)len)
        err = -errno;
    close(fd);
    return err;
}

/* Read dir/file into buf (NUL-terminated). */
static int read_str(const char *dir, const char *file, char *buf, size_t len)
{
    char path[4096];
    ssize_t n;
    int fd;

    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, file) >= sizeof(path))
        return -ENAMETOOLONG;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    n = read(fd, buf, len - 1);
    if (n < 0) {
        int err = -errno;

        close(fd);
        return err;
    }
    close(fd);
    buf[n] = '\0';
    return 0;
}

static double mono(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Has the cgroup reached the requested state? 1 yes, 0 not yet, -errno. */
static int reached(const sl_cgroup *cg, int v2, int frozen)
{
    char buf[512];
    int rc;

    if (v2) {
        rc = read_str(cg->paths[cg->v2_index], "cgroup.events", buf, sizeof(buf));
        if (rc < 0)
            return rc;
        return strstr(buf, frozen ? "frozen 1" : "frozen 0") != NULL;
    }
    rc = read_str(cg->paths[cg->freezer_index], "freezer.state", buf, sizeof(buf));
    if (rc < 0)
        return rc;
    /* v1 reports FREEZING while it works on it; thawing is immediate. */
    return strncmp(buf, frozen ? "FROZEN" : "THAWED", 6) == 0;
}

int sl_cgroup_freeze(const sl_cgroup *cg, int frozen, double timeout)
{
    int v2 = cg->v2_index >= 0 && cg->v2_index < cg->n;
    int rc;
    double end;

    if (!v2 && !(cg->freezer_index >= 0 && cg->freezer_index < cg->n))
        return -ENOTSUP;
    if (v2)
        rc = write_str(cg->paths[cg->v2_index], "cgroup.freeze", frozen ? "1" : "0");
    else
        rc = write_str(cg->paths[cg->freezer_index], "freezer.state", frozen ? "FROZEN" : "THAWED");
    if (rc < 0)
        return rc;
    end = mono() + timeout;
    /* Freezing a few processes takes well under a millisecond; poll rather
     * than wait on cgroup.events notifications to keep this one short loop. */
    for (;;) {
        rc = reached(cg, v2, frozen);
        if (rc != 0)
            return rc < 0 ? rc : 0;
        if (mono() > end)
            return -ETIMEDOUT;
        if (!v2 && frozen) /* v1 re-tries stragglers on each write */
            write_str(cg->paths[cg->freezer_index], "freezer.state", "FROZEN");
        usleep(200);
    }
}
