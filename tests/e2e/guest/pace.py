"""How fast this guest runs right now, and the time budgets scaled by it.

The guest is emulated (QEMU TCG): every Python process that imports the project pays
seconds on an idle machine and several times that when the host is busy -- a laptop
doing other things, one core kept busy by another process. Fixed waits sized for an
idle machine then fail for reasons that have nothing to do with LVS.

So the suite calibrates itself on the work it waits for most: a *project command*
(``cartridge-agent-lvs ...`` or ``lvs-extension stats``: a Python 3 start, the
project's imports, a few netlink requests). The first one of the run (the first real
server's ``apply``) is timed alone; every later one is timed too.

    factor = max(1, median(project command seconds) / UNIT_REFERENCE)

``UNIT_REFERENCE`` is what one such command took in the guest on an idle 2-vCPU CI
machine. Budgets for *emulation work* -- how long to wait for a change to reach
IPVS, a scenario's time limit, the VM's limit on the host -- are base values for an
idle machine times ``factor``. The product's own timers (drain_seconds, advert_int,
delay_loop, connect_timeout) are never scaled: the host-side tests assert them
against the configured values, and only the allowance for processing on top of a
timer is multiplied (see ``tests/e2e/test_e2e.py``).
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from pathlib import Path

#: seconds of one project command in the guest on an idle 2-vCPU CI machine
#: (``cartridge-agent-lvs apply``, measured with ``LVS_E2E_WORKDIR`` kept: results.json
#: ``pace.samples``)
UNIT_REFERENCE = 20.0
#: beyond this the machine is too busy to say anything in reasonable time: budgets
#: stop growing (and the run says so in results.json)
MAX_FACTOR = 8.0

_lock = threading.Lock()
_samples: list = []
_listeners: list = []


def factor() -> float:
    """The current slow-down of this guest relative to an idle CI machine (>= 1)."""
    with _lock:
        return _factor_locked()


def _factor_locked() -> float:
    if not _samples:
        return 1.0
    return sample_factor(statistics.median(s for _, s in _samples))


def sample_factor(seconds: float) -> float:
    """The slow-down that one project command of ``seconds`` shows: the pace at that
    moment, where ``factor()`` is the run's median and misses a spike of load."""
    return min(MAX_FACTOR, max(1.0, seconds / UNIT_REFERENCE))


def scaled(seconds: float) -> float:
    """A budget for emulation work that takes ``seconds`` on an idle machine."""
    return seconds * factor()


def observe(label: str, seconds: float) -> None:
    """Record how long one project command took (wall time, in this guest)."""
    with _lock:
        _samples.append((label, round(seconds, 2)))
        listeners = list(_listeners)
    for listener in listeners:
        listener()


def on_change(listener) -> None:
    """Call ``listener()`` after every new sample (the runner re-publishes its budget)."""
    with _lock:
        _listeners.append(listener)


def summary() -> dict:
    with _lock:
        return {"factor": round(_factor_locked(), 2), "unit_reference": UNIT_REFERENCE,
                "max_factor": MAX_FACTOR, "samples": list(_samples)}


def reset() -> None:
    """Forget every sample (host-side unit tests)."""
    with _lock:
        _samples.clear()
        _listeners.clear()


class Publisher:
    """Writes ``pace.json`` into the shared directory: the factor and how much longer the
    guest may need, so the host can scale the VM's time limit while it runs.

    ``remaining`` is the guest's own budget still ahead of it (seconds, already scaled)
    at the moment of writing; the host adds it to the time it read the file.
    """

    def __init__(self, path: Path):
        self.path = path
        self.remaining = None          # callable -> seconds

    def write(self) -> None:
        if self.remaining is None:
            return
        data = dict(summary(), remaining_seconds=round(self.remaining(), 1),
                    written_uptime=_uptime())
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, self.path)


def _uptime() -> float:
    try:
        with open("/proc/uptime") as f:
            return float(f.read().split()[0])
    except OSError:
        return time.monotonic()
