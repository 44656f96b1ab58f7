"""What the golden keepalived.conf files must say, written by hand.

The golden files are regenerated from the code under test after an intended change;
these assertions are not, so a regeneration cannot bless a regression: which real
servers serve which VIP, ports under DR/TUN (unchanged) and NAT (mapped), no
``vrrp_strict``, and a grammar every line keeps whatever the topology held (the shop
sample has members whose fields try to inject directives).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
FILES = sorted(GOLDEN.glob("*.conf"))
#: the Active members of tests/director/samples/shop-topology.json, by hand
SHOP = {
    ("192.168.56.40", 80): {"10.0.1.11", "10.0.1.12", "203.0.113.21"},
    ("192.168.56.40", 443): {"10.0.1.11", "10.0.1.12", "203.0.113.21"},
    ("192.168.56.41", 80): {"10.0.3.31"},
    ("fd99::53", 53): {"fd00:3::41", "fd00:3::42"},
}
#: member port per proxy port in the sample's portMap (NAT keeps the mapping)
NAT_PORTS = {("192.168.56.40", 80): 8080, ("192.168.56.40", 443): 8443,
             ("192.168.56.41", 80): 80, ("fd99::53", 53): 53}
KEYWORDS = {
    "global_defs", "router_id", "lvs_sync_daemon", "vrrp_instance", "state", "interface",
    "virtual_router_id", "priority", "advert_int", "nopreempt", "authentication",
    "auth_type", "auth_pass", "virtual_ipaddress", "virtual_server", "delay_loop", "lb_algo",
    "lb_kind", "protocol", "persistence_timeout", "sorry_server", "real_server", "weight",
    "TCP_CHECK", "HTTP_GET", "SSL_GET", "UDP_CHECK", "url", "path", "status_code",
    "connect_timeout", "retry", "}",
}


def virtual_servers(text: str) -> dict:
    """(vip, port) -> {"kind", "protocol", "real": [(ip, port)]}, read line by line."""
    out, current = {}, None
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["virtual_server"]:
            current = out[(words[1], int(words[2]))] = {"real": []}
        elif current is not None and words[:1] in (["lb_kind"], ["protocol"]):
            current[words[0]] = words[1]
        elif current is not None and words[:1] == ["real_server"]:
            current["real"].append((words[1], int(words[2])))
    return out


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_grammar_every_line_keeps(path):
    for number, line in enumerate(path.read_text().splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        first = words[0]
        if first not in KEYWORDS:
            ipaddress.ip_interface(first)          # a VIP line of virtual_ipaddress
            assert len(words) == 1, (path.name, number, line)
        assert not re.search(r"[\"'!]", line), (path.name, number, line)
        assert line.count("{") <= 1 and line.count("}") <= 1, (path.name, number, line)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_never_vrrp_strict_and_never_an_empty_virtual_server(path):
    text = path.read_text()
    assert "vrrp_strict" not in text and "lvs_sync_daemon_interface" not in text
    for key, vs in virtual_servers(text).items():
        assert vs["real"], (path.name, key)


@pytest.mark.parametrize("name", ["shop-dr", "shop-tun-nocheck", "shop-nat-http"])
def test_the_shop_sample_serves_its_active_members(name):
    servers = virtual_servers((GOLDEN / f"{name}.conf").read_text())
    assert {key: {ip for ip, _ in vs["real"]} for key, vs in servers.items()} == SHOP
    assert servers[("fd99::53", 53)]["protocol"] == "UDP"
    for key, vs in servers.items():
        if vs["lb_kind"] in ("DR", "TUN"):     # the packet keeps VIP:port
            assert {port for _, port in vs["real"]} == {key[1]}, (name, key)
        else:
            assert vs["lb_kind"] == "NAT"
            assert {port for _, port in vs["real"]} == {NAT_PORTS[key]}, (name, key)
