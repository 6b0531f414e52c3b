/* sl_freeze.h - stop and resume every process of a sandbox's cgroup.
 *
 * Used by snapshots: a sandbox's processes are frozen while its overlay upper
 * dir is copied, so the copy is one consistent point in time. Uses cgroup v2
 * cgroup.freeze (also on the hybrid layout's unified tree), else the v1
 * freezer controller.
 */
#ifndef SL_FREEZE_H
#define SL_FREEZE_H

#include "sl_cgroup.h"

/* Freeze (frozen = 1) or thaw (0) cg and wait until the kernel reports the
 * state reached, at most timeout seconds. Returns 0, -ENOTSUP when cg has no
 * freezer, -ETIMEDOUT, or another -errno. Thawing a cgroup that is gone
 * returns -ENOENT. */
int sl_cgroup_freeze(const sl_cgroup *cg, int frozen, double timeout);

#endif
