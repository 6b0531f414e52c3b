/* sl_snap.h - filesystem snapshots of sandboxes (snapshot.c).
 *
 *   <state>/snapshots/<id>/meta    msgpack map: what a restore needs (image, env,
 *                                  workdir, cmd, parent) and what users see
 *   <state>/snapshots/<id>/layer.erofs  the sandbox's overlay upper dir as an
 *                                  EROFS image (storage "erofs", snap_erofs.c)
 *   <state>/snapshots/<id>/mnt     where that image is mounted while in use
 *   <state>/snapshots/<id>/layer   or: a copy of the upper dir (storage "dir",
 *                                  hosts without file-backed erofs)
 *   <state>/snapshots/.tmp-<id>    a capture in flight (swept at start)
 *
 * A restored sandbox's root is overlay(lower = its snapshot's layer, the
 * parent's layer, ... , the base image; upper = fresh).
 */
#ifndef SL_SNAP_H
#define SL_SNAP_H

#include <time.h>

#include "sl_runner.h"

#define SL_SNAP_MAX_DEPTH 128 /* snapshots of snapshots: overlay allows 500 lowers */

int sl_snap_init(sl_runner *rt); /* make the dir, drop leftovers; 0 or -1 (logged) */
/* Create: b->snapshot is set; take image, env, workdir, cmd from it where the
 * request left them out (env: the snapshot's, overridden by the request's). */
int sl_snap_apply(sl_box *b, sl_err *e);
/* The layer dirs of snapshot id and its ancestors, top first. */
int sl_snap_layers(sl_runner *rt, const char *id, char ***layers, size_t *n, sl_err *e);
/* snap_sync.c: make dst equal to src again, recopying only entries whose
 * ctime is >= *t0 (and removing what src no longer has). 0 or -errno with a
 * message in err. */
int sl_snap_sync(const char *src, const char *dst, const struct timespec *t0, char *err,
                 size_t errlen);
/* snap_erofs.c. SL_EROFS_ARGV: room for the mkfs.erofs argv. */
#define SL_EROFS_ARGV 6
/* argv of `mkfs.erofs` building image from the tree src (pointers into both). */
void sl_erofs_mkfs_argv(char *argv[SL_EROFS_ARGV], const char *image, const char *src);
/* 1 if mkfs.erofs runs and the kernel mounts an erofs image file (checked
 * with a tiny image under scratch, removed after); 0 with the reason. */
int sl_erofs_probe(const char *scratch, char *why, size_t whylen);
/* Mount image read-only on mnt unless it already is; 0 or -1 (e set). */
int sl_erofs_mount(const char *image, const char *mnt, sl_err *e);
void sl_erofs_umount(const char *mnt); /* detach, if mounted */
/* 1 if root or anything below it has ctime >= *t0, 0 if nothing has, or
 * -errno with a message in err. */
int sl_snap_changed_since(const char *root, const struct timespec *t0, char *err, size_t errlen);
/* 1 if root's regular files hold more than limit bytes of holes (mkfs.erofs
 * would write them out), 0 if not, or -errno with a message in err. */
int sl_snap_sparse(const char *root, long long limit, char *err, size_t errlen);
void sl_snap_shutdown(sl_runner *rt); /* detach every snapshot image mount */
/* mounts.c: the create request's "mounts" {sandbox path: host path} as
 * read-only binds (pointing into *kv). Free both (sl_kv_free, free). */
int sl_mounts_parse(const msgpack_object *body, sl_kv **kv, size_t *n, sl_bind **binds, sl_err *e);
/* Create: if b->image names an image registered from a snapshot
 * (<state>/images/<name>/snapshot), start from that snapshot instead. */
int sl_snap_alias(sl_box *b, sl_err *e);
void sl_h_snapshot_register(sl_req *r); /* POST /v1/snapshots/{id}/register {"name"} */
void sl_h_snapshot(sl_req *r);          /* POST /v1/sandboxes/{id}/snapshot */
void sl_h_snapshots(sl_req *r);         /* GET /v1/snapshots */
void sl_h_snapshot_get(sl_req *r);      /* GET /v1/snapshots/{id} */
void sl_h_snapshot_delete(sl_req *r);   /* POST /v1/snapshots/{id}/delete */

#endif
