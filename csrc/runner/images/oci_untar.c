/* oci_untar.c - unpack one image layer (tar, tar+gzip, tar+zstd) into a
 * directory that is then used as an overlay lower.
 *
 * The tarball is untrusted. Every entry's path is normalised and any ".."
 * component refuses the layer; parents are opened with openat2(RESOLVE_BENEATH
 * | RESOLVE_NO_SYMLINKS), so an entry can never be written through a symlink
 * (one planted by an earlier entry, pointing out or not); hard links must
 * name a file already in this layer. Symlinks themselves are kept verbatim:
 * their targets are only ever resolved inside a sandbox's root. OCI
 * whiteouts become what overlayfs reads: ".wh.NAME" a 0/0 char device NAME,
 * ".wh..wh..opq" the trusted.overlay.opaque xattr on its dir; overlay xattrs
 * coming from the tarball are dropped (they would forge those). Uncompressed
 * bytes are counted against a limit (layer bombs) and hashed: the caller
 * compares the digest with the config's diff_id.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "oci_int.h"
#include "sl_sandbox.h"

#define BLK 512
#define PATH_MAX_TAR 4096

typedef struct xattr {
    char *name;
    char *val;
    size_t len;
} xattr;

typedef struct entry {
    char *path, *link;
    char type;
    unsigned mode;
    long long uid, gid;
    unsigned long long size;
    struct timespec mtime;
    unsigned dmaj, dmin;
    xattr *xa;
    size_t nxa;
} entry;

/* pax/GNU records waiting for the next real header */
typedef struct pending {
    char *path, *link;
    unsigned long long size;
    long long uid, gid;
    struct timespec mtime;
    int has_size, has_uid, has_gid, has_mtime;
    xattr *xa;
    size_t nxa;
} pending;

typedef struct dirtime {
    char *rel;
    struct timespec t;
} dirtime;

/* ---- header fields ---- */

static int num(const char *f, size_t len, unsigned long long *out)
{
    /* base-256 (GNU) for large values, octal otherwise */
    if ((unsigned char)f[0] & 0x80) {
        unsigned long long v = (unsigned char)f[0] & 0x7f;
        for (size_t i = 1; i < len; i++) {
            if (v >> 55)
                return -1;
            v = (v << 8) | (unsigned char)f[i];
        }
        *out = v;
        return 0;
    }
    unsigned long long v = 0;
    size_t i = 0;
    while (i < len && (f[i] == ' ' || f[i] == '\0'))
        i++;
    for (; i < len && f[i] >= '0' && f[i] <= '7'; i++) {
        if (v >> 60)
            return -1;
        v = v * 8 + (unsigned)(f[i] - '0');
    }
    for (; i < len; i++) {
        if (f[i] != ' ' && f[i] != '\0')
            return -1;
    }
    *out = v;
    return 0;
}

static char *field(const char *f, size_t len)
{
    return strndup(f, strnlen(f, len));
}

static int checksum_ok(const unsigned char *h)
{
    unsigned long long want;
    if (num((const char *)h + 148, 8, &want) < 0)
        return 0;
    unsigned long sum = 0;
    for (int i = 0; i < BLK; i++)
        sum += (i >= 148 && i < 156) ? ' ' : h[i];
    return sum == want;
}

static void entry_free(entry *e)
{
    free(e->path);
    free(e->link);
    for (size_t i = 0; i < e->nxa; i++) {
        free(e->xa[i].name);
        free(e->xa[i].val);
    }
    free(e->xa);
    memset(e, 0, sizeof(*e));
}

