"""Settings + topology -> the IPVS configuration to serve, with warnings.

The planner is the gate between what Stratos says and what keepalived gets: every
member field that reaches the model is validated here (address parsed, port
1-65535, ids against the safe-name pattern).  A member that fails is skipped with a
warning naming it; it cannot hide the others, and nothing it carries can reach
``keepalived.conf``.  It also resolves the settings into the model: each virtual
server gets its service's :class:`~.model.Policy` (a ``[service NAME]`` section's
values, else the global ones) and the config the :class:`~.model.Vrrp` part, so the
renderer reads nothing else.

Rules (see the keepalived notes in the README):

* only mapped services, only ``Active`` members, all clusters of a service -- less
  what the filters leave out: ``cluster_ids`` (other clusters) and
  ``network_partition_id`` (members of other network partitions; a member without
  one is kept, as Stratos' own filter does);
* the member address follows ``loadBalancingIPType``, must be of the VIP's family and
  must not be the VIP itself (IPVS would forward to itself; warned, skipped);
* one virtual server per proxy port of the service ``portMap`` (or, without one, of its
  members'); with DR and TUN the real server is rendered on the *proxy* port (the
  packet reaches it unchanged) and the members whose port differs are warned about,
  one line per service and port; NAT keeps proxy -> value;
* the same goes for a ``sorry_server``: under DR/TUN it is rendered on the virtual
  server's port (warned when its configured port differs);
* members sharing an IP:port are rendered once;
* a virtual server without Active members is not rendered (keepalived rejects it) --
  warned about instead;
* two services claiming one VIP:port:protocol is a configuration error naming both.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
from dataclasses import dataclass, fields, replace
from typing import Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

from ..addresses import check_safe_name, parse_host_ip, parse_port
from ..errors import InputError, SettingsError
from .model import HealthCheck, LvsConfig, Policy, RealServer, VirtualServer, Vrrp
from .topology import Member, Port, Service, Topology

_PROTOCOLS = {"tcp": "TCP", "http": "TCP", "https": "TCP", "ws": "TCP", "wss": "TCP",
              "udp": "UDP", "sctp": "SCTP"}

PortKey = Tuple[str, int, str]      #: (service, proxy port, protocol)
VsKey = Tuple[str, int, str]        #: (VIP, port, protocol)


@dataclass(frozen=True)
class Plan:
    config: LvsConfig
    warnings: Tuple[str, ...]


def _q(value: object) -> str:
    """A value quoted safely for a log line (newlines escaped, length capped)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# The whole topology is planned again on every change: at 10,000 members, parsing each
# address with ``ipaddress`` was most of a plan.  Addresses repeat from one plan to the
# next, so the pure string -> value steps are cached (bounded).
_CACHE = 1 << 17


@functools.lru_cache(maxsize=_CACHE)
def ip_sort_key(address: str) -> Tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


@functools.lru_cache(maxsize=_CACHE)
def _family(address: str) -> int:
    return ipaddress.ip_address(address).version


def _where(member: Member) -> str:
    return f"member {_q(member.member_id)} of cluster {_q(member.cluster_id)}"


@functools.lru_cache(maxsize=_CACHE)
def _host_ip(text: str) -> Optional[Tuple[int, str]]:
    """(version, compressed form) of a usable host address; None when it is not one."""
    try:
        ip = parse_host_ip(text, "IP")
    except InputError:
        return None
    return ip.version, ip.compressed


def vrrp_of(settings) -> Vrrp:
    """The VRRP / ``global_defs`` part of the model (fields named like the settings)."""
    return Vrrp(**{f.name: getattr(settings, f.name) for f in fields(Vrrp)})


def policy_of(service_settings, vip: str) -> Policy:
    """One service's resolved settings as the model of its virtual servers.

    A ``sorry_server`` of the other address family than *vip* is left out (keepalived
    would ignore it).
    """
    s = service_settings
    sorry = s.sorry_server
    if sorry is not None and _family(sorry[0]) != _family(vip):
        sorry = None
    check = None
    if s.health_check != "NONE":
        check = HealthCheck(s.health_check, s.http_path, s.http_status, s.connect_timeout,
                            s.retry)
    return Policy(s.scheduler, s.forwarding_method, s.persistence_timeout, s.delay_loop,
                  sorry, check)


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


