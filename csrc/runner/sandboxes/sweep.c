/* sweep.c - a starting runner removes what sandboxes of an earlier runner on
 * the same state dir left behind.
 *
 * Ownership is decided by the state dir, never by "everything under
 * sandlot/": many runners share one machine (and one parent cgroup), each
 * with its own state dir, held by flock (store.c). A directory
 * <state>/sandboxes/<id> exists from before the sandbox's cgroup is made
 * until after it is removed (lifecycle.c), so every leftover of a runner
 * that crashed is named by one of those directories:
 *
 *   - mounts at or below the dir: the disk-limit tmpfs on the dir itself and
 *     the s3fs FUSE mounts under <dir>/s3/ (their s3fs daemons, in sessions
 *     of their own, exit once unmounted);
 *   - the cgroup <runner's cgroup>/sandlot/<id> in every hierarchy (v1 and
 *     v2), with anything still running in it killed first;
 *   - the dir itself.
 *
 * The veth pair went with the sandbox's network namespace when its init died,
 * and the runner's nftables table is replaced at start (net.c).
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

#include "sl_log.h"
#include "sl_mountinfo.h"
#include "sl_runner.h"

/* How many mounts one sweep of a dir detaches at most (stacked ones too). */
#define MAX_MOUNTS 256

static int cmp_len_desc(const void *a, const void *b)
{
    size_t la = strlen(*(char *const *)a), lb = strlen(*(char *const *)b);
    return la < lb ? 1 : la > lb ? -1 : 0;
}

/* Mount points at or below dir, in the runner's mount namespace. */
static size_t mounts_under(const char *dir, char **out, size_t cap)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (f == NULL)
        return 0;
    size_t n = 0, dl = strlen(dir);
    char line[8192];
    while (n < cap && fgets(line, sizeof(line), f) != NULL) {
        /* id parent major:minor root mountpoint ... */
        char *save = NULL, *mp = NULL;
        char *t = strtok_r(line, " ", &save);
        for (int i = 0; t != NULL && i < 4; i++) {
            t = strtok_r(NULL, " ", &save);
            if (i == 3)
                mp = t;
        }
        if (mp == NULL)
            continue;
        sl_mountinfo_unescape(mp);
        if (strncmp(mp, dir, dl) != 0 || (mp[dl] != '\0' && mp[dl] != '/'))
            continue;
        if ((out[n] = strdup(mp)) != NULL)
            n++;
    }
    fclose(f);
    return n;
}

/* Detach every mount at or below dir, deepest first; returns how many. */
static int unmount_all(const char *dir)
{
    int count = 0;
    /* Stacked mounts show one at a time: a few rounds reach the bottom. */
    for (int round = 0; round < 8; round++) {
        char *mps[MAX_MOUNTS];
        size_t n = mounts_under(dir, mps, MAX_MOUNTS);
        if (n == 0)
            break;
        qsort(mps, n, sizeof(*mps), cmp_len_desc);
        int progress = 0;
        for (size_t i = 0; i < n; i++) {
            if (umount2(mps[i], MNT_DETACH) == 0) {
                progress = 1;
                count++;
            } else if (errno != EINVAL && errno != ENOENT) {
                sl_warn("cannot detach leftover mount %s: %s", mps[i], strerror(errno));
            }
            free(mps[i]);
        }
        if (!progress)
            break;
    }
    return count;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Remember id as lost (best effort: without memory it is only "not found"). */
static void note_lost(sl_runner *rt, const char *id, size_t *cap)
{
    if (rt->nlost == *cap) {
        size_t ncap = *cap ? *cap * 2 : 16;
        char **v = realloc(rt->lost_ids, ncap * sizeof(*v));
        if (v == NULL)
            return;
        rt->lost_ids = v;
        *cap = ncap;
    }
    if ((rt->lost_ids[rt->nlost] = strdup(id)) != NULL)
        rt->nlost++;
}

int sl_sweep_was_lost(const sl_runner *rt, const char *id)
{
    return id != NULL && rt->nlost > 0 &&
           bsearch(&id, rt->lost_ids, rt->nlost, sizeof(*rt->lost_ids), cmp_str) != NULL;
}

/* <state>/sandboxes.lost: ids a runner that was stopped (stop, restart) had
 * running; written at its shutdown, read and removed by the next start. */
static char *lost_file(const sl_runner *rt)
{
    return sl_path_join(rt->state_dir, "sandboxes.lost");
}

void sl_sweep_note_shutdown(sl_runner *rt)
{
    size_t len = 0;
    for (sl_box *b = rt->first; b != NULL; b = b->next)
        len += b->hidden ? 0 : strlen(b->id) + 1;
    if (len == 0)
        return;
    char *buf = malloc(len + 1), *p = buf, *path = lost_file(rt); /* + sprintf's NUL */
    if (buf != NULL && path != NULL) {
        for (sl_box *b = rt->first; b != NULL; b = b->next) {
            if (!b->hidden)
                p += sprintf(p, "%s\n", b->id);
        }
        int rc = sl_write_durable(path, buf, len);
        if (rc < 0)
            sl_warn("cannot record the sandboxes ending with this runner: %s", strerror(-rc));
    }
    free(buf);
    free(path);
}

void sl_sweep_sandboxes(sl_runner *rt)
{
    size_t dirs = 0, cap = 0;
    char *lf = lost_file(rt);
    FILE *f = lf != NULL ? fopen(lf, "re") : NULL;
    if (f != NULL) {
        char line[128];
        while (fgets(line, sizeof(line), f) != NULL) {
            line[strcspn(line, "\n")] = '\0';
            if (strncmp(line, "sb-", 3) == 0 && sl_name_valid(line))
                note_lost(rt, line, &cap);
        }
        fclose(f);
        unlink(lf);
    }
    free(lf);
    DIR *d = opendir(rt->sandboxes_dir);
    if (d == NULL)
        return;
    int cgroups = 0, mounts = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char *p = sl_path_join(rt->sandboxes_dir, de->d_name);
        if (p == NULL)
            continue;
        int m = unmount_all(p);
        /* Only names that can be sandbox ids name a cgroup ("sb-" + hex). */
        int c = sl_name_valid(de->d_name) ? sl_cgroup_sweep(de->d_name) : 0;
        if (c < 0)
            c = 0;
        int rc = sl_rm_rf(p);
        if (rc < 0)
            sl_warn("removing leftover %s: %s", p, strerror(-rc));
        /* Its processes died with that runner (PR_SET_PDEATHSIG): lost. */
        sl_info("lost sandbox %s: the runner it ran under exited; removed its dir, "
                "%d cgroup dir(s), %d mount(s)",
                de->d_name, c, m);
        if (strncmp(de->d_name, "sb-", 3) == 0)
            note_lost(rt, de->d_name, &cap);
        dirs++;
        cgroups += c;
        mounts += m;
        free(p);
    }
    closedir(d);
    if (rt->nlost > 1)
        qsort(rt->lost_ids, rt->nlost, sizeof(*rt->lost_ids), cmp_str);
    if (dirs > 0)
        sl_info("swept %zu sandbox(es) of an earlier runner: %d cgroup dir(s), %d mount(s)", dirs,
                cgroups, mounts);
}
