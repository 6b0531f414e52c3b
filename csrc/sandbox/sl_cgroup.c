/* sl_cgroup.c - one cgroup per sandbox on cgroup v2, v1, or a v1/v2 hybrid.
 *
 * The layout (which hierarchies exist, where they are mounted, where the
 * runner itself sits in each) is read once from /proc/self/mountinfo and
 * /proc/self/cgroup and cached. Sandboxes then live at
 *   <mount point><runner's own cgroup>/sandlot/<id>
 * in every hierarchy we use: the cgroup2 tree (for cgroup.kill and, on pure v2
 * hosts, all controllers) and the v1 memory, pids, cpu and freezer controllers.
 * Working out mount points from mountinfo (instead of assuming
 * /sys/fs/cgroup/<name>) keeps this right inside containers, where the mount
 * root is the container's cgroup and /proc/self/cgroup shows the full path.
 */
#include "sl_cgroup.h"

#include "sl_mountinfo.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The v1 controllers a sandbox is placed in. memory, pids and cpu carry the
 * limits (sl_cgroup_set_limits); freezer is the kill fallback without cgroup.kill. */
static const char *const v1_controllers[] = {"memory", "pids", "cpu", "freezer"};

typedef struct cg_base {
    char dir[PATH_MAX]; /* ".../<runner's cgroup>/sandlot" */
    int is_v2;
    int is_freezer;
    int memory_only; /* a v1 hierarchy with the memory controller and no other we use */
} cg_base;

static struct {
    enum sl_cg_mode mode;
    int n;
    cg_base base[SL_CG_MAX_PATHS];
} layout;
static pthread_once_t layout_once = PTHREAD_ONCE_INIT;

/* Is word one of the comma-separated items of list? */
static int has_item(const char *list, const char *word)
{
    size_t wl = strlen(word);

    for (const char *p = list; p && *p;) {
        const char *c = strchr(p, ',');
        size_t l = c ? (size_t)(c - p) : strlen(p);

        if (l == wl && memcmp(p, word, wl) == 0)
            return 1;
        p = c ? c + 1 : NULL;
    }
    return 0;
}

/* The runner's own path in one hierarchy from /proc/self/cgroup: the v2 line
 * ("0::/path") when ctrl is NULL, else the v1 line listing ctrl. */
static int own_path(const char *ctrl, char *out, size_t outlen)
{
    FILE *f = fopen("/proc/self/cgroup", "re");
    char line[PATH_MAX + 256];
    int found = 0;

    if (!f)
        return 0;
    while (!found && fgets(line, sizeof(line), f)) {
        char *c1 = strchr(line, ':'), *c2, *nl;

        if (!c1 || !(c2 = strchr(c1 + 1, ':')))
            continue;
        *c1 = *c2 = '\0';
        if ((nl = strchr(c2 + 1, '\n')))
            *nl = '\0';
        if (ctrl ? has_item(c1 + 1, ctrl) : (strcmp(line, "0") == 0 && c1[1] == '\0')) {
            found = snprintf(out, outlen, "%s", c2 + 1) < (int)outlen;
        }
    }
    fclose(f);
    return found;
}

/* Add <mnt>/<cgpath relative to root>/sandlot as a base dir. */
static void add_base(const char *mnt, const char *root, const char *cgpath, int is_v2,
                     int is_freezer, int memory_only)
{
    size_t rl = strlen(root);
    const char *rel;
    cg_base *b;

    if (layout.n >= SL_CG_MAX_PATHS)
        return;
    /* The mount shows the subtree at root; the runner must be inside it. */
    if (strcmp(root, "/") == 0)
        rel = cgpath;
    else if (strncmp(cgpath, root, rl) == 0 && (cgpath[rl] == '/' || cgpath[rl] == '\0'))
        rel = cgpath + rl;
    else
        return;
    while (*rel == '/')
        rel++;
    b = &layout.base[layout.n];
    if (snprintf(b->dir, sizeof(b->dir), "%s/%s%ssandlot", mnt, rel, *rel ? "/" : "") >=
        (int)sizeof(b->dir))
        return;
    b->is_v2 = is_v2;
    b->is_freezer = is_freezer;
    b->memory_only = memory_only;
    layout.n++;
}

