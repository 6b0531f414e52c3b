/* oci_api.c - image pulls as the API sees them (docs/protocol.md).
 *
 * POST /v1/images/pull {"ref", "username"?, "password"?, "platform"?,
 * "insecure"?, "max_bytes"?, "stall_timeout"?} starts a pull in a forked
 * child (oci_pull.c) and answers at once with {"pull": state}; a request for
 * a reference (and platform and user) already being pulled joins that pull
 * instead of starting another. GET /v1/images/pulls/{id} returns the state:
 * per-layer bytes from the child's progress lines, and at the end the result
 * or a structured error. Credentials live only in the child's memory.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <dirent.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sl_log.h"
#include "sl_oci.h"

#define MAX_LAYERS 256
#define KEEP_DONE 600.0 /* seconds a finished pull stays readable */

enum { P_RUNNING = 0, P_DONE, P_FAILED };
enum { L_WAIT = 0, L_DOWNLOAD, L_UNPACK, L_DONE, L_CACHED };
static const char *phase_name[] = {"waiting", "downloading", "unpacking", "done", "cached"};

typedef struct pull_layer {
    char digest[72];
    long long size, done;
    int phase;
} pull_layer;

typedef struct sl_pull {
    char id[20];
    char *ref, *key;
    char name[64];
    int state;
    pid_t pid;
    int fd;
    struct event *ev;
    char line[8192];
    size_t linelen;
    int nlayers;
    pull_layer layers[MAX_LAYERS];
    char *result; /* JSON from the child */
    int err_status;
    char *error;
    double started, finished;
    sl_oci_args args; /* for the child; strings freed after the fork */
    char *user, *pass, *platform;
    struct sl_pull *next;
} sl_pull;

static sl_pull *pulls;

static void wipe_free(char *s)
{
    if (s != NULL) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

static void pull_free(sl_pull *p)
{
    if (p->ev != NULL)
        event_free(p->ev);
    if (p->fd >= 0)
        close(p->fd);
    free(p->ref);
    free(p->key);
    free(p->result);
    free(p->error);
    wipe_free(p->user);
    wipe_free(p->pass);
    free(p->platform);
    free(p);
}

static void on_line(sl_pull *p, char *l)
{
    int i = 0;
    long long v = 0;
    char dig[72];
    switch (l[0]) {
    case 'L':
    case 'C':
        if (sscanf(l + 2, "%d %71s %lld", &i, dig, &v) == 3 && i >= 0 && i < MAX_LAYERS) {
            snprintf(p->layers[i].digest, sizeof(p->layers[i].digest), "%s", dig);
            p->layers[i].size = v;
            p->layers[i].phase = l[0] == 'C' ? L_CACHED : L_DOWNLOAD;
            if (l[0] == 'C')
                p->layers[i].done = v;
        }
        break;
    case 'N':
        if (sscanf(l + 2, "%d", &i) == 1)
            p->nlayers = i < MAX_LAYERS ? i : MAX_LAYERS;
        break;
    case 'P':
        if (sscanf(l + 2, "%d %lld", &i, &v) == 2 && i >= 0 && i < MAX_LAYERS)
            p->layers[i].done = v;
        break;
    case 'U':
        if (sscanf(l + 2, "%d", &i) == 1 && i >= 0 && i < MAX_LAYERS)
            p->layers[i].phase = L_UNPACK;
        break;
    case 'D':
        if (sscanf(l + 2, "%d", &i) == 1 && i >= 0 && i < MAX_LAYERS)
            p->layers[i].phase = L_DONE;
        break;
    case 'I': /* the child's own log lines (its log fd is closed) */
        sl_info("pull %s of %s: %s", p->id, p->ref, l + 2);
        break;
    case 'R':
        free(p->result);
        p->result = strdup(l + 2);
        break;
    case 'E': {
        char *sp = NULL;
        long st = strtol(l + 2, &sp, 10);
        free(p->error);
        p->error = strdup(sp && *sp == ' ' ? sp + 1 : "pull failed");
        p->err_status = st >= 400 && st < 600 ? (int)st : 500;
        break;
    }
    default:
        break;
    }
}

static void drain(sl_pull *p)
{
    for (;;) {
        ssize_t n = read(p->fd, p->line + p->linelen, sizeof(p->line) - 1 - p->linelen);
        if (n <= 0)
            return;
        p->linelen += (size_t)n;
        p->line[p->linelen] = '\0';
        char *start = p->line, *nl;
        while ((nl = strchr(start, '\n')) != NULL) {
            *nl = '\0';
            on_line(p, start);
            start = nl + 1;
        }
        size_t rest = p->linelen - (size_t)(start - p->line);
        memmove(p->line, start, rest);
        p->linelen = rest;
        if (p->linelen == sizeof(p->line) - 1)
            p->linelen = 0; /* an overlong line: dropped */
    }
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    drain(arg);
}

static void on_exit_cb(sl_runner *rt, void *arg, int status, const char *err)
{
    (void)rt;
    (void)err;
    sl_pull *p = arg;
    drain(p);
    if (p->ev != NULL) {
        event_free(p->ev);
        p->ev = NULL;
    }
    close(p->fd);
    p->fd = -1;
    p->finished = sl_now();
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && p->result != NULL) {
        p->state = P_DONE;
        sl_info("pull %s of %s done", p->id, p->ref);
    } else {
        p->state = P_FAILED;
        if (p->error == NULL) {
            p->err_status = 500;
            p->error = NULL;
            if (asprintf(&p->error, "pull of %s: the pull process ended (status %d)", p->ref,
                         status) < 0)
                p->error = NULL;
        }
        sl_warn("pull %s of %s failed: %s", p->id, p->ref, p->error ? p->error : "?");
    }
}

