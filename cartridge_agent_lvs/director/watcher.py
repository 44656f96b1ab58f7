"""Read IPVS back after each reload, in a thread that only reads.

The service loop calls :meth:`ConvergenceWatcher.expect` after a reload (or when it
finds its file already in place at start) and goes on handling events; this
thread polls IPVS (generic netlink, :func:`~.stats.read_ipvs`) until it shows the
configuration (:mod:`.converge` defines when it does), then logs
``IPVS converged in X s`` and observes ``convergence_seconds`` -- the time from the
topology event that caused the change to that moment.  If IPVS does not show it
within :func:`~.converge.bound`, one error names what is missing and what is
unexpected, and the thread keeps watching at a slower pace to log the recovery.

Only what a reload changed is read back: the service list (short) and the real
servers of the virtual servers whose desired state differs from what was served
before (:func:`~.converge.changed_virtual_servers`) -- at 10,000 real servers one
member event reads one virtual server's, not the whole table, whose decoding costs
seconds in an emulated guest and would compete with the loop for the interpreter.
After a start (nothing served before) every virtual server is read.

A new expectation replaces the one being watched; what the old one still waited
for (its cause, the virtual servers it still had to read and the new real servers
not yet seen) carries over when still desired.  Polling starts every 50 ms and
slows down to 0.5 s, never faster than twice the time one read takes (a large table
is expensive to dump).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, Optional, Sequence

from ..errors import HostError
from .converge import (Drift, RsKey, VsKey, bound, by_virtual_server,
                       changed_virtual_servers, compare, kernel_key, new_slots,
                       still_desired)
from .guard import Slot
from .model import LvsConfig
from .stats import IpvsUnavailable, ServiceStats

log = logging.getLogger(__name__)

WAITING, CONVERGED, DRIFT, UNVERIFIED = "waiting", "converged", "drift", "unverified"
FIRST_POLL, MAX_POLL, AFTER_DEADLINE_POLL = 0.05, 0.5, 2.0


@dataclass
class _Target:
    desired: LvsConfig
    since: float                    #: when keepalived was told (the watcher's clock)
    cause: Optional[float]          #: when the causing topology change was received
    deadline: float
    #: new real servers not yet seen, by virtual server
    pending: Dict[VsKey, FrozenSet[RsKey]] = field(default_factory=dict)
    #: the virtual servers whose real servers are read (None: all)
    touched: Optional[FrozenSet[VsKey]] = None
    timed_out: bool = False
    done: bool = False
    interval: float = FIRST_POLL


@dataclass(frozen=True)
class Report:
    """The watcher's verdict on the last expectation (read by /status and metrics)."""

    state: str                          #: waiting / converged / drift / unverified
    since: float                        #: when keepalived was told (watcher clock)
    seconds: Optional[float] = None     #: reload -> converged
    event_seconds: Optional[float] = None   #: topology event -> converged
    drift: Optional[Drift] = None
    error: str = ""                     #: why IPVS could not be read


