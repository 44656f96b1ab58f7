"""The desired IPVS state: what keepalived must serve, as plain immutable data.

This is the seam between the topology (what Stratos says) and the keepalived file
(what the kernel gets).  The planner builds it, the drain and mass-removal guard
transform it, the renderer turns it -- and only it -- into text.  All values here are
already validated: addresses are canonical strings, ports are ints, names are safe,
keywords (scheduler, method, check) are ones keepalived knows.

Per-service behaviour lives here too: each :class:`VirtualServer` carries the
:class:`Policy` the planner resolved for its service (its ``[service NAME]``
settings, else the global ones), so whatever changes between two configurations is
visible in the two values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple


@dataclass(frozen=True, order=True)
class RealServer:
    """One member behind a virtual server."""

    ip: str                 #: canonical address string (IPv4 or IPv6)
    port: int               #: port the real server receives on
    weight: int = 1         #: 0 = draining (no new connections)
    member_id: str = field(default="", compare=False)
    cluster_id: str = field(default="", compare=False)

    @property
    def key(self) -> Tuple[str, int]:
        return (self.ip, self.port)


@dataclass(frozen=True)
class HealthCheck:
    """The checker of every real server of a virtual server."""

    kind: str               #: TCP_CHECK, HTTP_GET, SSL_GET or UDP_CHECK
    http_path: str          #: HTTP_GET / SSL_GET only
    http_status: int        #: HTTP_GET / SSL_GET only
    connect_timeout: int
    retry: int


@dataclass(frozen=True)
class Policy:
    """How one virtual server balances and checks (the ``lb_algo``, ``lb_kind`` ...
    lines of its block)."""

    scheduler: str
    forwarding_method: str          #: DR, NAT or TUN
    persistence_timeout: int        #: 0 = none
    delay_loop: int
    sorry_server: Optional[Tuple[str, int]]    #: of the VIP's address family, or None
    check: Optional[HealthCheck]    #: None = no health check


@dataclass(frozen=True)
class VirtualServer:
    """One ``virtual_server VIP PORT`` block."""

    vip: str                #: canonical address string
    port: int               #: the proxy (listening) port
    protocol: str           #: "TCP", "UDP" or "SCTP"
    service: str = ""       #: Stratos service name it came from
    real_servers: Tuple[RealServer, ...] = ()
    #: the resolved per-service settings; the renderer needs it (the drain and the
    #: guard, which only look at real servers, do not)
    policy: Optional[Policy] = None

    @property
    def key(self) -> Tuple[str, int, str]:
        return (self.vip, self.port, self.protocol)


@dataclass(frozen=True)
class Vrrp:
    """The director-wide part of the file: ``global_defs`` and the VRRP instances."""

    state: str
    interface: str
    virtual_router_id: int
    priority: int
    advert_int: int
    nopreempt: bool
    auth_pass: Optional[str]
    router_id: str
    sync_interface: Optional[str]
    #: "vrrp" (the VIPs move by VRRP) or "bgp" (no VRRP: every director is active)
    mode: str = "vrrp"


@dataclass(frozen=True)
class LvsConfig:
    """Everything keepalived must serve, sorted deterministically."""

    virtual_servers: Tuple[VirtualServer, ...] = ()
    #: every VIP owned by the VRRP instance(s), mapped or not yet populated
    vips: Tuple[str, ...] = ()
    #: the VRRP / global settings; the renderer needs it
    vrrp: Optional[Vrrp] = None

    def real_server_count(self) -> int:
        return sum(len(vs.real_servers) for vs in self.virtual_servers)
