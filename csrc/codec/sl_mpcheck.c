/* sl_mpcheck.c - a non-allocating validator for untrusted msgpack bytes.
 *
 * The walk is iterative: one explicit stack of "items still to read" per open
 * container, so hostile nesting cannot exhaust the C stack, and every step
 * consumes at least one input byte, so the walk is O(len) whatever the
 * declared counts say. Besides the per-container check ("count <= bytes
 * left"), the sum of all pending items across open containers is kept and
 * checked against the bytes left too: that makes nested lies such as
 * [65535 x [65535 x ...]] fail at the first header that cannot possibly be
 * satisfied, instead of after reading to the end of the input.
 */
#include "sl_mpcheck.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

#include "sl_common.h"

/* Explicit stack bound: a caller passing a huge max_depth still gets a fixed,
 * small stack frame (8 KiB). Nesting beyond this is reported as too deep. */
#define SL_MP_STACK_CAP 1024u

void sl_mp_limits_default(sl_mp_limits *lim)
{
    lim->max_size = SL_MAX_BODY;
    lim->max_depth = SL_MAX_DEPTH;
}

static int fail(int err, char *errbuf, size_t errbuf_len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(int err, char *errbuf, size_t errbuf_len, const char *fmt, ...)
{
    if (errbuf != NULL && errbuf_len > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(errbuf, errbuf_len, fmt, ap);
        va_end(ap);
    }
    return -err;
}

static uint64_t be(const unsigned char *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* What one header byte announces. `lenbytes` big-endian length bytes follow
 * the type byte (then `extra` more fixed bytes, the ext type), then `fixed`
 * payload bytes plus the decoded length (for str/bin/ext) - or, for
 * containers, `count` items (doubled for maps). */
enum kind { K_SCALAR, K_ARRAY, K_MAP, K_INVALID };

struct head {
    enum kind kind;
    unsigned lenbytes; /* size of the big-endian length/count field */
    unsigned extra;    /* bytes after the length field (ext type byte) */
    uint64_t fixed;    /* payload bytes known from the type byte alone */
    const char *name;
};

static struct head classify(unsigned char b)
{
    struct head h = {K_SCALAR, 0, 0, 0, NULL};
    if (b <= 0x7f || b >= 0xe0)
        return h; /* positive / negative fixint */
    if (b <= 0x8f) {
        h.kind = K_MAP;
        h.fixed = b & 0x0f;
        h.name = "map";
        return h;
    }
    if (b <= 0x9f) {
        h.kind = K_ARRAY;
        h.fixed = b & 0x0f;
        h.name = "array";
        return h;
    }
    if (b <= 0xbf) {
        h.fixed = b & 0x1f;
        h.name = "str";
        return h;
    }
    switch (b) {
    case 0xc0: /* nil */
    case 0xc2: /* false */
    case 0xc3: /* true */
        return h;
    case 0xc4:
    case 0xc5:
    case 0xc6:
        h.lenbytes = 1u << (b - 0xc4);
        h.name = "bin";
        return h;
    case 0xc7:
    case 0xc8:
    case 0xc9:
        h.lenbytes = 1u << (b - 0xc7);
        h.extra = 1;
        h.name = "ext";
        return h;
    case 0xca:
        h.fixed = 4;
        h.name = "float32";
        return h;
    case 0xcb:
        h.fixed = 8;
        h.name = "float64";
        return h;
    case 0xcc:
    case 0xcd:
    case 0xce:
    case 0xcf:
        h.fixed = 1u << (b - 0xcc);
        h.name = "uint";
        return h;
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3:
        h.fixed = 1u << (b - 0xd0);
        h.name = "int";
        return h;
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
        h.fixed = 1 + (1u << (b - 0xd4)); /* type byte + 1..16 data bytes */
        h.name = "fixext";
        return h;
    case 0xd9:
    case 0xda:
    case 0xdb:
        h.lenbytes = 1u << (b - 0xd9);
        h.name = "str";
        return h;
    case 0xdc:
    case 0xdd:
        h.kind = K_ARRAY;
        h.lenbytes = b == 0xdc ? 2 : 4;
        h.name = "array";
        return h;
    case 0xde:
    case 0xdf:
        h.kind = K_MAP;
        h.lenbytes = b == 0xde ? 2 : 4;
        h.name = "map";
        return h;
    default: /* 0xc1: never used */
        h.kind = K_INVALID;
        return h;
    }
}

int sl_mp_check(const char *buf, size_t len, const sl_mp_limits *lim, char *errbuf,
                size_t errbuf_len)
{
    const unsigned char *p = (const unsigned char *)buf;
    /* stack[i]: items still to read in the i-th open container. A map of n
     * pairs counts 2n items; counts fit in 33 bits, hence uint64_t. */
    uint64_t stack[SL_MP_STACK_CAP];
    unsigned sp = 0;
    uint64_t pending = 0; /* sum of stack[0..sp) */
    size_t pos = 0;
    unsigned max_depth = lim->max_depth;

    if (errbuf != NULL && errbuf_len > 0)
        errbuf[0] = '\0';
    if (len > lim->max_size)
        return fail(EMSGSIZE, errbuf, errbuf_len, "input of %zu bytes exceeds the limit of %zu",
                    len, lim->max_size);
    if (len == 0)
        return fail(EBADMSG, errbuf, errbuf_len, "empty input at offset 0");
    if (buf == NULL)
        return fail(EBADMSG, errbuf, errbuf_len, "NULL input at offset 0");

    do {
        size_t start = pos;
        if (pos >= len)
            return fail(EBADMSG, errbuf, errbuf_len,
                        "truncated input: %llu more items expected at offset %zu",
                        (unsigned long long)pending, pos);
        unsigned char b = p[pos];
        struct head h = classify(b);
        if (h.kind == K_INVALID)
            return fail(EBADMSG, errbuf, errbuf_len, "invalid type byte 0x%02x at offset %zu", b,
                        pos);
        pos++;

        /* Length / count field, then the fixed bytes that follow it. */
        size_t hdr = h.lenbytes + h.extra;
        if (hdr > len - pos)
            return fail(EBADMSG, errbuf, errbuf_len,
                        "truncated %s header at offset %zu: needs %zu bytes, %zu remain", h.name,
                        start, hdr, len - pos);
        uint64_t n = h.fixed + be(p + pos, h.lenbytes);
        pos += hdr;

        /* This item is one of its parent's pending items. */
        if (sp > 0) {
            stack[sp - 1]--;
            pending--;
        }

        if (h.kind == K_SCALAR) {
            if (n > len - pos)
                return fail(EBADMSG, errbuf, errbuf_len,
                            "truncated %s at offset %zu: needs %llu bytes, %zu remain",
                            h.name ? h.name : "int", start, (unsigned long long)n, len - pos);
            pos += (size_t)n;
        } else {
            unsigned depth = sp + 1; /* nesting level of the container just opened */
            if (depth > max_depth || depth > SL_MP_STACK_CAP)
                return fail(ELOOP, errbuf, errbuf_len,
                            "%s at offset %zu nests %u deep, limit is %u", h.name, start, depth,
                            max_depth < SL_MP_STACK_CAP ? max_depth : SL_MP_STACK_CAP);
            uint64_t items = h.kind == K_MAP ? 2 * n : n;
            /* Every item takes at least one byte: a count larger than what
             * is left is a lie, and msgpack-c would trust it with malloc. */
            if (items > len - pos)
                return fail(EBADMSG, errbuf, errbuf_len,
                            "%s of %llu %s declared at offset %zu but only %zu bytes remain",
                            h.name, (unsigned long long)n, h.kind == K_MAP ? "pairs" : "items",
                            start, len - pos);
            if (pending + items > len - pos)
                return fail(EBADMSG, errbuf, errbuf_len,
                            "%s of %llu %s declared at offset %zu leaves %llu items pending "
                            "but only %zu bytes remain",
                            h.name, (unsigned long long)n, h.kind == K_MAP ? "pairs" : "items",
                            start, (unsigned long long)(pending + items), len - pos);
            if (items > 0) {
                stack[sp++] = items;
                pending += items;
            }
        }

        /* Close every container whose last item this was. */
        while (sp > 0 && stack[sp - 1] == 0)
            sp--;
    } while (sp > 0);

    if (pos != len)
        return fail(EBADMSG, errbuf, errbuf_len,
                    "%zu trailing bytes after the object, at offset %zu", len - pos, pos);
    return 0;
}