class ConvergenceWatcher:
    """Polls IPVS after each reload until it shows the desired configuration.

    :param read: returns the IPVS table (``HostError`` when it cannot be read), given
        ``dests_of`` (as :func:`~.stats.read_ipvs`): which services' real servers it
        must read (None: all).
    :param metrics: the :class:`~.metrics.LoopMetrics` to record into.
    """

    def __init__(self, read: Callable[..., Sequence[ServiceStats]], metrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._target: Optional[_Target] = None
        self._thread: Optional[threading.Thread] = None
        self._read_error = ""
        self.report: Optional[Report] = None

    # -- the loop's side ---------------------------------------------------------------

    def expect(self, desired: LvsConfig, previous: Optional[LvsConfig],
               cause: Optional[float] = None) -> None:
        """IPVS should now show *desired* (*previous* was served before it)."""
        now = self._clock()
        pending = by_virtual_server(new_slots(desired, previous))
        touched = changed_virtual_servers(desired, previous)
        with self._lock:
            old = self._target
            if old is not None and not old.done:
                for key, rs_keys in still_desired(old.pending, desired,
                                                  old.desired).items():
                    pending[key] = pending[key] | rs_keys if key in pending else rs_keys
                if old.cause is not None:
                    cause = old.cause if cause is None else min(cause, old.cause)
                if touched is not None:
                    touched = None if old.touched is None else touched | old.touched
            self._target = _Target(desired, now, cause, now + bound(desired), pending,
                                   touched)
            self.report = Report(WAITING, now)
        self._metrics.converged.set(0)
        self._wake.set()

    def pending(self) -> FrozenSet[Slot]:
        """New real servers of the watched configuration not yet seen in IPVS."""
        with self._lock:
            target = self._target
            pending = target.pending if target is not None else {}
            return frozenset((vs, rs) for vs, keys in pending.items() for rs in keys)

    # -- the thread ------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ipvs-watcher",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stopping.is_set():
            delay = self.step()
            self._wake.wait(delay)
            self._wake.clear()

    def step(self) -> Optional[float]:
        """One poll; the seconds until the next one, or None when there is nothing to
        watch."""
        target = self._target
        if target is None or target.done:
            return None
        started = self._clock()
        touched = target.touched
        try:
            kernel = self._read(dests_of=None if touched is None else
                                (lambda service: kernel_key(service) in touched))
        except HostError as exc:
            return self._unreadable(target, exc)
        now = self._clock()
        if self._read_error:
            log.info("IPVS can be read again")
            self._read_error = ""
        seen = {kernel_key(s): frozenset((d.address, d.port) for d in s.dests)
                for s in kernel if kernel_key(s) in target.pending}
        with self._lock:
            target.pending = {key: left for key, rs_keys in target.pending.items()
                              if (left := rs_keys - seen.get(key, frozenset()))}
            drift = compare(target.desired, kernel, frozenset(
                (vs, rs) for vs, keys in target.pending.items() for rs in keys), touched)
            if drift.converged:
                target.done = True
        if drift.converged:
            self._converged(target, drift, now)
            return None
        if now >= target.deadline and not target.timed_out:
            target.timed_out = True
            self._metrics.convergence_timeouts.inc()
            log.error("IPVS does not show the applied configuration %.1f s after the "
                      "reload: %d desired entries missing, %d unexpected present (%s); "
                      "keepalived may have failed to apply the file, or is not running",
                      now - target.since, drift.missing, drift.unexpected, drift.summary())
        if target.timed_out:
            self._publish(target, Report(DRIFT, target.since, drift=drift))
            return AFTER_DEADLINE_POLL
        self._publish(target, Report(WAITING, target.since, drift=drift))
        target.interval = min(MAX_POLL, target.interval * 1.5)
        return max(target.interval, 2 * (now - started))

    def _converged(self, target: _Target, drift: Drift, now: float) -> None:
        seconds = now - target.since
        event = now - target.cause if target.cause is not None else None
        if event is not None:
            self._metrics.convergence.observe(event)
        self._metrics.converged.set(1)
        held = f" ({len(drift.not_in_kernel)} held out by the health check)" \
            if drift.not_in_kernel else ""
        after = f", {event:.2f} s after the topology event" if event is not None else ""
        if target.timed_out:
            log.warning("IPVS now shows the applied configuration, %.1f s after the "
                        "reload%s%s", seconds, after, held)
        else:
            log.info("IPVS converged in %.2f s after the reload%s: %d virtual servers, %d "
                     "real servers%s", seconds, after, len(target.desired.virtual_servers),
                     target.desired.real_server_count(), held)
        self._publish(target, Report(CONVERGED, target.since, seconds, event, drift))

    def _unreadable(self, target: _Target, exc: HostError) -> Optional[float]:
        error = str(exc)
        if error != self._read_error:
            # a kernel without IPVS at all (a test host, a container) is a fact about
            # the host, said once; any other failure to read is a problem
            log.log(logging.INFO if isinstance(exc, IpvsUnavailable) else logging.WARNING,
                    "cannot read IPVS to verify the reload: %s", error)
            self._read_error = error
        self._publish(target, Report(UNVERIFIED, target.since, error=error))
        if self._clock() >= target.deadline:
            target.done = True          # given up until the next reload
            return None
        return AFTER_DEADLINE_POLL

    def _publish(self, target: _Target, report: Report) -> None:
        """*report* becomes the verdict unless a newer expectation replaced *target*."""
        with self._lock:
            if target is self._target:
                self.report = report
