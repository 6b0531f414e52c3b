/* vm_snap.c - a memory snapshot of a running microVM, inside its monitor.
 *
 * Guest RAM of a cold-booted VM is a memory-backend-file with share=on in
 * /dev/shm, so the monitor can read it directly. A snapshot:
 *   1. SYNC to the guest's pid 1 and wait for SYNCED, sending nothing else
 *      meanwhile: no frame from us is half-read in the guest when it stops;
 *   2. QMP `stop` (vCPUs paused);
 *   3. `migrate` to the snapshot's `state` file (passed with getfd) with the
 *      x-ignore-shared capability: only device state goes into it, RAM is
 *      skipped because it is shared (a few tens of KiB, ~10 ms);
 *   4. copy the RAM file to the snapshot's `ram`, keeping holes (untouched
 *      guest memory costs nothing);
 *   5. `cont`. The sandbox continues; the runner gets SNAPSHOT_DONE.
 * A restore maps `ram` with share=off (private copy-on-write: lazy, and
 * concurrent restores share the unmodified pages through the page cache) and
 * feeds `state` to `-incoming` (vm_monitor.c). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sl_ctl.h"
#include "vm_mon.h"

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int sl__mon_wait_migration(sl_mon *m, double timeout, char *out, size_t cap)
{
    double deadline = mono() + timeout;
    for (;;) {
        int rc = sl__qmp_cmd(&m->qmp, "{\"execute\":\"query-migrate\"}", -1, out, cap, 10);
        if (rc < 0) {
            if (rc != -EIO)
                snprintf(out, cap, "query-migrate: %s", strerror(-rc));
            return -1;
        }
        if (strstr(out, "\"completed\"") != NULL)
            return 0;
        if (strstr(out, "\"failed\"") != NULL || strstr(out, "\"cancelled\"") != NULL) {
            const char *d = strstr(out, "\"error-desc\": \"");
            char why[300];
            snprintf(why, sizeof(why), "migration failed: %s", d != NULL ? d + 15 : "(no reason)");
            char *q = strchr(why + 18, '"');
            if (q != NULL)
                *q = 0;
            snprintf(out, cap, "%s", why);
            return -1;
        }
        if (mono() > deadline) {
            snprintf(out, cap, "migration did not complete in %.0f s", timeout);
            return -1;
        }
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
}

/* Wait for SYNCED n, handling other guest frames as usual. */
static int sync_guest(sl_mon *m, uint32_t n)
{
    if (sl__mon_send(m, SL_VM_SYNC, 0, n, NULL, 0) < 0)
        return -1;
    double deadline = mono() + 10;
    while (m->synced != n) {
        if (mono() > deadline)
            return -1;
        struct pollfd p = {.fd = m->port, .events = POLLIN};
        if (poll(&p, 1, 100) > 0 && sl__mon_on_port(m) < 0)
            return -1;
    }
    return 0;
}

static void done(sl_mon *m, int err, const char *msg)
{
    sl__mon_ctl_send(m, SL_CTL_VM_SNAPSHOT_DONE, 0, (uint32_t)err, msg, strlen(msg));
}

void sl__mon_snapshot(sl_mon *m, const char *dir)
{
    static uint32_t seq;
    char out[1024], path[4300];
    if (m->ram[0] == 0) {
        done(m, ENOTSUP,
             "this microVM was itself resumed from a memory snapshot; snapshot the original "
             "(snapshots of resumed copies are not supported yet)");
        return;
    }
    if (sync_guest(m, ++seq) < 0) {
        done(m, ETIMEDOUT, "the guest's init did not answer (is the guest hung?)");
        return;
    }
    int rc = sl__qmp_cmd(&m->qmp, "{\"execute\":\"stop\"}", -1, out, sizeof(out), 10);
    if (rc < 0) {
        done(m, EIO, rc == -EIO ? out : "QMP stop failed");
        return;
    }
    int err = 0;
    char msg[512] = "";
    snprintf(path, sizeof(path), "%s/%s", dir, VM_SNAP_STATE);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        err = errno;
        snprintf(msg, sizeof(msg), "open %.300s: %s", path, strerror(err));
        goto resume;
    }
    const char *caps = "{\"execute\":\"migrate-set-capabilities\",\"arguments\":{\"capabilities\":"
                       "[{\"capability\":\"x-ignore-shared\",\"state\":true}]}}";
    if (sl__qmp_cmd(&m->qmp, caps, -1, out, sizeof(out), 10) < 0 ||
        sl__qmp_cmd(&m->qmp, "{\"execute\":\"getfd\",\"arguments\":{\"fdname\":\"snapfd\"}}", fd,
                    out, sizeof(out), 10) < 0 ||
        sl__qmp_cmd(&m->qmp, "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"fd:snapfd\"}}", -1,
                    out, sizeof(out), 10) < 0 ||
        sl__mon_wait_migration(m, 60, out, sizeof(out)) < 0) {
        close(fd);
        err = EIO;
        snprintf(msg, sizeof(msg), "saving device state: %.400s", out);
        goto resume;
    }
    if (fsync(fd) < 0 || close(fd) < 0) {
        err = errno;
        snprintf(msg, sizeof(msg), "writing %.300s: %s", path, strerror(err));
        goto resume;
    }
    snprintf(path, sizeof(path), "%s/%s", dir, VM_SNAP_RAM);
    long long data = sl__vm_copy_sparse(m->ram, path);
    if (data < 0) {
        err = (int)-data;
        snprintf(msg, sizeof(msg), "copying guest RAM: %s", strerror(err));
        goto resume;
    }
    snprintf(path, sizeof(path), "%s/%s", dir, VM_SNAP_CONF);
    FILE *f = fopen(path, "we");
    if (f == NULL ||
        fprintf(f, "%llu %u %llu\n%s\n", m->cfg->mem_mb, m->cfg->vcpus, m->cfg->rw_mb,
                m->cfg->root_image) < 0 ||
        fclose(f) != 0) {
        err = EIO;
        snprintf(msg, sizeof(msg), "writing %.300s", path);
        goto resume;
    }
    snprintf(msg, sizeof(msg), "%lld", data);
resume:
    rc = sl__qmp_cmd(&m->qmp, "{\"execute\":\"cont\"}", -1, out, sizeof(out), 10);
    if (rc < 0 && err == 0) {
        err = EIO;
        snprintf(msg, sizeof(msg), "resuming the VM after the snapshot: %.300s", out);
    }
    done(m, err, msg);
}
