/* vm_box.c - the runner's side of the microVM tier: the "isolation" field,
 * starting a microVM box, memory snapshots as API requests, and the health
 * report. The box then runs through the container tier's code (exec,
 * output, wait, terminate, timeout) because its monitor speaks sl_ctl.h. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sl_ctl.h"
#include "sl_log.h"
#include "sl_runner.h"
#include "sl_vm.h"
#include "snap_int.h"

#define MIB (1024ULL * 1024ULL)
#define VM_MEM_DEFAULT_MB 256
#define VM_MEM_MIN_MB 128
#define VM_MEM_MAX_MB 16384
#define VM_VCPUS_MAX 16

/* A memory snapshot in flight (one per box: b->vm_snap). */
typedef struct sl_vmsnap {
    char id[SNAP_ID_LEN + 1];
    char *tmp, *final;
    double t0;
    snap_meta meta;
} sl_vmsnap;

void sl_vm_runner_init(sl_runner *rt)
{
    if (rt->vm_guest_dir == NULL) {
        const char *env = getenv("SANDLOT_MICROVM_DIR");
        const char *home = getenv("HOME");
        const char *xdg = getenv("XDG_CACHE_HOME");
        char buf[PATH_MAX];
        if (env != NULL && env[0])
            snprintf(buf, sizeof(buf), "%s", env);
        else if (geteuid() == 0)
            snprintf(buf, sizeof(buf), "/var/cache/sandlot/microvm");
        else if (xdg != NULL && xdg[0])
            snprintf(buf, sizeof(buf), "%s/sandlot/microvm", xdg);
        else
            snprintf(buf, sizeof(buf), "%s/.cache/sandlot/microvm", home ? home : "/tmp");
        rt->vm_guest_dir = strdup(buf);
    }
    if (rt->vm_guest_dir == NULL) {
        snprintf(rt->vm_why, sizeof(rt->vm_why), "out of memory");
        return;
    }
    if (rt->userns) {
        snprintf(rt->vm_why, sizeof(rt->vm_why),
                 "microVMs need a root runner (cgroup, namespaces and /dev/kvm for QEMU)");
        return;
    }
    rt->vm_ok = sl_vm_probe(rt->vm_guest_dir, &rt->vm_accel, &rt->vm_qemu, rt->vm_why,
                            sizeof(rt->vm_why)) == 0;
    if (rt->vm_ok && strcmp(rt->vm_accel, "tcg") == 0)
        rt->vm_tsc_khz = sl_vm_tsc_khz();
    if (rt->vm_ok)
        sl_info("microVM tier: %s accel, guest in %s%s%s", rt->vm_accel, rt->vm_guest_dir,
                rt->vm_why[0] ? "; " : "", rt->vm_why);
    else
        sl_info("microVM tier unavailable: %s", rt->vm_why);
}

void sl_vm_pack_health(sl_resp *r, const sl_runner *rt)
{
    sl_r_map(r, 5);
    sl_r_kbool(r, "available", rt->vm_ok);
    sl_r_kstr(r, "accel", rt->vm_ok ? rt->vm_accel : NULL);
    sl_r_kstr(r, "note", rt->vm_why[0] ? rt->vm_why : NULL);
    sl_r_kstr(r, "guest_dir", rt->vm_guest_dir);
    sl_r_kstr(r, "default_isolation", rt->default_microvm ? "microvm" : "container");
}

int sl_vm_parse(sl_box *b, const msgpack_object *body, sl_err *e)
{
    char *iso = NULL;
    if (sl_msg_str(body, "isolation", 0, &iso, e) < 0)
        return -1;
    if (iso == NULL) {
        b->microvm = b->rt->default_microvm;
    } else if (strcmp(iso, "microvm") == 0) {
        b->microvm = 1;
    } else if (strcmp(iso, "container") == 0) {
        b->microvm = 0;
    } else {
        sl_err_set(e, 400, "field 'isolation' must be 'container' or 'microvm', got '%.40s'", iso);
        free(iso);
        return -1;
    }
    free(iso);
    return 0;
}