class MemberMemo:
    """What planning one service concluded about each of its members, kept from one
    plan of the service to the next (:class:`~.service.PlanCache` holds one per mapped
    service; the planner stays a function of its inputs).

    A member event changes one member of a service of up to thousands: with the memo,
    the others cost a look-up each instead of validating their ids, parsing their
    address and port and building their real server again.  An entry is used only for
    the very same member value (and portMap entry) it was made from, and replays the
    warnings it made.
    """

    def __init__(self) -> None:
        #: (cluster id, member id) -> (member, its address or None, warnings)
        self.addresses: Dict[Tuple[str, str], tuple] = {}
        #: (cluster id, member id, proxy, protocol) -> (member, portMap entry, real server
        #: or None, warnings, the member port DR/TUN cannot map or None)
        self.servers: Dict[tuple, tuple] = {}
        self.next_addresses: Dict[Tuple[str, str], tuple] = {}
        self.next_servers: Dict[tuple, tuple] = {}
        #: (proxy, protocol) -> the real servers of that virtual server, in order
        self.orders: Dict[Tuple[int, str], Tuple[RealServer, ...]] = {}

    def settle(self) -> None:
        """End of a plan: keep only the entries it used (members that left go)."""
        self.addresses, self.next_addresses = self.next_addresses, {}
        self.servers, self.next_servers = self.next_servers, {}


class _Planner:
    """Plans one mapped service (one name and VIP of ``vip_map``)."""

    def __init__(self, settings, memo: Optional[MemberMemo] = None) -> None:
        self.settings = settings
        self.memo = memo or MemberMemo()
        self.warnings: List[str] = []
        #: every VIP:port:protocol the service claims, rendered or not, in order
        self.claims: List[VsKey] = []
        #: (service, proxy, protocol) -> {member port: member ids}: ports DR/TUN cannot map
        self.unmapped: Dict[PortKey, Dict[int, Set[str]]] = {}
        clusters, partitions = settings.cluster_ids, settings.network_partition_id
        self.clusters = frozenset(clusters) if clusters else None
        self.partitions = frozenset(partitions) if partitions else None

    def served(self, member: Member) -> bool:
        """Whether the filters leave *member* in (a member without a network partition
        is kept, as Stratos' member filter does)."""
        if self.clusters is not None and member.cluster_id not in self.clusters:
            return False
        return (self.partitions is None or not member.network_partition_id
                or member.network_partition_id in self.partitions)

    def member_address(self, member: Member, vip: str) -> Optional[str]:
        """The member's validated address for *vip*, or None (warned)."""
        key = (member.cluster_id, member.member_id)
        hit = self.memo.addresses.get(key)
        if hit is None or (hit[0] is not member and hit[0] != member):
            start = len(self.warnings)
            address = self._member_address(member, vip)
            hit = (member, address, tuple(self.warnings[start:]))
        elif hit[2]:
            self.warnings.extend(hit[2])
        self.memo.next_addresses[key] = hit
        return hit[1]

    def _member_address(self, member: Member, vip: str) -> Optional[str]:
        version = _family(vip)
        try:
            check_safe_name(member.member_id, "memberId")
            check_safe_name(member.cluster_id, "clusterId")
        except InputError as exc:
            self.warnings.append(f"skipped {_where(member)}: {exc.key} contains "
                                 "characters that are not allowed")
            return None
        address = member.address
        if address is None:
            self.warnings.append(f"skipped {_where(member)}: no {member.lb_ip_type} IP "
                                 "address")
            return None
        parsed = _host_ip(address) if isinstance(address, str) else None
        if parsed is None:
            self.warnings.append(f"skipped {_where(member)}: {member.lb_ip_type} IP "
                                 f"{_q(address)} is not a usable address")
            return None
        ip_version, ip = parsed
        if ip_version != version:
            self.warnings.append(f"skipped {_where(member)}: IPv{ip_version} address {ip} "
                                 f"cannot serve an IPv{version} VIP")
            return None
        if ip == vip:
            self.warnings.append(f"skipped {_where(member)}: its {member.lb_ip_type} IP "
                                 f"{ip} is the VIP itself")
            return None
        return ip

    def real_server(self, member: Member, address: str, key: PortKey, service_port: Port,
                    method: str, weight: int) -> Optional[RealServer]:
        """The member's real server under port *key* (None: warned), and what DR/TUN
        cannot map recorded."""
        _, proxy, protocol = key
        memo_key = (member.cluster_id, member.member_id, proxy, protocol)
        hit = self.memo.servers.get(memo_key)
        if hit is None or (hit[0] is not member and hit[0] != member) or (
                hit[1] is not service_port and hit[1] != service_port):
            start = len(self.warnings)
            port, unmapped = self._real_port(member, proxy, service_port, method)
            server = port and RealServer(address, port, weight, member.member_id,
                                         member.cluster_id)
            hit = (member, service_port, server, tuple(self.warnings[start:]), unmapped)
        elif hit[3]:
            self.warnings.extend(hit[3])
        self.memo.next_servers[memo_key] = hit
        if hit[4] is not None:
            self.unmapped.setdefault(key, {}).setdefault(hit[4], set()).add(member.member_id)
        return hit[2]

    def _real_port(self, member: Member, proxy: int, service_port: Port,
                   method: str) -> Tuple[Optional[int], Optional[int]]:
        """(the real server's port or None (warned), the member port DR/TUN cannot map
        or None)."""
        raw = _member_port(member, proxy, service_port)
        try:
            value = parse_port(raw, "port")
        except InputError:
            self.warnings.append(f"skipped member {_q(member.member_id)} on port {proxy}: "
                                 f"its port {_q(raw)} is not a port 1-65535")
            return None, None
        if method == "NAT":
            return value, None
        return proxy, (value if value != proxy else None)

    def virtual_servers(self, name: str, vip: str, service: Service) -> List[VirtualServer]:
        svc = self.settings.for_service(name)
        policy = policy_of(svc, vip)
        members = service.members()
        active = [m for m in members if m.active]
        served = [m for m in active if self.served(m)]
        filtered = len(active) - len(served)
        addresses = {m.member_id: self.member_address(m, vip) for m in served}
        result = []
        ports = _proxy_ports(service, members, self.warnings, svc.protocol)
        if not ports:
            self.warnings.append(f"service {name!r} has no ports in its portMap: nothing "
                                 f"to serve on {vip}")
        for (proxy, protocol), service_port in sorted(ports.items()):
            self.claims.append((vip, proxy, protocol))
            real: Dict[Tuple[str, int], RealServer] = {}
            key = (name, proxy, protocol)
            for member in served:
                address = addresses[member.member_id]
                server = address and self.real_server(member, address, key, service_port,
                                                      svc.forwarding_method, svc.weight)
                if server:
                    real.setdefault((address, server.port), server)
            if not real:
                why = (f" ({filtered} Active member{'s' if filtered > 1 else ''} left out "
                       "by cluster_ids / network_partition_id)" if filtered else "")
                self.warnings.append(
                    f"service {name!r}: no Active member to serve {vip} port {proxy}/"
                    f"{protocol}{why}; not rendered (keepalived rejects an empty virtual "
                    "server)")
                continue
            ordered = _ordered(real, self.memo.orders.get((proxy, protocol), ()))
            self.memo.orders[(proxy, protocol)] = ordered
            result.append(VirtualServer(vip, proxy, protocol, name, ordered,
                                        self.sorry_on(policy, name, proxy)))
        return result

    def sorry_on(self, policy: Policy, name: str, proxy: int) -> Policy:
        """*policy* for the virtual server on port *proxy*: under DR/TUN the sorry
        server, like a real server, receives packets on that port unchanged (keepalived
        resets a differing port, with a warning that fails ``-t``), so it is rendered
        there, and a differing configured port is warned about."""
        sorry = policy.sorry_server
        if sorry is None or policy.forwarding_method == "NAT" or sorry[1] == proxy:
            return policy
        self.warnings.append(
            f"service {name!r} port {proxy}: sorry_server {sorry[0]} {sorry[1]}, but with "
            f"{policy.forwarding_method} it receives packets on port {proxy} unchanged: "
            f"rendered as {sorry[0]} {proxy}")
        return replace(policy, sorry_server=(sorry[0], proxy))


