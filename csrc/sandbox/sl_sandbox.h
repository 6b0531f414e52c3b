/* sl_sandbox.h - create one sandbox: namespaces, overlay root, cgroup, init.
 *
 * Used by sandlotd. sl_sandbox_spawn() clone()s a child in new PID, mount,
 * network, IPC and UTS namespaces (and a user namespace when not root), joins
 * it to the sandbox's cgroup, builds the root:
 *   overlayfs(lower = rootfs, upper = <dir>/upper, work = <dir>/work) at
 *   <dir>/root, then /proc, a minimal /dev, read-only /sys, fresh tmpfs on
 *   /tmp /run /var/tmp /dev/shm, tmpfs over every mask path, bind mounts,
 * pivot_root()s into it, brings up `lo`, and execs sandlot-init from a sealed
 * memfd (so /proc/1/exe cannot be used to overwrite the host binary,
 * CVE-2019-5736) as pid 1 with the control channel on fd 3.
 */
#ifndef SL_SANDBOX_H
#define SL_SANDBOX_H

#include <stddef.h>
#include <sys/types.h>

#include "sl_cgroup.h"

typedef struct sl_bind {
    const char *host_path;    /* absolute path on the host */
    const char *sandbox_path; /* absolute path inside; created if missing */
    int readonly;
} sl_bind;

typedef struct sl_sandbox_config {
    const char *id;          /* "sb-..." used for hostname and cgroup name */
    const char *rootfs;      /* lower layer: "/" for the host image */
    const char *dir;         /* per-sandbox dir owned by the runner (upper/, work/, root/) */
    int init_memfd;          /* sealed memfd holding sandlot-init (sl_sandbox_load_init) */
    const sl_bind *binds;    /* volumes etc. */
    size_t n_binds;
    const char *const *masks; /* host paths hidden behind an empty tmpfs if present in the root */
    size_t n_masks;
} sl_sandbox_config;

typedef struct sl_sandbox {
    pid_t init_pid;  /* host pid of sandlot-init (a child of the caller) */
    int ctl_fd;      /* runner end of the control channel, O_CLOEXEC|O_NONBLOCK */
    sl_cgroup cg;    /* the sandbox's cgroup(s) */
} sl_sandbox;

/* Load the sandlot-init binary at path into a sealed, read-only memfd once at
 * runner start. Returns the fd or -errno. */
int sl_sandbox_load_init(const char *path);

/* Create a sandbox. Returns 0, filling *out, once init is running (it sends
 * SL_CTL_READY on the channel when its setup is complete), or -errno with a
 * human message ("overlay mount on /var/lib/sandlot/...: Invalid argument") in
 * errbuf. On failure nothing is left behind (child killed, cgroup removed). */
int sl_sandbox_spawn(const sl_sandbox_config *cfg, sl_sandbox *out, char *errbuf, size_t errlen);

/* Kill every process of the sandbox (cgroup kill / freeze+kill, then SIGKILL
 * to init). Safe to call more than once. Does not reap init: the caller's
 * SIGCHLD handling does. */
void sl_sandbox_kill(sl_sandbox *sb);

/* After init was reaped: remove the cgroup(s), close ctl_fd. The per-sandbox
 * dir is removed by the caller (sl_rm_rf). */
void sl_sandbox_release(sl_sandbox *sb);

/* rm -rf that never follows symlinks and never crosses mount points. */
int sl_rm_rf(const char *path);

#endif
