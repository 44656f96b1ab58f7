"""Service-test helpers: a fake keepalived process that counts SIGHUPs, and settings.

Also used by ``bench/bench_feeds.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from . import _stratos as st
from ._feedutil import wait_for

_FAKE = r"""
import ctypes, os, signal, sys, time
# look like keepalived to the pid check: /proc/PID/comm, and '-f CONF' in the cmdline
ctypes.CDLL(None).prctl(15, b"keepalived", 0, 0, 0)          # PR_SET_NAME
count_file = sys.argv[1]
hups = 0
def on_hup(signum, frame):
    global hups
    hups += 1
    with open(count_file + ".tmp", "w") as f:
        f.write(str(hups))
    os.replace(count_file + ".tmp", count_file)
signal.signal(signal.SIGHUP, on_hup)
with open(count_file, "w") as f:
    f.write("0")
while True:
    time.sleep(3600)
"""


class FakeKeepalived:
    """A process standing in for keepalived: a pid file, and a count of SIGHUPs.

    Its name (``/proc/PID/comm``) is ``keepalived`` and its command line holds
    ``-f CONF`` (default: ``keepalived.conf`` in *workdir*, where the tests' settings
    put it), so the director's pid check accepts it.
    """

    def __init__(self, workdir: str, conf: str = "") -> None:
        self.pidfile = os.path.join(workdir, f"keepalived-{os.getpid()}-{time.time_ns()}.pid")
        self.count_file = self.pidfile + ".hups"
        self.conf = conf or os.path.join(workdir, "keepalived.conf")
        self.proc = subprocess.Popen([sys.executable, "-c", _FAKE, self.count_file,
                                      "-f", self.conf])
        wait_for(lambda: os.path.exists(self.count_file), 10, "fake keepalived")
        with open(self.pidfile, "w") as f:
            f.write(f"{self.proc.pid}\n")

    def hups(self) -> int:
        with open(self.count_file) as f:
            return int(f.read() or 0)

    def expect(self, n: int, settle: float = 0.3) -> None:
        """Exactly *n* SIGHUPs: wait for the n-th (the signal trails the file rename),
        then make sure no further one follows within *settle* seconds."""
        wait_for(lambda: self.hups() >= n, 10, f"{n} reloads")
        time.sleep(settle)
        assert self.hups() == n

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def vrrp_interface() -> str:
    """An Ethernet interface of this host: ``keepalived -t`` checks that the VRRP
    interface exists and refuses loopback."""
    for name in sorted(os.listdir("/sys/class/net")):
        try:
            with open(f"/sys/class/net/{name}/type") as f:
                if f.read().strip() == "1" and name != "lo":   # ARPHRD_ETHER
                    return name
        except OSError:
            continue
    message = "no Ethernet interface on this host for keepalived -t"
    if os.environ.get("CI"):        # CI must run every keepalived test: fail, not skip
        pytest.fail(message)
    pytest.skip(message)


def make_settings(workdir: str, **overrides):
    """Director settings for a test: one service per VIP, files inside *workdir*."""
    from cartridge_agent_lvs.director.settings import load
    values = dict(vip_map=st.vip_map([0]), interface=vrrp_interface(),
                  keepalived_conf=os.path.join(workdir, "keepalived.conf"))
    values.update(overrides)
    return load(values)


@pytest.fixture
def fake_keepalived(tmp_path):
    fake = FakeKeepalived(str(tmp_path))
    yield fake
    fake.stop()


@pytest.fixture
def director_settings(tmp_path, fake_keepalived):
    def make(**overrides):
        overrides.setdefault("keepalived_pidfile", fake_keepalived.pidfile)
        return make_settings(str(tmp_path), **overrides)
    return make
