"""Network access of a sandbox: ``Sandbox.create(network=..., ports=...)`` and
``RemoteFunction(network=...)``.

By default a sandbox has only ``lo``: no route anywhere, not even to the host.
``NetworkOptions(egress=...)`` (or the same key in a dict) changes that:

* ``egress="none"``: the default.
* ``egress="all"``: a veth pair, an address out of the runner's pool (default
  ``10.200.0.0/16``, one /30 per sandbox) and a default route through the
  host, which masquerades what leaves. The host itself (the runner's API
  port, every host-local service, the host side's address) and every other
  sandbox stay unreachable; the runner's nftables rules enforce it, nothing
  inside the sandbox is trusted.
* ``egress=["10.1.0.0/16", "192.0.2.7", "pypi.internal"]``: only these
  destinations (IPv4 CIDRs, addresses, host names). Host names are resolved
  by the runner when the sandbox is created; DNS changes after that are not
  followed.

DNS: the sandbox reads its image's ``/etc/resolv.conf`` (the host's on the
host image). Its name servers are reachable only if the egress policy lets
their addresses through (``"all"``, or listed); a name server on the host's
loopback (a local stub resolver) never is. With an allow list, prefer
addresses, or list the name server too.

``ports=[8000]`` (or ``[{"container_port": 8000}]``) exposes TCP ports of the
sandbox on host loopback ports: ``sb.tunnels()`` maps each to a
:class:`Tunnel` (``127.0.0.1`` and an ephemeral port). A port not listed is
not reachable from the host; the tunnels close with the sandbox.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

__all__ = ["NetworkOptions", "Tunnel"]

#: Most entries in an allow list / most listed ports (the runner's limits).
MAX_ALLOW = 64
MAX_PORTS = 16

_HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*\.?$")

Egress = Union[str, Sequence[str]]


def _egress_wire(egress: Any) -> str | list[str]:
    if isinstance(egress, str):
        if egress in ("none", "all"):
            return egress
        raise ValueError(
            f"network.egress must be 'none', 'all' or a list of CIDRs and host names, got {egress!r}"
        )
    if isinstance(egress, (bytes, bytearray)) or not isinstance(egress, Sequence):
        raise TypeError(
            f"network.egress must be 'none', 'all' or a list of CIDRs and host names, got {type(egress).__name__}"
        )
    if len(egress) > MAX_ALLOW:
        raise ValueError(f"network.egress: at most {MAX_ALLOW} entries, got {len(egress)}")
    out: list[str] = []
    for i, entry in enumerate(egress):
        if not isinstance(entry, str):
            raise TypeError(f"network.egress[{i}] must be a str (CIDR or host name), got {type(entry).__name__}")
        if ":" in entry:
            raise ValueError(f"network.egress[{i}]: {entry!r} is IPv6; sandboxes get IPv4 only")
        try:
            net = ipaddress.IPv4Network(entry, strict=False)
        except ValueError:
            if entry[:1].isdigit() and ("/" in entry or entry.replace(".", "").isdigit()):
                raise ValueError(f"network.egress[{i}]: {entry!r} is not a valid IPv4 address or CIDR") from None
            if not _HOST_RE.match(entry):
                raise ValueError(
                    f"network.egress[{i}]: {entry!r} is neither an IPv4 CIDR, an address nor a host name"
                ) from None
            out.append(entry)
            continue
        if net.prefixlen == 0:
            raise ValueError(f"network.egress[{i}]: {entry!r} is everything; write egress='all'")
        out.append(entry)
    return out


@dataclass(frozen=True)
class NetworkOptions:
    """Network policy of one sandbox (or of each worker of a function).

    ``egress``: ``"none"`` (default: only ``lo``), ``"all"``, or a list of
    IPv4 CIDRs, addresses and host names. See :mod:`sandlot.network`.
    """

    egress: Egress = "none"

    def __post_init__(self) -> None:
        _egress_wire(self.egress)  # validate at construction

    def to_wire(self) -> dict[str, Any]:
        """The runner's form: ``{"egress": "none" | "all" | [str, ...]}``."""
        return {"egress": _egress_wire(self.egress)}


def network_wire(v: Any) -> dict[str, Any] | None:
    """Validate ``network=`` (:class:`NetworkOptions`, dict or None) into the
    runner's form, or raise TypeError/ValueError naming the key. ``None`` and
    ``egress="none"`` both mean the default (the runner makes no veth)."""
    if v is None:
        return None
    if isinstance(v, NetworkOptions):
        wire = v.to_wire()
    elif isinstance(v, Mapping):
        unknown = [k for k in v if k != "egress"]
        if unknown:
            raise ValueError(f"network: unknown key(s) {', '.join(map(repr, unknown))}; expected egress")
        wire = {"egress": _egress_wire(v.get("egress", "none"))}
    else:
        raise TypeError(
            f"network must be a sandlot.NetworkOptions or a dict like {{'egress': 'all'}}, got {type(v).__name__}"
        )
    return wire


def ports_wire(ports: Any) -> list[int] | None:
    """Validate ``ports=``: a list of TCP ports (int) or of dicts with
    ``container_port`` (``port`` also accepted; ``protocol`` must be tcp)."""
    if ports is None:
        return None
    if isinstance(ports, (str, bytes, Mapping)) or not isinstance(ports, Sequence):
        raise TypeError(f"ports must be a list of TCP port numbers such as [8000], got {type(ports).__name__}")
    if len(ports) > MAX_PORTS:
        raise ValueError(f"ports: at most {MAX_PORTS} ports, got {len(ports)}")
    out: list[int] = []
    for i, p in enumerate(ports):
        if isinstance(p, Mapping):
            unknown = [k for k in p if k not in ("container_port", "port", "protocol")]
            if unknown:
                raise ValueError(f"ports[{i}]: unknown key(s) {', '.join(map(repr, unknown))}; expected container_port")
            if str(p.get("protocol", "tcp")).lower() != "tcp":
                raise ValueError(f"ports[{i}]: only tcp can be tunnelled, got protocol {p.get('protocol')!r}")
            p = p.get("container_port", p.get("port"))
        if isinstance(p, bool) or not isinstance(p, int):
            raise TypeError(f"ports[{i}] must be a TCP port (int), got {p!r}")
        if not 1 <= p <= 65535:
            raise ValueError(f"ports[{i}] must be in [1, 65535], got {p}")
        if p in out:
            raise ValueError(f"ports: port {p} is listed twice")
        out.append(p)
    return out or None


@dataclass(frozen=True)
class Tunnel:
    """A sandbox port exposed on the host: connect to ``host:port``."""

    container_port: int
    host: str
    port: int

    @property
    def url(self) -> str:
        """``http://host:port`` (for an HTTP server behind it)."""
        return f"http://{self.host}:{self.port}"

    def __iter__(self):  # type: ignore[no-untyped-def]
        """``host, port = tunnel``."""
        return iter((self.host, self.port))
