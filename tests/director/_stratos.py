"""Stratos-format topology documents and member events (stratos.md section 3).

Shared by the service tests and ``bench/bench_feeds.py``.  Members are numbered:
member *i* of service *s* has private IP ``10.<s>.<i // 250>.<i % 250 + 1>``.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional


def member_ip(s: int, i: int) -> str:
    return f"10.{s}.{i // 250}.{i % 250 + 1}"


def cluster_id(s: int) -> str:
    return f"svc{s}.app.domain"


def member_id(s: int, i: int) -> str:
    return f"svc{s}.member-{i}"


def _port_map(port: int) -> dict:
    return {str(port): {"protocol": "http", "value": port, "proxy": port}}


def member(s: int, i: int, state: str = "Active", port: int = 80, cluster: str = "",
           network_partition: str = "np1") -> dict:
    ip = member_ip(s, i)
    return {"serviceName": f"svc{s}", "clusterId": cluster or cluster_id(s),
            "memberId": member_id(s, i), "clusterInstanceId": "app-1",
            "networkPartitionId": network_partition, "partitionId": "p1",
            "initTime": 1732406400000, "defaultPrivateIP": ip, "memberPrivateIPs": [ip],
            "defaultPublicIP": f"203.0.113.{i % 250 + 1}",
            "memberPublicIPs": [f"203.0.113.{i % 250 + 1}"],
            "loadBalancingIPType": "Private", "portMap": _port_map(port), "properties": {},
            "memberStateManager": {"stateStack": ["Created", "Initialized", "Starting",
                                                  state]}}


def topology(members: Dict[int, Iterable[int]], port: int = 80,
             inactive: Optional[Dict[int, Iterable[int]]] = None) -> dict:
    """A CompleteTopologyEvent: service *s* with the given Active member numbers."""
    inactive = inactive or {}
    services = {}
    for s in sorted(set(members) | set(inactive)):
        mm = {member_id(s, i): member(s, i, port=port) for i in members.get(s, ())}
        mm.update({member_id(s, i): member(s, i, "Suspended", port)
                   for i in inactive.get(s, ())})
        services[f"svc{s}"] = {
            "serviceName": f"svc{s}", "serviceType": "SingleTenant",
            "portMap": _port_map(port), "properties": {},
            "clusterIdClusterMap": {cluster_id(s): {
                "serviceName": f"svc{s}", "clusterId": cluster_id(s), "appId": "app",
                "autoscalePolicyName": "ap1", "deploymentPolicyName": "dp1",
                "hostNames": [f"svc{s}.example.org"], "tenantRange": "*",
                "isLbCluster": False, "isKubernetesCluster": False,
                "loadBalanceAlgorithmName": "round-robin", "properties": {},
                "kubernetesServices": [], "loadBalancerIps": [], "memberMap": mm}}}
    return {"topology": {"initialized": True, "serviceMap": services}}


def member_event(s: int, i: int, port: int = 80) -> dict:
    """The payload of a member event (MemberActivatedEvent carries IPs and ports)."""
    ip = member_ip(s, i)
    return {"serviceName": f"svc{s}", "clusterId": cluster_id(s),
            "clusterInstanceId": "app-1", "memberId": member_id(s, i),
            "instanceId": f"i-{s}-{i}", "networkPartitionId": "np1", "partitionId": "p1",
            "portMap": _port_map(port), "memberPrivateIPs": [ip], "defaultPrivateIP": ip,
            "memberPublicIPs": [f"203.0.113.{i % 250 + 1}"],
            "defaultPublicIP": f"203.0.113.{i % 250 + 1}"}


def vip(s: int) -> str:
    return f"192.0.2.{s + 10}"


def vip_map(services: Iterable[int]) -> str:
    """The Stratos ``svc|VIP,svc|VIP`` string."""
    return ",".join(f"svc{s}|{vip(s)}" for s in services)


def add_cluster(doc: dict, s: int, cluster: str, members: Iterable[int],
                network_partition: str = "np1") -> dict:
    """*doc* with one more cluster of service *s* holding the given Active members."""
    service = doc["topology"]["serviceMap"][f"svc{s}"]
    template = next(iter(service["clusterIdClusterMap"].values()))
    service["clusterIdClusterMap"][cluster] = dict(
        template, clusterId=cluster,
        memberMap={member_id(s, i): member(s, i, cluster=cluster,
                                           network_partition=network_partition)
                   for i in members})
    return doc
