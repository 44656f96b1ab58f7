"""Host side of the end-to-end suite: boot ONE guest per session, read its results.

The guest runs ``tests/e2e/guest/runner.py`` with this very interpreter (the guest sees
the host's root filesystem), which writes ``results.json`` and process logs into a
directory shared read-write with the host. Each test then asserts on its scenario.

Time: the guest calibrates itself (``guest/pace.py``: its first project command,
timed alone, and every later one, against what one takes on an idle CI machine) and
scales every budget for emulation work by that factor -- waits, each scenario's time
limit, and through ``pace.json`` the VM's limit here (``vm.VmLimit``). The product's
own timers are asserted unscaled (``test_e2e.py``).

Environment:
    LVS_E2E_WORKDIR   keep the shared directory here (default: a pytest temp dir)
    LVS_E2E_ONLY      comma-separated scenario letters to run (default: all); "demo"
                      alone runs only tests/e2e/test_demo.py (its own VM)
    LVS_E2E_TIMEOUT   hard cap on the VM's wall time in seconds, whatever the pace
                      (default 3600)
    LVS_E2E_CACHE     kernel cache directory (see kernel.py)
    LVS_E2E_KVM=1     use KVM instead of software emulation
    LVS_E2E_BIN_DIR   take cartridge-agent-lvs and lvs-extension from this directory
    LVS_E2E_REQUIRED  fail (not skip) when the machine cannot boot a guest (.ci/run)
    LVS_E2E_SHARDS    keepalived_shards of the lab's directors (default 0: the single
                      keepalived.conf; N: lvs-extension writes a VRRP file and N shard
                      files, run by keepalived -P and N keepalived -C, and every scenario
                      runs on that layout)
    LVS_E2E_SYNC=1    the connection-sync run: both directors with ``--sync-interface
                      eth0``; scenarios a and d unless LVS_E2E_ONLY says otherwise
    LVS_E2E_BREAK     NEGATIVE CHECK of the suite itself -- inject a fault that the
                      tests must catch: ``drain`` (directors run with
                      ``--drain-seconds 0``: b fails) or ``health-check`` (rs2's
                      health check deleted from every keepalived.conf before
                      keepalived reads it: c fails). Never set it otherwise.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.kernel import KernelUnavailable, ensure_kernel
from tests.e2e.vm import GuestUnavailable, VmLimit, boot, check_host

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
    limit: str = ""
    host_load: dict = field(default_factory=dict)

    @property
    def factor(self) -> float:
        """The guest's pace factor (>= 1): budgets for emulation work were scaled by it."""
        return float(self.results.get("pace", {}).get("factor") or 1.0)

    def factor_at(self, measurements: dict) -> float:
        """The pace factor for a scenario that also timed one project command at the
        moment it measured (``pace_at_moment``): the run's median misses a spike of load
        (the ECMP lab's own daemons, another guest on the host)."""
        return max(self.factor, float(measurements["pace_at_moment"]))

    @property
    def sync(self) -> bool:
        return bool(self.results.get("sync"))

    def scenario(self, key: str) -> dict:
        """The scenario's results; fails the test with the reason when there are none.

        A scenario this run did not select (LVS_E2E_ONLY, or the sync run) is skipped."""
        selected = self.results.get("selected")
        if selected is not None and key not in selected:
            pytest.skip(f"scenario {key} not selected in this run (selected: {','.join(selected)})")
        found = self.results.get("scenarios", {}).get(key)
        if not found:
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
                 f"measurements: {json.dumps(found['measurements'])}",
                 f"pace factor {self.factor:.2f} (budgets for emulation work x factor)", "evidence:"]
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
    if os.environ.get("LVS_E2E_ONLY", "").strip() == "demo":    # test_demo.py boots its own VM
        pytest.skip("LVS_E2E_ONLY=demo: only the demo runs")
    hard_cap = float(os.environ.get("LVS_E2E_TIMEOUT", "3600"))
    command = [sys.executable, "-m", "tests.e2e.guest.runner", str(workdir),
               "--deadline", str(int(hard_cap - 60))]
    if os.environ.get("LVS_E2E_ONLY"):
        command += ["--only", os.environ["LVS_E2E_ONLY"]]
    if os.environ.get("LVS_E2E_BIN_DIR"):
        command += ["--bin-dir", os.environ["LVS_E2E_BIN_DIR"]]
    if os.environ.get("LVS_E2E_SYNC") == "1":
        command += ["--sync"]
    command += ["--shards", os.environ.get("LVS_E2E_SHARDS", "0")]
    if os.environ.get("LVS_E2E_BREAK"):
        command += ["--break", os.environ["LVS_E2E_BREAK"]]
    limit = VmLimit(workdir / "pace.json", hard_cap)
    load = HostLoad()
    started = time.monotonic()
    result = boot(kernel, command, workdir, timeout=hard_cap, cwd=REPO, limit=limit)
    wall = time.monotonic() - started
    results_file = workdir / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    problem = None
    if result.timed_out:
        problem = f"the VM was killed at its limit of {result.limit}"
    elif not results:
        problem = f"the guest wrote no results (vng exit {result.returncode})"
    boot_seconds = results.get("guest_started_uptime")
    return GuestRun(workdir, results, boot_seconds or 0.0, wall, result.output, problem,
                    limit=result.limit, host_load=load.finish())


