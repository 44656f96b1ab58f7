"""The suite's own pure helpers, checked on the host without a VM."""

from __future__ import annotations

from tests.e2e.guest import lab
from tests.e2e.guest.stratos import Topology
from tests.e2e.kernel import _PACKAGE_RE

IP_VS = """IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  0A630064:0050 rr
  -> 0A630016:0050      Route   0      0          3
  -> 0A630015:0050      Route   1      2          7
TCP  [fd99:0000:0000:0000:0000:0000:0000:0100]:0050 rr
  -> [fd99:0000:0000:0000:0000:0000:0000:0021]:0050      Route   1      0          0
"""


def test_parse_ip_vs_both_families():
    assert lab.parse_ip_vs(IP_VS) == {
        "TCP 10.99.0.100:80": {
            "10.99.0.22:80": {"method": "Route", "weight": 0, "active": 0, "inactive": 3},
            "10.99.0.21:80": {"method": "Route", "weight": 1, "active": 2, "inactive": 7}},
        "TCP [fd99::100]:80": {
            "[fd99::21]:80": {"method": "Route", "weight": 1, "active": 0, "inactive": 0}},
    }


def _stream(*outcomes):
    stream = lab.RequestStream(worker=None, address="192.0.2.1")
    t = 0.0
    for ok in outcomes:
        stream.results.append(lab.Request(t, t + 0.1, "rs1" if ok else None, None if ok else "refused"))
        t += 0.5
    return stream


def test_longest_gap_counts_the_failures_between_two_answers():
    assert _stream(True, True, True).longest_gap() == (0.0, 0)
    seconds, failed = _stream(True, False, False, True, False, True).longest_gap()
    assert (round(seconds, 3), failed) == (1.5, 2)


def test_topology_is_stratos_shaped():
    topo = Topology()
    topo.add("web", "rs1", "10.99.0.21")
    topo.add("web", "rs2", "10.99.0.22", "Suspended")
    members = topo.complete_event()["topology"]["serviceMap"]["web"]["clusterIdClusterMap"][
        "web.e2e.domain"]["memberMap"]
    assert members["web.rs1"]["memberStateManager"]["stateStack"][-1] == "Active"
    assert members["web.rs2"]["memberStateManager"]["stateStack"][-1] == "Suspended"
    event = topo.member_event(topo.member("web", "rs1"), "MemberActivatedEvent")
    assert event["defaultPrivateIP"] == "10.99.0.21" and event["portMap"]["80"]["proxy"] == 80


def test_kernel_package_resolved_from_apt_cache_depends():
    text = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n"
    assert _PACKAGE_RE.search(text).group(1) == "linux-image-6.1.0-56-amd64"
