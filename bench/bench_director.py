#!/usr/bin/env python3
"""Director benchmark: topology -> keepalived.conf at 100, 1,000 and 10,000 real servers.

For each size (10 services; members spread over them) it measures, in one run:

* ``parse``, ``plan``, ``render``: medians over ``--rounds`` (time.perf_counter);
* the whole pipeline, timed as one call: the topology JSON text -> parse -> plan ->
  render -> keepalived.conf text;
* baseline: a naive pipeline in the style of the original Java extension -- the same
  JSON text through ``json.loads``, then string concatenation straight from the dicts,
  every member (no status filter), no validation -- timed the same way, and the ratio
  pipeline / naive pipeline (the whole of each, text in, text out);
* for reference, render alone against the naive concatenation alone (both handed
  already-parsed data);
* peak Python memory of parse + plan + render (tracemalloc);
* ``keepalived -t`` on the rendered file (the real binary): median wall time and its
  peak RSS (``RUSAGE_CHILDREN`` of a wrapper process).

Target (issue 3): render <= 100 ms at 10,000 real servers.

Usage: python3 bench/bench_director.py [--sizes 100,1000,10000] [--rounds 7] [--quick]
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
import tracemalloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cartridge_agent_lvs.director.keepalived import Keepalived  # noqa: E402
from cartridge_agent_lvs.director.plan import plan  # noqa: E402
from cartridge_agent_lvs.director.render import render  # noqa: E402
from cartridge_agent_lvs.director.settings import load  # noqa: E402
from cartridge_agent_lvs.director.topology import parse_topology  # noqa: E402
from tests.director import _stratos as st  # noqa: E402
from tests.director._service import vrrp_interface  # noqa: E402

SERVICES = 10

_RSS = ("import resource, subprocess, sys; "
        "p = subprocess.run(sys.argv[1:], capture_output=True); "
        "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def naive_render(doc: dict, vip_map: dict) -> str:
    """The baseline: how the Java extension built the file (all members, no checks)."""
    conf = "vrrp_instance VI_1 {\n  state MASTER\n  interface eth0\n  virtual_ipaddress {\n"
    for vip in vip_map.values():
        conf += "    " + vip + "\n"
    conf += "  }\n}\n"
    for name, service in doc["topology"]["serviceMap"].items():
        if name not in vip_map:
            continue
        for port in service["portMap"].values():
            conf += f"virtual_server {vip_map[name]} {port['proxy']} {{\n"
            conf += "  delay_loop 10\n  lb_algo rr\n  lb_kind DR\n  protocol TCP\n"
            for cluster in service["clusterIdClusterMap"].values():
                for member in cluster["memberMap"].values():
                    conf += f"  real_server {member['defaultPrivateIP']} {port['value']} {{\n"
                    conf += "    weight 50\n    TCP_CHECK {\n      connect_timeout 3\n"
                    conf += "    }\n  }\n"
            conf += "}\n"
    return conf


def timed(fn, rounds: int):
    times, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench_size(size: int, rounds: int, workdir: str) -> dict:
    per = size // SERVICES
    doc = st.topology({s: range(per) for s in range(SERVICES)})
    text = json.dumps(doc)
    settings = load(dict(vip_map=st.vip_map(range(SERVICES)), interface=vrrp_interface()))
    vip_map = dict(settings.vip_map)

    t_parse, topology = timed(lambda: parse_topology(text), rounds)
    t_plan, planned = timed(lambda: plan(settings, topology), rounds)
    t_render, conf = timed(lambda: render(planned.config), rounds)
    t_naive, _ = timed(lambda: naive_render(doc, vip_map), rounds)
    t_pipeline, whole = timed(lambda: render(plan(settings, parse_topology(text)).config),
                              rounds)
    t_naive_pipeline, naive = timed(lambda: naive_render(json.loads(text), vip_map), rounds)
    assert planned.config.real_server_count() == size, "not every member was planned"
    assert whole == conf and naive.count("real_server ") == size

    tracemalloc.start()
    render(plan(settings, parse_topology(text)).config)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    keepalived = Keepalived(os.path.join(workdir, "keepalived.conf"))
    t_check, _ = timed(lambda: keepalived.validate(conf), max(3, rounds // 2))
    path = os.path.join(workdir, f"bench-{size}.conf")
    with open(path, "w") as f:
        f.write(conf)
    code, rss_kib = subprocess.run([sys.executable, "-c", _RSS, "keepalived", "-t", "-f", path],
                                   capture_output=True, text=True, check=True).stdout.split()
    assert code == "0", "keepalived -t rejected the rendered file"
    return {"real_servers": size, "bytes": len(conf),
            "parse_ms": t_parse * 1e3, "plan_ms": t_plan * 1e3, "render_ms": t_render * 1e3,
            "baseline_render_ms": t_naive * 1e3, "render_vs_baseline": t_render / t_naive,
            "pipeline_ms": t_pipeline * 1e3, "naive_pipeline_ms": t_naive_pipeline * 1e3,
            "pipeline_vs_naive": t_pipeline / t_naive_pipeline,
            "python_peak_mib": peak / 2**20,
            "keepalived_t_ms": t_check * 1e3, "keepalived_t_rss_mib": int(rss_kib) / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    args = parser.parse_args()
    rounds = 3 if args.quick else args.rounds
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-director-") as workdir:
        results = [bench_size(n, rounds, workdir) for n in sizes]
    print(f"median of {rounds} rounds (keepalived -t: {max(3, rounds // 2)}); "
          f"{SERVICES} services; Python {sys.version.split()[0]}")
    cols = [("real_servers", "RS", "d"), ("parse_ms", "parse ms", ".1f"),
            ("plan_ms", "plan ms", ".1f"), ("render_ms", "render ms", ".1f"),
            ("pipeline_ms", "pipeline ms", ".1f"),
            ("naive_pipeline_ms", "naive pipe ms", ".1f"),
            ("pipeline_vs_naive", "pipe/naive", ".2f"),
            ("baseline_render_ms", "naive rndr ms", ".1f"),
            ("render_vs_baseline", "render/naive", ".2f"),
            ("python_peak_mib", "py peak MiB", ".1f"),
            ("keepalived_t_ms", "keepalived -t ms", ".0f"),
            ("keepalived_t_rss_mib", "-t RSS MiB", ".1f")]
    print("  ".join(f"{title:>13}" for _, title, _ in cols))
    for r in results:
        print("  ".join(f"{r[key]:>13{fmt}}" for key, _, fmt in cols))
    print("pipeline = JSON text -> parse -> plan -> render, one call; naive pipe = the same "
          "text -> json.loads -> naive concatenation; render/naive: render alone vs the "
          "naive concatenation alone, both from parsed data")
    big = [r for r in results if r["real_servers"] == 10000]
    if big:
        verdict = "met" if big[0]["render_ms"] <= 100 else "MISSED"
        print(f"target render <= 100 ms at 10,000 real servers: {verdict} "
              f"({big[0]['render_ms']:.1f} ms)")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
