"""IPVS statistics through generic netlink (pyroute2's IPVS API) -- never ipvsadm text.

``read_ipvs(netns)`` dumps every virtual service and its real servers; the message
decoding is in pure functions (:func:`service_from_message`,
:func:`dest_from_message`) over pyroute2 messages, which are read with nested keys
such as ``("service", "addr")`` or ``("dest", "stats64", "IPVS_STATS_ATTR_INBYTES")``.
``cluster_totals`` gives the in-flight (active) connections per Stratos cluster, as
the Stratos statistics reader did, by matching real servers with the planned
configuration.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from ..errors import HostError
from .model import LvsConfig

PROTOCOLS = {6: "TCP", 17: "UDP", 132: "SCTP"}
#: IP_VS_CONN_F_FWD_MASK values
FORWARDING = {0: "NAT", 1: "LOCAL", 2: "TUN", 3: "DR", 4: "BYPASS"}
_COUNTERS = (("conns", "CONNS"), ("in_packets", "INPKTS"), ("out_packets", "OUTPKTS"),
             ("in_bytes", "INBYTES"), ("out_bytes", "OUTBYTES"))


@dataclass(frozen=True)
class DestStats:
    address: str
    port: int
    forwarding: str
    weight: int
    active_conns: int
    inactive_conns: int
    conns: int
    in_packets: int
    out_packets: int
    in_bytes: int
    out_bytes: int


@dataclass(frozen=True)
class ServiceStats:
    protocol: str          #: TCP / UDP / SCTP, or "FWM" for a firewall-mark service
    address: str
    port: int
    fwmark: int
    scheduler: str
    conns: int
    in_packets: int
    out_packets: int
    in_bytes: int
    out_bytes: int
    dests: Tuple[DestStats, ...] = ()

    @property
    def key(self) -> Tuple[str, int, str]:
        return (self.address, self.port, self.protocol)


def _counters(msg: Any, kind: str) -> Dict[str, int]:
    out = {}
    for name, attr in _COUNTERS:
        value = msg.get((kind, "stats64", f"IPVS_STATS_ATTR_{attr}"))
        if value is None:   # kernels before 4.1 send only 32-bit stats
            value = msg.get((kind, "stats", f"IPVS_STATS_ATTR_{attr}"))
        out[name] = int(value or 0)
    return out


def service_from_message(msg: Any) -> ServiceStats:
    fwmark = int(msg.get(("service", "fwmark")) or 0)
    protocol = PROTOCOLS.get(msg.get(("service", "protocol")), "FWM" if fwmark else "?")
    return ServiceStats(protocol=protocol, address=str(msg.get(("service", "addr")) or ""),
                        port=int(msg.get(("service", "port")) or 0), fwmark=fwmark,
                        scheduler=str(msg.get(("service", "sched_name")) or ""),
                        **_counters(msg, "service"))


def dest_from_message(msg: Any) -> DestStats:
    method = int(msg.get(("dest", "fwd_method")) or 0) & 0x7
    return DestStats(address=str(msg.get(("dest", "addr"))),
                     port=int(msg.get(("dest", "port")) or 0),
                     forwarding=FORWARDING.get(method, str(method)),
                     weight=int(msg.get(("dest", "weight")) or 0),
                     active_conns=int(msg.get(("dest", "active_conns")) or 0),
                     inactive_conns=int(msg.get(("dest", "inact_conns")) or 0),
                     **_counters(msg, "dest"))


def _open_ipvs(netns: Optional[str]):
    from pyroute2 import IPVS
    return IPVS(netns=netns, flags=0) if netns else IPVS()


def read_ipvs(netns: Optional[str] = None,
              ipvs_factory: Optional[Callable[[Optional[str]], Any]] = None
              ) -> Tuple[ServiceStats, ...]:
    """Every IPVS service with its real servers, sorted; HostError when unavailable."""
    from pyroute2 import IPVSService
    from pyroute2.netlink.exceptions import NetlinkError
    where = f"network namespace {netns}" if netns else "this host"
    try:
        ipvs = (ipvs_factory or _open_ipvs)(netns)
    except NetlinkError as exc:
        if exc.code == 2:
            raise HostError(f"IPVS is not available in the kernel of {where} (no ip_vs "
                            "module / generic netlink family)") from None
        raise HostError(f"cannot open IPVS netlink in {where}: {exc}") from None
    except FileNotFoundError:
        raise HostError(f"network namespace {netns!r} does not exist") from None
    try:
        services = []
        for msg in ipvs.service("dump"):
            service = service_from_message(msg)
            dests = tuple(sorted(
                (dest_from_message(d) for d in
                 ipvs.dest("dump", service=IPVSService.from_message(msg))),
                key=lambda d: (d.address, d.port)))
            services.append(ServiceStats(**{**asdict(service), "dests": dests}))
        return tuple(sorted(services, key=lambda s: (s.fwmark, s.address, s.port,
                                                      s.protocol)))
    except NetlinkError as exc:
        raise HostError(f"reading IPVS in {where}: {exc}") from None
    finally:
        ipvs.close()


def cluster_totals(services: Tuple[ServiceStats, ...],
                   config: Optional[LvsConfig]) -> Dict[str, int]:
    """cluster id -> active connections of its real servers (only real servers the
    configuration attributes to a cluster are counted)."""
    if config is None:
        return {}
    owner = {}
    totals: Dict[str, int] = {}
    for vs in config.virtual_servers:
        for rs in vs.real_servers:
            if rs.cluster_id:
                owner[(vs.vip, vs.port, vs.protocol, rs.ip, rs.port)] = rs.cluster_id
                totals.setdefault(rs.cluster_id, 0)
    for service in services:
        for dest in service.dests:
            cluster = owner.get((service.address, service.port, service.protocol,
                                 dest.address, dest.port))
            if cluster:
                totals[cluster] += dest.active_conns
    return dict(sorted(totals.items()))


def to_json(services: Tuple[ServiceStats, ...], totals: Dict[str, int]) -> str:
    return json.dumps({"services": [asdict(s) for s in services],
                       "clusters": totals}, indent=2, sort_keys=True)


def format_table(services: Tuple[ServiceStats, ...], totals: Dict[str, int]) -> str:
    head = (f"{'Prot':5} {'Virtual server / -> real server':46} {'Fwd':4} {'Weight':>6} "
            f"{'Active':>7} {'Inact':>7} {'Conns':>9} {'InPkts':>10} {'OutPkts':>10} "
            f"{'InBytes':>12} {'OutBytes':>12}")
    lines = [head]
    for s in services:
        name = f"FWM {s.fwmark}" if s.fwmark else _endpoint(s.address, s.port)
        lines.append(f"{s.protocol:5} {name + ' ' + s.scheduler:46} {'':4} {'':>6} "
                     f"{'':>7} {'':>7} {s.conns:>9} {s.in_packets:>10} {s.out_packets:>10} "
                     f"{s.in_bytes:>12} {s.out_bytes:>12}")
        for d in s.dests:
            lines.append(f"{'':5} {'  -> ' + _endpoint(d.address, d.port):46} "
                         f"{d.forwarding:4} {d.weight:>6} {d.active_conns:>7} "
                         f"{d.inactive_conns:>7} {d.conns:>9} {d.in_packets:>10} "
                         f"{d.out_packets:>10} {d.in_bytes:>12} {d.out_bytes:>12}")
    if not services:
        lines.append("(no IPVS services)")
    if totals:
        lines.append("")
        lines.append("In-flight connections per cluster:")
        lines += [f"  {cluster}: {count}" for cluster, count in totals.items()]
    return "\n".join(lines)


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
