/* sl_net.c - a sandbox's veth pair: rtnetlink for the host side, ioctls for
 * addresses and the route inside (see sl_net.h).
 *
 * Raw rtnetlink rather than libmnl or `ip`: three small messages (create a
 * veth, delete a link, dump routes) do not justify a dependency or a child
 * process on the create path.
 */
#include "sl_net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define NL_BUF 4096

typedef struct nl_msg {
    union {
        struct nlmsghdr h;
        char buf[NL_BUF];
    } u;
} nl_msg;

/* Append an attribute; returns it (for nesting) or NULL when full. */
static struct rtattr *nl_put(nl_msg *m, unsigned short type, const void *data, size_t len)
{
    size_t off = NLMSG_ALIGN(m->u.h.nlmsg_len);
    size_t alen = RTA_LENGTH(len);
    struct rtattr *rta;

    if (off + RTA_ALIGN(alen) > sizeof(m->u.buf))
        return NULL;
    rta = (struct rtattr *)(m->u.buf + off);
    rta->rta_type = type;
    rta->rta_len = (unsigned short)alen;
    if (len)
        memcpy(RTA_DATA(rta), data, len);
    m->u.h.nlmsg_len = (uint32_t)(off + RTA_ALIGN(alen));
    return rta;
}

/* Close a nested attribute opened with nl_put(m, type, NULL, 0). */
static void nl_end(nl_msg *m, struct rtattr *nest)
{
    nest->rta_len = (unsigned short)(m->u.buf + m->u.h.nlmsg_len - (char *)nest);
}

static int nl_open(void)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);

    return fd < 0 ? -errno : fd;
}

/* Send one request with NLM_F_ACK and read the kernel's answer. */
static int nl_request(nl_msg *m)
{
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
    char rbuf[NL_BUF];
    int fd = nl_open(), rc = -EPROTO;

    if (fd < 0)
        return fd;
    m->u.h.nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
    m->u.h.nlmsg_seq = 1;
    if (sendto(fd, m->u.buf, m->u.h.nlmsg_len, 0, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        rc = -errno;
        goto out;
    }
    for (;;) {
        ssize_t n = recv(fd, rbuf, sizeof(rbuf), 0);
        struct nlmsghdr *h;

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            goto out;
        }
        for (h = (struct nlmsghdr *)rbuf; NLMSG_OK(h, (unsigned)n); h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_type == NLMSG_ERROR) {
                const struct nlmsgerr *err = NLMSG_DATA(h);

                rc = err->error; /* 0: the ACK */
                goto out;
            }
        }
        if (n == 0)
            goto out;
    }
out:
    close(fd);
    return rc;
}

int sl_net_veth_create(const char *ifname, pid_t pid, const char *peer_if)
{
    nl_msg m;
    struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
    struct rtattr *linkinfo, *data, *peer;
    uint32_t upid = (uint32_t)pid;

    if (!ifname || !peer_if || strlen(ifname) >= IFNAMSIZ || strlen(peer_if) >= IFNAMSIZ ||
        pid <= 0)
        return -EINVAL;
    memset(&m, 0, sizeof(m));
    m.u.h.nlmsg_type = RTM_NEWLINK;
    m.u.h.nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
    m.u.h.nlmsg_len = NLMSG_LENGTH(sizeof(ifi));
    memcpy(NLMSG_DATA(&m.u.h), &ifi, sizeof(ifi));
    if (!nl_put(&m, IFLA_IFNAME, ifname, strlen(ifname) + 1) ||
        !(linkinfo = nl_put(&m, IFLA_LINKINFO, NULL, 0)) ||
        !nl_put(&m, IFLA_INFO_KIND, "veth", 4) || !(data = nl_put(&m, IFLA_INFO_DATA, NULL, 0)) ||
        !(peer = nl_put(&m, VETH_INFO_PEER, &ifi, sizeof(ifi))) ||
        !nl_put(&m, IFLA_IFNAME, peer_if, strlen(peer_if) + 1) ||
        !nl_put(&m, IFLA_NET_NS_PID, &upid, sizeof(upid)))
        return -EMSGSIZE;
    nl_end(&m, peer);
    nl_end(&m, data);
    nl_end(&m, linkinfo);
    return nl_request(&m);
}

int sl_net_link_del(const char *ifname)
{
    nl_msg m;
    struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
    int rc;

    if (!ifname || strlen(ifname) >= IFNAMSIZ)
        return -EINVAL;
    memset(&m, 0, sizeof(m));
    m.u.h.nlmsg_type = RTM_DELLINK;
    m.u.h.nlmsg_len = NLMSG_LENGTH(sizeof(ifi));
    memcpy(NLMSG_DATA(&m.u.h), &ifi, sizeof(ifi));
    if (!nl_put(&m, IFLA_IFNAME, ifname, strlen(ifname) + 1))
        return -EMSGSIZE;
    rc = nl_request(&m);
    /* Gone already: the namespace died and took the pair with it. */
    return rc == -ENODEV ? 0 : rc;
}

