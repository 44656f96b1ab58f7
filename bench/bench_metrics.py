#!/usr/bin/env python3
"""Cost of one ``/metrics`` scrape at 10,000 real servers, in a real kernel's IPVS.

Side by side with the way exporters commonly read IPVS: ``ipvsadm -Ln --stats``
run and its text parsed into per-real-server counters -- on the same table.

The host kernels of CI have no IPVS, so by default this boots the e2e suite's
kernel VM (``tests/e2e``: virtme-ng, the cached Debian kernel) and runs itself
inside with ``--here``; ``--here`` on a machine with IPVS runs it directly, in a
throwaway network namespace (the host's own IPVS is never touched).  Only one VM at
a time: it refuses to boot while another ``qemu-system`` process runs.

In the namespace: 10 virtual servers x 1,000 real servers are created with one
``ipvsadm -R`` (the table keepalived would make of the planned configuration); the
director (``service.Director`` with that configuration as served, its
``/metrics`` listener on loopback) is scraped over HTTP; each figure is the median
of N rounds after one warm-up.  Reported: the kernel read alone (generic netlink
dump, ``stats.read_ipvs``), the full scrape (read + exposition, identity and gzip
bytes), ``/status``, and ``ipvsadm -Ln --stats`` (process + its text parsed).

``--replay`` measures the same scrape's CPU cost on any machine, without a kernel:
IPVS answered by the genuine netlink messages of ``tests/director/_ipvs.py``.

Usage: .venv/bin/python bench/bench_metrics.py [--services 10] [--members 1000]
       [--rounds 5] [--here | --replay] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def median_ms(fn, rounds: int):
    """(median ms over *rounds* after one warm-up, the last result)."""
    result = fn()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), result


def parse_ipvsadm_stats(text: str) -> dict:
    """``ipvsadm -Ln --stats`` -> {(proto, vip:port): {rs: (conns, inpkts, outpkts,
    inbytes, outbytes)}} (values as printed: ipvsadm abbreviates with K/M/G)."""
    table, current = {}, None
    for line in text.splitlines()[3:]:
        words = line.split()
        if not words:
            continue
        if words[0] == "->":
            table[current][words[1]] = tuple(words[2:7])
        else:
            current = (words[0], words[1])
            table[current] = {}
    return table


def populate(netns: str, config, ipvsadm: str) -> float:
    """The IPVS table keepalived would make of *config* (one ``ipvsadm -R``); seconds."""
    rules = []
    for vs in config.virtual_servers:
        rules.append(f"-A -t {vs.vip}:{vs.port} -s {vs.policy.scheduler}")
        rules += [f"-a -t {vs.vip}:{vs.port} -r {rs.ip}:{rs.port} -g -w {rs.weight}"
                  for rs in vs.real_servers]
    started = time.perf_counter()
    subprocess.run(["ip", "netns", "exec", netns, ipvsadm, "-R"], input="\n".join(rules) + "\n",
                   text=True, check=True)
    return time.perf_counter() - started


def here(args) -> dict:
    from pyroute2 import netns as pyroute2_netns

    from cartridge_agent_lvs.director import service, stats
    from cartridge_agent_lvs.director.plan import plan
    from cartridge_agent_lvs.director.settings import load
    from cartridge_agent_lvs.director.topology import parse_topology
    from cartridge_agent_lvs.director.vrrp import interface_addresses
    from tests.director import _stratos as st

    ipvsadm = shutil.which("ipvsadm")
    if not ipvsadm:
        sys.exit("bench_metrics: ipvsadm is needed (the baseline, and to fill the table): "
                 "apt-get install ipvsadm")
    subprocess.run(["modprobe", "-a", "ip_vs", "ip_vs_rr"], check=False)
    workdir = tempfile.mkdtemp(prefix="bench-metrics-")
    ns = f"lvs-bench-{os.getpid()}"
    settings_values = dict(vip_map=st.vip_map(range(args.services)), interface="lo",
                           keepalived_conf=os.path.join(workdir, "keepalived.conf"),
                           drain_seconds=0)
    settings = load(settings_values)
    topology = parse_topology(st.topology({s: range(args.members)
                                           for s in range(args.services)}))
    config = plan(settings, topology).config
    pyroute2_netns.create(ns)
    server = None
    try:
        # lo up: until the namespace has a local route, IPVS refuses DR destinations
        # ("address not unicast": the kernel finds no local table to classify them)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        setup = populate(ns, config, ipvsadm)
        director = service.Director(settings, service.keepalived_for(settings),
                                    read_kernel=lambda dests_of=None: stats.read_ipvs(
                                        ns, dests_of=dests_of))
        director.served = config
        server = service.serve_metrics(director, ("127.0.0.1", 0),
                                       lambda ifname: interface_addresses(ifname, ns))
        base = f"http://127.0.0.1:{server.port}"

        def get(path, gzip_ok=False):
            request = urllib.request.Request(
                base + path, headers={"Accept-Encoding": "gzip"} if gzip_ok else {})
            with urllib.request.urlopen(request, timeout=600) as answer:
                return answer.read()

        read_ms, services = median_ms(lambda: stats.read_ipvs(ns), args.rounds)
        dests = sum(len(s.dests) for s in services)
        scrape_ms, body = median_ms(lambda: get("/metrics"), args.rounds)
        gzip_ms, zipped = median_ms(lambda: get("/metrics", True), args.rounds)
        status_ms, status = median_ms(lambda: get("/status"), args.rounds)
        samples = sum(1 for line in body.decode().splitlines()
                      if line and not line.startswith("#"))
        out = {"real_servers": config.real_server_count(), "dests_read": dests,
               "populate_seconds": round(setup, 1), "read_ipvs_ms": round(read_ms, 1),
               "scrape_ms": round(scrape_ms, 1), "scrape_bytes": len(body),
               "scrape_samples": samples, "scrape_gzip_ms": round(gzip_ms, 1),
               "scrape_gzip_bytes": len(zipped) if zipped[:2] == b"\x1f\x8b" else None,
               "status_ms": round(status_ms, 1), "status_bytes": len(status)}
        assert dests == config.real_server_count(), (dests, config.real_server_count())
        # metrics_real_servers = false: the same kernel, per virtual server and cluster only
        lean = service.Director(load(dict(settings_values, metrics_real_servers=False)),
                                service.keepalived_for(settings),
                                read_kernel=lambda dests_of=None: stats.read_ipvs(
                                        ns, dests_of=dests_of))
        lean.served = config
        lean_server = service.serve_metrics(lean, ("127.0.0.1", 0),
                                            lambda ifname: interface_addresses(ifname, ns))
        try:
            lean_url = f"http://127.0.0.1:{lean_server.port}/metrics"
            lean_ms, lean_body = median_ms(
                lambda: urllib.request.urlopen(lean_url, timeout=600).read(), args.rounds)
        finally:
            lean_server.stop()
        out.update(lean_scrape_ms=round(lean_ms, 1), lean_scrape_bytes=len(lean_body))
        argv = ["ip", "netns", "exec", ns, ipvsadm, "-Ln", "--stats"]
        run_ms, text = median_ms(lambda: subprocess.run(
            argv, capture_output=True, text=True, check=True).stdout, args.rounds)
        parse_ms, table = median_ms(lambda: parse_ipvsadm_stats(text), args.rounds)
        both_ms, _ = median_ms(lambda: parse_ipvsadm_stats(subprocess.run(
            argv, capture_output=True, text=True, check=True).stdout), args.rounds)
        out.update(ipvsadm_ms=round(run_ms, 1), ipvsadm_parse_ms=round(parse_ms, 1),
                   ipvsadm_total_ms=round(both_ms, 1), ipvsadm_bytes=len(text.encode()),
                   ipvsadm_real_servers=sum(len(v) for v in table.values()))
        return out
    finally:
        if server is not None:
            server.stop()
        pyroute2_netns.remove(ns)
        shutil.rmtree(workdir, ignore_errors=True)


def replay(args) -> dict:
    """The same scrape's CPU cost on this machine: no kernel, IPVS answered by the
    genuine messages of ``tests/director/_ipvs.py``, recorded once and replayed."""
    from cartridge_agent_lvs.director import service, stats
    from cartridge_agent_lvs.director.plan import plan
    from cartridge_agent_lvs.director.settings import load
    from cartridge_agent_lvs.director.topology import parse_topology
    from tests.director import _stratos as st
    from tests.director._ipvs import FakeGenl, Kernel

    workdir = tempfile.mkdtemp(prefix="bench-metrics-")
    values = dict(vip_map=st.vip_map(range(args.services)), interface="lo",
                  keepalived_conf=os.path.join(workdir, "keepalived.conf"))
    settings = load(values)
    config = plan(settings, parse_topology(st.topology(
        {s: range(args.members) for s in range(args.services)}))).config
    kernel = Kernel()
    kernel.apply(config)
    fake, recorded = FakeGenl(kernel.table), []

    class Recorder:
        send, close = fake.send, fake.close

        def recv(self):
            recorded.append(fake.recv())
            return recorded[-1]

    class Replay:
        def __init__(self):
            self.answers = iter(recorded)

        def send(self, data):
            pass

        def recv(self):
            return next(self.answers)

        def close(self):
            pass
    stats.read_ipvs(None, sock_factory=lambda netns: Recorder())
    read = lambda dests_of=None: stats.read_ipvs(  # noqa: E731
        None, sock_factory=lambda netns: Replay(), dests_of=dests_of)
    def scrape(real_servers: bool):
        director = service.Director(settings if real_servers else load(
            dict(values, metrics_real_servers=False)), service.keepalived_for(settings),
            read_kernel=read)
        director.served = config
        server = service.serve_metrics(director, ("127.0.0.1", 0), lambda ifname: frozenset())
        try:
            url = f"http://127.0.0.1:{server.port}/metrics"
            return median_ms(lambda: urllib.request.urlopen(url).read(), args.rounds)
        finally:
            server.stop()

    try:
        read_ms, _ = median_ms(read, args.rounds)
        scrape_ms, body = scrape(True)
        lean_ms, lean = scrape(False)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"real_servers": config.real_server_count(), "read_ipvs_ms": round(read_ms, 1),
            "scrape_ms": round(scrape_ms, 1), "scrape_bytes": len(body),
            "lean_scrape_ms": round(lean_ms, 1), "lean_scrape_bytes": len(lean)}


def in_vm(args) -> dict:
    """Boot the e2e suite's kernel VM and run ``--here`` in it."""
    from tests.e2e.kernel import ensure_kernel
    from tests.e2e.vm import boot, check_host
    running = subprocess.run(["pgrep", "-f", "qemu-system"], capture_output=True, text=True)
    if running.stdout.strip():
        sys.exit("bench_metrics: another VM (qemu-system) is running; only one at a time "
                 "on this machine -- try again when it has finished")
    check_host()
    workdir = tempfile.mkdtemp(prefix="bench-metrics-vm-")
    result = os.path.join(workdir, "result.json")
    command = [sys.executable, os.path.join(ROOT, "bench", "bench_metrics.py"), "--here",
               "--services", str(args.services), "--members", str(args.members),
               "--rounds", str(args.rounds), "--json", result]
    boot_result = boot(ensure_kernel(), command, Path(workdir),
                       timeout=args.timeout, cwd=Path(ROOT))
    if not os.path.exists(result):
        tail = "\n".join(boot_result.output.splitlines()[-30:])
        sys.exit(f"bench_metrics: the VM wrote no result (exit {boot_result.returncode}, "
                 f"timed out: {boot_result.timed_out}):\n{tail}")
    with open(result) as f:
        return json.load(f)


