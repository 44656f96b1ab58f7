"""Service-test helpers: a fake keepalived process that counts SIGHUPs, and settings.

Also used by ``bench/bench_feeds.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from . import _stratos as st
from ._feedutil import wait_for

_FAKE = r"""
import ctypes, os, signal, sys
# look like keepalived to the pid check: /proc/PID/comm, and '-f CONF' in the cmdline
ctypes.CDLL(None).prctl(15, sys.argv[2].encode(), 0, 0, 0)     # PR_SET_NAME
count_file = sys.argv[1]
counts = {signal.SIGHUP: 0, signal.SIGUSR1: 0}
def write(path, value):
    with open(path + ".tmp", "w") as f:
        f.write(str(value))
    os.replace(path + ".tmp", path)
def on_signal(signum, frame):
    counts[signum] += 1
    write(count_file if signum == signal.SIGHUP else count_file + ".usr1", counts[signum])
signal.signal(signal.SIGHUP, on_signal)
signal.signal(signal.SIGUSR1, on_signal)
write(count_file + ".usr1", 0)
write(count_file, 0)
while True:
    signal.pause()          # idle: the fake only answers signals
"""


def _read_count(path: str) -> int:
    with open(path) as f:
        return int(f.read() or 0)


class FakeKeepalived:
    """A process standing in for keepalived: a pid file, and a count of SIGHUPs.

    Its name (``/proc/PID/comm``) is *name* (``keepalived``, unless a test needs a
    process that is not keepalived) and its command line holds ``-f CONF`` (default:
    ``keepalived.conf`` in *workdir*, where the tests' settings put it), so the
    director's pid check accepts it.
    """

    def __init__(self, workdir: str, conf: str = "", name: str = "keepalived") -> None:
        self.pidfile = os.path.join(workdir, f"keepalived-{os.getpid()}-{time.time_ns()}.pid")
        self.count_file = self.pidfile + ".hups"
        self.conf = conf or os.path.join(workdir, "keepalived.conf")
        self.proc = subprocess.Popen([sys.executable, "-c", _FAKE, self.count_file, name,
                                      "-f", self.conf])
        wait_for(lambda: os.path.exists(self.count_file), 10, "fake keepalived")
        with open(self.pidfile, "w") as f:
            f.write(f"{self.proc.pid}\n")

    def hups(self) -> int:
        return _read_count(self.count_file)

    def flush(self) -> None:
        """Return once every SIGHUP sent to the fake before this call is counted.

        A signal's delivery trails ``kill()``.  The fake is sent SIGUSR1 and answers
        it in its count file; pending signals are taken lowest number first (by the
        kernel, and by Python, which runs tripped handlers in signal-number order), so
        a SIGHUP (1) sent earlier has been counted when the SIGUSR1 (10) answer shows.
        """
        usr1 = self.count_file + ".usr1"
        before = _read_count(usr1)
        self.proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: _read_count(usr1) > before, 10, "the fake keepalived's answer")

    def expect(self, n: int) -> None:
        """Exactly *n* SIGHUPs: wait for the n-th (the signal trails the file rename),
        then check that no further one was sent so far.

        "So far" is all this can see: a caller asserting that nothing *more* comes
        first makes sure the sender is done -- the service settled
        (``Running.settled``), the process exited, or its status says so.
        """
        wait_for(lambda: self.hups() >= n, 10, f"{n} reloads")
        self.flush()
        assert self.hups() == n, f"{self.hups()} SIGHUPs, expected {n}"

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


def logged_keepalived(tmp_path, log: str, reject: str = "") -> str:
    """A ``keepalived_bin`` that logs each call's arguments to *log* and the file it
    checks to ``<log>.checked``, then runs the real keepalived -- or, for a file
    holding *reject*, answers as keepalived does for a file it refuses."""
    path = os.path.join(str(tmp_path), "keepalived-logged")
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\necho \"$@\" >> {log}\nfor last; do :; done\n"
                f"cat \"$last\" >> {log}.checked\n"
                + (f"if grep -q '{reject}' \"$last\"; then echo 'refused (test)'; exit 5; "
                   "fi\n" if reject else "")
                + "exec keepalived \"$@\"\n")
    os.chmod(path, 0o755)
    return path


def logged_calls(log: str) -> list:
    """The lines :func:`logged_keepalived` wrote to *log* so far."""
    try:
        with open(log) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []
