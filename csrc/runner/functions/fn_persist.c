/* fn_persist.c - function registrations that outlive the runner.
 *
 * Each registration is kept as <state>/functions/<id>.reg: a msgpack map
 * {"v": 1, "id": str, "created_at": float, "body": the registration body as
 * the client sent it}, written durably (temp + fsync + rename + dir fsync,
 * storage/durable.c) before the 201 goes out, and removed when the function
 * is deleted or forgotten (unused for the retention period). A starting
 * runner registers each again under the same id, so a client (or another
 * process) that knows a function id keeps calling it across a crash or
 * `sandlot runner restart`; the warm pool is rebuilt on the first call. A
 * registration that no longer parses (a mounted path or profile that is
 * gone) is logged as lost and removed.
 *
 * The body can hold secrets (env values of a function's secrets, S3
 * credentials): the file is 0600 in the runner's 0700 state dir, as readable
 * as the runner's own memory is to the same user. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sl_fn.h"
#include "sl_log.h"

#define REG_MAX ((size_t)80 << 20) /* a registration body is at most 64 MiB */
#define REG_SUFFIX ".reg"

static int dir_of(const sl_runner *rt, char *out, size_t len)
{
    int n = snprintf(out, len, "%s/functions", rt->state_dir);
    return n < 0 || (size_t)n >= len ? -1 : 0;
}

static int path_of(const sl_runner *rt, const char *id, char *out, size_t len)
{
    int n = snprintf(out, len, "%s/functions/%s" REG_SUFFIX, rt->state_dir, id);
    return n < 0 || (size_t)n >= len ? -1 : 0;
}

int sl_fn_persist_save(sl_runner *rt, const sl_fn *f, const msgpack_object *body, sl_err *e)
{
    char dir[4096], path[4096];
    if (rt->state_dir == NULL)
        return 0;
    if (dir_of(rt, dir, sizeof(dir)) < 0 || path_of(rt, f->id, path, sizeof(path)) < 0)
        return sl_err_set(e, 500, "state dir path too long");
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return sl_err_set(e, 500, "mkdir %s: %s", dir, strerror(errno));
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    int bad = msgpack_pack_map(&pk, 4) != 0;
    bad |= msgpack_pack_str_with_body(&pk, "v", 1) != 0 || msgpack_pack_int(&pk, 1) != 0;
    bad |= msgpack_pack_str_with_body(&pk, "id", 2) != 0 ||
           msgpack_pack_str_with_body(&pk, f->id, strlen(f->id)) != 0;
    bad |= msgpack_pack_str_with_body(&pk, "created_at", 10) != 0 ||
           msgpack_pack_double(&pk, f->created_at) != 0;
    bad |= msgpack_pack_str_with_body(&pk, "body", 4) != 0 || msgpack_pack_object(&pk, *body) != 0;
    int rc = bad ? -ENOMEM : sl_write_durable(path, sb.data, sb.size);
    if (sb.data != NULL)
        explicit_bzero(sb.data, sb.size); /* it may hold secrets */
    msgpack_sbuffer_destroy(&sb);
    if (rc < 0)
        return sl_err_set(e, 500, "cannot store the registration in %s: %s", path, strerror(-rc));
    sl_fault("function-registered");
    return 0;
}

void sl_fn_persist_forget(sl_runner *rt, const sl_fn *f)
{
    char path[4096];
    if (rt == NULL || rt->state_dir == NULL || path_of(rt, f->id, path, sizeof(path)) < 0)
        return;
    if (unlink(path) < 0 && errno != ENOENT) {
        sl_warn("function %s: cannot remove %s: %s", f->id, path, strerror(errno));
        return;
    }
    /* Durable too: a deleted function must not come back after a crash. */
    if (sl_fsync_parent(path) < 0)
        sl_warn("function %s: cannot sync the removal of %s", f->id, path);
}

/* The whole file, or NULL (logged). */
static char *slurp(int dfd, const char *name, size_t *len)
{
    int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    char *buf = NULL;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (size_t)st.st_size > REG_MAX ||
        (buf = malloc((size_t)st.st_size + 1)) == NULL) {
        sl_warn("function registration %s: cannot read it (%s)", name,
                fd < 0 || buf == NULL ? strerror(errno) : "not a file, or too large");
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    if (got != (size_t)st.st_size) {
        sl_warn("function registration %s: short read", name);
        free(buf);
        return NULL;
    }
    *len = got;
    return buf;
}

/* Register one stored file again; 0 kept, -1 (logged) to be removed. */
static int load_one(sl_runner *rt, int dfd, const char *name)
{
    size_t len = 0, nl = strlen(name) - strlen(REG_SUFFIX);
    char *buf = slurp(dfd, name, &len);
    if (buf == NULL)
        return -1;
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    sl_err e = {0};
    int rc = -1;
    const msgpack_object *id, *at, *body;
    if (msgpack_unpack_next(&up, buf, len, NULL) != MSGPACK_UNPACK_SUCCESS ||
        up.data.type != MSGPACK_OBJECT_MAP || (id = sl_msg_field(&up.data, "id")) == NULL ||
        (at = sl_msg_field(&up.data, "created_at")) == NULL ||
        (body = sl_msg_field(&up.data, "body")) == NULL || id->type != MSGPACK_OBJECT_STR ||
        at->type != MSGPACK_OBJECT_FLOAT64 || body->type != MSGPACK_OBJECT_MAP) {
        sl_warn("lost function registration %.*s: the file is malformed", (int)nl, name);
    } else if (id->via.str.size != nl || memcmp(id->via.str.ptr, name, nl) != 0 ||
               nl != SL_FN_ID_LEN || strncmp(name, "fn-", 3) != 0) {
        sl_warn("lost function registration %.*s: its id does not match its name", (int)nl, name);
    } else {
        char fid[SL_FN_ID_LEN + 1];
        memcpy(fid, name, nl);
        fid[nl] = '\0';
        if (sl_fn_find(fid) != NULL) {
            sl_warn("function registration %s: listed twice", fid);
        } else if (sl_fn_add(rt, fid, body, at->via.f64, &e) == NULL) {
            sl_warn("lost function %s: it no longer registers: %s", fid, e.msg);
        } else {
            rc = 0;
        }
    }
    msgpack_unpacked_destroy(&up);
    explicit_bzero(buf, len);
    free(buf);
    return rc;
}

void sl_fn_persist_load(sl_runner *rt)
{
    char dir[4096];
    if (rt->state_dir == NULL || dir_of(rt, dir, sizeof(dir)) < 0)
        return;
    DIR *d = opendir(dir);
    if (d == NULL) {
        if (errno != ENOENT)
            sl_warn("cannot read %s: %s", dir, strerror(errno));
        return;
    }
    size_t kept = 0, lost = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t n = strlen(de->d_name);
        if (de->d_name[0] == '.')
            continue;
        int reg =
            n > strlen(REG_SUFFIX) && strcmp(de->d_name + n - strlen(REG_SUFFIX), REG_SUFFIX) == 0;
        /* A write cut by a crash leaves "<id>.reg.tmp": never acknowledged. */
        if (reg && load_one(rt, dirfd(d), de->d_name) == 0) {
            kept++;
            continue;
        }
        lost += reg;
        if (unlinkat(dirfd(d), de->d_name, 0) < 0)
            sl_warn("cannot remove %s/%s: %s", dir, de->d_name, strerror(errno));
    }
    closedir(d);
    if (kept + lost > 0)
        sl_info("functions: %zu registration(s) of an earlier runner kept, %zu lost", kept, lost);
}
