"""Mode bgp against real BIRD daemons: a director and a router in two throwaway network
namespaces, a real BGP session with BFD between them.

The director side is the product's :class:`~.announce.Announcer` (real ``bird.conf``
rendering, ``bird -p``, the control socket, VIPs added to lo by netlink in the
director's namespace); only what this kernel lacks is stood in for: the IPVS table (no
``ip_vs`` here: a function returning what the kernel would) and ``/proc/sys/net/ipv4/vs``
(a directory of files).  keepalived is a stand-in process with keepalived's name."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from cartridge_agent_lvs.director import bgp
from cartridge_agent_lvs.director import settings as S
from cartridge_agent_lvs.director.announce import Announcer
from cartridge_agent_lvs.director.bird import Bird, BirdError
from cartridge_agent_lvs.director.hostnet import LocalVips, Sysctls
from cartridge_agent_lvs.director.keepalived import Keepalived
from cartridge_agent_lvs.director.plan import plan
from cartridge_agent_lvs.director.stats import DestStats, ServiceStats
from cartridge_agent_lvs.director.topology import parse_topology

from . import _stratos as st
from ._feedutil import wait_for
from ._service import FakeKeepalived
from tests.realserver.conftest import addresses, netns  # noqa: F401

pytestmark = [pytest.mark.bird, pytest.mark.netns]

VIP = st.vip(0)
ROUTER, DIRECTOR = "10.200.0.1", "10.200.0.2"
BFD_MS, BFD_MULT = 100, 3


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture
def run_dir():
    """A short private directory for BIRD's control sockets (unix socket paths are
    short), removed afterwards."""
    path = tempfile.mkdtemp(prefix="bgp-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pair():
    """Namespaces (router, director) joined by a veth; deleted afterwards."""
    from pyroute2 import netns as pyroute2_netns
    names = [f"lvs-bgp-{os.getpid()}-{n}" for n in ("r", "d")]
    for name in names:
        pyroute2_netns.create(name)
    try:
        sh("ip", "link", "add", "veth-r", "netns", names[0], "type", "veth", "peer", "name",
           "veth-d", "netns", names[1])
        for ns, dev, address in ((names[0], "veth-r", ROUTER), (names[1], "veth-d", DIRECTOR)):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", dev)
        yield names
    finally:
        for name in names:
            pyroute2_netns.remove(name)


class Daemon:
    """``bird -f`` in a namespace, its control socket in a short private directory."""

    def __init__(self, ns: str, conf: str, workdir: str, name: str) -> None:
        self.socket = os.path.join(workdir, f"{name}.ctl")
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, "bird", "-f", "-c", conf,
                                      "-s", self.socket, "-P", os.path.join(workdir, f"{name}.pid")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(lambda: os.path.exists(self.socket) or self.proc.poll() is not None, 10,
                 f"{name} BIRD control socket")
        assert self.proc.poll() is None, self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def router_conf(path: str) -> None:
    with open(path, "w") as f:
        f.write(f"""router id {ROUTER};
protocol device {{ }}
protocol bfd {{ interface "veth-r" {{ min rx interval {BFD_MS} ms; min tx interval {BFD_MS} ms;
    multiplier {BFD_MULT}; }}; }}