/* Apply one PAX record set (data of an 'x' header) to the next entry. */
static int pax(oci_src *s, char *d, size_t len, pending *e)
{
    size_t i = 0;
    while (i < len) {
        char *sp = memchr(d + i, ' ', len - i);
        if (sp == NULL)
            break;
        unsigned long long rl = strtoull(d + i, NULL, 10);
        if (rl == 0 || rl > len - i)
            return oci_src_fail(s, "corrupt pax header");
        char *rec = sp + 1, *end = d + i + rl - 1; /* end: the '\n' */
        char *eq = memchr(rec, '=', (size_t)(end - rec));
        if (eq == NULL || *end != '\n')
            return oci_src_fail(s, "corrupt pax header");
        *eq = '\0';
        char *val = eq + 1;
        size_t vlen = (size_t)(end - val);
        if (strcmp(rec, "path") == 0) {
            free(e->path);
            e->path = strndup(val, vlen);
        } else if (strcmp(rec, "linkpath") == 0) {
            free(e->link);
            e->link = strndup(val, vlen);
        } else if (strcmp(rec, "size") == 0) {
            e->size = strtoull(val, NULL, 10);
            e->has_size = 1;
        } else if (strcmp(rec, "uid") == 0) {
            e->uid = strtoll(val, NULL, 10);
            e->has_uid = 1;
        } else if (strcmp(rec, "gid") == 0) {
            e->gid = strtoll(val, NULL, 10);
            e->has_gid = 1;
        } else if (strcmp(rec, "mtime") == 0) {
            char *dot;
            e->mtime.tv_sec = strtoll(val, &dot, 10);
            e->mtime.tv_nsec = 0;
            if (*dot == '.') {
                long ns = 0;
                int digits = 0;
                for (char *p = dot + 1; p < end && *p >= '0' && *p <= '9' && digits < 9; p++) {
                    ns = ns * 10 + (*p - '0');
                    digits++;
                }
                while (digits++ < 9)
                    ns *= 10;
                e->mtime.tv_nsec = ns;
            }
            e->mtime.tv_sec = e->mtime.tv_sec < 0 ? 0 : e->mtime.tv_sec;
            e->has_mtime = 1;
        } else if (strncmp(rec, "SCHILY.xattr.", 13) == 0) {
            xattr *nx = realloc(e->xa, (e->nxa + 1) * sizeof(*nx));
            if (nx == NULL)
                return oci_src_fail(s, "out of memory");
            e->xa = nx;
            nx[e->nxa].name = strdup(rec + 13);
            nx[e->nxa].val = malloc(vlen ? vlen : 1);
            nx[e->nxa].len = vlen;
            if (nx[e->nxa].name == NULL || nx[e->nxa].val == NULL) {
                free(nx[e->nxa].name);
                free(nx[e->nxa].val);
                return oci_src_fail(s, "out of memory");
            }
            memcpy(nx[e->nxa].val, val, vlen);
            e->nxa++;
        }
        if ((strcmp(rec, "path") == 0 && e->path == NULL) ||
            (strcmp(rec, "linkpath") == 0 && e->link == NULL))
            return oci_src_fail(s, "out of memory");
        i += rl;
    }
    return 0;
}

/* Normalise a tar path in place: no leading '/', no "." components, no
 * empty ones. "" is the layer root. -1 if a ".." component appears. */
static int clean(char *p)
{
    char *out = p, *in = p;
    while (*in) {
        while (*in == '/')
            in++;
        if (*in == '\0')
            break;
        char *c = in;
        while (*in && *in != '/')
            in++;
        size_t n = (size_t)(in - c);
        if (n == 1 && c[0] == '.')
            continue;
        if (n == 2 && c[0] == '.' && c[1] == '.')
            return -1;
        if (out != p)
            *out++ = '/';
        memmove(out, c, n);
        out += n;
    }
    *out = '\0';
    return 0;
}

static int open_beneath(int root, const char *rel, int flags)
{
    struct open_how how = {
        .flags = (unsigned long long)(flags | O_CLOEXEC),
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
    };
    return (int)syscall(SYS_openat2, root, rel[0] ? rel : ".", &how, sizeof(how));
}

/* The dir fd of rel's parent (created as 0755 root dirs when missing) and
 * the last component in *base. */
static int parent_of(oci_src *s, int root, char *rel, const char **base)
{
    char *slash = strrchr(rel, '/');
    if (slash == NULL) {
        *base = rel;
        int fd = dup(root);
        return fd < 0 ? oci_src_fail(s, "dup: %s", strerror(errno)) : fd;
    }
    *slash = '\0';
    *base = slash + 1;
    int fd = open_beneath(root, rel, O_PATH | O_DIRECTORY);
    if (fd < 0 && errno == ENOENT) {
        /* mkdir -p, one component at a time, never through a symlink */
        for (char *p = rel;; p++) {
            if (*p == '/' || *p == '\0') {
                char c = *p;
                *p = '\0';
                int d = open_beneath(root, rel, O_PATH | O_DIRECTORY);
                if (d < 0 && errno == ENOENT) {
                    if (mkdirat(root, rel, 0755) < 0 && errno != EEXIST) {
                        *p = c;
                        break;
                    }
                } else if (d >= 0) {
                    close(d);
                } else {
                    *p = c;
                    break;
                }
                *p = c;
                if (c == '\0')
                    break;
            }
        }
        fd = open_beneath(root, rel, O_PATH | O_DIRECTORY);
    }
    int err = errno;
    *slash = '/';
    if (fd < 0) {
        if (err == ELOOP || err == EXDEV)
            return oci_src_fail(
                s, "layer entry '%.300s' would be written through a symbolic link; refused", rel);
        if (err == ENOTDIR)
            return oci_src_fail(s, "layer entry '%.300s': a parent is not a directory", rel);
        return oci_src_fail(s, "layer entry '%.300s': %s", rel, strerror(err));
    }
    return fd;
}

