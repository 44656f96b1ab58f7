"""The planner: Active members only, IP type, port mapping, dedup, injection, clashes."""

from __future__ import annotations

import json
import os

import pytest

from cartridge_agent_lvs.director.plan import plan
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


def test_dr_renders_the_proxy_port_and_warns_once_per_member():
    result = shop()
    port_warnings = [w for w in result.warnings if "maps ports" in w]
    assert len(port_warnings) == 4                       # member-1, -2, -21, -22
    assert all("80 -> 8080, 443 -> 8443" in w for w in port_warnings)


def test_nat_keeps_the_member_port():
    got = servers(shop(forwarding_method="NAT"))
    assert got[("192.168.56.40", 80, "TCP")][0] == ("10.0.1.11", 8080, "tomcat.member-22")
    assert got[("192.168.56.40", 443, "TCP")][0] == ("10.0.1.11", 8443, "tomcat.member-22")
    assert not [w for w in shop(forwarding_method="NAT").warnings if "maps ports" in w]


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
