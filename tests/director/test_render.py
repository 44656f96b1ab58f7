"""Rendering: golden files, the real ``keepalived -t`` over every case, no injection.

Golden files live in ``golden/``; after an intended change regenerate them with
``UPDATE_GOLDEN=1 pytest tests/director/test_render.py`` and review the diff.
"""

from __future__ import annotations

import os
import re
import string
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as hs

from cartridge_agent_lvs.director.drain import Drain
from cartridge_agent_lvs.director.keepalived import Keepalived, ValidationError
from cartridge_agent_lvs.director.model import LvsConfig
from cartridge_agent_lvs.director.plan import plan, vrrp_of
from cartridge_agent_lvs.director.render import RenderedFileError, parse_rendered, render
from cartridge_agent_lvs.director.settings import load
from cartridge_agent_lvs.director.topology import parse_topology

from . import _stratos as st
from ._service import vrrp_interface

HERE = os.path.dirname(__file__)
SAMPLE = os.path.join(HERE, "samples", "shop-topology.json")
SHOP_MAP = "tomcat|192.168.56.40,php|192.168.56.41,dns|fd99::53,mysql|192.168.56.42"

CASES = {
    "shop-dr": dict(vip_map=SHOP_MAP, auth_pass="s3cret"),
    "shop-nat-http": dict(vip_map=SHOP_MAP, forwarding_method="NAT", state="BACKUP",
                          priority="90", nopreempt="true", scheduler="wlc",
                          health_check="HTTP_GET", http_path="/health", http_status="204",
                          persistence_timeout="300", sorry_server="192.168.56.200 8080",
                          delay_loop="10", connect_timeout="2", retry="3", weight="50",
                          sync_interface="eth0"),
    "shop-tun-nocheck": dict(vip_map=SHOP_MAP, forwarding_method="TUN", scheduler="sh",
                             health_check="NONE", virtual_router_id="7",
                             advert_int="3"),
    "ipv4-only-ssl": dict(vip_map="tomcat|192.168.56.40", health_check="SSL_GET",
                          http_path="/ping"),
    "no-service-found": dict(vip_map="redis|192.168.56.43,cache|fd99::6379"),
    # issue 12: per-service settings ([service NAME] sections) over the global ones
    "shop-per-service": dict(
        vip_map=SHOP_MAP, scheduler="wlc", delay_loop="10",
        service_overrides={
            "php": dict(health_check="HTTP_GET", http_path="/health", http_status="200",
                        scheduler="lc", persistence_timeout="300", weight="5",
                        sorry_server="192.168.56.200 8080"),
            "tomcat": dict(forwarding_method="NAT", health_check="SSL_GET",
                           http_path="/ping", connect_timeout="2", retry="3"),
            "dns": dict(health_check="UDP_CHECK", scheduler="sh", delay_loop="3"),
            "mysql": dict(health_check="NONE")}),
}


def shop_topology():
    with open(SAMPLE) as f:
        return parse_topology(f.read())


def rendered(case: str, **extra) -> str:
    if "interface" in extra and "sync_interface" in CASES[case]:
        extra["sync_interface"] = extra["interface"]
    settings = load({"interface": "eth0", **CASES[case], **extra})
    return render(plan(settings, shop_topology()).config)


