"""The demo inside the kernel VM (runs as root in the guest): ``python -m demo.guest WORKDIR``.

Builds a small lab with the end-to-end suite's plumbing (``tests/e2e/guest/lab.py``):
one bridge; a client; two directors running ``lvs-extension run`` that follow a copy of
the shipped sample topology ``deploy/examples/topology.json`` (service ``tomcat``,
VIP ``192.168.56.40``, the VIP of the shipped payload
``payload_samples/single-vip-netmask.launch-params``); the topology's three tomcat
members as real servers, set up by ``cartridge-agent-lvs apply`` with that payload.
Then it acts and measures, and writes one JSON event per line into
``WORKDIR/events.jsonl`` -- facts only; ``demo.story`` words them on the host.

The five project commands of the set-up (three ``apply``, two ``lvs-extension run``;
each a Python start costing 20-30 s under emulation) start side by side.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from demo.story import stats_conns, stats_snapshots
from tests.e2e.guest import lab as L
from tests.e2e.guest import pace
from tests.e2e.guest.httpd import make_server
from tests.e2e.guest.scenarios import command

REPO = Path(__file__).resolve().parent.parent
TOPOLOGY = REPO / "deploy" / "examples" / "topology.json"
PAYLOAD = REPO / "payload_samples" / "single-vip-netmask.launch-params"
SERVICE, CLUSTER = "tomcat", "tomcat.shop.domain"
VIP, PORT = "192.168.56.40", 80
CLIENT_NET, SERVER_NET = "192.168.56.0/24", "10.0.1.0/24"
CLIENT = "192.168.56.2"
#: name -> (VRRP role, priority, address)
DIRECTORS = {"dir1": ("MASTER", 150, "10.0.1.2"), "dir2": ("BACKUP", 100, "10.0.1.3")}
JOINING, LEAVING = "member-3", "member-2"
#: the directors' timers: short, so that the story is short (the README's values)
DELAY_LOOP, CONNECT_TIMEOUT, ADVERT_INT, DRAIN_SECONDS = 2, 1, 1, 3
#: seconds between the readings of `lvs-extension stats --interval` on dir2
STATS_INTERVAL = "0.5"
#: the kernel (6.1) folds IPVS's per-CPU counters into what it reports (netlink,
#: /proc/net/ip_vs_stats) every 2 s, from its rate estimator's timer: a snapshot read
#: sooner after the traffic can miss its last connections (one showed 2 / 3 of 10 / 10).
#: Two periods, so that a late timer in the emulated guest still has folded them.
IPVS_ESTIMATOR_SECONDS = 2.0
MODULES = ("dummy", "ip_vs", "ip_vs_rr", "bridge", "veth")


def members(topology: dict) -> dict:
    """``{"member-1": (ip, last state), ...}`` of the tomcat cluster of ``topology``."""
    found = {}
    for member_id, m in cluster(topology)["memberMap"].items():
        found[member_id.rsplit(".", 1)[1]] = (m["defaultPrivateIP"],
                                              m["memberStateManager"]["stateStack"][-1])
    return found


def cluster(topology: dict) -> dict:
    return topology["topology"]["serviceMap"][SERVICE]["clusterIdClusterMap"][CLUSTER]


def member_id(name: str) -> str:
    return f"{CLUSTER}.{name}"


class Events:
    """``events.jsonl``: one JSON object per line, each with the guest's elapsed seconds."""

    def __init__(self, path: Path):
        self.path = path
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def emit(self, kind: str, **facts) -> None:
        line = json.dumps({"kind": kind, "t": round(time.monotonic() - self.started, 1), **facts})
        with self._lock, open(self.path, "a") as f:
            f.write(line + "\n")


