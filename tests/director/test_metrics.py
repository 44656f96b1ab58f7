"""``/metrics`` and ``/status``: a real HTTP scrape, parsed with prometheus_client's own
parser; IPVS as genuine pyroute2 messages (``_ipvs.Kernel``), the VRRP interface a
real veth in a throwaway network namespace read with pyroute2; the Director driven
with the real ``keepalived -t`` and a stand-in keepalived receiving the SIGHUPs."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cartridge_agent_lvs.director import converge, service, settings as settings_mod
from cartridge_agent_lvs.director.cli import main
from cartridge_agent_lvs.director.feeds import COMPLETE, FeedUpdate
from cartridge_agent_lvs.director.render import parse_rendered
from cartridge_agent_lvs.director.vrrp import interface_addresses
from cartridge_agent_lvs.errors import HostError, SettingsError
from tests.realserver.conftest import netns  # noqa: F401

from . import _stratos as st
from ._feedutil import wait_for
from ._ipvs import Kernel
from .conftest_broker import free_port
from ._service import fake_keepalived, make_settings, vrrp_interface  # noqa: F401

pytestmark = [pytest.mark.keepalived, pytest.mark.netns]

VIP0, VIP1, GHOST = st.vip(0), st.vip(1), "192.0.2.50"
RS = {i: (st.member_ip(0, i), 80) for i in range(3)}
WEB = {"service": "svc0", "vip": VIP0, "port": "80", "protocol": "TCP"}


def update(name: str, payload) -> FeedUpdate:
    return FeedUpdate(name, json.dumps(payload), "test")


def scrape(port: int) -> dict:
    """{(sample name, ((label, value), ...)): value} of one real HTTP scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels):
    return samples.get(("lvs_extension_" + name, tuple(sorted(labels.items()))))


def get_json(port: int, path: str = "/status") -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        return json.loads(answer.read())


@pytest.fixture
def vrrp_ns(netns):
    """The director's network namespace: a veth named like the VRRP interface."""
    interface = vrrp_interface()
    subprocess.run(["ip", "-n", netns, "link", "add", interface, "type", "veth", "peer",
                    "name", "peer0"], check=True)
    return netns, interface


def vip_on(ns_interface, *vips, add=True) -> None:
    ns, interface = ns_interface
    for vip in vips:
        subprocess.run(["ip", "-n", ns, "addr", "add" if add else "del", f"{vip}/32", "dev",
                        interface], check=True)


@pytest.fixture(params=[True], ids=["metrics_real_servers"])
def lab(request, tmp_path, fake_keepalived, vrrp_ns):
    """A Director that applied svc0 (3 members) and svc1 (1 member); ``ghost`` is mapped
    but not in the topology.  IPVS shows svc0's member 2 held out by its check.
    ``metrics_real_servers`` is the fixture's parameter (indirect parametrization)."""
    kernel = Kernel()
    settings = make_settings(str(tmp_path), vip_map=f"{st.vip_map([0, 1])},ghost|{GHOST}",
                             keepalived_pidfile=fake_keepalived.pidfile, quiet_period=0,
                             drain_seconds=0, metrics_real_servers=request.param)
    director = service.Director(settings, service.keepalived_for(settings),
                                read_kernel=kernel.read)
    director.handle(update("MemberActivatedEvent", st.member_event(0, 9)), 0)  # too early
    director.handle(update(COMPLETE, st.topology({0: [0, 1, 2], 1: [0]})), 0)
    assert director.tick(1)
    counters = {RS[0]: dict(active=3, inactive=1, CONNS=10, INPKTS=100, OUTPKTS=0,
                            INBYTES=5000, OUTBYTES=0),
                RS[1]: dict(active=2, CONNS=7, INPKTS=70, INBYTES=3500),
                (VIP0, 80): dict(CONNS=17, INPKTS=170, INBYTES=8500)}
    kernel.apply(director.served, counters=counters)
    assert director.watcher.step() is None               # converged: every one seen
    kernel.apply(director.served, counters=counters, absent=[RS[2]])
    ns, _ = vrrp_ns
    server = service.serve_metrics(director, ("127.0.0.1", 0),
                                   lambda ifname: interface_addresses(ifname, ns))
    yield director, kernel, server.port, fake_keepalived
    server.stop()


