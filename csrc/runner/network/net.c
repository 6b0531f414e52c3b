/* net.c - a sandbox's network: the "network" and "ports" options, a /30 per
 * sandbox out of the runner's pool, and the nftables table that enforces the
 * policy. The veth pair itself is made by the sandbox layer (sl_net.c); the
 * port tunnels are in tunnel.c.
 *
 * Default (no "network", no "ports"): nothing here runs, the sandbox has only
 * lo. Otherwise the sandbox gets eth0 = the pool's /30 ".2", default route via
 * the host side ".1", and its host-side interface name goes into the sets of
 * the runner's table `inet sandlot_<hash of the state dir>` (one runner per
 * state dir; the table's comment names its runner, and a starting runner
 * deletes the tables of runners that are gone, see sweep_stale). The rules
 * are fixed at runner start; per sandbox only set elements are added (one
 * transaction through libnftables in-process, before the pair exists) and
 * removed (an nft child once init is reaped, see drop_elements):
 *
 *   input:   from a sandbox, only replies to connections the host opened
 *            (the tunnels) reach the host itself: the runner's TCP port, the
 *            host side's address, every host-local service are dropped.
 *   forward: IPv6 and spoofed source addresses dropped; replies into a
 *            sandbox accepted; sandbox -> sandbox dropped; egress "all"
 *            accepted; an allow list accepted per (interface, CIDR); the rest
 *            from or to a sandbox dropped.
 *   output:  the host reaches a sandbox only on its listed ports (tunnels).
 *   postrouting: what leaves for elsewhere is masqueraded.
 *
 * Host names in an allow list are resolved once, here, at create time
 * (getaddrinfo, IPv4): later DNS changes are not followed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include <nftables/libnftables.h>

#include "sl_log.h"
#include "sl_runner.h"

#define MAX_ALLOW 64
#define MAX_PORTS 16
#define SLOT_PREFIX 30
/* Serialises address allocation between runners on one host (each checks
 * the routing table, then adds its address). */
#define LOCK_PATH "/run/sandlot-net.lock"
#define FORWARD_PATH "/proc/sys/net/ipv4/ip_forward"

enum sl_egress { SL_EGRESS_NONE = 0, SL_EGRESS_ALL, SL_EGRESS_LIST };

typedef struct sl_cidr {
    uint32_t addr; /* network byte order, host bits cleared */
    int len;
} sl_cidr;

struct sl_netbox {
    enum sl_egress egress;
    char **given; /* the allow list as asked (CIDRs and names) */
    size_t ngiven;
    sl_cidr *cidrs; /* resolved and without overlaps */
    size_t ncidrs;
    uint16_t ports[MAX_PORTS];
    size_t nports;
    long slot;         /* index of the /30 in the pool, -1: none */
    int in_nft;        /* the set elements are in the table */
    int locked;        /* holds the allocation lock until spawned */
    sl_net_config cfg; /* what the sandbox layer gets */
    struct sl_tunnel *tunnels;
};

struct sl_netstate {
    struct nft_ctx *nft;
    char table[32];
    uint32_t pool; /* network byte order */
    int pool_len;
    size_t nslots;
    unsigned char *used;
    size_t next;
    int lock_fd;
    int ready;        /* the table exists */
    char nft_bin[32]; /* the nft program for asynchronous removals, "" if none */
    int forward_set;  /* this runner turned ip_forward on */
    char why[256];    /* why networking is unavailable, when !ready */
};

/* ---- helpers ---- */

static void cidr_str(const sl_cidr *c, char *buf, size_t len)
{
    char a[INET_ADDRSTRLEN];
    struct in_addr in = {.s_addr = c->addr};

    inet_ntop(AF_INET, &in, a, sizeof(a));
    snprintf(buf, len, "%s/%d", a, c->len);
}

/* "a.b.c.d" or "a.b.c.d/n": 1 parsed, 0 not an IPv4 literal, -1 bad prefix. */
static int parse_cidr(const char *s, sl_cidr *out)
{
    char buf[INET_ADDRSTRLEN + 4];
    const char *slash = strchr(s, '/');
    size_t alen = slash ? (size_t)(slash - s) : strlen(s);
    struct in_addr in;
    int len = 32;

    if (alen >= INET_ADDRSTRLEN)
        return 0;
    memcpy(buf, s, alen);
    buf[alen] = '\0';
    if (inet_pton(AF_INET, buf, &in) != 1)
        return 0;
    if (slash) {
        char *end;
        long v = strtol(slash + 1, &end, 10);

        if (slash[1] == '\0' || *end != '\0' || v < 1 || v > 32)
            return -1;
        len = (int)v;
    }
    out->addr = in.s_addr & sl_net_mask(len);
    out->len = len;
    return 1;
}

