/* sl_cgroup.h - one cgroup per sandbox on cgroup v2, v1, or a v1/v2 hybrid.
 *
 * Detects the layout once (sl_cgroup_detect): pure v2 (/sys/fs/cgroup is
 * cgroup2), hybrid (v1 controllers plus cgroup2 at /sys/fs/cgroup/unified),
 * or v1 only. Sandboxes are created below the runner's own cgroup in each
 * hierarchy (read from /proc/self/cgroup) under "sandlot/<id>", so their usage
 * is accounted to whoever runs the runner. Killing uses cgroup.kill where the
 * kernel has it (v2, 5.14+), else freezer + SIGKILL of every member.
 */
#ifndef SL_CGROUP_H
#define SL_CGROUP_H

#include <sys/types.h>

enum sl_cg_mode { SL_CG_NONE = 0, SL_CG_V1 = 1, SL_CG_V2 = 2, SL_CG_HYBRID = 3 };

#define SL_CG_MAX_PATHS 6

typedef struct sl_cgroup {
    int n;                        /* number of directories created */
    char *paths[SL_CG_MAX_PATHS]; /* absolute cgroup dirs (malloc'd) */
    int v2_index;                 /* index of the cgroup2 dir in paths, or -1 */
    int freezer_index;            /* index of the v1 freezer dir, or -1 */
} sl_cgroup;

/* Limits for one sandbox; 0 in a field means "no limit". */
typedef struct sl_cgroup_limits {
    unsigned long long memory_bytes; /* v2 memory.max (+ swap.max 0); v1 limit_in_bytes (+ memsw) */
    unsigned long long pids;         /* pids.max */
    unsigned long long cpu_quota_us; /* v2 cpu.max "quota period"; v1 cfs_quota_us */
    unsigned long long cpu_period_us; /* and cfs_period_us; 0 with a quota: 100000 */
} sl_cgroup_limits;

/* Bits of sl_cgroup_enforceable(). */
#define SL_CG_LIMIT_MEMORY 1u
#define SL_CG_LIMIT_PIDS 2u
#define SL_CG_LIMIT_CPU 4u

/* Detect the host layout; cached after the first call. */
enum sl_cg_mode sl_cgroup_detect(void);
const char *sl_cgroup_mode_name(enum sl_cg_mode m); /* "v1" "v2" "hybrid" "none" */

/* Create the cgroup dirs for sandbox id. Returns 0 or -errno. With no usable
 * hierarchy returns 0 with cg->n == 0 (the pid namespace still kills all).
 * want_memory 0: skip a cgroup-v1 hierarchy that holds only the memory
 * controller (no memory limit to set there, and its cgroups linger after
 * removal; see sl_cgroup.c). cgroup2 is one tree and always joined. */
int sl_cgroup_create(sl_cgroup *cg, const char *id, int want_memory);
/* Which limits this host lets the runner enforce (SL_CG_LIMIT_* bits): a
 * hierarchy that has the controller and that we may write to. Probed once. */
unsigned sl_cgroup_enforceable(void);
/* Apply lim to cg's dirs (call before any process joins). Every non-zero
 * limit must land in at least one hierarchy: -EOPNOTSUPP (with the limit's
 * name in *what) when none has the controller, -errno when a write failed. */
int sl_cgroup_set_limits(const sl_cgroup *cg, const sl_cgroup_limits *lim, const char **what);
/* How many processes of cg the OOM killer killed so far (v2 memory.events,
 * v1 memory.oom_control "oom_kill"), or -1 when no hierarchy reports it. */
long long sl_cgroup_oom_kills(const sl_cgroup *cg);
/* Move pid into every dir of cg. */
int sl_cgroup_attach(const sl_cgroup *cg, pid_t pid);
/* Kill every process in cg. */
void sl_cgroup_kill(const sl_cgroup *cg);
/* rmdir every dir (retrying briefly while the kernel drains) and free paths. */
void sl_cgroup_destroy(sl_cgroup *cg);
/* Remove the cgroups of sandbox id left by a runner that is gone, in every
 * hierarchy: kill whatever still runs in them (and in sub-cgroups), then
 * rmdir deepest first. Only for ids the caller owns (its state dir names
 * them): "sandlot/" is shared by every runner of this cgroup. Returns the
 * number of directories removed, or -EINVAL for a bad id. */
int sl_cgroup_sweep(const char *id);

#endif
