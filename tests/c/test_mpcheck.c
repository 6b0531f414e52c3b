/* test_mpcheck.c - table-driven unit tests for sl_mp_check().
 *
 * Each case is hex input + limits + expected return + a substring the error
 * message must contain (the byte offset, mostly). On top of the table, every
 * valid case is re-checked with each strict prefix (must fail: truncated) and
 * with one trailing byte (must fail), and a set of objects built with
 * msgpack-c's own packer must pass and must then decode with msgpack-c.
 * Prints "N passed, N failed" and exits non-zero on any failure.
 */
#include <errno.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_common.h"
#include "sl_mpcheck.h"

static int passed, failed;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (cond) {                                                                                \
            passed++;                                                                              \
        } else {                                                                                   \
            failed++;                                                                              \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                   \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

struct tcase {
    const char *name;
    const char *hex;    /* spaces ignored */
    int want;           /* 0 or -E... */
    const char *msg;    /* substring expected in errbuf on failure, or NULL */
    unsigned max_depth; /* 0 here means "use SL_MAX_DEPTH" */
    size_t max_size;    /* 0 here means "use SL_MAX_BODY" */
};

static const struct tcase cases[] = {
    /* every scalar format */
    {"nil", "c0", 0},
    {"false", "c2", 0},
    {"true", "c3", 0},
    {"posfixint 0", "00", 0},
    {"posfixint 127", "7f", 0},
    {"negfixint -1", "ff", 0},
    {"negfixint -32", "e0", 0},
    {"uint8", "cc ff", 0},
    {"uint16", "cd ff ff", 0},
    {"uint32", "ce ff ff ff ff", 0},
    {"uint64", "cf ff ff ff ff ff ff ff ff", 0},
    {"int8", "d0 80", 0},
    {"int16", "d1 80 00", 0},
    {"int32", "d2 80 00 00 00", 0},
    {"int64", "d3 80 00 00 00 00 00 00 00", 0},
    {"float32", "ca 3f 80 00 00", 0},
    {"float64", "cb 3f f0 00 00 00 00 00 00", 0},
    {"fixstr empty", "a0", 0},
    {"fixstr", "a3 61 62 63", 0},
    {"fixstr 31",
     "bf 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 "
     "61 61 61 61 61",
     0},
    {"str8", "d9 02 68 69", 0},
    {"str16", "da 00 02 68 69", 0},
    {"str32", "db 00 00 00 02 68 69", 0},
    {"bin8", "c4 03 00 01 02", 0},
    {"bin8 empty", "c4 00", 0},
    {"bin16", "c5 00 01 ff", 0},
    {"bin32", "c6 00 00 00 01 ff", 0},
    {"fixext1", "d4 01 ff", 0},
    {"fixext2", "d5 01 ff ff", 0},
    {"fixext4", "d6 01 ff ff ff ff", 0},
    {"fixext8", "d7 01 00 00 00 00 00 00 00 00", 0},
    {"fixext16", "d8 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00", 0},
    {"ext8", "c7 02 01 aa bb", 0},
    {"ext8 empty", "c7 00 05", 0},
    {"ext16", "c8 00 01 01 aa", 0},
    {"ext32", "c9 00 00 00 01 01 aa", 0},
    /* containers */
    {"fixarray empty", "90", 0},
    {"fixarray", "93 01 02 03", 0},
    {"array16", "dc 00 02 c0 c0", 0},
    {"array32", "dd 00 00 00 02 c0 c0", 0},
    {"array32 empty", "dd 00 00 00 00", 0},
    {"fixmap empty", "80", 0},
    {"fixmap", "82 a1 61 01 a1 62 92 01 02", 0},
    {"map16", "de 00 01 01 02", 0},
    {"map32", "df 00 00 00 01 01 02", 0},
    {"nested empties", "92 90 80", 0},
    {"array as map key", "81 91 01 02", 0}, /* well-formed; hashability is ext's job */
    {"depth 3", "91 91 91 c0", 0},
    /* hostile counts */
    {"dd ff ff ff ff", "dd ff ff ff ff", -EBADMSG, "declared at offset 0 but only 0 bytes remain"},
    {"dd ff 00 00 00", "dd ff 00 00 00", -EBADMSG,
     "array of 4278190080 items declared at offset 0"},
    {"df ff ff ff ff", "df ff ff ff ff", -EBADMSG, "map of 4294967295 pairs declared at offset 0"},
    {"dc ff ff", "dc ff ff", -EBADMSG, "offset 0"},
    {"de ff ff", "de ff ff", -EBADMSG, "offset 0"},
    {"map count*2 > left", "82 01 02 03", -EBADMSG, "map of 2 pairs declared at offset 0"},
    {"nested count lies", "92 dc 00 03 01 01", -EBADMSG, "declared at offset 1"},
    {"nested pending lies", "92 92 01 02", -EBADMSG, "leaves 3 items pending"},
    {"fixarray too long", "93 01 02", -EBADMSG, "array of 3 items declared at offset 0"},
    {"inner array lies", "91 dd 00 01 00 00 c0", -EBADMSG, "declared at offset 1"},
    /* truncation */
    {"empty", "", -EBADMSG, "offset 0"},
    {"trunc uint16", "cd ff", -EBADMSG, "truncated uint at offset 0"},
    {"trunc uint64", "cf 00 00", -EBADMSG, "offset 0"},
    {"trunc float64", "cb 00 00 00 00", -EBADMSG, "truncated float64 at offset 0"},
    {"trunc fixstr", "a3 61 62", -EBADMSG, "truncated str at offset 0: needs 3 bytes, 2 remain"},
    {"trunc str8 header", "d9", -EBADMSG, "truncated str header at offset 0"},
    {"trunc str32 body", "db 00 00 00 05 61", -EBADMSG, "truncated str at offset 0"},
    {"trunc str32 huge", "db ff ff ff ff 61", -EBADMSG, "needs 4294967295 bytes"},
    {"trunc bin8", "c4 05 00", -EBADMSG, "truncated bin at offset 0"},
    {"trunc bin32 header", "c6 00 00", -EBADMSG, "truncated bin header"},
    {"trunc bin32 huge", "c6 ff ff ff ff", -EBADMSG, "truncated bin at offset 0"},
    {"trunc fixext4", "d6 01 00", -EBADMSG, "truncated fixext at offset 0"},
    {"trunc fixext16", "d8 01", -EBADMSG, "truncated fixext"},
    {"trunc ext8 no type", "c7 01", -EBADMSG, "truncated ext header"},
    {"trunc ext8 body", "c7 02 01 aa", -EBADMSG, "truncated ext at offset 0"},
    {"trunc ext32", "c9 ff ff ff ff 01", -EBADMSG, "truncated ext"},
    {"trunc in array", "92 01 cd 00", -EBADMSG, "truncated uint at offset 2"},
    {"trunc array16 header", "dc 00", -EBADMSG, "truncated array header"},
    {"trunc map32 header", "df 00 00", -EBADMSG, "truncated map header"},
    {"trunc map value", "81 01", -EBADMSG, "offset 0"},
    /* invalid byte, trailing bytes */
    {"c1", "c1", -EBADMSG, "invalid type byte 0xc1 at offset 0"},
    {"c1 in array", "92 01 c1", -EBADMSG, "invalid type byte 0xc1 at offset 2"},
    {"c1 as map key", "81 c1 01", -EBADMSG, "offset 1"},
    {"trailing", "c0 c0", -EBADMSG, "1 trailing bytes after the object, at offset 1"},
    {"trailing after array", "91 01 02 03", -EBADMSG,
     "2 trailing bytes after the object, at offset 2"},
    {"two objects", "90 90", -EBADMSG, "at offset 1"},
    /* depth */
    {"depth 1 ok", "91 01", 0, NULL, 1},
    {"depth 2 > 1", "91 91 01", -ELOOP, "array at offset 1 nests 2 deep, limit is 1", 1},
    {"empty container counts", "91 90", -ELOOP, "offset 1", 1},
    {"map inside counts", "81 01 80", -ELOOP, "map at offset 2 nests 2 deep", 1},
    {"scalar at depth 1", "93 01 02 03", 0, NULL, 1},
    {"sibling depth", "92 91 01 91 01", 0, NULL, 2},
    {"sibling deeper", "92 91 01 91 91 01", -ELOOP, "offset 4", 2},
    /* size */
    {"size limit ok", "a3 61 62 63", 0, NULL, 0, 4},
    {"size limit hit", "a3 61 62 63", -EMSGSIZE, "4 bytes exceeds the limit of 3", 0, 3},
};

static size_t unhex(const char *hex, unsigned char *out, size_t cap)
{
    size_t n = 0;
    while (*hex) {
        if (*hex == ' ') {
            hex++;
            continue;
        }
        unsigned v;
        if (sscanf(hex, "%2x", &v) != 1 || n >= cap) {
            fprintf(stderr, "bad hex in test table: %s\n", hex);
            exit(2);
        }
        out[n++] = (unsigned char)v;
        hex += 2;
    }
    return n;
}

static int check(const unsigned char *buf, size_t len, unsigned depth, size_t size, char *err,
                 size_t errlen)
{
    sl_mp_limits lim;
    sl_mp_limits_default(&lim);
    if (depth)
        lim.max_depth = depth;
    if (size)
        lim.max_size = size;
    return sl_mp_check((const char *)buf, len, &lim, err, errlen);
}

static void run_table(void)
{
    unsigned char buf[256];
    char err[256];
    for (size_t i = 0; i < SL_ARRAY_LEN(cases); i++) {
        const struct tcase *c = &cases[i];
        size_t n = unhex(c->hex, buf, sizeof(buf) - 1);
        strcpy(err, "untouched");
        int rc = check(buf, n, c->max_depth, c->max_size, err, sizeof(err));
        CHECK(rc == c->want, "%s: rc %d, want %d (%s)", c->name, rc, c->want, err);
        if (c->want != 0) {
            const char *m = c->msg ? c->msg : "offset";
            CHECK(strstr(err, m) != NULL, "%s: message '%s' lacks '%s'", c->name, err, m);
            continue;
        }
        CHECK(err[0] == '\0', "%s: errbuf not cleared on success: '%s'", c->name, err);
        /* Every strict prefix of a valid object is truncated, and one more
         * byte is trailing garbage. */
        for (size_t k = 0; k < n; k++) {
            rc = check(buf, k, c->max_depth, 0, err, sizeof(err));
            CHECK(rc == -EBADMSG, "%s: prefix of %zu bytes: rc %d (%s)", c->name, k, rc, err);
        }
        buf[n] = 0xc0;
        rc = check(buf, n + 1, c->max_depth, 0, err, sizeof(err));
        CHECK(rc == -EBADMSG && strstr(err, "trailing"), "%s: trailing byte: rc %d (%s)", c->name,
              rc, err);
    }
}

static void test_null_errbuf_and_tiny_errbuf(void)
{
    const char bad[] = "\xdd\xff\xff\xff\xff";
    sl_mp_limits lim;
    sl_mp_limits_default(&lim);
    CHECK(sl_mp_check(bad, 5, &lim, NULL, 0) == -EBADMSG, "NULL errbuf");
    char tiny[8];
    memset(tiny, 'x', sizeof(tiny));
    CHECK(sl_mp_check(bad, 5, &lim, tiny, sizeof(tiny)) == -EBADMSG, "tiny errbuf rc");
    CHECK(memchr(tiny, '\0', sizeof(tiny)) != NULL, "tiny errbuf not terminated");
    CHECK(lim.max_size == SL_MAX_BODY && lim.max_depth == SL_MAX_DEPTH, "defaults");
}

/* n nested arrays around nil: 0x91 * n, 0xc0. */
static void test_depth(unsigned n, unsigned max_depth, int want)
{
    size_t len = (size_t)n + 1;
    char *buf = malloc(len);
    if (buf == NULL) {
        perror("malloc");
        exit(2);
    }
    memset(buf, 0x91, n);
    buf[n] = (char)0xc0;
    sl_mp_limits lim = {.max_size = SL_MAX_BODY, .max_depth = max_depth};
    char err[160];
    int rc = sl_mp_check(buf, len, &lim, err, sizeof(err));
    CHECK(rc == want, "depth %u with max_depth %u: rc %d want %d (%s)", n, max_depth, rc, want,
          rc ? err : "");
    free(buf);
}

/* A long flat input of many items: must pass, and must pass fast (O(n)). */
static void test_large_flat(void)
{
    size_t items = 4u << 20;
    size_t len = 5 + items;
    char *buf = malloc(len);
    if (buf == NULL) {
        perror("malloc");
        exit(2);
    }
    buf[0] = (char)0xdd;
    buf[1] = (char)((items >> 24) & 0xff);
    buf[2] = (char)((items >> 16) & 0xff);
    buf[3] = (char)((items >> 8) & 0xff);
    buf[4] = (char)(items & 0xff);
    memset(buf + 5, 0x01, items);
    sl_mp_limits lim;
    sl_mp_limits_default(&lim);
    CHECK(sl_mp_check(buf, len, &lim, NULL, 0) == 0, "4M-item flat array");
    CHECK(sl_mp_check(buf, len - 1, &lim, NULL, 0) == -EBADMSG, "4M-item array minus one byte");
    free(buf);
}

/* Objects packed by msgpack-c itself must pass, and (depth <= 32, msgpack-c's
 * own limit) msgpack-c must then decode them in full. */
static void test_against_msgpack_c(void)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    int ok = 0;
    ok |= msgpack_pack_map(&pk, 3);
    ok |= msgpack_pack_str_with_body(&pk, "ints", 4);
    ok |= msgpack_pack_array(&pk, 6);
    ok |= msgpack_pack_int64(&pk, INT64_MIN);
    ok |= msgpack_pack_uint64(&pk, UINT64_MAX);
    ok |= msgpack_pack_int(&pk, -33);
    ok |= msgpack_pack_int(&pk, 200);
    ok |= msgpack_pack_double(&pk, 1.5);
    ok |= msgpack_pack_float(&pk, 2.5f);
    ok |= msgpack_pack_bin_with_body(&pk, "\x00\x01", 2);
    ok |= msgpack_pack_ext_with_body(&pk, "abc", 3, 7);
    static char big[70000];
    memset(big, 'z', sizeof(big));
    ok |= msgpack_pack_str_with_body(&pk, big, sizeof(big));
    ok |= msgpack_pack_array(&pk, 300);
    for (int i = 0; i < 300; i++)
        ok |= msgpack_pack_nil(&pk);
    CHECK(ok == 0, "msgpack-c packer failed");

    sl_mp_limits lim;
    sl_mp_limits_default(&lim);
    char err[160] = "";
    int rc = sl_mp_check(sb.data, sb.size, &lim, err, sizeof(err));
    CHECK(rc == 0, "msgpack-c packed object rejected: %s", err);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    int ur = msgpack_unpack_next(&u, sb.data, sb.size, &off);
    CHECK(ur == MSGPACK_UNPACK_SUCCESS && off == sb.size, "msgpack-c decode: %d off %zu", ur, off);
    msgpack_unpacked_destroy(&u);
    for (size_t k = 0; k < sb.size; k += 997) {
        rc = sl_mp_check(sb.data, k, &lim, err, sizeof(err));
        CHECK(rc == -EBADMSG, "prefix %zu of packed object: rc %d", k, rc);
    }
    msgpack_sbuffer_destroy(&sb);
}

int main(void)
{
    run_table();
    test_null_errbuf_and_tiny_errbuf();
    test_depth(64, 64, 0);
    test_depth(65, 64, -ELOOP);
    test_depth(0, 0, 0);
    test_depth(1, 0, -ELOOP);
    test_depth(1024, 1024, 0);
    test_depth(1025, 1025, -ELOOP); /* internal stack cap */
    test_depth(5000, 4000000000u, -ELOOP);
    test_depth(100000, 64, -ELOOP);
    test_large_flat();
    test_against_msgpack_c();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
