/* oci_stream.c - a layer blob as a stream of tar bytes: gzip (zlib, with
 * concatenated members), zstd (libzstd) or plain, told apart by their magic
 * bytes. Every uncompressed byte is counted against a limit, so a layer bomb
 * stops at the limit rather than filling the disk, and hashed, giving the
 * diff_id the config must name. Errors keep the first reason in s->err. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "oci_int.h"

enum { RAW, GZ, ZST };

int oci_src_fail(oci_src *s, const char *fmt, ...)
{
    if (s->err[0] != '\0')
        return -1; /* keep the first reason */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, s->errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static int fill_in(oci_src *s)
{
    if (s->in_pos < s->in_len || s->in_eof)
        return 0;
    ssize_t n;
    do
        n = read(s->fd, s->in, sizeof(s->in));
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return oci_src_fail(s, "reading the layer blob: %s", strerror(errno));
    s->in_len = (size_t)n;
    s->in_pos = 0;
    if (n == 0)
        s->in_eof = 1;
    return 0;
}

/* Up to n uncompressed bytes into buf; 0 at the end of the stream. */
ssize_t oci_src_read(oci_src *s, unsigned char *buf, size_t n)
{
    size_t got = 0;
    while (got == 0 && !s->out_eof) {
        if (fill_in(s) < 0)
            return -1;
        if (s->kind == RAW) {
            if (s->in_eof) {
                s->out_eof = 1;
                break;
            }
            size_t k = s->in_len - s->in_pos < n ? s->in_len - s->in_pos : n;
            memcpy(buf, s->in + s->in_pos, k);
            s->in_pos += k;
            got = k;
        } else if (s->kind == GZ) {
            if (s->in_eof && s->in_pos == s->in_len)
                return oci_src_fail(s, "layer blob is truncated (gzip stream ends early)");
            s->z.next_in = s->in + s->in_pos;
            s->z.avail_in = (uInt)(s->in_len - s->in_pos);
            s->z.next_out = buf;
            s->z.avail_out = (uInt)n;
            int rc = inflate(&s->z, Z_NO_FLUSH);
            s->in_pos = s->in_len - s->z.avail_in;
            got = n - s->z.avail_out;
            if (rc == Z_STREAM_END) {
                /* Concatenated members are one stream (gzip(1) allows it). */
                if (fill_in(s) < 0)
                    return -1;
                if (s->in_eof && s->in_pos == s->in_len)
                    s->out_eof = 1;
                else if (inflateReset(&s->z) != Z_OK)
                    return oci_src_fail(s, "gzip: reset failed");
            } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
                return oci_src_fail(s, "layer blob is corrupt (gzip: %s)",
                                    s->z.msg ? s->z.msg : "error");
            }
        } else {
            if (s->in_eof && s->in_pos == s->in_len)
                return oci_src_fail(s, "layer blob is truncated (zstd stream ends early)");
            ZSTD_inBuffer ib = {s->in, s->in_len, s->in_pos};
            ZSTD_outBuffer ob = {buf, n, 0};
            size_t rc = ZSTD_decompressStream(s->zs, &ob, &ib);
            if (ZSTD_isError(rc))
                return oci_src_fail(s, "layer blob is corrupt (zstd: %s)", ZSTD_getErrorName(rc));
            s->in_pos = ib.pos;
            got = ob.pos;
            if (rc == 0) {
                if (fill_in(s) < 0)
                    return -1;
                if (s->in_eof && s->in_pos == s->in_len)
                    s->out_eof = 1;
            }
        }
    }
    if (got > 0) {
        s->total += got;
        if (s->total > s->max)
            return oci_src_fail(
                s,
                "layer unpacks to more than the limit of %llu bytes (a layer bomb?); raise "
                "max_bytes if the image is really this large",
                s->max);
        if (EVP_DigestUpdate(s->md, buf, got) != 1)
            return oci_src_fail(s, "sha256 failed");
    }
    return (ssize_t)got;
}

/* Exactly n bytes (n > 0), or an error naming truncation. */
int oci_src_full(oci_src *s, unsigned char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t k = oci_src_read(s, buf + got, n - got);
        if (k < 0)
            return -1;
        if (k == 0)
            return oci_src_fail(s, "layer tarball is truncated");
        got += (size_t)k;
    }
    return 0;
}

int oci_src_skip(oci_src *s, unsigned long long n)
{
    unsigned char buf[1 << 14];
    while (n > 0) {
        size_t k = n < sizeof(buf) ? (size_t)n : sizeof(buf);
        if (oci_src_full(s, buf, k) < 0)
            return -1;
        n -= k;
    }
    return 0;
}

int oci_src_open(oci_src *s, int fd, unsigned long long max)
{
    s->fd = fd;
    s->max = max;
    s->md = EVP_MD_CTX_new();
    if (s->md == NULL || EVP_DigestInit_ex(s->md, EVP_sha256(), NULL) != 1) {
        oci_src_fail(s, "sha256 init failed");
        return -1;
    }
    if (fill_in(s) < 0)
        return -1;
    if (s->in_len >= 2 && s->in[0] == 0x1f && s->in[1] == 0x8b) {
        s->kind = GZ;
        if (inflateInit2(&s->z, 15 + 32) != Z_OK) {
            oci_src_fail(s, "zlib init failed");
            return -1;
        }
    } else if (s->in_len >= 4 && s->in[0] == 0x28 && s->in[1] == 0xb5 && s->in[2] == 0x2f &&
               s->in[3] == 0xfd) {
        s->kind = ZST;
        if ((s->zs = ZSTD_createDStream()) == NULL) {
            oci_src_fail(s, "zstd init failed");
            return -1;
        }
    }
    return 0;
}

int oci_src_digest(oci_src *s, unsigned char out[32])
{
    unsigned len = 0;
    if (EVP_DigestFinal_ex(s->md, out, &len) != 1 || len != 32)
        return oci_src_fail(s, "sha256 failed");
    return 0;
}

void oci_src_close(oci_src *s)
{
    if (s->kind == GZ)
        inflateEnd(&s->z);
    if (s->zs != NULL)
        ZSTD_freeDStream(s->zs);
    EVP_MD_CTX_free(s->md);
}
