/* gpu.c - GPUs handed to sandboxes: the runner's devices (--gpu), the
 * "resources.gpu" request, which sandbox holds which device, and the device
 * nodes bound into a sandbox's /dev.
 *
 * A GPU is a character device the runner was given (`--gpu /dev/nvidia0`,
 * optionally `=A100` for its type, or `--gpu auto` for every /dev/nvidia<N>).
 * A sandbox asking for `gpu: N` (or "A100", or "A100:2", Modal's spelling)
 * gets N free devices of that type for its whole life, bound into its /dev
 * at the same path, plus the vendor's shared control nodes (nvidiactl,
 * nvidia-uvm...) that exist on the host. Sandboxes that asked for none have
 * no GPU node: their /dev is a fresh tmpfs and they cannot mknod one (no
 * CAP_MKNOD), so holding a device is what gives access to it. A device is
 * held by one sandbox at a time; when none is free the create is refused
 * (503) rather than queued, as for --max-sandboxes. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sl_log.h"
#include "sl_runner.h"

#define GPU_MAX 64      /* devices per runner, and per request */
#define GPU_TYPE_MAX 31 /* "A100-80GB" etc. */

/* Vendor nodes every GPU user needs beside its own device (NVIDIA's). */
static const char *const shared_nodes[] = {"/dev/nvidiactl", "/dev/nvidia-uvm",
                                           "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"};

static int is_chr(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 && S_ISCHR(st.st_mode);
}

static int add_one(sl_runner *rt, const char *path, size_t plen, const char *type)
{
    if (rt->ngpus >= GPU_MAX) {
        sl_error("--gpu: at most %d devices", GPU_MAX);
        return -1;
    }
    sl_gpu *g = &rt->gpus[rt->ngpus];
    memset(g, 0, sizeof(*g));
    g->path = strndup(path, plen);
    g->type = strdup(type);
    if (g->path == NULL || g->type == NULL) {
        free(g->path);
        free(g->type);
        sl_error("out of memory");
        return -1;
    }
    if (g->path[0] != '/' || !is_chr(g->path)) {
        sl_error("--gpu %s: not a character device (give a GPU's device node, e.g. "
                 "/dev/nvidia0, or --gpu auto)",
                 g->path);
        free(g->path);
        free(g->type);
        return -1;
    }
    for (size_t i = 0; i < rt->ngpus; i++) {
        if (strcmp(rt->gpus[i].path, g->path) == 0) {
            sl_error("--gpu %s: given twice", g->path);
            free(g->path);
            free(g->type);
            return -1;
        }
    }
    rt->ngpus++;
    return 0;
}

/* Every /dev/nvidia<N> of the host, in number order. */
static int add_auto(sl_runner *rt)
{
    int found = 0;

    for (int n = 0; n < GPU_MAX; n++) {
        char path[32];

        snprintf(path, sizeof(path), "/dev/nvidia%d", n);
        if (!is_chr(path))
            continue;
        if (add_one(rt, path, strlen(path), "") < 0)
            return -1;
        found++;
    }
    sl_info("--gpu auto: %d GPU device(s) found under /dev", found);
    return 0;
}

int sl_gpu_add(sl_runner *rt, const char *spec)
{
    if (rt->gpus == NULL && (rt->gpus = calloc(GPU_MAX, sizeof(*rt->gpus))) == NULL) {
        sl_error("out of memory");
        return -1;
    }
    if (strcmp(spec, "auto") == 0)
        return add_auto(rt);
    const char *eq = strchr(spec, '=');
    const char *type = eq != NULL ? eq + 1 : "";
    if (strlen(type) > GPU_TYPE_MAX || strpbrk(type, ":,= ") != NULL) {
        sl_error("--gpu %s: the type after '=' must be at most %d characters without ':', ',', "
                 "'=' or spaces",
                 spec, GPU_TYPE_MAX);
        return -1;
    }
    return add_one(rt, spec, eq != NULL ? (size_t)(eq - spec) : strlen(spec), type);
}

