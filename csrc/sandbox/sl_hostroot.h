/* sl_hostroot.h - the host image's root for a sandbox in a user namespace.
 *
 * With rootfs "/" a root runner mounts one overlay with lowerdir=/. Inside a
 * user namespace the kernel refuses that ("failed to clone lowerpath"): every
 * mount below "/" (proc, sys, dev, a bind on /etc/resolv.conf, ...) was
 * copied into the sandbox's mount namespace *locked*, and an overlay lower
 * layer may not have locked mounts below it, since the overlay would show
 * what they cover. sl_hostroot_mount builds the same tree from pieces that
 * have none: a skeleton of "/" (its top-level symlinks, empty directories,
 * empty files) as the lower layer of the root overlay, then one overlay per
 * host directory with no mount below it, whose upper dir is the matching
 * subdirectory of the root's upper dir. So <dir>/upper still holds every
 * change, laid out as with one overlay of "/", and snapshots work unchanged.
 * Directories with mounts below them are walked into; a mount point itself
 * shows as an empty directory (as the overlay of "/" shows it), and top-level
 * regular files (rare) are read-only binds of the host's.
 */
#ifndef SL_HOSTROOT_H
#define SL_HOSTROOT_H

#include <stddef.h>

typedef struct sl_hostroot {
    const char *dir;           /* the per-sandbox dir: skel/, upper/, work/, ovlwork/ */
    const char *root;          /* where the root goes (an empty directory) */
    const char *const *layers; /* snapshot layers above the host, top first */
    size_t n_layers;
    const char *const *excluded; /* host paths never overlaid (masks, the runner's dirs) */
    size_t n_excluded;
} sl_hostroot;

/* Mount the host root at h->root. Runs in the clone child, inside the user
 * and mount namespaces, before pivot_root. Returns 0 or -errno with what
 * describing the step that failed. */
int sl_hostroot_mount(const sl_hostroot *h, char *what, size_t whatlen);

#endif
