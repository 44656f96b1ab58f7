"""Mode bgp: which VIPs to announce, and the BIRD configuration that announces them.

Pure: no I/O.  Every director of the mode is active; the router spreads each VIP's
packets over the directors that announce it (ECMP), and every director hashes a flow
to the same real server (``mh``, see :mod:`.render`).  A director announces a VIP only
while it can serve it (:func:`decide`):

* the service is not stopping and the operator has not withdrawn it
  (``withdrawn_file``, ``lvs-extension withdraw``);
* keepalived runs (its pid file names a live keepalived reading our file);
* ``sloppy_tcp`` (and the ARP sysctls) are set -- ``net.ipv4.vs`` exists once keepalived
  loaded ``ip_vs``;
* the VIP is on ``vip_interface``;
* IPVS could be read, the VIP has at least one virtual server, and every virtual
  server keepalived was given for it is in the kernel with at least one real server
  of weight > 0.

:func:`render_bird` writes the whole ``bird.conf`` of the director from validated
settings (:class:`Speaker`) and the VIPs to announce: one BGP session per peer with
BFD, exporting only the routes of a static protocol that holds one host route per
announced VIP, with this director as next hop.  Announcing or withdrawing a VIP is a
new file and a ``configure`` (:mod:`.bird`): BIRD adds or removes the static route
and sends the update at once; the BGP sessions stay up.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple

from .. import __version__
from .model import LvsConfig

VsKey = Tuple[str, int, str]

#: why a VIP is not announced (``lvs_extension_vip_announced`` stays 0; logged once)
STOPPING = "the service is stopping"
WITHDRAWN = "withdrawn by the operator (withdrawn_file exists)"
NO_KEEPALIVED = "keepalived is not running"
NO_KERNEL = "IPVS cannot be read"
NOT_LOCAL = "the VIP is not on vip_interface"
NO_SERVICE = "no virtual server (no Active member in the topology)"
NO_SYSCTLS = "net.ipv4.vs.sloppy_tcp / the ARP sysctls are not set (yet)"

STATIC = {4: "lvs_vips4", 6: "lvs_vips6"}


@dataclass(frozen=True)
class Speaker:
    """This director's BGP speaker, from the (validated) settings."""

    local_as: int
    router_id: str
    peers: Tuple[Tuple[str, int], ...]      #: (address, AS), sorted
    hold_time: int
    bfd: bool
    bfd_interval_ms: int
    bfd_multiplier: int

    @property
    def families(self) -> Tuple[int, ...]:
        return tuple(sorted({ipaddress.ip_address(ip).version for ip, _ in self.peers}))


def speaker_of(settings) -> Speaker:
    return Speaker(settings.bgp_local_as, settings.bgp_router_id, settings.bgp_peers,
                   settings.bgp_hold_time, settings.bfd, settings.bfd_interval_ms,
                   settings.bfd_multiplier)


@dataclass(frozen=True)
class Health:
    """What :func:`decide` looks at, read by :class:`~.announce.Announcer`."""

    stopping: bool
    withdrawn: bool
    keepalived: bool
    #: virtual server key -> real servers with weight > 0 in the kernel; None: unreadable
    kernel: Optional[Mapping[VsKey, int]]
    local: FrozenSet[str]                   #: VIPs present on vip_interface
    sysctls: bool = True                    #: sloppy_tcp and the ARP sysctls are set


def decide(vips: Iterable[str], served: Optional[LvsConfig],
           health: Health) -> Dict[str, Optional[str]]:
    """VIP -> None (announce) or the reason it is withdrawn.  Same inputs, same answer."""
    common = (STOPPING if health.stopping else WITHDRAWN if health.withdrawn
              else NO_KEEPALIVED if not health.keepalived
              else NO_KERNEL if health.kernel is None
              else NO_SYSCTLS if not health.sysctls else None)
    servers: Dict[str, List[VsKey]] = {}
    for vs in (served.virtual_servers if served else ()):
        servers.setdefault(vs.vip, []).append(vs.key)
    result: Dict[str, Optional[str]] = {}
    for vip in vips:
        reason = common
        if reason is None and vip not in health.local:
            reason = NOT_LOCAL
        if reason is None and not servers.get(vip):
            reason = NO_SERVICE
        if reason is None:
            for key in servers[vip]:
                if not health.kernel.get(key):
                    reason = (f"virtual server {_endpoint(key)} has no real server with "
                              "weight > 0 in the kernel")
                    break
        result[vip] = reason
    return result


def _endpoint(key: VsKey) -> str:
    vip, port, protocol = key
    return f"[{vip}]:{port}/{protocol}" if ":" in vip else f"{vip}:{port}/{protocol}"


def peer_name(address: str) -> str:
    """The BGP protocol's name for the peer at *address* (a validated IP)."""
    return "peer_" + re.sub(r"[^0-9A-Za-z]", "_", address)


def render_bird(speaker: Speaker, announced: Iterable[str]) -> str:
    """The complete ``bird.conf`` (BIRD 2) announcing *announced* (validated VIPs)."""
    chosen = sorted(set(announced), key=lambda v: (ipaddress.ip_address(v).version,
                                                   int(ipaddress.ip_address(v))))
    out = [f"# Generated by lvs-extension (cartridge-agent-lvs {__version__}). Do not "
           "edit: rewritten", "# whenever a VIP is announced or withdrawn, then BIRD is "
           "told to re-read it.", "", f"router id {speaker.router_id};", "",
           "protocol device {", "}"]
    for family in speaker.families:
        out += ["", f"protocol static {STATIC[family]} {{", f"    ipv{family};"]
        out += [f"    route {vip}/{32 if family == 4 else 128} blackhole;"
                for vip in chosen if ipaddress.ip_address(vip).version == family]
        out.append("}")
    if speaker.bfd:
        interval = f"{speaker.bfd_interval_ms} ms"
        out += ["", "protocol bfd lvs_bfd {", '    interface "*" {',
                f"        min rx interval {interval};", f"        min tx interval {interval};",
                f"        multiplier {speaker.bfd_multiplier};", "    };", "}"]
    for address, asn in speaker.peers:
        family = ipaddress.ip_address(address).version
        out += ["", f"protocol bgp {peer_name(address)} {{",
                f"    local as {speaker.local_as};", f"    neighbor {address} as {asn};",
                f"    hold time {speaker.hold_time};"]
        if speaker.bfd:
            out.append("    bfd on;")
        out += [f"    ipv{family} {{", "        import none;",
                f'        export where proto = "{STATIC[family]}";', "        next hop self;",
                "    };", "}"]
    return "\n".join(out) + "\n"