def test_per_real_server_series_from_ipvs(lab):
    director, kernel, port, _ = lab
    s = scrape(port)
    rs0 = dict(WEB, cluster="svc0.app.domain", member="svc0.member-0",
               real_server="10.0.0.1:80")
    assert value(s, "real_server_in_kernel", **rs0) == 1
    assert value(s, "real_server_weight", **rs0) == 1
    assert value(s, "real_server_active_connections", **rs0) == 3
    assert value(s, "real_server_inactive_connections", **rs0) == 1
    assert value(s, "real_server_connections_total", **rs0) == 10
    assert value(s, "real_server_packets_total", direction="in", **rs0) == 100
    assert value(s, "real_server_bytes_total", direction="in", **rs0) == 5000
    assert value(s, "real_server_bytes_total", direction="out", **rs0) == 0
    rs2 = dict(rs0, member="svc0.member-2", real_server="10.0.0.3:80")
    assert value(s, "real_server_in_kernel", **rs2) == 0          # held out by its check
    assert value(s, "real_server_active_connections", **rs2) is None
    # bounded by the rendered configuration: 4 real servers, whatever IPVS holds
    assert sum(1 for name, _ in s if name == "lvs_extension_real_server_in_kernel") == 4


@pytest.mark.parametrize("lab", [True, False], indirect=True,
                         ids=["with_real_servers", "virtual_servers_only"])
def test_per_virtual_server_and_per_cluster_totals(lab):
    director, kernel, port, _ = lab
    s = scrape(port)
    assert value(s, "virtual_server_in_kernel", **WEB) == 1
    assert value(s, "virtual_server_active_connections", **WEB) == 5
    assert value(s, "virtual_server_inactive_connections", **WEB) == 1
    assert value(s, "virtual_server_connections_total", **WEB) == 17
    assert value(s, "virtual_server_packets_total", direction="in", **WEB) == 170
    assert value(s, "virtual_server_real_servers", state="desired", **WEB) == 3
    assert value(s, "virtual_server_real_servers", state="in_kernel", **WEB) == 2
    assert value(s, "cluster_active_connections", service="svc0",
                 cluster="svc0.app.domain") == 5
    assert value(s, "cluster_active_connections", service="svc1",
                 cluster="svc1.app.domain") == 0


@pytest.mark.parametrize("lab", [False], indirect=True)
def test_metrics_real_servers_off_exports_no_per_real_server_series(lab):
    director, kernel, port, _ = lab
    s = scrape(port)
    per_rs = {name for name, _ in s if name.startswith("lvs_extension_real_server_")}
    assert per_rs == set()
    # the rest is all there: virtual servers, clusters, VRRP, the loop's own
    assert value(s, "virtual_server_connections_total", **WEB) == 17
    assert value(s, "real_servers_not_in_kernel") == 1
    assert any(name == "lvs_extension_vrrp_master" for name, _ in s)


def test_drift_not_in_kernel_and_kernel_reads(lab):
    director, kernel, port, _ = lab
    s = scrape(port)
    assert value(s, "drift_entries", kind="missing") == 0
    assert value(s, "drift_entries", kind="unexpected") == 0
    assert value(s, "real_servers_not_in_kernel") == 1
    assert value(s, "kernel_read_ok", source="ipvs") == 1
    assert value(s, "kernel_read_ok", source="addresses") == 1
    kernel.apply(director.served, extra=[("10.0.0.99", 80)])
    s = scrape(port)
    assert value(s, "drift_entries", kind="unexpected") == 2        # in both services
    assert value(s, "real_servers_not_in_kernel") == 0
    kernel.clear()
    s = scrape(port)
    assert value(s, "drift_entries", kind="missing") == 2           # both virtual servers
    assert value(s, "virtual_server_in_kernel", **WEB) == 0
    kernel.broken = True                       # unknown is not "absent": no kernel series
    s = scrape(port)
    assert value(s, "kernel_read_ok", source="ipvs") == 0
    assert value(s, "drift_entries", kind="missing") is None
    assert not any(name == "lvs_extension_real_server_in_kernel" for name, _ in s)


