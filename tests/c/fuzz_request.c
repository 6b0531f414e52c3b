/* fuzz_request.c - libFuzzer harness for the runner's request decoding:
 * HTTP body -> sl_msg_decode_body (limits check, then msgpack-c) -> the
 * request structs of the two richest requests, Sandbox.create
 * (sl_box_parse_create, mounts, s3_mounts) and function registration
 * (sl_fn_parse), plus the typed getters exec and files requests use.
 *
 * Linked against the runner's own objects (all of csrc/runner but main.c),
 * with a runner record whose state dir is a fresh temp dir, so the parsers
 * run exactly as in sandlotd; nothing is built, spawned or mounted (the
 * parsers never do; that is what the harness also checks, by running
 * without a cgroup, network pool or init).
 *
 * Properties checked on every input (abort() on violation, so libFuzzer and
 * the sanitizers report it):
 *  - nothing crashes, leaks (LeakSanitizer) or reads out of bounds;
 *  - every refusal is a client error: 400, 404 (an unknown snapshot), 413 or
 *    415, never a 5xx, with a non-empty, NUL-terminated message;
 *  - decoding is deterministic: the same body gives the same verdict twice.
 *
 * Built with -DSL_FUZZ_STANDALONE, a small main() replays the files given on
 * the command line (the seed corpus, tests/c/corpus/request/) and then runs a
 * deterministic mutation loop over them, so `make test` exercises the same
 * properties with gcc and no libFuzzer.
 */
#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sl_fn.h"
#include "sl_log.h"
#include "sl_msg.h"
#include "sl_runner.h"
#include "sl_snap.h" /* sl_mounts_parse */

#include "fuzz_check.h"

static sl_runner rt;

static void setup(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    char tmpl[] = "/tmp/sl-fuzz-request-XXXXXX";
    char *dir = mkdtemp(tmpl);
    if (dir == NULL) {
        perror("mkdtemp");
        abort();
    }
    /* The parsers look images and snapshots up by name under the state dir;
     * an empty one answers "no such image/snapshot" like a new runner. */
    rt.state_dir = strdup(dir);
    rt.images_dir = sl_path_join(dir, "images");
    rt.volumes_dir = sl_path_join(dir, "volumes");
    rt.sandboxes_dir = sl_path_join(dir, "sandboxes");
    /* As sandlotd always has one (function mounts are checked against it). */
    rt.socket_dir = sl_path_join(dir, "run");
    if (rt.state_dir == NULL || rt.images_dir == NULL || rt.volumes_dir == NULL ||
        rt.sandboxes_dir == NULL || rt.socket_dir == NULL)
        abort();
    rt.max_sandboxes = 1;
    if (sl_reg_init(&rt) < 0) /* sl_box_new looks ids up */
        abort();
    /* Two GPUs (/dev/null as the stand-in device), so "resources.gpu" is
     * parsed all the way instead of refused up front. */
    if (sl_gpu_add(&rt, "/dev/null=T4") < 0 || sl_gpu_add(&rt, "/dev/zero") < 0)
        abort();
    if (sl_log_open(NULL, SL_LOG_ERROR) < 0)
        abort();
}

/* A refusal must be the client's fault and say why. */
static void check_err(int rc, const sl_err *e, const uint8_t *data, size_t size)
{
    if (rc == 0)
        return;
    must(rc == -1, "parser returned neither 0 nor -1", data, size);
    must(memchr(e->msg, '\0', sizeof(e->msg)) != NULL, "message not terminated", data, size);
    must(e->msg[0] != '\0', "empty error message", data, size);
    must(e->status == 400 || e->status == 404 || e->status == 413 || e->status == 415,
         "a request body caused a status other than 400/404/413/415", data, size);
}

static void parse_create(const msgpack_object *body, const uint8_t *data, size_t size)
{
    sl_box *b = sl_box_new(&rt);
    must(b != NULL, "sl_box_new failed", data, size);
    sl_err e = {0};
    int rc = sl_box_parse_create(b, body, &e);
    check_err(rc, &e, data, size);
    if (rc == 0) {
        sl_kv *mounts = NULL;
        sl_bind *binds = NULL;
        size_t n = 0;
        rc = sl_mounts_parse(body, &mounts, &n, &binds, &e);
        check_err(rc, &e, data, size);
        free(binds);
        sl_kv_free(mounts, n, 0);
        if (rc == 0)
            check_err(sl_s3_parse(b, body, &e), &e, data, size);
    }
    sl_s3_release(b);
    sl_box_free(b);
}