@pytest.fixture
def keepalived(tmp_path):
    return Keepalived(str(tmp_path / "keepalived.conf"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case):
    path = os.path.join(HERE, "golden", f"{case}.conf")
    text = rendered(case)
    if os.environ.get("UPDATE_GOLDEN"):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    with open(path) as f:
        assert text == f.read(), f"{path} differs (UPDATE_GOLDEN=1 to regenerate)"


@pytest.mark.keepalived
@pytest.mark.parametrize("case", sorted(CASES))
def test_keepalived_accepts_every_case(case, keepalived):
    keepalived.validate(rendered(case, interface=vrrp_interface()))


@pytest.mark.keepalived
def test_keepalived_accepts_a_draining_configuration(keepalived):
    settings = load(dict(vip_map=st.vip_map([0]), interface=vrrp_interface()))
    drain = Drain(30)
    full = plan(settings, parse_topology(st.topology({0: [1, 2, 3]}))).config
    drain.apply(full, 0)
    less = plan(settings, parse_topology(st.topology({0: [1]}))).config
    text = render(drain.apply(less, 1))
    assert text.count("weight 0") == 2
    keepalived.validate(text)


@pytest.mark.keepalived
def test_the_validator_is_real(keepalived):
    """The -t gate does fail: an empty virtual server and an unknown keyword."""
    text = rendered("shop-dr", interface=vrrp_interface())
    broken = re.sub(r"    real_server .*?\n    }\n", "", text, flags=re.S)
    with pytest.raises(ValidationError, match="has no real servers"):
        keepalived.validate(broken)
    with pytest.raises(ValidationError, match="Unknown keyword"):
        keepalived.validate(text.replace("lb_algo rr", "lb_algo rr\n    frobnicate 1"))


def test_output_is_deterministic_and_readable():
    text = rendered("shop-dr")
    assert text == rendered("shop-dr")
    assert text.startswith("# Generated by lvs-extension")
    for line in text.splitlines():
        assert line == line.rstrip()
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 4 == 0 and "\t" not in line
    assert text.count("{") == text.count("}")


def test_never_renders_vrrp_strict_or_obsolete_keywords():
    for case in CASES:
        text = rendered(case)
        assert "vrrp_strict" not in text
        assert "lvs_sync_daemon_interface" not in text and "lvs_id" not in text


def test_ipv6_vips_get_their_own_instance_without_authentication():
    text = rendered("shop-dr")
    v4, v6 = text.split("vrrp_instance VI_IPV6")
    assert "auth_pass s3cret" in v4 and "192.168.56.40/32" in v4
    assert "fd99::53/128" in v6.split("virtual_server")[0] and "auth" not in v6


def test_no_service_found_still_owns_the_vips():
    text = rendered("no-service-found")
    assert "192.168.56.43/32" in text and "fd99::6379/128" in text
    assert "virtual_server" not in text


# -- injection: whatever a topology carries, the file keeps its grammar --------------

LINE = re.compile(r"^( {4})*(#.*|[A-Za-z0-9_.:/]+( [A-Za-z0-9_.:/?=&%~+-]+)*( \{)?|\}|)$")

KEYWORDS = {"global_defs", "router_id", "lvs_sync_daemon", "vrrp_instance", "state", "interface",
            "virtual_router_id", "priority", "advert_int", "virtual_ipaddress",
            "virtual_server", "delay_loop", "lb_algo", "lb_kind", "protocol", "real_server",
            "weight", "TCP_CHECK", "connect_timeout", "retry"}

_nasty = hs.text(alphabet=string.printable + "{}\"'\u2028\x00", max_size=30)


@hsettings(max_examples=150, deadline=None,
           suppress_health_check=[HealthCheck.too_slow])
@given(member_id=_nasty, cluster_id=_nasty, ip=_nasty, port=_nasty, proxy=_nasty,
       protocol=_nasty, status=hs.sampled_from(["Active", "Active\n", "Suspended"]))
def test_no_topology_can_add_a_directive(member_id, cluster_id, ip, port, proxy, protocol,
                                         status):
    doc = st.topology({0: [1, 2]})
    cluster = doc["topology"]["serviceMap"]["svc0"]["clusterIdClusterMap"][st.cluster_id(0)]
    evil = dict(cluster["memberMap"][st.member_id(0, 2)])
    evil.update(memberId=member_id, clusterId=cluster_id, defaultPrivateIP=ip,
                memberPrivateIPs=[ip],
                portMap={"80": {"proxy": proxy, "value": port, "protocol": protocol}},
                memberStateManager={"stateStack": [status]})
    cluster["memberMap"]["evil"] = evil
    settings = load(dict(vip_map=st.vip_map([0]), forwarding_method="NAT"))
    result = plan(settings, parse_topology(doc))
    text = render(result.config)
    for line in text.splitlines():
        assert LINE.match(line), line
    top = {ln.split()[0] for ln in text.splitlines() if ln and ln[0] not in " #"}
    assert top <= {"global_defs", "vrrp_instance", "virtual_server", "}"}
    words = {ln.split()[0] for ln in text.splitlines() if ln.strip()}
    assert {w for w in words if not w[0].isdigit()} <= KEYWORDS | {"#", "}"}
    # the honest member is always there
    assert f"real_server {st.member_ip(0, 1)} 80" in text
    assert all("\n" not in w and "\r" not in w for w in result.warnings)


def test_render_of_an_empty_config_has_only_global_defs():
    settings = load(dict(vip_map=st.vip_map([0])))
    text = render(LvsConfig(vrrp=vrrp_of(settings)))
    assert "vrrp_instance" not in text and "global_defs" in text


def test_render_needs_a_planned_config():
    with pytest.raises(ValueError, match="no VRRP part"):
        render(LvsConfig())
    settings = load(dict(vip_map=st.vip_map([0])))
    unplanned = replace(plan(settings, parse_topology(st.topology({0: [1]}))).config)
    unplanned = replace(unplanned, virtual_servers=tuple(
        replace(vs, policy=None) for vs in unplanned.virtual_servers))
    with pytest.raises(ValueError, match="no policy"):
        render(unplanned)


def blocks_of(text: str) -> dict:
    """{service: its virtual_server blocks} of a rendered file."""
    blocks: dict = {}
    for m in re.finditer(r"# service (\S+)\nvirtual_server .*?\n}\n", text, flags=re.S):
        blocks[m.group(1)] = blocks.get(m.group(1), "") + m.group(0)
    return blocks


def test_each_service_renders_its_own_settings():
    blocks = blocks_of(rendered("shop-per-service"))
    assert set(blocks) == {"php", "tomcat", "dns"}        # mysql: no Active member
    php, tomcat, dns = blocks["php"], blocks["tomcat"], blocks["dns"]
    assert "lb_algo lc" in php and "persistence_timeout 300" in php
    assert "sorry_server 192.168.56.200 80\n" in php and "weight 5" in php   # DR: port 80
    assert "HTTP_GET {" in php and "path /health" in php and "delay_loop 10" in php
    assert "lb_kind NAT" in tomcat and "lb_algo wlc" in tomcat    # global scheduler
    assert "real_server 10.0.1.11 8080" in tomcat and "SSL_GET {" in tomcat
    assert "path /ping" in tomcat and "retry 3" in tomcat and "sorry_server" not in tomcat
    assert "UDP_CHECK {" in dns and "lb_algo sh" in dns and "delay_loop 3" in dns
    assert "lb_kind DR" in dns and "weight 1" in dns


# -- reading back what we wrote: the guard's baseline after a restart ------------------

@pytest.mark.parametrize("case", sorted(CASES))
def test_parse_rendered_gives_back_the_config(case):
    settings = load({"interface": "eth0", **CASES[case]})
    config = plan(settings, shop_topology()).config
    back = parse_rendered(render(config))
    assert back == replace(config, vrrp=None)          # VRRP comes from the settings
    assert [vs.service for vs in back.virtual_servers] == [
        vs.service for vs in config.virtual_servers]


def test_parse_rendered_keeps_draining_weights():
    settings = load(dict(vip_map=st.vip_map([0])))
    drain = Drain(30)
    drain.apply(plan(settings, parse_topology(st.topology({0: [1, 2, 3]}))).config, 0)
    draining = drain.apply(plan(settings, parse_topology(st.topology({0: [1]}))).config, 1)
    assert parse_rendered(render(draining)) == replace(draining, vrrp=None)


@pytest.mark.parametrize("text, reason", [
    ("", "not written by lvs-extension"),
    ("global_defs {\n}\n", "not written by lvs-extension"),
    (rendered("shop-dr")[:-300], "unbalanced"),
    (rendered("shop-dr").replace("real_server 10.0.1.12 80", "real_server 10.0.1.x 80"),
     "line"),
    (rendered("shop-dr").replace("    protocol TCP\n", "", 1), "protocol"),
    # values read back are checked like the settings they were rendered from
    (rendered("shop-dr").replace("lb_algo rr", "lb_algo fastest", 1), "lb_algo 'fastest'"),
    (rendered("shop-dr").replace("lb_kind DR", "lb_kind DSR", 1), "lb_kind 'DSR'"),
    (rendered("shop-dr").replace("    delay_loop 6\n", "", 1), "has no delay_loop"),
    (rendered("shop-per-service").replace("path /health", "path health", 1),
     "path 'health'"),
    (rendered("shop-per-service").replace("sorry_server 192.168.56.200 80",
                                          "sorry_server 192.168.56.200 80800", 1),
     "sorry_server"),
])
def test_parse_rendered_refuses_what_it_did_not_write(text, reason):
    with pytest.raises(RenderedFileError, match=reason) as err:
        parse_rendered(text)
    assert "\n" not in str(err.value)


def config_for(case: str) -> LvsConfig:
    return plan(load({"interface": "eth0", **CASES[case]}), shop_topology()).config


def test_blocks_give_the_same_text_and_render_only_what_changed(monkeypatch):
    """A :class:`Blocks` kept across renderings (the layouts keep one) changes the
    work, never the text: over every case and a sequence of changes to one of them."""
    from cartridge_agent_lvs.director import render as render_module
    blocks = render_module.Blocks()
    rendered = []
    real = render_module._real_server_text
    monkeypatch.setattr(render_module, "_real_server_text",
                        lambda policy, rs, bgp: rendered.append(rs.ip) or real(
                            policy, rs, bgp))
    for case in sorted(CASES) + ["shop-dr"]:
        config = config_for(case)
        assert render(config, blocks) == render(config)
    config = config_for("shop-dr")
    tomcat = config.virtual_servers[0]
    changes = [
        replace(tomcat, real_servers=tomcat.real_servers[1:]),                 # one left
        replace(tomcat, real_servers=tuple(replace(rs, weight=0) if k == 0 else rs
                                           for k, rs in enumerate(tomcat.real_servers))),
        replace(tomcat, policy=replace(tomcat.policy, delay_loop=9)),          # policy
        replace(tomcat, real_servers=tomcat.real_servers[:1]),
    ]
    for changed, redone in zip(changes, [[], [tomcat.real_servers[0].ip],
                                         [rs.ip for rs in tomcat.real_servers],
                                         [tomcat.real_servers[0].ip]]):
        config = replace(config, virtual_servers=(changed,) + config.virtual_servers[1:])
        rendered.clear()
        assert render(config, blocks) == render(config)
        # with the blocks: only the real servers whose block differs
        assert rendered[:len(redone)] == redone
        assert len(rendered) == len(redone) + sum(len(vs.real_servers)
                                                  for vs in config.virtual_servers)
    bgp = replace(config, vrrp=replace(config.vrrp, mode="bgp"))
    assert render(bgp, blocks) == render(bgp)
