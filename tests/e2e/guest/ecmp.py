"""ECMP lab and scenarios k, n, l, m: three active directors in mode bgp (runs INSIDE the VM).

Mixed into ``scenarios.Suite``; built on first use (scenario k's budget holds it) on the
main lab's bridge, after the main scenarios:

* ``ertr``: a router running BIRD (kernel protocol with ``merge paths on``, a BGP
  session with BFD to each director), ``fib_multipath_hash_policy=1`` (L4 hash), and a
  second link to ``eclient`` (10.98.0.2), the client behind it;
* ``ed1``..``ed3``: directors, each running ``lvs-extension run --mode bgp`` (it adds the
  VIP to lo, writes keepalived.conf and bird.conf, sets sloppy_tcp, and announces the
  VIP while keepalived serves it), keepalived and BIRD started by this suite;
* three of the main lab's real servers that hold the VIP (set up by ``cartridge-agent-lvs
  apply`` in the main setup), with a route back to the client's network via the router.

BIRD runs SCHED_FIFO (``REALTIME``): in the emulated guest, with the lab's other work at
normal priority, a BFD thread that waits for the CPU longer than 3 x 200 ms declares
every session down at once (seen: 98 expiries, BGP never converged, in a run without it).
A probe process at each priority logs how late its 20 ms sleeps wake
(``logs/guest-stalls*.log``); scenarios l and m note the stalls around their event.

The real servers answer HTTP/1.1 keep-alive, so a long-lived connection is one TCP
connection carrying a request every 0.2 s; every answer names its real server.
"""

from __future__ import annotations

import collections
import fcntl
import json
import math
import os
import re
import signal
import socket
import struct
import sys
import threading
import time

from tests.e2e.guest import lab as L
from tests.e2e.guest import pace
from tests.e2e.guest.stratos import Topology

ROUTER_AS, DIRECTOR_AS = 65000, 65001
ROUTER = "10.99.0.1"
EDIRS = {"ed1": "10.99.0.41", "ed2": "10.99.0.42", "ed3": "10.99.0.43"}
ECLIENT, ECLIENT_GW, ECLIENT_NET = "10.98.0.2", "10.98.0.1", "10.98.0.0/24"
BFD_INTERVAL_MS, BFD_MULTIPLIER = 200, 3
ANNOUNCE_INTERVAL = 0.2
LONG_LIVED = 45
#: the client ports scenario n sends through each director in turn (router policy rule)
PINNED_PORTS = range(20000, 20020)      # outside the ephemeral range: never reused by chance
PINNED_TABLE = 101
ECMP_BUDGETS = {"k": 420, "n": 120, "l": 120, "m": 120}
ECMP_ORDER = "knlm"


#: a separate process that sleeps STALL_TICK s in a loop and prints (monotonic time, late by)
#: whenever it woke more than STALL_REPORT s late: the guest did not run it for that long
STALL_TICK, STALL_REPORT = 0.02, 0.1
STALL_PROBE = f"""
import sys, time
last = time.monotonic()
while True:
    time.sleep({STALL_TICK})
    now = time.monotonic()
    if now - last - {STALL_TICK} > {STALL_REPORT}:
        print(f"{{now:.3f}} {{now - last - {STALL_TICK}:.3f}}", flush=True)
    last = now
"""


#: BIRD runs SCHED_FIFO in the guest so that the lab's other work cannot delay BFD
REALTIME = ["chrt", "-f", "10"]


def _route_nexthops(text: str) -> set:
    """``ip -j route show PREFIX`` -> the set of gateways (one route or multipath)."""
    found = set()
    for route in json.loads(text or "[]"):
        if "gateway" in route:
            found.add(route["gateway"])
        for hop in route.get("nexthops", ()):
            found.add(hop["gateway"])
    return found


def link_down(ifname: str) -> None:
    """``ip link set IFNAME down`` in the calling thread's namespace, by ioctl."""
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", ifname.encode(), 0)
        flags = struct.unpack_from("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH22x", ifname.encode(), flags & ~IFF_UP))


