/* tunnel.c - a sandbox's listed ports on host loopback ports: a TCP proxy in
 * the runner's event loop (libevent listeners and bufferevents).
 *
 * Each listed port gets a listener on 127.0.0.1:<ephemeral>; every accepted
 * connection is paired with a connection to <sandbox address>:<port> over the
 * sandbox's veth, and bytes are moved both ways with backpressure (a side
 * stops being read while the other's output holds more than HIGH_WATER). A
 * half close is passed on (shutdown(SHUT_WR) once the other side's output has
 * drained), so request/response protocols that close their write side work.
 * Why a proxy rather than DNAT: DNAT from 127.0.0.1 needs route_localnet on
 * the host (martian loopback packets routed to other interfaces, host-wide),
 * and a proxy dies with the sandbox by construction (docs/architecture.md).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>

#include "sl_log.h"
#include "sl_runner.h"

#define HIGH_WATER ((size_t)1 << 20)
#define MAX_CONNS 128 /* per tunnel: a client cannot use up the runner's fds */

struct sl_tconn;

typedef struct sl_tunnel {
    sl_runner *rt;
    uint32_t addr; /* the sandbox's, network byte order */
    uint16_t container_port;
    uint16_t host_port;
    struct evconnlistener *lis;
    struct sl_tconn *conns;
    size_t nconns;
    struct sl_tunnel *next;
} sl_tunnel;

typedef struct sl_tconn {
    sl_tunnel *t;
    struct bufferevent *side[2]; /* 0: the host's client, 1: the sandbox */
    int eof[2];                  /* that side sent FIN */
    struct sl_tconn *prev, *next;
} sl_tconn;

static void conn_free(sl_tconn *c)
{
    sl_tunnel *t = c->t;

    for (int i = 0; i < 2; i++) {
        if (c->side[i] != NULL)
            bufferevent_free(c->side[i]);
    }
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        t->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    t->nconns--;
    free(c);
}

static int side_of(const sl_tconn *c, const struct bufferevent *bev)
{
    return bev == c->side[0] ? 0 : 1;
}

/* Pass a FIN on once the data before it has gone out; free when both sides
 * are done. Returns 1 if c was freed. */
static int settle(sl_tconn *c)
{
    for (int i = 0; i < 2; i++) {
        struct bufferevent *out = c->side[!i];

        if (c->eof[i] && evbuffer_get_length(bufferevent_get_output(out)) == 0)
            shutdown(bufferevent_getfd(out), SHUT_WR);
    }
    if (c->eof[0] && c->eof[1] && evbuffer_get_length(bufferevent_get_output(c->side[0])) == 0 &&
        evbuffer_get_length(bufferevent_get_output(c->side[1])) == 0) {
        conn_free(c);
        return 1;
    }
    return 0;
}

/* Move what bev read to the other side. -1 (nothing freed) when out of memory. */
static int move(sl_tconn *c, struct bufferevent *bev)
{
    int i = side_of(c, bev);
    struct evbuffer *out = bufferevent_get_output(c->side[!i]);

    if (evbuffer_add_buffer(out, bufferevent_get_input(bev)) != 0)
        return -1;
    if (evbuffer_get_length(out) >= HIGH_WATER)
        bufferevent_disable(bev, EV_READ); /* resumed by on_write of the other side */
    return 0;
}

static void on_read(struct bufferevent *bev, void *arg)
{
    sl_tconn *c = arg;

    if (move(c, bev) < 0)
        conn_free(c);
}

/* The output of bev drained (write low-water mark 0). */
static void on_write(struct bufferevent *bev, void *arg)
{
    sl_tconn *c = arg;
    int i = side_of(c, bev);

    if (!c->eof[!i])
        bufferevent_enable(c->side[!i], EV_READ);
    settle(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    sl_tconn *c = arg;
    int i = side_of(c, bev);

    if (what & BEV_EVENT_CONNECTED)
        return;
    if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR)) {
        /* What arrived with the FIN is still in the input buffer. */
        if (move(c, bev) < 0) {
            conn_free(c);
            return;
        }
        c->eof[i] = 1;
        settle(c);
        return;
    }
    /* Reset, refused (nothing listens on the port inside), or an error:
     * both ends close. */
    conn_free(c);
}

