/* files.c - files/read and files/write inside a running sandbox.
 *
 * Paths are resolved by the kernel inside the sandbox's root: openat2() on an
 * O_PATH handle of /proc/<init>/root with RESOLVE_IN_ROOT, so ".." and
 * absolute symlinks stop at the sandbox's "/", and RESOLVE_NO_MAGICLINKS, so
 * /proc/<pid>/fd/N style links cannot lead out. A symlink planted inside the
 * sandbox can therefore never make the runner (root on the host) read or
 * write a host file.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "sl_runner.h"

static int open_in_root(int rootfd, const char *path, int flags, mode_t mode)
{
    struct open_how how = {
        .flags = (uint64_t)flags | O_CLOEXEC | O_NOCTTY | O_NONBLOCK,
        .mode = (flags & O_CREAT) ? mode : 0,
        .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    long fd;
    do {
        fd = syscall(SYS_openat2, rootfd, path, &how, sizeof(how));
    } while (fd < 0 && (errno == EINTR || errno == EAGAIN));
    return (int)fd;
}

/* Map an errno from opening path to an API error. */
static int path_error(sl_err *e, int err, const char *op, const char *path)
{
    switch (err) {
    case ENOENT:
        return sl_err_set(e, 404, "%s %.300s: no such file or directory", op, path);
    case ENOTDIR:
    case EISDIR:
    case ELOOP:
    case EXDEV:
    case EINVAL:
    case ENAMETOOLONG:
    case EACCES:
    case EPERM:
    case EROFS:
    case ETXTBSY:
    case ENXIO:
        return sl_err_set(e, 400, "%s %.300s: %s", op, path, strerror(err));
    case EFBIG:
    case ENOSPC:
    case EDQUOT:
        return sl_err_set(e, 413, "%s %.300s: %s", op, path, strerror(err));
    default:
        return sl_err_set(e, 500, "%s %.300s: %s", op, path, strerror(err));
    }
}

/* O_PATH handle on the sandbox's root, or -1 with e set (409 once it ended). */
/* Both directions refuse anything but a regular file: FIFOs, devices and
 * sockets could block the runner's loop or never end. */
static int stat_regular(int fd, const char *path, struct stat *st, sl_err *e)
{
    if (fstat(fd, st) < 0)
        return sl_err_set(e, 500, "fstat %.300s: %s", path, strerror(errno));
    if (!S_ISREG(st->st_mode))
        return sl_err_set(e, 400, "%.300s is not a regular file", path);
    return 0;
}

static int sandbox_root(sl_box *b, sl_err *e)
{
    if (!b->alive || b->killed || b->finalised)
        return sl_err_set(e, 409, "sandbox %s is not running", b->id);
    /* A microVM's init_pid is its monitor on the host: its root is the
     * host's. Its files are only reachable through the guest (the client
     * runs cat inside it), never from here. */
    if (b->microvm)
        return sl_err_set(e, 400,
                          "sandbox %s is a microVM: its files are read and written through the "
                          "guest (update the sandlot client)",
                          b->id);
    char p[64];
    snprintf(p, sizeof(p), "/proc/%d/root", (int)b->sbx.init_pid);
    int fd = open(p, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT || errno == ESRCH || errno == EACCES)
            return sl_err_set(e, 409, "sandbox %s is not running", b->id);
        return sl_err_set(e, 500, "open %s: %s", p, strerror(errno));
    }
    return fd;
}

static int get_path(sl_req *r, char **path, sl_err *e)
{
    if (sl_msg_str(r->body, "path", SL_REQ, path, e) < 0)
        return -1;
    if ((*path)[0] != '/') {
        sl_err_set(e, 400, "field 'path' must be absolute, got '%.200s'", *path);
        free(*path);
        *path = NULL;
        return -1;
    }
    return 0;
}

