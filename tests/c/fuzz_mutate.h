/* fuzz_mutate.h - the deterministic mutator of the standalone (gcc, no
 * libFuzzer) builds of the fuzz harnesses: `make test` replays their seeds
 * and a fixed sequence of mutations of them, so the properties are checked
 * on every run without clang. Header-only: each harness is one binary. */
#ifndef SL_FUZZ_MUTATE_H
#define SL_FUZZ_MUTATE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* xorshift64: a fixed sequence, so every run mutates the same way. */
static uint64_t fz_rng = 0x9e3779b97f4a7c15ull;

static inline uint64_t fz_next(void)
{
    fz_rng ^= fz_rng << 13;
    fz_rng ^= fz_rng >> 7;
    fz_rng ^= fz_rng << 17;
    return fz_rng;
}

/* One mutation of buf[0..*n) in place (cap: its size): flip a bit, write
 * an interesting msgpack byte (type bytes, 0xff counts), insert one, or
 * delete one. */
static inline void fz_mutate(uint8_t *buf, size_t *n, size_t cap)
{
    static const uint8_t interesting[] = {0x00, 0x01, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf,
                                          0xc0, 0xc1, 0xc4, 0xc7, 0xc9, 0xcf, 0xd4, 0xd8, 0xd9,
                                          0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff};
    size_t at = *n ? fz_next() % *n : 0;
    switch (fz_next() % 4) {
    case 0:
        if (*n > 0)
            buf[at] ^= (uint8_t)(1u << (fz_next() % 8));
        break;
    case 1:
        if (*n > 0)
            buf[at] = interesting[fz_next() % sizeof(interesting)];
        break;
    case 2:
        if (*n < cap) {
            memmove(buf + at + 1, buf + at, *n - at);
            buf[at] = interesting[fz_next() % sizeof(interesting)];
            (*n)++;
        }
        break;
    default:
        if (*n > 0) {
            memmove(buf + at, buf + at + 1, *n - at - 1);
            (*n)--;
        }
        break;
    }
}

#endif