/* RFC 1123 host name characters; no resolver is asked about anything else. */
static int valid_hostname(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 253 || s[0] == '-' || s[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.'))
            return 0;
    }
    return 1;
}

static int add_cidr(sl_netbox *n, sl_cidr c, sl_err *e)
{
    sl_cidr *v = realloc(n->cidrs, (n->ncidrs + 1) * sizeof(*v));

    if (v == NULL)
        return sl_err_set(e, 500, "out of memory");
    n->cidrs = v;
    n->cidrs[n->ncidrs++] = c;
    return 0;
}

/* Drop every CIDR covered by another (nft refuses overlapping intervals). */
static void normalise(sl_netbox *n)
{
    size_t k = 0;

    for (size_t i = 0; i < n->ncidrs; i++) {
        int covered = 0;

        for (size_t j = 0; j < n->ncidrs && !covered; j++) {
            const sl_cidr *a = &n->cidrs[i], *b = &n->cidrs[j];

            if (i == j || b->len > a->len || (a->addr & sl_net_mask(b->len)) != b->addr)
                continue;
            /* b covers a; of two equal ones keep the first. */
            covered = b->len < a->len || j < i;
        }
        if (!covered)
            n->cidrs[k++] = n->cidrs[i];
    }
    n->ncidrs = k;
}

static int resolve(sl_netbox *n, const char *name, sl_err *e)
{
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(name, NULL, &hints, &res);

    if (rc != 0)
        return sl_err_set(e, 400, "field 'network.egress': cannot resolve host name '%.200s': %s",
                          name, rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ai->ai_addr;
        sl_cidr c = {.addr = sin->sin_addr.s_addr, .len = 32};

        if (add_cidr(n, c, e) < 0) {
            freeaddrinfo(res);
            return -1;
        }
    }
    freeaddrinfo(res);
    return 0;
}