static void detect_layout(void)
{
    int used[(sizeof(v1_controllers) / sizeof(v1_controllers[0]))] = {0};
    int have_v1 = 0, have_v2 = 0;
    char line[2 * PATH_MAX], cgpath[PATH_MAX];
    FILE *f = fopen("/proc/self/mountinfo", "re");

    layout.mode = SL_CG_NONE;
    layout.n = 0;
    if (!f)
        return;
    while (fgets(line, sizeof(line), f)) {
        /* id parent maj:min root mountpoint opts [optional...] - fstype source superopts */
        char *fields[6], *sep, *fstype, *super, *save = NULL;
        int i = 0;

        if (!(sep = strstr(line, " - ")))
            continue;
        *sep = '\0';
        fstype = strtok_r(sep + 3, " \n", &save);
        (void)strtok_r(NULL, " \n", &save); /* source */
        super = strtok_r(NULL, " \n", &save);
        if (!fstype || !super)
            continue;
        save = NULL;
        for (char *t = strtok_r(line, " ", &save); t && i < 6; t = strtok_r(NULL, " ", &save))
            fields[i++] = t;
        if (i < 5)
            continue;
        sl_mountinfo_unescape(fields[3]);
        sl_mountinfo_unescape(fields[4]);
        if (strcmp(fstype, "cgroup2") == 0) {
            if (have_v2)
                continue;
            have_v2 = 1;
            if (own_path(NULL, cgpath, sizeof(cgpath)))
                add_base(fields[4], fields[3], cgpath, 1, 0, 0);
        } else if (strcmp(fstype, "cgroup") == 0) {
            for (size_t c = 0; c < (sizeof(v1_controllers) / sizeof(v1_controllers[0])); c++) {
                if (used[c] || !has_item(super, v1_controllers[c]))
                    continue;
                have_v1 = 1;
                used[c] = 1;
                if (own_path(v1_controllers[c], cgpath, sizeof(cgpath)))
                    add_base(fields[4], fields[3], cgpath, 0,
                             strcmp(v1_controllers[c], "freezer") == 0,
                             strcmp(v1_controllers[c], "memory") == 0 && !has_item(super, "pids") &&
                                 !has_item(super, "cpu") && !has_item(super, "freezer"));
                /* cpu and cpuacct, or several controllers, can share one
                 * hierarchy: one directory covers them all. */
                break;
            }
        }
    }
    fclose(f);
    if (have_v2 && have_v1)
        layout.mode = SL_CG_HYBRID;
    else if (have_v2)
        layout.mode = SL_CG_V2;
    else if (have_v1)
        layout.mode = SL_CG_V1;
}

enum sl_cg_mode sl_cgroup_detect(void)
{
    pthread_once(&layout_once, detect_layout);
    return layout.mode;
}

const char *sl_cgroup_mode_name(enum sl_cg_mode m)
{
    switch (m) {
    case SL_CG_V1:
        return "v1";
    case SL_CG_V2:
        return "v2";
    case SL_CG_HYBRID:
        return "hybrid";
    default:
        return "none";
    }
}

/* Write a short string to dir/file. Returns 0 or -errno. */
static int write_file(const char *dir, const char *file, const char *val)
{
    char path[PATH_MAX];
    size_t len = strlen(val);
    ssize_t n;
    int fd, err = 0;

    if (snprintf(path, sizeof(path), "%s/%s", dir, file) >= (int)sizeof(path))
        return -ENAMETOOLONG;
    fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    do
        n = write(fd, val, len);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        err = -errno;
    else if ((size_t)n != len)
        err = -EIO;
    close(fd);
    return err;
}

