"""The e2e topology in Stratos wire format (CompleteTopologyEvent and member events).

Pure data: the runner writes :meth:`Topology.complete_event` into the topology file one
director follows and publishes the same changes as member events on the broker the other
director follows. Field names follow the Stratos 4.1 Gson serialisation
(``../shared/reference/stratos.md`` section 3).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

APP = "e2e"
_STATES_UP_TO_ACTIVE = ["Created", "Initialized", "Starting", "Active"]


@dataclass
class Member:
    service: str
    name: str          # host name in the lab, e.g. "rs1"
    ip: str
    status: str = "Active"

    @property
    def member_id(self) -> str:
        return f"{self.service}.{self.name}"

    @property
    def cluster_id(self) -> str:
        return cluster_id(self.service)


def cluster_id(service: str) -> str:
    return f"{service}.{APP}.domain"


class Topology:
    """Services, one cluster each, members with a status; serialised like Stratos."""

    def __init__(self, port: int = 80):
        self.port = port
        self.services: dict[str, dict[str, Member]] = {}

    def add(self, service: str, name: str, ip: str, status: str = "Active") -> Member:
        member = Member(service, name, ip, status)
        self.services.setdefault(service, {})[name] = member
        return member

    def add_service(self, service: str) -> None:
        """A service (and its cluster) without members yet."""
        self.services.setdefault(service, {})

    def member(self, service: str, name: str) -> Member:
        return self.services[service][name]

    def _port_map(self) -> dict:
        return {str(self.port): {"protocol": "http", "value": self.port, "proxy": self.port}}

    def _member_json(self, m: Member) -> dict:
        stack = list(_STATES_UP_TO_ACTIVE)
        if m.status != "Active":
            stack.append(m.status)
        return {
            "serviceName": m.service, "clusterId": m.cluster_id, "memberId": m.member_id,
            "clusterInstanceId": f"{APP}-1", "networkPartitionId": "np1", "partitionId": "p1",
            "initTime": 1732406400000, "defaultPrivateIP": m.ip, "memberPrivateIPs": [m.ip],
            "defaultPublicIP": m.ip, "memberPublicIPs": [m.ip], "loadBalancingIPType": "Private",
            "portMap": self._port_map(), "properties": {},
            "memberStateManager": {"stateStack": stack},
        }

    def complete_event(self) -> dict:
        """The ``CompleteTopologyEvent`` JSON object (``{"topology": {...}}``)."""
        service_map = {}
        for service, members in sorted(self.services.items()):
            cid = cluster_id(service)
            service_map[service] = {
                "serviceName": service, "serviceType": "SingleTenant",
                "portMap": self._port_map(), "properties": {},
                "clusterIdClusterMap": {cid: {
                    "serviceName": service, "clusterId": cid, "appId": APP,
                    "autoscalePolicyName": "ap1", "deploymentPolicyName": "dp1",
                    "hostNames": [f"{service}.{APP}.example.org"], "tenantRange": "*",
                    "isLbCluster": False, "isKubernetesCluster": False,
                    "loadBalanceAlgorithmName": "round-robin", "properties": {},
                    "kubernetesServices": [], "loadBalancerIps": [],
                    "memberMap": {m.member_id: self._member_json(m) for m in members.values()},
                }},
            }
        return {"topology": {"initialized": True, "serviceMap": service_map}}

    def member_event(self, m: Member, event: str) -> dict:
        """A member event payload for ``m`` (``MemberActivatedEvent`` carries ports and IPs)."""
        payload = {
            "serviceName": m.service, "clusterId": m.cluster_id, "clusterInstanceId": f"{APP}-1",
            "memberId": m.member_id, "instanceId": f"i-{m.name}",
            "networkPartitionId": "np1", "partitionId": "p1",
        }
        if event == "MemberActivatedEvent":
            payload.update({
                "portMap": self._port_map(), "memberPrivateIPs": [m.ip], "defaultPrivateIP": m.ip,
                "memberPublicIPs": [m.ip], "defaultPublicIP": m.ip,
            })
        return payload

    def dumps(self) -> str:
        return json.dumps(self.complete_event(), indent=1, sort_keys=True)