void sl_gpu_free_all(sl_runner *rt)
{
    for (size_t i = 0; i < rt->ngpus; i++) {
        free(rt->gpus[i].path);
        free(rt->gpus[i].type);
    }
    free(rt->gpus);
    rt->gpus = NULL;
    rt->ngpus = 0;
}

static size_t count_free(const sl_runner *rt, const char *type)
{
    size_t n = 0;

    for (size_t i = 0; i < rt->ngpus; i++)
        if (rt->gpus[i].owner[0] == '\0' &&
            (type[0] == '\0' || strcmp(rt->gpus[i].type, type) == 0))
            n++;
    return n;
}

static size_t count_type(const sl_runner *rt, const char *type)
{
    size_t n = 0;

    for (size_t i = 0; i < rt->ngpus; i++)
        if (type[0] == '\0' || strcmp(rt->gpus[i].type, type) == 0)
            n++;
    return n;
}

/* "gpu": N, "TYPE" or "TYPE:N" (nil and 0 mean none; handled by the caller
 * for nil). */
int sl_gpu_parse(sl_box *b, const msgpack_object *v, const char *field, sl_err *e)
{
    const sl_runner *rt = b->rt;
    char type[GPU_TYPE_MAX + 1] = "";
    unsigned long long n = 1;

    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        n = v->via.u64;
    } else if (v->type == MSGPACK_OBJECT_STR) {
        const char *s = v->via.str.ptr, *colon = memchr(s, ':', v->via.str.size);
        size_t tl = colon != NULL ? (size_t)(colon - s) : v->via.str.size;

        if (tl == 0 || tl > GPU_TYPE_MAX || memchr(s, '\0', v->via.str.size) != NULL)
            return sl_err_set(e, 400,
                              "field '%s.gpu' must be a count, a GPU type (\"A100\") or "
                              "type:count (\"A100:2\"), got \"%.*s\"",
                              field, (int)(v->via.str.size > 64 ? 64 : v->via.str.size), s);
        memcpy(type, s, tl);
        type[tl] = '\0';
        if (colon != NULL) {
            char num[16];
            size_t nl = v->via.str.size - tl - 1;
            char *end;

            if (nl == 0 || nl >= sizeof(num))
                return sl_err_set(e, 400, "field '%s.gpu': bad count after ':' in \"%.*s\"", field,
                                  (int)v->via.str.size, s);
            memcpy(num, colon + 1, nl);
            num[nl] = '\0';
            n = strtoull(num, &end, 10);
            if (*end != '\0' || num[0] == '-' || num[0] == '+')
                return sl_err_set(e, 400, "field '%s.gpu': bad count after ':' in \"%.*s\"", field,
                                  (int)v->via.str.size, s);
        }
    } else {
        return sl_err_set(e, 400, "field '%s.gpu' must be a count or a GPU type string, got %s",
                          field, sl_msg_type_name(v));
    }
    if (n == 0)
        return 0;
    if (n > GPU_MAX)
        return sl_err_set(e, 400, "field '%s.gpu': at most %d GPUs per sandbox, got %llu", field,
                          GPU_MAX, n);
    if (rt->ngpus == 0)
        return sl_err_set(e, 400,
                          "field '%s.gpu': this runner has no GPU to give a sandbox (start "
                          "sandlotd with --gpu /dev/nvidiaN or --gpu auto), or remove the gpu "
                          "request",
                          field);
    size_t have = count_type(rt, type);
    if (have < n) {
        if (type[0] != '\0' && have == 0)
            return sl_err_set(e, 400, "field '%s.gpu': this runner has no GPU of type '%s'", field,
                              type);
        return sl_err_set(e, 400, "field '%s.gpu': %llu asked, this runner has %zu%s%s", field, n,
                          have, type[0] ? " of type " : "", type);
    }
    free(b->gpu_type);
    b->gpu_type = strdup(type);
    if (b->gpu_type == NULL)
        return sl_err_set(e, 500, "out of memory");
    b->gpu_want = (unsigned)n;
    b->has_resources = 1;
    return 0;
}