static int valid_id(const char *id)
{
    size_t l = id ? strlen(id) : 0;

    if (l == 0 || l > 64 || strcmp(id, ".") == 0 || strcmp(id, "..") == 0)
        return 0;
    for (size_t i = 0; i < l; i++)
        if (id[i] == '/' || id[i] == '\n' || id[i] == '\0')
            return 0;
    return 1;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

int sl_cgroup_create(sl_cgroup *cg, const char *id, int want_memory)
{
    char path[PATH_MAX];

    if (!cg)
        return -EINVAL;
    memset(cg, 0, sizeof(*cg));
    cg->v2_index = cg->freezer_index = -1;
    if (!valid_id(id))
        return -EINVAL;
    sl_cgroup_detect();
    for (int i = 0; i < layout.n; i++) {
        const cg_base *b = &layout.base[i];

        /* A v1 memory cgroup outlives its rmdir while page cache is charged
         * to it (a "dying" memcg, ~330 KiB of unreclaimable slab here, freed
         * only when reclaim gets to those pages): a runner that starts and
         * ends many sandboxes piles them up. Only a memory limit needs one. */
        if (b->memory_only && !want_memory)
            continue;
        /* The "sandlot" parent is shared by all sandboxes and kept. A
         * hierarchy we may not write to (read-only cgroupfs in a container,
         * delegation missing) is skipped rather than failing every spawn: the
         * pid namespace still contains and kills the sandbox. */
        if (mkdir(b->dir, 0755) < 0 && errno != EEXIST) {
            if (errno == EACCES || errno == EPERM || errno == EROFS)
                continue;
            goto fail;
        }
        if (snprintf(path, sizeof(path), "%s/%s", b->dir, id) >= (int)sizeof(path)) {
            errno = ENAMETOOLONG;
            goto fail;
        }
        if (mkdir(path, 0755) < 0) {
            /* "sandlot" exists but is not ours (a root runner made it, and this
             * one is rootless): skipped like an unwritable hierarchy. */
            if (errno == EACCES || errno == EPERM || errno == EROFS)
                continue;
            /* Ids are random, so an existing dir is a leftover of a runner that
             * crashed; it is empty unless its processes are still alive. */
            if (errno != EEXIST || rmdir(path) < 0 || mkdir(path, 0755) < 0)
                goto fail;
        }
        cg->paths[cg->n] = strdup(path);
        if (!cg->paths[cg->n]) {
            rmdir(path);
            errno = ENOMEM;
            goto fail;
        }
        if (b->is_v2)
            cg->v2_index = cg->n;
        if (b->is_freezer)
            cg->freezer_index = cg->n;
        cg->n++;
        /* Limits are written by sl_cgroup_set_limits before the first
         * process joins. */
    }
    return 0;
fail : {
    int err = -errno;

    sl_cgroup_destroy(cg);
    return err;
}
}

int sl_cgroup_attach(const sl_cgroup *cg, pid_t pid)
{
    char buf[32];

    if (!cg || pid <= 0)
        return -EINVAL;
    snprintf(buf, sizeof(buf), "%d", (int)pid);
    for (int i = 0; i < cg->n; i++) {
        int err = write_file(cg->paths[i], "cgroup.procs", buf);

        if (err < 0)
            return err;
    }
    return 0;
}

/* SIGKILL every pid listed in dir/cgroup.procs; returns how many were listed. */
static int kill_listed(const char *dir)
{
    char path[PATH_MAX], line[32];
    int count = 0;
    FILE *f;

    if (snprintf(path, sizeof(path), "%s/cgroup.procs", dir) >= (int)sizeof(path))
        return 0;
    f = fopen(path, "re");
    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f)) {
        long pid = strtol(line, NULL, 10);

        if (pid > 0) {
            kill((pid_t)pid, SIGKILL);
            count++;
        }
    }
    fclose(f);
    return count;
}

