/* sl_net.h - a sandbox's veth pair: rtnetlink for the host side, ioctls for
 * addresses and the route inside.
 *
 * A sandbox created without networking keeps only `lo` and none of this
 * runs. With a sl_net_config, sl_sandbox_spawn creates a veth pair whose peer
 * is born inside the sandbox's network namespace as eth0 (IFLA_NET_NS_PID, so
 * it never exists in the host namespace), gives the host side its address,
 * and the clone child configures eth0 and a default route via the host side
 * before it execs sandlot-init. Packet filtering is the runner's job
 * (csrc/runner/net.c, nftables); nothing here trusts the sandbox.
 */
#ifndef SL_NET_H
#define SL_NET_H

#include <net/if.h>
#include <stdint.h>
#include <sys/types.h>

#define SL_NET_SANDBOX_IF "eth0"

typedef struct sl_net_config {
    char host_if[IFNAMSIZ]; /* host side of the pair, chosen by the runner */
    uint32_t host_addr;     /* network byte order; the sandbox's default gateway */
    uint32_t sandbox_addr;  /* network byte order; eth0 inside */
    int prefix;             /* both ends are in one prefix (a /30) */
} sl_net_config;

/* The netmask of a prefix length, network byte order (0 for 0). */
uint32_t sl_net_mask(int prefix);

/* Create the pair: ifname on the host, peer_if inside the network namespace
 * of pid. 0 or -errno (-EEXIST: the host name is taken). */
int sl_net_veth_create(const char *ifname, pid_t pid, const char *peer_if);

/* Address ifname with addr/prefix and bring it up, in the caller's network
 * namespace (ioctls only: usable by the clone child before exec). On failure
 * *what names the step. 0 or -errno. */
int sl_net_if_setup(const char *ifname, uint32_t addr, int prefix, const char **what);

/* Default route via gw (network byte order), in the caller's namespace. */
int sl_net_default_route(uint32_t gw);

/* Delete a link by name; a missing one is not an error. 0 or -errno. */
int sl_net_link_del(const char *ifname);

/* Does net/prefix overlap a route of the main or local table that is not a
 * default route (an address or route the host already uses)? 1, 0 or -errno. */
int sl_net_route_overlaps(uint32_t net, int prefix);

#endif
