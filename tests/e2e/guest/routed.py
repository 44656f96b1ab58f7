"""Scenario t: LVS-TUN to real servers in another subnet, reached through a router.

Runs INSIDE the VM (called by ``scenarios.Suite.scenario_t``). The directors' LAN is
``lvsbr0`` (10.99.0.0/24). A router namespace ``rtr`` (IPv4 forwarding on) joins it at
10.99.0.254 to a second bridge, ``lvsbr1`` (10.99.1.0/24), where the tunnel real
servers ``rt1`` and ``rt2`` live: no L2 adjacency with the directors.

What a data centre provides, the suite sets up: the bridge, the router, a static route
to 10.99.1.0/24 on the directors, the real servers' default route via the router
(their replies to the client go that way, never through a director) and a *strict*
reverse-path filter on the real servers (``rp_filter`` 1 on ``all`` and ``tunl0``, as
many distributions ship), so that the plugin has something to loosen. The router has
``rp_filter`` 0: the replies it forwards carry the VIP as source address, which it
would route back towards the LAN (a cloud's anti-spoofing must allow the same).

What LVS needs, only the project's tools set up: on rt1 and rt2 ``cartridge-agent-lvs
apply`` with ``LVS_MODE=tunnel`` in the payload (VIP on ``tunl0``, ARP and
``rp_filter`` sysctls) and ``remove``; on the directors lvs-extension, started by the
suite's setup with the service ``webtun`` in its vip_map and ``[service webtun]
forwarding_method = TUN`` (:func:`director_config`), following the same feeds as every
other service (topology file on dir1, MQTT member events on dir2).

MTU (``measure_mtu``): the requests are HTTP GETs padded to an exact size with a long
header (``lab.http_request``). IPIP adds 20 bytes to each packet the director forwards,
so a client segment that fills a 1500-byte MTU no longer fits. Three cases, each with
fresh connections: (1) ICMP "fragmentation needed" dropped before the client (a ``tc``
filter on its ``eth0``: a filtering firewall), no tuning -- the largest request that
passes is found by bisection; (2) the same filter, with the README's fix on the real
servers (``advmss`` on their route back to the clients); (3) no filter, no tuning:
path-MTU discovery.
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.e2e.guest import lab as L
from tests.e2e.guest import pace

SERVICE = "webtun"
VIP = "10.99.0.110"
PORT = 80
KEY = f"TCP {VIP}:{PORT}"
REMOTE_BRIDGE = "lvsbr1"
REMOTE_NET = "10.99.1.0/24"
ROUTER = "rtr"
#: the router's leg on each bridge (IPv4, IPv6)
ROUTER_LEGS = {L.BRIDGE: ("10.99.0.254", "fd99::254"), REMOTE_BRIDGE: ("10.99.1.1", "fd99:1::1")}
SERVERS = {"rt1": ("10.99.1.21", "fd99:1::21"), "rt2": ("10.99.1.22", "fd99:1::22")}
#: the real server whose HTTP server the health-check step kills
KILLED = "rt2"
#: what the tunnel mode sets (and ``remove`` must restore), per device
SYSCTLS = tuple(f"net.ipv4.conf.{dev}.{name}" for dev in ("all", "tunl0")
                for name in ("rp_filter", "arp_ignore", "arp_announce"))
#: every link of the lab has the veth default MTU; IPIP adds an outer IPv4 header
LINK_MTU, IPIP_OVERHEAD = 1500, 20
#: the README's fix: the real servers advertise an MSS that leaves room for IPIP
FIX_ADVMSS = LINK_MTU - IPIP_OVERHEAD - 40
#: request sizes (bytes) tried with the fix and with path-MTU discovery; the largest is
#: under http.server's 65536-byte limit for one header line
SIZES = (1428, 1429, 1449, 1500, 4000, 16000, 60000)
#: bisection bounds for the largest request without tuning
SMALL, LARGE = 200, 60000
#: per request (idle machine, scaled): answered quickly (0.64 s the slowest seen, at
#: pace factor 2.9), or stalled for good
MTU_TIMEOUT = 1.0


def rip(name: str) -> str:
    return f"{SERVERS[name][0]}:{PORT}"


def director_config(workdir: Path) -> Path:
    """The config file both directors read: ``[service webtun] forwarding_method = TUN``
    (the vip_map, with ``webtun|VIP``, comes on the command line)."""
    path = workdir / "lvs-extension-tun.conf"
    path.write_text(f"# scenario t: LVS-TUN for one service\n[service {SERVICE}]\nforwarding_method = TUN\n")
    return path


def vip_map_entry() -> str:
    return f"{SERVICE}|{VIP}"


class TunnelLab:
    """The routed part of the lab and what scenario t observes in it."""

    def __init__(self, suite, s, directors: tuple):
        self.suite, self.s, self.lab, self.directors = suite, s, suite.lab, directors

    # ------------------------------------------------------------------ building
    def build(self) -> None:
        lab = self.lab
        lab.create_bridge(REMOTE_BRIDGE)
        lab.add_router(ROUTER, ROUTER_LEGS)
        lab.sh("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
               *(f"net.ipv4.conf.eth{i}.rp_filter=0" for i in range(len(ROUTER_LEGS))),
               ns=lab.ns(ROUTER), log="runner-routed.log")
        gateway_lan, gateway_remote = ROUTER_LEGS[L.BRIDGE][0], ROUTER_LEGS[REMOTE_BRIDGE][0]
        for director in self.directors:
            lab.sh("ip", "route", "add", REMOTE_NET, "via", gateway_lan, ns=lab.ns(director),
                   log="runner-routed.log")
        for name, (ipv4, ipv6) in SERVERS.items():
            lab.add_host(name, ipv4, ipv6, bridge=REMOTE_BRIDGE)
            lab.sh("sh", "-c", f"ip route add default via {gateway_remote}"
                   " && sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.default.rp_filter=1"
                   " net.ipv4.conf.tunl0.rp_filter=1", ns=lab.ns(name), log="runner-routed.log")
            self.suite.start_http(name)

    # ------------------------------------------------------------------ observation
    def state(self, name: str) -> dict:
        """What the tunnel mode touches on ``name``: tunl0 (up?, addresses) and SYSCTLS."""
        link = self.lab.link(name, "tunl0")
        worker = self.suite.host(name).worker
        return {"tunl0_up": "UP" in link["flags"],
                "tunl0_addresses": sorted(f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]),
                "tunl0_kind": link.get("linkinfo", {}).get("info_kind"),
                **{k: worker.call(L.read_sysctl, k) for k in SYSCTLS}}

    def counter(self, name: str, ifname: str, direction: str) -> int:
        return self.lab.link(name, ifname)["stats64"][direction]["packets"]

    def counters(self) -> dict:
        """Packets received on each real server's tunl0 (decapsulated IPIP) and sent by
        the router towards the LAN (eth0: the replies to the client, health checks)."""
        found = {f"{n} tunl0 rx": self.counter(n, "tunl0", "rx") for n in SERVERS}
        found["rtr eth0 tx"] = self.counter(ROUTER, "eth0", "tx")
        return found

    def probe(self, name: str) -> bool:
        """Does ``name``'s HTTP server accept a connection from dir1 (through the router)?
        -- what keepalived's TCP_CHECK does."""
        return self.suite.host("dir1").worker.call(L.tcp_connects, SERVERS[name][0], PORT)

    def tun_growth(self, before: dict, after: dict) -> dict:
        """Per real server of the TUN service, the growth of /metrics counters."""
        grown = {}
        for key, value in after.items():
            name, labels = key[0], dict(key[1])
            if labels.get("vip") != VIP or not name.startswith("lvs_extension_real_server_") \
                    or not name.endswith("_total"):
                continue
            metric = name[len("lvs_extension_real_server_"):-len("_total")]
            if "direction" in labels:
                metric += "_" + labels["direction"]
            grown.setdefault(labels["real_server"], {})[metric] = value - before.get(key, 0)
        return grown

    # ------------------------------------------------------------------ the scenario
    def run(self) -> None:
        suite, s, lab = self.suite, self.s, self.lab
        self.build()
        before = {n: self.state(n) for n in SERVERS}
        s.note(f"before apply: {before}")
        s.check(all(b["net.ipv4.conf.all.rp_filter"] == b["net.ipv4.conf.tunl0.rp_filter"] == "1"
                    and not b["tunl0_up"] for b in before.values()),
                f"the lab did not prepare strict hosts with tunl0 down: {before}")
        # 1. the real servers: cartridge-agent-lvs apply, LVS_MODE=tunnel (side by side)
        payloads = {n: suite.payload(n, f"{VIP}|255.255.255.0", mode="tunnel") for n in SERVERS}
        with ThreadPoolExecutor(len(SERVERS)) as pool:
            for done in [pool.submit(suite.agent, "apply", n, "--payload", str(p), calibrate=False,
                                     timeout=pace.scaled(60) * len(SERVERS)) for n, p in payloads.items()]:
                done.result()
        applied = {n: self.state(n) for n in SERVERS}
        s.note(f"after apply: {applied}")
        s.measure("applied", applied["rt1"])
        for n, st in applied.items():
            s.check(st["tunl0_up"] and st["tunl0_addresses"] == [f"{VIP}/32"] and st["tunl0_kind"] == "ipip",
                    f"{n}: tunl0 not up with the VIP /32: {st}")
            s.check(st["net.ipv4.conf.all.rp_filter"] == st["net.ipv4.conf.tunl0.rp_filter"] == "2",
                    f"{n}: rp_filter not loosened to 2 on all and tunl0: {st}")
            s.check(all(st[f"net.ipv4.conf.{d}.arp_ignore"] == "1" and st[f"net.ipv4.conf.{d}.arp_announce"] == "2"
                        for d in ("all", "tunl0")), f"{n}: ARP sysctls {st}")
        L.wait_for(lambda: all(self.probe(n) for n in SERVERS), pace.scaled(30), 0.1,
                   "rt1 and rt2's HTTP servers answer dir1 through the router")
        # 2. the directors: the members join the topology (file + MQTT events)
        for name, (ipv4, _) in SERVERS.items():
            suite.topology.add(SERVICE, name, ipv4)
        suite.write_topology()
        for name in SERVERS:
            member = suite.topology.member(SERVICE, name)
            suite.publish("MemberActivatedEvent", suite.topology.member_event(member, "MemberActivatedEvent"))
        took = suite.wait_members(KEY, {rip(n) for n in SERVERS}, timeout=20)
        s.measure("in_ipvs_seconds", took)
        methods = {d: sorted({x["method"] for x in suite.dests(d, KEY).values()}) for d in self.directors}
        s.note(f"/proc/net/ip_vs {KEY} forwarding: {methods}")
        s.measure("ipvs_method", methods)
        s.check(all(m == ["Tunnel"] for m in methods.values()), f"not tunnelling: {methods}")
        route = lab.sh("ip", "route", "get", SERVERS["rt1"][0], ns=lab.ns("dir1")).stdout.strip()
        s.note(f"dir1: ip route get {SERVERS['rt1'][0]}: {route}")
        s.check(f" via {ROUTER_LEGS[L.BRIDGE][0]} " in f"{route} ", f"dir1 reaches rt1 not via the router: {route}")
        # 3. spread through IPIP, answered directly
        sent = 20
        metrics_before, kernel_before = suite.settled_metrics("dir1")
        totals_before = suite.host("dir1").worker.call(L.read_ip_vs_totals)
        packets_before = self.counters()
        seen = suite.requests(sent, VIP)
        metrics_after, kernel_after = suite.settled_metrics("dir1", sent, kernel_before)
        totals_after = suite.host("dir1").worker.call(L.read_ip_vs_totals)
        packets_after = self.counters()
        grown = self.tun_growth(metrics_before, metrics_after)
        totals = {k: totals_after[k] - totals_before[k] for k in totals_after}
        packets = {k: packets_after[k] - packets_before[k] for k in packets_after}
        s.note(f"client, {sent} requests to {VIP}: {dict(seen)}")
        s.note(f"dir1 /metrics growth per real server of {KEY}: {grown}")
        s.note(f"dir1 /proc/net/ip_vs_stats growth: {totals}; packets: {packets}")
        s.measure("answers", dict(seen))
        s.measure("metrics_growth", grown)
        s.measure("ip_vs_stats_growth", totals)
        s.measure("packet_counters_growth", packets)
        s.check(seen == {n: sent // len(SERVERS) for n in SERVERS}, f"not the rr spread: {dict(seen)}")
        for n in SERVERS:
            g = grown.get(rip(n), {})
            s.check(g.get("connections") == seen[n] and g.get("packets_in", 0) > 0 and g.get("packets_out") == 0,
                    f"{n}: /metrics {g} for {seen[n]} answers (inbound only expected)")
            s.check(packets[f"{n} tunl0 rx"] >= 3 * seen[n], f"{n}: tunl0 received {packets}")
        s.check(totals["conns"] == sent and totals["inpkts"] > 0 and totals["outpkts"] == 0,
                f"dir1 ip_vs_stats: {totals}")
        s.check(packets["rtr eth0 tx"] >= 3 * sent, f"the router forwarded too little: {packets}")
        # 4. MTU
        self.measure_mtu()
        # 5. the health check, in tunnel mode too
        lab.stop(suite.http[KILLED], signal.SIGKILL)
        killed = time.monotonic()
        removed = suite.wait_per_director(lambda d: rip(KILLED) not in suite.dests(d, KEY), 15,
                                          f"{KILLED} leaves IPVS", since=killed)
        s.measure("removal_seconds_per_director", removed)
        s.measure("removal_seconds", max(removed.values()))
        seen = suite.requests(6, VIP)
        s.note(f"client after the removal: {dict(seen)}")
        s.check(seen == {"rt1": 6}, f"answers after {KILLED}'s removal: {dict(seen)}")
        # 6. remove restores the tunnel and the sysctls
        suite.agent("remove", "rt1", "--payload", str(payloads["rt1"]))
        after = self.state("rt1")
        s.note(f"rt1 after remove: {after}")
        s.measure("restored", after == before["rt1"])
        s.check(after == before["rt1"], f"remove left rt1 as {after}, before apply {before['rt1']}")

    # ------------------------------------------------------------------ MTU
    def fits(self, size: int) -> tuple:
        """One request of ``size`` bytes to the VIP: ``(answered?, seconds)``."""
        def once():
            started = time.monotonic()
            try:
                L.http_exchange(VIP, PORT, pace.scaled(MTU_TIMEOUT), size=size)
                return True, round(time.monotonic() - started, 3)
            except OSError:
                return False, round(time.monotonic() - started, 3)
        return self.suite.host("client").worker.call(once)

    def largest(self) -> tuple:
        """Bisect the largest request size that is answered, in [SMALL, LARGE)."""
        tried = {}

        def ok(size):
            tried[size] = self.fits(size)
            return tried[size][0]
        low, high = SMALL, LARGE
        if not ok(low) or ok(high):
            return None, tried
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if ok(mid) else (low, mid)
        return low, tried

    def sweep(self) -> dict:
        return {size: self.fits(size) for size in SIZES}

    def icmp_blackhole(self, on: bool) -> None:
        """Drop ICMP "fragmentation needed" (type 3 code 4) arriving on the client's eth0."""
        ns = self.lab.ns("client")
        if on:
            self.lab.sh("tc", "qdisc", "add", "dev", "eth0", "clsact", ns=ns, log="runner-routed.log")
            self.lab.sh("tc", "filter", "add", "dev", "eth0", "ingress", "protocol", "ip", "u32",
                        "match", "ip", "protocol", "1", "0xff", "match", "u8", "3", "0xff", "at", "20",
                        "match", "u8", "4", "0xff", "at", "21", "action", "drop", ns=ns, log="runner-routed.log")
        else:
            self.lab.sh("tc", "qdisc", "del", "dev", "eth0", "clsact", ns=ns, log="runner-routed.log")

    def blackholed(self) -> int:
        out = self.lab.sh("tc", "-s", "filter", "show", "dev", "eth0", "ingress",
                          ns=self.lab.ns("client"), log="runner-routed.log").stdout
        return sum(int(line.split()[3]) for line in out.splitlines() if line.strip().startswith("Sent "))

    def advmss(self, value: int | None) -> None:
        """The fix: on each real server, the route back to the clients advertises
        ``advmss VALUE`` (None: the route as the lab made it)."""
        gateway = ROUTER_LEGS[REMOTE_BRIDGE][0]
        extra = ["advmss", str(value)] if value else []
        for name in SERVERS:
            self.lab.sh("ip", "route", "replace", "default", "via", gateway, *extra,
                        ns=self.lab.ns(name), log="runner-routed.log")

    def measure_mtu(self) -> None:
        s = self.s
        s.measure("mtu", {"link": LINK_MTU, "ipip_overhead": IPIP_OVERHEAD, "fix_advmss": FIX_ADVMSS,
                          "request": "GET padded with an X-Pad header to the exact size"})
        self.icmp_blackhole(True)
        try:
            largest, tried = self.largest()
            dropped = self.blackholed()
            s.note(f"ICMP frag-needed dropped at the client, no tuning: tried {tried}; "
                   f"{dropped} ICMP dropped")
            s.measure("largest_request_icmp_blocked", largest)
            s.measure("icmp_dropped_at_client", dropped)
            self.advmss(FIX_ADVMSS)
            try:
                fixed = self.sweep()
            finally:
                self.advmss(None)
            s.note(f"ICMP dropped, advmss {FIX_ADVMSS} on the real servers: {fixed}")
            s.measure("with_advmss_fix", {str(k): v[0] for k, v in fixed.items()})
        finally:
            self.icmp_blackhole(False)
        pmtud = self.sweep()
        s.note(f"ICMP through, no tuning (path-MTU discovery): {pmtud}")
        s.measure("with_pmtu_discovery", {str(k): v[0] for k, v in pmtud.items()})
        s.measure("with_pmtu_discovery_seconds", {str(k): v[1] for k, v in pmtud.items()})
        s.check(largest is not None, f"no bisection: {SMALL} B must pass and {LARGE} B stall ({tried})")
        s.check(all(v[0] for v in fixed.values()), f"with the fix, requests failed: {fixed}")
        s.check(all(v[0] for v in pmtud.values()), f"with path-MTU discovery, requests failed: {pmtud}")