void sl_cgroup_kill(const sl_cgroup *cg)
{
    if (!cg || cg->n == 0)
        return;
    /* cgroup.kill (v2, Linux 5.14+) kills atomically, forks included. */
    if (cg->v2_index >= 0 && write_file(cg->paths[cg->v2_index], "cgroup.kill", "1") == 0)
        return;
    if (cg->freezer_index >= 0) {
        const char *dir = cg->paths[cg->freezer_index];

        /* Freeze first so nothing can fork while we walk the member list;
         * SIGKILL is delivered to frozen tasks as soon as they are thawed. */
        if (write_file(dir, "freezer.state", "FROZEN") == 0) {
            for (int i = 0; i < 50; i++) {
                char path[PATH_MAX], state[16] = "";
                FILE *f;

                snprintf(path, sizeof(path), "%s/freezer.state", dir);
                f = fopen(path, "re");
                if (f) {
                    if (!fgets(state, sizeof(state), f))
                        state[0] = '\0';
                    fclose(f);
                }
                if (strncmp(state, "FROZEN", 6) == 0)
                    break;
                sleep_ms(1);
            }
        }
        kill_listed(dir);
        write_file(dir, "freezer.state", "THAWED");
        return;
    }
    /* No way to stop forks: repeat until the list stays empty (bounded). */
    for (int i = 0; i < 10 && kill_listed(cg->paths[0]) > 0; i++) {
    }
}

void sl_cgroup_destroy(sl_cgroup *cg)
{
    if (!cg)
        return;
    for (int i = cg->n - 1; i >= 0; i--) {
        /* EBUSY while the last members finish exiting; give the kernel up to
         * ~100 ms per directory, then leave it (a later run removes it). */
        for (int tries = 0; cg->paths[i] && rmdir(cg->paths[i]) < 0 && errno == EBUSY; tries++) {
            if (tries >= 50)
                break;
            sleep_ms(tries < 10 ? 1 : 2);
        }
        free(cg->paths[i]);
        cg->paths[i] = NULL;
    }
    cg->n = 0;
    cg->v2_index = cg->freezer_index = -1;
}

/* ---- leftovers of a runner that is gone ---- */

/* Kill every member of dir and of its descendants, then remove them all,
 * deepest first. Returns how many directories were removed. */
static int sweep_tree(const char *dir, int is_v2, int depth)
{
    int removed = 0;
    DIR *d;

    if (depth > 16)
        return 0;
    /* cgroup.kill covers the whole subtree at once; v1 lists members per dir. */
    if (!is_v2 || write_file(dir, "cgroup.kill", "1") < 0)
        kill_listed(dir);
    if ((d = opendir(dir)) != NULL) {
        struct dirent *de;

        while ((de = readdir(d)) != NULL) {
            char sub[PATH_MAX];

            if (de->d_type != DT_DIR || strcmp(de->d_name, ".") == 0 ||
                strcmp(de->d_name, "..") == 0)
                continue;
            if (snprintf(sub, sizeof(sub), "%s/%s", dir, de->d_name) >= (int)sizeof(sub))
                continue;
            removed += sweep_tree(sub, is_v2, depth + 1);
        }
        closedir(d);
    }
    /* EBUSY while killed members finish exiting: a bounded wait. */
    for (int tries = 0; rmdir(dir) < 0; tries++) {
        if (errno != EBUSY || tries >= 200)
            return removed;
        if (!is_v2)
            kill_listed(dir);
        sleep_ms(tries < 10 ? 1 : 5);
    }
    return removed + 1;
}

int sl_cgroup_sweep(const char *id)
{
    int removed = 0;

    if (!valid_id(id))
        return -EINVAL;
    sl_cgroup_detect();
    for (int i = 0; i < layout.n; i++) {
        char path[PATH_MAX];
        struct stat st;

        if (snprintf(path, sizeof(path), "%s/%s", layout.base[i].dir, id) >= (int)sizeof(path))
            continue;
        if (lstat(path, &st) < 0 || !S_ISDIR(st.st_mode))
            continue;
        removed += sweep_tree(path, layout.base[i].is_v2, 0);
    }
    return removed;
}

/* ---- limits ---- */

/* Write val to dir/file if the file exists: 1 written, 0 no such file (this
 * hierarchy lacks the controller), -errno on a failed write. */
