"""Boot the cached Debian kernel with virtme-ng and run one command in the guest.

The guest sees the host's root filesystem read-only (with writable overlays), so the
interpreter running the tests -- with the project installed -- is usable inside it. Its
only channel back is a directory shared read-write (``--rwdir``): the guest writes its
results and logs there.

``/dev/kvm`` exists on the CI machines but QEMU aborts under KVM ("failed to set MSR
0x10a"), so the guest runs under software emulation (``--disable-kvm``) unless
``LVS_E2E_KVM=1``.
"""

from __future__ import annotations

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
         cwd: Path | None = None, memory: str = "2G", cpus: int = 2) -> BootResult:
    """Boot ``kernel`` and run ``command`` (argv) as root in the guest; bounded by ``timeout``.

    ``rwdir`` is shared read-write at the same path. The kernel's own tree is shared
    read-only at its host path: virtme-ng links its ``lib/modules/<version>`` into the
    guest, and the guest masks parts of the host tree (``/var/cache`` among them).
    """
    argv = [
        find_vng(), "--run", str(kernel.image), "--user", "root",
        "--memory", memory, "--cpus", str(cpus),
        "--rodir", str(kernel.root), "--rwdir", str(rwdir),
        "--cwd", str(cwd or rwdir), "--verbose",
        "--exec", shlex.join(command),
    ]
    if os.environ.get("LVS_E2E_KVM") != "1":
        argv.insert(argv.index("--memory"), "--disable-kvm")
    started = time.monotonic()
    # vng runs qemu in the foreground; a new session lets the timeout kill the whole tree.
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        output, _ = proc.communicate()
        timed_out = True
    return BootResult(proc.returncode, time.monotonic() - started, output or "", timed_out)
