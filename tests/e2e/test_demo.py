"""The README's first command, run for real: ``scripts/demo`` boots its own kernel VM.

It runs as the user runs it (``python -m demo``, what ``scripts/demo`` starts, with this
env's interpreter) and is held to what it tells: the numbers it prints are the facts
the guest measured (``events.jsonl``), and those facts must show LVS working. The
product's timers (``drain_seconds``, ``advert_int``) are asserted unscaled; only the
allowance for processing on top of them grows with the guest's pace.

A second VM after the suite's own (a few minutes under emulation). Skipped like the
suite where no guest can boot, and when ``LVS_E2E_ONLY`` is set without ``demo``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demo import guest as G
from demo.host import why_no_vm

pytestmark = pytest.mark.e2e      # boots a VM: never in `pytest -m "not e2e"`

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    only = os.environ.get("LVS_E2E_ONLY")
    if only and "demo" not in only.split(","):
        pytest.skip(f"LVS_E2E_ONLY={only} does not name demo")
    reason, _ = why_no_vm()
    if reason:
        if os.environ.get("LVS_E2E_REQUIRED"):
            pytest.fail(f"the demo's VM is required (LVS_E2E_REQUIRED) but {reason}", pytrace=False)
        pytest.skip(f"no guest can boot here: {reason}")
    base = os.environ.get("LVS_E2E_WORKDIR")
    # beside the suite's folder, which its fixture empties
    workdir = Path(f"{base.rstrip('/')}-demo") if base else tmp_path_factory.mktemp("demo")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "demo", "--keep", str(workdir)], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - started
    print(proc.stdout)
    print(f"demo wall time: {wall:.1f} s")
    events = {}
    if (workdir / "events.jsonl").exists():
        for line in (workdir / "events.jsonl").read_text().splitlines():
            event = json.loads(line)
            events.setdefault(event["kind"], []).append(event)
    return proc, events


def test_the_demo_tells_its_story_to_the_end(demo_run):
    proc, events = demo_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert events["end"] == [dict(events["end"][0], ok=True)]
    for header in ("1. Requests are spread", "2. A member leaves", "3. The MASTER director dies",
                   "4. `lvs-extension stats`", "5. Torn down", "Done:"):
        assert header in proc.stdout
    assert "FAILED" not in proc.stdout


def test_the_real_servers_were_set_up_by_the_plugin(demo_run):
    _, events = demo_run
    done = {e["name"]: e for e in events["realserver"]}
    assert sorted(done) == ["member-1", "member-2", "member-3"]
    for e in done.values():
        assert e["vip_bound"] and e["dummy"] and e["sysctls"] == {"arp_ignore": "1", "arp_announce": "2"}, e
    assert [e["role"] for e in sorted(events["director"], key=lambda e: e["name"])] == ["MASTER", "BACKUP"]


def test_requests_are_spread_round_robin(demo_run):
    _, events = demo_run
    before, after = events["spread"]
    assert before["answers"] == {"member-1": 10, "member-2": 10}
    assert after["answers"] == {"member-1": 10, "member-2": 10, "member-3": 10}


def test_the_leaving_member_is_drained_then_removed(demo_run):
    _, events = demo_run
    (e,) = events["drained"]
    assert "member-2" not in e["during"] and sum(e["during"].values()) == 10, e
    assert e["after"] == {"member-1": 10, "member-3": 10}
    for director, seconds in e["removed_seconds"].items():
        # never removed before drain_seconds (a product timer: unscaled)
        assert seconds >= G.DRAIN_SECONDS and seconds > e["weight0_seconds"], (director, e)


def test_the_backup_takes_over_and_the_client_sees_the_gap(demo_run):
    _, events = demo_run
    (e,) = events["failover"]
    # VRRP: the BACKUP declares the MASTER dead 3 x advert_int + skew after the last
    # advertisement it heard, which the MASTER sent up to one advert_int before its
    # cable was pulled (3 x advert_int from the pull failed a run at 2.95 s); the clock
    # starts before the ip process that pulls it
    backup_priority = G.DIRECTORS["dir2"][1]
    earliest = 3 * G.ADVERT_INT + (256 - backup_priority) / 256 * G.ADVERT_INT - G.ADVERT_INT
    assert e["takeover_seconds"] >= earliest - 0.1, e
    # the client sees it: no answer from the last one through dir1 until dir2 took over
    # (a request every 0.1 s); the takeover as timed above also holds the kill of dir1's
    # processes and the look at dir2's addresses, so it is not compared with the gap
    assert e["failed"] > 0 and e["gap_seconds"] >= earliest - 0.3, e
    assert e["answers_after"] == {"member-1": 10, "member-3": 10}, e


def test_stats_counts_exactly_what_the_client_got(demo_run):
    _, events = demo_run
    (e,) = events["stats"]
    assert e["director"] == "dir2" and e["conns"] == e["client_answers"] == events["failover"][0]["answers_after"]


def test_nothing_is_left(demo_run):
    _, events = demo_run
    (e,) = events["teardown"]
    assert e["problems"] == [] and e["namespaces_left"] == [], e
