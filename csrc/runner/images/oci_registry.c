/* oci_registry.c - the OCI distribution protocol over libcurl, in the pull
 * child (blocking calls are fine there: the runner's loop is elsewhere).
 *
 * Auth as docker does it: a request answered 401 carries a WWW-Authenticate
 * challenge; "Basic" is answered with the credentials, "Bearer" by fetching
 * a token from the realm (with the credentials as basic auth, if any) for
 * repository:<repo>:pull, then the request is retried once. 429, 5xx and
 * broken connections are retried with backoff (0.5, 1, 2 s), a blob resumed
 * with a Range request from the bytes already on disk. A registry that sends
 * nothing for `stall` seconds fails the request (libcurl's low-speed limit).
 * Proxies come from the environment (libcurl reads http_proxy, https_proxy,
 * no_proxy); the Authorization header is not sent on to another host when a
 * blob redirects (libcurl's default).
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "oci_int.h"

#define RETRIES 3

typedef struct sink {
    char *buf;
    size_t len, cap, max;
    int fd; /* >= 0: write here instead of buf (2xx bodies only) */
    CURL *c;
    EVP_MD_CTX *md;
    unsigned long long done;
    oci_progress_fn cb;
    void *arg;
    double last_cb;
    int overflow, werr;
} sink;

static double mono(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

void oci_sha256_str(const void *buf, size_t len, char out[72])
{
    unsigned char d[32];
    unsigned n = 0;
    EVP_Digest(buf, len, d, &n, EVP_sha256(), NULL);
    strcpy(out, "sha256:");
    for (int i = 0; i < 32; i++)
        sprintf(out + 7 + 2 * i, "%02x", d[i]);
}

int oci_digest_valid(const char *d)
{
    if (d == NULL || strncmp(d, "sha256:", 7) != 0 || strlen(d) != 71)
        return 0;
    for (const char *p = d + 7; *p; p++) {
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return 0;
    }
    return 1;
}

static size_t on_data(char *p, size_t sz, size_t n, void *arg)
{
    sink *s = arg;
    size_t len = sz * n;
    if (s->fd >= 0) {
        long code = 0;
        curl_easy_getinfo(s->c, CURLINFO_RESPONSE_CODE, &code);
        if (code < 200 || code >= 300)
            return len; /* an error page is not blob content */
        size_t off = 0;
        while (off < len) {
            ssize_t w = write(s->fd, p + off, len - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                s->werr = errno;
                return 0;
            }
            off += (size_t)w;
        }
    } else {
        if (s->len + len > s->max) {
            s->overflow = 1;
            return 0;
        }
        if (s->len + len + 1 > s->cap) {
            size_t nc = s->cap ? s->cap : 16384;
            while (nc < s->len + len + 1)
                nc *= 2;
            char *nb = realloc(s->buf, nc);
            if (nb == NULL) {
                s->werr = ENOMEM;
                return 0;
            }
            s->buf = nb;
            s->cap = nc;
        }
        memcpy(s->buf + s->len, p, len);
        s->len += len;
        s->buf[s->len] = '\0';
    }
    if (s->md != NULL)
        EVP_DigestUpdate(s->md, p, len);
    s->done += len;
    if (s->cb != NULL) {
        double now = mono();
        if (now - s->last_cb >= 0.1) {
            s->last_cb = now;
            s->cb(s->arg, s->done);
        }
    }
    return len;
}

static size_t on_header(char *p, size_t sz, size_t n, void *arg)
{
    oci_client *cl = arg;
    size_t len = sz * n;
    size_t k = len;
    while (k > 0 && (p[k - 1] == '\r' || p[k - 1] == '\n'))
        k--;
    if (k > 17 && strncasecmp(p, "WWW-Authenticate:", 17) == 0) {
        free(cl->challenge);
        size_t i = 17;
        while (i < k && p[i] == ' ')
            i++;
        cl->challenge = strndup(p + i, k - i);
    } else if (k > 13 && strncasecmp(p, "Content-Type:", 13) == 0) {
        size_t i = 13;
        while (i < k && p[i] == ' ')
            i++;
        size_t m = k - i < sizeof(cl->ctype) - 1 ? k - i : sizeof(cl->ctype) - 1;
        memcpy(cl->ctype, p + i, m);
        cl->ctype[m] = '\0';
        cl->ctype[strcspn(cl->ctype, ";")] = '\0';
    }
    return len;
}

/* One HTTP GET. 0 with *status set, or -1 (transport error, message in err;
 * *transient says whether a retry may help). */
static int perform(oci_client *cl, const char *url, const char *accept, sink *sk, long long from,
                   const char *basic, long *status, int *transient, char *err, size_t errlen)
{
    CURL *c = cl->c;
    curl_easy_reset(c);
    sk->c = c;
    struct curl_slist *h = NULL, *t;
    char acc[600];
    snprintf(acc, sizeof(acc), "Accept: %s", accept ? accept : "*/*");
    h = curl_slist_append(NULL, acc);
    if (h != NULL && cl->authz != NULL && basic == NULL && (t = curl_slist_append(h, cl->authz)))
        h = t;
    if (h == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    long stall = cl->stall < 1 ? 1 : (long)(cl->stall + 0.5);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, sk);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, cl);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, stall < 30 ? stall : 30L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, stall);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "sandlot");
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    if (from > 0)
        curl_easy_setopt(c, CURLOPT_RESUME_FROM_LARGE, (curl_off_t)from);
    if (basic != NULL) {
        curl_easy_setopt(c, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
        curl_easy_setopt(c, CURLOPT_USERPWD, basic);
    }
    cl->ctype[0] = '\0';
    CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(h);
    *status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    if (rc == CURLE_OK)
        return 0;
    if (rc == CURLE_WRITE_ERROR && sk->overflow) {
        snprintf(err, errlen, "%s: response larger than %zu bytes; refused", url, sk->max);
        *transient = 0;
        return -1;
    }
    if (rc == CURLE_WRITE_ERROR && sk->werr) {
        snprintf(err, errlen, "writing %s: %s", url, strerror(sk->werr));
        *transient = 0;
        return -1;
    }
    if (rc == CURLE_OPERATION_TIMEDOUT)
        snprintf(err, errlen, "registry sent nothing for %ld s (%s): %s", stall, url,
                 curl_easy_strerror(rc));
    else
        snprintf(err, errlen, "%s: %s", url, curl_easy_strerror(rc));
    /* A hang already cost `stall` seconds: not retried. */
    *transient = rc == CURLE_COULDNT_CONNECT || rc == CURLE_RECV_ERROR || rc == CURLE_SEND_ERROR ||
                 rc == CURLE_PARTIAL_FILE || rc == CURLE_GOT_NOTHING;
    return -1;
}