void sl_h_file_read(sl_req *r)
{
    sl_box *b = sl_req_box(r);
    if (b == NULL)
        return;
    sl_err e;
    char *path = NULL, *data = NULL;
    int root = -1, fd = -1;
    if (get_path(r, &path, &e) < 0 || (root = sandbox_root(b, &e)) < 0)
        goto fail;
    fd = open_in_root(root, path, O_RDONLY, 0);
    if (fd < 0) {
        path_error(&e, errno, "open", path);
        goto fail;
    }
    struct stat st;
    if (stat_regular(fd, path, &st, &e) < 0)
        goto fail;
    if ((uint64_t)st.st_size > SL_FILE_MAX) {
        sl_err_set(&e, 413, "%.300s is %lld bytes; files/read is limited to %zu", path,
                   (long long)st.st_size, SL_FILE_MAX);
        goto fail;
    }
    /* st_size may be 0 for /proc-like files or change while we read. */
    size_t cap = st.st_size > 0 ? (size_t)st.st_size + 1 : 65536, len = 0;
    data = malloc(cap);
    if (data == NULL) {
        sl_err_set(&e, 500, "malloc: out of memory");
        goto fail;
    }
    for (;;) {
        if (len == cap) {
            if (cap > SL_FILE_MAX) {
                sl_err_set(&e, 413, "%.300s is larger than the files/read limit of %zu bytes", path,
                           SL_FILE_MAX);
                goto fail;
            }
            size_t ncap = cap * 2 > SL_FILE_MAX + 1 ? SL_FILE_MAX + 1 : cap * 2;
            char *nd = realloc(data, ncap);
            if (nd == NULL) {
                sl_err_set(&e, 500, "realloc: out of memory");
                goto fail;
            }
            data = nd;
            cap = ncap;
        }
        ssize_t n = read(fd, data + len, cap - len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            sl_err_set(&e, 500, "read %.300s: %s", path, strerror(errno));
            goto fail;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    if (len > SL_FILE_MAX) {
        sl_err_set(&e, 413, "%.300s is larger than the files/read limit of %zu bytes", path,
                   SL_FILE_MAX);
        goto fail;
    }
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 1);
    sl_r_str(&resp, "data");
    sl_r_bin(&resp, data, len);
    sl_reply(r, 200, &resp);
    goto done;
fail:
    sl_reply_err(r, &e);
done:
    if (fd >= 0)
        close(fd);
    if (root >= 0)
        close(root);
    free(data);
    free(path);
}

void sl_h_file_write(sl_req *r)
{
    sl_box *b = sl_req_box(r);
    if (b == NULL)
        return;
    sl_err e;
    char *path = NULL;
    int root = -1, fd = -1;
    const char *data;
    size_t len;
    int64_t mode;
    int have_mode = sl_msg_field(r->body, "mode") != NULL &&
                    sl_msg_field(r->body, "mode")->type != MSGPACK_OBJECT_NIL;
    if (get_path(r, &path, &e) < 0 || sl_msg_bytes(r->body, "data", SL_REQ, &data, &len, &e) < 0 ||
        sl_msg_int(r->body, "mode", 0, 07777, 0644, &mode, &e) < 0 ||
        (root = sandbox_root(b, &e)) < 0)
        goto fail;
    /* Like open(O_CREAT) anywhere: a new file gets mode (default 0644, under
     * the umask), an existing one keeps its mode unless the request names one.
     * No O_TRUNC yet: a FIFO or device must be refused untouched. */
    fd = open_in_root(root, path, O_WRONLY | O_CREAT, (mode_t)mode);
    if (fd < 0) {
        path_error(&e, errno, "open", path);
        goto fail;
    }
    struct stat st;
    if (stat_regular(fd, path, &st, &e) < 0)
        goto fail;
    if (ftruncate(fd, 0) < 0) {
        path_error(&e, errno, "truncate", path);
        goto fail;
    }
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, data + done, len - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            path_error(&e, errno, "write", path);
            goto fail;
        }
        done += (size_t)n;
    }
    if (have_mode && fchmod(fd, (mode_t)mode) < 0) {
        path_error(&e, errno, "chmod", path);
        goto fail;
    }
    if (close(fd) < 0) {
        fd = -1;
        path_error(&e, errno, "close", path);
        goto fail;
    }
    fd = -1;
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 1);
    sl_r_kint(&resp, "written", (int64_t)len);
    sl_reply(r, 200, &resp);
    goto done;
fail:
    sl_reply_err(r, &e);
done:
    if (fd >= 0)
        close(fd);
    if (root >= 0)
        close(root);
    free(path);
}