def _clock(wall: float) -> str:
    """HH:MM:SS.mmm of a time.time(), to compare with BIRD's log."""
    return time.strftime("%H:%M:%S", time.localtime(wall)) + f"{wall % 1:.3f}"[1:]


def _attrs(data: bytes) -> dict:
    """rtnetlink attributes (type -> payload) of one message body."""
    found, offset = {}, 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        found[kind & 0x3fff] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return found


def _route(body: bytes) -> tuple:
    """An IPv4 RTM_*ROUTE body -> (destination, prefix length, table, gateways)."""
    RTA_DST, RTA_GATEWAY, RTA_MULTIPATH, RTA_TABLE = 1, 5, 9, 15
    family, dst_len, _, _, table = struct.unpack_from("=BBBBB", body)
    attrs = _attrs(body[12:])
    if family != socket.AF_INET:
        return (None, None, None, ())
    table = struct.unpack("=I", attrs[RTA_TABLE])[0] if RTA_TABLE in attrs else table
    dst = socket.inet_ntoa(attrs[RTA_DST]) if RTA_DST in attrs else "0.0.0.0"
    gateways = {socket.inet_ntoa(attrs[RTA_GATEWAY])} if RTA_GATEWAY in attrs else set()
    hops, offset = attrs.get(RTA_MULTIPATH, b""), 0
    while offset + 8 <= len(hops):              # struct rtnexthop, then its attributes
        length = struct.unpack_from("=H", hops, offset)[0]
        nested = _attrs(hops[offset + 8:offset + length])
        if RTA_GATEWAY in nested:
            gateways.add(socket.inet_ntoa(nested[RTA_GATEWAY]))
        offset += max(8, (length + 3) & ~3)
    return (dst, dst_len, table, gateways)


class RouteWatch:
    """The router's kernel routes to ``prefix`` (main table) as they change: a thread in
    namespace ``ns`` on an rtnetlink socket (group RTMGRP_IPV4_ROUTE) records
    ``(time.monotonic(), next hops)`` per RTM_NEWROUTE / RTM_DELROUTE (a deletion: no
    next hop). Event-driven, so what it reports does not depend on a polling period."""

    GROUP, NEW, DEL, MAIN = 0x40, 24, 25, 254

    def __init__(self, ns: str, prefix: str):
        self.ns = ns
        self.dst, length = prefix.split("/")
        self.dst_len = int(length)
        self.events: list = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RouteWatch":
        self._thread.start()
        if not self._ready.wait(pace.scaled(10)):
            raise TimeoutError("the route watch did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        L.enter_netns(self.ns)
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
            sock.bind((0, self.GROUP))
            sock.settimeout(0.2)
            self._ready.set()
            while not self._stop.is_set():
                try:
                    data = sock.recv(1 << 16)
                except socket.timeout:
                    continue
                now, offset = time.monotonic(), 0
                while offset + 16 <= len(data):
                    length, kind = struct.unpack_from("=IH", data, offset)
                    if kind in (self.NEW, self.DEL):
                        route = _route(data[offset + 16:offset + length])
                        if route[:3] == (self.dst, self.dst_len, self.MAIN):
                            self.events.append((now, frozenset(route[3] if kind == self.NEW else ())))
                    offset += max(16, (length + 3) & ~3)

    def reached(self, want: set, since: float) -> float | None:
        """Seconds from ``since`` to the first change at or after it that left exactly
        ``want`` as next hops; None if none did."""
        for at, hops in list(self.events):
            if at >= since and hops == want:
                return at - since
        return None

    def wait(self, want: set, since: float, timeout: float) -> float:
        """:meth:`reached`, waiting up to ``timeout`` s for it; TimeoutError if not."""
        L.wait_for(lambda: self.reached(want, since) is not None, timeout, 0.01,
                   f"the route watch: {self.dst} via {sorted(want)}")
        return self.reached(want, since)

    def history(self, since: float) -> list:
        return [(round(at - since, 3), sorted(hops)) for at, hops in list(self.events) if at >= since - 1]


class LongLived:
    """``count`` HTTP/1.1 keep-alive connections from the calling namespace's client to
    ``address``, each sending a request every ``interval`` s; records per connection its
    client port, the real servers that answered and the first error."""

    def __init__(self, ns: str, address: str, port: int, count: int, interval: float = 0.2,
                 timeout: float = 5.0):
        self.ns, self.address, self.port = ns, address, port
        self.interval, self.timeout = interval, timeout
        self.conns = [{"port": 0, "servers": [], "answers": 0, "error": None, "last": 0.0}
                      for _ in range(count)]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(c,), daemon=True)
                         for c in self.conns]

    def _run(self, conn: dict) -> None:
        L.enter_netns(self.ns)
        request = f"GET / HTTP/1.1\r\nHost: {self.address}\r\n\r\n".encode()
        try:
            with socket.create_connection((self.address, self.port), self.timeout) as sock:
                conn["port"] = sock.getsockname()[1]
                reader = sock.makefile("rb")
                while not self._stop.is_set():
                    sock.sendall(request)
                    length = 0
                    status = reader.readline()
                    if not status.startswith(b"HTTP/1.1 200"):
                        raise OSError(f"bad status line {status[:40]!r}")
                    while (line := reader.readline()) not in (b"\r\n", b""):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    name = reader.read(length).decode().strip()
                    if not name:
                        raise OSError("connection closed")
                    if not conn["servers"] or conn["servers"][-1] != name:
                        conn["servers"].append(name)
                    conn["answers"] += 1
                    conn["last"] = time.monotonic()
                    self._stop.wait(self.interval)
        except OSError as exc:
            conn["error"] = f"{type(exc).__name__}: {exc}"
            conn["error_at"] = time.monotonic()

    def __enter__(self) -> "LongLived":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 2)

    def all_answered(self, since: float = 0.0) -> bool:
        return all(c["answers"] and c["last"] >= since for c in self.conns if not c["error"])

    def summary(self) -> dict:
        failed = [c for c in self.conns if c["error"]]
        moved = [c for c in self.conns if len(c["servers"]) > 1]
        return {"total": len(self.conns), "failed": len(failed), "changed_real_server": len(moved),
                "survived": len(self.conns) - len(failed) - len(moved),
                "errors": sorted({c["error"] for c in failed})[:5]}


