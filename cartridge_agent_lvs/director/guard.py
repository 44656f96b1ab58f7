"""The mass-removal guard: do not let one update empty the load balancer.

A truncated or empty topology (a Stratos restart, a half-written file, a broker
replaying an old retained message) looks exactly like "every member left".  Applying
it would delete real servers en masse.  The guard compares each candidate
:class:`~.model.LvsConfig` with the last one it let through: when the candidate
removes more than ``threshold`` (a share, 0-1) of all real servers, it is *held* --
the previous configuration stays -- and a loud warning is logged.  The hold is
released when a still-as-drastic candidate is seen again ``hold`` seconds or more after
the first one (the service re-checks at :meth:`MassRemovalGuard.deadline`, so a
persistent state counts as seen again), or at once when ``allow`` is set.  A
candidate that is no longer drastic cancels the hold and passes.

The first baseline can be given (``baseline=`` or :meth:`MassRemovalGuard.seed`):
after a restart, the service passes what the live keepalived.conf serves, so an
empty topology waiting on the broker is held like any other mass removal instead of
being applied as the "first" configuration.

Pure: no I/O, time passed in by the caller.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import FrozenSet, Optional, Tuple

from .model import LvsConfig

log = logging.getLogger(__name__)

Slot = Tuple[Tuple[str, int, str], Tuple[str, int]]


def real_server_slots(config: LvsConfig) -> FrozenSet[Slot]:
    """Every (virtual server key, real server key) pair of *config*."""
    return frozenset(((vs.vip, vs.port, vs.protocol), (rs.ip, rs.port))
                     for vs in config.virtual_servers for rs in vs.real_servers)


@dataclass(frozen=True)
class GuardDecision:
    config: LvsConfig          #: what to apply: the candidate, or the held-back baseline
    held: bool                 #: True while a mass removal is being held back
    removed: int = 0           #: real servers the candidate removes
    total: int = 0             #: real servers in the baseline


class MassRemovalGuard:
    """Hold back updates that remove more than *threshold* of all real servers."""

    def __init__(self, threshold: float, hold: float, allow: bool = False,
                 baseline: Optional[LvsConfig] = None) -> None:
        if not 0 <= threshold <= 1:
            raise ValueError("threshold must be a share between 0 and 1")
        self.threshold, self.hold, self.allow = threshold, hold, allow
        self._baseline: Optional[LvsConfig] = None
        self._baseline_slots: FrozenSet[Slot] = frozenset()
        self._held_since: Optional[float] = None
        if baseline is not None:
            self.seed(baseline)

    def seed(self, baseline: LvsConfig) -> None:
        """Compare the next candidate with *baseline* (what is being served now)."""
        self._baseline, self._baseline_slots = baseline, real_server_slots(baseline)

    @property
    def holding(self) -> bool:
        return self._held_since is not None

    def deadline(self) -> Optional[float]:
        """When a held update becomes eligible, or None when nothing is held."""
        return None if self._held_since is None else self._held_since + self.hold

    def check(self, candidate: LvsConfig, now: float) -> GuardDecision:
        slots = real_server_slots(candidate)
        total = len(self._baseline_slots)
        removed = len(self._baseline_slots - slots)
        drastic = total > 0 and removed / total > self.threshold
        if drastic and not self.allow:
            if self._held_since is None:
                self._held_since = now
                log.warning(
                    "MASS REMOVAL HELD BACK: the topology update removes %d of %d real "
                    "servers (%.0f%% > %.0f%%); keeping the current configuration. It is "
                    "applied if still as drastic after %gs, or set allow_mass_removal.",
                    removed, total, 100.0 * removed / total, 100.0 * self.threshold,
                    self.hold)
            if now < self._held_since + self.hold:
                assert self._baseline is not None
                return GuardDecision(self._baseline, True, removed, total)
            log.warning("mass removal confirmed after %gs: removing %d of %d real servers",
                        now - self._held_since, removed, total)
        elif drastic:
            log.warning("mass removal allowed by allow_mass_removal: removing %d of %d "
                        "real servers", removed, total)
        elif self._held_since is not None:
            log.warning("mass removal no longer pending: the topology recovered")
        self._held_since = None
        self._baseline, self._baseline_slots = candidate, slots
        return GuardDecision(candidate, False, removed, total)
