/* fuzz_mpcheck.c - libFuzzer harness for sl_mp_check() (+ msgpack-c behind it).
 *
 * Properties checked on every input (abort() on violation, so libFuzzer and
 * the sanitizers report it):
 *  - sl_mp_check never crashes, always NUL-terminates errbuf and names an
 *    offset in it on a malformed input;
 *  - a smaller depth limit can only add -ELOOP, never change a verdict
 *    otherwise;
 *  - whatever passes the check with max_depth 32 (msgpack-c's own nesting
 *    limit) is decoded by msgpack_unpack_next() completely, using all bytes,
 *    and msgpack-c's re-encoding of it passes the check again.
 * Unchecked input is never given to msgpack-c: it would trust the counts.
 *
 * Built with -DSL_FUZZ_STANDALONE, a small main() replays files given on the
 * command line, or runs a deterministic mutation loop over built-in seeds, so
 * `make test` exercises the same properties without clang.
 */
#include <errno.h>
#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_mpcheck.h"

#include "fuzz_check.h"

/* msgpack-c 4.0.0's C unpacker has a fixed stack of 32 containers. */
#define MSGPACKC_DEPTH 32

static int check(const uint8_t *data, size_t size, unsigned depth, char *err, size_t errlen)
{
    sl_mp_limits lim = {.max_size = 1u << 20, .max_depth = depth};
    memset(err, 'X', errlen);
    int rc = sl_mp_check((const char *)data, size, &lim, err, errlen);
    must(memchr(err, '\0', errlen) != NULL, "errbuf not terminated", data, size);
    must(rc == 0 || rc == -EBADMSG || rc == -ELOOP || rc == -EMSGSIZE, "unexpected rc", data, size);
    if (rc != 0 && rc != -EMSGSIZE)
        must(strstr(err, "offset") != NULL, "message names no offset", data, size);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[200];
    int deep = check(data, size, 100000, err, sizeof(err));
    int rc = check(data, size, MSGPACKC_DEPTH, err, sizeof(err));
    must(rc == deep || rc == -ELOOP, "depth limit changed a non-depth verdict", data, size);
    if (rc != 0)
        return 0;

    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack_next(&u, (const char *)data, size, &off);
    must(ur == MSGPACK_UNPACK_SUCCESS, "checked input not decoded by msgpack-c", data, size);
    must(off == size, "msgpack-c did not consume the whole checked input", data, size);

    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    must(msgpack_pack_object(&pk, u.data) == 0, "msgpack-c could not re-pack", data, size);
    sl_mp_limits lim = {.max_size = 1u << 22, .max_depth = MSGPACKC_DEPTH};
    must(sl_mp_check(sb.data, sb.size, &lim, err, sizeof(err)) == 0, "re-packed object rejected",
         data, size);
    msgpack_sbuffer_destroy(&sb);
    msgpack_unpacked_destroy(&u);
    return 0;
}

#ifdef SL_FUZZ_STANDALONE
#include "fuzz_mutate.h"

static int replay(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        return 1;
    }
    static uint8_t buf[1 << 20];
    size_t n = fread(buf, 1, sizeof(buf), f);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        perror(path);
        return 1;
    }
    LLVMFuzzerTestOneInput(buf, n);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        int rc = 0;
        for (int i = 1; i < argc; i++)
            rc |= replay(argv[i]);
        printf("replayed %d inputs\n", argc - 1);
        return rc;
    }
    /* Seeds cover every format byte class; mutations flip, insert and
     * overwrite bytes with interesting values (type bytes, 0xff counts). */
#define SEED(lit)                                                                                  \
    {                                                                                              \
        lit, sizeof(lit) - 1                                                                       \
    } /* literals contain NUL bytes */
    static const struct {
        const char *d;
        size_t n;
    } seeds[] = {
        SEED("\x83\xa1\x61\x93\x01\xcd\x01\x00\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00\xa1\x62"
             "\xc4\x02\x00\x01\xa1\x63\x82\xc0\xc2\xc3\xd4\x01\x05"),
        SEED("\xdc\x00\x03\xd9\x03\x61\x62\x63\xc7\x01\x01\x00\xde\x00\x01\xd0\x80\xca\x00"
             "\x00\x00\x00"),
        SEED("\x92\x91\x91\x91\x91\x90\xdd\x00\x00\x00\x01\xdf\x00\x00\x00\x01\x01\xe0"),
        SEED("\xc9\x00\x00\x00\x02\x01\xaa\xbb"),
    };
    uint8_t buf[256];
    long runs = 0;
    for (int iter = 0; iter < 300000; iter++) {
        size_t k = (size_t)(fz_next() % (sizeof(seeds) / sizeof(seeds[0])));
        size_t n = seeds[k].n;
        memcpy(buf, seeds[k].d, n);
        int muts = 1 + (int)(fz_next() % 4);
        for (int m = 0; m < muts; m++)
            fz_mutate(buf, &n, sizeof(buf));
        LLVMFuzzerTestOneInput(buf, n);
        runs++;
    }
    printf("fuzz smoke: %ld inputs, no property violated\n", runs);
    return 0;
}
#endif