/* key="value" from a challenge, malloc'd, or NULL. */
static char *param(const char *ch, const char *key)
{
    size_t kl = strlen(key);
    for (const char *p = ch; (p = strcasestr(p, key)) != NULL; p += kl) {
        if ((p != ch && p[-1] != ' ' && p[-1] != ',') || p[kl] != '=')
            continue;
        const char *v = p + kl + 1;
        if (*v == '"') {
            const char *e = strchr(v + 1, '"');
            return e ? strndup(v + 1, (size_t)(e - v - 1)) : NULL;
        }
        return strndup(v, strcspn(v, ", "));
    }
    return NULL;
}

/* Answer cl->challenge: set cl->authz. 0, or -1 with *code (401/502). */
static int authenticate(oci_client *cl, int *code, char *err, size_t errlen)
{
    const char *ch = cl->challenge;
    char *userpwd = NULL;
    int rc = -1;
    *code = 401;
    if (cl->user != NULL && asprintf(&userpwd, "%s:%s", cl->user, cl->pass ? cl->pass : "") < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (ch == NULL) {
        snprintf(err, errlen, "registry %s answered 401 without a challenge", cl->ref.host);
    } else if (strncasecmp(ch, "Basic", 5) == 0) {
        if (userpwd == NULL) {
            snprintf(err, errlen,
                     "registry %s needs credentials (basic auth): pass a Secret with "
                     "REGISTRY_USERNAME/REGISTRY_PASSWORD or log in with docker",
                     cl->ref.host);
        } else {
            /* base64 via an EVP encoder */
            size_t n = strlen(userpwd);
            unsigned char *b64 = malloc(4 * ((n + 2) / 3) + 1);
            if (b64 != NULL) {
                EVP_EncodeBlock(b64, (unsigned char *)userpwd, (int)n);
                free(cl->authz);
                if (asprintf(&cl->authz, "Authorization: Basic %s", b64) < 0)
                    cl->authz = NULL;
                free(b64);
            }
            rc = cl->authz ? 0 : (snprintf(err, errlen, "out of memory"), -1);
        }
    } else if (strncasecmp(ch, "Bearer", 6) == 0) {
        char *realm = param(ch, "realm"), *service = param(ch, "service"),
             *scope = param(ch, "scope");
        char *url = NULL, *esvc = NULL, *escope = NULL, *defscope = NULL;
        if (scope == NULL && asprintf(&defscope, "repository:%s:pull", cl->ref.repo) < 0)
            defscope = NULL;
        if (realm == NULL || strncmp(realm, "http", 4) != 0) {
            snprintf(err, errlen, "registry %s: bad Bearer challenge (no realm)", cl->ref.host);
            *code = 502;
        } else {
            esvc = service ? curl_easy_escape(cl->c, service, 0) : NULL;
            escope = curl_easy_escape(cl->c, scope ? scope : defscope ? defscope : "", 0);
            if (asprintf(&url, "%s%sscope=%s%s%s", realm, strchr(realm, '?') ? "&" : "?",
                         escope ? escope : "", esvc ? "&service=" : "", esvc ? esvc : "") < 0)
                url = NULL;
            sink sk = {.fd = -1, .max = 1 << 20};
            long st = 0;
            int tr = 0;
            if (url == NULL) {
                snprintf(err, errlen, "out of memory");
            } else if (perform(cl, url, "application/json", &sk, 0, userpwd, &st, &tr, err,
                               errlen) < 0) {
                *code = 502;
            } else if (st != 200) {
                snprintf(err, errlen, "token server %s refused the %s (HTTP %ld)", realm,
                         userpwd ? "credentials" : "anonymous request", st);
                *code = st == 401 || st == 403 ? 401 : 502;
            } else {
                json_error_t je;
                json_t *j = json_loadb(sk.buf ? sk.buf : "", sk.len, 0, &je);
                const char *tok = j ? json_string_value(json_object_get(j, "token")) : NULL;
                if (tok == NULL && j != NULL)
                    tok = json_string_value(json_object_get(j, "access_token"));
                if (tok == NULL) {
                    snprintf(err, errlen, "token server %s: no token in its answer", realm);
                    *code = 502;
                } else {
                    free(cl->authz);
                    if (asprintf(&cl->authz, "Authorization: Bearer %s", tok) < 0)
                        cl->authz = NULL;
                    rc = cl->authz ? 0 : (snprintf(err, errlen, "out of memory"), -1);
                }
                json_decref(j);
            }
            free(sk.buf);
        }
        curl_free(esvc);
        curl_free(escope);
        free(url);
        free(realm);
        free(service);
        free(scope);
        free(defscope);
    } else {
        snprintf(err, errlen, "registry %s: unsupported auth scheme in '%.60s'", cl->ref.host, ch);
    }
    if (userpwd != NULL) {
        explicit_bzero(userpwd, strlen(userpwd));
        free(userpwd);
    }
    return rc;
}

/* GET path under /v2/<repo>/ with auth and retries. file sinks are resumed
 * from their current length on a retry. 0 with *status, or -1 (err, *code). */
static int request(oci_client *cl, const char *path, const char *accept, sink *sk, long *status,
                   int *code, char *err, size_t errlen)
{
    char *url = NULL;
    if (asprintf(&url, "%s://%s/v2/%s/%s", cl->scheme, cl->ref.host, cl->ref.repo, path) < 0) {
        snprintf(err, errlen, "out of memory");
        *code = 500;
        return -1;
    }
    int authed = 0, rc = -1;
    double delay = 0.5;
    for (int attempt = 0;; attempt++) {
        int transient = 0;
        long long from = 0;
        if (sk->fd >= 0) {
            struct stat st;
            from = fstat(sk->fd, &st) == 0 ? (long long)st.st_size : 0;
        } else {
            sk->len = 0;
        }
        sk->overflow = sk->werr = 0;
        long st = 0;
        if (perform(cl, url, accept, sk, from, NULL, &st, &transient, err, errlen) < 0) {
            *code = 502;
            if (strstr(err, "sent nothing"))
                *code = 504;
            if (!transient || attempt >= RETRIES)
                break;
        } else if (st == 401 && !authed) {
            authed = 1;
            if (authenticate(cl, code, err, errlen) < 0)
                break;
            attempt--;
            continue;
        } else if ((st == 429 || st >= 500) && attempt < RETRIES) {
            snprintf(err, errlen, "HTTP %ld", st);
        } else {
            if (sk->fd >= 0 && from > 0 && st == 200) {
                /* no Range support: what we have was rewritten from 0 */
                snprintf(err, errlen, "restart");
            }
            *status = st;
            rc = 0;
            break;
        }
        /* what a broken 2xx transfer wrote is kept (and hashed): resumed */
        struct timespec ts = {(time_t)delay, (long)((delay - (long)delay) * 1e9)};
        nanosleep(&ts, NULL);
        delay *= 2;
    }
    free(url);
    return rc;
}

int oci_client_init(oci_client *cl, const sl_oci_args *a, char *err, size_t errlen)
{
    memset(cl, 0, sizeof(*cl));
    if (sl_oci_ref_parse(a->ref, &cl->ref, err, errlen) < 0)
        return -1;
    const char *h = cl->ref.host;
    int loopback = strncmp(h, "localhost", 9) == 0 || strncmp(h, "127.", 4) == 0 ||
                   strncmp(h, "[::1]", 5) == 0;
    cl->scheme = (loopback || a->insecure) ? "http" : "https";
    cl->user = a->username;
    cl->pass = a->password;
    cl->stall = a->stall;
    if ((cl->c = curl_easy_init()) == NULL) {
        snprintf(err, errlen, "curl_easy_init failed");
        sl_oci_ref_free(&cl->ref);
        return -1;
    }
    return 0;
}

void oci_client_free(oci_client *cl)
{
    if (cl->c != NULL)
        curl_easy_cleanup(cl->c);
    if (cl->authz != NULL) {
        explicit_bzero(cl->authz, strlen(cl->authz));
        free(cl->authz);
    }
    free(cl->challenge);
    sl_oci_ref_free(&cl->ref);
}

#define ACCEPT_MANIFESTS                                                                           \
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "        \
    "application/vnd.docker.distribution.manifest.list.v2+json, "                                  \
    "application/vnd.docker.distribution.manifest.v2+json"

int oci_get_manifest(oci_client *cl, const char *ref, char **buf, size_t *len, long *status,
                     char *err, size_t errlen)
{
    char *path = NULL;
    int code = 502;
    if (asprintf(&path, "manifests/%s", ref) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    sink sk = {.fd = -1, .max = SL_OCI_META_MAX};
    int rc = request(cl, path, ACCEPT_MANIFESTS, &sk, status, &code, err, errlen);
    free(path);
    if (rc < 0) {
        free(sk.buf);
        *status = code;
        return -1;
    }
    *buf = sk.buf ? sk.buf : strdup("");
    *len = sk.len;
    return *buf ? 0 : -1;
}

int oci_get_blob_mem(oci_client *cl, const char *digest, size_t max, char **buf, size_t *len,
                     char *err, size_t errlen)
{
    char *path = NULL;
    long st = 0;
    int code = 502;
    if (asprintf(&path, "blobs/%s", digest) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    sink sk = {.fd = -1, .max = max};
    int rc = request(cl, path, NULL, &sk, &st, &code, err, errlen);
    free(path);
    if (rc == 0 && st != 200) {
        snprintf(err, errlen, "blob %s: HTTP %ld from the registry", digest, st);
        rc = -1;
    }
    if (rc == 0) {
        char got[72];
        oci_sha256_str(sk.buf ? sk.buf : "", sk.len, got);
        if (strcmp(got, digest) != 0) {
            snprintf(err, errlen, "blob %s: content has digest %s (corrupt or tampered); refused",
                     digest, got);
            rc = -1;
        }
    }
    if (rc < 0) {
        free(sk.buf);
        return -1;
    }
    *buf = sk.buf ? sk.buf : strdup("");
    *len = sk.len;
    return *buf ? 0 : -1;
}

int oci_get_blob_file(oci_client *cl, const char *digest, unsigned long long size,
                      const char *fpath, oci_progress_fn progress, void *arg, char *err,
                      size_t errlen)
{
    int fd = open(fpath, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "open %s: %s", fpath, strerror(errno));
        return -1;
    }
    sink sk = {.fd = fd, .cb = progress, .arg = arg};
    sk.md = EVP_MD_CTX_new();
    int rc = -1;
    if (sk.md == NULL || EVP_DigestInit_ex(sk.md, EVP_sha256(), NULL) != 1) {
        snprintf(err, errlen, "sha256 init failed");
        goto out;
    }
    /* Resume: hash what an earlier attempt left (never more than size). */
    struct stat st;
    if (fstat(fd, &st) < 0 || (unsigned long long)st.st_size > size) {
        if (ftruncate(fd, 0) < 0)
            goto out;
    } else if (st.st_size > 0) {
        char buf[1 << 16];
        ssize_t n;
        while ((n = read(fd, buf, sizeof(buf))) > 0)
            EVP_DigestUpdate(sk.md, buf, (size_t)n);
        sk.done = (unsigned long long)st.st_size;
    }
    lseek(fd, 0, SEEK_END);
    char *path = NULL;
    long status = 0;
    int code = 502;
    if (asprintf(&path, "blobs/%s", digest) < 0) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    if ((unsigned long long)sk.done < size || size == 0) {
        if (request(cl, path, NULL, &sk, &status, &code, err, errlen) < 0) {
            free(path);
            goto out;
        }
        if (status == 200 && strcmp(err, "restart") == 0) {
            /* the server ignored Range: start over from byte 0 */
            err[0] = '\0';
            if (ftruncate(fd, 0) < 0 || lseek(fd, 0, SEEK_SET) < 0) {
                free(path);
                goto out;
            }
            EVP_DigestInit_ex(sk.md, EVP_sha256(), NULL);
            sk.done = 0;
            if (request(cl, path, NULL, &sk, &status, &code, err, errlen) < 0) {
                free(path);
                goto out;
            }
        }
        if (status != 200 && status != 206) {
            snprintf(err, errlen, "blob %s: HTTP %ld from the registry", digest, status);
            free(path);
            goto out;
        }
    }
    free(path);
    if (progress != NULL)
        progress(arg, sk.done);
    if (fstat(fd, &st) < 0 || (unsigned long long)st.st_size != size) {
        snprintf(err, errlen,
                 "blob %s: got %lld bytes, the manifest says %llu (truncated or corrupt); refused",
                 digest, (long long)st.st_size, size);
        goto out;
    }
    unsigned char d[32];
    unsigned n = 0;
    char got[72];
    EVP_DigestFinal_ex(sk.md, d, &n);
    strcpy(got, "sha256:");
    for (int i = 0; i < 32; i++)
        sprintf(got + 7 + 2 * i, "%02x", d[i]);
    if (strcmp(got, digest) != 0) {
        snprintf(err, errlen, "blob %s: content has digest %s (corrupt or tampered); refused",
                 digest, got);
        goto out;
    }
    rc = 0;
out:
    EVP_MD_CTX_free(sk.md);
    close(fd);
    if (rc < 0 && strstr(err, "refused") != NULL)
        unlink(fpath); /* a bad blob is not resumed from */
    return rc;
}
