/* oci_pull.c - one image pull, run in a child of the runner (oci_api.c forks
 * it), so the event loop keeps serving while it downloads and unpacks.
 *
 * manifest (an index picks the platform's manifest) -> config (diff_ids,
 * Env/WorkingDir/User/Entrypoint/Cmd) -> per layer, bottom up: chainID;
 * snapshot sn-<chainID[:16]> already there: cached; else download the blob
 * (resumable, digest-checked), unpack it into <snapshots>/.tmp-oci-* checking
 * the diff_id, build the erofs image, write the meta and rename into place
 * (a concurrent pull that got there first wins; ours is dropped) -> the alias
 * image <images>/<name>. A failure leaves only what is complete: finished
 * layer snapshots (content-addressed, valid) and resumable .partial blobs.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "oci_int.h"
#include "sl_log.h"
#include "sl_sandbox.h"
#include "snap_int.h"

typedef struct ctx {
    const sl_oci_args *a;
    int fd;
    oci_client cl;
    int layer; /* index for progress */
    char err[1024];
    int code;
} ctx;

static void say(ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(ctx *c, const char *fmt, ...)
{
    char line[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof(line) - 2)
        n = (int)sizeof(line) - 2;
    for (int i = 0; i < n; i++)
        if (line[i] == '\n')
            line[i] = ' ';
    line[n++] = '\n';
    /* one write: lines under PIPE_BUF arrive whole */
    ssize_t w = write(c->fd, line, (size_t)n);
    (void)w;
}

static int fail(ctx *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(ctx *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof(c->err), fmt, ap);
    va_end(ap);
    c->code = code;
    return -1;
}

static void on_progress(void *arg, unsigned long long done)
{
    ctx *c = arg;
    say(c, "P %d %llu", c->layer, done);
}

static void host_platform(char *out, size_t n)
{
    struct utsname u;
    const char *arch = "amd64";
    if (uname(&u) == 0) {
        if (strcmp(u.machine, "aarch64") == 0)
            arch = "arm64";
        else if (strcmp(u.machine, "x86_64") != 0)
            arch = u.machine;
    }
    snprintf(out, n, "linux/%s", arch);
}

static const char *jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* From an index, the digest of the manifest for platform ("os/arch[/variant]"). */
static const char *pick(ctx *c, json_t *index, const char *platform)
{
    char os[32] = "", arch[32] = "", variant[32] = "";
    sscanf(platform, "%31[^/]/%31[^/]/%31s", os, arch, variant);
    json_t *ms = json_object_get(index, "manifests"), *m;
    size_t i;
    char seen[600] = "";
    json_array_foreach(ms, i, m)
    {
        json_t *p = json_object_get(m, "platform");
        const char *mo = jstr(p, "os"), *ma = jstr(p, "architecture"), *mv = jstr(p, "variant");
        if (mo && ma && strlen(seen) < sizeof(seen) - 80)
            snprintf(seen + strlen(seen), sizeof(seen) - strlen(seen), "%s%s/%s%s%s",
                     seen[0] ? ", " : "", mo, ma, mv ? "/" : "", mv ? mv : "");
        if (mo && ma && strcmp(mo, os) == 0 && strcmp(ma, arch) == 0 &&
            (variant[0] == '\0' || (mv && strcmp(mv, variant) == 0)))
            return jstr(m, "digest");
    }
    fail(c, 404, "image %s has no manifest for platform %s (it has: %s)", c->a->ref, platform,
         seen[0] ? seen : "none");
    return NULL;
}

/* Fetch and parse the image manifest (through an index if need be). */
static json_t *get_manifest(ctx *c, char *digest_out)
{
    oci_client *cl = &c->cl;
    const char *want = cl->ref.digest ? cl->ref.digest : cl->ref.tag;
    char *buf = NULL;
    size_t len = 0;
    long st = 0;
    char platform[100];
    if (c->a->platform)
        snprintf(platform, sizeof(platform), "%s", c->a->platform);
    else
        host_platform(platform, sizeof(platform));
    for (int depth = 0; depth < 2; depth++) {
        if (oci_get_manifest(cl, want, &buf, &len, &st, c->err, sizeof(c->err)) < 0) {
            c->code = (int)st;
            return NULL;
        }
        if (st == 404) {
            free(buf);
            return fail(c, 404, "%s: %s not found in %s/%s (missing tag or digest)", c->a->ref,
                        want, cl->ref.host, cl->ref.repo),
                   NULL;
        }
        if (st == 401 || st == 403) {
            free(buf);
            return fail(c, 401, "%s: the registry refused access (HTTP %ld); check credentials",
                        c->a->ref, st),
                   NULL;
        }
        if (st != 200) {
            free(buf);
            return fail(c, 502, "%s: manifest request got HTTP %ld", c->a->ref, st), NULL;
        }
        char d[72];
        oci_sha256_str(buf, len, d);
        if (strncmp(want, "sha256:", 7) == 0 && strcmp(d, want) != 0) {
            free(buf);
            return fail(c, 422, "%s: manifest has digest %s, not %s (wrong digest); refused",
                        c->a->ref, d, want),
                   NULL;
        }
        json_error_t je;
        json_t *j = json_loadb(buf, len, 0, &je);
        free(buf);
        if (j == NULL || !json_is_object(j))
            return json_decref(j), fail(c, 502, "%s: manifest is not JSON", c->a->ref), NULL;
        json_t *sv = json_object_get(j, "schemaVersion");
        if (json_integer_value(sv) != 2) {
            json_decref(j);
            return fail(c, 422, "%s: manifest schema %lld is not supported (need schema 2/OCI)",
                        c->a->ref, (long long)json_integer_value(sv)),
                   NULL;
        }
        if (json_is_array(json_object_get(j, "manifests"))) {
            const char *pd = pick(c, j, platform);
            if (pd == NULL || !oci_digest_valid(pd)) {
                json_decref(j);
                if (pd != NULL)
                    fail(c, 502, "%s: index entry has a bad digest", c->a->ref);
                return NULL;
            }
            static char chosen[72];
            snprintf(chosen, sizeof(chosen), "%s", pd);
            want = chosen;
            json_decref(j);
            continue;
        }
        strcpy(digest_out, d);
        return j;
    }
    return fail(c, 502, "%s: an index points to another index", c->a->ref), NULL;
}

static void hex_of(const unsigned char d[32], char out[72])
{
    strcpy(out, "sha256:");
    for (int i = 0; i < 32; i++)
        sprintf(out + 7 + 2 * i, "%02x", d[i]);
}

static int run_mkfs(ctx *c, const char *img, const char *src)
{
    char *argv[SL_EROFS_ARGV];
    sl_erofs_mkfs_argv(argv, img, src);
    pid_t pid = fork();
    if (pid < 0)
        return fail(c, 500, "fork: %s", strerror(errno));
    if (pid == 0) {
        int nul = open("/dev/null", O_RDWR);
        if (nul >= 0) {
            dup2(nul, 0);
            dup2(nul, 1);
        }
        execvp(argv[0], argv);
        _exit(127);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        return fail(c, 500, "mkfs.erofs failed on a layer (status %d)", st);
    return 0;
}

static int write_file(const char *path, const char *data);

/* One layer: into snapshot id sn (parent: the one below, or NULL). */
static int do_layer(ctx *c, json_t *desc, const char *diffid, const char *sn, const char *parent,
                    unsigned long long *budget)
{
    const sl_oci_args *a = c->a;
    const char *digest = jstr(desc, "digest"), *mt = jstr(desc, "mediaType");
    json_int_t size = json_integer_value(json_object_get(desc, "size"));
    if (!oci_digest_valid(digest) || size < 0)
        return fail(c, 502, "%s: layer %d has a bad descriptor", a->ref, c->layer);
    if (mt != NULL && strstr(mt, "tar") == NULL)
        return fail(c, 422, "%s: layer %d has media type %s, not a tar layer", a->ref, c->layer,
                    mt);
    if (mt != NULL && strstr(mt, "foreign") != NULL)
        return fail(c, 422, "%s: layer %d is a foreign layer (%s): not distributable; refused",
                    a->ref, c->layer, mt);
    char *blobdir = NULL, *blob = NULL, *snaps = NULL, *final = NULL, *tmp = NULL, *layer = NULL,
         *img = NULL, *meta = NULL, *mnt = NULL;
    char rnd[17];
    int rc = -1;
    if (asprintf(&blobdir, "%s/oci/blobs", a->state_dir) < 0 ||
        asprintf(&blob, "%s/%s.partial", blobdir, digest + 7) < 0 ||
        asprintf(&snaps, "%s/snapshots", a->state_dir) < 0 ||
        asprintf(&final, "%s/%s", snaps, sn) < 0 || sl_random_hex(rnd, 16) < 0 ||
        asprintf(&tmp, "%s/.tmp-oci-%s", snaps, rnd) < 0 || asprintf(&layer, "%s/layer", tmp) < 0 ||
        asprintf(&img, "%s/layer.erofs", tmp) < 0 || asprintf(&meta, "%s/meta", tmp) < 0 ||
        asprintf(&mnt, "%s/mnt", tmp) < 0) {
        fail(c, 500, "out of memory");
        goto out;
    }
    say(c, "L %d %s %lld", c->layer, digest, (long long)size);
    double t0 = sl_mono(), t_un = 0;
    if (oci_get_blob_file(&c->cl, digest, (unsigned long long)size, blob, on_progress, c, c->err,
                          sizeof(c->err)) < 0) {
        c->code = strstr(c->err, "refused") ? 422 : strstr(c->err, "sent nothing") ? 504 : 502;
        goto out;
    }
    double t_dl = sl_mono();
    say(c, "U %d", c->layer);
    if (mkdir(tmp, 0700) < 0 || mkdir(layer, 0755) < 0) {
        fail(c, 500, "mkdir %s: %s", tmp, strerror(errno));
        goto out;
    }
    int bfd = open(blob, O_RDONLY | O_CLOEXEC);
    if (bfd < 0) {
        fail(c, 500, "open %s: %s", blob, strerror(errno));
        goto out;
    }
    unsigned char d[32];
    unsigned long long bytes = 0;
    char why[600];
    int u = sl_oci_untar(bfd, layer, *budget, d, &bytes, why, sizeof(why));
    close(bfd);
    if (u < 0) {
        fail(c, 422, "%s: layer %s: %s", a->ref, digest, why);
        unlink(blob); /* its content is what is wrong: do not resume from it */
        goto out;
    }
    *budget -= bytes;
    char got[72];
    hex_of(d, got);
    if (strcmp(got, diffid) != 0) {
        fail(c, 422, "%s: layer %s unpacks to %s but the config says %s (corrupt); refused", a->ref,
             digest, got, diffid);
        unlink(blob);
        goto out;
    }
    const char *storage = "dir";
    if (a->erofs) {
        t_un = sl_mono();
        if (run_mkfs(c, img, layer) < 0)
            goto out;
        if (sl_rm_rf(layer) < 0 || mkdir(mnt, 0700) < 0) {
            fail(c, 500, "removing %s / making mnt: %s", layer, strerror(errno));
            goto out;
        }
        storage = "erofs";
    }
    char *scratch = NULL;
    if (asprintf(&scratch, "dir:%s/oci/scratch", a->state_dir) < 0) {
        fail(c, 500, "out of memory");
        goto out;
    }
    snap_meta m = {0};
    m.id = (char *)sn;
    m.kind = "filesystem";
    m.image = scratch;
    m.parent = (char *)parent;
    m.label = "oci-layer";
    m.storage = (char *)storage;
    m.created_at = sl_now();
    m.capture_seconds = sl_mono() - t0;
    int wr = sl__snap_write_meta(meta, &m);
    if (wr == 0) {
        /* what `sandlot image du` reports for a directory layer (walking it
         * on the runner's loop would stall it) */
        char *szf = NULL, num[32];
        snprintf(num, sizeof(num), "%llu\n", bytes);
        if (asprintf(&szf, "%s/size", tmp) < 0 || write_file(szf, num) < 0)
            wr = -ENOMEM;
        free(szf);
    }
    free(scratch);
    if (wr < 0) {
        fail(c, 500, "writing %s: %s", meta, strerror(-wr));
        goto out;
    }
    if (rename(tmp, final) < 0) {
        if (errno != EEXIST && errno != ENOTEMPTY) {
            fail(c, 500, "rename to %s: %s", final, strerror(errno));
            goto out;
        }
        /* another pull stored the same chain meanwhile: same content */
    } else {
        free(tmp);
        tmp = NULL;
    }
    unlink(blob);
    say(c, "D %d %llu", c->layer, bytes);
    double t_end = sl_mono();
    if (t_un == 0)
        t_un = t_end;
    say(c,
        "I layer %d %.19s: %lld bytes -> %llu unpacked: download %.2f s, unpack %.2f s, "
        "store %.2f s",
        c->layer, digest, (long long)size, bytes, t_dl - t0, t_un - t_dl, t_end - t_un);
    rc = 0;
out:
    if (tmp != NULL)
        sl_rm_rf(tmp);
    free(blobdir);
    free(blob);
    free(snaps);
    free(final);
    free(tmp);
    free(layer);
    free(img);
    free(meta);
    free(mnt);
    return rc;
}

static int write_file(const char *path, const char *data)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    size_t n = strlen(data);
    ssize_t w = write(fd, data, n);
    int rc = (w == (ssize_t)n && close(fd) == 0) ? 0 : -1;
    if (w != (ssize_t)n)
        close(fd);
    return rc;
}

/* <images>/<name>/{snapshot,oci.json}, replacing an older pull of the name. */
static int write_alias(ctx *c, const char *top, const char *info)
{
    const sl_oci_args *a = c->a;
    char *dir = NULL, *tmp = NULL, *f1 = NULL, *f2 = NULL, *old = NULL, *probe = NULL;
    char rnd[17];
    int rc = -1;
    if (sl_random_hex(rnd, 16) < 0 || asprintf(&dir, "%s/%s", a->images_dir, a->name) < 0 ||
        asprintf(&tmp, "%s/.tmp-%s-%s", a->images_dir, a->name, rnd) < 0 ||
        asprintf(&old, "%s/.trash-%s-%s", a->images_dir, a->name, rnd) < 0 ||
        asprintf(&f1, "%s/snapshot", tmp) < 0 || asprintf(&f2, "%s/oci.json", tmp) < 0 ||
        asprintf(&probe, "%s/oci.json", dir) < 0) {
        fail(c, 500, "out of memory");
        goto out;
    }
    struct stat st;
    int exists = stat(dir, &st) == 0;
    if (exists && stat(probe, &st) < 0) {
        fail(c, 409, "image name '%s' is taken by an image that was not pulled; delete it first",
             a->name);
        goto out;
    }
    char line[40];
    snprintf(line, sizeof(line), "%s\n", top);
    if (mkdir(tmp, 0700) < 0 || write_file(f1, line) < 0 || write_file(f2, info) < 0) {
        fail(c, 500, "writing %s: %s", tmp, strerror(errno));
        goto out;
    }
    if (exists && rename(dir, old) < 0) {
        fail(c, 500, "rename %s: %s", dir, strerror(errno));
        goto out;
    }
    if (rename(tmp, dir) < 0) {
        fail(c, 500, "rename %s: %s", tmp, strerror(errno));
        goto out;
    }
    free(tmp);
    tmp = NULL;
    if (exists)
        sl_rm_rf(old);
    rc = 0;
out:
    if (tmp != NULL)
        sl_rm_rf(tmp);
    free(dir);
    free(tmp);
    free(f1);
    free(f2);
    free(old);
    free(probe);
    return rc;
}

static int pull(ctx *c)
{
    const sl_oci_args *a = c->a;
    char mdigest[72];
    json_t *man = get_manifest(c, mdigest);
    if (man == NULL)
        return -1;
    int rc = -1;
    json_t *cfg = NULL;
    char *cbuf = NULL, *info = NULL, *parent = NULL;
    json_t *cdesc = json_object_get(man, "config"), *layers = json_object_get(man, "layers");
    const char *cdig = jstr(cdesc, "digest");
    if (!oci_digest_valid(cdig) || !json_is_array(layers)) {
        fail(c, 502, "%s: manifest has no config or layers", a->ref);
        goto out;
    }
    size_t clen = 0;
    if (oci_get_blob_mem(&c->cl, cdig, SL_OCI_META_MAX, &cbuf, &clen, c->err, sizeof(c->err)) < 0) {
        c->code = strstr(c->err, "refused") ? 422 : 502;
        goto out;
    }
    json_error_t je;
    cfg = json_loadb(cbuf, clen, 0, &je);
    json_t *diffs = json_object_get(json_object_get(cfg, "rootfs"), "diff_ids");
    size_t n = json_array_size(layers);
    if (!json_is_array(diffs) || json_array_size(diffs) != n) {
        fail(c, 422, "%s: config's rootfs.diff_ids does not match the %zu layers", a->ref, n);
        goto out;
    }
    if (n == 0) {
        fail(c, 422, "%s: image has no layers", a->ref);
        goto out;
    }
    say(c, "N %zu", n);
    unsigned long long budget = a->max_bytes, total = 0;
    unsigned char chain[32];
    char chainhex[72], sn[SNAP_ID_LEN + 1];
    for (size_t i = 0; i < n; i++) {
        const char *diffid = json_string_value(json_array_get(diffs, i));
        if (!oci_digest_valid(diffid)) {
            fail(c, 422, "%s: bad diff_id %zu in the config", a->ref, i);
            goto out;
        }
        /* chainID(i) = diff_id(0) | sha256(chainID(i-1) + " " + diff_id(i)) */
        if (i == 0) {
            snprintf(chainhex, sizeof(chainhex), "%s", diffid);
        } else {
            char buf[160];
            int k = snprintf(buf, sizeof(buf), "%s %s", chainhex, diffid);
            unsigned dl = 0;
            EVP_Digest(buf, (size_t)k, chain, &dl, EVP_sha256(), NULL);
            hex_of(chain, chainhex);
        }
        snprintf(sn, sizeof(sn), "sn-%.16s", chainhex + 7);
        c->layer = (int)i;
        char *m = NULL;
        struct stat st;
        if (asprintf(&m, "%s/snapshots/%s/meta", a->state_dir, sn) < 0) {
            fail(c, 500, "out of memory");
            goto out;
        }
        int have = stat(m, &st) == 0;
        free(m);
        json_t *desc = json_array_get(layers, i);
        if (have) {
            say(c, "C %zu %s %lld", i, jstr(desc, "digest") ? jstr(desc, "digest") : "?",
                (long long)json_integer_value(json_object_get(desc, "size")));
        } else if (do_layer(c, desc, diffid, sn, parent, &budget) < 0) {
            goto out;
        }
        total += (unsigned long long)json_integer_value(json_object_get(desc, "size"));
        free(parent);
        if ((parent = strdup(sn)) == NULL) {
            fail(c, 500, "out of memory");
            goto out;
        }
    }
    json_t *conf = json_object_get(cfg, "config");
    json_t *confo = json_is_object(conf) ? json_incref(conf) : json_object();
    json_t *res = json_pack("{s:s, s:s, s:s, s:s, s:o, s:I, s:I}", "snapshot_id", parent, "digest",
                            mdigest, "ref", a->ref, "name", a->name, "config", confo, "layers",
                            (json_int_t)n, "compressed_size", (json_int_t)total);
    info = res ? json_dumps(res, JSON_COMPACT) : NULL;
    json_decref(res);
    if (info == NULL) {
        fail(c, 500, "out of memory");
        goto out;
    }
    if (write_alias(c, parent, info) < 0)
        goto out;
    say(c, "R %s", info);
    rc = 0;
out:
    json_decref(man);
    json_decref(cfg);
    free(cbuf);
    free(info);
    free(parent);
    return rc;
}

int sl_oci_pull_main(const sl_oci_args *a, int fd)
{
    ctx c = {.a = a, .fd = fd, .code = 500};
    char *blobs = NULL, *scratch = NULL;
    int rc = 1;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
        say(&c, "E 500 curl_global_init failed");
        return 1;
    }
    if (asprintf(&blobs, "%s/oci/blobs", a->state_dir) < 0 ||
        asprintf(&scratch, "%s/oci/scratch", a->state_dir) < 0) {
        say(&c, "E 500 out of memory");
        goto out;
    }
    if (sl_mkdir_p(blobs, 0700) < 0 || sl_mkdir_p(scratch, 0755) < 0) {
        say(&c, "E 500 cannot make %s: %s", blobs, strerror(errno));
        goto out;
    }
    if (oci_client_init(&c.cl, a, c.err, sizeof(c.err)) < 0) {
        say(&c, "E 400 %s", c.err);
        goto out;
    }
    if (pull(&c) < 0)
        say(&c, "E %d %s", c.code ? c.code : 500, c.err[0] ? c.err : "pull failed");
    else
        rc = 0;
    oci_client_free(&c.cl);
out:
    free(blobs);
    free(scratch);
    return rc;
}
