/* sl_endpoint.c - where requests go: the parsed base URL and shared headers.
 *
 * An endpoint is immutable once built and reference counted: every request
 * holds one reference, so a Client that is garbage collected while its
 * requests are in flight does not pull the URL or the header list out from
 * under the I/O thread.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "sl_transport_int.h"

static bool has_ctl_or_space(const char *s)
{
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= 0x20 || c == 0x7f)
            return true;
    }
    return false;
}

static void endpoint_free(sl_endpoint *ep)
{
    if (ep == NULL)
        return;
    free(ep->base_url);
    free(ep->url_prefix);
    free(ep->unix_path);
    curl_slist_free_all(ep->headers);
    free(ep);
}

/* curl_slist_append copies the string and returns NULL on allocation failure
 * without freeing the list, so keep the old head in that case. */
static int add_header(struct curl_slist **list, const char *h)
{
    struct curl_slist *n = curl_slist_append(*list, h);
    if (n == NULL)
        return -ENOMEM;
    *list = n;
    return 0;
}

static int build_headers(sl_endpoint *ep, const char *token)
{
    int rc;
    /* "Expect:" with no value stops libcurl from sending "Expect:
     * 100-continue" for bodies over 1 MiB, which would cost a round trip (or
     * a 1 s stall against servers that ignore it). */
    static const char *const fixed[] = {
        "Content-Type: application/msgpack",
        "Accept: application/msgpack",
        "Expect:",
    };
    for (size_t i = 0; i < SL_ARRAY_LEN(fixed); i++) {
        rc = add_header(&ep->headers, fixed[i]);
        if (rc < 0)
            return rc;
    }
    if (token == NULL)
        return 0;
    static const char prefix[] = "Authorization: Bearer ";
    size_t len = sizeof(prefix) + strlen(token);
    char *h = malloc(len);
    if (h == NULL)
        return -ENOMEM;
    snprintf(h, len, "%s%s", prefix, token);
    rc = add_header(&ep->headers, h);
    free(h);
    return rc;
}

int sl_endpoint_new(const char *base_url, const char *token, sl_endpoint **out)
{
    static const char unix_scheme[] = "unix://";
    static const char http_scheme[] = "http://";
    *out = NULL;
    if (base_url == NULL || has_ctl_or_space(base_url))
        return -EINVAL;
    /* A token is pasted into a header line: CR/LF would inject headers. */
    if (token != NULL && (token[0] == '\0' || has_ctl_or_space(token)))
        return -EINVAL;

    sl_endpoint *ep = calloc(1, sizeof(*ep));
    if (ep == NULL)
        return -ENOMEM;
    atomic_init(&ep->refs, 1);
    int rc = -ENOMEM;
    ep->base_url = strdup(base_url);
    if (ep->base_url == NULL)
        goto fail;

    if (strncmp(base_url, unix_scheme, sizeof(unix_scheme) - 1) == 0) {
        const char *path = base_url + sizeof(unix_scheme) - 1;
        struct sockaddr_un sun;
        if (path[0] != '/') {
            rc = -EINVAL;
            goto fail;
        }
        if (strlen(path) >= sizeof(sun.sun_path)) {
            rc = -ENAMETOOLONG;
            goto fail;
        }
        ep->unix_path = strdup(path);
        /* The host part is only used for the Host: header and as part of
         * libcurl's connection-cache key (together with the socket path). */
        ep->url_prefix = strdup("http://localhost");
        if (ep->unix_path == NULL || ep->url_prefix == NULL)
            goto fail;
    } else if (strncmp(base_url, http_scheme, sizeof(http_scheme) - 1) == 0) {
        size_t len = strlen(base_url);
        if (len == sizeof(http_scheme) - 1) {
            rc = -EINVAL;
            goto fail;
        }
        while (len > sizeof(http_scheme) - 1 && base_url[len - 1] == '/')
            len--;
        ep->url_prefix = strndup(base_url, len);
        if (ep->url_prefix == NULL)
            goto fail;
    } else {
        rc = -EINVAL;
        goto fail;
    }

    rc = build_headers(ep, token);
    if (rc < 0)
        goto fail;
    *out = ep;
    return 0;
fail:
    endpoint_free(ep);
    return rc;
}

void sl_endpoint_ref(sl_endpoint *ep)
{
    atomic_fetch_add_explicit(&ep->refs, 1, memory_order_relaxed);
}

void sl_endpoint_unref(sl_endpoint *ep)
{
    if (ep != NULL && atomic_fetch_sub_explicit(&ep->refs, 1, memory_order_acq_rel) == 1)
        endpoint_free(ep);
}

const char *sl_endpoint_base_url(const sl_endpoint *ep)
{
    return ep->base_url;
}
