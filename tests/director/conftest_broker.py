"""A real mosquitto broker on a free loopback port, for the MQTT feed tests and bench.

``Broker(tmpdir)`` writes a config (``listener PORT 127.0.0.1``; anonymous access, or a
password file when *users* are given) and ``start()`` runs the real ``mosquitto``
binary, returning once the port accepts connections; ``stop()`` terminates it;
``restart()`` does both on the same port.  The ``broker`` fixture starts one and stops it
after the test, also on failure; ``broker_factory`` hands out unstarted ones (a broker
that is down at start-up) and stops them all at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Dict, List, Optional

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, up: bool = True, timeout: float = 10.0) -> None:
    """Wait until 127.0.0.1:*port* accepts (or, with up=False, refuses) connections."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            if up:
                return
        except OSError:
            if not up:
                return
        time.sleep(0.02)        # the polling step of this wait, not a synchronisation
    raise TimeoutError(f"port {port} not {'up' if up else 'down'} after {timeout}s")


class Broker:
    def __init__(self, workdir: str, users: Optional[Dict[str, str]] = None,
                 port: Optional[int] = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.conf = os.path.join(workdir, f"mosquitto-{self.port}.conf")
        self.logfile = os.path.join(workdir, f"mosquitto-{self.port}.log")
        lines = [f"listener {self.port} 127.0.0.1", "persistence false",
                 "user root", "log_dest stderr", "log_type error", "log_type warning",
                 "max_queued_messages 100000"]
        if users:
            pwfile = os.path.join(workdir, f"passwd-{self.port}")
            open(pwfile, "w").close()
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", pwfile, user, password],
                               check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    @property
    def address(self):
        return ("127.0.0.1", self.port)

    def start(self) -> "Broker":
        assert self.proc is None, "already running"
        log = open(self.logfile, "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", self.conf], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        log.close()
        try:
            wait_port(self.port)
        except TimeoutError:
            self.stop()
            with open(self.logfile, errors="replace") as f:
                raise RuntimeError(f"mosquitto did not start: {f.read()[-2000:]}") from None
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        wait_port(self.port, up=False)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def broker_factory():
    made: List[Broker] = []
    workdir = tempfile.mkdtemp(prefix="lvs-broker-")

    def make(users: Optional[Dict[str, str]] = None) -> Broker:
        made.append(Broker(workdir, users))
        return made[-1]

    try:
        yield make
    finally:
        for b in made:
            b.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def broker(broker_factory) -> Broker:
    """A running anonymous broker on 127.0.0.1:<free port>."""
    return broker_factory().start()
