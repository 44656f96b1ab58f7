"""``bench/bench_feeds.py`` in its smallest configuration: the harness runs, its
baseline really applies once per event, and broken bookkeeping fails the bench (one
line, exit 1) instead of printing figures."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ._service import vrrp_interface
from .conftest_broker import broker, broker_factory  # noqa: F401

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_feeds.py"
SMALLEST = ["--services", "1", "--members", "40", "--events", "2", "--storm", "6",
            "--rounds", "1", "--absorb", "20", "--quiet", "0.05"]


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_feeds", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _bench_module()


@pytest.fixture(autouse=True)
def _keepalived_host():
    vrrp_interface()        # keepalived -t needs an Ethernet interface (fails in CI)


def test_smallest_configuration_runs_and_applies_once_per_event():
    proc = subprocess.run([sys.executable, str(BENCH)] + SMALLEST, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = dict(re.findall(r"^\s+1\s+(\w[\w ]*): .*?\s(\d+)\s+[\d.]+s$", proc.stdout,
                           re.MULTILINE))
    assert rows["baseline"] == "6", proc.stdout          # one reload per event
    assert rows["coalesced"] == "1", proc.stdout         # 6 events in 1 s, quiet 0.5 s
    assert "baseline / coalesced: 6.0x the reloads" in proc.stdout
    assert "FAILED" not in proc.stdout + proc.stderr


def test_a_baseline_that_folds_events_fails_the_bench(monkeypatch, capsys):
    # the old baseline's fault: updates queued during an apply folded into the next;
    # 20 events at once queue up behind the first apply
    monkeypatch.setattr(bench.BenchDirector, "apply_now", lambda self, now: None)
    assert bench.main(SMALLEST + ["--storm", "20", "--storm-seconds", "0"]) == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1, err
    assert re.match(r"bench_feeds: FAILED: 2\. storm, round 1, baseline: \d+ applies and "
                    r"\d+ reloads for 20 events, expected 20 of each$", err), err
    assert "median" not in out


def test_lost_count_file_fails_the_stage_and_files_outlive_the_stand_in(broker):  # noqa: F811
    workdir = tempfile.mkdtemp(prefix="lvs-test-bench-")
    try:
        with pytest.raises(bench.BenchError, match="count file .*No such file"):
            with bench.Bench(workdir, broker, 1, 10, 0.05) as b:
                mark = b.mark()
                os.remove(b.fake.count_file)
                b.account(mark, 0, 10)
        assert b.fake.proc.returncode is not None       # stopped, then its files went
        assert not os.path.exists(b.workdir)
        assert not b.thread.is_alive()
    finally:
        os.rmdir(workdir)
