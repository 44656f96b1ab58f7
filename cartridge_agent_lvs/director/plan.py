"""Settings + topology -> the IPVS configuration to serve, with warnings.

The planner is the gate between what Stratos says and what keepalived gets: every
member field that reaches the model is validated here (address parsed, port
1-65535, ids against the safe-name pattern).  A member that fails is skipped with a
warning naming it; it cannot hide the others, and nothing it carries can reach
``keepalived.conf``.

Rules (see the keepalived notes in the README):

* only mapped services, only ``Active`` members, all clusters of a service;
* the member address follows ``loadBalancingIPType``, must be of the VIP's family and
  must not be the VIP itself (IPVS would forward to itself; warned, skipped);
* one virtual server per proxy port of the service ``portMap`` (or, without one, of its
  members'); with DR and TUN the real server is rendered on the *proxy* port (the
  packet reaches it unchanged) and a member whose port differs is warned about; NAT
  keeps proxy -> value;
* members sharing an IP:port are rendered once;
* a virtual server without Active members is not rendered (keepalived rejects it) --
  warned about instead;
* two services claiming one VIP:port:protocol is a configuration error naming both.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..addresses import check_safe_name, parse_host_ip, parse_port
from ..errors import InputError, SettingsError
from .model import LvsConfig, RealServer, VirtualServer
from .topology import Member, Port, Service, Topology

_PROTOCOLS = {"tcp": "TCP", "http": "TCP", "https": "TCP", "ws": "TCP", "wss": "TCP",
              "udp": "UDP", "sctp": "SCTP"}


@dataclass(frozen=True)
class Plan:
    config: LvsConfig
    warnings: Tuple[str, ...]


def _q(value: object) -> str:
    """A value quoted safely for a log line (newlines escaped, length capped)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def ip_sort_key(address: str) -> Tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


def _protocol(port: Port, default: str) -> str:
    return _PROTOCOLS.get(port.protocol.strip().lower(), default)


def _proxy_ports(service: Service, members: List[Member], warnings: List[str],
                 default_protocol: str) -> Dict[Tuple[int, str], Port]:
    """(proxy port, protocol) -> the service's port entry; bad entries warned about."""
    entries = service.ports or tuple(p for m in members for p in m.ports)
    result: Dict[Tuple[int, str], Port] = {}
    for port in entries:
        try:
            proxy = parse_port(port.proxy, "proxy")
        except InputError:
            warnings.append(f"service {service.name!r}: ignoring portMap entry with proxy "
                            f"port {_q(port.proxy)} (not a port 1-65535)")
            continue
        result.setdefault((proxy, _protocol(port, default_protocol)), port)
    return result


def _member_port(member: Member, proxy: int, service_port: Port) -> object:
    for port in member.ports:
        if str(port.proxy) == str(proxy):
            return port.value
    return service_port.value if service_port.value is not None else proxy


