/* sl_promise.c - completing a request that was never submitted (see
 * sl_promise.h). The I/O thread never sees such a request, so the only
 * writers of its result are resolvers, serialised by one lock. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "sl_promise.h"
#include "sl_transport_int.h"

static pthread_mutex_t g_resolve_mu = PTHREAD_MUTEX_INITIALIZER;

int sl_req_resolve(sl_req *req, long status, const char *body, size_t len)
{
    if (req->tr != NULL)
        return -EINVAL;
    char *copy = NULL;
    if (len > 0) {
        copy = malloc(len);
        if (copy == NULL)
            return -ENOMEM;
        memcpy(copy, body, len);
    }
    pthread_mutex_lock(&g_resolve_mu);
    if (sl_req_state(req) != SL_REQ_PENDING) {
        pthread_mutex_unlock(&g_resolve_mu);
        free(copy);
        return 0;
    }
    /* A concurrent cancel may win the state change below; then nobody reads
     * res (a cancelled request has no result) and unref frees the body. */
    free(req->res.body);
    req->res.status = status;
    req->res.fail = SL_FAIL_NONE;
    req->res.body = copy;
    req->res.body_len = len;
    req->res.message[0] = '\0';
    pthread_mutex_unlock(&g_resolve_mu);
    return sl__req_complete(req, SL_REQ_DONE);
}
