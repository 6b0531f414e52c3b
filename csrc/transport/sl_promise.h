/* sl_promise.h - requests completed by their creator instead of the I/O
 * thread: futures whose outcome arrives some other way (e.g. one batched
 * response completing many of them). */
#ifndef SL_PROMISE_H
#define SL_PROMISE_H

#include <stddef.h>

#include "sl_transport.h"

/* Complete a request that was never submitted with an HTTP-like outcome:
 * status and a copy of body (msgpack, may be empty). Waiters wake and
 * watches run on this thread. 1 if this call completed it, 0 if it was
 * already complete or cancelled, -EINVAL for a submitted request, -ENOMEM. */
int sl_req_resolve(sl_req *req, long status, const char *body, size_t len);

#endif
