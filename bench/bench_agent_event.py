#!/usr/bin/env python3
"""What one Stratos agent event costs an instance: set up one VIP, then clean up.

Side by side, in one run, each round in a fresh throwaway network namespace:

* in-process: ``fire("CreateLVSDummyInterface")`` then ``fire("clean")`` -- the hooks
  called directly (a Python 3 agent that can import the package);
* subprocess: what the shim does inside the real, Python 2.7 agent -- the console
  script ``cartridge-agent-lvs agent-event`` started once per event, the agent's
  ``values`` as JSON on stdin, one JSON line back (process start + import + netlink
  + sysctls + state file);
* baseline: the stock bash extension's commands -- ``CreateLVSDummyInterface.sh`` as
  Stratos ships it (``modprobe dummy numdummies=1``, ``ifconfig dummy0 VIP netmask
  MASK``, ``echo``; the text of ``tests/realserver/pca_agent.py``) run by ``bash`` with
  the agent's ``STRATOS_*`` variables, and at cleanup one ``bash`` running ``ifconfig
  dummy0 0.0.0.0`` (the stock agent has no undo at all): the same process-start
  class, without ARP settings, record or undo.  The host kernel has no dummy driver:
  ``modprobe`` fails at once here (on a host where the module is loaded it returns at
  once too) and ``dummy0`` is a veth named so that ``ifconfig`` has its target.

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
from tests.realserver.pca_agent import STOCK_EXTENSION  # noqa: E402

VIP = "192.168.56.40"
VALUES = {"MEMBER_ID": "tomcat.member-7", "SERVICE_NAME": "tomcat",
          "LVS_VIRTUAL_IP": f"{VIP}|255.255.255.0", "LVS_DUMMY_VIRTUAL_IP": VIP,
          "LVS_SUBNET_MASK": "255.255.255.0", "MB_IP": "127.0.0.1"}
SCRIPT = os.path.join(os.path.dirname(sys.executable), "cartridge-agent-lvs")
#: what the console script imports before it does anything
CLI_MODULE = "cartridge_agent_lvs.realserver.cli"


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


def stock_event(ns: str, verb: str) -> None:
    """The stock extension's commands: its CreateLVSDummyInterface.sh, or the undo."""
    script = STOCK_EXTENSION if verb == "add" else "ifconfig dummy0 0.0.0.0\n"
    env = dict(os.environ, STRATOS_LVS_DUMMY_VIRTUAL_IP=VIP, STRATOS_LVS_SUBNET_MASK="255.255.255.0")
    subprocess.run(["ip", "netns", "exec", ns, "bash", "-c", script], env=env, check=True,
                   capture_output=True)


def stock_target(ns: str) -> None:
    """A link named dummy0 for ``ifconfig`` (no dummy driver on this kernel: a veth)."""
    subprocess.run(["ip", "-n", ns, "link", "add", "dummy0", "type", "veth", "peer", "name",
                    "dummy0p"], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "dummy0", "up"], check=True)


def stock_bound(ns: str) -> bool:
    out = subprocess.run(["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "dummy0"],
                         capture_output=True, text=True, check=True).stdout
    return f" {VIP}/24 " in out


def run(rounds: int) -> dict:
    default_plugin_manager()          # built once per process, as in a long-lived agent
    times = {k: [] for k in ("inproc-start", "inproc-clean", "sub-start", "sub-clean",
                             "bash-start", "bash-clean", "py-start", "py-import")}
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
                stock_target(ns)
                times["bash-start"].append(timed(lambda: stock_event(ns, "add")) - wrapper)
                assert stock_bound(ns), "the stock script did not bind the VIP"
                times["bash-clean"].append(timed(lambda: stock_event(ns, "del")) - wrapper)
                assert not stock_bound(ns), "the stock undo left the VIP"
        # where a subprocess event's time goes: the interpreter's start, then the imports
        times["py-start"].append(timed(lambda: subprocess.run([sys.executable, "-c", "pass"],
                                                             check=True)))
        times["py-import"].append(timed(lambda: subprocess.run(
            [sys.executable, "-c", f"import {CLI_MODULE}"], check=True)))
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def report(m: dict, rounds: int) -> None:
    print(f"one VIP, median of {rounds} rounds (ms per event)")
    print(f"{'':36}{'set up':>10}{'clean':>10}")
    for label, key in (("in-process fire()", "inproc"),
                       ("subprocess agent-event", "sub"),
                       ("baseline: stock bash extension", "bash")):
        print(f"{label:36}{m[key + '-start']:10.1f}{m[key + '-clean']:10.1f}")
    print(f"subprocess / in-process: {m['sub-start'] / m['inproc-start']:.1f}x (set up), "
          f"{m['sub-clean'] / m['inproc-clean']:.1f}x (clean)")
    print(f"subprocess / stock bash extension: {m['sub-start'] / m['bash-start']:.1f}x (set up), "
          f"{m['sub-clean'] / m['bash-clean']:.1f}x (clean)")
    print(f"of a subprocess event: Python start {m['py-start']:.1f} ms, start + import of "
          f"{CLI_MODULE} {m['py-import']:.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    report(run(args.rounds), args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
