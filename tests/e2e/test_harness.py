"""The suite's own pure helpers, checked on the host without a VM."""

from __future__ import annotations

import email.parser
import json
import subprocess
import sys

import pytest

from tests.e2e.guest import lab, pace, routed, scenarios
from tests.e2e.guest.stratos import Topology
from tests.e2e.kernel import _PACKAGE_RE
from tests.e2e.vm import VmLimit

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


IP_VS_CONN_SYNC = """Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Origin Expires
TCP 0A630002 9C41 0A630064 0050 0A630015 0050 FIN_WAIT    Local      119
TCP 0A630002 9C42 0A630064 0050 0A630016 0050 ESTABLISHED SYNC       897
TCP fd99:0000:0000:0000:0000:0000:0000:0002 9C43 fd99:0000:0000:0000:0000:0000:0000:0100 0050 fd99:0000:0000:0000:0000:0000:0000:0021 0050 FIN_WAIT    LOCAL      118
"""


def test_parse_ip_vs_conn_sync_both_families_and_origin():
    conns = lab.parse_ip_vs_conn_sync(IP_VS_CONN_SYNC)
    assert conns[0] == lab.Conn("10.99.0.2:40001", "10.99.0.100:80", "10.99.0.21:80", "FIN_WAIT", "LOCAL")
    assert conns[1].origin == "SYNC" and conns[1].dest == "10.99.0.22:80"
    assert conns[2].client == "[fd99::2]:40003" and conns[2].virtual == "[fd99::100]:80"


def test_pace_factor_is_the_median_sample_over_the_reference_at_least_one():
    try:
        pace.reset()
        assert pace.factor() == 1.0 and pace.scaled(10) == 10
        pace.observe("apply", pace.UNIT_REFERENCE / 2)          # faster than the reference: 1
        assert pace.factor() == 1.0
        for seconds in (3, 2.5, 2.5, 100):                      # one outlier does not count
            pace.observe("apply", pace.UNIT_REFERENCE * seconds)
        assert pace.factor() == 2.5 and pace.scaled(10) == 25
        for _ in range(10):
            pace.observe("apply", pace.UNIT_REFERENCE * 100)
        assert pace.factor() == pace.MAX_FACTOR
    finally:
        pace.reset()


def test_pace_of_one_moment_is_its_sample_over_the_reference_within_bounds():
    assert pace.sample_factor(pace.UNIT_REFERENCE * 1.6) == 1.6
    assert pace.sample_factor(pace.UNIT_REFERENCE / 3) == 1.0
    assert pace.sample_factor(pace.UNIT_REFERENCE * 50) == pace.MAX_FACTOR


def test_vm_limit_follows_the_guest_reports(tmp_path):
    now = [0.0]
    report = tmp_path / "pace.json"
    limit = VmLimit(report, hard_cap=3600, first_contact=300, margin=60, clock=lambda: now[0])
    now[0] = 299
    limit.poll()
    assert not limit.expired()
    now[0] = 300
    assert limit.expired()                                      # the guest never reported
    report.write_text(json.dumps({"factor": 2.0, "remaining_seconds": 1000}))
    limit.poll()                                                # read at 300: 300 + 1000 + 120
    now[0] = 1419
    assert not limit.expired()
    now[0] = 1420
    assert limit.expired() and "pace factor 2.00" in limit.describe()
    report.write_text(json.dumps({"factor": 8.0, "remaining_seconds": 9000}))
    limit.poll()
    now[0] = 3599
    assert not limit.expired()
    now[0] = 3600
    assert limit.expired() and "hard cap" in limit.describe()   # never past the hard cap


RENDERED = """virtual_server 10.99.0.100 80 {
    delay_loop 2
    real_server 10.99.0.21 80 {
        weight 1
        TCP_CHECK {
            connect_timeout 1
            retry 1
        }
    }
    real_server 10.99.0.22 80 {
        weight 1
        TCP_CHECK {
            connect_timeout 1
            retry 1
        }
    }
}
virtual_server fd99::100 80 {
    real_server fd99::22 80 {
        weight 1
        TCP_CHECK {
            connect_timeout 1
        }
    }
}
"""


def test_fault_script_removes_exactly_rs2s_health_checks(tmp_path):
    script, conf = tmp_path / "break.sh", tmp_path / "keepalived.conf"
    scenarios.write_fault_script(script, tmp_path / "fault.log")
    conf.write_text(RENDERED)
    subprocess.run(["sh", str(script), str(conf), "-"], check=True)
    text = conf.read_text()
    assert text.count("TCP_CHECK") == 1 and "connect_timeout 1\n            retry 1" in text
    assert text.index("TCP_CHECK") < text.index("real_server 10.99.0.22 80")
    assert "real_server 10.99.0.22 80 {\n        weight 1\n    }\n" in text
    assert "real_server fd99::22 80 {\n        weight 1\n    }\n" in text
    assert text.count("{") == text.count("}")


