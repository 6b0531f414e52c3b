/* oci_ref.c - image references as docker reads them:
 * [host[:port]/]path[:tag][@sha256:...]; no host means Docker Hub
 * (registry-1.docker.io, "library/" for one-component names). */
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oci_int.h"

void sl_oci_ref_free(sl_oci_ref *r)
{
    free(r->host);
    free(r->repo);
    free(r->tag);
    free(r->digest);
    memset(r, 0, sizeof(*r));
}

static int repo_ok(const char *s)
{
    if (*s == '\0' || *s == '/' || strstr(s, "//") || s[strlen(s) - 1] == '/')
        return 0;
    for (const char *p = s; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' ||
              *p == '-' || *p == '/'))
            return 0;
    }
    return strstr(s, "..") == NULL;
}

static int tag_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 128 || s[0] == '.' || s[0] == '-')
        return 0;
    for (const char *p = s; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '_' || *p == '-'))
            return 0;
    }
    return 1;
}

int sl_oci_ref_parse(const char *s, sl_oci_ref *r, char *err, size_t errlen)
{
    memset(r, 0, sizeof(*r));
    if (s == NULL || *s == '\0' || strlen(s) > 512) {
        snprintf(err, errlen, "image reference must be 1-512 characters");
        return -1;
    }
    char *copy = strdup(s);
    if (copy == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    char *at = strchr(copy, '@');
    if (at != NULL) {
        *at = '\0';
        if (!oci_digest_valid(at + 1)) {
            snprintf(err, errlen, "reference '%.200s': digest must be sha256:<64 lowercase hex>",
                     s);
            goto bad;
        }
        r->digest = strdup(at + 1);
    }
    char *slash = strchr(copy, '/'), *path = copy;
    if (slash != NULL) {
        *slash = '\0';
        if (strchr(copy, '.') || strchr(copy, ':') || strcmp(copy, "localhost") == 0) {
            r->host = strdup(copy);
            path = slash + 1;
        } else {
            *slash = '/';
        }
    }
    if (r->host == NULL)
        r->host = strdup("registry-1.docker.io");
    char *last = strrchr(path, '/');
    char *colon = strchr(last ? last : path, ':');
    if (colon != NULL) {
        *colon = '\0';
        if (!tag_ok(colon + 1)) {
            snprintf(err, errlen,
                     "reference '%.200s': bad tag '%.130s' (use [A-Za-z0-9_.-], <= 128)", s,
                     colon + 1);
            goto bad;
        }
        r->tag = strdup(colon + 1);
    } else if (r->digest == NULL) {
        r->tag = strdup("latest");
    }
    if (!repo_ok(path)) {
        snprintf(err, errlen,
                 "reference '%.200s': bad repository '%.200s' (lowercase letters, digits, . _ - /)",
                 s, path);
        goto bad;
    }
    if (strcmp(r->host, "registry-1.docker.io") == 0 && strchr(path, '/') == NULL) {
        if (asprintf(&r->repo, "library/%s", path) < 0)
            r->repo = NULL;
    } else {
        r->repo = strdup(path);
    }
    if (r->host == NULL || r->repo == NULL || (r->tag == NULL && r->digest == NULL)) {
        snprintf(err, errlen, "out of memory");
        goto bad;
    }
    free(copy);
    return 0;
bad:
    free(copy);
    sl_oci_ref_free(r);
    return -1;
}

void sl_oci_ref_name(const char *ref, char out[64])
{
    size_t n = strlen(ref), k = 0;
    char tmp[600];
    for (size_t i = 0; i < n && k < sizeof(tmp) - 1; i++) {
        char c = ref[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '-' || c == '_';
        tmp[k++] = ok ? c : '_';
    }
    tmp[k] = '\0';
    if (k == 0 || !((tmp[0] >= 'a' && tmp[0] <= 'z') || (tmp[0] >= 'A' && tmp[0] <= 'Z') ||
                    (tmp[0] >= '0' && tmp[0] <= '9')))
        tmp[0] = 'x';
    if (k <= 63) {
        memcpy(out, tmp, k + 1);
        return;
    }
    /* too long: a prefix and a hash of the whole reference */
    char d[72];
    oci_sha256_str(ref, n, d);
    snprintf(out, 64, "%.46s-%.16s", tmp, d + 7);
}
