/* snap_int.h - what snapshot.c and capture.c share inside snapshots/: the
 * meta record of a snapshot and its file, and snapshot paths. Not for the
 * rest of the runner (that is sl_snap.h). */
#ifndef SL_SNAP_INT_H
#define SL_SNAP_INT_H

#include "sl_snap.h"

#define SNAP_ID_LEN 19 /* "sn-" + 16 hex */

typedef struct snap_meta {
    char *id;
    char *kind;
    char *sandbox_id;
    char *image;
    char *workdir;
    char *parent;
    char *label;   /* caller's tag (the image builder's cache key), or NULL */
    char *storage; /* "erofs" (layer.erofs) or "dir" (layer/); "dir" if absent */
    char **cmd;
    size_t ncmd;
    sl_kv *env;
    size_t nenv;
    double created_at;
    double capture_seconds;
    double size_bytes; /* bytes the snapshot holds on disk (memory: RAM data + state) */
} snap_meta;

/* Fill m from sandbox b (kind "filesystem" or "memory", storage "erofs",
 * "dir" or "vm"). 0 or -1 with e set. */
int sl__snap_fill_meta(snap_meta *m, const char *id, const char *kind, const char *storage,
                       const sl_box *b, sl_err *e);

void sl__snap_meta_free(snap_meta *m);
/* <state>/snapshots/<id>[/<leaf>], malloc'd; NULL on allocation failure. */
char *sl__snap_path(sl_runner *rt, const char *id, const char *leaf);
void sl__snap_pack_meta(sl_resp *r, const snap_meta *m);
/* r = {key: meta} (r is initialised here). */
void sl__snap_pack_info(sl_resp *r, const char *key, const snap_meta *m);
/* Write m to path; 0 or -errno. */
int sl__snap_write_meta(const char *path, const snap_meta *m);

#endif
