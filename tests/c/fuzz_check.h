/* fuzz_check.h - the property check every fuzz harness uses: a violated
 * property prints what and the input's first bytes, then aborts, so that
 * libFuzzer saves the input as a crash and the standalone (gcc) replay of
 * `make test` fails. Header-only: each harness is one binary. */
#ifndef SL_FUZZ_CHECK_H
#define SL_FUZZ_CHECK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static inline void must(int cond, const char *what, const uint8_t *data, size_t size)
{
    if (cond)
        return;
    fprintf(stderr, "property violated: %s; input (%zu bytes):", what, size);
    for (size_t i = 0; i < size && i < 64; i++)
        fprintf(stderr, " %02x", data[i]);
    fputc('\n', stderr);
    abort();
}

#endif
