#!/usr/bin/env python3
"""What one Stratos agent event costs an instance: set up one VIP, then clean up.

Side by side, in one run, each round in a fresh throwaway network namespace:

* in-process: ``fire("CreateLVSDummyInterface")`` then ``fire("clean")`` -- the hooks
  called directly (a Python 3 agent that can import the package);
* subprocess: what the shim does inside the real, Python 2.7 agent -- the console
  script ``cartridge-agent-lvs agent-event`` started once per event, the agent's
  ``values`` as JSON on stdin, one JSON line back (process start + import + netlink
  + sysctls + state file);
* baseline: the stock bash extension's way -- one ``bash`` process per event running
  one address command (``ip addr add VIP/24`` at start, ``ip addr del`` at cleanup):
  the same process-start class, without ARP settings, record or undo.  (The stock
  script's ``modprobe dummy; ifconfig dummy0`` cannot run here: no dummy driver.)

Medians per event and the ratios are printed.  Usage (root):
``.venv/bin/python bench/bench_agent_event.py [--rounds 15]``
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

from bench_realserver import Namespace  # noqa: E402

from cartridge_agent_lvs.pluginmanager import Context, default_plugin_manager, fire  # noqa: E402

VIP = "192.168.56.40"
VALUES = {"MEMBER_ID": "tomcat.member-7", "SERVICE_NAME": "tomcat",
          "LVS_VIRTUAL_IP": f"{VIP}|255.255.255.0", "LVS_DUMMY_VIRTUAL_IP": VIP,
          "LVS_SUBNET_MASK": "255.255.255.0", "MB_IP": "127.0.0.1"}
SCRIPT = os.path.join(os.path.dirname(sys.executable), "cartridge-agent-lvs")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def in_process(ns: str, state: str, event: str) -> None:
    outcome = fire(event, dict(VALUES), Context(ns, state), log_errors=False)
    assert outcome.ok, outcome.lines()


def subprocess_event(ns: str, state: str, event: str) -> None:
    proc = subprocess.run(["ip", "netns", "exec", ns, SCRIPT, "agent-event",
                           "--state-dir", state], input=json.dumps(dict(VALUES, EVENT=event)),
                          capture_output=True, text=True)
    assert json.loads(proc.stdout)["ok"], proc.stdout + proc.stderr


def bash_event(ns: str, verb: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "bash", "-c",
                    f"ip addr {verb} {VIP}/24 dev lo"], check=True)


def run(rounds: int) -> dict:
    default_plugin_manager()          # built once per process, as in a long-lived agent
    times = {k: [] for k in ("inproc-start", "inproc-clean", "sub-start", "sub-clean",
                             "bash-start", "bash-clean")}
    for i in range(rounds):
        with tempfile.TemporaryDirectory() as state:
            with Namespace(f"a{i}") as ns:
                times["inproc-start"].append(timed(lambda: in_process(
                    ns, state, "CreateLVSDummyInterface")))
                times["inproc-clean"].append(timed(lambda: in_process(ns, state, "clean")))
            with Namespace(f"b{i}") as ns:
                # the child joins the namespace itself (ip netns exec), as the agent's
                # children do: subtract that wrapper's cost, measured the same way
                wrapper = timed(lambda: subprocess.run(["ip", "netns", "exec", ns, "true"],
                                                       check=True))
                times["sub-start"].append(timed(lambda: subprocess_event(
                    ns, state, "CreateLVSDummyInterface")) - wrapper)
                times["sub-clean"].append(timed(lambda: subprocess_event(
                    ns, state, "clean")) - wrapper)
                times["bash-start"].append(timed(lambda: bash_event(ns, "add")) - wrapper)
                times["bash-clean"].append(timed(lambda: bash_event(ns, "del")) - wrapper)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    m = run(args.rounds)
    print(f"one VIP, median of {args.rounds} rounds (ms per event)")
    print(f"{'':28}{'set up':>10}{'clean':>10}")
    for label, key in (("in-process fire()", "inproc"),
                       ("subprocess agent-event", "sub"),
                       ("baseline: bash + ip", "bash")):
        print(f"{label:28}{m[key + '-start']:10.1f}{m[key + '-clean']:10.1f}")
    print(f"subprocess / in-process: {m['sub-start'] / m['inproc-start']:.1f}x (set up), "
          f"{m['sub-clean'] / m['inproc-clean']:.1f}x (clean)")
    print(f"subprocess / bash baseline: {m['sub-start'] / m['bash-start']:.1f}x (set up), "
          f"{m['sub-clean'] / m['bash-clean']:.1f}x (clean)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
