"""The demo on this machine: boot the kernel VM, tell the story, or fall back.

    scripts/demo [--no-vm] [--keep DIR] [--timeout SECONDS]

Boots the end-to-end suite's kernel VM (``tests/e2e/vm.py``, ``tests/e2e/kernel.py``)
with ``python -m demo.guest`` inside, and prints each event the guest reports, worded by
``demo.story``, while it runs (a progress line while the VM boots, on a terminal). Where
no guest can boot (not root, no QEMU, no virtme-ng, no kernel package), one line says
why, and it shows what this machine can: the real-server half in a network namespace
(``cartridge-agent-lvs demo``) and a director dry run (``lvs-extension render`` and
``check`` of the shipped sample topology). Exit 0 when the story ran to its end.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, TextIO

from demo import story
from tests.e2e.guest.scenarios import command
from tests.e2e.kernel import KernelUnavailable, cache_dir, cached_kernels, ensure_kernel
from tests.e2e.vm import GuestUnavailable, VmLimit, boot, check_host

REPO = Path(__file__).resolve().parent.parent
TOPOLOGY = "deploy/examples/topology.json"
VIP_MAP = "tomcat|192.168.56.40"
#: the VM is killed after this long whatever happens (the story takes 1-3 minutes)
HARD_CAP = 900.0


class Screen:
    """Narration lines, plus one progress line that is redrawn in place on a terminal
    (and left out elsewhere: a log gets the narration only)."""

    def __init__(self, out: TextIO, clock: Callable[[], float] = time.monotonic):
        self.out = out
        self.clock = clock
        self.started = clock()
        self.tty = out.isatty()
        self._status = ""

    def elapsed(self) -> float:
        return self.clock() - self.started

    def line(self, text: str = "") -> None:
        self._clear()
        self.out.write(text + "\n")
        self.out.flush()

    def stamped(self, texts: list) -> None:
        """Lines of one event; the first non-empty one carries the time since the start."""
        stamp = True
        for text in texts:
            if stamp and text:
                text, stamp = f"[{self.elapsed():5.1f} s] {text}", False
            self.line(text)

    def status(self, text: str) -> None:
        if not self.tty:
            return
        self._clear()
        self._status = f"  ... {text} ({self.elapsed():.0f} s)"
        self.out.write(self._status)
        self.out.flush()

    def _clear(self) -> None:
        if self._status:
            self.out.write("\r" + " " * len(self._status) + "\r")
            self._status = ""


class Narrator(VmLimit):
    """The VM's time limit (``vm.boot`` polls it every second) that also reads the guest's
    new events and prints them -- so the story appears while the VM runs."""

    def __init__(self, events: Path, screen: Screen, hard_cap: float = HARD_CAP):
        super().__init__(None, hard_cap, first_contact=hard_cap)
        self.events = events
        self.screen = screen
        self.seen: list = []
        self._offset = 0
        self._waiting = "booting the VM (QEMU software emulation)"

    def poll(self) -> None:
        self.pump()
        self.screen.status(self._waiting)

    def pump(self) -> None:
        """Print every complete event line written since the last call."""
        try:
            with open(self.events) as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        complete = chunk[:chunk.rfind("\n") + 1]
        self._offset += len(complete.encode())
        for raw in complete.splitlines():
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            self.seen.append(event)
            self.screen.stamped(story.lines(event))
            self._waiting = WAITING.get(event.get("kind"), self._waiting)

    @property
    def finished(self) -> Optional[dict]:
        return next((e for e in self.seen if e.get("kind") == "end"), None)


#: what the progress line says after each event, until the next one
WAITING = {"guest": "building the lab", "lab": "5 Python starts under emulation",
           "realserver": "waiting for the others",
           "director": "waiting for the others", "serving": "sending requests",
           "spread": "sending requests", "joined": "sending requests",
           "drained": "failing over", "failover": "reading the counters (lvs-extension stats --interval, started with the story)",
           "stats": "tearing down", "teardown": "powering the VM off", "end": "powering the VM off"}


def why_no_vm() -> tuple:
    """``(reason, kernel)``: the reason no guest can boot here (``None`` if one can)."""
    try:
        check_host()
        return None, ensure_kernel()
    except (GuestUnavailable, KernelUnavailable) as exc:
        return str(exc), None


def default_interface() -> str:
    """The interface of this host's IPv4 default route (``lo`` if none): what the dry run
    names as the VRRP interface, since ``keepalived -t`` wants one that exists."""
    try:
        with open("/proc/net/route") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if len(fields) > 2 and fields[1] == "00000000":
                    return fields[0]
    except OSError:
        pass
    return "lo"


def fallback(reason: str, screen: Screen, run=subprocess.run) -> int:
    """The real-server half in a namespace plus a director dry run; 0 when all worked."""
    for text in story.fallback_intro(reason):
        screen.line(text)
    failures = 0
    screen.line()
    if os.geteuid() == 0:
        screen.line("$ cartridge-agent-lvs demo")
        failures += _show(run([*command("cartridge-agent-lvs"), "demo"], capture_output=True, text=True,
                              cwd=REPO), screen)
    else:
        screen.line("(the namespace demo needs root: skipped)")
    interface = default_interface()
    with tempfile.TemporaryDirectory(prefix="lvs-demo-") as tmp:
        common = ["--topology", TOPOLOGY, "--vip-map", VIP_MAP, "--interface", interface,
                  "--keepalived-conf", str(Path(tmp) / "keepalived.conf")]
        for verb in ("render", "check"):
            screen.line()
            screen.line(f"$ lvs-extension {verb} --topology {TOPOLOGY} --vip-map '{VIP_MAP}' "
                        f"--interface {interface}")
            failures += _show(run([*command("lvs-extension"), verb, *common], capture_output=True,
                                  text=True, cwd=REPO), screen)
    return 1 if failures else 0


def _show(proc, screen: Screen) -> int:
    for text in (proc.stdout + proc.stderr).rstrip().splitlines():
        screen.line(f"  {text}")
    return 1 if proc.returncode else 0


def run_vm(kernel, screen: Screen, workdir: Path, hard_cap: float = HARD_CAP) -> int:
    # byte-compile on this machine: the guest sees this tree read-only, and compiling
    # there, under emulation, would cost every Python start seconds
    for tree in ("cartridge_agent_lvs", "demo", "tests"):
        compileall.compile_dir(str(REPO / tree), quiet=2)
    narrator = Narrator(workdir / "events.jsonl", screen, hard_cap)
    screen.line(story.VM_NOTE)
    screen.line(f"[{screen.elapsed():5.1f} s] Booting Debian kernel {kernel.version} in a VM "
                "(QEMU, software emulation)")
    result = boot(kernel, [sys.executable, "-m", "demo.guest", str(workdir)], workdir,
                  timeout=hard_cap, cwd=REPO, limit=narrator)
    narrator.pump()
    end = narrator.finished
    if end and end.get("ok"):
        screen.line()
        screen.line(f"Done: {screen.elapsed():.0f} s in all (VM boot, lab, story, power-off).")
        return 0
    why = (f"the VM was killed at its limit of {result.limit}" if result.timed_out
           else "the guest did not finish" if not end else "a step failed")
    screen.line(f"The demo did not complete: {why}. Logs: {workdir / 'logs'}; VM console: "
                f"{workdir / 'vng.log'}")
    for text in result.output.splitlines()[-15:] if not end else []:
        screen.line(f"  | {text}")
    return 1


def main(argv: Optional[list] = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.splitlines()[0])
    parser.add_argument("--no-vm", action="store_true", help="do not boot the VM: only the "
                        "namespace demo and the director dry run")
    parser.add_argument("--keep", metavar="DIR", type=Path, help="keep the VM's shared folder "
                        "(events.jsonl, logs/) here")
    parser.add_argument("--timeout", type=float, default=HARD_CAP, help="kill the VM after this "
                        f"many seconds (default {HARD_CAP:.0f})")
    args = parser.parse_args(argv)
    screen = Screen(out)
    for text in story.INTRO.splitlines():
        screen.line(text)
    screen.line()
    if args.no_vm:
        return fallback("--no-vm given", screen)
    if not cached_kernels(cache_dir()):
        screen.status("first run: fetching the Debian kernel package (cached afterwards)")
    reason, kernel = why_no_vm()
    if reason:
        return fallback(reason, screen)
    if args.keep:
        shutil.rmtree(args.keep, ignore_errors=True)
        args.keep.mkdir(parents=True)
        workdir = args.keep
    else:
        workdir = Path(tempfile.mkdtemp(prefix="lvs-demo-"))
    code = run_vm(kernel, screen, workdir, args.timeout)
    if code == 0 and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
