"""Mode bgp: keep this director's BGP announcements in step with what it can serve.

:class:`Announcer` runs in the service loop every ``announce_interval``: it reads
whether keepalived runs, the IPVS table (generic netlink), the VIPs on
``vip_interface`` and the operator's ``withdrawn_file``, asks :func:`.bgp.decide`
which VIPs to announce, and when that set changes renders ``bird.conf``
(:func:`.bgp.render_bird`) and has BIRD re-read it (:class:`.bird.Bird`).  A failed
check withdraws at the next tick; a BIRD that cannot be told is retried every tick
(logged once per distinct problem).

At start it adds the VIPs to ``vip_interface``, sets ``sloppy_tcp`` and the ARP
sysctls and tells BIRD to announce nothing until the first check passes; on stop
(:meth:`Announcer.withdraw_all`) it withdraws everything, and :meth:`close` puts the
sysctls and the interface back as they were.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Dict, FrozenSet, Optional

from prometheus_client import CollectorRegistry, Gauge

from ..errors import HostError, LvsError
from .bgp import Health, decide, render_bird, speaker_of
from .bird import Bird
from .hostnet import NO_ARP, SLOPPY_TCP, LocalVips, Sysctls
from .keepalived import Keepalived
from .model import LvsConfig
from .plan import ip_sort_key

log = logging.getLogger(__name__)


class Announcer:
    def __init__(self, settings, keepalived: Keepalived, read_kernel: Callable[[], tuple],
                 registry: Optional[CollectorRegistry] = None, *,
                 bird: Optional[Bird] = None, local: Optional[LocalVips] = None,
                 sysctls: Optional[Sysctls] = None) -> None:
        self.vips = tuple(sorted({vip for _, vip in settings.vip_map}, key=ip_sort_key))
        self.interval = settings.announce_interval
        self.withdrawn_file = settings.withdrawn_file
        self.speaker = speaker_of(settings)
        self.keepalived = keepalived
        self.read_kernel = read_kernel
        self.bird = bird or Bird(settings.bird_conf, settings.bird_socket, settings.bird_bin)
        self.local = local or LocalVips(settings.vip_interface)
        self.sysctls = sysctls or Sysctls(((SLOPPY_TCP,) if settings.sloppy_tcp else ())
                                          + NO_ARP)
        self.stopping = False
        #: what BIRD was last told to announce (None: not told yet)
        self.announced: Optional[FrozenSet[str]] = None
        self.reasons: Dict[str, Optional[str]] = {}
        self._next = 0.0
        self._problems: Dict[str, str] = {}
        self.gauge = Gauge("lvs_extension_vip_announced", "mode bgp: 1 while this "
                           "director announces the VIP by BGP", ("vip",),
                           registry=registry)

    def deadline(self) -> float:
        return self._next

    def tick(self, now: float, served: Optional[LvsConfig]) -> bool:
        """Check (and re-announce or withdraw) when due; True when it checked."""
        if now < self._next:
            return False
        self._next = now + self.interval
        self.check(served)
        return True

    def check(self, served: Optional[LvsConfig]) -> FrozenSet[str]:
        decision = decide(self.vips, served, self.health())
        for vip, reason in decision.items():
            if reason != self.reasons.get(vip, "") and reason is not None:
                log.warning("VIP %s not announced: %s", vip, reason)
            self.gauge.labels(vip).set(0 if reason else 1)
        self.reasons = decision
        return self._apply(frozenset(v for v, reason in decision.items() if reason is None))

    def health(self) -> Health:
        if self.stopping:               # nothing else matters: withdraw without reading
            return Health(True, False, False, None, frozenset(), False)
        set_ = False
        try:
            set_ = self.sysctls.apply()
        except HostError as exc:
            self._problem("sysctls", str(exc))
        try:
            local = self.local.ensure(self.vips)
            self._problems.pop("vips", None)
        except HostError as exc:
            local = frozenset()
            self._problem("vips", str(exc))
        running = self.keepalived.running()
        kernel = None
        if running:
            try:
                kernel = {s.key: sum(1 for d in s.dests if d.weight > 0)
                          for s in self.read_kernel()}
                self._problems.pop("ipvs", None)
            except (LvsError, OSError) as exc:
                self._problem("ipvs", f"cannot read IPVS: {exc}")
        return Health(self.stopping, os.path.exists(self.withdrawn_file), running, kernel,
                      local, set_)

    def _apply(self, wanted: FrozenSet[str]) -> FrozenSet[str]:
        if wanted == self.announced:
            return wanted
        started = time.monotonic()
        try:
            self.bird.write(render_bird(self.speaker, wanted))
            self.bird.configure()
        except (LvsError, OSError) as exc:
            self._problem("bird", f"could not tell BIRD to announce {sorted(wanted)}: {exc}")
            return self.announced or frozenset()
        self._problems.pop("bird", None)
        before = self.announced or frozenset()
        for vip in sorted(wanted - before, key=ip_sort_key):
            log.info("announcing %s", vip)
        for vip in sorted(before - wanted, key=ip_sort_key):
            log.warning("withdrew %s: %s", vip, self.reasons.get(vip))
        log.debug("BIRD reconfigured in %.3fs", time.monotonic() - started)
        self.announced = wanted
        return wanted

    def _problem(self, category: str, message: str) -> None:
        if self._problems.get(category) != message:
            log.error("%s", message)
            self._problems[category] = message

    def withdraw_all(self, served: Optional[LvsConfig]) -> FrozenSet[str]:
        """Stop announcing anything (the service is stopping)."""
        self.stopping = True
        return self.check(served)

    def close(self) -> None:
        """Put the sysctls and the VIP interface back as they were."""
        self.sysctls.restore()
        try:
            self.local.restore()
        except HostError as exc:
            log.warning("%s", exc)
