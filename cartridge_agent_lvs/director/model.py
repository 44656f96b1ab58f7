"""The desired IPVS state: what keepalived must serve, as plain immutable data.

This is the seam between the topology (what Stratos says) and the keepalived file
(what the kernel gets).  The planner builds it, the drain and mass-removal guard
transform it, the renderer turns it into text.  All values here are already
validated: addresses are canonical strings, ports are ints, names are safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple


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


@dataclass(frozen=True, order=True)
class VirtualServer:
    """One ``virtual_server VIP PORT`` block."""

    vip: str                #: canonical address string
    port: int               #: the proxy (listening) port
    protocol: str           #: "TCP" or "UDP"
    service: str = ""       #: Stratos service name it came from
    real_servers: Tuple[RealServer, ...] = ()

    @property
    def key(self) -> Tuple[str, int, str]:
        return (self.vip, self.port, self.protocol)


@dataclass(frozen=True)
class LvsConfig:
    """Everything keepalived must serve, sorted deterministically."""

    virtual_servers: Tuple[VirtualServer, ...] = ()
    #: every VIP owned by the VRRP instance(s), mapped or not yet populated
    vips: Tuple[str, ...] = ()

    def real_server_count(self) -> int:
        return sum(len(vs.real_servers) for vs in self.virtual_servers)
