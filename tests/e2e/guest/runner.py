"""Guest scenario runner of the end-to-end suite (runs INSIDE the VM, as root).

    python -m tests.e2e.guest.runner WORKDIR [--only a,b,...] [--deadline SECONDS]

Builds the lab (``lab.py``), configures it ONLY through the project's tools, runs the
scenarios in order and writes ``WORKDIR/results.json`` after every scenario, so a VM
that dies midway still reports what it saw. Logs of every process are in
``WORKDIR/logs``. Cleanup always runs.
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


class Results:
    def __init__(self, path: Path):
        self.path = path
        self.data = {"scenarios": {}, "setup": {}, "started": time.time()}

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


class Deadline(BaseException):  # not caught per scenario: it ends the run
    pass


def _on_alarm(signum, frame):
    raise Deadline("guest runner deadline reached")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--only", default="", help="comma-separated scenario letters")
    parser.add_argument("--deadline", type=float, default=300)
    parser.add_argument("--bin-dir", type=Path, help="take the project's console scripts from here "
                        "(default: beside this interpreter)")
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
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(int(args.deadline))
    suite = scenarios.Suite(args.workdir, results)
    try:
        suite.run(set(filter(None, args.only.split(","))))
    except BaseException as exc:  # noqa: BLE001 - recorded, then cleanup
        results.data["fatal"] = "".join(traceback.format_exception(exc))[-4000:]
    finally:
        signal.alarm(0)
        started = time.monotonic()
        results.data["cleanup_problems"] = suite.cleanup()
        results.data["cleanup_seconds"] = round(time.monotonic() - started, 2)
        results.data["finished"] = time.time()
        results.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
