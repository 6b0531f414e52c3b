/* limits.c - a sandbox's "resources" (cpu, memory, pids, disk; gpu in gpu.c):
 * parsing and validation for Sandbox.create and function workers, the
 * sl_sandbox_config fields they turn into, OOM-kill reporting, and which
 * limits this host can enforce (GET /v1/health). Enforcement itself is in
 * csrc/sandbox (sl_cgroup_set_limits, the disk tmpfs in sl_sandbox_spawn). */
#include <string.h>
#include <unistd.h>

#include "sl_log.h"
#include "sl_runner.h"

#define MIB (1024ULL * 1024ULL)
#define CPU_PERIOD_US 100000ULL
#define MAX_MIB (1ULL << 24) /* 16 TiB: anything larger is a unit mistake */
#define MAX_PIDS 4194304.0   /* the kernel's PID_MAX_LIMIT */

static int num_of(const msgpack_object *o, double *out)
{
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        *out = (double)o->via.u64;
        return 1;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        *out = (double)o->via.i64;
        return 1;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        *out = o->via.f64;
        return 1;
    default:
        return 0;
    }
}

/* An integer in [lo, hi], or a 400 naming field.key and what to send. */
static int whole(double x, double lo, double hi, const char *field, const char *key,
                 const char *unit, sl_err *e)
{
    if (!(x >= lo && x <= hi) || (double)(long long)x != x)
        return sl_err_set(e, 400,
                          "field '%s.%s' must be a whole number of %s in [%.0f, %.0f], got %g",
                          field, key, unit, lo, hi, x);
    return 0;
}

/* res: the resources map (or nil/absent: no limits). The Python client sends
 * memory and disk in MiB, already converted from "512Mi"-style strings. */