static void on_accept(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    (void)lis;
    (void)sa;
    (void)salen;
    sl_tunnel *t = arg;
    struct sockaddr_in to = {
        .sin_family = AF_INET, .sin_port = htons(t->container_port), .sin_addr.s_addr = t->addr};
    sl_tconn *c;

    if (t->nconns >= MAX_CONNS) {
        sl_warn("tunnel to port %u: %d connections already, refusing one", t->container_port,
                MAX_CONNS);
        close(fd);
        return;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return;
    }
    c->t = t;
    c->side[0] = bufferevent_socket_new(t->rt->base, fd, BEV_OPT_CLOSE_ON_FREE);
    c->side[1] = bufferevent_socket_new(t->rt->base, -1, BEV_OPT_CLOSE_ON_FREE);
    c->next = t->conns;
    if (t->conns != NULL)
        t->conns->prev = c;
    t->conns = c;
    t->nconns++;
    if (c->side[0] == NULL) {
        close(fd);
        conn_free(c);
        return;
    }
    if (c->side[1] == NULL) {
        conn_free(c);
        return;
    }
    for (int i = 0; i < 2; i++)
        bufferevent_setcb(c->side[i], on_read, on_write, on_event, c);
    if (bufferevent_socket_connect(c->side[1], (struct sockaddr *)&to, sizeof(to)) != 0) {
        conn_free(c);
        return;
    }
    if (bufferevent_enable(c->side[0], EV_READ | EV_WRITE) != 0 ||
        bufferevent_enable(c->side[1], EV_READ | EV_WRITE) != 0)
        conn_free(c);
}

int sl_tunnels_open(sl_box *b, uint32_t addr, const uint16_t *ports, size_t nports,
                    sl_tunnel **list, sl_err *e)
{
    for (size_t i = 0; i < nports; i++) {
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof(sin);
        sl_tunnel *t = calloc(1, sizeof(*t));

        if (t == NULL)
            return sl_err_set(e, 500, "out of memory");
        t->rt = b->rt;
        t->addr = addr;
        t->container_port = ports[i];
        t->lis = evconnlistener_new_bind(b->rt->base, on_accept, t,
                                         LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 16,
                                         (struct sockaddr *)&sin, sizeof(sin));
        if (t->lis == NULL) {
            int err = errno;

            free(t);
            return sl_err_set(e, 500, "listen on 127.0.0.1 for port %u: %s", ports[i],
                              strerror(err));
        }
        t->next = *list;
        *list = t;
        if (getsockname(evconnlistener_get_fd(t->lis), (struct sockaddr *)&sin, &len) < 0)
            return sl_err_set(e, 500, "getsockname: %s", strerror(errno));
        t->host_port = ntohs(sin.sin_port);
        sl_info("sandbox %s: port %u on 127.0.0.1:%u", b->id, ports[i], t->host_port);
    }
    return 0;
}

void sl_tunnels_close(sl_tunnel **list)
{
    while (*list != NULL) {
        sl_tunnel *t = *list;

        *list = t->next;
        while (t->conns != NULL)
            conn_free(t->conns);
        evconnlistener_free(t->lis);
        free(t);
    }
}

void sl_tunnels_pack(sl_resp *r, const sl_tunnel *list)
{
    size_t n = 0;

    for (const sl_tunnel *t = list; t != NULL; t = t->next)
        n++;
    sl_r_arr(r, n);
    for (const sl_tunnel *t = list; t != NULL; t = t->next) {
        sl_r_map(r, 3);
        sl_r_kint(r, "container_port", t->container_port);
        sl_r_kstr(r, "host", "127.0.0.1");
        sl_r_kint(r, "port", t->host_port);
    }
}
