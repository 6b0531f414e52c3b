/* sl_sb_root.c - the overlay root of a new sandbox and what is mounted in it. */
#include "sl_sb_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sl_hostroot.h"

/* The overlay with extra layers (snapshots) over rootfs.
 *
 * overlayfs refuses (ELOOP, "overlapping lowerdir path") a lower layer that
 * lies below another lower layer's root in the same filesystem, which every
 * snapshot layer in the state dir does when rootfs is the host's "/". So the
 * base is first wrapped in a read-only overlay of its own (rootfs under an
 * empty tmpfs) at <dir>/base: a different superblock, so no layer is a
 * descendant of another any more; whiteouts in the snapshot layers still hide
 * the base's files because the wrapper is an ordinary lower layer. That makes
 * the root a stack of depth 2, the kernel's maximum.
 *
 * The new mount API
 * adds lower layers one fsconfig("lowerdir+") at a time, so the stack is not
 * limited by mount(2)'s one-page option string; kernels before 6.8 reject
 * "lowerdir+" (EINVAL) or lack fsopen (ENOSYS) and get the option string,
 * which fails with E2BIG once the paths do not fit a page. */
static void mount_layers(const child_ctx *c, const char *upper, const char *work, const char *root)
{
    const sl_sandbox_config *cfg = c->cfg;
    char opts[4096], empty[PATH_MAX], base[PATH_MAX];
    size_t used;
    int fs, err;

    snprintf(empty, sizeof(empty), "%s/base-empty", cfg->dir);
    snprintf(base, sizeof(base), "%s/base", cfg->dir);
    if ((mkdir(empty, 0755) < 0 && errno != EEXIST) || (mkdir(base, 0755) < 0 && errno != EEXIST))
        sl__child_die(c, errno, "mkdir %s/base*", cfg->dir);
    if (mount("tmpfs", empty, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "size=4k,mode=755") < 0)
        sl__child_die(c, errno, "mount tmpfs on %s", empty);
    if ((size_t)snprintf(opts, sizeof(opts), "lowerdir=%s:%s%s", empty, cfg->rootfs,
                         c->userns ? ",userxattr" : "") >= sizeof(opts))
        sl__child_die(c, ENAMETOOLONG, "overlay options for %s", base);
    if (mount("overlay", base, "overlay", MS_RDONLY, opts) < 0)
        sl__child_die(c, errno, "mount base overlay of %s on %s", cfg->rootfs, base);

    fs = fsopen("overlay", FSOPEN_CLOEXEC);
    err = fs < 0 ? errno : 0;
    for (size_t i = 0; !err && i <= cfg->n_layers; i++) {
        const char *l = i < cfg->n_layers ? cfg->layers[i] : base;

        if (fsconfig(fs, FSCONFIG_SET_STRING, "lowerdir+", l, 0) < 0)
            err = errno;
    }
    if (!err) {
        int mfd = -1;

        /* userxattr: trusted.* xattrs need CAP_SYS_ADMIN on the host. */
        if ((c->userns && fsconfig(fs, FSCONFIG_SET_FLAG, "userxattr", NULL, 0) < 0) ||
            fsconfig(fs, FSCONFIG_SET_STRING, "upperdir", upper, 0) < 0 ||
            fsconfig(fs, FSCONFIG_SET_STRING, "workdir", work, 0) < 0 ||
            fsconfig(fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0 ||
            (mfd = fsmount(fs, FSMOUNT_CLOEXEC, 0)) < 0 ||
            move_mount(mfd, "", AT_FDCWD, root, MOVE_MOUNT_F_EMPTY_PATH) < 0)
            sl__child_die(c, errno, "mount overlay (%zu layers) on %s", cfg->n_layers + 1, root);
        close(mfd);
        close(fs);
        return;
    }
    if (fs >= 0)
        close(fs);
    if (err != ENOSYS && err != EINVAL)
        sl__child_die(c, err, "fsconfig overlay lowerdir+");
    used = (size_t)snprintf(opts, sizeof(opts), "lowerdir=");
    for (size_t i = 0; i <= cfg->n_layers && used < sizeof(opts); i++)
        used += (size_t)snprintf(opts + used, sizeof(opts) - used, "%s%s", i ? ":" : "",
                                 i < cfg->n_layers ? cfg->layers[i] : base);
    if (used < sizeof(opts))
        used += (size_t)snprintf(opts + used, sizeof(opts) - used, ",upperdir=%s,workdir=%s%s",
                                 upper, work, c->userns ? ",userxattr" : "");
    if (used >= sizeof(opts))
        sl__child_die(c, E2BIG, "overlay options for %zu layers", cfg->n_layers + 1);
    if (mount("overlay", root, "overlay", 0, opts) < 0)
        sl__child_die(c, errno, "mount overlay on %s", root);
}

/* Everything inside the root that does not need the cgroup: runs while the
 * parent creates it. */
void sl__child_build_root(child_ctx *c)
{
    const sl_sandbox_config *cfg = c->cfg;
    char upper[PATH_MAX], work[PATH_MAX], root[PATH_MAX], opts[3 * PATH_MAX + 64];

    /* Nothing we mount may propagate back to the host's mount namespace. */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        sl__child_die(c, errno, "make / rprivate");
    snprintf(upper, sizeof(upper), "%s/upper", cfg->dir);
    snprintf(work, sizeof(work), "%s/work", cfg->dir);
    snprintf(root, sizeof(root), "%s/root", cfg->dir);
    if (mkdir(upper, 0755) < 0 && errno != EEXIST)
        sl__child_die(c, errno, "mkdir %s", upper);
    if (mkdir(work, 0700) < 0 && errno != EEXIST)
        sl__child_die(c, errno, "mkdir %s", work);
    if (mkdir(root, 0755) < 0 && errno != EEXIST)
        sl__child_die(c, errno, "mkdir %s", root);
    if (c->userns && strcmp(cfg->rootfs, "/") == 0) {
        sl_hostroot h = {.dir = cfg->dir,
                         .root = root,
                         .layers = cfg->layers,
                         .n_layers = cfg->n_layers,
                         .excluded = cfg->masks,
                         .n_excluded = cfg->n_masks};
        char what[256];
        int err = sl_hostroot_mount(&h, what, sizeof(what));

        if (err < 0)
            sl__child_die(c, -err, "host image root: %s", what);
    } else if (cfg->n_layers > 0) {
        mount_layers(c, upper, work, root);
    } else {
        snprintf(opts, sizeof(opts), "lowerdir=%s,upperdir=%s,workdir=%s%s", cfg->rootfs, upper,
                 work, c->userns ? ",userxattr" : "");
        if (mount("overlay", root, "overlay", 0, opts) < 0)
            sl__child_die(c, errno, "mount overlay on %s", root);
    }
    c->rootfd = open(root, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (c->rootfd < 0)
        sl__child_die(c, errno, "open %s", root);

    sl__child_proc_sys(c);
    sl__child_mount(c, "tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", WALK_MKDIR);
    sl__child_mount(c, "tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755", WALK_MKDIR);
    sl__child_mount(c, "tmpfs", "/var/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", WALK_MKDIR);

    sl__child_masks(c);
    for (size_t i = 0; i < cfg->n_binds; i++) {
        const sl_bind *b = &cfg->binds[i];

        /* Absolute, and not the root itself (that would replace the image). */
        if (!b->host_path || b->host_path[0] != '/' || !b->sandbox_path ||
            b->sandbox_path[0] != '/' || b->sandbox_path[strspn(b->sandbox_path, "/")] == '\0')
            sl__child_die(c, EINVAL, "bind %s", b->sandbox_path ? b->sandbox_path : "(null)");
        if (b->device) {
            struct stat st;

            /* Only a device the runner was given goes in without nodev. */
            if (stat(b->host_path, &st) < 0 || !S_ISCHR(st.st_mode))
                sl__child_die(c, ENODEV, "device %s", b->host_path);
            sl__child_bind(c, b->host_path, b->sandbox_path,
                           MS_NOSUID | MS_NOEXEC | (b->readonly ? MS_RDONLY : 0));
            continue;
        }
        sl__child_bind(c, b->host_path, b->sandbox_path,
                       MS_NOSUID | MS_NODEV | (b->readonly ? MS_RDONLY : 0));
    }
}