class HostLoad:
    """How busy the host's CPUs were with OTHER work than this VM while it ran: the
    machine's busy time (``/proc/stat``) minus the CPU time of this process's children
    (vng, QEMU), in cores on average."""

    def __init__(self):
        self.started = time.monotonic()
        self.busy = self._busy()
        self.children = self._children()

    @staticmethod
    def _busy() -> float:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
        return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _children() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def finish(self) -> dict:
        wall = time.monotonic() - self.started
        busy, vm = self._busy() - self.busy, self._children() - self.children
        return {"cpus": os.cpu_count(), "vm_cores": round(vm / wall, 2),
                "other_cores": round(max(0.0, busy - vm) / wall, 2)}


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
        if run.results.get("fault"):
            tr.write_line(f"*** FAULT INJECTED ON PURPOSE (LVS_E2E_BREAK={run.results['fault']}): "
                          "this run must fail ***")
        if run.sync:
            tr.write_line("connection-sync run: both directors with --sync-interface eth0")
        tr.write_line(f"VM wall time (boot + scenarios + power-off): {run.wall_seconds:.1f} s; "
                      f"guest userspace reached at {run.boot_seconds:.1f} s uptime; "
                      f"VM limit {run.limit}")
        pace = run.results.get("pace", {})
        samples = [s for _, s in pace.get("samples", [])]
        tr.write_line(f"pace factor {run.factor:.2f} (median of {len(samples)} project commands "
                      f"{sorted(samples)[len(samples) // 2] if samples else '-'} s / reference "
                      f"{pace.get('unit_reference')} s); host: {run.host_load.get('cpus')} CPUs, "
                      f"this VM {run.host_load.get('vm_cores')} cores, other processes "
                      f"{run.host_load.get('other_cores')} cores on average")
        setup = run.results.get("setup", {})
        if setup:
            tr.write_line(f"  setup [{'ok' if setup.get('ok') else 'FAILED'}, {setup.get('seconds')} s "
                          f"of {setup.get('budget_seconds')} s]")
        for key, found in sorted(run.results.get("scenarios", {}).items()):
            if not found:
                continue
            verdict = "ok" if found.get("ok") else "FAILED"
            tr.write_line(f"  {key} [{verdict}, {found.get('seconds')} s of {found.get('budget_seconds')} s] "
                          f"{found.get('title')}: {json.dumps(found.get('measurements'), sort_keys=True)}")
        tr.write_line(f"shared directory (results.json, logs/): {run.workdir}")
