"""IPVS statistics through generic netlink -- never ipvsadm text.

``read_ipvs(netns)`` dumps every virtual service and its real servers
(:mod:`.ipvs_netlink`); the decoding is in pure functions (:func:`service_from_attrs`,
:func:`dest_from_attrs`) over the messages' attributes.
``cluster_totals`` gives the in-flight (active) connections per Stratos cluster, as
the Stratos statistics reader did, by matching real servers with the planned
configuration.
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Optional, Tuple

from ..errors import HostError
from .ipvs_netlink import (DEST_ACTIVE_CONNS, DEST_ADDR, DEST_ADDR_FAMILY,
                           DEST_FWD_METHOD, DEST_INACT_CONNS, DEST_PORT, DEST_STATS,
                           DEST_STATS64, DEST_WEIGHT, FORWARDING, PROTOCOLS, SVC_ADDR,
                           SVC_AF, SVC_FWMARK, SVC_PORT, SVC_PROTOCOL, SVC_SCHED_NAME,
                           SVC_STATS, SVC_STATS64, Attrs, GenlSocket, NoIpvs, attributes,
                           dump)
from .model import LvsConfig



class IpvsUnavailable(HostError):
    """The kernel has no IPVS (no ip_vs module): a property of the host, not an event."""


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


_U16, _U32, _S32, _U64, _BE16 = (struct.Struct(f) for f in ("=H", "=I", "=i", "=Q", "!H"))
#: counter name -> (IPVS_STATS_ATTR_*, its width in the 32-bit IPVS_*_ATTR_STATS)
_STATS = {"conns": (1, _U32), "in_packets": (2, _U32), "out_packets": (3, _U32),
          "in_bytes": (4, _U64), "out_bytes": (5, _U64)}


def _number(attrs: Attrs, kind: int, form: struct.Struct = _U32) -> int:
    raw = attrs.get(kind)
    return form.unpack_from(raw)[0] if raw is not None and len(raw) >= form.size else 0


def _counters(attrs: Attrs, stats64: int, stats32: int) -> Dict[str, int]:
    if stats64 in attrs:
        values = attributes(attrs[stats64])
        return {name: _number(values, kind, _U64) for name, (kind, _) in _STATS.items()}
    values = attributes(attrs.get(stats32, b""))    # kernels before 4.1: 32-bit stats
    return {name: _number(values, kind, form) for name, (kind, form) in _STATS.items()}


def _address(raw: bytes, family: int) -> str:
    """An address attribute: the kernel sends the 16-byte ``nf_inet_addr`` union."""
    if family == socket.AF_INET6 and len(raw) >= 16:
        return socket.inet_ntop(socket.AF_INET6, raw[:16])
    if family == socket.AF_INET and len(raw) >= 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return ""


def service_from_attrs(a: Attrs) -> ServiceStats:
    """A service's ``IPVS_SVC_ATTR_*`` attributes, decoded (pure)."""
    fwmark = _number(a, SVC_FWMARK)
    protocol = PROTOCOLS.get(_number(a, SVC_PROTOCOL, _U16), "FWM" if fwmark else "?")
    return ServiceStats(protocol=protocol,
                        address=_address(a.get(SVC_ADDR, b""), _number(a, SVC_AF, _U16)),
                        port=_number(a, SVC_PORT, _BE16), fwmark=fwmark,
                        scheduler=a.get(SVC_SCHED_NAME, b"").split(b"\0")[0].decode(
                            "ascii", "replace"),
                        **_counters(a, SVC_STATS64, SVC_STATS))


def dest_from_attrs(a: Attrs, family: int) -> DestStats:
    """A destination's ``IPVS_DEST_ATTR_*`` attributes, decoded (pure); *family* is its
    service's, for kernels that send no ``IPVS_DEST_ATTR_ADDR_FAMILY``."""
    method = _number(a, DEST_FWD_METHOD) & 0x7
    return DestStats(address=_address(a.get(DEST_ADDR, b""),
                                      _number(a, DEST_ADDR_FAMILY, _U16) or family),
                     port=_number(a, DEST_PORT, _BE16),
                     forwarding=FORWARDING.get(method, str(method)),
                     weight=_number(a, DEST_WEIGHT, _S32),
                     active_conns=_number(a, DEST_ACTIVE_CONNS),
                     inactive_conns=_number(a, DEST_INACT_CONNS),
                     **_counters(a, DEST_STATS64, DEST_STATS))


def read_ipvs(netns: Optional[str] = None,
              sock_factory: Optional[Callable[[Optional[str]], Any]] = None,
              dests_of: Optional[Callable[[ServiceStats], bool]] = None
              ) -> Tuple[ServiceStats, ...]:
    """Every IPVS service with its real servers, sorted; HostError when unavailable.

    :param sock_factory: opens the generic netlink socket (default
        :class:`~.ipvs_netlink.GenlSocket` in *netns*).
    :param dests_of: whether a service's real servers are read (default: every
        service's); the others are returned without real servers.  At 10,000 real
        servers the whole table costs seconds to decode in an emulated guest, one
        service's a tenth of it.
    """
    where = f"network namespace {netns}" if netns else "this host"
    wanted = None if dests_of is None else (lambda attrs: dests_of(service_from_attrs(attrs)))
    try:
        table = dump(netns, sock_factory or GenlSocket, wanted)
    except NoIpvs:
        raise IpvsUnavailable(f"IPVS is not available in the kernel of {where} (no ip_vs "
                        "module / generic netlink family)") from None
    except FileNotFoundError:
        raise HostError(f"network namespace {netns!r} does not exist") from None
    except OSError as exc:
        raise HostError(f"reading IPVS in {where}: {exc.strerror or exc}") from None
    services = []
    for service_attrs, dest_attrs in table:
        service = service_from_attrs(service_attrs)
        family = _number(service_attrs, SVC_AF, _U16)
        dests = tuple(sorted((dest_from_attrs(d, family) for d in dest_attrs or ()),
                             key=lambda d: (d.address, d.port)))
        services.append(replace(service, dests=dests))
    return tuple(sorted(services, key=lambda s: (s.fwmark, s.address, s.port, s.protocol)))


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


def _document(services: Tuple[ServiceStats, ...], totals: Dict[str, int]) -> Dict[str, Any]:
    return {"services": [asdict(s) for s in services], "clusters": totals}


def to_json(services: Tuple[ServiceStats, ...], totals: Dict[str, int]) -> str:
    return json.dumps(_document(services, totals), indent=2, sort_keys=True)


def snapshot(services: Tuple[ServiceStats, ...], totals: Dict[str, int], read_at: float,
             as_json: bool) -> str:
    """One reading of ``stats --interval``: a JSON line with its ``time`` (epoch seconds),
    or the table under a ``--- <UTC time>`` line."""
    if as_json:
        return json.dumps({"time": round(read_at, 3), **_document(services, totals)},
                          sort_keys=True)
    return f"--- {stamp(read_at)}\n{format_table(services, totals)}"


_STAMP = "%Y-%m-%dT%H:%M:%S.%fZ"


def stamp(epoch: float) -> str:
    """``2026-11-26T17:30:01.123Z``: the header of a text snapshot (milliseconds)."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime(_STAMP)[:-4] + "Z"


def parse_stamp(text: str) -> float:
    """:func:`stamp`'s text -> epoch seconds."""
    return datetime.strptime(text, _STAMP).replace(tzinfo=timezone.utc).timestamp()


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