static void parse_function(const msgpack_object *body, const uint8_t *data, size_t size)
{
    sl_fn *f = calloc(1, sizeof(*f));
    must(f != NULL, "calloc failed", data, size);
    sl_err e = {0};
    check_err(sl_fn_parse(&rt, f, body, &e), &e, data, size);
    sl_fn_free(f);
}

/* exec and files requests read their fields with the typed getters. */
static void parse_exec(const msgpack_object *body, const uint8_t *data, size_t size)
{
    sl_err e = {0};
    char **cmd = NULL, *workdir = NULL, *path = NULL;
    size_t ncmd = 0, nenv = 0;
    sl_kv *env = NULL;
    const char *bytes;
    size_t len;
    double timeout;
    int64_t mode;
    check_err(sl_msg_strv(body, "cmd", SL_REQ, &cmd, &ncmd, &e), &e, data, size);
    check_err(sl_msg_kvmap(body, "env", &env, &nenv, &e), &e, data, size);
    check_err(sl_msg_str(body, "workdir", 0, &workdir, &e), &e, data, size);
    check_err(sl_msg_str(body, "path", SL_REQ, &path, &e), &e, data, size);
    check_err(sl_msg_bytes(body, "data", 0, &bytes, &len, &e), &e, data, size);
    check_err(sl_msg_num(body, "timeout", 1, 1, &timeout, &e), &e, data, size);
    check_err(sl_msg_int(body, "mode", 0, 07777, 0644, &mode, &e), &e, data, size);
    sl_strv_free(cmd, ncmd);
    sl_kv_free(env, nenv, 0);
    free(workdir);
    free(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    int verdict[2];
    for (int round = 0; round < 2; round++) {
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        sl_err e = {0};
        int rc = sl_msg_decode_body((const char *)data, size, &up, &e);
        check_err(rc, &e, data, size);
        verdict[round] = rc == 0 ? 0 : e.status;
        if (rc == 0 && round == 0) {
            must(up.data.type == MSGPACK_OBJECT_MAP, "decoded body is not a map", data, size);
            parse_create(&up.data, data, size);
            parse_function(&up.data, data, size);
            parse_exec(&up.data, data, size);
        }
        msgpack_unpacked_destroy(&up);
    }
    must(verdict[0] == verdict[1], "same body, different verdicts", data, size);
    return 0;
}

#ifdef SL_FUZZ_STANDALONE
#include "fuzz_mutate.h"

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        exit(1);
    }
    uint8_t *buf = malloc(1 << 16);
    if (buf == NULL)
        exit(1);
    *len = fread(buf, 1, 1 << 16, f);
    fclose(f);
    return buf;
}

int main(int argc, char **argv)
{
    const int rounds = argc > 1 && getenv("FUZZ_ROUNDS") ? atoi(getenv("FUZZ_ROUNDS")) : 20000;
    uint8_t mut[(1 << 16) + 1]; /* + room for one inserted byte */
    size_t inputs = 0;
    for (int i = 1; i < argc; i++) {
        size_t len;
        uint8_t *seed = slurp(argv[i], &len);
        LLVMFuzzerTestOneInput(seed, len);
        inputs++;
        /* One to four mutations of each seed, or a truncation. */
        for (int r = 0; r < rounds / (argc - 1) + 1; r++) {
            size_t n = len;
            memcpy(mut, seed, n);
            if (fz_next() % 5 == 0) {
                n = n ? fz_next() % n : 0;
            } else {
                for (int m = 1 + (int)(fz_next() % 4); m > 0; m--)
                    fz_mutate(mut, &n, sizeof(mut));
            }
            LLVMFuzzerTestOneInput(mut, n);
            inputs++;
        }
        free(seed);
    }
    printf("fuzz_request: %zu inputs, every property held\n", inputs);
    return 0;
}
#endif
