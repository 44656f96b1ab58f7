"""The end-to-end scenarios (run inside the VM by ``runner.py``).

The lab: one bridge; namespaces client, mb (message broker), dir1 (MASTER), dir2
(BACKUP), rs1..rs4 (real servers; rs4 joins the topology in scenario e). Addresses are
private test addresses that exist only inside the VM.

Who configures what -- the point of the suite:

* real servers: ONLY ``cartridge-agent-lvs apply --payload FILE --netns NS`` (dummy
  interface, VIPs, ARP sysctls) and ``cartridge-agent-lvs remove``;
* directors: ONLY ``lvs-extension run`` -- dir1 follows a topology file, dir2 the
  mosquitto broker (Stratos-format events) -- writing keepalived.conf and reloading the
  keepalived this suite starts in each director's namespace;
* the suite itself: namespaces, veths, the bridge, HTTP servers, the broker, the
  topology (file + events), and the *control* host of scenario g, which is deliberately
  set up by hand the way the original bash extension did it.

Every scenario is asserted from the client (HTTP, ARP, neighbour table) and from the
director's IPVS state (``/proc/net/ip_vs`` read in its namespace, ``lvs-extension
stats``). Measurements are recorded; the host-side tests hold the thresholds.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from tests.e2e.guest import lab as L
from tests.e2e.guest.stratos import Topology

VIP4 = "10.99.0.100"
VIP6 = "fd99::100"
VIP_CONTROL = "10.99.0.150"
PORT = 80
ADDRESSES = {"client": 2, "mb": 5, "dir1": 11, "dir2": 12,
             "rs1": 21, "rs2": 22, "rs3": 23, "rs4": 24, "rsctl": 29, "rspca": 31}
VIP_PCA = "10.99.0.160"
DIRECTORS = {"dir1": ("MASTER", 150), "dir2": ("BACKUP", 100)}
REAL_SERVERS = ("rs1", "rs2", "rs3")
LATE_MEMBER = "rs4"
MQTT_PORT = 1883
DELAY_LOOP, CONNECT_TIMEOUT, ADVERT_INT, DRAIN_SECONDS = 2, 1, 1, 2
MODULES = ("dummy", "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ipip", "bridge", "veth")
IPVS_STATS_PERIOD = 2.2
SERVICE4 = f"TCP {VIP4}:{PORT}"
SERVICE6 = f"TCP [{VIP6}]:{PORT}"
ARP_SYSCTLS = ("net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.all.arp_announce")
HERE = Path(__file__).resolve().parent
SCRIPTS = {"cartridge-agent-lvs": "cartridge_agent_lvs.realserver.cli",
           "lvs-extension": "cartridge_agent_lvs.director.cli"}


def v4(name: str) -> str:
    return f"10.99.0.{ADDRESSES[name]}"


def v6(name: str) -> str:
    return f"fd99::{ADDRESSES[name]}"


def rip(name: str) -> str:
    return f"{v4(name)}:{PORT}"


def rip6(name: str) -> str:
    return f"[{v6(name)}]:{PORT}"


#: where the project's console scripts are taken from (``runner.py --bin-dir``)
BIN_DIR = Path(sys.executable).parent


def command(script: str) -> list:
    """argv of a console script of the project, from the interpreter running the suite."""
    installed = BIN_DIR / script
    if installed.exists():
        return [str(installed)]
    return [sys.executable, "-c", f"import sys; from {SCRIPTS[script]} import main; sys.exit(main())"]


class Scenario:
    """Collects one scenario's verdict, measurements, evidence and relevant logs."""

    def __init__(self, title: str, logs: list):
        self.data = {"title": title, "ok": False, "seconds": None, "measurements": {},
                     "evidence": [], "error": None, "logs": logs}

    def measure(self, name: str, value) -> None:
        self.data["measurements"][name] = round(value, 3) if isinstance(value, float) else value

    def note(self, line) -> None:
        self.data["evidence"].append(str(line)[:3000])

    def check(self, condition, message: str) -> None:
        if not condition:
            raise AssertionError(message)


