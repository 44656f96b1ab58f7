"""Host side of the end-to-end suite: boot ONE guest per session, read its results.

The guest runs ``tests/e2e/guest/runner.py`` with this very interpreter (the guest sees
the host's root filesystem), which writes ``results.json`` and process logs into a
directory shared read-write with the host. Each test then asserts on its scenario.

Environment:
    LVS_E2E_WORKDIR   keep the shared directory here (default: a pytest temp dir)
    LVS_E2E_ONLY      comma-separated scenario letters to run (default: all)
    LVS_E2E_TIMEOUT   seconds before the VM is killed (default 420)
    LVS_E2E_CACHE     kernel cache directory (see kernel.py)
    LVS_E2E_KVM=1     use KVM instead of software emulation
    LVS_E2E_BIN_DIR   take cartridge-agent-lvs and lvs-extension from this directory
    LVS_E2E_REQUIRED  fail (not skip) when the machine cannot boot a guest (.ci/run)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.kernel import KernelUnavailable, ensure_kernel
from tests.e2e.vm import GuestUnavailable, boot, check_host

REPO = Path(__file__).resolve().parents[2]
LOG_TAIL_LINES = 25


@dataclass
class GuestRun:
    workdir: Path
    results: dict
    boot_seconds: float
    wall_seconds: float
    vng_output: str
    problem: str | None = None
    figures: dict = field(default_factory=dict)

    def scenario(self, key: str) -> dict:
        """The scenario's results; fails the test with the reason when there are none."""
        found = self.results.get("scenarios", {}).get(key)
        if found is None:
            pytest.fail(f"scenario {key} reported nothing\n{self.overview()}", pytrace=False)
        return found

    def expect_ok(self, key: str) -> dict:
        found = self.scenario(key)
        if not found["ok"]:
            pytest.fail(self.report(key), pytrace=False)
        return found

    def report(self, key: str) -> str:
        found = self.scenario(key)
        lines = [f"scenario {key} ({found['title']}) failed: {found['error']}",
                 f"measurements: {json.dumps(found['measurements'])}", "evidence:"]
        lines += [f"  {line}" for line in found["evidence"]]
        for log in found.get("logs", []) + ["runner.log"]:
            lines += self.tail(log)
        lines.append(f"(all logs: {self.workdir / 'logs'})")
        return "\n".join(lines)

    def tail(self, name: str) -> list:
        path = self.workdir / "logs" / name
        if not path.exists():
            return []
        text = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        return [f"--- tail of {name}"] + [f"  {line}" for line in text]

    def overview(self) -> str:
        lines = [self.problem or "", f"fatal: {self.results.get('fatal')}",
                 f"setup: {self.results.get('setup', {}).get('error')}",
                 "--- vng output (tail)"] + self.vng_output.splitlines()[-40:]
        lines += self.tail("runner-setup.log")
        return "\n".join(lines)


def _guest_run(workdir: Path) -> GuestRun:
    try:
        check_host()
        kernel = ensure_kernel()
    except (GuestUnavailable, KernelUnavailable) as exc:
        message = f"this machine cannot boot a test guest: {exc}"
        if os.environ.get("LVS_E2E_REQUIRED"):      # CI: the suite must run
            pytest.fail(f"end-to-end suite required (LVS_E2E_REQUIRED) but {message}",
                        pytrace=False)
        pytest.skip(f"end-to-end suite skipped, {message}")
    timeout = float(os.environ.get("LVS_E2E_TIMEOUT", "420"))
    command = [sys.executable, "-m", "tests.e2e.guest.runner", str(workdir),
               "--deadline", str(int(timeout - 40))]
    if os.environ.get("LVS_E2E_ONLY"):
        command += ["--only", os.environ["LVS_E2E_ONLY"]]
    if os.environ.get("LVS_E2E_BIN_DIR"):
        command += ["--bin-dir", os.environ["LVS_E2E_BIN_DIR"]]
    started = time.monotonic()
    result = boot(kernel, command, workdir, timeout=timeout, cwd=REPO)
    wall = time.monotonic() - started
    (workdir / "vng.log").write_text(result.output)
    results_file = workdir / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    problem = None
    if result.timed_out:
        problem = f"the VM was killed after {timeout:.0f} s"
    elif not results:
        problem = f"the guest wrote no results (vng exit {result.returncode})"
    boot_seconds = results.get("guest_started_uptime")
    return GuestRun(workdir, results, boot_seconds or 0.0, wall, result.output, problem)


@pytest.fixture(scope="session")
def e2e(tmp_path_factory) -> GuestRun:
    """The one guest run of this session (booted on first use)."""
    workdir = os.environ.get("LVS_E2E_WORKDIR")
    if workdir:
        path = Path(workdir)
        shutil.rmtree(path, ignore_errors=True)  # nothing stale may pass for this run's output
        path.mkdir(parents=True)
    else:
        path = tmp_path_factory.mktemp("e2e")
    run = _guest_run(path)
    _RUNS.append(run)
    return run


_RUNS: list = []


def pytest_terminal_summary(terminalreporter):
    for run in _RUNS:
        tr = terminalreporter
        tr.section("end-to-end figures")
        tr.write_line(f"VM wall time (boot + scenarios + power-off): {run.wall_seconds:.1f} s; "
                      f"guest userspace reached at {run.boot_seconds:.1f} s uptime")
        for key, found in sorted(run.results.get("scenarios", {}).items()):
            verdict = "ok" if found["ok"] else "FAILED"
            tr.write_line(f"  {key} [{verdict}, {found['seconds']} s] {found['title']}: "
                          f"{json.dumps(found['measurements'], sort_keys=True)}")
        tr.write_line(f"shared directory (results.json, logs/): {run.workdir}")
