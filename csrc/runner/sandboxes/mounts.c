/* mounts.c - read-only host files and dirs bound into a sandbox at create
 * ("mounts": {sandbox path: host path}); Sandbox.create(mounted_files=...). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sl_snap.h"

int sl_mounts_parse(const msgpack_object *body, sl_kv **kv, size_t *n, sl_bind **binds, sl_err *e)
{
    *binds = NULL;
    if (sl_msg_kvmap(body, "mounts", kv, n, e) < 0)
        return -1;
    if (*n == 0)
        return 0;
    for (size_t i = 0; i < *n; i++) {
        const char *in = (*kv)[i].k, *host = (*kv)[i].v;
        struct stat st;
        if (!sl_path_abs_clean(in) || strspn(in, "/") == strlen(in))
            return sl_err_set(e, 400,
                              "field 'mounts': mount path '%.200s' must be absolute, not '/', and "
                              "without '.' or '..' components",
                              in);
        if (host[0] != '/')
            return sl_err_set(e, 400, "field 'mounts': host path '%.200s' must be absolute", host);
        /* The sandbox layer refuses a symlink as the source: say so here. */
        if (lstat(host, &st) < 0)
            return sl_err_set(e, 400, "field 'mounts': host path %.200s: %s", host,
                              strerror(errno));
        if (S_ISLNK(st.st_mode))
            return sl_err_set(e, 400, "field 'mounts': host path %.200s is a symlink", host);
    }
    *binds = calloc(*n, sizeof(**binds));
    if (*binds == NULL)
        return sl_err_set(e, 500, "out of memory");
    for (size_t i = 0; i < *n; i++) {
        (*binds)[i].host_path = (*kv)[i].v;
        (*binds)[i].sandbox_path = (*kv)[i].k;
        (*binds)[i].readonly = 1;
    }
    return 0;
}