class Suite:
    """The lab, the project's tools driving it, and the scenarios."""

    # Execution order. d (the MASTER's keepalived killed) runs last: afterwards the
    # BACKUP serves and the old MASTER is a crashed machine.
    ORDER = "ahcbefgpid"
    COMMON_LOGS = ["dir1-lvs-extension.log", "dir2-lvs-extension.log",
                   "dir1-keepalived.log", "dir2-keepalived.log"]

    def __init__(self, workdir: Path, results):
        self.workdir = workdir
        self.results = results
        self.lab = L.Lab(workdir)
        self.topology = Topology(PORT)
        self.http = {}
        self.extension = {}
        self.keepalived = {}
        self.mqtt = None
        self.sysctls_before = {}

    # ------------------------------------------------------------------ framework
    def run(self, only: set) -> None:
        setup = Scenario("lab setup", ["runner-setup.log", "agent.log", "mosquitto.log"] + self.COMMON_LOGS)
        self._execute(setup, self.setup, self.results.data["setup"])
        for key in self.ORDER:
            if only and key not in only:
                continue
            method = getattr(self, f"scenario_{key}")
            scenario = Scenario(method.__doc__.strip().splitlines()[0], list(self.COMMON_LOGS))
            slot = self.results.data["scenarios"].setdefault(key, {})
            if not setup.data["ok"]:
                slot.update(scenario.data, error=f"lab setup failed: {setup.data['error']}")
                continue
            self._execute(scenario, lambda: method(scenario), slot)

    def _execute(self, scenario: Scenario, fn, slot: dict) -> None:
        start = time.monotonic()
        try:
            fn()
            scenario.data["ok"] = True
        except Exception as exc:  # noqa: BLE001 - reported per scenario
            scenario.data["error"] = f"{type(exc).__name__}: {exc}"
            scenario.note(traceback.format_exc()[-3000:])
        scenario.data["seconds"] = round(time.monotonic() - start, 2)
        slot.update(scenario.data)
        self.results.write()

    def cleanup(self) -> list:
        problems = []
        if self.mqtt is not None:
            try:
                self.mqtt.loop_stop()
                self.mqtt.disconnect()
            except Exception as exc:  # noqa: BLE001
                problems.append(f"mqtt publisher: {exc}")
        return problems + self.lab.cleanup()

    # ------------------------------------------------------------------ observation
    def host(self, name: str) -> L.Host:
        return self.lab.hosts[name]

    def ipvs(self, director: str) -> dict:
        return self.host(director).worker.call(L.read_ip_vs)

    def dests(self, director: str, service: str = SERVICE4) -> dict:
        return self.ipvs(director).get(service, {})

    def requests(self, count: int, address: str = VIP4, timeout: float = 1.0) -> collections.Counter:
        """``count`` sequential requests from the client; Counter of answering servers."""
        def loop():
            seen = collections.Counter()
            for _ in range(count):
                try:
                    seen[L.http_get(address, PORT, timeout)] += 1
                except OSError as exc:
                    seen[f"error: {type(exc).__name__}"] += 1
            return seen
        return self.host("client").worker.call(loop, timeout=count * timeout + 30)

    def addresses(self, name: str) -> str:
        return self.lab.sh("ip", "-o", "addr", "show", ns=self.lab.ns(name)).stdout

    def neighbour(self, address: str) -> str:
        return self.lab.sh("ip", "neigh", "show", address, ns=self.lab.ns("client")).stdout.strip()

    def conns(self) -> dict:
        """Connections each director's IPVS has scheduled so far."""
        return {d: self.host(d).worker.call(L.read_ip_vs_conns) for d in DIRECTORS}

    def settled_conns(self) -> dict:
        """:meth:`conns` once the kernel has folded its per-CPU counters in.

        IPVS (6.1) publishes its counters -- ``/proc/net/ip_vs_stats`` and the netlink
        stats alike -- from an estimator that runs every 2 s.
        """
        time.sleep(IPVS_STATS_PERIOD)
        return self.conns()

    def sysctls(self, name: str) -> dict:
        return {k: self.host(name).worker.call(L.read_sysctl, k) for k in ARP_SYSCTLS}

    def stats(self, director: str, service: str = SERVICE4) -> dict:
        """``lvs-extension stats --json --netns NS``: counters per real server of ``service``.

        Returns ``{"10.99.0.21:80": {"conns": .., "inpkts": .., "inbytes": ..}, ...}``.
        """
        out = self.lab.sh(*command("lvs-extension"), "stats", "--json", "--netns", self.lab.ns(director),
                          log=f"{director}-stats.log").stdout
        return stats_counters(json.loads(out), service)

    def wait_members(self, service: str, want: set, directors=tuple(DIRECTORS), timeout: float = 20):
        """Wait until every director's IPVS lists exactly ``want`` (real server keys)."""
        try:
            return L.wait_for(lambda: all(set(self.dests(d, service)) == want for d in directors),
                              timeout, 0.1, f"{service} on {'+'.join(directors)} == {sorted(want)}")[1]
        except TimeoutError as exc:
            seen = {d: self.ipvs(d) for d in directors}
            raise TimeoutError(f"{exc}; IPVS: {seen}") from None

    # ------------------------------------------------------------------ acting
    def agent(self, verb: str, name: str, *extra: str, check: bool = True):
        """``cartridge-agent-lvs VERB --netns NS ...`` for real server ``name``."""
        return self.lab.sh(*command("cartridge-agent-lvs"), verb, "--netns", self.lab.ns(name), *extra,
                           log="agent.log", check=check)

    def payload(self, name: str, vips: str) -> Path:
        path = self.workdir / "payloads" / f"{name}.launch-params"
        path.parent.mkdir(exist_ok=True)
        path.write_text(
            f"APPLICATION_ID=e2e,SERVICE_NAME=web,CLUSTER_ID=web.e2e.domain,MEMBER_ID=web.{name},"
            f"HOST_NAME={name}.e2e.example.org,PORTS={PORT},LB_CLUSTER_ID=null,"
            f"LVS_VIRTUAL_IP={vips}\n")
        return path

    def start_http(self, name: str) -> None:
        self.http[name] = self.lab.start(f"{name}-http", [sys.executable, HERE / "httpd.py", name, PORT],
                                         ns=self.lab.ns(name))

    def write_topology(self) -> None:
        path = self.workdir / "topology.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.topology.dumps())
        os.replace(tmp, path)

    def publish(self, event: str, payload: dict) -> None:
        info = self.mqtt.publish(f"topology/{event}", json.dumps(payload), qos=1)
        info.wait_for_publish(5)

    def set_member(self, name: str, status: str) -> None:
        """Change a real server's status in both services: topology file + broker events."""
        for service in ("web", "web6"):
            member = self.topology.services[service].get(name)
            if member is None:
                member = self.topology.add(service, name, v4(name) if service == "web" else v6(name), status)
            member.status = status
        self.write_topology()
        event = {"Active": "MemberActivatedEvent", "Suspended": "MemberSuspendedEvent"}[status]
        for service in ("web", "web6"):
            self.publish(event, self.topology.member_event(self.topology.member(service, name), event))

    def keepalived_pids(self, director: str) -> list:
        d = self.workdir / director
        return [int((d / f).read_text()) for f in ("keepalived.pid", "vrrp.pid", "checkers.pid")]

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        lab = self.lab
        lab.sh("modprobe", "-a", *MODULES, log="runner-setup.log")
        lab.create_bridge()
        for name in ("client", "mb", *DIRECTORS, *REAL_SERVERS, LATE_MEMBER):
            lab.add_host(name, v4(name), v6(name))
        self.start_broker()
        for name in (*REAL_SERVERS, LATE_MEMBER):
            self.sysctls_before[name] = self.sysctls(name)
            self.start_http(name)
            self.agent("apply", name, "--payload", str(self.payload(name, f"{VIP4}|255.255.255.0;{VIP6}")))
        link = lab.sh("ip", "-d", "-o", "link", "show", "lvs0", ns=lab.ns("rs1")).stdout
        self.results.data["setup"]["realserver_link"] = link.strip()
        if " dummy " not in link:
            raise AssertionError(f"rs1's VIP interface is not a dummy link: {link}")
        for name in REAL_SERVERS:
            self.topology.add("web", name, v4(name))
            self.topology.add("web6", name, v6(name))
        self.write_topology()
        for name in DIRECTORS:
            self.start_director(name)
        self.wait_members(SERVICE4, {rip(r) for r in REAL_SERVERS}, timeout=60)
        L.wait_for(lambda: f" {VIP4}/" in self.addresses("dir1"), 15, what="dir1 holds the VIP")

    def start_broker(self) -> None:
        import paho.mqtt.client as mqtt

        conf = self.workdir / "mosquitto.conf"
        conf.write_text(f"listener {MQTT_PORT} {v4('mb')}\nallow_anonymous true\n")
        self.lab.start("mosquitto", ["mosquitto", "-c", conf], ns=self.lab.ns("mb"))
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="stratos-e2e")

        def on_message(c, userdata, msg):  # Stratos answers a complete-topology request
            c.publish("topology/CompleteTopologyEvent", json.dumps(self.topology.complete_event()), qos=1)

        client.on_message = on_message

        def connect():  # the socket is created in the mb namespace
            L.wait_for(lambda: _try(client.connect, v4("mb"), MQTT_PORT, 30), 10, 0.1, "mosquitto up")
        self.host("mb").worker.call(connect)
        client.subscribe("initializer/CompleteTopologyRequestEvent", qos=1)
        client.loop_start()
        self.mqtt = client

    def start_director(self, name: str) -> None:
        state, priority = DIRECTORS[name]
        d = self.workdir / name
        d.mkdir(exist_ok=True)
        conf = d / "keepalived.conf"
        feed = (["--topology-file", str(self.workdir / "topology.json")] if name == "dir1"
                else ["--mqtt", f"{v4('mb')}:{MQTT_PORT}"])
        self.extension[name] = self.lab.start(
            f"{name}-lvs-extension",
            [*command("lvs-extension"), "run", "--vip-map", f"web|{VIP4},web6|{VIP6}",
             "--interface", "eth0", "--state", state, "--priority", str(priority),
             "--virtual-router-id", "51", "--scheduler", "rr", "--forwarding-method", "DR",
             "--health-check", "TCP_CHECK", "--keepalived-conf", str(conf),
             "--keepalived-pidfile", str(d / "keepalived.pid"),
             *self.timing_flags(), *feed],
            ns=self.lab.ns(name))
        L.wait_for(conf.exists, 30, 0.1, f"{name}: lvs-extension writes {conf}")
        self.keepalived[name] = self.lab.start(
            f"{name}-keepalived",
            ["keepalived", "-n", "-l", "-D", "-f", conf, "-p", d / "keepalived.pid",
             "-r", d / "vrrp.pid", "-c", d / "checkers.pid"], ns=self.lab.ns(name))

    def timing_flags(self) -> list:
        """Short timings so that the suite stays quick (see README)."""
        return ["--delay-loop", str(DELAY_LOOP), "--connect-timeout", str(CONNECT_TIMEOUT),
                "--advert-int", str(ADVERT_INT), "--persistence-timeout", "0",
                "--drain-seconds", str(DRAIN_SECONDS), "--quiet-period", "0.2"]

    # ------------------------------------------------------------------ scenarios
    def scenario_a(self, s: Scenario) -> None:
        """a. requests to the VIP are spread over all Active real servers"""
        seen = self.requests(30)
        s.note(f"client, 30 requests to {VIP4}: {dict(seen)}")
        s.check(set(seen) == set(REAL_SERVERS), f"answers came from {dict(seen)}")
        s.measure("answers", dict(seen))
        s.check(min(seen.values()) >= 8, f"rr spread is uneven: {dict(seen)}")
        for d in DIRECTORS:
            dests = self.dests(d)
            s.note(f"{d} /proc/net/ip_vs {SERVICE4}: {dests}")
            s.check(set(dests) == {rip(r) for r in REAL_SERVERS}, f"{d} IPVS real servers {sorted(dests)}")
            s.check(all(x["method"] == "Route" and x["weight"] > 0 for x in dests.values()),
                    f"{d}: not direct routing with weight > 0: {dests}")

    def scenario_h(self, s: Scenario) -> None:
        """h. lvs-extension stats shows counters that grow with the requests sent"""
        sent = 30
        kernel_before = self.settled_conns()["dir1"]
        before = self.stats("dir1")
        seen = self.requests(sent)
        kernel_after = self.settled_conns()["dir1"]
        after = self.stats("dir1")
        s.check(sum(seen.values()) == sent and not any(k.startswith("error") for k in seen), f"{dict(seen)}")
        grown = {key: {c: n - before.get(key, {}).get(c, 0) for c, n in counters.items()}
                 for key, counters in after.items()}
        s.note(f"lvs-extension stats --json, {SERVICE4}, counter growth per real server: {grown}")
        s.note(f"kernel ip_vs_stats connections: {kernel_before} -> {kernel_after}")
        s.measure("requests_sent", sent)
        s.measure("stats_conns_growth", sum(g["conns"] for g in grown.values()))
        s.measure("kernel_conns_growth", kernel_after - kernel_before)
        s.check(kernel_after - kernel_before == sent, "the kernel counted other connections")
        s.check(sum(g["conns"] for g in grown.values()) == sent, "stats connection counters did not grow by "
                f"the {sent} requests sent")
        s.check(all(g["inpkts"] > 0 and g["inbytes"] > 0 for g in grown.values()), "packet/byte counters")
        for name, count in seen.items():
            s.check(grown[rip(name)]["conns"] == count, f"{name}: client saw {count}, stats {grown[rip(name)]}")

    def scenario_c(self, s: Scenario) -> None:
        """c. a real server whose HTTP server dies is taken out by the health check"""
        s.measure("delay_loop", DELAY_LOOP)
        s.measure("connect_timeout", CONNECT_TIMEOUT)
        self.lab.stop(self.http["rs2"], signal.SIGKILL)
        killed = time.monotonic()
        L.wait_for(lambda: rip("rs2") not in self.dests("dir1"), 15, 0.05, "rs2 leaves dir1's IPVS")
        s.measure("removal_seconds", time.monotonic() - killed)
        seen = self.requests(12)
        s.note(f"client after the removal: {dict(seen)}")
        s.check(set(seen) == {"rs1", "rs3"}, f"answers came from {dict(seen)}")
        self.start_http("rs2")
        restarted = time.monotonic()
        self.wait_members(SERVICE4, {rip(r) for r in REAL_SERVERS}, timeout=15)
        s.measure("readd_seconds", time.monotonic() - restarted)
        seen = self.requests(12)
        s.note(f"client after the HTTP server is back: {dict(seen)}")
        s.check(set(seen) == set(REAL_SERVERS), f"answers came from {dict(seen)}")

    def scenario_b(self, s: Scenario) -> None:
        """b. a member turned non-Active in the topology leaves IPVS after the reload"""
        # drain_seconds is DRAIN_SECONDS (2): the member is first kept at weight 0, then removed
        s.measure("drain_seconds", DRAIN_SECONDS)
        self.set_member("rs3", "Suspended")
        changed = time.monotonic()
        drained = set()

        def gone():
            for d in DIRECTORS:
                entry = self.dests(d).get(rip("rs3"))
                if entry is not None and entry["weight"] == 0:
                    drained.add(d)
            return all(rip("rs3") not in self.dests(d) for d in DIRECTORS)
        L.wait_for(gone, DRAIN_SECONDS + 20, 0.05, "rs3 leaves both directors' IPVS")
        s.measure("removal_seconds", time.monotonic() - changed)
        s.measure("weight_zero_seen_on", sorted(drained))
        for d in DIRECTORS:
            s.note(f"{d} /proc/net/ip_vs {SERVICE4}: {self.dests(d)}")
        s.check(set(self.dests("dir1")) == {rip("rs1"), rip("rs2")}, "dir1 keeps rs1 and rs2")
        self.wait_members(SERVICE6, {rip6("rs1"), rip6("rs2")}, timeout=10)
        seen = self.requests(12)
        s.note(f"client after the change: {dict(seen)}")
        s.check(seen == {"rs1": 6, "rs2": 6}, f"answers came from {dict(seen)}")
        s.check("Reloading" in self.log_text("dir1-keepalived.log"), "dir1's keepalived was not reloaded")

    def scenario_e(self, s: Scenario) -> None:
        """e. a member added under a continuous request stream: zero failed requests"""
        pids = {d: self.keepalived_pids(d)[0] for d in DIRECTORS}
        reloads = {d: self.log_text(f"{d}-keepalived.log").count("Reloading") for d in DIRECTORS}
        with L.RequestStream(self.host("client").worker, VIP4, interval=0.02, timeout=1.0) as stream:
            time.sleep(1.0)
            self.set_member(LATE_MEMBER, "Active")
            added = time.monotonic()
            self.wait_members(SERVICE4, {rip("rs1"), rip("rs2"), rip(LATE_MEMBER)}, timeout=20)
            s.measure("in_ipvs_seconds", time.monotonic() - added)
            L.wait_for(lambda: any(r.server == LATE_MEMBER for r in stream.results), 10, 0.05,
                       f"{LATE_MEMBER} answers the client")
            s.measure("serving_seconds", time.monotonic() - added)
            time.sleep(2.0)
        seen = collections.Counter(r.server or "failed" for r in stream.results)
        s.note(f"client stream: {dict(seen)}")
        s.note(f"failures: {[r.error for r in stream.failures][:10]}")
        s.measure("requests", len(stream.results))
        s.measure("failed_requests", len(stream.failures))
        for d in DIRECTORS:
            s.check(self.keepalived_pids(d)[0] == pids[d], f"{d}'s keepalived was restarted")
            count = self.log_text(f"{d}-keepalived.log").count("Reloading")
            s.note(f"{d}: keepalived reloads during the change: {count - reloads[d]}, same pid {pids[d]}")
            s.check(count > reloads[d], f"{d}'s keepalived was not reloaded")
        s.check(not stream.failures, f"{len(stream.failures)} requests failed across the reload")
        s.check(seen[LATE_MEMBER] > 0 and seen["rs1"] > 0 and seen["rs2"] > 0, f"served by {dict(seen)}")

    def scenario_f(self, s: Scenario) -> None:
        """f. cartridge-agent-lvs remove takes the VIP off and restores the sysctls"""
        name = "rs3"  # out of the topology since b
        before = self.addresses(name)
        s.note(f"{name} before: {self.sysctls(name)}")
        s.check(f" {VIP4}/32 " in before and f" {VIP6}/128 " in before, f"{name} lacks the VIPs: {before}")
        self.agent("remove", name, "--payload", str(self.workdir / "payloads" / f"{name}.launch-params"))
        after = self.addresses(name)
        s.note(f"{name} addresses after remove: {after}")
        s.check(VIP4 not in after and VIP6 not in after, f"VIP still bound on {name}")
        links = self.lab.sh("ip", "-o", "link", "show", ns=self.lab.ns(name)).stdout
        s.check(" lvs0:" not in links, f"the dummy interface is still there: {links}")
        restored = self.sysctls(name)
        s.note(f"{name} sysctls after remove: {restored}, before apply: {self.sysctls_before[name]}")
        s.check(restored == self.sysctls_before[name], "sysctls not restored")
        status = self.agent("status", name, "--json", check=False)
        s.note(f"status --json after remove (exit {status.returncode}): {status.stdout.strip()}")
        # client side: nothing of rs3 is reachable through the VIP, and the VIP still works
        seen = self.requests(12)
        s.check(set(seen) == {"rs1", "rs2", LATE_MEMBER}, f"answers came from {dict(seen)}")
        s.check(rip(name) not in self.dests("dir1"), f"{name} back in IPVS")

    def scenario_g(self, s: Scenario) -> None:
        """g. control: a real server set up without the ARP settings answers ARP for the VIP"""
        client = self.host("client").worker
        active = self.host("dir1")
        answers = client.call(L.arp_probe, "eth0", VIP4)
        s.note(f"ARP replies for {VIP4} (real servers set up by cartridge-agent-lvs): {answers}")
        s.check(answers == {active.mac}, f"expected only the MASTER {active.mac}, got {answers}")
        s.measure("arp_repliers_with_settings", len(answers))
        ctl = self.lab.add_host("rsctl", v4("rsctl"), v6("rsctl"))
        try:
            # 1. cartridge-agent-lvs binds VIP_CONTROL on rsctl: nobody answers ARP for it
            self.agent("apply", "rsctl", "--payload", str(self.payload("rsctl", f"{VIP_CONTROL}|255.255.255.0")))
            with_settings = self.client_resolves(VIP_CONTROL)
            s.note(f"client neighbour table, {VIP_CONTROL} bound by cartridge-agent-lvs: '{with_settings}'")
            s.check("lladdr" not in with_settings, "the plugin's real server answered ARP")
            self.agent("remove", "rsctl", "--payload", str(self.workdir / "payloads" / "rsctl.launch-params"))
            # 2. CONTROL, by hand like the original bash extension: dummy + VIP/netmask, no sysctls
            self.lab.sh("sh", "-c", "ip link add dummy0 type dummy && ip link set dummy0 up"
                        f" && ip addr add {VIP_CONTROL}/24 dev dummy0 && ip addr add {VIP4}/24 dev dummy0",
                        ns=self.lab.ns("rsctl"), log="runner-control.log")
            without = self.client_resolves(VIP_CONTROL)
            s.note(f"client neighbour table, {VIP_CONTROL} bound by hand without ARP sysctls: '{without}'")
            s.check(f"lladdr {ctl.mac}" in without, f"control host {ctl.mac} did not answer ARP")
            answers = client.call(L.arp_probe, "eth0", VIP4)
            s.note(f"ARP replies for {VIP4} with the control host up: {answers}")
            s.check(answers == {active.mac, ctl.mac}, f"expected MASTER and control, got {answers}")
            s.measure("arp_repliers_with_control", len(answers))
            s.check(rip("rsctl") not in self.dests("dir1"), "the control host is not an IPVS member")
        finally:
            # the control host would steal VIP traffic from the directors: take it away
            self.lab.sh("ip", "link", "del", "dummy0", ns=self.lab.ns("rsctl"), check=False)
            self.lab.sh("ip", "neigh", "flush", "dev", "eth0", ns=self.lab.ns("client"))

    def scenario_p(self, s: Scenario) -> None:
        """p. the Stratos agent on Python 2.7 with its stock bash extension: the plugin repairs, clean restores"""
        from tests.realserver import pca_agent as P
        python27 = P.find_python27()
        s.check(python27 is not None, "no Python 2.7 with Yapsy (scripts/bootstrap) in the guest")
        script = command("cartridge-agent-lvs")
        s.check(len(script) == 1, f"cartridge-agent-lvs is not installed in {BIN_DIR}")
        self.lab.add_host("rspca", v4("rspca"), v6("rspca"))
        ns = self.lab.ns("rspca")
        # what `modprobe dummy numdummies=1` gives a fresh host: dummy0 (here in the namespace)
        self.lab.sh("ip", "link", "add", "dummy0", "type", "dummy", ns=ns, log="runner-pca.log")

        def host_state():
            links = json.loads(self.lab.sh("ip", "-d", "-j", "addr", "show", ns=ns).stdout)
            addrs = {link["ifname"]: sorted(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                                            if a["family"] == "inet")
                     for link in links}
            kinds = {link["ifname"]: link.get("linkinfo", {}).get("info_kind") for link in links}
            route = self.lab.sh("ip", "-4", "route", "show", "table", "all", ns=ns).stdout
            return addrs, kinds, sorted(route.splitlines()), self.sysctls("rspca")

        before = host_state()
        payload = (f"APPLICATION_ID=e2e,SERVICE_NAME=web,CLUSTER_ID=web.e2e.domain,MEMBER_ID=web.rspca,"
                   f"PORTS={PORT},TOKEN=secret,LVS_VIRTUAL_IP={VIP_PCA}|255.255.255.0\n")
        home = P.make_pca_home(self.workdir / "pca", payload)
        state_dir = self.workdir / "pca-state"
        env = {"CARTRIDGE_AGENT_LVS_STATE_DIR": str(state_dir),
               "CARTRIDGE_AGENT_LVS_COMMAND": script[0]}
        # 1. an operator who copied the plugin without install-pca: the stock script runs first
        for name in ("LvsRealServer.py", "LvsRealServer.yapsy-plugin"):
            (home / "plugins" / name).write_bytes((Path(P.REPO) / "plugins" / name).read_bytes())
        agent = P.Agent(python27, ns, home, **env)
        try:
            s.check(agent.fire("CreateLVSDummyInterface") == "done CreateLVSDummyInterface", "no answer")
            addrs, kinds, route, sysctls = host_state()
            s.note(f"after CreateLVSDummyInterface (stock script first): {addrs}; routes {route}")
            s.check(kinds.get("lvs0") == "dummy" and addrs["lvs0"] == [f"{VIP_PCA}/32"],
                    f"VIP/32 on the dummy lvs0: {addrs} {kinds}")
            s.check(addrs["dummy0"] == [], f"the stock script's VIP/24 left on dummy0: {addrs}")
            s.check(not [r for r in route if r.startswith("10.99.0.0/24 dev dummy0")],
                    f"the stock script's subnet route through dummy0 remains: {route}")
            s.check(all(v in ("1", "2") for v in sysctls.values()) and sysctls != before[3],
                    f"ARP sysctls {sysctls}")
            bound = host_state()
            # (InstanceActivatedEvent changes nothing either; it is left out here because
            # each plugin run is a Python start, slow under software emulation)
            for event in ("InstanceStartedEvent", "MemberTerminatedEvent"):
                agent.fire(event)
                s.check(host_state() == bound, f"{event} changed the host")
            agent.fire("clean")
            after = host_state()
            s.check(after[0].get("dummy0") == [] and "lvs0" not in after[0]
                    and after[3] == before[3], f"clean left {after} (before {before})")
            log = agent.close()
        finally:
            agent.kill()
        lines = P.plugin_lines(log)
        s.note("agent log, plugin lines:\n" + "\n".join(lines))
        bad = [b for b in P.errors(log) if "Extension execution failed" not in b]
        s.check(not bad, f"errors in the agent log: {bad}")
        s.measure("events_logged", len(lines))
        # 2. after install-pca: the stock script is a no-op, the plugin alone sets up
        self.lab.sh(*script, "install-pca", home, "--state-dir", state_dir, log="runner-pca.log")
        agent = P.Agent(python27, ns, home)
        try:
            agent.fire("CreateLVSDummyInterface")
            addrs, kinds, route, _ = host_state()
            s.check(addrs["lvs0"] == [f"{VIP_PCA}/32"] and addrs["dummy0"] == [],
                    f"after install-pca: {addrs}")
            agent.fire("clean")
            s.check(host_state() == before, f"clean after install-pca left {host_state()}")
            log = agent.close()
        finally:
            agent.kill()
        s.check(not P.errors(log), f"errors in the agent log after install-pca: {P.errors(log)}")
        s.measure("errors_after_install_pca", 0)

    def client_resolves(self, address: str) -> str:
        """Flush the client's neighbour table, make it resolve ``address``; its entry."""
        self.lab.sh("ip", "neigh", "flush", "dev", "eth0", ns=self.lab.ns("client"))
        self.host("client").worker.call(L.resolve, address)
        return self.neighbour(address)

    def scenario_i(self, s: Scenario) -> None:
        """i. IPv6 VIP end to end (TUN where the plugin supports it)"""
        members = {"rs1", "rs2", LATE_MEMBER}
        self.wait_members(SERVICE6, {rip6(m) for m in members}, timeout=10)
        for d in DIRECTORS:
            s.note(f"{d} /proc/net/ip_vs {SERVICE6}: {self.dests(d, SERVICE6)}")
        seen = self.requests(30, VIP6)
        s.note(f"client, 30 requests to [{VIP6}]: {dict(seen)}")
        s.measure("answers", dict(seen))
        s.check(set(seen) == members, f"answers came from {dict(seen)}")
        s.check(f" {VIP6}/" in self.addresses("dir1"), "dir1 does not hold the IPv6 VIP")
        s.measure("covered", ["IPv6 DR"])

    def scenario_d(self, s: Scenario) -> None:
        """d. the MASTER director's keepalived dies: the BACKUP serves the VIP"""
        backup = self.host("dir2")
        before = self.neighbour(VIP4)
        s.note(f"client neighbour entry before: {before}")
        pids = self.keepalived_pids("dir1")
        conns = self.settled_conns()
        with L.RequestStream(self.host("client").worker, VIP4, interval=0.05, timeout=0.5) as stream:
            time.sleep(1.0)
            # a crash: freeze all three processes first so none can hand over gracefully
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                for pid in pids:
                    os.kill(pid, sig)
            killed = time.monotonic()
            _, took = L.wait_for(lambda: f" {VIP4}/" in self.addresses("dir2"), 15, 0.05,
                                 "the BACKUP takes the VIP")
            s.measure("takeover_seconds", took)
            L.wait_for(lambda: f"lladdr {backup.mac}" in self.neighbour(VIP4), 10, 0.1,
                       "the client's neighbour entry points to the BACKUP")
            s.measure("client_switched_seconds", time.monotonic() - killed)
            after_switch = len(stream.results)
            entries = collections.Counter()
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                entries[self.neighbour(VIP4).split(" lladdr ")[-1]] += 1
            after_switch = len(stream.results) - after_switch
        gap, failed = stream.longest_gap()
        s.measure("failover_gap_seconds", gap)
        s.measure("failed_requests", len(stream.failures))
        s.measure("requests", len(stream.results))
        s.note(f"client neighbour entry after: {self.neighbour(VIP4)}")
        served = collections.Counter(r.server for r in stream.results if r.server)
        s.note(f"stream answers: {dict(served)}, failures: {[r.error for r in stream.failures][:5]}")
        scheduled = {d: n - conns[d] for d, n in self.settled_conns().items()}
        s.note(f"client neighbour entry for {VIP4} sampled after the switch: {dict(entries)} "
               f"(MASTER {self.host('dir1').mac}, BACKUP {backup.mac})")
        s.note(f"{len(stream.results)} requests, {after_switch} after the client switched; "
               f"IPVS connections scheduled: {scheduled}")
        s.measure("requests_after_switch", after_switch)
        s.measure("scheduled_by_backup", scheduled["dir2"])
        # every answered request was scheduled by exactly one director; a request in
        # flight through the MASTER at the crash was scheduled there but cannot finish
        # on the BACKUP (no connection sync between the directors): it fails, counted
        answered = len(stream.results) - len(stream.failures)
        s.check(answered <= sum(scheduled.values()) <= len(stream.results),
                "every answered request went through one director's IPVS")
        s.check(after_switch > 0 and scheduled["dir2"] >= after_switch,
                "the BACKUP's IPVS did not schedule the requests after the switch")

    def log_text(self, name: str) -> str:
        path = self.lab.logdir / name
        return path.read_text(errors="replace") if path.exists() else ""


def stats_counters(stats: dict, service: str) -> dict:
    """Pick one service's per-real-server counters out of ``lvs-extension stats --json``."""
    def endpoint(address: str, port: int) -> str:
        return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"

    for svc in stats["services"]:
        if f"{svc['protocol']} {endpoint(svc['address'], svc['port'])}" == service:
            return {endpoint(d["address"], d["port"]): {"conns": d["conns"],
                                                        "inpkts": d["in_packets"],
                                                        "inbytes": d["in_bytes"]}
                    for d in svc["dests"]}
    raise AssertionError(f"{service} not in lvs-extension stats: {json.dumps(stats)[:500]}")


def _try(fn, *args) -> bool:
    try:
        fn(*args)
        return True
    except OSError:
        return False