static int child_main(void *arg)
{
    sl_pull *p = arg;
    return sl_oci_pull_main(&p->args, 3);
}

static void pack(sl_resp *r, const sl_pull *p, int joined)
{
    sl_r_map(r, 1);
    sl_r_str(r, "pull");
    sl_r_map(r, 9);
    sl_r_kstr(r, "pull_id", p->id);
    sl_r_kstr(r, "ref", p->ref);
    sl_r_kstr(r, "name", p->name);
    sl_r_kstr(r, "state",
              p->state == P_RUNNING ? "running"
              : p->state == P_DONE  ? "done"
                                    : "failed");
    sl_r_kbool(r, "joined", joined);
    sl_r_kstr(r, "result", p->result);
    sl_r_kstr(r, "error", p->state == P_FAILED ? p->error : NULL);
    sl_r_kint(r, "error_status", p->state == P_FAILED ? p->err_status : 0);
    sl_r_str(r, "layers");
    int n = p->nlayers;
    sl_r_arr(r, (size_t)n);
    for (int i = 0; i < n; i++) {
        const pull_layer *l = &p->layers[i];
        sl_r_map(r, 4);
        sl_r_kstr(r, "digest", l->digest[0] ? l->digest : NULL);
        sl_r_kint(r, "size", l->size);
        sl_r_kint(r, "done", l->done);
        sl_r_kstr(r, "phase", phase_name[l->phase]);
    }
}

static void reap_old(void)
{
    double now = sl_now();
    for (sl_pull **pp = &pulls; *pp != NULL;) {
        sl_pull *p = *pp;
        if (p->state != P_RUNNING && now - p->finished > KEEP_DONE) {
            *pp = p->next;
            pull_free(p);
        } else {
            pp = &p->next;
        }
    }
}