int sl_gpu_claim(sl_box *b, sl_err *e)
{
    sl_runner *rt = b->rt;
    const char *type = b->gpu_type != NULL ? b->gpu_type : "";

    if (b->gpu_want == 0 || b->gpu_held)
        return 0;
    size_t avail = count_free(rt, type);
    if (avail < b->gpu_want) {
        sl_err_set(e, 503,
                   "no free GPU: %u asked, %zu of %zu%s%s free (each is held by one sandbox "
                   "until it ends); terminate one or try again later",
                   b->gpu_want, avail, count_type(rt, type), type[0] ? " of type " : "", type);
        /* Not "unavailable": the runner is up, the request does not fit
         * now (sandlot.PlacementError, as on a cluster). */
        e->code = "unschedulable";
        return -1;
    }
    unsigned left = b->gpu_want;
    for (size_t i = 0; i < rt->ngpus && left > 0; i++) {
        sl_gpu *g = &rt->gpus[i];
        if (g->owner[0] == '\0' && (type[0] == '\0' || strcmp(g->type, type) == 0)) {
            snprintf(g->owner, sizeof(g->owner), "%s", b->id);
            left--;
        }
    }
    b->gpu_held = 1;
    return 0;
}

void sl_gpu_release(sl_box *b)
{
    if (!b->gpu_held)
        return;
    for (size_t i = 0; i < b->rt->ngpus; i++)
        if (strcmp(b->rt->gpus[i].owner, b->id) == 0)
            b->rt->gpus[i].owner[0] = '\0';
    b->gpu_held = 0;
}

size_t sl_gpu_nbinds(const sl_box *b)
{
    if (!b->gpu_held)
        return 0;
    return b->gpu_want + sizeof(shared_nodes) / sizeof(shared_nodes[0]);
}

size_t sl_gpu_binds(const sl_box *b, sl_bind *out)
{
    size_t n = 0;

    if (!b->gpu_held)
        return 0;
    for (size_t i = 0; i < b->rt->ngpus; i++) {
        if (strcmp(b->rt->gpus[i].owner, b->id) == 0) {
            out[n].host_path = b->rt->gpus[i].path;
            out[n].sandbox_path = b->rt->gpus[i].path;
            out[n].readonly = 1; /* the node, not the device: data still flows */
            out[n].device = 1;
            n++;
        }
    }
    for (size_t i = 0; i < sizeof(shared_nodes) / sizeof(shared_nodes[0]); i++) {
        if (is_chr(shared_nodes[i])) {
            out[n].host_path = shared_nodes[i];
            out[n].sandbox_path = shared_nodes[i];
            out[n].readonly = 1;
            out[n].device = 1;
            n++;
        }
    }
    return n;
}

void sl_gpu_pack_box(sl_resp *r, const sl_box *b)
{
    if (b->gpu_type != NULL && b->gpu_type[0] != '\0') {
        char s[GPU_TYPE_MAX + 16];

        snprintf(s, sizeof(s), "%s:%u", b->gpu_type, b->gpu_want);
        sl_r_kstr(r, "gpu", s);
    } else {
        sl_r_kint(r, "gpu", (int64_t)b->gpu_want);
    }
}

void sl_gpu_pack_health(sl_resp *r, const sl_runner *rt)
{
    size_t ntypes = 0;
    const char *types[GPU_MAX];

    for (size_t i = 0; i < rt->ngpus; i++) {
        size_t j = 0;
        while (j < ntypes && strcmp(types[j], rt->gpus[i].type) != 0)
            j++;
        if (j == ntypes && rt->gpus[i].type[0] != '\0')
            types[ntypes++] = rt->gpus[i].type;
    }
    sl_r_map(r, 3);
    sl_r_kint(r, "total", (int64_t)rt->ngpus);
    sl_r_kint(r, "free", (int64_t)count_free(rt, ""));
    sl_r_str(r, "types");
    sl_r_arr(r, ntypes);
    for (size_t i = 0; i < ntypes; i++)
        sl_r_str(r, types[i]);
}
