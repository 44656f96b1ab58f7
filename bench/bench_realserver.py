#!/usr/bin/env python3
"""Real-server benchmark: bind 1,000 VIPs in a throwaway network namespace.

Side by side, in one run, each round in a fresh namespace per contender:

* plugin, ``fire("CreateLVSDummyInterface")`` -- what the agent calls: the payload
  parsed from the agent's ``values``, the hooks, then the binder;
* plugin, ``VipBinder.apply`` alone (netlink through pyroute2: one address dump, the
  address messages batched, the ARP sysctls, the state file);
* fair baseline: ONE ``ip -batch`` process adding the same 1,000 addresses (one
  process start, one netlink request per address; no sysctls, no record);
* shell-out baseline: one ``ip -n NS addr add VIP/32 dev lo`` process per VIP -- 1,000
  process starts (no sysctls, no record);
* no-op re-apply of the plugin on the 1,000 bound VIPs (an agent restart).

Then the single-VIP case -- what an instance pays per event (``bench_agent_event.py``,
reused): the console script started by the agent (process start + import + apply, and
again for clean) against the stock bash extension's commands.

Medians and ratios are printed. Targets (issue 2): >= 20x faster than shelling out;
no-op re-apply <= 20 ms. The host kernel has no dummy driver, so all bind on ``lo``
(LVS_MODE=loopback); the netlink work per address is the same on a dummy link.

Usage (root): .venv/bin/python bench/bench_realserver.py [--vips 1000] [--rounds 5]
              [--event-rounds 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from pyroute2 import netns  # noqa: E402

from cartridge_agent_lvs.payload import lvs_request  # noqa: E402
from cartridge_agent_lvs.pluginmanager import Context, default_plugin_manager, fire  # noqa: E402
from cartridge_agent_lvs.realserver.binder import VipBinder  # noqa: E402
from cartridge_agent_lvs.realserver.netlink import NetlinkHost  # noqa: E402
from cartridge_agent_lvs.realserver.state import StateStore  # noqa: E402
from cartridge_agent_lvs.realserver.sysctl import Sysctl  # noqa: E402


def vips(n: int):
    return [f"172.16.{i // 250}.{i % 250 + 1}" for i in range(n)]


class Namespace:
    def __init__(self, tag: str) -> None:
        self.name = f"lvs-bench-{os.getpid()}-{tag}"

    def __enter__(self) -> str:
        netns.create(self.name)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        return self.name

    def __exit__(self, *exc) -> None:
        netns.remove(self.name)


def count_bound(ns: str) -> int:
    out = subprocess.run(["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "lo"],
                         capture_output=True, text=True, check=True).stdout
    return sum(" 172.16." in line for line in out.splitlines())


def plugin_round(addresses, tag: str):
    request = lvs_request({"LVS_VIRTUAL_IP": ";".join(addresses), "LVS_MODE": "loopback"})
    with tempfile.TemporaryDirectory() as state_dir, Namespace(tag) as ns:
        with NetlinkHost(ns) as host:
            binder = VipBinder(host, Sysctl(ns), StateStore(ns, state_dir))
            start = time.perf_counter()
            binder.apply(request)
            first = time.perf_counter() - start
            noops = []
            for _ in range(20):
                start = time.perf_counter()
                report = binder.apply(request)
                noops.append(time.perf_counter() - start)
                assert not report.changed
        assert count_bound(ns) == len(addresses)
    return first, statistics.median(noops)


def fire_round(addresses, tag: str) -> float:
    """``fire("CreateLVSDummyInterface")`` as the agent calls it: the raw values."""
    values = {"MEMBER_ID": "bench.member-1", "SERVICE_NAME": "bench", "LVS_MODE": "loopback",
              "LVS_VIRTUAL_IP": ";".join(addresses)}
    with tempfile.TemporaryDirectory() as state_dir, Namespace(tag) as ns:
        start = time.perf_counter()
        outcome = fire("CreateLVSDummyInterface", values, Context(ns, state_dir), log_errors=False)
        elapsed = time.perf_counter() - start
        assert outcome.ok, outcome.lines()
        assert count_bound(ns) == len(addresses)
    return elapsed


def batch_round(addresses, tag: str) -> float:
    """One ``ip -batch`` process for all the addresses (the fair shell-out baseline)."""
    script = "".join(f"addr add {vip}/32 dev lo\n" for vip in addresses)
    with Namespace(tag) as ns:
        start = time.perf_counter()
        subprocess.run(["ip", "-n", ns, "-batch", "-"], input=script, text=True, check=True)
        elapsed = time.perf_counter() - start
        assert count_bound(ns) == len(addresses)
    return elapsed


def shell_round(addresses, tag: str) -> float:
    with Namespace(tag) as ns:
        start = time.perf_counter()
        for vip in addresses:
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{vip}/32", "dev", "lo"],
                           check=True)
        elapsed = time.perf_counter() - start
        assert count_bound(ns) == len(addresses)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vips", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--event-rounds", type=int, default=15,
                        help="rounds of the single-VIP case (bench_agent_event.py); 0 skips it")
    args = parser.parse_args()
    addresses = vips(args.vips)
    default_plugin_manager()          # built once per process, as in a long-lived agent
    plugin, noop, fired, batch, shell = [], [], [], [], []
    for r in range(args.rounds):      # interleaved: the same conditions for all
        first, idle = plugin_round(addresses, f"p{r}")
        plugin.append(first)
        noop.append(idle)
        fired.append(fire_round(addresses, f"f{r}"))
        batch.append(batch_round(addresses, f"b{r}"))
        shell.append(shell_round(addresses, f"s{r}"))
    med = {k: statistics.median(v) * 1e3 for k, v in
           (("fire", fired), ("apply", plugin), ("batch", batch), ("shell", shell), ("noop", noop))}
    result = {"vips": args.vips, "rounds": args.rounds,
              "fire_ms": med["fire"], "plugin_apply_ms": med["apply"],
              "ip_batch_ms": med["batch"], "shell_out_ms": med["shell"],
              "fire_vs_ip_batch": med["batch"] / med["fire"],
              "fire_vs_shell_out": med["shell"] / med["fire"],
              "speedup": med["shell"] / med["apply"], "noop_reapply_ms": med["noop"]}
    print(f"{args.vips} VIPs, median of {args.rounds} rounds, a fresh namespace each "
          "(no-op: median of 20 per round, then of the rounds)")
    print(f"  plugin fire('CreateLVSDummyInterface')  {med['fire']:9.1f} ms   "
          "(what the agent calls)")
    print(f"  plugin VipBinder.apply alone            {med['apply']:9.1f} ms")
    print(f"  baseline: one `ip -batch` process       {med['batch']:9.1f} ms   "
          "(addresses only)")
    print(f"  baseline: one `ip addr add` per VIP     {med['shell']:9.1f} ms   "
          "(addresses only)")
    n = f"{args.vips:,}"
    print(f"  speed-up of fire() over one `ip -batch`   {result['fire_vs_ip_batch']:7.2f} x   "
          "(< 1: the single ip process is faster)")
    print(f"  speed-up of fire() over {n} processes  {result['fire_vs_shell_out']:7.1f} x")
    print(f"  speed-up of apply over {n} processes   {result['speedup']:7.1f} x   "
          "(target >= 20x)")
    print(f"  no-op re-apply of the plugin            {med['noop']:9.1f} ms   "
          "(target <= 20 ms)")
    if args.event_rounds:
        import bench_agent_event
        print()
        bench_agent_event.report(bench_agent_event.run(args.event_rounds), args.event_rounds)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