static int try_write(const char *dir, const char *file, const char *val)
{
    int err = write_file(dir, file, val);

    if (err == -ENOENT)
        return 0;
    return err < 0 ? err : 1;
}

/* Does dir/file list word (cgroup.controllers, cgroup.subtree_control)? */
static int file_has_word(const char *dir, const char *file, const char *word)
{
    char path[PATH_MAX], buf[512];
    size_t wl = strlen(word);
    int found = 0;
    FILE *f;

    if (snprintf(path, sizeof(path), "%s/%s", dir, file) >= (int)sizeof(path))
        return 0;
    f = fopen(path, "re");
    if (!f)
        return 0;
    if (fgets(buf, sizeof(buf), f)) {
        for (char *p = buf; (p = strstr(p, word)) != NULL; p += wl) {
            if ((p == buf || p[-1] == ' ') && (p[wl] == ' ' || p[wl] == '\n' || p[wl] == '\0')) {
                found = 1;
                break;
            }
        }
    }
    fclose(f);
    return found;
}

/* On cgroup2 a child only gets memory.max & co. when its parent lists the
 * controllers in cgroup.subtree_control. Best effort, one at a time: a
 * controller the runner's own cgroup does not pass down stays unavailable
 * (sl_cgroup_enforceable reports it), the others still work. */
static void v2_enable(const char *parent)
{
    static const char *const ctl[] = {"+memory", "+pids", "+cpu"};

    for (size_t i = 0; i < sizeof(ctl) / sizeof(ctl[0]); i++)
        (void)write_file(parent, "cgroup.subtree_control", ctl[i]);
}

static unsigned enforceable_bits;
static pthread_once_t enforceable_once = PTHREAD_ONCE_INIT;

static void probe_enforceable(void)
{
    unsigned bits = 0;

    sl_cgroup_detect();
    for (int i = 0; i < layout.n; i++) {
        const cg_base *b = &layout.base[i];

        if (mkdir(b->dir, 0755) < 0 && errno != EEXIST)
            continue;
        if (access(b->dir, W_OK) < 0)
            continue;
        if (b->is_v2) {
            v2_enable(b->dir);
            if (file_has_word(b->dir, "cgroup.subtree_control", "memory"))
                bits |= SL_CG_LIMIT_MEMORY;
            if (file_has_word(b->dir, "cgroup.subtree_control", "pids"))
                bits |= SL_CG_LIMIT_PIDS;
            if (file_has_word(b->dir, "cgroup.subtree_control", "cpu"))
                bits |= SL_CG_LIMIT_CPU;
            continue;
        }
        /* v1: a hierarchy dir has the control files of its controllers. */
        if (access(b->dir, F_OK) == 0) {
            char p[PATH_MAX];

            if (snprintf(p, sizeof(p), "%s/memory.limit_in_bytes", b->dir) < (int)sizeof(p) &&
                access(p, W_OK) == 0)
                bits |= SL_CG_LIMIT_MEMORY;
            if (snprintf(p, sizeof(p), "%s/pids.max", b->dir) < (int)sizeof(p) &&
                access(p, W_OK) == 0)
                bits |= SL_CG_LIMIT_PIDS;
            if (snprintf(p, sizeof(p), "%s/cpu.cfs_quota_us", b->dir) < (int)sizeof(p) &&
                access(p, W_OK) == 0)
                bits |= SL_CG_LIMIT_CPU;
        }
    }
    enforceable_bits = bits;
}

unsigned sl_cgroup_enforceable(void)
{
    pthread_once(&enforceable_once, probe_enforceable);
    return enforceable_bits;
}

/* The memory limit in one dir: v2 files where they exist, else v1. */
static int set_mem(const char *d, unsigned long long bytes, int *hit)
{
    char buf[32];
    int rc;

    snprintf(buf, sizeof(buf), "%llu", bytes);
    if ((rc = try_write(d, "memory.max", buf)) < 0)
        return rc;
    if (rc) {
        *hit = 1;
        /* No swap either, so the limit is what the sandbox can use (absent
         * without swap accounting: nothing to swap to then). */
        rc = try_write(d, "memory.swap.max", "0");
        return rc < 0 ? rc : 0;
    }
    /* v1: limit_in_bytes first, memsw (memory + swap) must stay >= it. */
    if ((rc = try_write(d, "memory.limit_in_bytes", buf)) < 0)
        return rc;
    if (rc) {
        *hit = 1;
        rc = try_write(d, "memory.memsw.limit_in_bytes", buf);
        return rc < 0 ? rc : 0;
    }
    return 0;
}

