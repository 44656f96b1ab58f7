"""Boot the cached Debian kernel with virtme-ng and run one command in the guest.

The guest sees the host's root filesystem read-only (with writable overlays), so the
interpreter running the tests -- with the project installed -- is usable inside it. Its
only channel back is a directory shared read-write (``--rwdir``): the guest writes its
results and logs there.

``/dev/kvm`` exists on the CI machines but QEMU aborts under KVM ("failed to set MSR
0x10a"), so the guest runs under software emulation (``--disable-kvm``) unless
``LVS_E2E_KVM=1``.

The VM's time limit follows the guest (:class:`VmLimit`): the guest measures how fast
it runs and writes ``pace.json`` (its slow-down factor and how long it may still
need) into the shared directory; the host kills the VM only when that estimate, plus
a margin, has passed -- or at the hard cap.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.kernel import Kernel


class GuestUnavailable(RuntimeError):
    """This machine cannot boot a guest (the reason is the message)."""


@dataclass(frozen=True)
class BootResult:
    returncode: int
    seconds: float
    output: str
    timed_out: bool
    limit: str = ""       #: what the VM's time limit was when it ended (VmLimit.describe)


class VmLimit:
    """When to kill the VM.

    Until the guest reports (``pace.json``), ``first_contact`` seconds: boot plus the
    runner's start. Then, every time the guest rewrites the file: the time it was read
    + the guest's ``remaining_seconds`` (its scenario budgets still ahead, already
    scaled by its pace factor) + ``margin`` x factor (cleanup, power-off). Never
    later than ``hard_cap`` seconds after the start.
    """

    def __init__(self, pace_file: Path | None, hard_cap: float, first_contact: float = 300.0,
                 margin: float = 60.0, clock=time.monotonic):
        self.pace_file = pace_file
        self.clock = clock
        self.started = clock()
        self.hard_at = self.started + hard_cap
        self.deadline = self.started + first_contact
        self.margin = margin
        self.factor = None
        self.reports = 0
        self._last = None

    def poll(self) -> None:
        if self.pace_file is None:
            return
        try:
            text = self.pace_file.read_text()
            if text == self._last:
                return
            data = json.loads(text)
            remaining, factor = float(data["remaining_seconds"]), float(data["factor"])
        except (OSError, ValueError, KeyError, TypeError):
            return                      # absent, or not a complete report: keep the limit
        self._last = text
        self.factor = factor
        self.reports += 1
        self.deadline = self.clock() + remaining + self.margin * max(1.0, factor)

    def expired(self) -> bool:
        return self.clock() >= min(self.deadline, self.hard_at)

    def describe(self) -> str:
        limit = min(self.deadline, self.hard_at) - self.started
        if self.reports == 0:
            return f"{limit:.0f} s (the guest never reported its pace)"
        which = "hard cap" if self.hard_at <= self.deadline else f"pace factor {self.factor:.2f}"
        return f"{limit:.0f} s ({which}; {self.reports} reports from the guest)"


def find_vng() -> str:
    """The ``vng`` executable: beside the running interpreter (tox env) or on PATH."""
    local = Path(sys.executable).parent / "vng"
    if local.exists():
        return str(local)
    found = shutil.which("vng")
    if not found:
        raise GuestUnavailable("virtme-ng (vng) is not installed: pip install virtme-ng")
    return found


def check_host() -> None:
    """Raise :class:`GuestUnavailable` naming what is missing to boot a guest."""
    if os.geteuid() != 0:
        raise GuestUnavailable("the end-to-end suite needs root (network namespaces, IPVS)")
    for tool, package in (("qemu-system-x86_64", "qemu-system-x86"), ("busybox", "busybox-static"),
                          ("depmod", "kmod"), ("dpkg-deb", "dpkg"), ("apt-get", "apt")):
        if not shutil.which(tool):
            raise GuestUnavailable(f"{tool} not found (Debian package {package})")
    find_vng()


def boot(kernel: Kernel, command: list[str], rwdir: Path, timeout: float,
         cwd: Path | None = None, memory: str = "2G", cpus: int = 2,
         limit: VmLimit | None = None) -> BootResult:
    """Boot ``kernel`` and run ``command`` (argv) as root in the guest.

    Bounded by ``limit`` (pace-aware, see :class:`VmLimit`) or else by ``timeout``
    seconds. ``rwdir`` is shared read-write at the same path; the VM's console output
    goes to ``rwdir/vng.log``. The kernel's own tree is shared read-only at its host
    path: virtme-ng links its ``lib/modules/<version>`` into the guest, and the guest
    masks parts of the host tree (``/var/cache`` among them).
    """
    vng = find_vng()
    argv = [
        vng, "--run", str(kernel.image), "--user", "root",
        "--memory", memory, "--cpus", str(cpus),
        "--rodir", str(kernel.root), "--rwdir", str(rwdir),
        "--cwd", str(cwd or rwdir), "--verbose",
        # the guest's root is 9p either way here: without this, virtme-ng first starts
        # virtiofsd for each shared folder and waits for it (measured: 11.6 s before QEMU
        # starts, 1.1 s with it), then falls back to 9p
        "--force-9p",
        "--exec", shlex.join(command),
    ]
    if os.environ.get("LVS_E2E_KVM") != "1":
        argv.insert(argv.index("--memory"), "--disable-kvm")
    limit = limit or VmLimit(None, timeout, first_contact=timeout)
    started = time.monotonic()
    console = rwdir / "vng.log"
    # vng runs qemu in the foreground; a new session lets the limit kill the whole tree.
    with open(console, "w") as out:
        # vng runs its sibling scripts (virtme-run) from PATH: a virtualenv not activated
        path = f"{Path(vng).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PATH": path})
        timed_out = False
        try:
            while True:
                try:
                    proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    limit.poll()
                    if limit.expired():
                        os.killpg(proc.pid, 9)
                        proc.wait()
                        timed_out = True
                        break
        except BaseException:       # Ctrl-C, or a poll that raised: no VM left behind
            os.killpg(proc.pid, 9)
            proc.wait()
            raise
    output = console.read_text(errors="replace")
    return BootResult(proc.returncode, time.monotonic() - started, output, timed_out,
                      limit.describe())
