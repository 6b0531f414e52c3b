/* fuzz_untar.c - the layer unpacker (csrc/runner/images/oci_untar.c) on
 * mutated tarballs, under ASan+UBSan: it must never crash, leak, or create
 * anything outside the directory it unpacks into, whatever the bytes.
 *
 * Standalone (make test): builds seed tarballs here (files, dirs, symlinks
 * pointing out, hard links, whiteouts, pax records, a "../" entry), flips,
 * truncates and splices bytes with a fixed-seed PRNG, and unpacks each
 * mutant into <tmp>/jail/root; after each, <tmp> must hold only "jail" and
 * <tmp>/jail only "root". Run as root (mknod, chown), as the suite is.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sl_oci.h"
#include "sl_sandbox.h"

#define ITER 2500

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

typedef struct buf {
    unsigned char *p;
    size_t len, cap;
} buf;

static void put(buf *b, const void *d, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2;
        b->p = realloc(b->p, b->cap);
        if (b->p == NULL)
            abort();
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

static void entry(buf *b, const char *name, char type, const char *link, const char *data, size_t n)
{
    unsigned char h[512] = {0};
    snprintf((char *)h, 100, "%s", name);
    snprintf((char *)h + 100, 8, "%07o", 0644);
    snprintf((char *)h + 108, 8, "%07o", 1000);
    snprintf((char *)h + 116, 8, "%07o", 1000);
    snprintf((char *)h + 124, 12, "%011zo", n);
    snprintf((char *)h + 136, 12, "%011o", 1700000000);
    h[156] = (unsigned char)type;
    if (link != NULL)
        snprintf((char *)h + 157, 100, "%s", link);
    memcpy(h + 257,
           "ustar\0"
           "00",
           8);
    memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++)
        sum += h[i];
    snprintf((char *)h + 148, 8, "%06o", sum);
    put(b, h, 512);
    if (n > 0) {
        put(b, data, n);
        static const unsigned char zero[512];
        put(b, zero, (512 - n % 512) % 512);
    }
}

static void seed(buf *b, int which)
{
    static const unsigned char zero[1024];
    b->len = 0;
    const char pax[] = "30 path=pax/long/name/here.txt\n";
    switch (which) {
    case 0:
        entry(b, "d/", '5', NULL, NULL, 0);
        entry(b, "d/f", '0', NULL, "hello", 5);
        entry(b, "d/l", '2', "/etc/passwd", NULL, 0);
        entry(b, "d/h", '1', "d/f", NULL, 0);
        entry(b, "d/.wh.gone", '0', NULL, NULL, 0);
        entry(b, "d/.wh..wh..opq", '0', NULL, NULL, 0);
        break;
    case 1:
        entry(b, "esc", '2', "../../../..", NULL, 0);
        entry(b, "esc/x", '0', NULL, "x", 1);
        entry(b, "../up", '0', NULL, "u", 1);
        break;
    default:
        entry(b, "pax", 'x', NULL, pax, sizeof(pax) - 1);
        entry(b, "short", '0', NULL, "pax body", 8);
        entry(b, "fifo", '6', NULL, NULL, 0);
        entry(b, "dev", '3', NULL, NULL, 0);
        break;
    }
    put(b, zero, sizeof(zero));
}

/* Names in dir other than allowed (NULL-terminated); -1 on error. */
static int strangers(const char *dir, const char *allowed)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
            strcmp(de->d_name, allowed) == 0)
            continue;
        fprintf(stderr, "fuzz_untar: unexpected %s/%s\n", dir, de->d_name);
        n++;
    }
    closedir(d);
    return n;
}

int main(void)
{
    char tmpl[] = "/tmp/fuzz-untar-XXXXXX";
    char *tmp = mkdtemp(tmpl);
    if (tmp == NULL) {
        perror("mkdtemp");
        return 1;
    }
    char jail[600], root[700];
    snprintf(jail, sizeof(jail), "%s/jail", tmp);
    snprintf(root, sizeof(root), "%s/root", jail);
    if (mkdir(jail, 0700) < 0) {
        perror("mkdir");
        return 1;
    }
    buf s = {0}, m = {0};
    int ok = 0, refused = 0, bad = 0;
    for (int it = 0; it < ITER && bad == 0; it++) {
        seed(&s, it % 3);
        m.len = 0;
        put(&m, s.p, s.len);
        int flips = 1 + (int)(next() % 8);
        for (int k = 0; k < flips; k++) {
            size_t at = next() % m.len;
            switch (next() % 4) {
            case 0:
                m.p[at] ^= (unsigned char)(1u << (next() % 8));
                break;
            case 1:
                m.p[at] = (unsigned char)"./\0xL0125'/"[next() % 11];
                break;
            case 2:
                m.len = at + 1; /* truncate */
                break;
            default: {
                size_t from = next() % m.len, n = 1 + next() % 64;
                if (from + n <= m.len && at + n <= m.len)
                    memmove(m.p + at, m.p + from, n);
            }
            }
        }
        /* Half the time, fix the checksums so mutants get past the header
         * check into the paths, links and sizes. */
        if (next() % 2) {
            for (size_t off = 0; off + 512 <= m.len; off += 512) {
                unsigned char *h = m.p + off;
                if (memcmp(h + 257, "ustar", 5) != 0)
                    continue;
                memset(h + 148, ' ', 8);
                unsigned sum = 0;
                for (int i = 0; i < 512; i++)
                    sum += h[i];
                snprintf((char *)h + 148, 8, "%06o", sum);
            }
        }
        if (mkdir(root, 0755) < 0) {
            perror("mkdir root");
            return 1;
        }
        int fd = memfd_create("layer", MFD_CLOEXEC);
        if (fd < 0 || write(fd, m.p, m.len) != (ssize_t)m.len || lseek(fd, 0, SEEK_SET) != 0) {
            perror("memfd");
            return 1;
        }
        unsigned char d[32];
        unsigned long long bytes = 0;
        char err[600];
        if (sl_oci_untar(fd, root, 1 << 20, d, &bytes, err, sizeof(err)) == 0)
            ok++;
        else
            refused++;
        close(fd);
        if (strangers(tmp, "jail") != 0 || strangers(jail, "root") != 0)
            bad++;
        if (sl_rm_rf(root) < 0) {
            perror("rm root");
            return 1;
        }
    }
    sl_rm_rf(tmp);
    free(s.p);
    free(m.p);
    printf("fuzz_untar: %d mutants unpacked, %d refused, %d escaped\n", ok, refused, bad);
    return bad == 0 && ok > 0 && refused > 0 ? 0 : 1;
}
