"""``stats``: IPVS messages (real pyroute2 messages, encoded and decoded) -> counters.

The host kernel has no IPVS, so the netlink socket is replaced by a fake that answers
with genuine ``ipvsmsg`` messages; the kernel-VM suite reads a live IPVS.
"""

from __future__ import annotations

import json
import os

import pytest
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic.ipvs import ipvsmsg

from cartridge_agent_lvs.director import stats
from cartridge_agent_lvs.director.cli import main
from cartridge_agent_lvs.director.model import LvsConfig, RealServer, VirtualServer
from cartridge_agent_lvs.errors import HostError


def _stats(prefix_counters):
    return {"attrs": [(f"IPVS_STATS_ATTR_{k}", v) for k, v in prefix_counters.items()]}


def message(kind: str, attrs: dict, counters: dict) -> ipvsmsg:
    """A genuine IPVS netlink message, round-tripped through its wire encoding."""
    prefix = "IPVS_SVC_ATTR_" if kind == "service" else "IPVS_DEST_ATTR_"
    nla = [(prefix + k, v) for k, v in attrs.items()]
    nla.append((prefix + "STATS64", _stats(counters)))
    msg = ipvsmsg()
    msg["attrs"] = [("IPVS_CMD_ATTR_" + kind.upper(), {"attrs": nla})]
    msg.encode()
    decoded = ipvsmsg(msg.data)
    decoded.decode()
    return decoded


def svc(addr, port, proto=6, af=2, sched="rr", fwmark=None, **counters):
    attrs = {"AF": af, "PROTOCOL": proto, "ADDR": addr, "PORT": port, "SCHED_NAME": sched,
             "FLAGS": {"flags": 0, "mask": 0xFFFF}, "TIMEOUT": 0}
    if fwmark:
        attrs = {"AF": af, "FWMARK": fwmark, "SCHED_NAME": sched,
                 "FLAGS": {"flags": 0, "mask": 0xFFFF}, "TIMEOUT": 0}
    if af == 2 and not fwmark:
        attrs["NETMASK"] = "255.255.255.255"
    return message("service", attrs, counters)


def dest(addr, port, af=2, weight=1, active=0, inactive=0, fwd=3, **counters):
    return message("dest", {"ADDR_FAMILY": af, "ADDR": addr, "PORT": port,
                            "FWD_METHOD": fwd, "WEIGHT": weight, "ACTIVE_CONNS": active,
                            "INACT_CONNS": inactive}, counters)


class FakeIPVS:
    """Stands in for pyroute2.IPVS: answers dumps with the given messages."""

    def __init__(self, table):
        self.table = table            # [(service message, [dest messages])]
        self.closed = False

    def service(self, command):
        assert command == "dump"
        return [s for s, _ in self.table]

    def dest(self, command, service):
        assert command == "dump"
        for s, dests in self.table:
            if (s.get(("service", "addr")), s.get(("service", "port"))) == (
                    service.get("addr"), service.get("port")):
                return dests
        return []

    def close(self):
        self.closed = True


TABLE = [
    (svc("192.0.2.10", 80, CONNS=30, INPKTS=300, OUTPKTS=0, INBYTES=30000, OUTBYTES=0),
     [dest("10.0.0.2", 80, active=4, inactive=1, CONNS=15, INBYTES=15000),
      dest("10.0.0.1", 80, weight=0, active=2, CONNS=15, INBYTES=15000)]),
    (svc("fd99::53", 53, proto=17, af=10, sched="sh", CONNS=7),
     [dest("fd00:3::41", 53, af=10, fwd=0, active=0, inactive=7, CONNS=7)]),
    (svc(None, 0, fwmark=5, CONNS=1), []),
]

CONFIG = LvsConfig((
    VirtualServer("192.0.2.10", 80, "TCP", "tomcat", (
        RealServer("10.0.0.1", 80, 1, "m1", "tomcat.blue"),
        RealServer("10.0.0.2", 80, 1, "m2", "tomcat.shop"))),
    VirtualServer("fd99::53", 53, "UDP", "dns", (
        RealServer("fd00:3::41", 53, 1, "d1", "dns.shop"),)),
), ("192.0.2.10", "fd99::53"))


@pytest.fixture
def fake():
    return FakeIPVS(TABLE)


def read(fake):
    return stats.read_ipvs(None, ipvs_factory=lambda netns: fake)


def test_services_and_dests_are_decoded_and_sorted(fake):
    services = read(fake)
    assert fake.closed
    assert [(s.protocol, s.address, s.port, s.fwmark) for s in services] == [
        ("TCP", "192.0.2.10", 80, 0), ("UDP", "fd99::53", 53, 0), ("FWM", "", 0, 5)]
    web = services[0]
    assert (web.scheduler, web.conns, web.in_packets, web.in_bytes) == ("rr", 30, 300, 30000)
    assert [(d.address, d.weight, d.active_conns, d.inactive_conns, d.forwarding)
            for d in web.dests] == [("10.0.0.1", 0, 2, 0, "DR"), ("10.0.0.2", 1, 4, 1, "DR")]
    assert services[1].dests[0].forwarding == "NAT" and services[1].scheduler == "sh"


def test_in_flight_connections_per_cluster(fake):
    totals = stats.cluster_totals(read(fake), CONFIG)
    assert totals == {"dns.shop": 0, "tomcat.blue": 2, "tomcat.shop": 4}
    assert stats.cluster_totals(read(fake), None) == {}


def test_json_and_table(fake):
    services = read(fake)
    totals = stats.cluster_totals(services, CONFIG)
    doc = json.loads(stats.to_json(services, totals))
    assert doc["clusters"]["tomcat.shop"] == 4
    assert doc["services"][0]["dests"][1]["active_conns"] == 4
    assert stats.to_json(services, totals) == stats.to_json(read(FakeIPVS(TABLE)), totals)
    table = stats.format_table(services, totals)
    assert "192.0.2.10:80 rr" in table and "[fd99::53]:53 sh" in table
    assert "tomcat.shop: 4" in table


def test_missing_ipvs_is_one_clear_host_error():
    def no_family(netns):
        raise NetlinkError(2, "No such file or directory")
    with pytest.raises(HostError, match="IPVS is not available"):
        stats.read_ipvs(None, ipvs_factory=no_family)


@pytest.mark.skipif(os.path.exists("/proc/net/ip_vs"), reason="this kernel has IPVS")
def test_on_this_host_for_real(capsys):
    with pytest.raises(HostError, match="IPVS is not available"):
        stats.read_ipvs()
    assert main(["stats", "--json"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "IPVS is not available" in err


def test_cli_stats_attributes_clusters_from_a_topology(mocker, capsys):
    sample = os.path.join(os.path.dirname(__file__), "samples", "shop-topology.json")
    table = [(svc("192.168.56.40", 80), [dest("10.0.1.11", 80, active=3),
                                          dest("203.0.113.21", 80, active=2)])]
    mocker.patch.object(stats, "_open_ipvs", return_value=FakeIPVS(table))
    code = main(["stats", "--json", "--topology", sample, "--vip-map",
                 "tomcat|192.168.56.40"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert doc["clusters"] == {"tomcat.blue.domain": 5, "tomcat.shop.domain": 0}