/* What a microVM box cannot have yet: a clear 400 instead of a silent drop. */
static int check_supported(const sl_box *b, sl_err *e)
{
    const char *what = NULL;
    if (b->nvolumes > 0)
        what = "volumes";
    else if (b->net != NULL)
        what = "network and ports";
    else if (b->snapshot != NULL && b->vm_restore == NULL)
        what = "restoring a filesystem snapshot";
    else if (b->image != NULL && strcmp(b->image, "host") != 0)
        what = "images other than the host's ('host')";
    if (what == NULL)
        return 0;
    return sl_err_set(e, 400,
                      "%s: not available with isolation 'microvm' yet; use isolation "
                      "'container' for it",
                      what);
}

/* Read <snap>/vm.conf: the RAM size, vCPUs and layer size the VM had. */
static int read_conf(const char *dir, sl_vm_config *c, char *root, size_t rootcap, sl_err *e)
{
    char p[PATH_MAX];
    snprintf(p, sizeof(p), "%s/vm.conf", dir);
    FILE *f = fopen(p, "re");
    if (f == NULL)
        return sl_err_set(e, 400, "memory snapshot is incomplete (no vm.conf): %s",
                          strerror(errno));
    char fmt[32];
    snprintf(fmt, sizeof(fmt), "%%llu %%u %%llu %%%zus", rootcap - 1);
    int n = fscanf(f, fmt, &c->mem_mb, &c->vcpus, &c->rw_mb, root);
    fclose(f);
    if (n != 4 || c->mem_mb < VM_MEM_MIN_MB || c->mem_mb > VM_MEM_MAX_MB || c->vcpus < 1 ||
        c->vcpus > VM_VCPUS_MAX)
        return sl_err_set(e, 400, "memory snapshot is corrupt (vm.conf)");
    /* The RAM file must be whole: a truncated one would hand the guest zero
     * pages in the middle of its kernel. */
    struct stat st;
    snprintf(p, sizeof(p), "%s/ram", dir);
    if (stat(p, &st) < 0 || (unsigned long long)st.st_size != c->mem_mb * MIB)
        return sl_err_set(e, 400,
                          "memory snapshot is corrupt: its RAM image is %lld bytes, expected "
                          "%llu",
                          stat(p, &st) < 0 ? -1LL : (long long)st.st_size, c->mem_mb * MIB);
    snprintf(p, sizeof(p), "%s/state", dir);
    if (stat(p, &st) < 0 || st.st_size < 64)
        return sl_err_set(e, 400, "memory snapshot is corrupt: its device state is missing");
    return 0;
}