void sl_h_image_pull(sl_req *r)
{
    sl_runner *rt = r->rt;
    sl_err e;
    char *ref = NULL, *user = NULL, *pass = NULL, *platform = NULL, *storage = NULL;
    int insecure = 0;
    double max_bytes = 0, stall = 0;
    sl_pull *p = NULL;
    if (sl_msg_str(r->body, "ref", SL_REQ, &ref, &e) < 0 ||
        sl_msg_str(r->body, "username", 0, &user, &e) < 0 ||
        sl_msg_str(r->body, "password", 0, &pass, &e) < 0 ||
        sl_msg_str(r->body, "platform", 0, &platform, &e) < 0 ||
        sl_msg_str(r->body, "storage", 0, &storage, &e) < 0 ||
        sl_msg_bool(r->body, "insecure", 0, &insecure, &e) < 0 ||
        sl_msg_num(r->body, "max_bytes", (double)rt->pull_max_bytes, (double)rt->pull_max_bytes,
                   &max_bytes, &e) < 0 ||
        sl_msg_num(r->body, "stall_timeout", SL_OCI_STALL_DEFAULT, SL_OCI_STALL_DEFAULT, &stall,
                   &e) < 0) {
        sl_reply_err(r, &e);
        goto out;
    }
    sl_oci_ref pr;
    char why[400];
    if (sl_oci_ref_parse(ref, &pr, why, sizeof(why)) < 0) {
        sl_reply_error(r, 400, "%s", why);
        goto out;
    }
    sl_oci_ref_free(&pr);
    if (platform != NULL && (strncmp(platform, "linux/", 6) != 0 || strlen(platform) > 60)) {
        sl_reply_error(r, 400, "platform must look like linux/amd64 or linux/arm64/v8");
        goto out;
    }
    if (max_bytes < 1 || stall <= 0 || stall > 3600) {
        sl_reply_error(r, 400, "max_bytes must be >= 1 and stall_timeout in (0, 3600]");
        goto out;
    }
    if (max_bytes > (double)rt->pull_max_bytes) {
        /* the operator's limit (--pull-max-bytes) is a ceiling, not a default */
        sl_reply_error(r, 400,
                       "max_bytes %.0f is over this runner's limit of %llu (--pull-max-bytes)",
                       max_bytes, rt->pull_max_bytes);
        goto out;
    }
    /* Layers are directories unless asked: unpacking straight into the
     * layer dir skips mkfs.erofs and removing the unpacked tree, which cost
     * as much again as the unpack for layers of many small files
     * (bench/RESULTS.md). "erofs" where the runner can mount images. */
    int erofs = storage != NULL && strcmp(storage, "erofs") == 0;
    if (storage != NULL && !erofs && strcmp(storage, "dir") != 0) {
        sl_reply_error(r, 400, "storage must be \"dir\" or \"erofs\"");
        goto out;
    }
    if (erofs && rt->snap_storage != SL_SNAP_STORAGE_EROFS) {
        sl_reply_error(r, 400, "storage \"erofs\": this runner cannot mount erofs images");
        goto out;
    }
    if (user != NULL && pass == NULL) {
        sl_reply_error(r, 400, "username given without password");
        goto out;
    }
    char *key = NULL;
    if (asprintf(&key, "%s|%s|%s|%d", ref, platform ? platform : "", user ? user : "", insecure) <
        0) {
        sl_reply_error(r, 500, "out of memory");
        goto out;
    }
    reap_old();
    for (sl_pull *q = pulls; q != NULL; q = q->next) {
        if (q->state == P_RUNNING && strcmp(q->key, key) == 0) {
            /* the same image is being pulled: join it */
            free(key);
            sl_resp resp;
            sl_resp_init(&resp);
            pack(&resp, q, 1);
            sl_reply(r, 200, &resp);
            goto out;
        }
    }
    p = calloc(1, sizeof(*p));
    int fds[2] = {-1, -1};
    if (p == NULL || pipe2(fds, O_CLOEXEC) < 0) {
        free(key);
        free(p);
        p = NULL;
        sl_reply_error(r, 500, "cannot start a pull: %s", strerror(errno));
        goto out;
    }
    p->fd = fds[0];
    p->key = key;
    p->ref = ref;
    ref = NULL;
    p->user = user;
    p->pass = pass;
    p->platform = platform;
    user = pass = platform = NULL;
    strcpy(p->id, "pl-");
    if (sl_random_hex(p->id + 3, 16) < 0) {
        close(fds[1]);
        pull_free(p);
        p = NULL;
        sl_reply_error(r, 500, "no randomness for a pull id");
        goto out;
    }
    sl_oci_ref_name(p->ref, p->name);
    p->started = sl_now();
    p->args = (sl_oci_args){
        .ref = p->ref,
        .username = p->user,
        .password = p->pass,
        .platform = p->platform,
        .insecure = insecure,
        .max_bytes = (unsigned long long)max_bytes,
        .stall = stall,
        .state_dir = rt->state_dir,
        .images_dir = rt->images_dir,
        .erofs = erofs,
        .name = p->name,
    };
    int fl = fcntl(p->fd, F_GETFL);
    if (fl < 0 || fcntl(p->fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
        (p->ev = event_new(rt->base, p->fd, EV_READ | EV_PERSIST, on_readable, p)) == NULL ||
        event_add(p->ev, NULL) != 0) {
        close(fds[1]);
        pull_free(p);
        p = NULL;
        sl_reply_error(r, 500, "cannot watch the pull's pipe");
        goto out;
    }
    p->pid = sl_job_fork(rt, fds[1], child_main, p, on_exit_cb, p);
    close(fds[1]);
    /* The child has its copy: drop the credentials from the runner. */
    wipe_free(p->user);
    wipe_free(p->pass);
    p->user = p->pass = NULL;
    p->args.username = p->args.password = NULL;
    if (p->pid < 0) {
        pull_free(p);
        p = NULL;
        sl_reply_error(r, 500, "cannot fork a pull: %s", strerror(errno));
        goto out;
    }
    p->next = pulls;
    pulls = p;
    sl_info("pull %s of %s started (pid %d)", p->id, p->ref, (int)p->pid);
    sl_resp resp;
    sl_resp_init(&resp);
    pack(&resp, p, 0);
    sl_reply(r, 200, &resp);
out:
    free(ref);
    wipe_free(user);
    wipe_free(pass);
    free(platform);
    free(storage);
}

void sl_h_image_pull_get(sl_req *r)
{
    for (sl_pull *p = pulls; p != NULL; p = p->next) {
        if (strcmp(p->id, r->p[0]) == 0) {
            sl_resp resp;
            sl_resp_init(&resp);
            pack(&resp, p, 0);
            sl_reply(r, 200, &resp);
            return;
        }
    }
    sl_reply_error(r, 404, "pull '%.40s' not found (finished pulls are kept %.0f s)", r->p[0],
                   KEEP_DONE);
}

void sl_oci_shutdown(sl_runner *rt)
{
    (void)rt;
    /* after sl_jobs_shutdown: no child is left to report */
    while (pulls != NULL) {
        sl_pull *p = pulls;
        pulls = p->next;
        pull_free(p);
    }
}

static char *read_small(const char *path, size_t max, size_t *len);

/* Bytes a snapshot's layer takes on disk (its erofs image, or for a directory
 * layer the unpacked size the pull recorded: walking it would stall the loop). */
static long long layer_bytes(sl_runner *rt, const char *sn)
{
    char *p = NULL;
    struct stat st;
    if (asprintf(&p, "%s/snapshots/%s/layer.erofs", rt->state_dir, sn) < 0)
        return 0;
    long long n = stat(p, &st) == 0 ? (long long)st.st_blocks * 512 : 0;
    free(p);
    if (n == 0 && asprintf(&p, "%s/snapshots/%s/size", rt->state_dir, sn) >= 0) {
        /* a directory layer: its unpacked size, written by the pull */
        char *txt = read_small(p, 32, NULL);
        n = txt != NULL ? strtoll(txt, NULL, 10) : 0;
        free(txt);
        free(p);
    }
    return n;
}

static char *read_small(const char *path, size_t max, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return NULL;
    char *buf = malloc(max + 1);
    ssize_t n = buf ? read(fd, buf, max) : -1;
    close(fd);
    if (n < 0) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    if (len != NULL)
        *len = (size_t)n;
    return buf;
}

void sl_h_images_pulled(sl_req *r)
{
    sl_runner *rt = r->rt;
    DIR *d = opendir(rt->images_dir);
    if (d == NULL) {
        sl_reply_error(r, 500, "listing %s: %s", rt->images_dir, strerror(errno));
        return;
    }
    char **names = NULL, **infos = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    int oom = 0;
    while ((de = readdir(d)) != NULL && !oom) {
        if (!sl_name_valid(de->d_name))
            continue;
        char *p = NULL;
        if (asprintf(&p, "%s/%s/oci.json", rt->images_dir, de->d_name) < 0) {
            oom = 1;
            break;
        }
        char *info = read_small(p, SL_OCI_META_MAX, NULL);
        free(p);
        if (info == NULL)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char **nn = realloc(names, cap * sizeof(*nn)),
                 **ni = nn ? realloc(infos, cap * sizeof(*ni)) : NULL;
            if (nn != NULL)
                names = nn;
            if (ni != NULL)
                infos = ni;
            if (nn == NULL || ni == NULL) {
                free(info);
                oom = 1;
                break;
            }
        }
        names[n] = strdup(de->d_name);
        infos[n] = info;
        if (names[n] == NULL) {
            free(info);
            oom = 1;
            break;
        }
        n++;
    }
    closedir(d);
    if (oom) {
        sl_strv_free(names, n);
        sl_strv_free(infos, n);
        sl_reply_error(r, 500, "out of memory");
        return;
    }
    int running = 0;
    for (sl_pull *q = pulls; q != NULL; q = q->next)
        running += q->state == P_RUNNING;
    sl_resp resp;
    sl_resp_init(&resp);
    sl_r_map(&resp, 3);
    /* prune waits for these: their layers are stored before the image names them */
    sl_r_kint(&resp, "pulls_running", running);
    sl_r_str(&resp, "images");
    sl_r_arr(&resp, n);
    for (size_t i = 0; i < n; i++) {
        sl_r_map(&resp, 2);
        sl_r_kstr(&resp, "name", names[i]);
        sl_r_kstr(&resp, "info", infos[i]);
    }
    /* every pulled layer with its size: disk usage, and what prune may drop */
    DIR *sd = NULL;
    char *snaps = sl_path_join(rt->state_dir, "snapshots");
    size_t nl = 0, capl = 0;
    char **ids = NULL;
    if (snaps != NULL && (sd = opendir(snaps)) != NULL) {
        while ((de = readdir(sd)) != NULL) {
            if (strncmp(de->d_name, "sn-", 3) != 0 || strlen(de->d_name) != 19)
                continue;
            char *m = NULL;
            if (asprintf(&m, "%s/%s/meta", snaps, de->d_name) < 0)
                break;
            size_t mlen = 0;
            char *meta = read_small(m, 65536, &mlen);
            free(m);
            /* the label is in the msgpack meta as a plain string */
            int oci = meta != NULL && memmem(meta, mlen, "oci-layer", 9) != NULL;
            free(meta);
            if (!oci)
                continue;
            if (nl == capl) {
                capl = capl ? capl * 2 : 32;
                char **ni = realloc(ids, capl * sizeof(*ni));
                if (ni == NULL)
                    break;
                ids = ni;
            }
            if ((ids[nl] = strdup(de->d_name)) == NULL)
                break;
            nl++;
        }
        closedir(sd);
    }
    free(snaps);
    sl_r_str(&resp, "layers");
    sl_r_arr(&resp, nl);
    for (size_t i = 0; i < nl; i++) {
        sl_r_map(&resp, 2);
        sl_r_kstr(&resp, "snapshot_id", ids[i]);
        sl_r_kint(&resp, "bytes", layer_bytes(rt, ids[i]));
    }
    sl_strv_free(ids, nl);
    sl_strv_free(names, n);
    sl_strv_free(infos, n);
    sl_reply(r, 200, &resp);
}