def _ordered(real: Dict[Tuple[str, int], RealServer],
             before: Tuple[RealServer, ...]) -> Tuple[RealServer, ...]:
    """``real``'s values sorted by :func:`rs_sort_key`, given *before* (the previous
    order, of real servers the memo gives back as the very same objects): those still
    there keep their order, and only the new ones are sorted and put in place -- one
    member event costs a pass, not a sort of the service's real servers."""
    kept = [rs for rs in before if real.get((rs.ip, rs.port)) is rs]
    if len(kept) == len(real):
        return before if len(kept) == len(before) else tuple(kept)
    if not kept:
        return tuple(sorted(real.values(), key=rs_sort_key))
    old = {id(rs) for rs in kept}
    for rs in (rs for rs in real.values() if id(rs) not in old):
        kept.insert(bisect.bisect(kept, rs_sort_key(rs), key=rs_sort_key), rs)
    return tuple(kept)


@dataclass(frozen=True)
class ServicePlan:
    """One mapped service's part of a :class:`Plan`: a pure function of the settings,
    the service's name and VIP and its :class:`~.topology.Service` (None: not in the
    topology), so a caller may keep it while that service does not change and
    :func:`combine` it with the others' (at 10,000 real servers a member event then
    plans one service, not all of them)."""

    virtual_servers: Tuple[VirtualServer, ...]
    warnings: Tuple[str, ...]
    #: every VIP:port:protocol the service claims (also those not rendered), in order
    claims: Tuple[VsKey, ...]
    #: ((service, proxy, protocol), ((member port, member ids), ...)): what DR/TUN
    #: cannot map
    unmapped: Tuple[Tuple[PortKey, Tuple[Tuple[int, FrozenSet[str]], ...]], ...]
    forwarding_method: str