class Demo:
    def __init__(self, workdir: Path, events: Events):
        self.workdir = workdir
        self.events = events
        self.lab = L.Lab(workdir, prefix="demo")
        self.topology = json.loads(TOPOLOGY.read_text())
        self.members = members(self.topology)
        self.extension = {}
        self.servers = []
        self.after_crash = {}

    # -- observation
    def ipvs(self, director: str) -> dict:
        """``{"10.0.1.11": weight, ...}`` of the VIP's virtual server in ``director``'s IPVS."""
        table = self.lab.hosts[director].worker.call(L.read_ip_vs).get(f"TCP {VIP}:{PORT}", {})
        return {rip.rsplit(":", 1)[0]: d["weight"] for rip, d in table.items()}

    def served(self, director: str) -> list:
        """Member names ``director`` sends new connections to (weight > 0), sorted."""
        by_ip = {ip: name for name, (ip, _) in self.members.items()}
        return sorted(by_ip.get(ip, ip) for ip, w in self.ipvs(director).items() if w > 0)

    def holds_vip(self, director: str) -> bool:
        out = self.lab.sh("ip", "-o", "-4", "addr", "show", "dev", "eth0", ns=self.lab.ns(director)).stdout
        return f" {VIP}/" in out

    def requests(self, count: int) -> dict:
        """``count`` sequential requests from the client: answers per member (and errors)."""
        def loop():
            seen = collections.Counter()
            for _ in range(count):
                try:
                    seen[L.http_get(VIP, PORT, pace.scaled(1.0))] += 1
                except OSError as exc:
                    seen[f"error: {type(exc).__name__}"] += 1
            return dict(sorted(seen.items()))
        return self.lab.hosts["client"].worker.call(loop, timeout=count * pace.scaled(1.0) + pace.scaled(30))

    def wait_members(self, want: list, timeout: float) -> float:
        return L.wait_for(lambda: all(self.served(d) == want for d in DIRECTORS), pace.scaled(timeout),
                          0.05, f"both directors serve {want}")[1]

    # -- the topology (what Stratos would change)
    def write_topology(self) -> None:
        path = self.workdir / "topology.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.topology, indent=1))
        os.replace(tmp, path)

    # -- set-up
    def start(self) -> None:
        """The lab, and the five project commands: each starts as soon as its host exists
        (the Python starts are the long pole), side by side; an event as each is done."""
        lab = self.lab
        started = time.monotonic()
        self.events.emit("lab", client=CLIENT, directors={n: d[2] for n, d in DIRECTORS.items()},
                         members={n: list(v) for n, v in self.members.items()}, vip=VIP,
                         topology=str(TOPOLOGY.relative_to(REPO)), payload=str(PAYLOAD.relative_to(REPO)))
        lab.sh("modprobe", "-a", *MODULES, log="setup.log")
        lab.create_bridge()
        self.write_topology()
        with ThreadPoolExecutor(len(self.members) + len(DIRECTORS)) as pool:
            jobs = [pool.submit(self.director, name, started) for name in DIRECTORS]
            jobs += [pool.submit(self.realserver, name, started) for name in self.members]
            lab.add_host("client", CLIENT, "fd99::2")
            lab.sh("ip", "route", "add", SERVER_NET, "dev", "eth0", ns=lab.ns("client"))
            for job in jobs:
                job.result()
        took = L.wait_for(lambda: self.holds_vip("dir1"), pace.scaled(30), 0.1, "dir1 holds the VIP")[1]
        active = sorted(n for n, (_, state) in self.members.items() if state == "Active")
        self.wait_members(active, 60)
        self.events.emit("serving", master="dir1", vip=VIP, seconds=round(time.monotonic() - started, 1),
                         vip_seconds=round(took, 1), served=self.served("dir1"),
                         states={n: s for n, (_, s) in self.members.items()})

    def director(self, name: str, started: float) -> None:
        address = DIRECTORS[name][2]
        self.lab.add_host(name, address, f"fd99::{address.rsplit('.', 1)[1]}")
        self.start_extension(name)
        self.start_keepalived(name, started)

    def realserver(self, name: str, started: float) -> None:
        ip = self.members[name][0]
        self.lab.add_host(name, ip, f"fd99::{ip.rsplit('.', 1)[1]}")
        self.lab.sh("ip", "route", "add", CLIENT_NET, "dev", "eth0", ns=self.lab.ns(name))
        self.start_http(name)
        self.apply(name, started)

    def start_http(self, name: str) -> None:
        """The member's web application: answers every GET with its name (a thread in its
        namespace, so no extra Python start)."""
        ready = threading.Event()

        def serve():
            L.enter_netns(self.lab.ns(name))
            server = make_server(name, PORT)
            self.servers.append(server)
            ready.set()
            server.serve_forever(poll_interval=0.2)
        threading.Thread(target=serve, daemon=True, name=f"http-{name}").start()
        ready.wait(pace.scaled(10))

    def apply(self, name: str, started: float) -> None:
        proc = self.lab.sh(*command("cartridge-agent-lvs"), "apply", "--payload", PAYLOAD,
                           "--netns", self.lab.ns(name), log="agent.log", timeout=pace.scaled(300),
                           # side by side with four others: a generous pace for the waits
                           pace_label="cartridge-agent-lvs apply")
        addrs = self.lab.sh("ip", "-o", "addr", "show", "dev", "lvs0", ns=self.lab.ns(name)).stdout
        link = self.lab.sh("ip", "-d", "-o", "link", "show", "dev", "lvs0", ns=self.lab.ns(name)).stdout
        sysctls = {k: self.lab.hosts[name].worker.call(L.read_sysctl, f"net.ipv4.conf.all.{k}")
                   for k in ("arp_ignore", "arp_announce")}
        self.events.emit("realserver", name=name, seconds=round(time.monotonic() - started, 1),
                         output=proc.stdout.strip().splitlines(), vip_bound=f" {VIP}/32 " in addrs,
                         dummy=" dummy " in link,
                         sysctls=sysctls)

    def start_extension(self, name: str) -> None:
        state, priority, _ = DIRECTORS[name]
        d = self.workdir / name
        d.mkdir(exist_ok=True)
        self.extension[name] = self.lab.start(f"{name}-lvs-extension", [
            *command("lvs-extension"), "run", "--vip-map", f"{SERVICE}|{VIP}",
            "--topology-file", self.workdir / "topology.json",
            "--interface", "eth0", "--state", state, "--priority", priority,
            "--keepalived-conf", d / "keepalived.conf", "--keepalived-pidfile", d / "keepalived.pid",
            "--delay-loop", DELAY_LOOP, "--connect-timeout", CONNECT_TIMEOUT,
            "--advert-int", ADVERT_INT, "--drain-seconds", DRAIN_SECONDS, "--quiet-period", "0.2"],
            ns=self.lab.ns(name))

    def start_keepalived(self, name: str, started: float) -> None:
        d = self.workdir / name
        conf = d / "keepalived.conf"
        L.wait_for(conf.exists, pace.scaled(300), 0.1, f"{name}: lvs-extension writes {conf}")
        self.lab.start(f"{name}-keepalived", [
            "keepalived", "-n", "-l", "-D", "-f", conf, "-p", d / "keepalived.pid",
            "-r", d / "vrrp.pid", "-c", d / "checkers.pid"], ns=self.lab.ns(name))
        text = conf.read_text()
        self.events.emit("director", name=name, role=DIRECTORS[name][0],
                         seconds=round(time.monotonic() - started, 1),
                         virtual_servers=len(re.findall(r"^virtual_server ", text, re.M)),
                         real_servers=len(re.findall(r"^\s+real_server ", text, re.M)))

    # -- the story
    def watch_stats(self) -> None:
        """``lvs-extension stats --interval`` on dir2, started as the story begins: its
        Python start (the long pole under emulation) overlaps the story, and the last step
        reads the first snapshot taken after the traffic."""
        self.stats_watch = self.lab.start("dir2-stats", [
            *command("lvs-extension"), "stats", "--netns", self.lab.ns("dir2"),
            "--interval", STATS_INTERVAL])

    def spread(self) -> None:
        self.watch_stats()
        before = self.requests(20)
        self.events.emit("spread", requests=20, answers=before, served=self.served("dir1"))
        # Stratos reports the member Active (what its MemberActivatedEvent says)
        cluster(self.topology)["memberMap"][member_id(JOINING)]["memberStateManager"]["stateStack"].append("Active")
        changed = time.monotonic()
        self.write_topology()
        want = sorted(self.members)
        took = self.wait_members(want, 20)
        self.events.emit("joined", member=JOINING, seconds=round(took, 2), served=self.served("dir2"))
        after = self.requests(30)
        self.events.emit("spread", requests=30, answers=after, served=want,
                         since=round(time.monotonic() - changed, 1))

    def drain(self) -> None:
        leaving_ip = self.members[LEAVING][0]
        del cluster(self.topology)["memberMap"][member_id(LEAVING)]
        changed = time.monotonic()
        self.write_topology()
        weight0, took0 = L.wait_for(lambda: self.ipvs("dir1").get(leaving_ip) == 0 and time.monotonic(),
                                    pace.scaled(20), 0.05, f"{LEAVING} at weight 0 on dir1")
        during = self.requests(10)
        still = leaving_ip in self.ipvs("dir1")
        gone = {}
        for d in DIRECTORS:
            L.wait_for(lambda: leaving_ip not in self.ipvs(d), pace.scaled(20) + DRAIN_SECONDS, 0.05,
                       f"{LEAVING} leaves {d}'s IPVS")
            gone[d] = round(time.monotonic() - changed, 2)
        after = self.requests(20)
        self.events.emit("drained", member=LEAVING, drain_seconds=DRAIN_SECONDS,
                         weight0_seconds=round(took0, 2), during=during, listed_during=still,
                         removed_seconds=gone, after=after)

    def failover(self) -> None:
        client = self.lab.hosts["client"]
        pids = [int((self.workdir / "dir1" / f).read_text())
                for f in ("keepalived.pid", "vrrp.pid", "checkers.pid")]
        with L.RequestStream(client.worker, VIP, interval=0.1, timeout=0.5) as stream:
            stream.wait_answered(10, what="answers through the MASTER")
            # the MASTER dies: its cable is pulled, then its processes are killed. The
            # link goes down somewhere inside the ip process (a second in a busy guest):
            # the takeover is timed from before it, the answers "after the crash" (which
            # must all come through dir2) are those of requests sent after it returned
            pulled = time.monotonic()
            self.lab.sh("ip", "link", "set", "v-dir1", "down")
            killed = time.monotonic()
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            self.lab.stop(self.extension["dir1"], signal.SIGKILL)
            L.wait_for(lambda: self.holds_vip("dir2"), pace.scaled(20), 0.05, "the BACKUP holds the VIP")
            took = time.monotonic() - pulled
            stream.wait_answered(20, since=killed, timeout=20, what="answers after the crash")
        self.traffic_ended = time.time()
        gap, failed_in_gap = stream.longest_gap()
        after = collections.Counter(r.server for r in stream.results if r.server and r.start >= killed)
        first = min((r.end for r in stream.results if r.server and r.start >= killed), default=killed)
        self.events.emit("failover", takeover_seconds=round(took, 2), gap_seconds=round(gap, 2),
                         first_answer_seconds=round(first - killed, 2), failed=len(stream.failures),
                         requests=len(stream.results), answers_after=dict(sorted(after.items())),
                         advert_int=ADVERT_INT)
        self.after_crash = dict(after)

    def stats(self) -> None:
        log = self.lab.logdir / "dir2-stats.log"

        def after_traffic():
            if self.stats_watch.poll() is not None:
                raise RuntimeError(f"lvs-extension stats exited ({self.stats_watch.returncode}): "
                                   + " | ".join(log.read_text().splitlines()[-3:]))
            return next((table for at, table in stats_snapshots(log.read_text())
                         if at >= self.traffic_ended + 2 * IPVS_ESTIMATOR_SECONDS), None)
        table, waited = L.wait_for(after_traffic, pace.scaled(300), 0.2,
                                   "a stats snapshot read after the traffic")
        self.lab.stop(self.stats_watch)
        by_ip = {ip: name for name, (ip, _) in self.members.items()}
        conns = {by_ip.get(rip.rsplit(":", 1)[0], rip): n for rip, n in stats_conns(table).items()}
        self.events.emit("stats", director="dir2", output=table.rstrip().splitlines(),
                         conns=conns, client_answers=self.after_crash, waited=round(waited, 1),
                         interval=float(STATS_INTERVAL))

    def teardown(self) -> list:
        started = time.monotonic()
        for server in self.servers:
            server.shutdown()
            server.server_close()
        problems = self.lab.cleanup()
        left = self.lab.sh("ip", "netns", "list").stdout.split()
        self.events.emit("teardown", seconds=round(time.monotonic() - started, 1), problems=problems,
                         namespaces_left=[n for n in left if n.startswith("demo-")])
        return problems


STEPS = ("start", "spread", "drain", "failover", "stats")


def main(argv: list | None = None) -> int:
    workdir = Path((argv or sys.argv[1:])[0])
    # the agent's record of changes: in the shared folder (the guest's root is read-only)
    os.environ["CARTRIDGE_AGENT_LVS_STATE_DIR"] = str(workdir / "agent-state")
    events = Events(workdir / "events.jsonl")
    with open("/proc/uptime") as f:
        events.emit("guest", uptime=float(f.read().split()[0]), cpus=os.cpu_count())
    demo = Demo(workdir, events)
    ok = False
    try:
        for step in STEPS:
            try:
                getattr(demo, step)()
            except Exception as exc:  # noqa: BLE001 - told to the user, then torn down
                events.emit("failed", step=step, error=f"{type(exc).__name__}: {exc}",
                            trace=traceback.format_exc()[-2000:])
                break
        else:
            ok = True
    finally:
        demo.teardown()
        events.emit("end", ok=ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
