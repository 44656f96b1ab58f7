"""Guest scenario runner of the end-to-end suite (runs INSIDE the VM, as root).

    python -m tests.e2e.guest.runner WORKDIR [--only a,b,...] [--deadline SECONDS]
                                             [--sync] [--break drain|health-check]

Builds the lab (``lab.py``), configures it ONLY through the project's tools, runs the
scenarios in order and writes ``WORKDIR/results.json`` after every scenario, so a VM
that dies midway still reports what it saw. Logs of every process are in
``WORKDIR/logs``. Cleanup always runs.

Time: each scenario (and the lab setup) has a budget for an idle machine
(``scenarios.BUDGETS``), multiplied by the guest's current slow-down (``pace.py``).
A scenario over its budget fails alone and the next one runs. ``WORKDIR/pace.json``
tells the host how long the guest may still need, so the host scales the VM's limit
the same way. ``--deadline`` is a hard cap on the whole run.

``--sync`` starts both directors with ``--sync-interface eth0`` (IPVS connection
sync; the host runs it as a separate VM with ``LVS_E2E_SYNC=1``). ``--break`` injects
a fault on purpose, to show that the suite catches it: ``drain`` starts the
directors with ``--drain-seconds 0``; ``health-check`` removes the real server
rs2's health check from every keepalived.conf the directors write before keepalived
reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from tests.e2e.guest import pace


class Results:
    def __init__(self, path: Path):
        self.path = path
        self.data = {"scenarios": {}, "setup": {}, "started": time.time()}

    def write(self) -> None:
        self.data["pace"] = pace.summary()
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


class Deadline(BaseException):  # not caught per scenario: it ends the run
    pass


class Clock:
    """SIGALRM for a scenario's budget (raises ``ScenarioTimeout``, caught per scenario)
    and for the run's hard cap (raises ``Deadline``). The scenario's deadline follows
    the pace factor: it is recomputed whenever a new sample arrives."""

    def __init__(self, hard_cap: float):
        self.hard_at = time.monotonic() + hard_cap
        self.started = None
        self.base = None
        self.label = None
        signal.signal(signal.SIGALRM, self._on_alarm)
        self._arm()

    def scenario_deadline(self):
        if self.started is None:
            return None
        return self.started + pace.scaled(self.base)

    def begin(self, label: str, base: float) -> None:
        self.label, self.base, self.started = label, base, time.monotonic()
        self._arm()

    def end(self) -> None:
        self.label = self.base = self.started = None
        self._arm()

    def remaining_now(self) -> float:
        deadline = self.scenario_deadline()
        return max(0.0, deadline - time.monotonic()) if deadline else 0.0

    def _arm(self) -> None:
        now = time.monotonic()
        times = [self.hard_at] + [t for t in (self.scenario_deadline(),) if t]
        signal.setitimer(signal.ITIMER_REAL, max(0.05, min(times) - now))

    def _on_alarm(self, signum, frame):
        from tests.e2e.guest.scenarios import ScenarioTimeout
        now = time.monotonic()
        if now >= self.hard_at:
            raise Deadline("guest runner deadline (hard cap) reached")
        deadline = self.scenario_deadline()
        if deadline is not None and now >= deadline:
            label, base = self.label, self.base
            self.end()        # once; the scenario's cleanup runs without an alarm
            raise ScenarioTimeout(f"{label}: over its time budget of {pace.scaled(base):.0f} s "
                                  f"({base:.0f} s on an idle machine x pace factor "
                                  f"{pace.factor():.2f})")
        self._arm()           # the pace factor grew meanwhile: the deadline moved

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--only", default="", help="comma-separated scenario letters")
    parser.add_argument("--deadline", type=float, default=3600, help="hard cap, seconds")
    parser.add_argument("--bin-dir", type=Path, help="take the project's console scripts from here "
                        "(default: beside this interpreter)")
    parser.add_argument("--sync", action="store_true", help="directors sync IPVS connections")
    parser.add_argument("--shards", type=int, default=0,
                        help="keepalived_shards of both directors (0: one keepalived.conf)")
    parser.add_argument("--break", dest="fault", choices=("drain", "health-check"),
                        help="inject this fault on purpose (negative check of the suite)")
    args = parser.parse_args(argv)
    from tests.e2e.guest import scenarios
    if args.bin_dir:
        scenarios.BIN_DIR = args.bin_dir

    # the agent's record of changes: inside the shared work folder (the guest's root
    # file system is the host's, read-only)
    os.environ["CARTRIDGE_AGENT_LVS_STATE_DIR"] = str(args.workdir / "agent-state")
    results = Results(args.workdir / "results.json")
    with open("/proc/uptime") as f:
        results.data["guest_started_uptime"] = float(f.read().split()[0])
    results.data["sync"] = args.sync
    results.data["fault"] = args.fault
    results.data["shards"] = args.shards
    suite = scenarios.Suite(args.workdir, results, sync=args.sync, fault=args.fault,
                            shards=args.shards)
    selected = suite.selected(set(filter(None, args.only.split(","))))
    results.data["selected"] = selected
    clock = Clock(args.deadline)
    publisher = pace.Publisher(args.workdir / "pace.json")

    def remaining() -> float:
        left = clock.remaining_now()
        done = set(results.data["scenarios"]) | ({"setup"} if results.data["setup"] else set())
        todo = [k for k in ["setup", *selected] if k not in done and k != clock.label]
        return left + sum(pace.scaled(scenarios.BUDGETS[k]) for k in todo) \
            + pace.scaled(scenarios.BUDGETS["cleanup"])

    publisher.remaining = remaining
    pace.on_change(publisher.write)
    suite.on_step = publisher.write
    suite.clock = clock
    publisher.write()
    try:
        suite.run(selected)
    except BaseException as exc:  # noqa: BLE001 - recorded, then cleanup
        results.data["fatal"] = "".join(traceback.format_exception(exc))[-4000:]
    finally:
        clock.stop()
        started = time.monotonic()
        results.data["cleanup_problems"] = suite.cleanup()
        results.data["cleanup_seconds"] = round(time.monotonic() - started, 2)
        results.data["finished"] = time.time()
        results.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
