/* sl_sandbox.h - create one sandbox: namespaces, overlay root, cgroup, init.
 *
 * Used by sandlotd. sl_sandbox_spawn() clone()s a child in new PID, mount,
 * network, IPC and UTS namespaces (and a user namespace owning them all with
 * cfg->userns, for rootless runners: see the note in sl_sandbox.c), joins
 * it to the sandbox's cgroup, builds the root:
 *   overlayfs(lower = rootfs, upper = <dir>/upper, work = <dir>/work) at
 *   <dir>/root, then /proc, a minimal /dev, read-only /sys, fresh tmpfs on
 *   /tmp /run /var/tmp /dev/shm, tmpfs over every mask path, bind mounts,
 *   then a new cgroup namespace,
 * pivot_root()s into it, brings up `lo`, and execs sandlot-init from a sealed
 * memfd (so /proc/1/exe cannot be used to overwrite the host binary,
 * CVE-2019-5736) as pid 1 with the control channel on fd 3 and no other fd of
 * the runner. Once init is READY it sends init the seccomp profile
 * (sl_seccomp.h); init installs it and a reduced capability bounding set on
 * itself (inherited by everything it starts), and each process it spawns
 * lowers its other capability sets and sets no_new_privs before execve.
 * docs/security.md lists every layer.
 */
#ifndef SL_SANDBOX_H
#define SL_SANDBOX_H

#include <stddef.h>
#include <sys/types.h>

#include "sl_cgroup.h"
#include "sl_net.h"

typedef struct sl_bind {
    const char *host_path;    /* absolute path on the host */
    const char *sandbox_path; /* absolute path inside; created if missing */
    int readonly;
    int device; /* a character device (a GPU): bound without MS_NODEV, refused if it is not
                   one */
} sl_bind;

typedef struct sl_sandbox_config {
    const char *id;            /* "sb-..." used for hostname and cgroup name */
    const char *rootfs;        /* lower layer: "/" for the host image */
    const char *const *layers; /* extra read-only layers stacked on rootfs, top first
                                  (snapshots); n_layers 0: rootfs alone. Mounted with
                                  fsconfig("lowerdir+") where the kernel has it (6.8+),
                                  else the lowerdir option string (one page) */
    size_t n_layers;
    const char *dir;      /* per-sandbox dir owned by the runner (upper/, work/, root/) */
    int init_memfd;       /* sealed memfd holding sandlot-init (sl_sandbox_load_init) */
    const sl_bind *binds; /* volumes etc. */
    size_t n_binds;
    const char *const *masks; /* paths hidden behind an empty read-only tmpfs (a dir) or
                                 /dev/null (a file) if present in the root; containerd's
                                 defaults (/proc/kcore, /sys/firmware, ...) are always
                                 masked and /proc/sys, /proc/sysrq-trigger, /proc/bus,
                                 /proc/fs, /proc/irq always read-only. Give canonical
                                 paths: one with a symlink in it fails the spawn.
                                 With rootfs "/" the host's secrets are masked too:
                                 /etc/shadow, /etc/gshadow (and their "-" backups),
                                 /etc/security/opasswd, /etc/ssl/private, every
                                 /etc/ssh/ *_key; /root and /home become empty
                                 writable tmpfs (binds still go on top of them) */
    size_t n_masks;
    const sl_cgroup_limits *limits; /* NULL: none; applied before the child runs, and a
                                       limit no hierarchy can enforce fails the spawn */
    unsigned long long disk_bytes;  /* 0: the writable layer lives in dir on the runner's
                                       filesystem; else dir gets a tmpfs of this size first
                                       (mounted in the caller's mount namespace, so upper/
                                       stays readable there), a full layer is ENOSPC inside */
    int userns;                     /* 1: a user namespace too, uid/gid 0 inside = the caller's
                                       euid/egid (rootless runner; sl_userns.h); the host image
                                       is then built by sl_hostroot_mount, and disk_bytes is
                                       refused (mounting the tmpfs needs root) */
    const sl_net_config *net;       /* NULL: only lo (the default, nothing else is done). Else
                                       a veth pair: host_if on the host with host_addr, eth0
                                       inside with sandbox_addr and a default route via
                                       host_addr (sl_net.h); filtering is the caller's */
} sl_sandbox_config;