def plan_service(settings, name: str, vip: str, service: Optional[Service],
                 memo: Optional[MemberMemo] = None) -> ServicePlan:
    """The part of the plan of service *name* on *vip*; pure (*memo*, the one kept
    for this service -- these settings, name and VIP -- from its previous plans, only
    saves work)."""
    method = settings.for_service(name).forwarding_method
    if service is None:
        return ServicePlan((), (f"service {name!r} (VIP {vip}) is not in the topology",),
                           (), (), method)
    planner = _Planner(settings, memo)
    servers = planner.virtual_servers(name, vip, service)
    planner.memo.settle()
    unmapped = tuple((key, tuple((port, frozenset(ids)) for port, ids in sorted(t.items())))
                     for key, t in sorted(planner.unmapped.items()))
    return ServicePlan(tuple(servers), tuple(planner.warnings), tuple(planner.claims),
                       unmapped, method)


def combine(settings, parts: Sequence[Tuple[str, ServicePlan]]) -> Plan:
    """The :class:`Plan` of the services' parts (*parts* in ``vip_map`` order, each
    with its service name); ``SettingsError`` when two services claim one
    VIP:port:protocol."""
    claims: Dict[VsKey, str] = {}
    unmapped: Dict[PortKey, Dict[int, Set[str]]] = {}
    methods: Dict[str, str] = {}
    servers: List[VirtualServer] = []
    warnings: List[str] = []
    for name, part in parts:
        for key in part.claims:
            other = claims.setdefault(key, name)
            if other != name:
                vip, port, protocol = key
                raise SettingsError("vip_map", f"{other}|{vip},{name}|{vip}",
                                    f"services {other!r} and {name!r} both claim "
                                    f"{vip}:{port}/{protocol}")
        for key, targets in part.unmapped:
            merged = unmapped.setdefault(key, {})
            for port, ids in targets:
                merged.setdefault(port, set()).update(ids)
        methods[name] = part.forwarding_method
        servers += part.virtual_servers
        warnings += part.warnings
    warnings += _port_warnings(unmapped, methods)
    servers.sort(key=vs_sort_key)
    vips = tuple(sorted({vip for _, vip in settings.vip_map}, key=ip_sort_key))
    return Plan(LvsConfig(tuple(servers), vips, vrrp_of(settings)), tuple(warnings))


def _port_warnings(unmapped: Dict[PortKey, Dict[int, Set[str]]],
                   methods: Dict[str, str]) -> List[str]:
    """One line per service and port whose members DR/TUN cannot reach as mapped."""
    out = []
    for (name, proxy, protocol), targets in sorted(unmapped.items()):
        method = methods[name]
        count = len(set().union(*targets.values()))
        listen = ", ".join(f"{port} ({len(ids)})" if len(targets) > 1 else str(port)
                           for port, ids in sorted(targets.items()))
        out.append(
            f"service {name!r} port {proxy}/{protocol}: {count} member"
            f"{'s' if count > 1 else ''} listen{'' if count > 1 else 's'} on {listen}, "
            f"but with {method} the real server receives packets on port {proxy} "
            f"unchanged: {'they' if count > 1 else 'it'} must accept connections on "
            f"port {proxy} (or use forwarding_method NAT)")
    return out


def rs_sort_key(rs: RealServer) -> Tuple[Tuple[int, int], int]:
    """The order of the real servers of a virtual server (address as a number, port)."""
    return ip_sort_key(rs.ip), rs.port


def vs_sort_key(vs: VirtualServer) -> Tuple[Tuple[int, int], int, str]:
    """The order of the virtual servers in a plan (VIP as a number, port, protocol)."""
    return ip_sort_key(vs.vip), vs.port, vs.protocol


def plan(settings, topology: Topology) -> Plan:
    """What keepalived must serve for *topology*; ``SettingsError`` on a VIP clash."""
    return combine(settings, [(name, plan_service(settings, name, vip,
                                                  topology.services.get(name)))
                              for name, vip in settings.vip_map])