static int parse_map(sl_box *b, const msgpack_object *res, const char *field, sl_err *e)
{
    if (res == NULL || res->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (res->type != MSGPACK_OBJECT_MAP)
        return sl_err_set(e, 400, "field '%s' must be a map, got %s", field, sl_msg_type_name(res));
    for (uint32_t i = 0; i < res->via.map.size; i++) {
        const msgpack_object *k = &res->via.map.ptr[i].key, *v = &res->via.map.ptr[i].val;
        char key[16];
        double x;

        if (k->type != MSGPACK_OBJECT_STR || k->via.str.size >= sizeof(key))
            return sl_err_set(e, 400, "field '%s': keys must be cpu, memory, pids, disk or gpu",
                              field);
        memcpy(key, k->via.str.ptr, k->via.str.size);
        key[k->via.str.size] = '\0';
        /* Other APIs' spellings, in MiB as well (the client keeps them). */
        if (strcmp(key, "memory_mb") == 0)
            key[6] = '\0';
        else if (strcmp(key, "disk_mb") == 0)
            key[4] = '\0';
        if (strcmp(key, "cpu") != 0 && strcmp(key, "memory") != 0 && strcmp(key, "pids") != 0 &&
            strcmp(key, "disk") != 0 && strcmp(key, "gpu") != 0)
            return sl_err_set(e, 400,
                              "field '%s': unknown key '%.15s' (expected cpu, memory, pids, disk, "
                              "gpu)",
                              field, key);
        if (v->type == MSGPACK_OBJECT_NIL)
            continue;
        if (strcmp(key, "gpu") == 0) {
            if (sl_gpu_parse(b, v, field, e) < 0)
                return -1;
            continue;
        }
        if (!num_of(v, &x))
            return sl_err_set(e, 400, "field '%s.%s' must be a number, got %s", field, key,
                              sl_msg_type_name(v));
        if (strcmp(key, "cpu") == 0) {
            /* cfs quotas below 1 ms per 100 ms period are refused by the kernel. */
            if (!(x >= 0.01 && x <= 1024.0))
                return sl_err_set(e, 400, "field '%s.cpu' must be in [0.01, 1024] cores, got %g",
                                  field, x);
            b->limits.cpu_period_us = CPU_PERIOD_US;
            b->limits.cpu_quota_us = (unsigned long long)(x * (double)CPU_PERIOD_US + 0.5);
            b->res_cpu = x;
        } else if (strcmp(key, "memory") == 0) {
            if (whole(x, 4, (double)MAX_MIB, field, key, "MiB", e) < 0)
                return -1;
            b->limits.memory_bytes = (unsigned long long)x * MIB;
        } else if (strcmp(key, "pids") == 0) {
            if (whole(x, 1, MAX_PIDS, field, key, "processes", e) < 0)
                return -1;
            b->limits.pids = (unsigned long long)x;
        } else {
            if (whole(x, 1, (double)MAX_MIB, field, key, "MiB", e) < 0)
                return -1;
            b->disk_bytes = (unsigned long long)x * MIB;
        }
        b->has_resources = 1;
    }
    return 0;
}

/* The limits this runner can enforce: SL_CG_LIMIT_* bits, plus disk (a
 * tmpfs the runner mounts: root only). */
#define LIMIT_DISK 0x100u

static unsigned enforceable(void)
{
    return sl_cgroup_enforceable() | (geteuid() == 0 ? LIMIT_DISK : 0);
}

/* A limit asked for that this host cannot enforce is refused up front (400
 * naming it) rather than ignored: a sandbox must never run believing it is
 * capped when it is not. The usual cause is a rootless runner without a
 * delegated cgroup (docs/security.md). */
static int check_enforceable(const sl_box *b, const char *field, sl_err *e)
{
    unsigned bits = enforceable();
    const char *what = NULL;

    if (b->limits.memory_bytes && !(bits & SL_CG_LIMIT_MEMORY))
        what = "memory";
    else if (b->limits.pids && !(bits & SL_CG_LIMIT_PIDS))
        what = "pids";
    else if (b->limits.cpu_quota_us && !(bits & SL_CG_LIMIT_CPU))
        what = "cpu";
    else if (b->disk_bytes && !(bits & LIMIT_DISK))
        what = "disk";
    if (!what)
        return 0;
    return sl_err_set(
        e, 400,
        "field '%s.%s': this runner cannot enforce a %s limit (%s); "
        "`sandlot runner status` lists the limits it enforces",
        field, what, what,
        strcmp(what, "disk") == 0 ? "the disk cap is a tmpfs only a root runner can mount"
        : geteuid() != 0
            ? "it is not root and has no writable delegated cgroup with that controller"
            : "no writable cgroup hierarchy has that controller");
}

int sl_limits_parse(sl_box *b, const msgpack_object *body, sl_err *e)
{
    if (parse_map(b, sl_msg_field(body, "resources"), "resources", e) < 0)
        return -1;
    return check_enforceable(b, "resources", e);
}

int sl_limits_from_opts(sl_box *b, const char *opts, size_t len, sl_err *e)
{
    msgpack_unpacked up;
    const msgpack_object *res;
    int rc = sl_msg_stored_field(opts, len, "resources", &up, &res, e);

    if (rc == 0)
        rc = parse_map(b, res, "options.resources", e);
    if (rc == 0)
        rc = check_enforceable(b, "options.resources", e);
    msgpack_unpacked_destroy(&up);
    return rc;
}

const sl_cgroup_limits *sl_limits_cgroup(const sl_box *b)
{
    const sl_cgroup_limits *l = &b->limits;

    return l->memory_bytes || l->pids || l->cpu_quota_us ? l : NULL;
}

/* The OOM killer leaves no trace on the victim itself (just SIGKILL), so a
 * -9 exit is attributed to it when the sandbox's oom_kill counter moved since
 * the last attribution. One counter per sandbox: with several processes
 * dying at once, each new kill marks one -9 exit. */
void sl_limits_proc_exited(sl_proc *p, int exit_code)
{
    sl_box *b = p->box;
    long long n;

    /* Without a memory limit of its own, a kill by a limit above the runner
     * or by the host running out is seen only where the sandbox still has a
     * memory cgroup (cgroup2 with the controller); on cgroup v1 such a
     * sandbox has none (sl_cgroup_create), so it reads as a plain SIGKILL. */
    if (exit_code != -9 || b->sbx.cg.n == 0)
        return;
    n = sl_cgroup_oom_kills(&b->sbx.cg);
    if (n > b->oom_seen) {
        p->oom_killed = 1;
        b->oom_seen++;
        sl_info("sandbox %s: process %u was killed by the OOM killer (memory limit %llu MiB, "
                "0 = none)",
                b->id, p->id, b->limits.memory_bytes / MIB);
    }
}

void sl_limits_box_reaped(sl_box *b)
{
    long long n = b->sbx.cg.n > 0 ? sl_cgroup_oom_kills(&b->sbx.cg) : -1;

    if (n > b->oom_kills)
        b->oom_kills = n;
}

int sl_limits_box_oom(const sl_box *b)
{
    long long n = b->oom_kills > b->oom_seen ? b->oom_kills : b->oom_seen;

    /* Live count only with a memory limit: listing many sandboxes should not
     * read a cgroup file each; others show what their exits revealed. */
    if (b->alive && b->sbx.cg.n > 0 && b->limits.memory_bytes) {
        long long live = sl_cgroup_oom_kills(&b->sbx.cg);

        if (live > n)
            n = live;
    }
    return n > 0;
}

void sl_limits_pack(sl_resp *r, const sl_box *b)
{
    size_t n = 0;

    if (!b->has_resources) {
        sl_r_nil(r);
        return;
    }
    n = (b->res_cpu > 0) + (b->limits.memory_bytes > 0) + (b->limits.pids > 0) +
        (b->disk_bytes > 0) + (b->gpu_want > 0);
    sl_r_map(r, n);
    if (b->res_cpu > 0)
        sl_r_kfloat(r, "cpu", b->res_cpu);
    if (b->limits.memory_bytes > 0)
        sl_r_kint(r, "memory", (int64_t)(b->limits.memory_bytes / MIB));
    if (b->limits.pids > 0)
        sl_r_kint(r, "pids", (int64_t)b->limits.pids);
    if (b->disk_bytes > 0)
        sl_r_kint(r, "disk", (int64_t)(b->disk_bytes / MIB));
    if (b->gpu_want > 0)
        sl_gpu_pack_box(r, b);
}

void sl_limits_pack_health(sl_resp *r, const sl_runner *rt)
{
    unsigned bits = enforceable();

    sl_r_map(r, 6);
    sl_r_kbool(r, "memory", (bits & SL_CG_LIMIT_MEMORY) != 0);
    sl_r_kbool(r, "pids", (bits & SL_CG_LIMIT_PIDS) != 0);
    sl_r_kbool(r, "cpu", (bits & SL_CG_LIMIT_CPU) != 0);
    sl_r_kbool(r, "disk", (bits & LIMIT_DISK) != 0);
    sl_r_kbool(r, "gpu", rt->ngpus > 0);
    sl_r_str(r, "gpus"); /* gpu.c: total, free, types */
    sl_gpu_pack_health(r, rt);
}
