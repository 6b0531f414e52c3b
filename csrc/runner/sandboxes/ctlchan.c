/* ctlchan.c - reading the control channel of each sandbox (messages from
 * sandlot-init). Init runs code we do not control inside the sandbox's
 * namespaces, so every message is checked and a bad one is logged and
 * skipped, never trusted. */
#include <errno.h>
#include <string.h>

#include "sl_ctl.h"
#include "sl_log.h"
#include "sl_runner.h"
#include "sl_vm.h"

/* Messages handled per wake-up before yielding to other clients. */
#define BATCH 64

/* Whatever can write to init's end of the channel could flood the log:
 * complain about a sandbox's channel a limited number of times. */
#define MAX_WARNINGS 20
#define ctl_warn(b, fmt, ...)                                                                      \
    do {                                                                                           \
        if ((b)->ctl_warnings < MAX_WARNINGS)                                                      \
            sl_warn("sandbox %s: " fmt, (b)->id, __VA_ARGS__);                                     \
        else if ((b)->ctl_warnings == MAX_WARNINGS)                                                \
            sl_warn("sandbox %s: further control channel warnings suppressed", (b)->id);           \
        (b)->ctl_warnings++;                                                                       \
    } while (0)

/* Handle one queued message. Returns 1 if one was handled (or skipped), 0 if
 * nothing is queued, -1 when the channel is finished. */
static int handle_one(sl_box *b)
{
    sl_ctl_hdr h;
    char buf[4096];
    int rc = sl_ctl_recv(b->sbx.ctl_fd, &h, buf, sizeof(buf) - 1, NULL, NULL);
    if (rc == -EAGAIN || rc == -EWOULDBLOCK)
        return 0;
    if (rc == -EINTR)
        return 1;
    if (rc == -EBADMSG) {
        ctl_warn(b, "%s", "malformed control message skipped");
        return 1;
    }
    if (rc == -EPIPE) {
        sl_debug("sandbox %s: control channel closed", b->id);
        return -1;
    }
    if (rc < 0) {
        ctl_warn(b, "control channel: %s", strerror(-rc));
        return -1;
    }
    size_t len = (size_t)rc;
    buf[len] = '\0';
    sl_proc *p = h.id < b->nprocs ? b->procs[h.id] : NULL;
    switch (h.type) {
    case SL_CTL_READY:
        if (b->microvm)
            sl_vm_ready(b); /* a VM's monitor says READY once the guest is up */
        return 1;           /* consumed by sl_sandbox_spawn; a repeat means nothing */
    case SL_CTL_VM_FAILED:
        if (b->microvm) {
            size_t n = strnlen(buf, len);
            for (size_t i = 0; i < n; i++)
                if ((unsigned char)buf[i] < 0x20 || (unsigned char)buf[i] == 0x7f)
                    buf[i] = '?';
            buf[n > 400 ? 400 : n] = '\0';
            sl_vm_failed(b, buf);
        }
        return 1;
    case SL_CTL_VM_SNAPSHOT_DONE:
        if (b->microvm) {
            size_t n = strnlen(buf, len);
            for (size_t i = 0; i < n; i++)
                if ((unsigned char)buf[i] < 0x20 || (unsigned char)buf[i] == 0x7f)
                    buf[i] = '?';
            buf[n > 400 ? 400 : n] = '\0';
            sl_vm_snapshot_done(b, h.arg <= 4095 ? (int)h.arg : EIO, buf);
        }
        return 1;
    case SL_CTL_STARTED:
    case SL_CTL_SPAWN_FAILED:
    case SL_CTL_EXITED:
        break;
    default:
        ctl_warn(b, "unknown control message type %u skipped", h.type);
        return 1;
    }
    if (p == NULL) {
        ctl_warn(b, "control message %u for unknown process %u skipped", h.type, h.id);
        return 1;
    }
    if (h.type == SL_CTL_STARTED) {
        /* Pids inside a pid namespace fit in an int; anything else is noise. */
        sl_proc_started(p, h.arg <= 0x3fffffffu ? (pid_t)h.arg : 0);
    } else if (h.type == SL_CTL_SPAWN_FAILED) {
        /* The text comes from inside the sandbox: keep it printable. */
        size_t n = strnlen(buf, len);
        for (size_t i = 0; i < n; i++) {
            if ((unsigned char)buf[i] < 0x20 || (unsigned char)buf[i] == 0x7f)
                buf[i] = '?';
        }
        buf[n > 300 ? 300 : n] = '\0';
        sl_proc_spawn_failed(p, h.arg <= 4095 ? (int)h.arg : EINVAL, buf);
    } else {
        sl_proc_exited(p, (int)h.arg);
    }
    return 1;
}

static void stop_watching(sl_box *b)
{
    if (b->ctl_ev != NULL) {
        event_free(b->ctl_ev);
        b->ctl_ev = NULL;
    }
}

static void on_ctl(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sl_box *b = arg;
    for (int i = 0; i < BATCH; i++) {
        int rc = handle_one(b);
        if (rc == 0)
            return;
        if (rc < 0) {
            /* EOF: init is gone or going; SIGCHLD does the rest. */
            stop_watching(b);
            return;
        }
    }
}

int sl_ctl_watch(sl_box *b)
{
    b->ctl_ev = event_new(b->rt->base, b->sbx.ctl_fd, EV_READ | EV_PERSIST, on_ctl, b);
    if (b->ctl_ev == NULL || event_add(b->ctl_ev, NULL) != 0) {
        stop_watching(b);
        return -1;
    }
    return 0;
}

void sl_ctl_drain(sl_box *b)
{
    if (b->sbx.ctl_fd >= 0) {
        /* Bounded: a dead init cannot queue more than the socket holds. */
        for (int i = 0; i < 100000; i++) {
            if (handle_one(b) <= 0)
                break;
        }
    }
    stop_watching(b);
}