/* Remove whatever is at base in dir (a file or a whole tree). */
static int remove_at(oci_src *s, int dir, const char *base)
{
    struct stat st;
    if (fstatat(dir, base, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return errno == ENOENT ? 0 : oci_src_fail(s, "stat %s: %s", base, strerror(errno));
    if (!S_ISDIR(st.st_mode)) {
        if (unlinkat(dir, base, 0) < 0)
            return oci_src_fail(s, "unlink %s: %s", base, strerror(errno));
        return 0;
    }
    char *p = NULL;
    if (asprintf(&p, "/proc/self/fd/%d/%s", dir, base) < 0)
        return oci_src_fail(s, "out of memory");
    int rc = sl_rm_rf(p);
    free(p);
    return rc < 0 ? oci_src_fail(s, "removing %s: %s", base, strerror(errno)) : 0;
}

static int is_overlay_xattr(const char *n)
{
    return strncmp(n, "trusted.overlay.", 16) == 0 || strncmp(n, "user.overlay.", 13) == 0;
}

/* Owner, mode, xattrs, mtime of base in dir (or fd for regular files). */
static int finish_meta(oci_src *s, int dir, const char *base, int fd, const entry *e, int is_link,
                       int is_dir)
{
    char pp[64];
    snprintf(pp, sizeof(pp), "/proc/self/fd/%d/", dir);
    char *path = NULL;
    if (asprintf(&path, "%s%s", pp, base) < 0)
        return oci_src_fail(s, "out of memory");
    int rc = 0;
    if (fchownat(dir, base, (uid_t)e->uid, (gid_t)e->gid, AT_SYMLINK_NOFOLLOW) < 0 &&
        !(errno == EPERM && geteuid() != 0)) {
        rc = oci_src_fail(s, "chown %s: %s", e->path, strerror(errno));
        goto out;
    }
    for (size_t i = 0; i < e->nxa; i++) {
        if (is_overlay_xattr(e->xa[i].name))
            continue; /* would forge whiteouts and redirects */
        int x = fd >= 0 ? fsetxattr(fd, e->xa[i].name, e->xa[i].val, e->xa[i].len, 0)
                        : lsetxattr(path, e->xa[i].name, e->xa[i].val, e->xa[i].len, 0);
        if (x < 0 && errno != ENOTSUP && errno != EPERM) {
            rc = oci_src_fail(s, "setxattr %s on %s: %s", e->xa[i].name, e->path, strerror(errno));
            goto out;
        }
    }
    if (!is_link) {
        /* after chown, which clears set-id bits */
        int m = fd >= 0 ? fchmod(fd, e->mode & 07777) : fchmodat(dir, base, e->mode & 07777, 0);
        if (m < 0) {
            rc = oci_src_fail(s, "chmod %s: %s", e->path, strerror(errno));
            goto out;
        }
    }
    if (!is_dir) {
        struct timespec ts[2] = {e->mtime, e->mtime};
        if (utimensat(dir, base, ts, AT_SYMLINK_NOFOLLOW) < 0) {
            rc = oci_src_fail(s, "utimes %s: %s", e->path, strerror(errno));
            goto out;
        }
    }
out:
    free(path);
    return rc;
}

static int write_file(oci_src *s, int dir, const char *base, const entry *e)
{
    int fd = openat(dir, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return oci_src_fail(s, "create %s: %s", e->path, strerror(errno));
    unsigned char buf[1 << 16];
    unsigned long long left = e->size;
    int rc = 0;
    while (left > 0 && rc == 0) {
        size_t k = left < sizeof(buf) ? (size_t)left : sizeof(buf);
        if (oci_src_full(s, buf, k) < 0) {
            rc = -1;
            break;
        }
        size_t off = 0;
        while (off < k) {
            ssize_t w = write(fd, buf + off, k - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                rc = oci_src_fail(s, "write %s: %s", e->path, strerror(errno));
                break;
            }
            off += (size_t)w;
        }
        left -= k;
    }
    if (rc == 0)
        rc = finish_meta(s, dir, base, fd, e, 0, 0);
    close(fd);
    return rc;
}

static int add_dirtime(oci_src *s, dirtime **v, size_t *n, size_t *cap, const char *rel,
                       struct timespec t)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 256;
        dirtime *nv = realloc(*v, nc * sizeof(*nv));
        if (nv == NULL)
            return oci_src_fail(s, "out of memory");
        *v = nv;
        *cap = nc;
    }
    if (((*v)[*n].rel = strdup(rel)) == NULL)
        return oci_src_fail(s, "out of memory");
    (*v)[*n].t = t;
    (*n)++;
    return 0;
}

/* One entry whose header (and pax/longname records) is parsed; its data
 * (e->size bytes, padded) follows in s. */
static int apply(oci_src *s, int root, entry *e, dirtime **dt, size_t *ndt, size_t *cdt)
{
    unsigned long long pad = (BLK - e->size % BLK) % BLK;
    char type = e->type;
    int has_data = type == '0' || type == '\0' || type == '7';
    if (clean(e->path) < 0)
        return oci_src_fail(
            s, "layer entry '%.300s' has a '..' component (path traversal); refused", e->path);
    if (e->path[0] == '\0') {
        /* the layer root itself: its mode/owner/mtime */
        if (type == '5') {
            entry copy = *e;
            int rc = finish_meta(s, root, ".", -1, &copy, 0, 1);
            if (rc == 0)
                rc = add_dirtime(s, dt, ndt, cdt, ".", e->mtime);
            return rc < 0 ? -1 : oci_src_skip(s, e->size + pad);
        }
        return oci_src_fail(s, "layer entry for the root is not a directory");
    }
    const char *base;
    int dir = parent_of(s, root, e->path, &base);
    if (dir < 0)
        return -1;
    int rc = 0;
    char *rel = e->path; /* parent_of restored the '/' */
    if (strcmp(base, ".wh..wh..opq") == 0) {
        int d = openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (d < 0 || fsetxattr(d, "trusted.overlay.opaque", "y", 1, 0) < 0)
            rc = oci_src_fail(s, "opaque whiteout for '%.300s': %s", rel, strerror(errno));
        if (d >= 0)
            close(d);
        goto data;
    }
    if (strncmp(base, ".wh.", 4) == 0) {
        const char *name = base + 4;
        if (name[0] == '\0' || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
            rc = oci_src_fail(s, "bad whiteout '%.300s'", rel);
            goto data;
        }
        if (remove_at(s, dir, name) < 0 || mknodat(dir, name, S_IFCHR | 0000, makedev(0, 0)) < 0) {
            rc = oci_src_fail(s, "whiteout '%.300s': %s", rel, strerror(errno));
            goto data;
        }
        goto data;
    }
    struct stat st;
    int exists = fstatat(dir, base, &st, AT_SYMLINK_NOFOLLOW) == 0;
    if (exists && !(type == '5' && S_ISDIR(st.st_mode)) && remove_at(s, dir, base) < 0) {
        rc = -1;
        goto data;
    }
    switch (type) {
    case '0':
    case '\0':
    case '7':
        rc = write_file(s, dir, base, e);
        has_data = 0; /* consumed */
        break;
    case '1': {
        if (e->link == NULL || clean(e->link) < 0 || e->link[0] == '\0') {
            rc = oci_src_fail(s, "hard link '%.300s' points out of the layer; refused", rel);
            break;
        }
        const char *tbase;
        int tdir = parent_of(s, root, e->link, &tbase);
        if (tdir < 0) {
            rc = -1;
            break;
        }
        struct stat ts;
        if (fstatat(tdir, tbase, &ts, AT_SYMLINK_NOFOLLOW) < 0 || S_ISDIR(ts.st_mode))
            rc = oci_src_fail(s, "hard link '%.300s': target '%.300s' is not a file of this layer",
                              rel, e->link);
        else if (linkat(tdir, tbase, dir, base, 0) < 0)
            rc = oci_src_fail(s, "hard link '%.300s': %s", rel, strerror(errno));
        close(tdir);
        break;
    }
    case '2':
        if (e->link == NULL || e->link[0] == '\0') {
            rc = oci_src_fail(s, "symlink '%.300s' has no target", rel);
        } else if (symlinkat(e->link, dir, base) < 0) {
            rc = oci_src_fail(s, "symlink '%.300s': %s", rel, strerror(errno));
        } else {
            rc = finish_meta(s, dir, base, -1, e, 1, 0);
        }
        break;
    case '3':
    case '4':
        /* Device nodes are not created: the sandbox root is not mounted
         * nodev and sandlot has no device cgroup, so a node for the host's
         * disk or /dev/mem in an image would be a way out. Sandboxes get
         * their /dev from the runtime; images' own nodes are skipped. */
        s->skipped_devices++;
        break;
    case '6':
        if (mknodat(dir, base, S_IFIFO | 0600, 0) < 0) {
            rc = oci_src_fail(s, "mkfifo '%.300s': %s", rel, strerror(errno));
            break;
        }
        rc = finish_meta(s, dir, base, -1, e, 0, 0);
        break;
    case '5':
        if (!exists && mkdirat(dir, base, 0700) < 0) {
            rc = oci_src_fail(s, "mkdir '%.300s': %s", rel, strerror(errno));
            break;
        }
        rc = finish_meta(s, dir, base, -1, e, 0, 1);
        if (rc == 0)
            rc = add_dirtime(s, dt, ndt, cdt, rel, e->mtime);
        break;
    default:
        rc = oci_src_fail(s, "layer entry '%.300s' has unsupported tar type '%c'", rel, type);
    }
data:
    close(dir);
    if (rc < 0)
        return -1;
    return oci_src_skip(s, (has_data ? e->size : 0) + pad);
}

int sl_oci_untar(int fd, const char *rootpath, unsigned long long max_bytes,
                 unsigned char diffid[32], unsigned long long *bytes, char *err, size_t errlen)
{
    oci_src *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    err[0] = '\0';
    s->err = err;
    s->errlen = errlen;
    int root = -1, rc = -1;
    dirtime *dt = NULL;
    size_t ndt = 0, cdt = 0;
    entry e = {0};
    pending pd = {0};
    if (oci_src_open(s, fd, max_bytes) < 0)
        goto out;
    root = open(rootpath, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root < 0) {
        oci_src_fail(s, "open %s: %s", rootpath, strerror(errno));
        goto out;
    }
    unsigned char h[BLK];
    int zeros = 0;
    for (;;) {
        ssize_t k = 0;
        size_t got = 0;
        while (got < BLK && (k = oci_src_read(s, h + got, BLK - got)) > 0)
            got += (size_t)k;
        if (k < 0)
            goto out;
        if (got == 0)
            break; /* no end-of-archive blocks: accepted, as GNU tar does */
        if (got < BLK) {
            oci_src_fail(s, "layer tarball is truncated");
            goto out;
        }
        int all0 = 1;
        for (int i = 0; i < BLK && all0; i++)
            all0 = h[i] == 0;
        if (all0) {
            if (++zeros == 2)
                break;
            continue;
        }
        zeros = 0;
        if (!checksum_ok(h)) {
            oci_src_fail(s, "layer tarball is corrupt (bad header checksum)");
            goto out;
        }
        unsigned long long v, size, mode, uid, gid, mt, dmaj, dmin;
        if (num((char *)h + 124, 12, &size) < 0 || num((char *)h + 100, 8, &mode) < 0 ||
            num((char *)h + 108, 8, &uid) < 0 || num((char *)h + 116, 8, &gid) < 0 ||
            num((char *)h + 136, 12, &mt) < 0) {
            oci_src_fail(s, "layer tarball is corrupt (bad number in a header)");
            goto out;
        }
        char type = (char)h[156];
        if (pd.has_size)
            size = pd.size;
        unsigned long long pad = (BLK - size % BLK) % BLK;
        if (type == 'x' || type == 'L' || type == 'K' || type == 'g') {
            if (size > (1u << 20)) {
                oci_src_fail(s, "layer tarball: extended header of %llu bytes; refused", size);
                goto out;
            }
            char *d = malloc(size + 1);
            if (d == NULL) {
                oci_src_fail(s, "out of memory");
                goto out;
            }
            if (size > 0 && oci_src_full(s, (unsigned char *)d, size) < 0) {
                free(d);
                goto out;
            }
            d[size] = '\0';
            int prc = 0;
            pd.has_size = 0; /* applied to this record, not the next one */
            if (type == 'x') {
                prc = pax(s, d, size, &pd);
            } else if (type == 'L') {
                free(pd.path);
                pd.path = strdup(d);
                prc = pd.path ? 0 : oci_src_fail(s, "out of memory");
            } else if (type == 'K') {
                free(pd.link);
                pd.link = strdup(d);
                prc = pd.link ? 0 : oci_src_fail(s, "out of memory");
            }
            free(d);
            if (prc < 0 || oci_src_skip(s, pad) < 0)
                goto out;
            continue;
        }
        e.type = type;
        e.size = size;
        e.mode = (unsigned)mode;
        e.uid = pd.has_uid ? pd.uid : (long long)uid;
        e.gid = pd.has_gid ? pd.gid : (long long)gid;
        e.mtime = pd.has_mtime ? pd.mtime : (struct timespec){(time_t)mt, 0};
        e.dmaj = num((char *)h + 329, 8, &dmaj) == 0 ? (unsigned)dmaj : 0;
        e.dmin = num((char *)h + 337, 8, &dmin) == 0 ? (unsigned)dmin : 0;
        e.xa = pd.xa;
        e.nxa = pd.nxa;
        pd.xa = NULL;
        pd.nxa = 0;
        (void)v;
        if (pd.path != NULL) {
            e.path = pd.path;
            pd.path = NULL;
        } else {
            char *name = field((char *)h, 100);
            char *prefix = memcmp(h + 257, "ustar", 5) == 0 ? field((char *)h + 345, 155) : NULL;
            if (name == NULL) {
                free(prefix);
                oci_src_fail(s, "out of memory");
                goto out;
            }
            if (prefix != NULL && prefix[0] != '\0') {
                if (asprintf(&e.path, "%s/%s", prefix, name) < 0)
                    e.path = NULL;
                free(name);
            } else {
                e.path = name;
            }
            free(prefix);
        }
        if (pd.link != NULL) {
            e.link = pd.link;
            pd.link = NULL;
        } else if (e.type == '1' || e.type == '2') {
            e.link = field((char *)h + 157, 100);
        }
        pd.has_uid = pd.has_gid = pd.has_mtime = pd.has_size = 0;
        if (e.path == NULL || ((e.type == '1' || e.type == '2') && e.link == NULL)) {
            oci_src_fail(s, "out of memory");
            goto out;
        }
        if (strlen(e.path) >= PATH_MAX_TAR) {
            oci_src_fail(s, "layer entry path longer than %d bytes", PATH_MAX_TAR);
            goto out;
        }
        if (apply(s, root, &e, &dt, &ndt, &cdt) < 0)
            goto out;
        entry_free(&e);
    }
    /* Bytes after the end-of-archive blocks are part of the diff_id. */
    unsigned char buf[1 << 14];
    ssize_t k;
    while ((k = oci_src_read(s, buf, sizeof(buf))) > 0)
        ;
    if (k < 0)
        goto out;
    /* Directory mtimes last: creating children changed them. */
    for (size_t i = ndt; i-- > 0;) {
        struct timespec ts[2] = {dt[i].t, dt[i].t};
        int d = open_beneath(root, strcmp(dt[i].rel, ".") == 0 ? "" : dt[i].rel,
                             O_RDONLY | O_DIRECTORY);
        if (d >= 0) {
            futimens(d, ts);
            close(d);
        }
    }
    if (oci_src_digest(s, diffid) < 0)
        goto out;
    *bytes = s->total;
    rc = 0;
out:
    entry_free(&e);
    free(pd.path);
    free(pd.link);
    for (size_t i = 0; i < pd.nxa; i++) {
        free(pd.xa[i].name);
        free(pd.xa[i].val);
    }
    free(pd.xa);
    for (size_t i = 0; i < ndt; i++)
        free(dt[i].rel);
    free(dt);
    if (root >= 0)
        close(root);
    oci_src_close(s);
    free(s);
    return rc;
}
