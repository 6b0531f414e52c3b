/* sl_mpcheck.h - validate untrusted msgpack bytes before msgpack-c sees them.
 *
 * msgpack-c trusts the container counts it reads: `dd ff ff ff ff` makes it
 * allocate room for 4 billion objects before noticing the input is 5 bytes
 * long. sl_mp_check() walks the encoding without allocating anything and
 * rejects any container whose declared count exceeds the bytes left (every
 * element needs at least one byte), nesting deeper than a limit, and input
 * larger than a limit. Only input that passes is handed to msgpack_unpack*.
 *
 * Note: msgpack-c's C unpacker (libmsgpackc 4.0.0 as built by Debian) has a
 * fixed internal stack of MSGPACK_EMBED_STACK_SIZE = 32 and fails with
 * MSGPACK_UNPACK_NOMEM_ERROR on the 33rd nested container. Callers that hand
 * checked input to msgpack_unpack_next() must use max_depth <= 32; ext/codec.c
 * decodes on its own and supports the full SL_MAX_DEPTH.
 *
 * Shared by the client extension (ext/) and the runner (csrc/runner).
 */
#ifndef SL_MPCHECK_H
#define SL_MPCHECK_H

#include <stddef.h>

typedef struct sl_mp_limits {
    size_t max_size;    /* total input bytes */
    unsigned max_depth; /* 0 = scalars only, 1 = one level of containers, ...
                           (capped internally at 1024) */
} sl_mp_limits;

/* Fills in SL_MAX_BODY / SL_MAX_DEPTH. */
void sl_mp_limits_default(sl_mp_limits *lim);

/* Returns 0 if buf[0..len) holds exactly one well-formed msgpack object that
 * respects lim, else a negative errno (-EMSGSIZE too big, -ELOOP too deep,
 * -EBADMSG malformed/truncated/trailing bytes/count larger than bytes left).
 * On failure, if errbuf != NULL, writes a one-line human message naming the
 * byte offset, e.g. "array of 4294967295 items declared at offset 0 but only 0
 * bytes remain". */
int sl_mp_check(const char *buf, size_t len, const sl_mp_limits *lim, char *errbuf,
                size_t errbuf_len);

#endif