int sl_oci_alias_config(sl_box *b, const char *name, sl_err *e)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s/oci.json", b->rt->images_dir, name) < 0)
        return sl_err_set(e, 500, "out of memory");
    size_t len = 0;
    char *txt = read_small(p, SL_OCI_META_MAX, &len);
    free(p);
    if (txt == NULL)
        return 0; /* not a pulled image */
    json_error_t je;
    json_t *j = json_loadb(txt, len, 0, &je);
    free(txt);
    json_t *conf = json_object_get(j, "config");
    const char *wd = json_string_value(json_object_get(conf, "WorkingDir"));
    int rc = 0;
    if (b->workdir == NULL && wd != NULL && wd[0] == '/' && (b->workdir = strdup(wd)) == NULL)
        rc = sl_err_set(e, 500, "out of memory");
    json_t *env = json_object_get(conf, "Env"), *v;
    size_t i, n = json_array_size(env);
    sl_kv *kv = rc == 0 && n > 0 ? calloc(n + b->nenv, sizeof(*kv)) : NULL;
    if (rc == 0 && n > 0 && kv == NULL)
        rc = sl_err_set(e, 500, "out of memory");
    if (kv != NULL) {
        /* the image's Env, then the request's on top (as sl_snap_apply does) */
        size_t k = 0;
        json_array_foreach(env, i, v)
        {
            const char *s = json_string_value(v), *eq = s ? strchr(s, '=') : NULL;
            if (eq == NULL || eq == s)
                continue;
            int overridden = 0;
            for (size_t r = 0; r < b->nenv && !overridden; r++)
                overridden =
                    strncmp(b->env[r].k, s, (size_t)(eq - s)) == 0 && b->env[r].k[eq - s] == '\0';
            if (overridden)
                continue;
            kv[k].k = strndup(s, (size_t)(eq - s));
            kv[k].v = strdup(eq + 1);
            if (kv[k].k == NULL || kv[k].v == NULL) {
                free(kv[k].k);
                free(kv[k].v);
                rc = sl_err_set(e, 500, "out of memory");
                break;
            }
            k++;
        }
        if (rc == 0) {
            for (size_t r = 0; r < b->nenv; r++)
                kv[k++] = b->env[r];
            free(b->env);
            b->env = kv;
            b->nenv = k;
        } else {
            sl_kv_free(kv, k, 0);
        }
    }
    json_decref(j);
    return rc;
}
