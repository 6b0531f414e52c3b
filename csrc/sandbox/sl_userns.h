/* sl_userns.h - the user namespace of a rootless sandbox.
 *
 * A runner that is not root cannot mount, so its sandboxes get a user
 * namespace at clone (CLONE_NEWUSER) that owns every other namespace of the
 * sandbox: inside, uid and gid 0 are the runner's own euid and egid, and
 * nothing else is mapped. Root inside therefore has capabilities only over
 * the sandbox's own namespaces and over files the runner's user owns; host
 * files of any other owner show as the overflow ids (nobody) and stay out of
 * reach of CAP_DAC_OVERRIDE & co.
 */
#ifndef SL_USERNS_H
#define SL_USERNS_H

#include <stddef.h>
#include <sys/types.h>

/* Write /proc/<pid>/setgroups ("deny": an unprivileged writer may map its
 * gid only then), uid_map ("0 <euid> 1") and gid_map ("0 <egid> 1") of the
 * freshly cloned child pid, mapping 0 inside to the caller's euid/egid.
 * Returns 0 or -errno; *what names the file that failed. */
int sl_userns_map(pid_t pid, const char **what);

/* Can this process give sandboxes a user namespace? Forks a child that
 * tries unshare(CLONE_NEWUSER) (refused where unprivileged user namespaces
 * are switched off: user.max_user_namespaces=0, Debian's
 * kernel.unprivileged_userns_clone=0, an AppArmor restriction, a seccomp
 * filter), and checks for Linux 5.11+ (overlayfs in a user namespace).
 * Returns 0, or -errno with why saying what is missing. */
int sl_userns_probe(char *why, size_t whylen);

/* The mount flags (MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_RDONLY and the atime
 * ones) a bind remount of path must keep: inside a user namespace, flags
 * that came with a mount from the host are locked, and a remount that drops
 * one fails with EPERM. Returns 0 where path cannot be statvfs'd. */
unsigned long sl_userns_locked_flags(const char *path);

#endif
