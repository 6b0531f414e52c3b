/* sl_common.h - conventions shared by every layer of sandlot's C code.
 *
 * Errors inside csrc/ are negative errno-style ints (0 = success). Only ext/
 * turns them into Python exceptions. Public symbols use the `sl_` prefix,
 * file-internal helpers `sl__` (or plain `static`).
 */
#ifndef SL_COMMON_H
#define SL_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* Largest request or response body either side accepts (64 MiB of payload plus
 * room for the map around it). Shared so client and runner agree. */
#define SL_MAX_BODY ((size_t)65 * 1024 * 1024)
/* Largest msgpack nesting depth either side decodes. */
#define SL_MAX_DEPTH 64

#define SL_VERSION "0.1.0"

#define SL_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
