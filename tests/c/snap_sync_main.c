/* snap_sync_main.c - run sl_snap_sync(SRC, DST, T0) from the command line so
 * tests/test_snap_sync.py can check it on trees it builds (compiled by that
 * test with ASan and UBSan). */
#include <stdio.h>
#include <stdlib.h>

#include "sl_snap.h"

int main(int argc, char **argv)
{
    char err[512];

    if (argc != 4) {
        fprintf(stderr, "usage: %s SRC DST T0\n", argv[0]);
        return 2;
    }
    struct timespec t0 = {.tv_sec = (time_t)strtoll(argv[3], NULL, 10)};

    if (sl_snap_sync(argv[1], argv[2], &t0, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    return 0;
}
