"""The README's first command, ``scripts/demo`` (``demo/``), on this host.

The story in the VM runs in the e2e env (``tests/e2e/test_demo.py``). Here: the words
for each event the guest reports, the host's live narration (events read as they are
written), the reasons a machine cannot boot a guest, and the fallback -- run for real:
the namespace demo and ``lvs-extension render`` / ``check`` (real ``keepalived -t``).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from cartridge_agent_lvs.director.stats import DestStats, ServiceStats, format_table, snapshot
from demo import host, story

ROOT = Path(__file__).resolve().parent.parent

EVENTS = [
    {"kind": "guest", "t": 0.0, "uptime": 6.4, "cpus": 2},
    {"kind": "lab", "t": 0.1, "client": "192.168.56.2", "directors": {"dir1": "10.0.1.2", "dir2": "10.0.1.3"},
     "members": {"member-1": ["10.0.1.11", "Active"], "member-3": ["10.0.1.13", "Starting"]},
     "vip": "192.168.56.40", "topology": "deploy/examples/topology.json",
     "payload": "payload_samples/single-vip-netmask.launch-params"},
    {"kind": "realserver", "t": 30.0, "name": "member-1", "seconds": 29.6, "output": [],
     "vip_bound": True, "dummy": True, "sysctls": {"arp_ignore": "1", "arp_announce": "2"}},
    {"kind": "director", "t": 31.0, "name": "dir2", "role": "BACKUP", "seconds": 30.4,
     "virtual_servers": 1, "real_servers": 2},
    {"kind": "serving", "t": 35.0, "master": "dir1", "vip": "192.168.56.40", "seconds": 34.9,
     "vip_seconds": 1.0, "served": ["member-1", "member-2"],
     "states": {"member-1": "Active", "member-2": "Active", "member-3": "Starting"}},
    {"kind": "spread", "t": 36.0, "requests": 20, "answers": {"member-2": 10, "member-1": 10},
     "served": ["member-1", "member-2"]},
    {"kind": "joined", "t": 38.0, "member": "member-3", "seconds": 1.52, "served": []},
    {"kind": "drained", "t": 45.0, "member": "member-2", "drain_seconds": 3, "weight0_seconds": 0.71,
     "during": {"member-1": 5, "member-3": 5}, "listed_during": True,
     "removed_seconds": {"dir1": 3.9, "dir2": 4.02}, "after": {"member-1": 10, "member-3": 10}},
    {"kind": "failover", "t": 52.0, "takeover_seconds": 3.41, "gap_seconds": 3.66,
     "first_answer_seconds": 3.7, "failed": 7, "requests": 60, "advert_int": 1,
     "answers_after": {"member-1": 10, "member-3": 10}},
]


def test_every_step_is_told_with_its_numbers():
    text = "\n".join(line for e in EVENTS for line in story.lines(e))
    for expected in ("userspace at 6.4 s", "member-3 10.0.1.13 (Starting)",
                     "cartridge-agent-lvs apply --payload payload_samples/single-vip-netmask.launch-params",
                     "member-1 set up by cartridge-agent-lvs apply after 30 s: the VIP bound as /32",
                     "arp_announce=2 arp_ignore=1",
                     "dir2: lvs-extension wrote keepalived.conf after 30 s (1 virtual server, 2 real servers); "
                     "keepalived started as BACKUP",
                     "dir1 (MASTER) holds the VIP 192.168.56.40; IPVS sends its port 80 to member-1, member-2",
                     "(member-3: 'Starting' in the topology",
                     "20 requests from the client to http://VIP/: member-1 10, member-2 10",
                     "send it traffic 1.5 s later",
                     "weight 0 on dir1 after 0.7 s", "10 requests during the drain: member-1 5, member-3 5",
                     "gone from IPVS after 3.9 s on dir1, 4.0 s on dir2 (drain_seconds 3)",
                     "dir2 holds the VIP 3.4 s later",
                     "gap seen by the client: 3.7 s without an answer, 7 of 60 requests failed",
                     "answers since the crash: member-1 10, member-3 10"):
        assert expected in text, expected
    numbered = [line.strip()[:2] for line in text.splitlines() if line[:1].isdigit()]
    assert numbered == ["1.", "2.", "3."]


def _stats_output() -> str:
    """The table ``lvs-extension stats`` prints (the product's own formatter)."""
    dests = tuple(DestStats(ip, 80, "Route", 1, active, inactive, conns, 3 * conns, 0, 180 * conns, 0)
                  for ip, active, inactive, conns in (("10.0.1.11", 1, 9, 12), ("10.0.1.13", 0, 8, 8)))
    return format_table((ServiceStats("TCP", "192.168.56.40", 80, 0, "rr", 20, 60, 0, 3600, 0, dests),), {})


def test_stats_counters_are_read_from_the_products_table():
    assert story.stats_conns(_stats_output()) == {"10.0.1.11:80": 12, "10.0.1.13:80": 8}


@pytest.mark.parametrize("client, verdict", [
    ({"member-1": 12, "member-3": 8}, "exactly the answers the client got since the crash"),
    ({"member-1": 11, "member-3": 8}, "the client got member-1 11, member-3 8"),
])
def test_stats_step_compares_the_kernel_with_the_client(client, verdict):
    event = {"kind": "stats", "director": "dir2", "output": _stats_output().splitlines(),
             "conns": {"member-1": 12, "member-3": 8}, "client_answers": client, "interval": 0.5}
    out = story.lines(event)
    assert out[-1] == f"   dir2 counted member-1 12, member-3 8 connections: {verdict}"
    table = "\n".join(out)
    assert "192.168.56.40:80 rr" in table and "-> 10.0.1.13:80" in table
    row = next(line for line in out if "10.0.1.11:80" in line).split()
    assert row[-4:] == ["1", "1", "9", "12"]           # weight, active, inactive, conns
    assert "every 0.5 s since step 1" in out[2]
    assert max(len(line) for line in out[3:-1]) <= 80   # the table: packets and bytes cut


def test_stats_snapshots_are_split_and_the_last_one_waits_for_its_successor():
    """``stats --interval`` output as the product writes it (its own ``snapshot``), after
    the lab log's command line: each complete snapshot with its reading time."""
    services = (ServiceStats("TCP", "192.168.56.40", 80, 0, "rr", 20, 60, 0, 3600, 0, ()),)
    log = "$ lvs-extension stats --interval 0.5\n" + "\n".join(
        snapshot(services, {}, at, as_json=False) for at in (1795714201.25, 1795714201.75, 1795714202.25))
    found = story.stats_snapshots(log)
    assert [at for at, _ in found] == [1795714201.25, 1795714201.75]
    assert all("192.168.56.40:80 rr" in table and "--- " not in table for _, table in found)
    assert story.stats_snapshots(log.rsplit("--- ", 1)[0]) == found[:1]


def test_failure_and_teardown_are_told():
    failed = story.lines({"kind": "failed", "step": "failover", "error": "TimeoutError: x"})
    assert failed[-1] == "FAILED while failing over: TimeoutError: x"
    clean = story.lines({"kind": "teardown", "seconds": 1.25, "problems": [], "namespaces_left": []})
    assert clean[-1].startswith("5. Torn down in 1.2 s") and "problems" not in clean[-1]
    dirty = story.lines({"kind": "teardown", "seconds": 1.0, "problems": ["stop x: y"],
                         "namespaces_left": ["demo-dir1"]})
    assert dirty[-1].endswith("problems: stop x: y; namespace demo-dir1 left")
    assert story.lines({"kind": "something new"}) == []


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_the_narrator_prints_complete_events_as_they_are_written(tmp_path):
    events = tmp_path / "events.jsonl"
    clock = FakeClock()
    out = io.StringIO()
    narrator = host.Narrator(events, host.Screen(out, clock))
    narrator.poll()                                   # the guest has written nothing yet
    assert out.getvalue() == ""                       # not a terminal: no progress line
    first, second = (json.dumps(e) + "\n" for e in EVENTS[:2])
    events.write_text(first + second[:20])            # the second line is still being written
    clock.now += 12.5
    narrator.poll()
    assert out.getvalue() == "[ 12.5 s] The VM is up (userspace at 6.4 s of guest uptime, 2 CPUs).\n"
    with open(events, "a") as f:
        f.write(second[20:])
    narrator.poll()
    assert out.getvalue().splitlines()[1].startswith("[ 12.5 s] Building the lab")
    assert [e["kind"] for e in narrator.seen] == ["guest", "lab"] and narrator.finished is None
    with open(events, "a") as f:
        f.write(json.dumps({"kind": "end", "t": 60, "ok": True}) + "\n")
    narrator.poll()
    assert narrator.finished == {"kind": "end", "t": 60, "ok": True}


def test_on_a_terminal_the_progress_line_is_redrawn_and_cleared():
    clock, out = FakeClock(), Tty()
    screen = host.Screen(out, clock)
    clock.now += 3
    screen.status("booting the VM")
    assert out.getvalue() == "  ... booting the VM (3 s)"
    screen.line("next")
    assert out.getvalue().endswith("\r" + " " * len("  ... booting the VM (3 s)") + "\rnext\n")


@pytest.mark.parametrize("missing, reason", [
    ("qemu-system-x86_64", "qemu-system-x86_64 not found (Debian package qemu-system-x86)"),
    ("busybox", "busybox not found (Debian package busybox-static)"),
])
def test_a_missing_tool_is_the_reason_given(monkeypatch, missing, reason):
    import shutil as shutil_mod
    real = shutil_mod.which
    monkeypatch.setattr("tests.e2e.vm.os.geteuid", lambda: 0)
    monkeypatch.setattr("tests.e2e.vm.shutil.which", lambda tool: None if tool == missing else real(tool) or tool)
    assert host.why_no_vm() == (reason, None)


def test_not_root_is_the_reason_given(monkeypatch):
    monkeypatch.setattr("tests.e2e.vm.os.geteuid", lambda: 1000)
    assert host.why_no_vm()[0] == "the end-to-end suite needs root (network namespaces, IPVS)"


def test_no_kernel_package_is_the_reason_given(monkeypatch):
    from tests.e2e.kernel import KernelUnavailable
    monkeypatch.setattr(host, "check_host", lambda: None)

    def no_kernel():
        raise KernelUnavailable("no cached kernel and apt cannot resolve linux-image-amd64")
    monkeypatch.setattr(host, "ensure_kernel", no_kernel)
    assert host.why_no_vm() == ("no cached kernel and apt cannot resolve linux-image-amd64", None)


def test_without_a_guest_the_demo_falls_back_instead_of_booting(monkeypatch):
    told = []
    monkeypatch.setattr(host, "why_no_vm", lambda: ("qemu-system-x86_64 not found", None))
    monkeypatch.setattr(host, "fallback", lambda reason, screen: told.append(reason) or 0)
    monkeypatch.setattr(host, "run_vm", lambda *a, **k: pytest.fail("booted a VM"))
    assert host.main([], out=io.StringIO()) == 0
    assert told == ["qemu-system-x86_64 not found"]


def test_a_failing_fallback_command_fails_the_demo(tmp_path):
    out = io.StringIO()

    def run(argv, **kwargs):
        code = 1 if "check" in argv else 0
        return subprocess.CompletedProcess(argv, code, "out\n", "err\n" if code else "")
    assert host.fallback("a reason", host.Screen(out), run=run) == 1
    assert out.getvalue().splitlines()[0] == "No kernel VM on this machine: a reason."


@pytest.mark.netns
@pytest.mark.keepalived
@pytest.mark.skipif(os.geteuid() != 0, reason="the namespace demo needs root")
def test_the_fallback_for_real_on_this_host():
    """This host has neither the dummy driver nor IPVS: what it can show, it shows."""
    proc = subprocess.run([str(ROOT / "scripts" / "demo"), "--no-vm"], cwd="/", capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "No kernel VM on this machine: --no-vm given." in out
    assert out.count("No kernel VM") == 1
    assert "== apply (InstanceStartedEvent)" in out and "deleted" in out            # namespace demo
    assert "virtual_server 192.168.56.40 80 {" in out and "real_server 10.0.1.12 80" in out   # render
    assert "OK: keepalived accepts the file: 1 virtual servers, 2 real servers, 1 VIPs" in out   # check
    assert not [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True
                                          ).stdout.split() if n.startswith("lvs-demo-")]



def _fake_vng(tmp_path: Path) -> Path:
    """A ``vng`` that, like the real one, runs its sibling ``virtme-run`` from PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vng").write_text("#!/bin/sh\nexec virtme-run \"$@\"\n")
    (bin_dir / "virtme-run").write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pid\necho guest ran\nsleep 60\n")
    for name in ("vng", "virtme-run"):
        (bin_dir / name).chmod(0o755)
    return bin_dir / "vng"


def test_the_vm_is_killed_when_the_narration_is_interrupted(tmp_path, monkeypatch):
    """Ctrl-C while the story is told (the narrator is the VM's limit): no VM is left."""
    from tests.e2e import vm
    from tests.e2e.kernel import Kernel
    vng = _fake_vng(tmp_path)
    monkeypatch.setattr(vm, "find_vng", lambda: str(vng))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")          # vng's folder is not on PATH

    class Interrupted(host.Narrator):
        def poll(self):
            if (tmp_path / "pid").exists():
                raise KeyboardInterrupt
    narrator = Interrupted(tmp_path / "events.jsonl", host.Screen(io.StringIO()), hard_cap=30)
    with pytest.raises(KeyboardInterrupt):
        vm.boot(Kernel(tmp_path, "x"), ["true"], tmp_path, timeout=30, limit=narrator)
    assert "guest ran" in (tmp_path / "vng.log").read_text()    # virtme-run found beside vng
    pid = int((tmp_path / "pid").read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
