/* oci_int.h - what the pull child's files share (images/ only). */
#ifndef SL_OCI_INT_H
#define SL_OCI_INT_H

#include <curl/curl.h>
#include <openssl/evp.h>
#include <sys/types.h>
#include <zlib.h>
#include <zstd.h>

#include "sl_oci.h"

/* One registry repository, spoken to over libcurl (oci_registry.c). */
typedef struct oci_client {
    sl_oci_ref ref;
    const char *scheme; /* "https", or "http" for loopback / insecure */
    const char *user, *pass;
    char *authz; /* "Authorization: ..." once a challenge was answered */
    double stall;
    CURL *c;
    char *challenge; /* last WWW-Authenticate */
    char ctype[160]; /* last Content-Type */
} oci_client;

typedef void (*oci_progress_fn)(void *arg, unsigned long long done);

int oci_client_init(oci_client *cl, const sl_oci_args *a, char *err, size_t errlen);
void oci_client_free(oci_client *cl);
/* GET /v2/<repo>/manifests/<ref> into *buf (NUL-terminated). The HTTP status
 * is returned in *status for 404 handling; -1 on transport failure. */
int oci_get_manifest(oci_client *cl, const char *ref, char **buf, size_t *len, long *status,
                     char *err, size_t errlen);
/* A small blob (config) into memory, verified against digest. */
int oci_get_blob_mem(oci_client *cl, const char *digest, size_t max, char **buf, size_t *len,
                     char *err, size_t errlen);
/* A layer blob into path (resuming a partial file there), verified against
 * digest and size; progress(arg, bytes so far) as it comes. */
int oci_get_blob_file(oci_client *cl, const char *digest, unsigned long long size, const char *path,
                      oci_progress_fn progress, void *arg, char *err, size_t errlen);
/* "sha256:<64 hex>" of buf */
void oci_sha256_str(const void *buf, size_t len, char out[72]);
int oci_digest_valid(const char *d); /* sha256:<64 lowercase hex> */

/* oci_stream.c: a layer blob's uncompressed bytes (see there). */
typedef struct oci_src {
    int fd;
    int kind;
    z_stream z;
    ZSTD_DStream *zs;
    unsigned char in[1 << 17];
    size_t in_len, in_pos;
    int in_eof, out_eof;
    EVP_MD_CTX *md;
    unsigned long long total, max;
    unsigned long skipped_devices;
    char *err;
    size_t errlen;
} oci_src;

int oci_src_open(oci_src *s, int fd, unsigned long long max);   /* s zeroed, err set */
ssize_t oci_src_read(oci_src *s, unsigned char *buf, size_t n); /* 0 at the end */
int oci_src_full(oci_src *s, unsigned char *buf, size_t n);     /* exactly n, or truncated */
int oci_src_skip(oci_src *s, unsigned long long n);
int oci_src_fail(oci_src *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int oci_src_digest(oci_src *s, unsigned char out[32]); /* sha256 of what was read */
void oci_src_close(oci_src *s);

#endif
