"""``stats``: IPVS messages (real pyroute2 messages, encoded and decoded) -> counters.

The host kernel has no IPVS, so the netlink socket is replaced by a fake that answers
with genuine ``ipvsmsg`` messages; the kernel-VM suite reads a live IPVS.
"""

from __future__ import annotations

import json
import os
import socket
import struct

import pytest

from cartridge_agent_lvs.director import ipvs_netlink, stats
from cartridge_agent_lvs.director.cli import main
from cartridge_agent_lvs.director.model import LvsConfig, RealServer, VirtualServer
from cartridge_agent_lvs.errors import HostError

from ._ipvs import FakeGenl, dest, svc

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
    return FakeGenl(TABLE)


def read(fake):
    return stats.read_ipvs(None, sock_factory=lambda netns: fake)


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
    assert stats.to_json(services, totals) == stats.to_json(read(FakeGenl(TABLE)), totals)
    table = stats.format_table(services, totals)
    assert "192.0.2.10:80 rr" in table and "[fd99::53]:53 sh" in table
    assert "tomcat.shop: 4" in table


def test_a_dump_in_many_datagrams_and_the_requests_sent():
    fake = FakeGenl(TABLE, split=True)
    assert read(fake) == read(FakeGenl(TABLE))
    dests = [r.get_attr("IPVS_CMD_ATTR_SERVICE") for r in fake.requests[1:]]
    assert [(d.get_attr("IPVS_SVC_ATTR_ADDR"), d.get_attr("IPVS_SVC_ATTR_PORT"),
             d.get_attr("IPVS_SVC_ATTR_FWMARK")) for d in dests] == [
        ("192.0.2.10", 80, None), ("fd99::53", 53, None), (None, None, 5)]


def _nla(kind: int, payload: bytes, nested: bool = False) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind | (0x8000 if nested else 0)) + payload + \
        b"\0" * ((4 - length % 4) % 4)


def test_the_kernels_own_layout_16_byte_addresses_and_32_bit_stats():
    """What a kernel sends, byte for byte: the address as the 16-byte nf_inet_addr
    union, ports in network order, nested attributes flagged, and -- before 4.1 --
    only the 32-bit stats."""
    stats32 = (_nla(1, struct.pack("=I", 30)) + _nla(2, struct.pack("=I", 300))
               + _nla(4, struct.pack("=Q", 30000)))
    service = stats.service_from_attrs(ipvs_netlink.attributes(
        _nla(1, struct.pack("=H", 2)) + _nla(2, struct.pack("=H", 6))
        + _nla(3, socket.inet_aton("192.0.2.10") + b"\0" * 12)
        + _nla(4, struct.pack("!H", 8080)) + _nla(6, b"wlc\0")
        + _nla(10, stats32, nested=True)))
    assert (service.protocol, service.address, service.port, service.scheduler) == \
        ("TCP", "192.0.2.10", 8080, "wlc")
    assert (service.conns, service.in_packets, service.in_bytes, service.out_bytes) == \
        (30, 300, 30000, 0)
    dest = stats.dest_from_attrs(ipvs_netlink.attributes(
        _nla(1, socket.inet_pton(socket.AF_INET6, "fd00::21"))
        + _nla(2, struct.pack("!H", 80)) + _nla(3, struct.pack("=I", 2))
        + _nla(4, struct.pack("=I", 5)) + _nla(7, struct.pack("=I", 4))
        + _nla(8, struct.pack("=I", 1))
        + _nla(12, _nla(1, struct.pack("=Q", 2 ** 40)), nested=True)), socket.AF_INET6)
    assert dest == stats.DestStats("fd00::21", 80, "TUN", 5, 4, 1, 2 ** 40, 0, 0, 0, 0)


def test_a_missing_namespace_is_one_clear_host_error():
    with pytest.raises(HostError, match="network namespace 'no-such-ns' does not exist"):
        stats.read_ipvs("no-such-ns")


def test_missing_ipvs_is_one_clear_host_error():
    fake = FakeGenl(TABLE, missing=True)
    with pytest.raises(HostError, match="IPVS is not available"):
        stats.read_ipvs(None, sock_factory=lambda netns: fake)
    assert fake.closed


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
    mocker.patch.object(stats, "GenlSocket", return_value=FakeGenl(table))
    code = main(["stats", "--json", "--topology", sample, "--vip-map",
                 "tomcat|192.168.56.40"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert doc["clusters"] == {"tomcat.blue.domain": 5, "tomcat.shop.domain": 0}


def test_cli_stats_interval_reads_again_each_snapshot_stamped(mocker, capsys):
    """--interval N --count K: K fresh readings (a new socket each), each under the UTC
    time it was read; the counters are the kernel's at that reading, not the first's."""
    readings = [[(svc("192.168.56.40", 80), [dest("10.0.1.11", 80, active=n)])] for n in (1, 4)]
    mocker.patch.object(stats, "GenlSocket", side_effect=[FakeGenl(t) for t in readings])
    clock = iter([1795714201.5, 1795714201.6, 1795714202.0])
    mocker.patch("cartridge_agent_lvs.director.cli.time.time", side_effect=lambda: next(clock))
    slept = mocker.patch("cartridge_agent_lvs.director.cli.time.sleep")
    assert main(["stats", "--interval", "0.5", "--count", "2"]) == 0
    out = capsys.readouterr().out
    first, second = out.split("--- ")[1:]
    assert first.startswith("2026-11-26T17:30:01.500Z\n") and second.startswith("2026-11-26T17:30:02.000Z\n")
    active = [int(block.splitlines()[3].split()[4]) for block in (first, second)]
    assert active == [1, 4]
    slept.assert_called_once_with(pytest.approx(0.4))     # the interval counts from the reading


def test_cli_stats_interval_json_is_one_document_per_line(mocker, capsys):
    mocker.patch.object(stats, "GenlSocket", side_effect=lambda netns: FakeGenl(
        [(svc("192.168.56.40", 80), [dest("10.0.1.11", 80, active=2)])]))
    mocker.patch("cartridge_agent_lvs.director.cli.time.sleep")
    assert main(["stats", "--json", "--interval", "1", "--count", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    docs = [json.loads(line) for line in lines]
    assert len(docs) == 3 and all(isinstance(d["time"], float) for d in docs)
    assert [d["services"][0]["dests"][0]["active_conns"] for d in docs] == [2, 2, 2]


@pytest.mark.parametrize("argv, named", [
    (["--interval", "0"], "'0' is not a number greater than 0"),
    (["--interval", "soon"], "'soon' is not a number greater than 0"),
    (["--interval", "1", "--count", "-1"], "'-1' is not a whole number greater than 0"),
])
def test_cli_stats_interval_refuses_what_is_not_a_positive_number(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["stats", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and named in err