def test_vrrp_role_follows_the_vips_on_the_interface(lab, vrrp_ns):
    director, kernel, port, _ = lab
    _, interface = vrrp_ns
    labels = dict(vrrp_instance="VI_IPV4", interface=interface)
    assert value(scrape(port), "vrrp_master", **labels) == 0
    vip_on(vrrp_ns, VIP0)
    s = scrape(port)
    assert value(s, "vrrp_master", **labels) == 0 and value(s, "vrrp_vips_held", **labels) == 1
    assert get_json(port)["vrrp"][0]["state"] == "PARTIAL"
    vip_on(vrrp_ns, VIP1, GHOST)                       # keepalived became MASTER
    assert value(scrape(port), "vrrp_master", **labels) == 1
    assert get_json(port)["services"][0]["vrrp_state"] == "MASTER"
    vip_on(vrrp_ns, VIP0, VIP1, GHOST, add=False)      # ... and BACKUP again
    assert value(scrape(port), "vrrp_master", **labels) == 0


def test_a_killed_keepalived_is_not_master_though_its_vips_stay(lab, vrrp_ns):
    director, kernel, port, fake = lab
    _, interface = vrrp_ns
    labels = dict(vrrp_instance="VI_IPV4", interface=interface)
    vip_on(vrrp_ns, VIP0, VIP1, GHOST)
    assert value(scrape(port), "vrrp_master", **labels) == 1
    fake.stop()                                         # SIGKILL: the VIPs stay behind
    s = scrape(port)
    assert value(s, "vrrp_master", **labels) == 0 and value(s, "vrrp_vips_held", **labels) == 3
    assert get_json(port)["vrrp"][0]["state"] == "STOPPED"


def test_the_loops_own_events(lab):
    director, kernel, port, fake = lab
    director.handle(update("MemberActivatedEvent", st.member_event(0, 3)), 2)
    director.handle(update("MemberActivatedEvent", st.member_event(0, 3)), 2)   # duplicate
    director.handle(update("TenantSubscribedEvent", {}), 2)
    director.handle(FeedUpdate("MemberSuspendedEvent", "{not json", "test"), 2)
    director.handle(FeedUpdate("x/../\"Evil", "{}", "test"), 2)
    director.tick(3)
    s = scrape(port)
    events = {dict(k)["event"]: v for (name, k), v in s.items()
              if name == "lvs_extension_feed_events_total"}
    assert events == {COMPLETE: 1, "MemberActivatedEvent": 3, "TenantSubscribedEvent": 1,
                      "MemberSuspendedEvent": 1, "other": 1}
    ignored = {dict(k)["reason"]: v for (name, k), v in s.items()
               if name == "lvs_extension_feed_events_ignored_total"}
    assert ignored == {"before_complete": 1, "unchanged": 1, "unhandled": 2, "invalid": 1}
    assert value(s, "reloads_total") == 2 == fake.hups()
    assert value(s, "apply_duration_seconds_count") == 2
    assert value(s, "last_apply_success_timestamp_seconds") == pytest.approx(
        director.last_apply.at)
    assert value(s, "validation_failures_total") == 0
    assert value(s, "mass_removal_held") == 0 and value(s, "real_servers_draining") == 0
    assert value(s, "converged") == 0           # the second reload is being waited for
    assert value(s, "convergence_seconds_count") == 1     # the first, caused by the topology


def test_feed_connected_follows_the_feed(lab):
    director, kernel, port, _ = lab

    class Feed:
        name, connected = "mqtt", False
    feed = Feed()
    director.metrics.watch_feed(feed)
    assert value(scrape(port), "feed_connected", feed="mqtt") == 0
    feed.connected = True
    assert value(scrape(port), "feed_connected", feed="mqtt") == 1


