/* sl_sb_int.h - internals shared by the files that build one sandbox.
 *
 * sl_sandbox.c is the parent side (clone, cgroup, wait for READY); the child
 * side is split along its seams: sl_sb_walk.c (symlink-safe path walking and
 * the mount helpers built on it), sl_sb_dev.c (/proc, /sys and /dev),
 * sl_sb_masks.c (masked paths and the host image's secrets), sl_sb_root.c
 * (the overlay root and everything mounted in it), sl_sb_child.c (the
 * child's main: wait for the cgroup, pivot_root, exec sandlot-init).
 */
#ifndef SL_SB_INT_H
#define SL_SB_INT_H

#include "sl_sandbox.h"

#include <stddef.h>

/* What the child sends back on failure; one write, well below PIPE_BUF. */
typedef struct child_err {
    int err;
    char msg[256];
} child_err;

/* The child's state: fds it owns and where it reports. */
typedef struct child_ctx {
    const sl_sandbox_config *cfg;
    int syncfd;          /* child end of the sync socket: "go" in, child_err out (CLOEXEC) */
    int ctlfd;           /* init's end of the control channel */
    int memfd;           /* sandlot-init */
    int rootfd;          /* O_PATH fd of the overlay root */
    int parent_fds[2];   /* the parent's ends, closed first thing */
    int emptyfd;         /* O_PATH fd of the first read-only empty tmpfs mask, or -1 */
    int nullfd;          /* O_PATH fd of the sandbox's /dev/null, or -1 */
    int userns;          /* in a user namespace (cfg->userns) */
    const sl_cgroup *cg; /* the sandbox's cgroup, created before the clone */
    int self_attach;     /* join cg itself (else the parent moves us) */
} child_ctx;

enum walk_mode { WALK_EXISTING, WALK_MKDIR, WALK_MKFILE };

enum mask_kind {
    MASK_READONLY, /* empty read-only dir / empty file */
    MASK_EMPTY_RW, /* empty writable dir (host home directories) */
};

/* Report err + message to the parent over the sync socket and _exit(1). */
__attribute__((noreturn, format(printf, 3, 4))) void sl__child_die(const child_ctx *c, int err,
                                                                   const char *fmt, ...);
void sl__proc_fd_path(char *buf, size_t len, int fd);
/* Open path (relative to rootfd) without following any symlink: fd or -errno. */
int sl__walk(int rootfd, const char *path, enum walk_mode mode);
void sl__child_mount(const child_ctx *c, const char *src, const char *path, const char *fstype,
                     unsigned long flags, const char *data, enum walk_mode mode);
void sl__child_remount(const child_ctx *c, const char *path, unsigned long flags);
void sl__child_bind(const child_ctx *c, const char *host_path, const char *path,
                    unsigned long flags);

/* sl_sb_dev.c: read-only-where-it-matters /proc, the netns's /sys, a minimal /dev. */
void sl__child_proc_sys(child_ctx *c);
void sl__child_dev(const child_ctx *c);

/* sl_sb_masks.c: default + caller masks, and the host image's secrets. */
void sl__child_masks(child_ctx *c);

/* sl_sb_root.c: the overlay root and every mount in it (no cgroup needed). */
void sl__child_build_root(child_ctx *c);

/* sl_sandbox.c: the limit init gets (sl_sandbox_set_nofile), or NULL. */
const struct rlimit *sl__sandbox_nofile(void);

/* sl_sb_child.c: the child after clone; never returns. */
__attribute__((noreturn)) void sl__child_main(child_ctx *c);

#endif