def report_replay(r: dict) -> str:
    return (f"{r['real_servers']:,} real servers, IPVS answers replayed (this machine's "
            f"CPU, no kernel); median of the rounds after a warm-up:\n"
            f"  decode the dump (read_ipvs)  {r['read_ipvs_ms']:>10} ms\n"
            f"  GET /metrics                 {r['scrape_ms']:>10} ms  "
            f"{r['scrape_bytes']:,} bytes\n"
            f"  GET /metrics, metrics_real_servers = false  {r['lean_scrape_ms']} ms  "
            f"{r['lean_scrape_bytes']:,} bytes")


def report(r: dict) -> str:
    rows = [("kernel read (generic netlink dump, read_ipvs)", f"{r['read_ipvs_ms']} ms", ""),
            ("GET /metrics (read + exposition)", f"{r['scrape_ms']} ms",
             f"{r['scrape_bytes']:,} bytes, {r['scrape_samples']:,} samples"),
            ("GET /metrics, metrics_real_servers = false", f"{r['lean_scrape_ms']} ms",
             f"{r['lean_scrape_bytes']:,} bytes"),
            ("GET /metrics, gzip", f"{r['scrape_gzip_ms']} ms",
             f"{r['scrape_gzip_bytes']:,} bytes" if r["scrape_gzip_bytes"] else "not gzipped"),
            ("GET /status (JSON)", f"{r['status_ms']} ms", f"{r['status_bytes']:,} bytes")]
    rows += [("ipvsadm -Ln --stats (process)", f"{r['ipvsadm_ms']} ms",
              f"{r['ipvsadm_bytes']:,} bytes"),
             ("  its text parsed", f"{r['ipvsadm_parse_ms']} ms",
              f"{r['ipvsadm_real_servers']:,} real servers"),
             ("  together", f"{r['ipvsadm_total_ms']} ms", "")]
    width = max(len(a) for a, _, _ in rows)
    lines = [f"{r['real_servers']:,} real servers in IPVS (created in "
             f"{r['populate_seconds']} s); median of the rounds after a warm-up:"]
    lines += [f"  {a:<{width}}  {b:>10}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--members", type=int, default=1000, help="real servers per service")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--here", action="store_true",
                        help="run on this kernel (needs IPVS and root), not in the VM")
    parser.add_argument("--replay", action="store_true",
                        help="no kernel: the scrape's CPU cost on this machine, IPVS "
                        "answered by recorded genuine netlink messages")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--timeout", type=float, default=1800, help="VM time limit, s")
    args = parser.parse_args()
    result = replay(args) if args.replay else here(args) if args.here else in_vm(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(report_replay(result) if args.replay else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