def test_fault_script_run_twice_at_once_leaves_one_whole_edited_file(tmp_path):
    # the runner and lvs-extension's reload command edit the same file at the same time
    script, conf = tmp_path / "break.sh", tmp_path / "keepalived.conf"
    scenarios.write_fault_script(script, tmp_path / "fault.log")
    for _ in range(20):
        conf.write_text(RENDERED)
        procs = [subprocess.Popen(["sh", str(script), str(conf), "-"]) for _ in range(4)]
        assert [proc.wait() for proc in procs] == [0] * 4
        text = conf.read_text()
        assert text.count("TCP_CHECK") == 1 and text.count("{") == text.count("}") > 3, text
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "break.sh", "fault.log", "keepalived.conf", "keepalived.conf.lock"]


def test_padded_request_has_the_exact_size_and_stays_one_header_line():
    for size in (routed.SMALL, 1428, 1429, routed.LARGE):
        request = lab.http_request(routed.VIP, size)
        assert len(request) == size and request.endswith(b"\r\n\r\n")
        line, _, rest = request.decode().partition("\r\n")
        headers = email.parser.Parser().parsestr(rest)
        assert line == "GET / HTTP/1.0" and headers["Host"] == routed.VIP
        # http.server refuses a header line over 65536 bytes: the largest size must fit
        assert len(headers["X-Pad"]) < 65536
    assert lab.http_request("fd99::100") == b"GET / HTTP/1.0\r\nHost: [fd99::100]\r\n\r\n"
    with pytest.raises(ValueError):
        lab.http_request(routed.VIP, 30)


IP_VS_STATS = """   Total Incoming Outgoing         Incoming         Outgoing
   Conns  Packets  Packets            Bytes            Bytes
      14       77        0             1BB0                0

 Conns/s   Pkts/s   Pkts/s          Bytes/s          Bytes/s
       0        0        0                0                0
"""


def test_parse_ip_vs_totals_reads_the_hexadecimal_totals():
    assert lab.parse_ip_vs_totals(IP_VS_STATS) == {
        "conns": 0x14, "inpkts": 0x77, "outpkts": 0, "inbytes": 0x1BB0, "outbytes": 0}


def test_tunnel_service_starts_without_members_and_renders_as_tun(tmp_path):
    """What the suite's directors are given for scenario t: the TUN service is in the
    topology from the start, rendered once it has members, with lb_kind TUN while the
    other services stay DR."""
    topology = Topology(scenarios.PORT)
    topology.add("web", "rs1", scenarios.v4("rs1"))
    topology.add_service(routed.SERVICE)
    clusters = topology.complete_event()["topology"]["serviceMap"][routed.SERVICE]["clusterIdClusterMap"]
    assert [c["memberMap"] for c in clusters.values()] == [{}]
    for name, (ipv4, _) in routed.SERVERS.items():
        topology.add(routed.SERVICE, name, ipv4)
    path = tmp_path / "topology.json"
    path.write_text(topology.dumps())
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from cartridge_agent_lvs.director.cli import main; sys.exit(main())",
         "render", "--config", str(routed.director_config(tmp_path)), "--topology", str(path),
         "--vip-map", f"web|{scenarios.VIP4},{routed.vip_map_entry()}", "--forwarding-method", "DR"],
        capture_output=True, text=True, check=True).stdout
    web, tun = out.split(f"# service {routed.SERVICE}\n")
    assert "lb_kind DR" in web and "lb_kind TUN" not in web
    assert "lb_kind TUN" in tun and all(f"real_server {ip} {routed.PORT} " in tun
                                         for ip, _ in routed.SERVERS.values())


def test_every_client_connection_gets_a_fresh_source_port():
    """A reused client port would be the same IPVS connection in DR (lab.bind_fresh_port)."""
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"rs")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    taken = socket.socket()
    try:
        first = lab.http_exchange("127.0.0.1", server.server_address[1])[1]
        taken.bind(("0.0.0.0", first + 1))           # someone else holds the next port
        ports = [lab.http_exchange("127.0.0.1", server.server_address[1])[1] for _ in range(5)]
    finally:
        taken.close()
        server.shutdown()
        server.server_close()
    assert len(set([first] + ports)) == 6 and first + 1 not in ports
    assert all(20000 <= p < 32000 for p in [first] + ports)
