/* sl_oci.h - container images pulled from OCI registries (images/).
 *
 *   oci_api.c       POST /v1/images/pull, GET /v1/images/pulls/{id}: one
 *                   child per image being pulled, joined by equal requests
 *   oci_pull.c      the child: manifest, config, layers -> snapshots
 *   oci_registry.c  the distribution protocol over libcurl (auth, retries)
 *   oci_ref.c       image references, alias names
 *   oci_stream.c    a layer blob's uncompressed bytes (gzip, zstd, plain),
 *                   counted against the size limit and hashed (diff_id)
 *   oci_untar.c     a layer tarball into a directory, as an overlay lower:
 *                   whiteouts become 0/0 char devices
 *
 * Store: blobs in flight at <state>/oci/blobs/<hex>.partial (kept for a
 * resumed download), each layer a snapshot sn-<chainID[:16]> (a directory
 * layer, or an erofs image on request) whose parent is
 * the layer below (so layers are stored once per chain and shared between
 * images), the base of every chain the empty dir <state>/oci/scratch, and
 * the image an alias <state>/images/<name>/{snapshot,oci.json}.
 */
#ifndef SL_OCI_H
#define SL_OCI_H

#include <stddef.h>

#include "sl_runner.h"

#define SL_OCI_MAX_BYTES_DEFAULT (64ULL << 30) /* unpacked bytes per image */
#define SL_OCI_STALL_DEFAULT 60.0              /* seconds without a byte: the registry hangs */
#define SL_OCI_META_MAX (8u << 20)             /* manifests, indexes, configs */

/* What a pull child needs (credentials only in its memory). */
typedef struct sl_oci_args {
    const char *ref;
    const char *username, *password; /* NULL: anonymous (or a token from the realm) */
    const char *platform;            /* "linux/amd64"; NULL: the host's */
    int insecure;                    /* plain http for a non-loopback registry */
    unsigned long long max_bytes;
    double stall;
    const char *state_dir;
    const char *images_dir;
    int erofs;        /* store layers as erofs images (else directories) */
    const char *name; /* alias image name */
} sl_oci_args;

/* A parsed reference: registry host[:port], repository path, tag, digest. */
typedef struct sl_oci_ref {
    char *host; /* as dialled, e.g. registry-1.docker.io, 127.0.0.1:5000 */
    char *repo; /* library/busybox */
    char *tag;  /* NULL when only a digest was given */
    char *digest;
} sl_oci_ref;

int sl_oci_ref_parse(const char *s, sl_oci_ref *r, char *err, size_t errlen);
void sl_oci_ref_free(sl_oci_ref *r);
/* The alias image name for a reference: [A-Za-z0-9_.-], <= 63 chars. */
void sl_oci_ref_name(const char *ref, char out[64]);

/* oci_pull.c: run in the child; writes progress lines to fd, returns the
 * exit status. Lines: "L i digest size", "P i done", "C i" (cached),
 * "U i" (unpacking), "R {json}" (result), "E status message". */
int sl_oci_pull_main(const sl_oci_args *a, int fd);

/* oci_untar.c: unpack the layer blob in fd into the empty dir root.
 * diffid receives sha256 of the uncompressed stream; *bytes its size.
 * Refuses (-1, message in err) path traversal, writes through symlinks,
 * hard links out of the layer, corrupt headers, truncation, and more than
 * max_bytes of uncompressed data. */
int sl_oci_untar(int fd, const char *root, unsigned long long max_bytes, unsigned char diffid[32],
                 unsigned long long *bytes, char *err, size_t errlen);

/* oci_api.c */
void sl_h_image_pull(sl_req *r);     /* POST /v1/images/pull */
void sl_h_image_pull_get(sl_req *r); /* GET /v1/images/pulls/{id} */
void sl_h_images_pulled(sl_req *r);  /* GET /v1/images/pulled: oci.json of each, layer sizes */
/* Create with image = a pulled image's name: its config's Env (under the
 * request's) and WorkingDir (unless given) apply, as with from_registry. */
int sl_oci_alias_config(sl_box *b, const char *name, sl_err *e);
void sl_oci_shutdown(sl_runner *rt);

#endif