static int parse_egress(sl_netbox *n, const msgpack_object *v, const char *field, sl_err *e)
{
    if (v == NULL || v->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (v->type == MSGPACK_OBJECT_STR) {
        if (v->via.str.size == 4 && memcmp(v->via.str.ptr, "none", 4) == 0)
            n->egress = SL_EGRESS_NONE;
        else if (v->via.str.size == 3 && memcmp(v->via.str.ptr, "all", 3) == 0)
            n->egress = SL_EGRESS_ALL;
        else
            return sl_err_set(e, 400,
                              "field '%s.egress' must be \"none\", \"all\" or a list of CIDRs and "
                              "host names, got \"%.*s\"",
                              field, (int)(v->via.str.size > 64 ? 64 : v->via.str.size),
                              v->via.str.ptr);
        return 0;
    }
    if (v->type != MSGPACK_OBJECT_ARRAY)
        return sl_err_set(e, 400,
                          "field '%s.egress' must be \"none\", \"all\" or a list of CIDRs and host "
                          "names, got %s",
                          field, sl_msg_type_name(v));
    if (v->via.array.size > MAX_ALLOW)
        return sl_err_set(e, 400, "field '%s.egress': at most %d entries, got %u", field, MAX_ALLOW,
                          v->via.array.size);
    n->egress = SL_EGRESS_LIST;
    n->given = calloc(v->via.array.size + 1, sizeof(*n->given));
    if (n->given == NULL)
        return sl_err_set(e, 500, "out of memory");
    for (uint32_t i = 0; i < v->via.array.size; i++) {
        const msgpack_object *s = &v->via.array.ptr[i];
        char buf[256];
        sl_cidr c;
        int r;

        if (s->type != MSGPACK_OBJECT_STR || s->via.str.size == 0 ||
            s->via.str.size >= sizeof(buf) || memchr(s->via.str.ptr, '\0', s->via.str.size))
            return sl_err_set(e, 400,
                              "field '%s.egress[%u]' must be a CIDR (\"10.1.0.0/16\"), an IPv4 "
                              "address or a host name",
                              field, i);
        memcpy(buf, s->via.str.ptr, s->via.str.size);
        buf[s->via.str.size] = '\0';
        if ((n->given[i] = strdup(buf)) == NULL)
            return sl_err_set(e, 500, "out of memory");
        n->ngiven = i + 1;
        if (strchr(buf, ':') != NULL)
            return sl_err_set(e, 400,
                              "field '%s.egress[%u]': '%.200s' is IPv6; sandboxes get IPv4 only",
                              field, i, buf);
        r = parse_cidr(buf, &c);
        if (r < 0)
            return sl_err_set(e, 400,
                              "field '%s.egress[%u]': bad prefix length in '%.200s' (1..32; use "
                              "\"all\" for everything)",
                              field, i, buf);
        if (r == 1) {
            if (add_cidr(n, c, e) < 0)
                return -1;
            continue;
        }
        if (!valid_hostname(buf))
            return sl_err_set(e, 400,
                              "field '%s.egress[%u]': '%.200s' is neither a CIDR, an IPv4 "
                              "address nor a host name",
                              field, i, buf);
        if (resolve(n, buf, e) < 0)
            return -1;
    }
    normalise(n);
    return 0;
}

static int parse_network(sl_netbox *n, const msgpack_object *net, const char *field, sl_err *e)
{
    if (net == NULL || net->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (net->type != MSGPACK_OBJECT_MAP)
        return sl_err_set(e, 400, "field '%s' must be a map, got %s", field, sl_msg_type_name(net));
    for (uint32_t i = 0; i < net->via.map.size; i++) {
        const msgpack_object *k = &net->via.map.ptr[i].key;

        if (k->type != MSGPACK_OBJECT_STR || k->via.str.size != 6 ||
            memcmp(k->via.str.ptr, "egress", 6) != 0)
            return sl_err_set(e, 400, "field '%s': unknown key '%.*s' (expected egress)", field,
                              k->type == MSGPACK_OBJECT_STR
                                  ? (int)(k->via.str.size > 32 ? 32 : k->via.str.size)
                                  : 1,
                              k->type == MSGPACK_OBJECT_STR ? k->via.str.ptr : "?");
    }
    return parse_egress(n, sl_msg_field(net, "egress"), field, e);
}

static int parse_ports(sl_netbox *n, const msgpack_object *v, sl_err *e)
{
    if (v == NULL || v->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (v->type != MSGPACK_OBJECT_ARRAY)
        return sl_err_set(e, 400, "field 'ports' must be a list of TCP port numbers, got %s",
                          sl_msg_type_name(v));
    if (v->via.array.size > MAX_PORTS)
        return sl_err_set(e, 400, "field 'ports': at most %d ports, got %u", MAX_PORTS,
                          v->via.array.size);
    for (uint32_t i = 0; i < v->via.array.size; i++) {
        const msgpack_object *p = &v->via.array.ptr[i];

        if (p->type != MSGPACK_OBJECT_POSITIVE_INTEGER || p->via.u64 < 1 || p->via.u64 > 65535)
            return sl_err_set(e, 400, "field 'ports[%u]' must be a TCP port in [1, 65535]", i);
        for (size_t j = 0; j < n->nports; j++) {
            if (n->ports[j] == p->via.u64)
                return sl_err_set(e, 400, "field 'ports': port %u is listed twice",
                                  (unsigned)p->via.u64);
        }
        n->ports[n->nports++] = (uint16_t)p->via.u64;
    }
    return 0;
}

static void netbox_free(sl_netbox *n)
{
    if (n == NULL)
        return;
    sl_strv_free(n->given, n->ngiven);
    free(n->cidrs);
    free(n);
}

/* ---- parsing entry points ---- */

static int parse_into(sl_box *b, const msgpack_object *net, const msgpack_object *ports,
                      const char *field, sl_err *e)
{
    sl_netbox *n;

    if ((net == NULL || net->type == MSGPACK_OBJECT_NIL) &&
        (ports == NULL || ports->type == MSGPACK_OBJECT_NIL))
        return 0; /* the default: lo only, nothing allocated */
    n = calloc(1, sizeof(*n));
    if (n == NULL)
        return sl_err_set(e, 500, "out of memory");
    n->slot = -1;
    if (parse_network(n, net, field, e) < 0 || parse_ports(n, ports, e) < 0) {
        netbox_free(n);
        return -1;
    }
    /* egress "none" without ports is the default: no veth at all. */
    if (n->egress == SL_EGRESS_NONE && n->nports == 0) {
        netbox_free(n);
        return 0;
    }
    b->net = n;
    return 0;
}

int sl_net_parse(sl_box *b, const msgpack_object *body, sl_err *e)
{
    return parse_into(b, sl_msg_field(body, "network"), sl_msg_field(body, "ports"), "network", e);
}

int sl_net_from_opts(sl_box *b, const char *opts, size_t len, sl_err *e)
{
    msgpack_unpacked up;
    const msgpack_object *net;
    int rc = sl_msg_stored_field(opts, len, "network", &up, &net, e);

    /* Workers get the egress policy; their ports would have no caller to
     * hand the tunnels to, so they are not opened (docs/protocol.md). */
    if (rc == 0)
        rc = parse_into(b, net, NULL, "options.network", e);
    msgpack_unpacked_destroy(&up);
    return rc;
}

/* ---- nftables ---- */

/* Run one nft transaction; on failure the message is nft's own. */
static int nft_run(sl_netstate *ns, const char *cmd, char *err, size_t errlen)
{
    int rc = nft_run_cmd_from_buffer(ns->nft, cmd);
    const char *msg = nft_ctx_get_error_buffer(ns->nft);

    if (rc != 0 && err != NULL) {
        snprintf(err, errlen, "%s", msg && *msg ? msg : "nft failed");
        /* One line is enough for a log or a reply. */
        char *nl = strchr(err, '\n');
        if (nl != NULL)
            *nl = '\0';
    }
    return rc;
}

static const char TABLE_FMT[] =
    "add table inet %1$s\n"
    "delete table inet %1$s\n"
    "table inet %1$s {\n"
    "  comment \"sandlotd %2$d %3$llu\"\n"
    "  set ifaces { type ifname; }\n"
    "  set addrs { type ifname . ipv4_addr; }\n"
    "  set egress_all { type ifname; }\n"
    "  set allow { type ifname . ipv4_addr; flags interval; }\n"
    "  set ports { type ifname . inet_service; }\n"
    "  chain input { type filter hook input priority filter - 1; policy accept;\n"
    "    iifname @ifaces ct state established,related accept\n"
    "    iifname @ifaces drop\n"
    "  }\n"
    "  chain forward { type filter hook forward priority filter - 1; policy accept;\n"
    "    iifname @ifaces meta nfproto ipv6 drop\n"
    "    iifname @ifaces iifname . ip saddr != @addrs drop\n"
    "    oifname @ifaces ct state established,related accept\n"
    "    iifname @ifaces oifname @ifaces drop\n"
    "    iifname @egress_all accept\n"
    "    iifname . ip daddr @allow accept\n"
    "    iifname @ifaces drop\n"
    "    oifname @ifaces drop\n"
    "  }\n"
    "  chain output { type filter hook output priority filter - 1; policy accept;\n"
    "    oifname @ifaces ct state established,related accept\n"
    "    oifname . tcp dport @ports accept\n"
    "    oifname @ifaces drop\n"
    "  }\n"
    "  chain postrouting { type nat hook postrouting priority srcnat; policy accept;\n"
    "    iifname @ifaces oifname != @ifaces masquerade\n"
    "  }\n"
    "}\n";

static uint32_t fnv(const char *s)
{
    uint32_t h = 2166136261u;

    for (; *s != '\0'; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

/* The start time of pid (clock ticks since boot, /proc/<pid>/stat field 22),
 * or 0 if it is gone: with the pid it names one process for good. */
static unsigned long long proc_start(pid_t pid)
{
    char path[64], buf[1024];
    unsigned long long start = 0;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    f = fopen(path, "re");
    if (f == NULL)
        return 0;
    if (fgets(buf, sizeof(buf), f) != NULL) {
        const char *p = strrchr(buf, ')'); /* comm may hold spaces and ')' */

        /* After ") ": state is field 3, starttime field 22. */
        if (p == NULL ||
            sscanf(p + 2,
                   "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d "
                   "%*d %llu",
                   &start) != 1)
            start = 0;
    }
    fclose(f);
    return start;
}

/* pid no longer exists, or is another process now (pid reuse). */
static int runner_gone(pid_t pid, unsigned long long start)
{
    unsigned long long now;

    if (kill(pid, 0) < 0 && errno == ESRCH)
        return 1;
    now = proc_start(pid);
    return now != 0 && now != start;
}

/* Delete the tables of runners that died without removing theirs (SIGKILL,
 * a crash): each table names its runner (pid and start time) in its
 * comment. Tables without that comment are left alone. */
static void sweep_stale(sl_netstate *ns)
{
    char *names = NULL, *save = NULL, cmd[96];
    const char *out;
    size_t n = 0;

    if (nft_run(ns, "list tables inet", NULL, 0) != 0 ||
        (out = nft_ctx_get_output_buffer(ns->nft)) == NULL || (names = strdup(out)) == NULL)
        return;
    for (char *line = strtok_r(names, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        char t[32], err[256];
        const char *c;
        int pid;
        unsigned long long start;

        if (sscanf(line, "table inet %31s", t) != 1 || strncmp(t, "sandlot_", 8) != 0 ||
            strcmp(t, ns->table) == 0)
            continue;
        snprintf(cmd, sizeof(cmd), "list table inet %s", t);
        if (nft_run(ns, cmd, NULL, 0) != 0 || (out = nft_ctx_get_output_buffer(ns->nft)) == NULL ||
            (c = strstr(out, "comment \"sandlotd ")) == NULL ||
            sscanf(c, "comment \"sandlotd %d %llu\"", &pid, &start) != 2)
            continue;
        /* Only a runner that is certainly gone: deleting a live runner's
         * table would leave its sandboxes unfiltered. */
        if (pid <= 0 || start == 0 || !runner_gone(pid, start))
            continue;
        snprintf(cmd, sizeof(cmd), "delete table inet %s", t);
        if (nft_run(ns, cmd, err, sizeof(err)) == 0)
            n++;
        else
            sl_warn("cannot delete the stale table inet %s: %s", t, err);
    }
    free(names);
    if (n > 0)
        sl_info("deleted %zu nftables table(s) of runners that are gone", n);
}

int sl_net_init(sl_runner *rt, const char *pool)
{
    sl_netstate *ns = calloc(1, sizeof(*ns));
    sl_cidr c;
    char *cmd = NULL;

    if (ns == NULL)
        return -1;
    rt->net = ns;
    ns->lock_fd = -1;
    if (pool == NULL)
        pool = SL_NET_POOL_DEFAULT;
    if (parse_cidr(pool, &c) != 1 || c.len < 8 || c.len > 28) {
        sl_error("--net-pool must be an IPv4 CIDR with a prefix of 8..28, got %s", pool);
        return -1;
    }
    ns->pool = c.addr;
    ns->pool_len = c.len;
    ns->nslots = (size_t)1 << (SLOT_PREFIX - c.len);
    ns->used = calloc(ns->nslots, 1);
    if (ns->used == NULL)
        return -1;
    snprintf(ns->table, sizeof(ns->table), "sandlot_%08x", fnv(rt->state_dir));
    {
        static const char *const bins[] = {"/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"};

        for (size_t i = 0; i < sizeof(bins) / sizeof(bins[0]) && !ns->nft_bin[0]; i++) {
            if (access(bins[i], X_OK) == 0)
                snprintf(ns->nft_bin, sizeof(ns->nft_bin), "%s", bins[i]);
        }
    }
    if (sl_net_route_overlaps(ns->pool, ns->pool_len) > 0) {
        char p[32];

        cidr_str(&c, p, sizeof(p));
        sl_warn("address pool %s overlaps routes of this host; sandboxes get only the parts "
                "that do not (pick another with --net-pool)",
                p);
    }
    /* Networking is optional: without nftables a runner still serves every
     * sandbox that asks for none, and the others get a clear 503. */
    if (rt->userns) {
        /* Veth pairs and nftables rules in the host's namespace need root
         * there; a user namespace does not give that. Say so, rather than
         * the EPERM of the first nft command. */
        snprintf(ns->why, sizeof(ns->why),
                 "a rootless runner cannot create veth pairs or nftables rules on the host "
                 "(run sandlotd as root for network= and ports=)");
        sl_info("networking unavailable: %s", ns->why);
        return 0;
    }
    ns->nft = nft_ctx_new(NFT_CTX_DEFAULT);
    if (ns->nft == NULL || nft_ctx_buffer_output(ns->nft) != 0 ||
        nft_ctx_buffer_error(ns->nft) != 0) {
        snprintf(ns->why, sizeof(ns->why), "libnftables could not be initialised");
        sl_warn("networking unavailable: %s", ns->why);
        return 0;
    }
    sweep_stale(ns);
    if (asprintf(&cmd, TABLE_FMT, ns->table, (int)getpid(), proc_start(getpid())) < 0)
        return -1;
    if (nft_run(ns, cmd, ns->why, sizeof(ns->why)) != 0) {
        sl_warn("networking unavailable: cannot create nftables table inet %s: %s", ns->table,
                ns->why);
    } else {
        ns->ready = 1;
        sl_info("nftables table inet %s ready (address pool %s)", ns->table, pool);
    }
    free(cmd);
    return 0;
}

void sl_net_shutdown(sl_runner *rt)
{
    sl_netstate *ns = rt->net;
    char cmd[64], err[256];

    if (ns == NULL)
        return;
    if (ns->ready) {
        snprintf(cmd, sizeof(cmd), "delete table inet %s\n", ns->table);
        if (nft_run(ns, cmd, err, sizeof(err)) != 0)
            sl_warn("cannot delete nftables table inet %s: %s", ns->table, err);
        ns->ready = 0;
    }
    if (ns->nft != NULL)
        nft_ctx_free(ns->nft);
    if (ns->lock_fd >= 0)
        close(ns->lock_fd);
    free(ns->used);
    free(ns);
    rt->net = NULL;
}

/* The set elements of one sandbox, for "add" or "delete". */
static char *elements(const sl_netstate *ns, const sl_netbox *n, const char *verb)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    const char *ifn = n->cfg.host_if;
    char a[INET_ADDRSTRLEN];
    struct in_addr in = {.s_addr = n->cfg.sandbox_addr};

    if (f == NULL)
        return NULL;
    inet_ntop(AF_INET, &in, a, sizeof(a));
    fprintf(f, "%s element inet %s ifaces { \"%s\" }\n", verb, ns->table, ifn);
    fprintf(f, "%s element inet %s addrs { \"%s\" . %s }\n", verb, ns->table, ifn, a);
    if (n->egress == SL_EGRESS_ALL)
        fprintf(f, "%s element inet %s egress_all { \"%s\" }\n", verb, ns->table, ifn);
    if (n->egress == SL_EGRESS_LIST && n->ncidrs > 0) {
        fprintf(f, "%s element inet %s allow {", verb, ns->table);
        for (size_t i = 0; i < n->ncidrs; i++) {
            char c[32];

            cidr_str(&n->cidrs[i], c, sizeof(c));
            fprintf(f, "%s \"%s\" . %s", i ? "," : "", ifn, c);
        }
        fprintf(f, " }\n");
    }
    if (n->nports > 0) {
        fprintf(f, "%s element inet %s ports {", verb, ns->table);
        for (size_t i = 0; i < n->nports; i++)
            fprintf(f, "%s \"%s\" . %u", i ? "," : "", ifn, n->ports[i]);
        fprintf(f, " }\n");
    }
    if (fclose(f) != 0) {
        free(out);
        return NULL;
    }
    return out;
}

static void unlock(sl_netstate *ns, sl_netbox *n)
{
    if (n->locked && ns->lock_fd >= 0)
        flock(ns->lock_fd, LOCK_UN);
    n->locked = 0;
}

/* Pick a free /30 that no route of the host overlaps (another runner's
 * sandboxes show up there as connected routes). Called with the lock held. */
static long pick_slot(sl_netstate *ns, sl_err *e)
{
    for (size_t k = 0; k < ns->nslots; k++) {
        size_t s = (ns->next + k) % ns->nslots;
        uint32_t net = htonl(ntohl(ns->pool) + (uint32_t)(s * 4));
        int r;

        if (ns->used[s])
            continue;
        r = sl_net_route_overlaps(net, SLOT_PREFIX);
        if (r < 0)
            return sl_err_set(e, 500, "read the routing table: %s", strerror(-r));
        if (r > 0)
            continue;
        ns->next = (s + 1) % ns->nslots;
        return (long)s;
    }
    return sl_err_set(e, 503,
                      "no free address in the sandbox network pool (%zu in use or "
                      "taken by host routes)",
                      ns->nslots);
}

static int set_forwarding(sl_netstate *ns, sl_err *e)
{
    char c = '0';
    int fd = open(FORWARD_PATH, O_RDWR | O_CLOEXEC);

    if (fd < 0)
        return sl_err_set(e, 500, "open %s: %s", FORWARD_PATH, strerror(errno));
    if (read(fd, &c, 1) == 1 && c == '1') {
        close(fd);
        return 0;
    }
    if (pwrite(fd, "1\n", 2, 0) != 2) {
        int err = errno;

        close(fd);
        return sl_err_set(e, 500, "turn on %s: %s", FORWARD_PATH, strerror(err));
    }
    close(fd);
    ns->forward_set = 1;
    sl_info("turned on net.ipv4.ip_forward for sandbox egress (left on at stop: other "
            "runners may rely on it)");
    return 0;
}

int sl_net_prepare(sl_box *b, sl_err *e)
{
    sl_runner *rt = b->rt;
    sl_netstate *ns = rt->net;
    sl_netbox *n = b->net;
    char *cmd, err[256];
    long s;

    if (n == NULL)
        return 0;
    /* 400 like a limit this runner cannot enforce: the request asks for what
     * this host cannot give (a 503 would read as "the runner is down"). */
    if (ns == NULL || !ns->ready)
        return sl_err_set(e, 400,
                          "fields 'network'/'ports': this runner cannot give sandboxes a network "
                          "(%s); `sandlot runner status` says why",
                          ns != NULL ? ns->why : "not initialised");
    if (n->egress != SL_EGRESS_NONE && set_forwarding(ns, e) < 0)
        return -1;
    if (ns->lock_fd < 0) {
        ns->lock_fd = open(LOCK_PATH, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (ns->lock_fd < 0)
            return sl_err_set(e, 500, "open %s: %s", LOCK_PATH, strerror(errno));
    }
    if (flock(ns->lock_fd, LOCK_EX) < 0)
        return sl_err_set(e, 500, "lock %s: %s", LOCK_PATH, strerror(errno));
    n->locked = 1;
    s = pick_slot(ns, e);
    if (s < 0) {
        unlock(ns, n);
        return -1;
    }
    n->slot = s;
    ns->used[s] = 1;
    /* "sl" + 12 hex digits of the id: unique per runner, at most 15 bytes. */
    snprintf(n->cfg.host_if, sizeof(n->cfg.host_if), "sl%.12s", b->id + 3);
    n->cfg.prefix = SLOT_PREFIX;
    n->cfg.host_addr = htonl(ntohl(ns->pool) + (uint32_t)(s * 4) + 1);
    n->cfg.sandbox_addr = htonl(ntohl(ns->pool) + (uint32_t)(s * 4) + 2);
    /* The rules are in place before the pair exists: nothing the sandbox
     * ever sends is unfiltered. */
    cmd = elements(ns, n, "add");
    if (cmd == NULL) {
        sl_net_release(b);
        return sl_err_set(e, 500, "out of memory");
    }
    if (nft_run(ns, cmd, err, sizeof(err)) != 0) {
        free(cmd);
        sl_net_release(b);
        return sl_err_set(e, 500, "nftables: %s", err);
    }
    free(cmd);
    n->in_nft = 1;
    return 0;
}

const sl_net_config *sl_net_config_of(const sl_box *b)
{
    return b->net != NULL && b->net->slot >= 0 ? &b->net->cfg : NULL;
}

int sl_net_spawned(sl_box *b, sl_err *e)
{
    sl_netbox *n = b->net;

    if (n == NULL)
        return 0;
    /* The host side has its address now: another runner's check sees it. */
    unlock(b->rt->net, n);
    return sl_tunnels_open(b, n->cfg.sandbox_addr, n->ports, n->nports, &n->tunnels, e);
}

static void on_nft_done(sl_runner *rt, void *arg, int status, const char *err)
{
    (void)rt;
    (void)arg;
    if (status != 0)
        sl_warn("nft (removing a sandbox's set elements) failed: %s", err);
}

/* Removing set elements costs an RCU grace period in the kernel's commit
 * (~18 ms here, against ~2 ms to add them), so after init was reaped it runs
 * in an nft child process instead of stalling the loop; nothing of the
 * sandbox runs any more by then. At shutdown the table goes as a whole. */
static void drop_elements(sl_box *b)
{
    sl_netbox *n = b->net;
    sl_netstate *ns = b->rt->net;

    if (n->in_nft && ns != NULL && ns->ready && !b->rt->shutting_down) {
        char *cmd = elements(ns, n, "delete"), err[256];
        char *argv[] = {ns->nft_bin, cmd, NULL};

        if (cmd == NULL)
            sl_warn("sandbox %s: cannot remove its nftables elements: out of memory", b->id);
        else if (ns->nft_bin[0] == '\0' || sl_job_run(b->rt, argv, on_nft_done, NULL) < 0) {
            if (nft_run(ns, cmd, err, sizeof(err)) != 0)
                sl_warn("sandbox %s: cannot remove its nftables elements: %s", b->id, err);
        }
        free(cmd);
    }
    n->in_nft = 0;
}

void sl_net_stop(sl_box *b)
{
    /* Only the tunnels: the pair and its rules stay until init is reaped,
     * so a sandbox that is still dying stays filtered. */
    if (b->net != NULL)
        sl_tunnels_close(&b->net->tunnels);
}

void sl_net_release(sl_box *b)
{
    sl_netbox *n = b->net;
    sl_netstate *ns = b->rt->net;

    if (n == NULL)
        return;
    sl_tunnels_close(&n->tunnels);
    /* Every process of the sandbox is gone; the pair goes with its network
     * namespace (the kernel's cleanup), and until it has, the route check in
     * pick_slot keeps its /30 from being handed out again. */
    drop_elements(b);
    if (ns != NULL) {
        unlock(ns, n);
        if (n->slot >= 0 && (size_t)n->slot < ns->nslots)
            ns->used[n->slot] = 0;
    }
    n->slot = -1;
}

void sl_net_free(sl_box *b)
{
    if (b->net == NULL)
        return;
    sl_net_release(b);
    netbox_free(b->net);
    b->net = NULL;
}

/* ---- reporting ---- */

static void pack_addr(sl_resp *r, const char *k, uint32_t addr)
{
    char a[INET_ADDRSTRLEN];
    struct in_addr in = {.s_addr = addr};

    inet_ntop(AF_INET, &in, a, sizeof(a));
    sl_r_kstr(r, k, a);
}

void sl_net_pack(sl_resp *r, const sl_box *b)
{
    const sl_netbox *n = b->net;

    if (n == NULL) {
        sl_r_nil(r);
        return;
    }
    sl_r_map(r, 5);
    sl_r_str(r, "egress");
    if (n->egress == SL_EGRESS_LIST) {
        sl_r_arr(r, n->ngiven);
        for (size_t i = 0; i < n->ngiven; i++)
            sl_r_str(r, n->given[i]);
    } else {
        sl_r_str(r, n->egress == SL_EGRESS_ALL ? "all" : "none");
    }
    sl_r_str(r, "allowed"); /* the allow list as enforced: names resolved at create */
    sl_r_arr(r, n->ncidrs);
    for (size_t i = 0; i < n->ncidrs; i++) {
        char c[32];

        cidr_str(&n->cidrs[i], c, sizeof(c));
        sl_r_str(r, c);
    }
    if (n->slot >= 0) {
        pack_addr(r, "address", n->cfg.sandbox_addr);
        pack_addr(r, "gateway", n->cfg.host_addr);
    } else {
        sl_r_kstr(r, "address", NULL);
        sl_r_kstr(r, "gateway", NULL);
    }
    sl_r_str(r, "ports");
    sl_r_arr(r, n->nports);
    for (size_t i = 0; i < n->nports; i++)
        sl_r_int(r, n->ports[i]);
}

void sl_net_pack_health(sl_resp *r, const sl_runner *rt)
{
    const sl_netstate *ns = rt->net;
    char p[32] = "";

    if (ns != NULL) {
        sl_cidr c = {.addr = ns->pool, .len = ns->pool_len};

        cidr_str(&c, p, sizeof(p));
    }
    sl_r_map(r, 4);
    sl_r_kbool(r, "available", ns != NULL && ns->ready);
    sl_r_kstr(r, "table", ns != NULL && ns->ready ? ns->table : NULL);
    sl_r_kstr(r, "pool", ns != NULL ? p : NULL);
    sl_r_kstr(r, "reason", ns != NULL && !ns->ready ? ns->why : NULL);
}

void sl_h_tunnels(sl_req *r)
{
    sl_box *b = sl_req_box(r);
    sl_resp resp;

    if (b == NULL)
        return;
    sl_resp_init(&resp);
    sl_r_map(&resp, 1);
    sl_r_str(&resp, "tunnels");
    sl_tunnels_pack(&resp, b->net != NULL && b->alive ? b->net->tunnels : NULL);
    sl_reply(r, 200, &resp);
}
