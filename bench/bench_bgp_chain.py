#!/usr/bin/env python3
"""Mode bgp without emulation: how fast a BIRD router drops a director, on this host.

Each round, in throwaway network namespaces on the host kernel (no IPVS needed): a
router running BIRD 2 (``protocol kernel`` with ``merge paths on``, BFD on a bridge,
one BGP session with ``bfd on`` per director) and three directors running BIRD with the
``bird.conf`` the product renders (:func:`~cartridge_agent_lvs.director.bgp.render_bird`,
BFD ``--interval-ms`` x ``--multiplier``), each announcing the VIP. Then:

* withdraw: director 1's file is rendered without the VIP, checked and BIRD told
  (:class:`~cartridge_agent_lvs.director.bird.Bird`, as the Announcer does);
* kill: director 3's link goes down and its BIRD gets SIGKILL;

each timed to the router's kernel route change, seen by the e2e lab's rtnetlink
listener (``tests/e2e/guest/ecmp.py`` ``RouteWatch``).  Medians and ranges printed.
Usage (root): ``.venv/bin/python bench/bench_bgp_chain.py [--rounds 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cartridge_agent_lvs.director.bgp import Speaker, render_bird  # noqa: E402
from cartridge_agent_lvs.director.bird import Bird  # noqa: E402
from tests.e2e.guest.ecmp import RouteWatch  # noqa: E402

VIP, ROUTER = "10.99.0.100", "10.99.0.1"
DIRECTORS = {"d1": "10.99.0.41", "d2": "10.99.0.42", "d3": "10.99.0.43"}
PREFIX = f"bgpb{os.getpid()}"


def sh(*argv: str, ns: str | None = None) -> str:
    full = (["ip", "netns", "exec", f"{PREFIX}-{ns}"] if ns else []) + list(argv)
    return subprocess.run(full, check=True, capture_output=True, text=True).stdout


def nexthops() -> set:
    found = set()
    for route in json.loads(sh("ip", "-j", "route", "show", f"{VIP}/32", ns="r") or "[]"):
        found |= {route["gateway"]} if "gateway" in route else set()
        found |= {hop["gateway"] for hop in route.get("nexthops", ())}
    return found


def wait(predicate, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError(f"not within {timeout} s")
        time.sleep(0.01)


def one_round(work: str, interval_ms: int, multiplier: int) -> tuple:
    procs = []
    try:
        sh("ip", "netns", "add", f"{PREFIX}-r")
        sh("sh", "-c", f"ip link set lo up && ip link add br0 type bridge && ip link set br0 up"
           f" && ip addr add {ROUTER}/24 dev br0", ns="r")
        for name, address in DIRECTORS.items():
            sh("ip", "netns", "add", f"{PREFIX}-{name}")
            sh("ip", "link", "add", f"v-{name}", "netns", f"{PREFIX}-r", "type", "veth", "peer",
               "name", "eth0", "netns", f"{PREFIX}-{name}")
            sh("ip", "link", "set", f"v-{name}", "master", "br0", "up", ns="r")
            sh("sh", "-c", f"ip link set lo up && ip link set eth0 up && ip addr add {address}/24"
               " dev eth0", ns=name)
        bfd = f"min rx interval {interval_ms} ms; min tx interval {interval_ms} ms; multiplier {multiplier};"
        with open(f"{work}/r.conf", "w") as f:
            f.write(f"router id {ROUTER};\nprotocol device {{ }}\n"
                    "protocol kernel { ipv4 { import none; export all; }; merge paths on; }\n"
                    f'protocol bfd {{ interface "br0" {{ {bfd} }}; }}\n'
                    f"template bgp ds {{ local {ROUTER} as 65000; bfd on;"
                    " ipv4 { import all; export none; }; }\n"
                    + "".join(f"protocol bgp {n} from ds {{ neighbor {a} as 65001; }}\n"
                              for n, a in DIRECTORS.items()))
        procs.append(subprocess.Popen(["ip", "netns", "exec", f"{PREFIX}-r", "bird", "-f", "-c",
                                       f"{work}/r.conf", "-s", f"{work}/r.ctl"]))
        birds = {}
        for name, address in DIRECTORS.items():
            speaker = Speaker(65001, address, ((ROUTER, 65000),), 9, True, interval_ms, multiplier)
            bird = Bird(f"{work}/{name}.conf", f"{work}/{name}.ctl")
            bird.write(render_bird(speaker, {VIP}))
            birds[name] = (bird, speaker)
            procs.append(subprocess.Popen(["ip", "netns", "exec", f"{PREFIX}-{name}", "bird", "-f",
                                           "-c", bird.conf_path, "-s", bird.socket_path]))
        wait(lambda: nexthops() == set(DIRECTORS.values()), 60)
        with RouteWatch(f"{PREFIX}-r", f"{VIP}/32") as watch:
            bird, speaker = birds["d1"]
            started = time.monotonic()
            bird.write(render_bird(speaker, ()))
            bird.configure()
            withdraw = watch.wait({DIRECTORS["d2"], DIRECTORS["d3"]}, started, 10)
            killed = time.monotonic()
            sh("ip", "link", "set", "v-d3", "down", ns="r")
            procs[3].send_signal(signal.SIGKILL)
            detection = watch.wait({DIRECTORS["d2"]}, killed, 10)
        return withdraw, detection
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for name in ("r", *DIRECTORS):
            subprocess.run(["ip", "netns", "del", f"{PREFIX}-{name}"], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interval-ms", type=int, default=200)
    parser.add_argument("--multiplier", type=int, default=3)
    args = parser.parse_args()
    results = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="bgpb-") as work:
            results.append(one_round(work, args.interval_ms, args.multiplier))
    for i, label in enumerate(("withdraw -> router's kernel route", "kill -> router's kernel route")):
        values = [r[i] for r in results]
        print(f"{label}: median {statistics.median(values):.3f} s, range {min(values):.3f}-"
              f"{max(values):.3f} s ({args.rounds} rounds, BFD {args.interval_ms} ms x {args.multiplier})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
