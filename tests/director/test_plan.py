"""The planner: Active members only, IP type, port mapping, dedup, injection, clashes."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings as hsettings, strategies as hs

from cartridge_agent_lvs.director.model import HealthCheck, Policy
from cartridge_agent_lvs.director.plan import ip_sort_key, plan
from cartridge_agent_lvs.director.settings import load
from cartridge_agent_lvs.director.topology import apply_event, parse_topology
from cartridge_agent_lvs.errors import SettingsError

from . import _stratos as st

SAMPLE = os.path.join(os.path.dirname(__file__), "samples", "shop-topology.json")
SHOP_MAP = "tomcat|192.168.56.40,php|192.168.56.41,dns|fd99::53,mysql|192.168.56.42"


def shop(**overrides):
    with open(SAMPLE) as f:
        topology = parse_topology(f.read())
    return plan(load(dict(vip_map=SHOP_MAP, **overrides)), topology)


def servers(result):
    """{(vip, port, protocol): [(ip, port, member_id), ...]}"""
    return {vs.key: [(rs.ip, rs.port, rs.member_id) for rs in vs.real_servers]
            for vs in result.config.virtual_servers}


def test_only_active_members_of_all_clusters_with_ip_type_and_dedup():
    got = servers(shop())
    # tomcat: member-1, -2 (shop cluster) and -21 (Public IP) of the blue cluster;
    # -22 (cluster "tomcat.blue..." sorts first) shares 10.0.1.11:80 with member-1:
    # rendered once; -3/-4/-5/-25 not Active; -23 (newline in its id) and -24 (brace in
    # its IP) skipped
    assert got[("192.168.56.40", 80, "TCP")] == [
        ("10.0.1.11", 80, "tomcat.member-22"), ("10.0.1.12", 80, "tomcat.member-2"),
        ("203.0.113.21", 80, "tomcat.member-21")]
    assert [k for k in got if k[0] == "192.168.56.40"] == [
        ("192.168.56.40", 80, "TCP"), ("192.168.56.40", 443, "TCP")]


def port_warnings(result):
    return [w for w in result.warnings if "receives packets on port" in w]


def test_dr_renders_the_proxy_port_and_warns_once_per_service_and_port():
    result = shop()
    assert port_warnings(result) == [
        f"service 'tomcat' port {proxy}/TCP: 4 members listen on {value}, but with DR the "
        f"real server receives packets on port {proxy} unchanged: they must accept "
        f"connections on port {proxy} (or use forwarding_method NAT)"
        for proxy, value in ((80, 8080), (443, 8443))]      # member-1, -2, -21, -22


def test_port_warning_counts_every_member_of_a_large_service_in_one_line():
    doc = st.topology({0: range(40)})
    members = doc["topology"]["serviceMap"]["svc0"]["clusterIdClusterMap"][
        st.cluster_id(0)]["memberMap"]
    for n, m in enumerate(members.values()):
        m["portMap"]["80"]["value"] = 8280 if n < 30 else 8281
    result = plan(load(dict(vip_map=st.vip_map([0]), forwarding_method="TUN")),
                  parse_topology(doc))
    assert port_warnings(result) == [
        "service 'svc0' port 80/TCP: 40 members listen on 8280 (30), 8281 (10), but with "
        "TUN the real server receives packets on port 80 unchanged: they must accept "
        "connections on port 80 (or use forwarding_method NAT)"]


def test_nat_keeps_the_member_port():
    got = servers(shop(forwarding_method="NAT"))
    assert got[("192.168.56.40", 80, "TCP")][0] == ("10.0.1.11", 8080, "tomcat.member-22")
    assert got[("192.168.56.40", 443, "TCP")][0] == ("10.0.1.11", 8443, "tomcat.member-22")
    assert not port_warnings(shop(forwarding_method="NAT"))


def test_udp_and_ipv6_service():
    assert servers(shop())[("fd99::53", 53, "UDP")] == [
        ("fd00:3::41", 53, "dns.member-1"), ("fd00:3::42", 53, "dns.member-2")]


def test_warnings_name_missing_service_empty_service_and_unsafe_members():
    result = plan(load(dict(vip_map=SHOP_MAP + ",redis|192.168.56.43")),
                  parse_topology(open(SAMPLE).read()))
    text = "\n".join(result.warnings)
    assert "service 'redis' (VIP 192.168.56.43) is not in the topology" in text
    assert "service 'mysql': no Active member" in text
    assert "skipped member 'tomcat.member-23\\n}\\nvrrp_strict'" in text
    assert "skipped member 'tomcat.member-24'" in text and "'10.0.2.24 }'" in text
    assert "php.member-2" in text and "'80\"'" in text
    assert all("\n" not in w for w in result.warnings)
    # the VIP of a service not (yet) in the topology is still owned by VRRP
    assert "192.168.56.43" in result.config.vips
    assert not [vs for vs in result.config.virtual_servers if vs.vip == "192.168.56.42"]


def test_services_without_vip_are_not_rendered():
    result = plan(load(dict(vip_map="php|192.168.56.41")), parse_topology(open(SAMPLE).read()))
    assert {vs.service for vs in result.config.virtual_servers} == {"php"}


def test_two_services_claiming_one_vip_port_protocol_is_an_error_naming_both():
    topo = parse_topology(st.topology({0: [1], 1: [2]}))
    with pytest.raises(SettingsError, match="'svc0' and 'svc1' both claim 192.0.2.50:80/TCP"):
        plan(load(dict(vip_map="svc0|192.0.2.50,svc1|192.0.2.50")), topo)
    # same VIP, different ports: fine
    topo = parse_topology(st.topology({0: [1]}, port=80))
    other = st.topology({1: [2]}, port=8080)["topology"]["serviceMap"]["svc1"]
    topo = apply_event(topo, "ServiceCreatedEvent", {"service": other})
    cluster = other["clusterIdClusterMap"][st.cluster_id(1)]
    topo = apply_event(topo, "ClusterCreatedEvent", {"cluster": cluster})
    got = plan(load(dict(vip_map="svc0|192.0.2.50,svc1|192.0.2.50")), topo)
    assert [vs.key for vs in got.config.virtual_servers] == [
        ("192.0.2.50", 80, "TCP"), ("192.0.2.50", 8080, "TCP")]


def test_member_of_the_other_family_is_skipped():
    topo = parse_topology(st.topology({0: [1]}))
    result = plan(load(dict(vip_map="svc0|fd99::1")), topo)
    assert result.config.virtual_servers == ()
    assert any("IPv4 address 10.0.0.2 cannot serve an IPv6 VIP" in w for w in result.warnings)


def test_same_input_in_any_order_gives_the_same_plan():
    doc = st.topology({0: range(30), 1: range(10)})
    shuffled = json.loads(json.dumps(doc))
    for service in shuffled["topology"]["serviceMap"].values():
        for cluster in service["clusterIdClusterMap"].values():
            cluster["memberMap"] = dict(reversed(list(cluster["memberMap"].items())))
    settings = load(dict(vip_map=st.vip_map([0, 1])))
    assert plan(settings, parse_topology(doc)) == plan(settings, parse_topology(shuffled))


def test_weight_setting_reaches_every_real_server():
    result = plan(load(dict(vip_map=st.vip_map([0]), weight="50")),
                  parse_topology(st.topology({0: [1, 2]})))
    assert {rs.weight for vs in result.config.virtual_servers for rs in vs.real_servers} == {50}


def test_a_member_whose_address_is_the_vip_is_skipped_with_a_warning():
    doc = st.topology({0: [1, 2]})
    member = doc["topology"]["serviceMap"]["svc0"]["clusterIdClusterMap"][
        st.cluster_id(0)]["memberMap"][st.member_id(0, 2)]
    member["defaultPrivateIP"] = st.vip(0)
    member["memberPrivateIPs"] = [st.vip(0)]
    result = plan(load(dict(vip_map=st.vip_map([0]))), parse_topology(doc))
    assert servers(result)[(st.vip(0), 80, "TCP")] == [
        (st.member_ip(0, 1), 80, st.member_id(0, 1))]
    assert [w for w in result.warnings if "svc0.member-2" in w] == [
        f"skipped member 'svc0.member-2' of cluster 'svc0.app.domain': its Private IP "
        f"{st.vip(0)} is the VIP itself"]


# -- filters: the subset of the topology this director serves (issue 12) ---------------

def two_partitions():
    """svc0: cluster svc0.app.domain (np1: members 1, 2), svc0.eu.domain (np2: 3, 4)."""
    return st.add_cluster(st.topology({0: [1, 2]}), 0, "svc0.eu.domain", [3, 4], "np2")


def served_ips(result):
    return sorted((rs.ip for vs in result.config.virtual_servers for rs in vs.real_servers),
                  key=ip_sort_key)


def test_without_filters_every_cluster_and_partition_is_served():
    result = plan(load(dict(vip_map=st.vip_map([0]))), parse_topology(two_partitions()))
    assert served_ips(result) == [st.member_ip(0, i) for i in (1, 2, 3, 4)]


def test_network_partition_filter_leaves_out_members_of_other_partitions():
    doc = two_partitions()
    # a member Stratos gave no network partition is kept (as Stratos' own filter does)
    del doc["topology"]["serviceMap"]["svc0"]["clusterIdClusterMap"]["svc0.eu.domain"][
        "memberMap"][st.member_id(0, 4)]["networkPartitionId"]
    result = plan(load(dict(vip_map=st.vip_map([0]), network_partition_id="np1")),
                  parse_topology(doc))
    assert served_ips(result) == [st.member_ip(0, i) for i in (1, 2, 4)]
    both = plan(load(dict(vip_map=st.vip_map([0]), network_partition_id="np2, np1")),
                parse_topology(doc))
    assert served_ips(both) == [st.member_ip(0, i) for i in (1, 2, 3, 4)]


def test_network_partition_filter_follows_member_events():
    topo = parse_topology(two_partitions())
    event = dict(st.member_event(0, 9), clusterId="svc0.eu.domain",
                 networkPartitionId="np2")
    topo = apply_event(topo, "MemberActivatedEvent", event)
    settings = load(dict(vip_map=st.vip_map([0]), network_partition_id="np2"))
    assert served_ips(plan(settings, topo)) == [st.member_ip(0, i) for i in (3, 4, 9)]


def test_cluster_ids_filter_serves_only_those_clusters():
    settings = load(dict(vip_map=st.vip_map([0]), cluster_ids="svc0.eu.domain"))
    result = plan(settings, parse_topology(two_partitions()))
    assert served_ips(result) == [st.member_ip(0, i) for i in (3, 4)]
    assert {rs.cluster_id for vs in result.config.virtual_servers
            for rs in vs.real_servers} == {"svc0.eu.domain"}


def test_a_service_filtered_out_entirely_says_why():
    settings = load(dict(vip_map=st.vip_map([0]), network_partition_id="np9"))
    result = plan(settings, parse_topology(two_partitions()))
    assert result.config.virtual_servers == ()
    assert ("service 'svc0': no Active member to serve 192.0.2.10 port 80/TCP (4 Active "
            "members left out by cluster_ids / network_partition_id); not rendered "
            "(keepalived rejects an empty virtual server)") in result.warnings


# -- per-service settings resolved into the model (issue 12) ---------------------------

def test_per_service_settings_reach_only_their_virtual_servers():
    result = shop(scheduler="lc", service_overrides={
        "php": dict(health_check="HTTP_GET", http_path="/health", scheduler="wlc",
                    forwarding_method="NAT", persistence_timeout="300", weight="5",
                    sorry_server="192.168.56.200 8080", delay_loop="10"),
        "mysql": dict(health_check="TCP_CHECK", connect_timeout="5"),
        "dns": dict(health_check="UDP_CHECK", sorry_server="192.168.56.200 53")})
    by_service = {vs.service: vs for vs in result.config.virtual_servers}
    php, dns, tomcat = by_service["php"], by_service["dns"], by_service["tomcat"]
    assert php.policy == Policy("wlc", "NAT", 300, 10, ("192.168.56.200", 8080),
                                HealthCheck("HTTP_GET", "/health", 200, 3, 1))
    assert {rs.weight for rs in php.real_servers} == {5}
    # the others keep the global values (and the global scheduler given here)
    assert tomcat.policy == Policy("lc", "DR", 0, 6, None,
                                   HealthCheck("TCP_CHECK", "/", 200, 3, 1))
    assert {rs.weight for rs in tomcat.real_servers} == {1}
    # an IPv4 sorry server cannot serve the IPv6 VIP of dns: left out
    assert dns.policy.check.kind == "UDP_CHECK" and dns.policy.sorry_server is None


def test_per_service_forwarding_method_decides_port_mapping_for_that_service_only():
    result = shop(service_overrides={"tomcat": dict(forwarding_method="NAT")})
    assert servers(result)[("192.168.56.40", 80, "TCP")][0] == (
        "10.0.1.11", 8080, "tomcat.member-22")
    assert port_warnings(result) == []
    result = shop(forwarding_method="NAT", service_overrides={"tomcat": dict(
        forwarding_method="TUN")})
    assert servers(result)[("192.168.56.40", 80, "TCP")][0] == (
        "10.0.1.11", 80, "tomcat.member-22")
    assert len(port_warnings(result)) == 2 and "with TUN" in port_warnings(result)[0]


def test_health_check_none_for_one_service():
    result = shop(service_overrides={"php": dict(health_check="NONE")})
    checks = {vs.service: vs.policy.check for vs in result.config.virtual_servers}
    assert checks["php"] is None and checks["tomcat"].kind == "TCP_CHECK"


def test_the_plan_carries_the_vrrp_settings():
    result = shop(state="BACKUP", priority="90", auth_pass="s3cret")
    vrrp = result.config.vrrp
    assert (vrrp.state, vrrp.priority, vrrp.auth_pass, vrrp.interface) == (
        "BACKUP", 90, "s3cret", "eth0")


def test_sorry_server_under_dr_is_rendered_on_the_virtual_port_and_warned_about():
    # keepalived resets a differing port with a warning that fails `keepalived -t`
    result = shop(sorry_server="192.168.56.200 8080", service_overrides={
        "php": dict(forwarding_method="NAT")})
    sorry = {vs.key: vs.policy.sorry_server for vs in result.config.virtual_servers
             if vs.vip.startswith("192.")}
    assert sorry == {("192.168.56.40", 80, "TCP"): ("192.168.56.200", 80),
                     ("192.168.56.40", 443, "TCP"): ("192.168.56.200", 443),
                     ("192.168.56.41", 80, "TCP"): ("192.168.56.200", 8080)}   # NAT
    assert ("service 'tomcat' port 443: sorry_server 192.168.56.200 8080, but with DR it "
            "receives packets on port 443 unchanged: rendered as 192.168.56.200 443"
            ) in result.warnings
    assert not [w for w in result.warnings if "'php'" in w and "sorry" in w]


# -- planning one service at a time (the service loop's PlanCache) ---------------------

def test_the_plan_cache_plans_only_the_changed_service_and_equals_a_fresh_plan():
    from cartridge_agent_lvs.director.service import PlanCache
    settings = load(dict(vip_map=st.vip_map(range(4)), interface="eth0",
                         forwarding_method="DR"))
    members = {s: set(range(12)) for s in range(4)}
    topology = parse_topology(st.topology(members))
    cache = PlanCache(settings)
    assert cache.plan(topology) == plan(settings, topology) and cache.planned == 4
    before = {vs.key: vs for vs in cache.plan(topology).config.virtual_servers}
    assert cache.planned == 4                      # nothing changed: nothing planned
    events = [("MemberSuspendedEvent", 1, 3), ("MemberSuspendedEvent", 2, 10),
              ("MemberActivatedEvent", 1, 3), ("MemberSuspendedEvent", 1, 0)]
    for k, (name, s, i) in enumerate(events, 1):
        topology = apply_event(topology, name, st.member_event(s, i))
        got = cache.plan(topology)
        assert got == plan(settings, topology)     # config and warnings alike
        assert cache.planned == 4 + k              # one service planned per event
        # the other services' virtual servers are the very objects planned before
        untouched = [vs for vs in got.config.virtual_servers if vs.service != f"svc{s}"]
        assert len(untouched) == 3 and all(vs is before[vs.key] for vs in untouched)
        before = {vs.key: vs for vs in got.config.virtual_servers}
    # a complete topology with the same content: compared, not planned again
    members = {0: set(range(12)), 1: set(range(1, 12)), 2: set(range(12)) - {10},
               3: set(range(12))}
    again = parse_topology(st.topology(members, inactive={1: [0], 2: [10]}))
    assert cache.plan(again) == plan(settings, again) and cache.planned == 8


def test_the_plan_cache_still_refuses_two_services_on_one_vip():
    from cartridge_agent_lvs.director.service import PlanCache
    settings = load(dict(vip_map="svc0|192.0.2.50,svc1|192.0.2.50", interface="eth0"))
    cache = PlanCache(settings)
    with pytest.raises(SettingsError, match="'svc0' and 'svc1' both claim 192.0.2.50:80/TCP"):
        cache.plan(parse_topology(st.topology({0: [1], 1: [2]})))
    with pytest.raises(SettingsError, match="both claim"):    # again, from the cache
        cache.plan(parse_topology(st.topology({0: [1], 1: [2]})))


def test_a_changed_service_replans_only_its_changed_members_with_the_same_result(
        monkeypatch):
    from cartridge_agent_lvs.director import plan as plan_module
    from cartridge_agent_lvs.director.service import PlanCache
    settings = load(dict(vip_map=st.vip_map([0]), interface="eth0", forwarding_method="DR"))
    doc = st.topology({0: range(12)})
    members = doc["topology"]["serviceMap"]["svc0"]["clusterIdClusterMap"][
        st.cluster_id(0)]["memberMap"]
    members[st.member_id(0, 2)]["portMap"]["80"]["value"] = "eighty"    # warned, skipped
    members[st.member_id(0, 3)]["defaultPrivateIP"] = "10.0.0.999"       # warned, skipped
    members[st.member_id(0, 4)]["portMap"]["80"]["value"] = 8080         # DR: warned
    members[st.member_id(0, 6)]["defaultPrivateIP"] = st.member_ip(0, 7)  # rendered once
    validated = []
    real = plan_module._Planner._member_address
    monkeypatch.setattr(plan_module._Planner, "_member_address",
                        lambda self, m, vip: validated.append(m.member_id) or real(
                            self, m, vip))
    topology = parse_topology(doc)
    cache = PlanCache(settings)
    first = cache.plan(topology)
    assert len(validated) == 12 and len(first.warnings) == 3
    events = [("MemberSuspendedEvent", 5), ("MemberActivatedEvent", 5),
              ("MemberSuspendedEvent", 3), ("MemberActivatedEvent", 3),   # its IP mended
              ("MemberSuspendedEvent", 2), ("MemberActivatedEvent", 2),   # its port mended
              ("MemberSuspendedEvent", 4), ("MemberSuspendedEvent", 6),
              ("MemberActivatedEvent", 6), ("MemberSuspendedEvent", 7)]
    for name, i in events:
        validated.clear()
        topology = apply_event(topology, name, st.member_event(0, i))
        got = cache.plan(topology)
        # the member that changed is the only one looked at again
        assert validated == ([] if name == "MemberSuspendedEvent" else
                             [st.member_id(0, i)])
        fresh = plan(settings, topology)
        assert got == fresh                        # config and warnings, in order
        assert servers(got) == servers(fresh)      # member ids too


@given(hs.sets(hs.integers(0, 600), max_size=40), hs.sets(hs.integers(0, 600), max_size=40))
@hsettings(max_examples=200, deadline=None)
def test_the_order_kept_from_the_previous_plan_is_the_sorted_order(before, after):
    # real servers kept from the previous plan are the very objects (the memo gives
    # them back); the others are new objects, some with an address seen before
    from cartridge_agent_lvs.director.model import RealServer
    from cartridge_agent_lvs.director.plan import _ordered, rs_sort_key

    def server(n):
        return RealServer(f"10.0.{n // 250}.{n % 250 + 1}" if n % 3 else f"fd00::{n:x}",
                          80 + n % 2)
    previous = {n: server(n) for n in before}
    ordered = tuple(sorted(previous.values(), key=rs_sort_key))
    now = {n: previous[n] if n in previous and n % 5 else server(n) for n in after}
    real = {(rs.ip, rs.port): rs for rs in now.values()}
    got = _ordered(real, ordered)
    assert got == tuple(sorted(real.values(), key=rs_sort_key))
    assert all(a is b for a, b in zip(got, sorted(real.values(), key=rs_sort_key)))
