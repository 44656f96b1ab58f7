#!/usr/bin/env python3
"""lvs-extension's own per-event work, on the host: member event -> SIGHUP sent.

For 1,000 / 4,000 / 10,000 real servers (10 services of N/10 members, as in
``bench_shards.py``) and each layout (one keepalived.conf; ``keepalived_shards``),
this drives the service loop (``service.Director``: fold the event, plan, mass-removal
guard, drain, render, ``keepalived -t`` with the real binary, atomic write, SIGHUP)
and times, per member event, the wall time from handing the event to the loop to
the SIGHUP having been sent -- the coalescing quiet period excluded (the loop is
ticked as if it had passed).  The SIGHUP goes to a fake keepalived per instance (a
process the pid check accepts; the host has no IPVS to run the real one), so what
is timed is lvs-extension's work only.  Members are suspended and activated again,
alternately, on services 1..9; with ``--drain`` (``drain_seconds`` 600) a leaving
member only gets weight 0.

With ``--before REV`` the same measurement also runs, in one run and side by side,
on the package as it was at git revision REV (extracted with ``git archive`` into a
temporary directory), so the two designs are compared on the same machine at the
same time (the fake keepalived and the topology documents come from this tree's
test helpers).  ``--stages`` adds where the time of an event goes: ``keepalived -t``
(with working out what in the file is new to keepalived, :mod:`~.director.increment`),
render, the file work besides ``-t``, the reload (with the convergence watcher's
bookkeeping), and the rest (event folding, plan, guard, drain).

Usage: .venv/bin/python bench/bench_pipeline.py [--sizes 1000,4000,10000] [--events 20]
       [--shards 10] [--layouts single,sharded] [--drain] [--before REV] [--stages]
       [--json FILE]
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVICES = 10

from bench_shards import layout_arguments, summary  # noqa: E402  (this script's folder is on sys.path)


class _Stages:
    """Wall time spent in a few named methods (patched on their classes)."""

    def __init__(self) -> None:
        self.seconds: dict = {}

    def wrap(self, owner, name: str, stage: str) -> None:
        original = getattr(owner, name)
        seconds = self.seconds

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - started
        setattr(owner, name, staticmethod(timed) if isinstance(
            owner.__dict__.get(name), staticmethod) else timed)


def measure(size: int, shards: int, events: int, drain: bool, stages: bool) -> dict:
    """One size and layout, in this process (whatever package ``sys.path`` finds)."""
    from cartridge_agent_lvs.director import service
    from cartridge_agent_lvs.director.feeds import FeedUpdate
    from cartridge_agent_lvs.director.keepalived import Keepalived
    from cartridge_agent_lvs.director import shards as shards_module
    from cartridge_agent_lvs.director.settings import load
    from cartridge_agent_lvs.director.shards import ShardedKeepalived, shard_conf, \
        shard_pidfile
    from tests.director import _stratos as st
    from tests.director._service import FakeKeepalived, vrrp_interface
    workdir = tempfile.mkdtemp(prefix=f"bench-pipeline-{size}-{shards}-")
    conf, pid = os.path.join(workdir, "keepalived.conf"), os.path.join(workdir, "k.pid")
    settings = load(dict(
        vip_map=st.vip_map(range(SERVICES)), interface=vrrp_interface(),
        keepalived_conf=conf, keepalived_pidfile=pid, keepalived_shards=shards,
        quiet_period=0.2, max_delay=5, drain_seconds=600 if drain else 0, delay_loop=30,
        connect_timeout=3, retry=1, mass_removal_threshold=1, forwarding_method="DR",
        scheduler="rr", health_check="TCP_CHECK"))
    fakes = []
    for n in range(shards + 1):
        fake = FakeKeepalived(workdir, conf=conf if n == 0 else shard_conf(conf, n))
        os.replace(fake.pidfile, pid if n == 0 else shard_pidfile(pid, n))
        fakes.append(fake)
    timer = _Stages()
    if stages:
        # the shards' -t run side by side: their wall time, not the sum of each; one
        # file: what is new in it, then -t on that (check_new; check_file before it)
        timer.wrap(shards_module if shards else Keepalived,
                   "_check_all" if shards else
                   "check_new" if hasattr(Keepalived, "check_new") else "check_file",
                   "keepalived -t")
        timer.wrap(Keepalived if not shards else ShardedKeepalived, "render", "render")
        timer.wrap(Keepalived if not shards else ShardedKeepalived, "write", "write")
        timer.wrap(service.Director, "_reload", "reload+watcher")
    try:
        director = service.Director(settings, service.keepalived_for(settings))
        director.prepare()
        per = size // SERVICES
        inactive = {s: set() for s in range(SERVICES)}
        doc = st.topology({s: range(per) for s in range(SERVICES)})
        now = 1000.0
        director.handle(FeedUpdate("CompleteTopologyEvent", doc, "bench"), now)
        now += 10
        director.tick(now)
        if director.reloads != 1:
            raise RuntimeError(f"first apply: {director.last_apply}")
        times, split = [], {}
        for k in range(events):
            s, i = 1 + (k // 2) % (SERVICES - 1), (k // 2) % per
            name = ("MemberActivatedEvent" if i in inactive[s] else "MemberSuspendedEvent")
            (inactive[s].discard if i in inactive[s] else inactive[s].add)(i)
            reloads = director.reloads
            timer.seconds.clear()
            started = time.perf_counter()
            director.handle(FeedUpdate(name, st.member_event(s, i), "bench"), now)
            now += 10                       # past the quiet period: the tick converges
            director.tick(now)
            times.append(time.perf_counter() - started)
            if director.reloads != reloads + 1:
                raise RuntimeError(f"event {k}: no reload ({director.last_apply})")
            for stage, seconds in timer.seconds.items():
                split.setdefault(stage, []).append(seconds)
        out = {"size": size, "shards": shards, "drain": drain, "events": summary(times)}
        if stages:
            write = [w - t for w, t in zip(split.get("write", []),
                                           split.get("keepalived -t", []))]
            named = {"keepalived -t": split.get("keepalived -t", []),
                     "render": split.get("render", []), "write besides -t": write,
                     "reload+watcher": split.get("reload+watcher", [])}
            rest = [t - sum(v[j] for v in named.values() if len(v) > j)
                    for j, t in enumerate(times)]
            named["event, plan, guard, drain"] = rest
            out["stages"] = {k: round(statistics.median(v), 4) for k, v in named.items() if v}
        return out
    finally:
        for fake in fakes:
            fake.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _checkout(rev: str) -> str:
    """The package at *rev*, in a temporary directory (the test helpers, which
    start the fake keepalived, are this tree's)."""
    where = tempfile.mkdtemp(prefix="bench-pipeline-before-")
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev, "cartridge_agent_lvs"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", where], input=archive, check=True)
    return where


def _inner(root: str, args, size: int, shards: int) -> dict:
    """:func:`measure` in a fresh interpreter importing the package from *root*."""
    command = [sys.executable, os.path.abspath(__file__), "--inner", root,
               "--sizes", str(size), "--shards", str(shards), "--events", str(args.events)]
    command += ["--drain"] if args.drain else []
    command += ["--stages"] if args.stages else []
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"bench_pipeline: {root} {size} {shards}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def report(rows) -> str:
    lines = ["member event -> SIGHUP sent (s), lvs-extension's own work on this host "
             "(quiet period excluded)", "",
             f"{'real servers':>12}  {'layout':<18}{'code':<12}{'events':>6} "
             f"{'median':>8} {'p99':>8} {'max':>8}  stages (median s)"]
    for r in rows:
        layout = "single file" if r["shards"] == 0 else f"{r['shards']} shards + VRRP"
        e = r["events"]
        stages = ", ".join(f"{k} {v}" for k, v in r.get("stages", {}).items())
        lines.append(f"{r['size']:>12,}  {layout:<18}{r['code']:<12}{e['n']:>6} "
                     f"{e['median']:>8} {e['p99']:>8} {e['max']:>8}  {stages}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    layout_arguments(parser)
    parser.add_argument("--drain", action="store_true", help="drain_seconds 600")
    parser.add_argument("--before", metavar="REV", help="also measure the code at REV")
    parser.add_argument("--stages", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--inner", metavar="ROOT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        sys.path[:0] = [args.inner, ROOT]     # the package from there, tests from here
        print(json.dumps(measure(args.sizes[0], args.shards, args.events, args.drain,
                                 args.stages)))
        return 0
    roots = [("this tree", ROOT)]
    before = None
    if args.before:
        before = _checkout(args.before)
        roots.insert(0, (args.before[:10], before))
    rows = []
    try:
        for size in args.sizes:
            for shards in [{"single": 0, "sharded": args.shards}[name] for name in args.layouts]:
                for code, root in roots:
                    row = dict(_inner(root, args, size, shards), code=code)
                    rows.append(row)
                    print(report([row]).splitlines()[-1], flush=True)
    finally:
        if before:
            shutil.rmtree(before, ignore_errors=True)
    print()
    print(report(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
