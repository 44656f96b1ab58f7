"""The Stratos topology as plain immutable data, and the events that change it.

:func:`parse_topology` reads a ``CompleteTopologyEvent`` (``{"topology": {...}}``) or
the bare topology object; :func:`apply_event` folds one topology event into a
:class:`Topology` and returns a new one.  Both check the *structure* (objects where
objects belong, ids as strings) and raise :class:`~cartridge_agent_lvs.errors.TopologyError`
without applying anything when it is wrong.  Field *contents* (addresses, ports, ids
that end up in keepalived.conf) are kept as given: the planner validates them member
by member and skips, with a warning, a member it cannot use -- one bad member must not
hide the others.

Field names are Stratos' Gson names (``serviceMap``, ``clusterIdClusterMap``,
``memberMap``, ``memberStateManager.stateStack`` ...): see ``docs/design.rst`` and the
Stratos notes.  A member's status is the last entry of its state stack.

Clusters enter the topology of Stratos 4.1.6 only through
``ApplicationClustersCreatedEvent`` (``{"appId", "clusterList": [Cluster...]}``; a
cluster already known is kept, as Stratos does) and leave through
``ApplicationClustersRemovedEvent`` (``{"appId", "clusterData": [{"serviceType",
"clusterId"}...]}`` -- ``serviceType`` names the service) or ``ClusterRemovedEvent``;
``ClusterCreatedEvent`` (no publisher in 4.1.6) is understood too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import TopologyError

ACTIVE = "Active"

#: member events that only change the member's status
_STATUS_EVENTS = {
    "MemberCreatedEvent": "Created",
    "MemberInitializedEvent": "Initialized",
    "MemberStartedEvent": "Starting",
    "MemberActivatedEvent": "Active",
    "MemberMaintenanceModeEvent": "In_Maintenance",
    "MemberReadyToShutdownEvent": "ReadyToShutDown",
    "MemberSuspendedEvent": "Suspended",
}


@dataclass(frozen=True)
class Port:
    """One ``portMap`` entry: the load balancer listens on *proxy*, the member on *value*."""

    proxy: Any
    value: Any
    protocol: str


@dataclass(frozen=True)
class Member:
    member_id: str
    cluster_id: str
    service_name: str
    status: str
    lb_ip_type: str                     #: "Private" or "Public"
    private_ips: Tuple[Any, ...]        #: default first, then memberPrivateIPs
    public_ips: Tuple[Any, ...]
    ports: Tuple[Port, ...]
    network_partition_id: str = ""      #: "" when Stratos gave none

    @property
    def active(self) -> bool:
        return self.status == ACTIVE

    @property
    def address(self) -> Any:
        """The IP the load balancer must use (``loadBalancingIPType``), or None."""
        ips = self.public_ips if self.lb_ip_type.lower() == "public" else self.private_ips
        return ips[0] if ips else None


@dataclass(frozen=True)
class Cluster:
    cluster_id: str
    service_name: str
    members: Mapping[str, Member]


@dataclass(frozen=True)
class Service:
    name: str
    ports: Tuple[Port, ...]
    clusters: Mapping[str, Cluster]

    def members(self) -> List[Member]:
        """Every member, all clusters, ordered by (cluster id, member id)."""
        return [self.clusters[c].members[m] for c in sorted(self.clusters)
                for m in sorted(self.clusters[c].members)]


@dataclass(frozen=True)
class Topology:
    services: Mapping[str, Service]

    def members(self, service: str):
        """Every member of *service*, all clusters, ordered by (cluster id, member id)."""
        svc = self.services.get(service)
        return svc.members() if svc is not None else []


def _frozen(d: Dict[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(d)


# -- structure checks ----------------------------------------------------------------

def _obj(value: Any, where: str) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise TopologyError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _map(parent: Dict[str, Any], key: str, where: str) -> Dict[str, Any]:
    value = parent.get(key)
    return {} if value is None else _obj(value, f"{where}.{key}")


def _str(parent: Dict[str, Any], key: str, where: str, default: Optional[str] = None,
         nullable: bool = False) -> str:
    """``parent[key]``, a string; *default* when absent (or null, with *nullable*)."""
    value = parent.get(key, default)
    if value is None and nullable:
        value = default
    if not isinstance(value, str):
        raise TopologyError(f"{where}.{key}: expected a string, got {_short(value)}")
    return value


def _list(parent: Dict[str, Any], key: str, where: str) -> list:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise TopologyError(f"{where}.{key}: expected a list, got {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _LongNumber:
    """Stands for a JSON integer too long for ``int()`` while it is being located."""

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _long_number_error(text: str, what: str) -> TopologyError:
    """Name the field holding the integer that ``json.loads`` could not convert
    (Python's int-string limit, 4300 digits): parsed again, keeping such numbers as
    markers, and searched for the first one."""
    def as_int(digits: str) -> Any:
        return _LongNumber(len(digits.lstrip("-"))) if len(digits) > 64 else int(digits)

    try:
        stack = [("", json.loads(text, parse_int=as_int))]
    except json.JSONDecodeError as exc:      # broken after the number, too
        return _json_error(exc, what)
    while stack:
        path, value = stack.pop()
        if isinstance(value, _LongNumber):
            return TopologyError(f"{what}: {path.lstrip('.') or 'value'}: a number of "
                                 f"{value.digits} digits (not a port, id or address)")
        if isinstance(value, dict):
            items = [(f"{path}.{k}" if _NAME_RE.fullmatch(k) else f"{path}[{k!r}]", v)
                     for k, v in value.items()]
        elif isinstance(value, list):
            items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
        else:
            continue
        stack.extend(reversed(items))
    return TopologyError(f"{what}: a number too long to convert")


_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _json_error(exc: json.JSONDecodeError, what: str) -> TopologyError:
    return TopologyError(f"{what}: not valid JSON ({exc.msg} at line {exc.lineno} "
                         f"column {exc.colno})")


def _decode(data: Any, what: str) -> Dict[str, Any]:
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TopologyError(f"{what}: not UTF-8 ({exc.reason} at byte {exc.start})") \
                from None
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise _json_error(exc, what) from None
        except RecursionError:
            raise TopologyError(f"{what}: JSON nested too deeply") from None
        except ValueError:          # an integer over Python's int-string limit
            raise _long_number_error(data, what) from None
    return _obj(data, what)


# -- parsing -------------------------------------------------------------------------

def _ports(raw: Any, where: str) -> Tuple[Port, ...]:
    ports = []
    for key, entry in sorted(_obj(raw or {}, where).items()):
        entry = _obj(entry, f"{where}[{key!r}]")
        protocol = entry.get("protocol") or ""
        if not isinstance(protocol, str):
            raise TopologyError(f"{where}[{key!r}].protocol: expected a string")
        ports.append(Port(entry.get("proxy", key), entry.get("value"), protocol))
    return tuple(ports)


def _ips(raw: Dict[str, Any], default_key: str, list_key: str, where: str) -> Tuple[Any, ...]:
    ips = []
    default = raw.get(default_key)
    if default not in (None, ""):
        ips.append(default)
    ips += [ip for ip in _list(raw, list_key, where) if ip not in ips]
    return tuple(ips)


def _status(raw: Dict[str, Any], where: str) -> str:
    manager = _map(raw, "memberStateManager", where)
    stack = _list(manager, "stateStack", f"{where}.memberStateManager")
    if stack:
        if not isinstance(stack[-1], str):
            raise TopologyError(f"{where}.memberStateManager.stateStack: expected strings")
        return stack[-1]
    status = raw.get("status", "Created")
    return status if isinstance(status, str) else "Created"


def _member(raw: Any, where: str, cluster_id: str, service: str,
            default_id: Optional[str] = None) -> Member:
    raw = _obj(raw, where)
    lb_type = raw.get("loadBalancingIPType") or "Private"
    if not isinstance(lb_type, str):
        raise TopologyError(f"{where}.loadBalancingIPType: expected a string")
    return Member(
        member_id=_str(raw, "memberId", where, default_id),
        cluster_id=_str(raw, "clusterId", where, cluster_id),
        service_name=_str(raw, "serviceName", where, service),
        status=_status(raw, where),
        lb_ip_type=lb_type,
        private_ips=_ips(raw, "defaultPrivateIP", "memberPrivateIPs", where),
        public_ips=_ips(raw, "defaultPublicIP", "memberPublicIPs", where),
        ports=_ports(raw.get("portMap"), f"{where}.portMap"),
        network_partition_id=_str(raw, "networkPartitionId", where, "", nullable=True))


def _cluster(raw: Any, where: str, service: str, default_id: Optional[str] = None) -> Cluster:
    raw = _obj(raw, where)
    cluster_id = _str(raw, "clusterId", where, default_id)
    members = {}
    for key, m in _map(raw, "memberMap", where).items():
        member = _member(m, f"{where}.memberMap[{key!r}]", cluster_id, service, key)
        members[member.member_id] = member
    return Cluster(cluster_id, _str(raw, "serviceName", where, service), _frozen(members))


def _service(raw: Any, where: str, default_name: Optional[str] = None) -> Service:
    raw = _obj(raw, where)
    name = _str(raw, "serviceName", where, default_name)
    clusters = {}
    for key, c in _map(raw, "clusterIdClusterMap", where).items():
        cluster = _cluster(c, f"{where}.clusterIdClusterMap[{key!r}]", name, key)
        clusters[cluster.cluster_id] = cluster
    return Service(name, _ports(raw.get("portMap"), f"{where}.portMap"), _frozen(clusters))


def parse_topology(data: Any) -> Topology:
    """A :class:`Topology` from a CompleteTopologyEvent or a bare topology object."""
    doc = _decode(data, "topology")
    if "topology" in doc:
        doc = _obj(doc["topology"], "topology")
    if "serviceMap" not in doc:
        raise TopologyError("topology: no serviceMap (not a Stratos topology)")
    services = {}
    for key, s in _map(doc, "serviceMap", "topology").items():
        service = _service(s, f"serviceMap[{key!r}]", key)
        if service.name in services:
            raise TopologyError(f"serviceMap[{key!r}]: serviceName {service.name!r} is "
                                "named twice in the serviceMap")
        services[service.name] = service
    return Topology(_frozen(services))


# -- events --------------------------------------------------------------------------

def _with_service(topology: Topology, service: Service) -> Topology:
    services = dict(topology.services)
    services[service.name] = service
    return Topology(_frozen(services))


def _with_cluster(topology: Topology, cluster: Cluster) -> Topology:
    service = topology.services.get(cluster.service_name)
    if service is None:
        raise TopologyError(f"unknown service {cluster.service_name!r}")
    clusters = dict(service.clusters)
    clusters[cluster.cluster_id] = cluster
    return _with_service(topology, replace(service, clusters=_frozen(clusters)))


def _find_cluster(topology: Topology, payload: Dict[str, Any], event: str) -> Cluster:
    service_name = _str(payload, "serviceName", event)
    cluster_id = _str(payload, "clusterId", event)
    service = topology.services.get(service_name)
    if service is None:
        raise TopologyError(f"{event}: unknown service {service_name!r}")
    cluster = service.clusters.get(cluster_id)
    if cluster is None:
        raise TopologyError(f"{event}: unknown cluster {cluster_id!r} of service "
                            f"{service_name!r}")
    return cluster


def _member_event(topology: Topology, event: str, payload: Dict[str, Any]) -> Topology:
    cluster = _find_cluster(topology, payload, event)
    member_id = _str(payload, "memberId", event)
    members = dict(cluster.members)
    old = members.get(member_id)
    if event == "MemberTerminatedEvent":
        if old is None:
            return topology
        del members[member_id]
    else:
        status = _STATUS_EVENTS[event]
        raw = payload.get("member") if isinstance(payload.get("member"), dict) else payload
        fresh = _member(raw, event, cluster.cluster_id, cluster.service_name, member_id)
        if old is None:
            new = replace(fresh, status=status)
        else:
            # events carry addresses and ports only sometimes: keep what they omit
            new = replace(old, status=status,
                          private_ips=fresh.private_ips or old.private_ips,
                          public_ips=fresh.public_ips or old.public_ips,
                          ports=fresh.ports or old.ports,
                          network_partition_id=(fresh.network_partition_id
                                                or old.network_partition_id),
                          lb_ip_type=(raw.get("loadBalancingIPType") and fresh.lb_ip_type)
                          or old.lb_ip_type)
        if new == old:
            return topology
        members[member_id] = new
    return _with_cluster(topology, replace(cluster, members=_frozen(members)))


def apply_event(topology: Topology, event_name: str, payload: Any) -> Topology:
    """*topology* with one event applied (a new object; the same one if unchanged).

    Events that do not change what the load balancer serves (application, tenant,
    instance events ...) return *topology* itself.  Raises :class:`TopologyError` for
    a malformed payload or a service/cluster the topology does not have.
    """
    if event_name == "CompleteTopologyEvent":
        return parse_topology(payload)
    if event_name not in _HANDLED:
        return topology
    data = _decode(payload, event_name)
    if event_name in _STATUS_EVENTS or event_name == "MemberTerminatedEvent":
        return _member_event(topology, event_name, data)
    if event_name == "ServiceCreatedEvent":
        raw = data.get("service", data)
        service = _service(raw, event_name)
        old = topology.services.get(service.name)
        if old is not None:
            service = replace(service, clusters=old.clusters)
        return topology if old == service else _with_service(topology, service)
    if event_name == "ServiceRemovedEvent":
        name = _str(data, "serviceName", event_name)
        if name not in topology.services:
            return topology
        services = dict(topology.services)
        del services[name]
        return Topology(_frozen(services))
    if event_name == "ClusterCreatedEvent":
        raw = _obj(data.get("cluster", data), f"{event_name}.cluster")
        cluster = _cluster(raw, event_name, _str(raw, "serviceName", event_name))
        return _with_cluster(topology, cluster)
    if event_name == "ApplicationClustersCreatedEvent":
        return _application_clusters_created(topology, data)
    if event_name == "ApplicationClustersRemovedEvent":
        return _application_clusters_removed(topology, data)
    # ClusterRemovedEvent
    cluster = _find_cluster(topology, data, event_name)
    return _without_cluster(topology, cluster.service_name, cluster.cluster_id)


def _without_cluster(topology: Topology, service_name: str, cluster_id: str) -> Topology:
    """*topology* without that cluster; the same object when it has no such cluster."""
    service = topology.services.get(service_name)
    if service is None or cluster_id not in service.clusters:
        return topology
    clusters = dict(service.clusters)
    del clusters[cluster_id]
    return _with_service(topology, replace(service, clusters=_frozen(clusters)))


def _application_clusters_created(topology: Topology, data: Dict[str, Any]) -> Topology:
    """Every cluster of ``clusterList`` not yet known added to its service.

    All or nothing: a malformed cluster, or one of a service the topology does not
    have, raises and applies none of them.
    """
    event = "ApplicationClustersCreatedEvent"
    app = _str(data, "appId", event, "", nullable=True)
    new = topology
    for i, raw in enumerate(_list(data, "clusterList", event)):
        where = f"{event}.clusterList[{i}]"
        raw = _obj(raw, where)
        cluster = _cluster(raw, where, _str(raw, "serviceName", where))
        service = new.services.get(cluster.service_name)
        if service is None:
            raise TopologyError(f"{where}: unknown service {cluster.service_name!r} "
                                f"(application {app!r}); no cluster of the event applied")
        if cluster.cluster_id not in service.clusters:
            new = _with_cluster(new, cluster)
    return new


def _application_clusters_removed(topology: Topology, data: Dict[str, Any]) -> Topology:
    """Every cluster of ``clusterData`` removed; unknown ones are already gone."""
    event = "ApplicationClustersRemovedEvent"
    removals = []
    for i, raw in enumerate(_list(data, "clusterData", event)):
        where = f"{event}.clusterData[{i}]"
        raw = _obj(raw, where)
        removals.append((_str(raw, "serviceType", where), _str(raw, "clusterId", where)))
    for service_name, cluster_id in removals:
        topology = _without_cluster(topology, service_name, cluster_id)
    return topology


#: a member's statuses on its way to Active (Stratos: Created -> Initialized, once the
#: instance has its addresses -> Starting, once its cartridge agent runs -> Active)
BOOTING = frozenset({"Created", "Initialized", "Starting"})
#: the events that leave a member booting
BOOTING_EVENTS = frozenset(e for e, status in _STATUS_EVENTS.items() if status in BOOTING)


def prospective(topology: Topology) -> Topology:
    """*topology* as it will be once its booting members are active (pure); the very
    same value when none is booting, and each service without one kept as it is."""
    services = dict(topology.services)
    changed = False
    for name, service in topology.services.items():
        clusters = dict(service.clusters)
        for cluster_id, cluster in service.clusters.items():
            booting = [m for m in cluster.members.values() if m.status in BOOTING]
            if booting:
                members = dict(cluster.members)
                members.update((m.member_id, replace(m, status=ACTIVE)) for m in booting)
                clusters[cluster_id] = replace(cluster, members=_frozen(members))
                services[name] = replace(service, clusters=_frozen(clusters))
                changed = True
    return replace(topology, services=_frozen(services)) if changed else topology


_HANDLED = frozenset(_STATUS_EVENTS) | {"MemberTerminatedEvent", "ServiceCreatedEvent",
                                        "ServiceRemovedEvent", "ClusterCreatedEvent",
                                        "ClusterRemovedEvent",
                                        "ApplicationClustersCreatedEvent",
                                        "ApplicationClustersRemovedEvent"}


def is_handled(event_name: str) -> bool:
    """Whether *event_name* can change what the director serves."""
    return event_name == "CompleteTopologyEvent" or event_name in _HANDLED