static void set_sin(struct sockaddr *sa, uint32_t addr)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = addr};

    memcpy(sa, &sin, sizeof(sin));
}

uint32_t sl_net_mask(int prefix)
{
    return prefix <= 0 ? 0 : htonl(prefix >= 32 ? 0xffffffffu : ~(0xffffffffu >> prefix));
}

int sl_net_if_setup(const char *ifname, uint32_t addr, int prefix, const char **what)
{
    struct ifreq ifr;
    int fd, rc = 0;

    *what = "socket";
    if (!ifname || strlen(ifname) >= IFNAMSIZ || prefix < 1 || prefix > 32)
        return -EINVAL;
    fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    memset(&ifr, 0, sizeof(ifr));
    memcpy(ifr.ifr_name, ifname, strlen(ifname) + 1);
    set_sin(&ifr.ifr_addr, addr);
    *what = "set address";
    if (ioctl(fd, SIOCSIFADDR, &ifr) < 0)
        goto fail;
    set_sin(&ifr.ifr_netmask, sl_net_mask(prefix));
    *what = "set netmask";
    if (ioctl(fd, SIOCSIFNETMASK, &ifr) < 0)
        goto fail;
    *what = "get flags";
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
        goto fail;
    ifr.ifr_flags |= IFF_UP;
    *what = "bring up";
    if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
        goto fail;
    close(fd);
    return 0;
fail:
    rc = -errno;
    close(fd);
    return rc;
}

int sl_net_default_route(uint32_t gw)
{
    struct rtentry rt;
    int fd, rc = 0;

    fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    memset(&rt, 0, sizeof(rt));
    set_sin(&rt.rt_dst, 0);
    set_sin(&rt.rt_genmask, 0);
    set_sin(&rt.rt_gateway, gw);
    rt.rt_flags = RTF_UP | RTF_GATEWAY;
    if (ioctl(fd, SIOCADDRT, &rt) < 0)
        rc = -errno;
    close(fd);
    return rc;
}

/* a/alen and b/blen (network byte order) share addresses. */
static int overlaps(uint32_t a, int alen, uint32_t b, int blen)
{
    int len = alen < blen ? alen : blen;
    uint32_t m = sl_net_mask(len);

    return (a & m) == (b & m);
}

int sl_net_route_overlaps(uint32_t net, int prefix)
{
    struct {
        struct nlmsghdr h;
        struct rtmsg r;
    } req;
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
    char rbuf[16384];
    int fd = nl_open(), found = 0, done = 0;

    if (fd < 0)
        return fd;
    memset(&req, 0, sizeof(req));
    req.h.nlmsg_len = NLMSG_LENGTH(sizeof(req.r));
    req.h.nlmsg_type = RTM_GETROUTE;
    req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.h.nlmsg_seq = 1;
    req.r.rtm_family = AF_INET;
    if (sendto(fd, &req, req.h.nlmsg_len, 0, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int err = errno;

        close(fd);
        return -err;
    }
    while (!done) {
        ssize_t n = recv(fd, rbuf, sizeof(rbuf), 0);
        struct nlmsghdr *h;

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int err = n < 0 ? errno : EPROTO;

            close(fd);
            return -err;
        }
        for (h = (struct nlmsghdr *)rbuf; NLMSG_OK(h, (unsigned)n); h = NLMSG_NEXT(h, n)) {
            const struct rtmsg *r;
            const struct rtattr *a;
            int alen;
            uint32_t dst = 0;

            if (h->nlmsg_type == NLMSG_DONE || h->nlmsg_type == NLMSG_ERROR) {
                done = 1;
                break;
            }
            if (h->nlmsg_type != RTM_NEWROUTE)
                continue;
            r = NLMSG_DATA(h);
            /* Default routes cover everything; they are not a collision. */
            if (r->rtm_dst_len == 0 ||
                (r->rtm_table != RT_TABLE_MAIN && r->rtm_table != RT_TABLE_LOCAL))
                continue;
            alen = (int)RTM_PAYLOAD(h);
            for (a = RTM_RTA(r); RTA_OK(a, alen); a = RTA_NEXT(a, alen)) {
                if (a->rta_type == RTA_DST && RTA_PAYLOAD(a) == sizeof(dst))
                    memcpy(&dst, RTA_DATA(a), sizeof(dst));
            }
            if (overlaps(dst, r->rtm_dst_len, net, prefix))
                found = 1;
        }
    }
    close(fd);
    return found;
}