int sl_vm_start_box(sl_box *b, sl_err *e)
{
    sl_runner *rt = b->rt;
    if (!rt->vm_ok)
        return sl_err_set(e, 400, "isolation 'microvm' is not available on this runner: %s",
                          rt->vm_why);
    if (check_supported(b, e) < 0)
        return -1;
    char root[PATH_MAX];
    snprintf(root, sizeof(root), "%s/hostroot.erofs", rt->vm_guest_dir);
    sl_vm_config c = {
        .id = b->id,
        .guest_dir = rt->vm_guest_dir,
        .root_image = root,
        .restore_dir = b->vm_restore,
        .accel = rt->vm_accel,
        .qemu = rt->vm_qemu,
        .tsc_khz = rt->vm_tsc_khz,
    };
    if (b->vm_restore != NULL) {
        if (read_conf(b->vm_restore, &c, root, sizeof(root), e) < 0)
            return -1;
    } else {
        c.mem_mb = b->limits.memory_bytes ? b->limits.memory_bytes / MIB : VM_MEM_DEFAULT_MB;
        if (c.mem_mb < VM_MEM_MIN_MB || c.mem_mb > VM_MEM_MAX_MB)
            return sl_err_set(e, 400,
                              "resources.memory is the guest's RAM with isolation 'microvm': "
                              "%llu MiB..%llu MiB, got %llu MiB",
                              (unsigned long long)VM_MEM_MIN_MB, (unsigned long long)VM_MEM_MAX_MB,
                              c.mem_mb);
        double cpu = b->res_cpu > 0 ? ceil(b->res_cpu) : 1;
        c.vcpus = cpu > VM_VCPUS_MAX ? VM_VCPUS_MAX : (unsigned)cpu;
        /* The writable layer lives in guest RAM (a snapshot keeps it);
         * resources.disk caps it, else half the RAM. */
        c.rw_mb = b->disk_bytes ? b->disk_bytes / MIB : c.mem_mb / 2;
        if (c.rw_mb < 1)
            c.rw_mb = 1;
    }
    b->vm_mem_mb = c.mem_mb;
    b->vm_vcpus = c.vcpus;
    b->dir = sl_path_join(rt->sandboxes_dir, b->id);
    if (b->dir == NULL)
        return sl_err_set(e, 500, "out of memory");
    if (mkdir(b->dir, 0700) < 0)
        return sl_err_set(e, 500, "mkdir %s: %s", b->dir, strerror(errno));
    b->dir_made = 1;
    c.dir = b->dir;
    char errbuf[512] = "";
    int rc = sl_vm_spawn(&c, &b->sbx, errbuf, sizeof(errbuf));
    if (rc < 0)
        return sl_err_set(e, rc == -EAGAIN || rc == -ENOMEM ? 503 : 500, "microVM setup failed: %s",
                          errbuf[0] ? errbuf : strerror(-rc));
    b->alive = 1;
    rt->nalive++;
    /* Its monitor's exit is found by pid (registry.c), as a container's init. */
    sl_reg_pid_add(rt, b);
    return 0;
}

/* ---- memory snapshots ---- */

static void vmsnap_free(sl_vmsnap *s)
{
    if (s == NULL)
        return;
    sl__snap_meta_free(&s->meta);
    free(s->tmp);
    free(s->final);
    free(s);
}

void sl_vm_snapshot_req(sl_req *r, sl_box *b)
{
    sl_runner *rt = r->rt;
    sl_err e;
    if (b->vm_snap != NULL) {
        sl_reply_error(r, 409, "a snapshot of sandbox %s (%s) is already being taken", b->id,
                       b->vm_snap->id);
        return;
    }
    sl_vmsnap *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        sl_reply_error(r, 500, "out of memory");
        return;
    }
    memcpy(s->id, "sn-", 3);
    if (sl_random_hex(s->id + 3, 16) < 0) {
        sl_err_set(&e, 500, "getrandom failed");
        goto fail;
    }
    if (sl__snap_fill_meta(&s->meta, s->id, "memory", "vm", b, &e) < 0 ||
        sl_msg_str(r->body, "label", 0, &s->meta.label, &e) < 0)
        goto fail;
    if (s->meta.label != NULL && strlen(s->meta.label) > 200) {
        sl_err_set(&e, 400, "field 'label' must be at most 200 bytes");
        goto fail;
    }
    if (asprintf(&s->tmp, "%s/snapshots/.tmp-%s", rt->state_dir, s->id) < 0)
        s->tmp = NULL;
    if (s->tmp == NULL || (s->final = sl__snap_path(rt, s->id, NULL)) == NULL) {
        sl_err_set(&e, 500, "out of memory");
        goto fail;
    }
    if (mkdir(s->tmp, 0700) < 0) {
        sl_err_set(&e, 500, "mkdir %s: %s", s->tmp, strerror(errno));
        goto fail;
    }
    sl_ctl_hdr h = {.type = SL_CTL_VM_SNAPSHOT, .id = 0, .arg = 0};
    int rc = sl_ctl_send(b->sbx.ctl_fd, &h, s->tmp, strlen(s->tmp) + 1, NULL, 0);
    if (rc < 0) {
        sl_rm_rf(s->tmp);
        sl_err_set(&e, 500, "cannot reach the VM monitor of %s: %s", b->id, strerror(-rc));
        goto fail;
    }
    s->t0 = sl_mono();
    b->vm_snap = s;
    sl_info("snapshot %s of microVM %s: memory checkpoint", s->id, b->id);
    sl_hold_new(r, &b->vm_snap_hold, -1, NULL, b);
    return;