class _Planner:
    def __init__(self, settings) -> None:
        self.settings = settings
        self.warnings: List[str] = []
        self.claims: Dict[Tuple[str, int, str], str] = {}
        #: member id -> ["80 -> 8080", ...]: ports DR/TUN cannot map
        self.unmapped: Dict[str, List[str]] = {}

    def member_address(self, member: Member, vip: str) -> Optional[str]:
        """The member's validated address for *vip*, or None (warned)."""
        version = ipaddress.ip_address(vip).version
        where = f"member {_q(member.member_id)} of cluster {_q(member.cluster_id)}"
        try:
            check_safe_name(member.member_id, "memberId")
            check_safe_name(member.cluster_id, "clusterId")
        except InputError as exc:
            self.warnings.append(f"skipped {where}: {exc.key} contains characters that "
                                 "are not allowed")
            return None
        address = member.address
        if address is None:
            self.warnings.append(f"skipped {where}: no {member.lb_ip_type} IP address")
            return None
        try:
            ip = parse_host_ip(address, "IP")
        except InputError:
            self.warnings.append(f"skipped {where}: {member.lb_ip_type} IP {_q(address)} "
                                 "is not a usable address")
            return None
        if ip.version != version:
            self.warnings.append(f"skipped {where}: IPv{ip.version} address {ip} cannot "
                                 f"serve an IPv{version} VIP")
            return None
        if ip.compressed == vip:
            self.warnings.append(f"skipped {where}: its {member.lb_ip_type} IP {ip} is the "
                                 "VIP itself")
            return None
        return ip.compressed

    def real_port(self, member: Member, proxy: int, service_port: Port) -> Optional[int]:
        raw = _member_port(member, proxy, service_port)
        try:
            value = parse_port(raw, "port")
        except InputError:
            self.warnings.append(f"skipped member {_q(member.member_id)} on port {proxy}: "
                                 f"its port {_q(raw)} is not a port 1-65535")
            return None
        if self.settings.forwarding_method == "NAT":
            return value
        if value != proxy:
            mapping = f"{proxy} -> {value}"
            seen = self.unmapped.setdefault(member.member_id, [])
            if mapping not in seen:
                seen.append(mapping)
        return proxy

    def port_warnings(self) -> None:
        method = self.settings.forwarding_method
        for member_id, mappings in sorted(self.unmapped.items()):
            self.warnings.append(
                f"member {member_id} maps ports {', '.join(mappings)}, but with {method} the "
                "real server receives packets on the virtual port unchanged: it must "
                "accept connections on the virtual (proxy) port")

    def claim(self, key: Tuple[str, int, str], service: str) -> None:
        other = self.claims.setdefault(key, service)
        if other != service:
            vip, port, protocol = key
            raise SettingsError("vip_map", f"{other}|{vip},{service}|{vip}",
                                f"services {other!r} and {service!r} both claim "
                                f"{vip}:{port}/{protocol}")

    def virtual_servers(self, name: str, vip: str, service: Service) -> List[VirtualServer]:
        members = service.members()
        active = [m for m in members if m.active]
        addresses = {m.member_id: self.member_address(m, vip) for m in active}
        result = []
        ports = _proxy_ports(service, members, self.warnings, self.settings.protocol)
        if not ports:
            self.warnings.append(f"service {name!r} has no ports in its portMap: nothing "
                                 f"to serve on {vip}")
        for (proxy, protocol), service_port in sorted(ports.items()):
            self.claim((vip, proxy, protocol), name)
            real: Dict[Tuple[str, int], RealServer] = {}
            for member in active:
                address = addresses[member.member_id]
                port = address and self.real_port(member, proxy, service_port)
                if address and port:
                    real.setdefault((address, port), RealServer(
                        address, port, self.settings.weight, member.member_id,
                        member.cluster_id))
            if not real:
                self.warnings.append(
                    f"service {name!r}: no Active member to serve {vip} port {proxy}/"
                    f"{protocol}; not rendered (keepalived rejects an empty virtual server)")
                continue
            result.append(VirtualServer(vip, proxy, protocol, name, tuple(
                sorted(real.values(), key=lambda rs: (ip_sort_key(rs.ip), rs.port)))))
        return result


def plan(settings, topology: Topology) -> Plan:
    """What keepalived must serve for *topology*; ``SettingsError`` on a VIP clash."""
    planner = _Planner(settings)
    servers: List[VirtualServer] = []
    for name, vip in settings.vip_map:
        service = topology.services.get(name)
        if service is None:
            planner.warnings.append(f"service {name!r} (VIP {vip}) is not in the topology")
            continue
        servers += planner.virtual_servers(name, vip, service)
    planner.port_warnings()
    servers.sort(key=lambda vs: (ip_sort_key(vs.vip), vs.port, vs.protocol))
    vips = tuple(sorted({vip for _, vip in settings.vip_map}, key=ip_sort_key))
    return Plan(LvsConfig(tuple(servers), vips), tuple(planner.warnings))