class EcmpScenarios:
    """Scenarios k, n, l, m (mixed into ``scenarios.Suite``)."""

    ecmp_ready = False

    # ------------------------------------------------------------------ lab
    def ecmp_setup(self) -> None:
        if self.ecmp_ready:
            return
        from tests.e2e.guest.scenarios import PORT, VIP4, command, v4
        lab = self.lab
        self.ecmp_procs = {}
        lab.sh("modprobe", "ip_vs_mh", log="runner-setup.log")
        # real servers of the main lab that hold the VIP and serve HTTP (set up by apply)
        self.ecmp_rs = [r for r in ("rs1", "rs2", "rs3", "rs4")
                        if f" {VIP4}/32 " in self.addresses(r) and self.http_listening(r)][:3]
        if len(self.ecmp_rs) < 3:
            raise AssertionError(f"fewer than 3 real servers hold {VIP4}: {self.ecmp_rs}")
        for r in self.ecmp_rs:
            lab.sh("ip", "route", "replace", ECLIENT_NET, "via", ROUTER, ns=lab.ns(r))
        lab.add_host("ertr", ROUTER, "fd99::1")
        self.add_routed_client()
        lab.sh("sh", "-c", "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1 "
               "net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.all.send_redirects=0", ns=lab.ns("ertr"))
        topology = Topology(PORT)
        for r in self.ecmp_rs:
            topology.add("web", r, v4(r))
        path = self.workdir / "ecmp-topology.json"
        path.write_text(topology.dumps())
        for name, address in EDIRS.items():
            lab.add_host(name, address, f"fd99::{address.rsplit('.', 1)[1]}")
            lab.sh("ip", "route", "replace", "default", "via", ROUTER, ns=lab.ns(name))
            d = self.workdir / name
            d.mkdir(exist_ok=True)
            self.ecmp_procs[name] = {"lvs-extension": lab.start(f"{name}-lvs-extension", [
                *command("lvs-extension"), "run", "--mode", "bgp", "--vip-map", f"web|{VIP4}",
                "--scheduler", "mh", "--forwarding-method", "DR", "--health-check", "TCP_CHECK",
                "--keepalived-conf", d / "keepalived.conf", "--keepalived-pidfile", d / "keepalived.pid",
                "--bgp-local-as", DIRECTOR_AS, "--bgp-router-id", address,
                "--bgp-peers", f"{ROUTER} {ROUTER_AS}", "--bfd-interval-ms", BFD_INTERVAL_MS,
                "--bfd-multiplier", BFD_MULTIPLIER, "--bird-conf", d / "bird.conf",
                "--bird-socket", f"/run/e2e-{name}-bird.ctl", "--withdrawn-file", d / "withdrawn",
                "--announce-interval", ANNOUNCE_INTERVAL, "--topology-file", path,
                *self.timing_flags(**self.ecmp_check_timers())], ns=lab.ns(name))}
        self.start_router_bird()
        self.lab.start("guest-stalls", [sys.executable, "-c", STALL_PROBE])
        self.lab.start("guest-stalls-rt", [*REALTIME, sys.executable, "-c", STALL_PROBE])
        for name in EDIRS:
            d = self.workdir / name
            for f in ("keepalived.conf", "bird.conf"):
                L.wait_for((d / f).exists, pace.scaled(90), 0.1, f"{name}: lvs-extension writes {f}")
            self.ecmp_procs[name]["bird"] = lab.start(f"{name}-bird", [
                *REALTIME, "bird", "-f", "-c", d / "bird.conf", "-s", f"/run/e2e-{name}-bird.ctl",
                "-P", f"/run/e2e-{name}-bird.pid"], ns=lab.ns(name))
            self.ecmp_procs[name]["keepalived"] = lab.start(f"{name}-keepalived", [
                "keepalived", "-n", "-l", "-D", "-f", d / "keepalived.conf", "-p", d / "keepalived.pid",
                "-r", d / "vrrp.pid", "-c", d / "checkers.pid"], ns=lab.ns(name))
        self.results.data["setup"]["ecmp_real_servers"] = self.ecmp_rs
        self.wait_nexthops(set(EDIRS.values()), 120)
        L.wait_for(lambda: self.router_cli("show bfd sessions").count(" Up ") == len(EDIRS),
                   pace.scaled(30), 0.2, "the router's BFD sessions to every director are up")
        self.ecmp_ready = True

    @staticmethod
    def ecmp_check_timers() -> dict:
        """Health-check timers of the ECMP lab's directors.

        Scenarios j-n assert BFD detection, spread and zero failed requests, never how fast
        a health check removes a real server (b and c do that against the configured
        timers). A 1 s TCP_CHECK in a busy emulated guest times out on healthy real
        servers and pulls them, so that l and m failed for reasons that are not LVS: here
        the timeout is the product's default (3 s) times the guest's pace, and a real
        server goes only after 2 misses.
        """
        return {"connect_timeout": math.ceil(3 * pace.factor()), "retry": 2}

    def wait_stream(self, s, stream, count: int, since: float = 0.0, timeout: float = 10.0) -> None:
        """Wait for ``count`` answers of the stream; on timeout note what it saw."""
        try:
            stream.wait_answered(count, since=since, timeout=timeout, what="new requests")
        except TimeoutError:
            s.note(f"stream: {len(stream.results)} requests, {stream.answered(since)} answered since, "
                   f"errors {collections.Counter(r.error for r in stream.failures).most_common(3)}")
            raise

    def router_cli(self, command: str) -> str:
        return self.lab.sh("birdc", "-s", "/run/e2e-ertr-bird.ctl", *command.split(), check=False,
                           ns=self.lab.ns("ertr")).stdout

    def router_evidence(self, s) -> None:
        s.note(f"router's next hops for the VIP: {sorted(self.nexthops())}")
        for command in ("show protocols", "show bfd sessions"):
            s.note(f"router birdc {command}:\n{self.router_cli(command)}")

    def add_routed_client(self) -> None:
        """``eclient`` in its own network, linked to the router only."""
        lab = self.lab
        ns = lab.ns("eclient")
        lab.sh("ip", "netns", "add", ns)
        lab.hosts["eclient"] = None      # cleaned up even if the rest fails
        lab.sh("ip", "link", "add", "eth1", "netns", lab.ns("ertr"), "type", "veth", "peer", "name", "eth0",
               "netns", ns)
        lab.sh("sh", "-c", f"ip link set lo up && ip link set eth0 up && ip addr add {ECLIENT}/24 dev eth0"
               f" && ip route add default via {ECLIENT_GW}", ns=ns)
        lab.sh("sh", "-c", f"ip link set eth1 up && ip addr add {ECLIENT_GW}/24 dev eth1", ns=lab.ns("ertr"))
        lab.hosts["eclient"] = L.Host("eclient", ECLIENT, "", "", L.NetnsWorker(ns))

    def start_router_bird(self) -> None:
        conf = self.workdir / "rtr-bird.conf"
        interval = f"{BFD_INTERVAL_MS} ms"
        conf.write_text("\n".join([
            f"router id {ROUTER};", f'log "{self.lab.logdir / "rtr-bird-daemon.log"}" all;',
            "debug protocols { states, routes, events };",
            "protocol device {", "}",
            "protocol kernel {", "    ipv4 { import none; export all; };", "    merge paths on;", "}",
            "protocol bfd {", f'    interface "eth0" {{ min rx interval {interval}; min tx interval {interval};'
            f" multiplier {BFD_MULTIPLIER}; }};", "}",
            "template bgp directors {", f"    local {ROUTER} as {ROUTER_AS};", "    hold time 9;",
            "    bfd on;", "    ipv4 { import all; export none; };", "}",
            *[f"protocol bgp {n} from directors {{ neighbor {a} as {DIRECTOR_AS}; }}" for n, a in EDIRS.items()],
            ""]))
        self.lab.start("rtr-bird", [*REALTIME, "bird", "-f", "-c", conf, "-s", "/run/e2e-ertr-bird.ctl",
                                    "-P", "/run/e2e-ertr-bird.pid"], ns=self.lab.ns("ertr"))

    # ------------------------------------------------------------------ observation
    def nexthops(self) -> set:
        from tests.e2e.guest.scenarios import VIP4
        return _route_nexthops(self.lab.sh("ip", "-j", "route", "show", f"{VIP4}/32",
                                           ns=self.lab.ns("ertr")).stdout)

    def wait_nexthops(self, want: set, timeout: float) -> float:
        try:
            return L.wait_for(lambda: self.nexthops() == want, pace.scaled(timeout), 0.05,
                              f"router's route to the VIP via {sorted(want)}")[1]
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; it has {sorted(self.nexthops())}") from None

    def client_conns(self, director: str) -> dict:
        """The director's IPVS connections from the client to the VIP, by client port."""
        from tests.e2e.guest.scenarios import PORT, VIP4
        return {int(c.client.rsplit(":", 1)[1]): c
                for c in self.host(director).worker.call(L.read_ip_vs_conn_table)
                if c.client.startswith(f"{ECLIENT}:") and c.virtual == f"{VIP4}:{PORT}"}

    def director_of_ports(self, ports) -> dict:
        """client port -> the director whose IPVS scheduled it: an ESTABLISHED entry if
        one director has it, else the only one with an entry; "none" or "ambiguous"."""
        tables = {d: self.client_conns(d) for d in EDIRS}
        found = {}
        for port in ports:
            having = [d for d in EDIRS if port in tables[d] and tables[d][port].origin == "LOCAL"]
            open_ = [d for d in having if tables[d][port].state == "ESTABLISHED"]
            chosen = open_ if len(open_) == 1 else having
            found[port] = chosen[0] if len(chosen) == 1 else ("ambiguous" if chosen else "none")
        return found

    def stalls(self, start: float, end: float, probe: str = "guest-stalls") -> list:
        """Guest stalls seen by the probe between two monotonic times: (at, seconds)."""
        found = []
        for line in (self.lab.logdir / f"{probe}.log").read_text().splitlines():
            if not re.fullmatch(r"[0-9.]+ [0-9.]+", line):
                continue                    # the command line the log starts with
            at, late = map(float, line.split())
            if start <= at <= end:
                found.append((round(at - start, 3), late))
        return found

    def until_routed(self, s, measurement: str, event: str, survivors: set, act) -> float:
        """Run ``act()`` (returns its ``(monotonic, wall)`` time) and measure until the router's
        route to the VIP has exactly ``survivors`` as next hops; note the route history and
        the guest's stalls around it. Returns the event's monotonic time."""
        from tests.e2e.guest.scenarios import VIP4
        with RouteWatch(self.lab.ns("ertr"), f"{VIP4}/32") as watch:
            at, wall = act()
            s.measure(measurement, watch.wait(survivors, at, pace.scaled(30)))
        s.note(f"{event} at {_clock(wall)}; the router's routes since (s, next hops): "
               f"{watch.history(at)}")
        for probe in ("guest-stalls", "guest-stalls-rt"):
            s.note(f"{probe} from 2 s before {event} on (s after it, s): "
                   f"{self.stalls(at - 2, time.monotonic(), probe)}")
        return at

    @staticmethod
    def sigterm(proc) -> tuple:
        at = (time.monotonic(), time.time())
        proc.send_signal(signal.SIGTERM)
        return at

    def kill_director(self, name: str) -> tuple:
        """A crash: the director's link goes down, then all its processes get SIGKILL,
        both from this process (no process start in between). Returns the monotonic
        and the wall time at which the link went down."""
        link_down(f"v-{name}")
        down = time.monotonic(), time.time()
        pids = [self.ecmp_procs[name][p].pid for p in ("lvs-extension", "bird")]
        # keepalived without VRRP runs no VRRP child: no vrrp.pid
        pids += [int(f.read_text()) for f in (self.workdir / name).glob("*.pid")
                 if f.name in ("keepalived.pid", "checkers.pid", "vrrp.pid")]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return down

    def alive_directors(self) -> dict:
        hops = self.nexthops()
        return {n: a for n, a in EDIRS.items() if a in hops}

    # ------------------------------------------------------------------ scenarios
    def scenario_k(self, s) -> None:
        """k. mode bgp: new connections spread over all ECMP directors and all real servers"""
        from tests.e2e.guest.scenarios import VIP4
        started = time.monotonic()
        self.ecmp_setup()
        s.measure("ecmp_setup_seconds", time.monotonic() - started)
        s.note(f"router's route to {VIP4}: via {sorted(self.nexthops())}")
        count = 90
        def loop():
            out = []
            for _ in range(count):
                try:
                    out.append(L.http_exchange(VIP4, 80, pace.scaled(3.0)))
                except OSError as exc:
                    out.append((f"error: {type(exc).__name__}", 0))
            return out
        answers = self.host("eclient").worker.call(loop, timeout=pace.scaled(3.0) * count)
        servers = collections.Counter(name for name, _ in answers)
        by_port = self.director_of_ports([p for _, p in answers if p])
        directors = collections.Counter(by_port.values())
        s.note(f"{count} new connections from {ECLIENT}: real servers {dict(servers)}, "
               f"scheduling director {dict(directors)}")
        s.measure("requests", count)
        s.measure("real_servers", dict(servers))
        s.measure("directors", dict(directors))
        for d in EDIRS:
            s.note(f"{d} keepalived.conf is {len((self.workdir / d / 'keepalived.conf').read_bytes())} bytes")
        texts = {(self.workdir / d / "keepalived.conf").read_text() for d in EDIRS}
        s.measure("identical_keepalived_conf", len(texts) == 1)
        s.measure("sloppy_tcp", {d: self.host(d).worker.call(L.read_sysctl, "net.ipv4.vs.sloppy_tcp")
                                 for d in EDIRS})
        s.check(set(servers) == set(self.ecmp_rs), f"not every real server answered: {dict(servers)}")
        s.check(set(EDIRS) <= set(directors), f"not every director scheduled: {dict(directors)}")
        s.check(len(texts) == 1, "the directors' keepalived.conf differ")

    def scenario_n(self, s) -> None:
        """n. mode bgp: the same 5-tuple reaches the same real server through every director"""
        from tests.e2e.guest.scenarios import VIP4, rip
        self.ecmp_setup()
        lab, rtr = self.lab, self.lab.ns("ertr")
        first, last = PINNED_PORTS[0], PINNED_PORTS[-1]
        rule = ["priority", "100", "iif", "eth1", "ipproto", "tcp", "sport", f"{first}-{last}",
                "lookup", str(PINNED_TABLE)]
        seen = {}
        lab.sh("ip", "rule", "add", *rule, ns=rtr)
        try:
            for name, address in EDIRS.items():
                lab.sh("ip", "route", "replace", f"{VIP4}/32", "via", address, "dev", "eth0",
                       "table", str(PINNED_TABLE), ns=rtr)
                seen[name] = self.host("eclient").worker.call(
                    pinned_requests, VIP4, list(PINNED_PORTS), pace.scaled(3.0),
                    timeout=pace.scaled(3.0) * len(PINNED_PORTS) * 3)
                # this director's IPVS scheduled each of them, to the server that answered
                table = self.client_conns(name)
                wrong = {p: (table[p].dest if p in table else None) for p, rs in seen[name].items()
                         if rs and (p not in table or table[p].dest != rip(rs))}
                s.check(not wrong, f"through {name}: not in its IPVS as answered: {wrong}")
        finally:
            lab.sh("ip", "rule", "del", *rule, ns=rtr, check=False)
            lab.sh("ip", "route", "flush", "table", str(PINNED_TABLE), ns=rtr, check=False)
        s.note(f"real server per client port, through each director: {seen}")
        agree = [p for p in PINNED_PORTS if len({seen[d].get(p) for d in EDIRS}) == 1
                 and seen["ed1"].get(p)]
        s.measure("tuples", len(PINNED_PORTS))
        s.measure("same_real_server_through_every_director", len(agree))
        s.measure("distinct_real_servers", len({v for v in seen["ed1"].values() if v}))
        s.check(len(agree) == len(PINNED_PORTS), f"only {len(agree)} of {len(PINNED_PORTS)} 5-tuples "
                "reached the same real server through every director")

    def scenario_l(self, s) -> None:
        """l. mode bgp: a director dies under load: the router drops it, long-lived connections survive"""
        self.ecmp_setup()
        victim = "ed3"
        s.check(set(self.alive_directors()) == set(EDIRS), f"not all directors announced: {self.nexthops()}")
        try:
            self.director_dies(s, victim)
        finally:
            self.router_evidence(s)

    def director_dies(self, s, victim: str) -> None:
        from tests.e2e.guest.scenarios import PORT, VIP4
        with LongLived(self.lab.ns("eclient"), VIP4, PORT, LONG_LIVED, timeout=pace.scaled(5.0)) as conns:
            L.wait_for(conns.all_answered, pace.scaled(30), 0.1, "every long-lived connection answered")
            placed = self.director_of_ports([c["port"] for c in conns.conns])
            for command in ("show bfd sessions", "show protocols all"):
                s.note(f"{victim} birdc {command}:\n" + self.lab.sh(
                    "birdc", "-s", f"/run/e2e-{victim}-bird.ctl", *command.split(), check=False,
                    ns=self.lab.ns(victim)).stdout)
            per_director = collections.Counter(placed.values())
            s.note(f"long-lived connections per director before the kill: {dict(per_director)}")
            with L.RequestStream(self.host("eclient").worker, VIP4, interval=0.05,
                                 timeout=pace.scaled(3.0)) as stream:
                self.wait_stream(s, stream, 20)
                survivors = {a for n, a in EDIRS.items() if n != victim}
                killed = self.until_routed(s, "detection_seconds", "the link went down", survivors,
                                           lambda: self.kill_director(victim))
                settle = time.monotonic()
                self.wait_stream(s, stream, 40, since=settle, timeout=30)
                L.wait_for(lambda: conns.all_answered(time.monotonic() - 0.5), pace.scaled(15), 0.1,
                           "the surviving long-lived connections answer again")
        summary = conns.summary()
        on_victim = [c for c in conns.conns if placed.get(c["port"]) == victim]
        s.measure("long_lived", summary)
        s.measure("long_lived_per_director", dict(per_director))
        s.measure("long_lived_on_dead_director", len(on_victim))
        s.measure("long_lived_on_dead_director_survived",
                  sum(1 for c in on_victim if not c["error"] and len(c["servers"]) == 1))
        s.measure("new_requests", len(stream.results))
        s.measure("failed_new_requests", len(stream.failures))
        slow = [r for r in stream.results if r.server and r.end - r.start > 0.5 and r.start >= killed - 1]
        s.measure("slow_new_requests", len(slow))
        s.note(f"failures: {[r.error for r in stream.failures][:5]}; long-lived: {summary}")
        s.check(len(on_victim) > 0, "no long-lived connection went through the victim")

    def scenario_m(self, s) -> None:
        """m. mode bgp: a director withdrawn gracefully (SIGTERM): no failed request, no reset"""
        self.ecmp_setup()
        victim = "ed1"
        alive = self.alive_directors()
        s.check(victim in alive and len(alive) >= 2, f"announcing directors: {sorted(alive)}")
        try:
            self.director_withdraws(s, victim, alive)
        finally:
            self.router_evidence(s)

    def director_withdraws(self, s, victim: str, alive: dict) -> None:
        from tests.e2e.guest.scenarios import PORT, VIP4
        proc = self.ecmp_procs[victim]["lvs-extension"]
        with LongLived(self.lab.ns("eclient"), VIP4, PORT, 30, timeout=pace.scaled(5.0)) as conns:
            L.wait_for(conns.all_answered, pace.scaled(30), 0.1, "every long-lived connection answered")
            placed = self.director_of_ports([c["port"] for c in conns.conns])
            with L.RequestStream(self.host("eclient").worker, VIP4, interval=0.05,
                                 timeout=pace.scaled(3.0)) as stream:
                self.wait_stream(s, stream, 20)
                survivors = {a for n, a in alive.items() if n != victim}
                signalled = self.until_routed(s, "withdraw_seconds", "SIGTERM", survivors,
                                              lambda: self.sigterm(proc))
                code = proc.wait(pace.scaled(30))
                s.measure("exit_seconds", time.monotonic() - signalled)
                s.measure("exit_code", code)
                self.pace_now(s, next(n for n in EDIRS if n != victim))
                since = time.monotonic()
                self.wait_stream(s, stream, 20, since=since)
                L.wait_for(lambda: conns.all_answered(time.monotonic() - 0.5), pace.scaled(15), 0.1,
                           "the long-lived connections answer after the exit")
        summary = conns.summary()
        s.measure("long_lived", summary)
        s.measure("long_lived_on_withdrawn_director", sum(1 for d in placed.values() if d == victim))
        s.measure("new_requests", len(stream.results))
        s.measure("failed_new_requests", len(stream.failures))
        s.measure("sloppy_tcp_after_exit", self.host(victim).worker.call(L.read_sysctl, "net.ipv4.vs.sloppy_tcp"))
        s.note(f"log tail: {self.log_tail(f'{victim}-lvs-extension.log', 8)}")
        s.check(code == 0, f"lvs-extension exited {code}")


def pinned_requests(address: str, ports: list, timeout: float) -> dict:
    """One HTTP/1.0 GET from each client port of ``ports``: port -> answering server (None)."""
    out = {}
    for port in ports:
        out[port] = None
        for _ in range(3):       # the previous connection of this port may still be closing
            try:
                with socket.socket() as sock:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.settimeout(timeout)
                    sock.bind(("0.0.0.0", port))
                    sock.connect((address, 80))
                    sock.sendall(f"GET / HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
                    data = b""
                    while chunk := sock.recv(4096):
                        data += chunk
                out[port] = data.partition(b"\r\n\r\n")[2].decode().strip() or None
                break
            except OSError:
                time.sleep(0.2)
    return out