def test_status_document_over_http_and_the_status_verb(lab, vrrp_ns, capsys):
    director, kernel, port, _ = lab
    vip_on(vrrp_ns, VIP0, VIP1, GHOST)
    doc = get_json(port)
    assert [s["service"] for s in doc["services"]] == ["ghost", "svc0", "svc1"]
    assert doc["absent_from_topology"] == ["ghost"]
    ghost, web, _ = doc["services"]
    assert ghost == {"service": "ghost", "vip": GHOST, "vrrp_instance": "VI_IPV4",
                     "vrrp_state": "MASTER", "bgp": None, "in_topology": False, "virtual_servers": []}
    (vs,) = web["virtual_servers"]
    assert (vs["in_kernel"], vs["active_connections"], vs["connections"]) == (True, 5, 17)
    rows = {r["member"]: r for r in vs["real_servers"]}
    assert rows["svc0.member-0"] == {
        "real_server": "10.0.0.1:80", "address": "10.0.0.1", "port": 80,
        "member": "svc0.member-0", "cluster": "svc0.app.domain", "weight": 1,
        "in_kernel": True, "kernel_weight": 1, "active_connections": 3,
        "inactive_connections": 1, "connections": 10}
    assert rows["svc0.member-2"]["in_kernel"] is False
    assert doc["last_apply"]["outcome"] == "reloaded" and doc["last_apply"]["ok"]
    assert doc["last_apply"]["real_servers"] == 4
    assert doc["convergence"]["state"] == "converged"
    assert doc["drift"]["not_in_kernel"] == ["10.0.0.3:80 of TCP 192.0.2.10:80"]
    assert main(["status", "--metrics-listen", str(port), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["services"][1]["service"] == "svc0"
    assert main(["status", "--metrics-listen", f"127.0.0.1:{port}"]) == 0
    text = capsys.readouterr().out
    assert "service ghost  VIP 192.0.2.50  VI_IPV4 MASTER  ABSENT from the topology" in text
    assert "  TCP 192.0.2.10:80 rr  in kernel  active 5  inactive 1  connections 17" in text
    assert ("    10.0.0.1:80              member svc0.member-0            in kernel      "
            "weight 1  active 3  inactive 1  connections 10") in text
    assert "    10.0.0.3:80              member svc0.member-2            NOT IN KERNEL  " \
           "weight 1" in text
    assert ": reloaded" in text and "convergence: converged in " in text
    with pytest.raises(urllib.error.HTTPError) as exc:
        get_json(port, "/nothing")
    assert exc.value.code == 404


def test_a_rejected_file_is_counted_and_is_the_last_apply(tmp_path, fake_keepalived):
    settings = make_settings(str(tmp_path), keepalived_bin="/bin/false", quiet_period=0,
                             keepalived_pidfile=fake_keepalived.pidfile)
    director = service.Director(settings, service.keepalived_for(settings),
                                read_kernel=Kernel().read)
    director.handle(update(COMPLETE, st.topology({0: [0]})), 0)
    director.tick(1)
    assert director.registry.get_sample_value(
        "lvs_extension_validation_failures_total") == 1
    assert director.last_apply.outcome == "rejected by keepalived -t"
    assert not director.last_apply.ok
    assert director.registry.get_sample_value(
        "lvs_extension_last_apply_success_timestamp_seconds") == 0


def test_mass_removal_held_and_draining_gauges(tmp_path, fake_keepalived):
    settings = make_settings(str(tmp_path), quiet_period=0, drain_seconds=30,
                             keepalived_pidfile=fake_keepalived.pidfile)
    director = service.Director(settings, service.keepalived_for(settings),
                                read_kernel=Kernel().read)

    def gauge(name):
        return director.registry.get_sample_value("lvs_extension_" + name)
    director.handle(update(COMPLETE, st.topology({0: [0, 1, 2, 3]})), 0)
    director.tick(0)
    director.handle(update("MemberSuspendedEvent", st.member_event(0, 3)), 1)
    director.tick(1)
    assert gauge("real_servers_draining") == 1 and gauge("mass_removal_held") == 0
    director.handle(update(COMPLETE, st.topology({0: []})), 2)
    director.tick(2)
    assert gauge("mass_removal_held") == 1


# -- the listener and its settings ----------------------------------------------------

def test_metrics_listen_settings(tmp_path):
    load = settings_mod.load
    base = {"vip_map": "a|192.0.2.1"}
    assert load(dict(base)).metrics_listen is None                   # off by default
    assert load(dict(base, metrics_listen="9445")).metrics_listen == ("127.0.0.1", 9445)
    assert load(dict(base, metrics_listen="localhost:80")).metrics_listen == \
        ("127.0.0.1", 80)
    assert load(dict(base, metrics_listen="[::1]:80")).metrics_listen == ("::1", 80)
    with pytest.raises(SettingsError, match="HOST must be an IP address"):
        load(dict(base, metrics_listen="metrics.example.org:80"))
    config = tmp_path / "c.conf"
    config.write_text("vip_map = a|192.0.2.1\nmetrics_listen = 0.0.0.0:9445\n")
    with pytest.raises(SettingsError) as exc:
        load(None, str(config))
    assert str(exc.value) == (
        f"{config}:2: metrics_listen='0.0.0.0:9445': is not a loopback address: /metrics "
        "and /status name every VIP and real server; set metrics_allow_remote = true "
        "(--metrics-allow-remote) to serve them to the network")
    config.write_text(config.read_text() + "metrics_allow_remote = true\n")
    assert load(None, str(config)).metrics_listen == ("0.0.0.0", 9445)


def test_run_refusing_a_non_loopback_listener_is_one_line(capsys, tmp_path):
    code = main(["run", "--vip-map", "a|192.0.2.1", "--topology-file", str(tmp_path / "t"),
                 "--metrics-listen", "[::]:9445"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--metrics-listen='[::]:9445': is not a loopback address" in err


def test_a_busy_port_is_one_host_error(tmp_path, fake_keepalived):
    settings = make_settings(str(tmp_path), keepalived_pidfile=fake_keepalived.pidfile)
    director = service.Director(settings, service.keepalived_for(settings))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(HostError, match=f"cannot listen on 127.0.0.1:{port} for metrics "
                           r"\(metrics_listen\): Address already in use"):
            service.serve_metrics(director, ("127.0.0.1", port))
    assert list(director.registry.collect())       # the registry is still usable


def test_status_without_a_listener_or_a_service(capsys):
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "status asks the running service" in err
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert main(["status", "--metrics-listen", str(port)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"no lvs-extension answers on 127.0.0.1:{port} (metrics_listen)" in err


def test_logging_of_the_listener(lab, caplog):
    # the listener logs its requests at DEBUG only (a scrape every 15 s is not news)
    director, kernel, port, _ = lab
    with caplog.at_level(logging.INFO):
        scrape(port)
    assert not [r for r in caplog.records if "GET /metrics" in r.getMessage()]


# -- lvs-extension run with metrics_listen --------------------------------------------

@pytest.fixture
def run_service(tmp_path, fake_keepalived):
    """``service.run`` in a thread, following a topology file, metrics on a free port;
    *follow*: IPVS takes the file's content at each SIGHUP (as keepalived would)."""
    started = []

    def start(follow: bool = True, **overrides):
        topo = tmp_path / "topology.json"
        topo.write_text(json.dumps(st.topology({0: [0, 1]})))
        port = free_port()
        settings = make_settings(str(tmp_path), topology_file=str(topo),
                                 metrics_listen=str(port), quiet_period=0.05,
                                 drain_seconds=0, keepalived_pidfile=fake_keepalived.pidfile,
                                 **overrides)
        kernel, seen = Kernel(), [0]

        def keepalived_applies(dests_of=None):
            if follow and fake_keepalived.hups() != seen[0]:
                seen[0] = fake_keepalived.hups()
                with open(settings.keepalived_conf) as f:
                    kernel.apply(parse_rendered(f.read()))
            return kernel.read(dests_of)
        director = service.Director(settings, service.keepalived_for(settings),
                                    read_kernel=keepalived_applies)
        stop = threading.Event()
        thread = threading.Thread(target=service.run, args=(settings, stop),
                                  kwargs={"director": director}, daemon=True)
        thread.start()
        started.append((stop, thread))
        wait_for(lambda: _answers(port), 10, "the metrics listener")
        return topo, port
    yield start
    for stop, thread in started:
        stop.set()
        thread.join(10)
        assert not thread.is_alive()


def _answers(port: int) -> bool:
    try:
        scrape(port)
        return True
    except OSError:
        return False


def test_run_verifies_each_reload_in_ipvs_and_measures_convergence(run_service, caplog):
    with caplog.at_level(logging.INFO):
        topo, port = run_service()
        wait_for(lambda: value(scrape(port), "convergence_seconds_count") == 1, 15,
                 "the first convergence")
        assert value(scrape(port), "converged") == 1
        assert value(scrape(port), "feed_connected", feed="file") == 1
        topo.write_text(json.dumps(st.topology({0: [0, 1, 2]})))     # a member joins
        wait_for(lambda: value(scrape(port), "convergence_seconds_count") == 2, 15,
                 "the second convergence")
    s = scrape(port)
    rs2 = dict(WEB, cluster="svc0.app.domain", member="svc0.member-2",
               real_server="10.0.0.3:80")
    assert value(s, "real_server_in_kernel", **rs2) == 1
    assert value(s, "drift_entries", kind="missing") == 0
    assert 0 < value(s, "convergence_seconds_sum") < 10
    assert caplog.text.count("IPVS converged in ") == 2
    assert get_json(port)["convergence"]["state"] == "converged"


def test_run_reports_drift_when_keepalived_does_not_apply(run_service, caplog, monkeypatch):
    monkeypatch.setattr(converge, "RELOAD_GRACE", 0.2)
    with caplog.at_level(logging.INFO):
        topo, port = run_service(follow=False, health_check="NONE", delay_loop=1)
        wait_for(lambda: value(scrape(port), "convergence_timeouts_total") == 1, 15,
                 "the bound to pass")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(
        "IPVS does not show the applied configuration 1.")
    assert "1 desired entries missing, 0 unexpected present (virtual server TCP " \
           "192.0.2.10:80 missing)" in errors[0]
    s = scrape(port)
    assert value(s, "converged") == 0 and value(s, "drift_entries", kind="missing") == 1
    doc = get_json(port)
    assert doc["convergence"]["state"] == "drift"
    assert doc["convergence"]["drift"] == ["virtual server TCP 192.0.2.10:80 missing"]


def test_convergence_is_timed_from_the_first_event_of_a_burst_as_received(
        tmp_path, fake_keepalived):
    from .test_watcher import Clock
    clock, kernel = Clock(), Kernel()
    settings = make_settings(str(tmp_path), keepalived_pidfile=fake_keepalived.pidfile,
                             quiet_period=0, drain_seconds=0)
    director = service.Director(settings, service.keepalived_for(settings),
                                read_kernel=kernel.read, clock=clock)
    # queued 2 s before the loop got to it; a second change of the same burst later
    assert director.handle(update(COMPLETE, st.topology({0: [0]}, inactive={0: [1]})),
                           clock.now, clock.now - 2)
    assert director.handle(update("MemberActivatedEvent", st.member_event(0, 1)), clock.now,
                           clock.now - 1)
    director.tick(clock.now)
    kernel.apply(director.served)
    clock.now += 0.5
    assert director.watcher.step() is None
    assert director.watcher.report.event_seconds == pytest.approx(2.5)
    assert director.watcher.report.seconds == pytest.approx(0.5)