fail:
    vmsnap_free(s);
    sl_reply_err(r, &e);
}

void sl_vm_snapshot_done(sl_box *b, int err, const char *msg)
{
    sl_vmsnap *s = b->vm_snap;
    if (s == NULL)
        return; /* nobody asked: a stray message */
    b->vm_snap = NULL;
    sl_runner *rt = b->rt;
    char why[600] = "";
    if (err != 0) {
        snprintf(why, sizeof(why), "%s", msg);
    } else {
        s->meta.capture_seconds = sl_mono() - s->t0;
        s->meta.size_bytes = atof(msg);
        char *meta = sl_path_join(s->tmp, "meta");
        int rc = meta == NULL ? -ENOMEM : sl__snap_write_meta(meta, &s->meta);
        free(meta);
        if (rc < 0)
            snprintf(why, sizeof(why), "writing meta: %s", strerror(-rc));
        else if (rename(s->tmp, s->final) < 0)
            snprintf(why, sizeof(why), "rename %s: %s", s->final, strerror(errno));
    }
    sl_hold *h = b->vm_snap_hold;
    if (why[0]) {
        sl_warn("snapshot %s of %s failed: %s", s->id, b->id, why);
        if (sl_job_rm(rt, s->tmp) < 0)
            sl_warn("cannot remove %s", s->tmp);
        if (h != NULL)
            sl_hold_error(h, err == ENOTSUP ? 409 : 500, "snapshot of %s failed: %s", b->id, why);
    } else {
        sl_info("snapshot %s of %s taken (%.3f s, %.0f bytes)", s->id, b->id,
                s->meta.capture_seconds, s->meta.size_bytes);
        if (h != NULL) {
            sl_resp resp;
            sl__snap_pack_info(&resp, "snapshot", &s->meta);
            sl_hold_reply(h, 201, &resp);
        }
    }
    vmsnap_free(s);
}

void sl_vm_box_ended(sl_box *b)
{
    if (b->vm_snap != NULL)
        sl_vm_snapshot_done(b, EPIPE, "the sandbox ended while it was being captured");
    const char *why = b->vm_error != NULL ? b->vm_error : "its VM monitor ended";
    /* A bad snapshot or a guest that cannot boot is the request's error. */
    int status = b->vm_restore != NULL ? 400 : 500;
    const char *what =
        b->vm_restore != NULL ? "could not be resumed from its snapshot" : "did not boot";
    if (b->vm_ready_hold != NULL) {
        sl_hold_error(b->vm_ready_hold, status, "microVM %s %s: %s", b->id, what, why);
        sl_reg_hide(b->rt, b); /* nobody learnt its id */
    }
    sl_proc *entry = b->nprocs > 0 ? b->procs[0] : NULL;
    if (entry != NULL && entry->start != NULL)
        sl_hold_error(entry->start, status, "microVM %s %s: %s", b->id, what, why);
}

void sl_vm_ready(sl_box *b)
{
    if (b->vm_ready_hold == NULL)
        return;
    sl_info("microVM %s is up", b->id);
    sl_resp resp;
    sl_pack_box_reply(&resp, b);
    sl_hold_reply(b->vm_ready_hold, 201, &resp);
}

void sl_vm_failed(sl_box *b, const char *why)
{
    sl_warn("microVM %s: %s", b->id, why);
    free(b->vm_error);
    b->vm_error = strdup(why);
}
