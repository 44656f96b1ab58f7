#!/usr/bin/env python3
"""Real-server benchmark: bind 1,000 VIPs in a throwaway network namespace.

Side by side, in one run, each round in a fresh namespace:

* plugin: ``VipBinder.apply`` (netlink through pyroute2: one address dump, one add per
  VIP, the ARP sysctls, the state file);
* baseline: the shell-out way -- one ``ip -n NS addr add VIP/32 dev lo`` process per
  VIP (and nothing else: no sysctls, no record);
* no-op re-apply of the plugin on the 1,000 bound VIPs (an agent restart).

Medians and the ratio are printed.  Targets (issue 2): >= 20x faster than shelling
out; no-op re-apply <= 20 ms.  The host kernel has no dummy driver, so both bind on
``lo`` (LVS_MODE=loopback); the netlink work per address is the same on a dummy link.

Usage (root): python3 bench/bench_realserver.py [--vips 1000] [--rounds 5]
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

from pyroute2 import netns  # noqa: E402

from cartridge_agent_lvs.payload import lvs_request  # noqa: E402
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
    args = parser.parse_args()
    addresses = vips(args.vips)
    plugin, noop, shell = [], [], []
    for r in range(args.rounds):          # interleaved: same conditions for both
        first, idle = plugin_round(addresses, f"p{r}")
        plugin.append(first)
        noop.append(idle)
        shell.append(shell_round(addresses, f"s{r}"))
    result = {"vips": args.vips, "rounds": args.rounds,
              "plugin_apply_ms": statistics.median(plugin) * 1e3,
              "shell_out_ms": statistics.median(shell) * 1e3,
              "speedup": statistics.median(shell) / statistics.median(plugin),
              "noop_reapply_ms": statistics.median(noop) * 1e3}
    print(f"{args.vips} VIPs, median of {args.rounds} rounds (no-op: median of 20 per round, "
          "then of the rounds)")
    print(f"  plugin apply (netlink)        {result['plugin_apply_ms']:9.1f} ms")
    print(f"  one `ip addr add` per VIP     {result['shell_out_ms']:9.1f} ms")
    print(f"  speed-up                      {result['speedup']:9.1f} x   (target >= 20x)")
    print(f"  no-op re-apply                {result['noop_reapply_ms']:9.1f} ms  "
          "(target <= 20 ms)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