protocol bgp director {{
    local {ROUTER} as 65000; neighbor {DIRECTOR} as 65001; bfd on;
    connect delay time 1; connect retry time 1; error wait time 1, 2;
    ipv4 {{ import all; export none; }};
}}
""")


def kernel_with(weight: int):
    """What IPVS would show: the virtual server of VIP:80 with two real servers."""
    dests = tuple(DestStats(st.member_ip(0, i), 80, "DR", weight, 0, 0, 0, 0, 0, 0, 0)
                  for i in range(2))
    return (ServiceStats("TCP", VIP, 80, 0, "mh", 0, 0, 0, 0, 0, dests),)


def test_the_router_learns_and_loses_the_vip_as_the_director_can_serve_it(pair, tmp_path,
                                                                           run_dir):
    router_ns, director_ns = pair
    run = run_dir
    fake = FakeKeepalived(str(tmp_path))
    daemons = []
    try:
        settings = S.load(dict(
            vip_map=st.vip_map([0]), mode="bgp", scheduler="mh", bgp_local_as="65001",
            bgp_router_id=DIRECTOR, bgp_peers=f"{ROUTER} 65000", bfd_interval_ms=str(BFD_MS),
            bfd_multiplier=str(BFD_MULT), bird_conf=str(tmp_path / "bird.conf"),
            bird_socket=os.path.join(run, "director.ctl"),
            withdrawn_file=str(tmp_path / "withdrawn"), keepalived_conf=fake.conf,
            keepalived_pidfile=fake.pidfile))
        served = plan(settings, parse_topology(__import__("json").dumps(
            st.topology({0: [0, 1]})))).config
        kernel = {"now": kernel_with(1)}
        sysroot = tmp_path / "sys"
        (sysroot / "net/ipv4/vs").mkdir(parents=True)
        (sysroot / "net/ipv4/vs/sloppy_tcp").write_text("0\n")
        announcer = Announcer(settings, Keepalived(fake.conf, pidfile=fake.pidfile),
                              lambda: kernel["now"],
                              local=LocalVips("lo", netns=director_ns),
                              sysctls=Sysctls([("net/ipv4/vs/sloppy_tcp", "1")], str(sysroot)))
        router = Bird(str(tmp_path / "router.conf"), os.path.join(run, "router.ctl"))
        router_conf(router.conf_path)

        # before BIRD runs: the check passes, BIRD cannot be told -> nothing announced
        assert announcer.check(served) == frozenset()
        assert announcer.reasons == {VIP: None}
        assert f"{VIP}/32" in addresses(director_ns)["lo"]
        assert (sysroot / "net/ipv4/vs/sloppy_tcp").read_text() == "1"
        daemons.append(Daemon(router_ns, router.conf_path, run, "router"))
        daemons.append(Daemon(director_ns, settings.bird_conf, run, "director"))
        assert announcer.check(served) == {VIP}
        assert f"route {VIP}/32 blackhole;" in open(settings.bird_conf).read()

        def learnt() -> bool:
            replies = router.request(f"show route {VIP}/32 all")
            return any(DIRECTOR in text and "via" in text for _, text in replies)

        wait_for(learnt, 30, "the router learns the VIP over BGP")

        for change, reason in (
                (lambda: kernel.update(now=kernel_with(0)), "has no real server with weight"),
                (lambda: open(settings.withdrawn_file, "w").close(), bgp.WITHDRAWN),
                (fake.stop, bgp.NO_KEEPALIVED)):
            change()
            started = time.monotonic()
            assert announcer.check(served) == frozenset()
            assert reason in announcer.reasons[VIP]
            wait_for(lambda: not learnt(), 5, f"withdrawn at the router ({reason})")
            withdrawn_after = time.monotonic() - started
            assert withdrawn_after < 2, withdrawn_after
            # put it right again: announced again
            kernel["now"] = kernel_with(1)
            if os.path.exists(settings.withdrawn_file):
                os.unlink(settings.withdrawn_file)
            if fake.proc.poll() is not None:
                fake = FakeKeepalived(str(tmp_path), conf=fake.conf)
                announcer.keepalived.pidfile = fake.pidfile
            assert announcer.check(served) == {VIP}
            wait_for(learnt, 10, "announced again")

        # the director's BGP speaker freezes (its TCP session stays open, no FIN): BFD,
        # not the 9 s hold time, makes the router drop the route
        frozen = time.monotonic()
        daemons[1].proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: not learnt(), 10, "the router drops the frozen director")
        detected = time.monotonic() - frozen
        assert BFD_MS * BFD_MULT / 1000 <= detected + 0.1, detected
        assert detected <= BFD_MS * BFD_MULT / 1000 + 1.5 < settings.bgp_hold_time, detected
        daemons[1].kill()

        announcer.close()
        assert f"{VIP}/32" not in addresses(director_ns)["lo"]
        assert (sysroot / "net/ipv4/vs/sloppy_tcp").read_text() == "0"
    finally:
        for daemon in daemons:
            daemon.kill()
        fake.stop()


def test_bird_refusing_a_file_keeps_the_last_one(tmp_path):
    bird = Bird(str(tmp_path / "bird.conf"), str(tmp_path / "none.ctl"))
    assert bird.write("router id 10.0.0.1;\nprotocol device { }\n")
    before = open(bird.conf_path).read()
    with pytest.raises(BirdError) as err:
        bird.write("router id 10.0.0.1;\nprotocol bogus { }\n")
    assert "\n" not in str(err.value) and "bird -p rejected" in str(err.value)
    assert open(bird.conf_path).read() == before
    assert [p.name for p in tmp_path.iterdir()] == ["bird.conf"]     # no temporary left
    with pytest.raises(Exception) as err:
        bird.configure()                    # no daemon on that socket: a one-line HostError
    assert "BIRD control socket" in str(err.value)


@pytest.mark.keepalived
def test_run_announces_then_on_stop_withdraws_waits_drain_seconds_and_restores(netns, tmp_path,
                                                                                run_dir):
    """``lvs-extension run`` in mode bgp with a real BIRD: it announces once keepalived
    runs and IPVS has the real servers; stopping withdraws at once -- before the feed
    stops, which may take a while -- waits drain_seconds and puts lo and the sysctls
    back."""
    import json
    import threading
    from cartridge_agent_lvs.director import service
    fake = FakeKeepalived(str(tmp_path))
    topology = tmp_path / "topology.json"
    topology.write_text(json.dumps(st.topology({0: [0, 1]})))
    settings = S.load(dict(
        vip_map=st.vip_map([0]), mode="bgp", scheduler="mh", bgp_local_as="65001",
        bgp_router_id=DIRECTOR, bgp_peers=f"{ROUTER} 65000", drain_seconds="1.5",
        bird_conf=str(tmp_path / "bird.conf"), bird_socket=os.path.join(run_dir, "d.ctl"),
        withdrawn_file=str(tmp_path / "withdrawn"), keepalived_conf=fake.conf,
        keepalived_pidfile=fake.pidfile, topology_file=str(topology), quiet_period="0.05",
        announce_interval="0.1"))
    director = service.Director(settings, service.keepalived_for(settings),
                                read_kernel=lambda dests_of=None: kernel_with(1))
    sysroot = tmp_path / "sys"
    (sysroot / "net/ipv4/vs").mkdir(parents=True)
    (sysroot / "net/ipv4/vs/sloppy_tcp").write_text("0")
    director.announcer.local = LocalVips("lo", netns=netns)
    director.announcer.sysctls = Sysctls([("net/ipv4/vs/sloppy_tcp", "1")], str(sysroot))
    bird = Bird(settings.bird_conf, settings.bird_socket)
    bird.write(bgp.render_bird(bgp.speaker_of(settings), ()))
    daemon = Daemon(netns, settings.bird_conf, run_dir, "d")
    feed, feed_stop, at_feed_stop = service.build_feed(settings), [], []
    slow_stop = 1.0

    def stop_feed():                            # e.g. an MQTT feed's disconnect
        at_feed_stop.append(exported())
        time.sleep(slow_stop)
        feed_stop[0]()
    feed_stop.append(feed.stop)
    feed.stop = stop_feed
    stop, result = threading.Event(), []
    thread = threading.Thread(target=lambda: result.append(
        service.run(settings, stop, director=director, feed=feed)), daemon=True)
    try:
        thread.start()

        def exported() -> bool:
            return any(VIP in text for _, text in bird.request("show route protocol lvs_vips4"))

        wait_for(exported, 15, "the VIP in BIRD's static protocol")
        assert f"{VIP}/32" in addresses(netns)["lo"]
        assert (sysroot / "net/ipv4/vs/sloppy_tcp").read_text() == "1"
        assert director.registry.get_sample_value("lvs_extension_vip_announced",
                                                  {"vip": VIP}) == 1
        # /status (lvs-extension status) says so, and has no VRRP role in this mode
        from cartridge_agent_lvs.director.status import document, format_text, observe
        view = director.view()
        doc = document(view, observe(view.config, "eth0", frozenset(),
                                     lambda: kernel_with(1), lambda _: frozenset()))
        assert doc["services"][0]["bgp"] == {"announced": True, "reason": None}
        assert doc["vrrp"] == [] and "BGP announced" in format_text(doc)
        stopped = time.monotonic()
        stop.set()
        wait_for(lambda: not exported(), 2, "withdrawn at once on stop")
        assert thread.is_alive()                    # ... and still waiting the drain
        thread.join(10)
        assert result == [0]
        assert at_feed_stop == [False]              # withdrawn before the feed stopped
        # the drain ran while the feed stopped, not after it
        assert settings.drain_seconds <= time.monotonic() - stopped < settings.drain_seconds + slow_stop
        assert f"{VIP}/32" not in addresses(netns)["lo"]
        assert (sysroot / "net/ipv4/vs/sloppy_tcp").read_text() == "0"
        assert "route " not in open(settings.bird_conf).read()   # a restart stays withdrawn
    finally:
        stop.set()
        thread.join(10)
        daemon.kill()
        fake.stop()


def test_withdraw_and_announce_verbs_create_and_remove_the_file(tmp_path):
    import sys
    path = tmp_path / "state" / "withdrawn"
    cli = [sys.executable, "-m", "cartridge_agent_lvs.director.cli"]
    done = subprocess.run([*cli, "withdraw", "--withdrawn-file", str(path)], capture_output=True,
                          text=True)
    assert done.returncode == 0 and path.exists(), done.stderr
    assert "within announce_interval" in done.stdout
    done = subprocess.run([*cli, "announce", "--withdrawn-file", str(path)], capture_output=True,
                          text=True)
    assert done.returncode == 0 and not path.exists(), done.stderr
    bad = subprocess.run([*cli, "withdraw", "--withdrawn-file", "/proc/none/x"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