typedef struct sl_sandbox {
    pid_t init_pid;        /* host pid of sandlot-init (a child of the caller) */
    int ctl_fd;            /* runner end of the control channel, O_CLOEXEC|O_NONBLOCK */
    int pidfd;             /* pidfd of init (O_CLOEXEC; readable once init exited), or -1 on
                              kernels without clone3; kill goes through it so a reused pid
                              is never hit. Only meaningful while init_pid > 0 */
    sl_cgroup cg;          /* the sandbox's cgroup(s) */
    char *disk_mnt;        /* the size-capped tmpfs on cfg->dir (disk_bytes), unmounted by
                              sl_sandbox_release, or NULL */
    char net_if[IFNAMSIZ]; /* host side of the veth pair ("" without one); the pair goes
                              with the sandbox's network namespace once init is gone */
    int sync_fd;           /* between sl_sandbox_spawn_start and _finish: the parent's end
                              of the sync socket (child's errors, EOF at exec); else -1 */
    long deadline_ms;      /* CLOCK_MONOTONIC ms by which init must be READY */
    int kill_cgroup;       /* processes live outside init's pid namespace (a microVM's
                              QEMU, which drops the parent-death signal with its uid):
                              sl_sandbox_kill kills the cgroup too */
} sl_sandbox;

/* Load the sandlot-init binary at path into a sealed, read-only memfd once at
 * runner start, and build the seccomp profile (sl_seccomp_default) so that a
 * broken libseccomp shows at start. Returns the fd or -errno. */
int sl_sandbox_load_init(const char *path);

/* Create a sandbox. Returns 0, filling *out, once init is running (it sends
 * SL_CTL_READY on the channel when its setup is complete), or -errno with a
 * human message ("mount overlay on /var/lib/sandlot/...: Invalid argument") in
 * errbuf. On failure nothing is left behind (child killed and reaped here,
 * cgroup removed; the per-sandbox dir and what the child created in it,
 * upper/ work/ root/, stay for the caller's sl_rm_rf). Blocks for at most
 * 10 s (normally a few ms). cfg->dir must exist; cfg->id must be 1-63 chars of
 * [A-Za-z0-9_.-]; cfg->rootfs and cfg->dir must be absolute and free of ','
 * and ':' (overlayfs option syntax). */
int sl_sandbox_spawn(const sl_sandbox_config *cfg, sl_sandbox *out, char *errbuf, size_t errlen);

/* sl_sandbox_spawn in two halves, so the caller can serve others while the
 * child builds its root and init starts (the runner's pool of pre-set-up
 * sandboxes). _start does the parent's part (clone, cgroup and limits, veth,
 * "go") and returns 0 with init_pid, ctl_fd and sync_fd set, or -errno with
 * nothing left behind; cfg is not used after it returns. _finish waits up to
 * wait_ms (-1: until the 10 s deadline) for READY and sends the seccomp
 * profile: 0 (the sandbox is what sl_sandbox_spawn returns), -EINPROGRESS
 * (not ready yet, nothing changed: call again), or -errno after cleaning up
 * as a failed sl_sandbox_spawn does. Between the two, sl_sandbox_kill +
 * reaping + sl_sandbox_release also dispose of it. */
int sl_sandbox_spawn_start(const sl_sandbox_config *cfg, sl_sandbox *out, char *errbuf,
                           size_t errlen);
int sl_sandbox_spawn_finish(sl_sandbox *out, int wait_ms, char *errbuf, size_t errlen);

/* The RLIMIT_NOFILE every sandbox's init starts with (inherited by all it
 * runs), when the caller raised its own far above what it was given (the
 * runner does, for its two fds per sandbox). NULL: inherit the caller's. */
struct rlimit;
void sl_sandbox_set_nofile(const struct rlimit *rl);

/* Kill every process of the sandbox: SIGKILL to init, which makes the kernel
 * kill the whole pid namespace (cgroup kill / freeze+kill only when there is
 * no init). Safe to call more than once. Does not reap init: the caller's
 * SIGCHLD handling does. */
void sl_sandbox_kill(sl_sandbox *sb);

/* After init was reaped: remove the cgroup(s), close ctl_fd and pidfd, detach
 * the disk tmpfs. The per-sandbox dir is removed by the caller (sl_rm_rf).
 * Safe to call twice. */
void sl_sandbox_release(sl_sandbox *sb);

/* rm -rf that never follows symlinks and never crosses mount points (a mount
 * point and what is below it are left in place). Depth is unbounded and the
 * fd use constant. Returns 0 (also when path does not exist) or the first
 * -errno met; removal continues past errors. */
int sl_rm_rf(const char *path);

#endif