/* The CPU quota in one dir: v2 cpu.max, else v1 period then quota. */
static int set_cpu(const char *d, unsigned long long quota, unsigned long long period, int *hit)
{
    char buf[64];
    int rc;

    snprintf(buf, sizeof(buf), "%llu %llu", quota, period);
    if ((rc = try_write(d, "cpu.max", buf)) < 0)
        return rc;
    if (rc) {
        *hit = 1;
        return 0;
    }
    snprintf(buf, sizeof(buf), "%llu", period);
    if ((rc = try_write(d, "cpu.cfs_period_us", buf)) <= 0)
        return rc;
    snprintf(buf, sizeof(buf), "%llu", quota);
    if ((rc = try_write(d, "cpu.cfs_quota_us", buf)) < 0)
        return rc;
    *hit = rc;
    return 0;
}

int sl_cgroup_set_limits(const sl_cgroup *cg, const sl_cgroup_limits *lim, const char **what)
{
    unsigned long long period;
    int mem = 0, pids = 0, cpu = 0, rc;
    const char *dummy;

    if (!what)
        what = &dummy;
    *what = "cgroup";
    if (!cg || !lim)
        return -EINVAL;
    period = lim->cpu_period_us ? lim->cpu_period_us : 100000;
    for (int i = 0; i < cg->n; i++) {
        const char *d = cg->paths[i];
        char buf[32];

        if (i == cg->v2_index && (lim->memory_bytes || lim->pids || lim->cpu_quota_us)) {
            char parent[PATH_MAX];
            char *slash;

            snprintf(parent, sizeof(parent), "%s", d);
            if ((slash = strrchr(parent, '/')) != NULL) {
                *slash = '\0';
                v2_enable(parent);
            }
        }
        if (lim->memory_bytes && (rc = set_mem(d, lim->memory_bytes, &mem)) < 0) {
            *what = "memory";
            return rc;
        }
        if (lim->pids) {
            snprintf(buf, sizeof(buf), "%llu", lim->pids);
            if ((rc = try_write(d, "pids.max", buf)) < 0) {
                *what = "pids";
                return rc;
            }
            pids |= rc;
        }
        if (lim->cpu_quota_us && (rc = set_cpu(d, lim->cpu_quota_us, period, &cpu)) < 0) {
            *what = "cpu";
            return rc;
        }
    }
    /* A limit asked for but enforced nowhere must not pass silently. */
    if (lim->memory_bytes && !mem)
        *what = "memory";
    else if (lim->pids && !pids)
        *what = "pids";
    else if (lim->cpu_quota_us && !cpu)
        *what = "cpu";
    else
        return 0;
    return -EOPNOTSUPP;
}

/* The "oom_kill N" counter of dir/file, or -1. */
static long long read_oom_kill(const char *dir, const char *file)
{
    char path[PATH_MAX], line[128];
    long long v = -1;
    FILE *f;

    if (snprintf(path, sizeof(path), "%s/%s", dir, file) >= (int)sizeof(path))
        return -1;
    f = fopen(path, "re");
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "oom_kill ", 9) == 0) {
            v = strtoll(line + 9, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

long long sl_cgroup_oom_kills(const sl_cgroup *cg)
{
    long long best = -1;

    if (!cg)
        return -1;
    for (int i = 0; i < cg->n; i++) {
        long long v = read_oom_kill(cg->paths[i], "memory.events");

        if (v < 0)
            v = read_oom_kill(cg->paths[i], "memory.oom_control");
        if (v > best)
            best = v;
    }
    return best;
}
