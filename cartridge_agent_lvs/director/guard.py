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

The guard keeps the baseline's real servers per virtual server, so a candidate in which
most virtual servers are the very objects of the baseline (one member event at 10,000
real servers) costs a look-up for those and a set difference for the others only.

Pure: no I/O, time passed in by the caller.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, FrozenSet, Optional, Tuple

from .model import LvsConfig, RealServer

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


VsKey = Tuple[str, int, str]
#: per virtual server: its real servers and the set of their (ip, port) keys
_Members = Dict[VsKey, Tuple[Tuple[RealServer, ...], FrozenSet[Tuple[str, int]]]]


def _members(config: LvsConfig, known: _Members) -> _Members:
    """*config*'s real server keys per virtual server; a virtual server whose real
    servers are those in *known* reuses its set (at 10,000 real servers one member
    event changes one virtual server: the others cost a look-up)."""
    out: _Members = {}
    for vs in config.virtual_servers:
        old = known.get(vs.key)
        if old is not None and (old[0] is vs.real_servers or old[0] == vs.real_servers):
            out[vs.key] = old
        else:
            out[vs.key] = (vs.real_servers, frozenset(rs.key for rs in vs.real_servers))
    return out


class MassRemovalGuard:
    """Hold back updates that remove more than *threshold* of all real servers."""

    def __init__(self, threshold: float, hold: float, allow: bool = False,
                 baseline: Optional[LvsConfig] = None) -> None:
        if not 0 <= threshold <= 1:
            raise ValueError("threshold must be a share between 0 and 1")
        self.threshold, self.hold, self.allow = threshold, hold, allow
        self._baseline: Optional[LvsConfig] = None
        self._members: _Members = {}
        self._total = 0
        self._held_since: Optional[float] = None
        if baseline is not None:
            self.seed(baseline)

    def seed(self, baseline: LvsConfig) -> None:
        """Compare the next candidate with *baseline* (what is being served now)."""
        self._set_baseline(baseline, _members(baseline, {}))

    def _set_baseline(self, baseline: LvsConfig, members: _Members) -> None:
        self._baseline, self._members = baseline, members
        self._total = sum(len(keys) for _, keys in members.values())

    @property
    def holding(self) -> bool:
        return self._held_since is not None

    def deadline(self) -> Optional[float]:
        """When a held update becomes eligible, or None when nothing is held."""
        return None if self._held_since is None else self._held_since + self.hold

    def check(self, candidate: LvsConfig, now: float) -> GuardDecision:
        members = _members(candidate, self._members)
        total = self._total
        removed = 0
        for key, (_, before) in self._members.items():
            after = members.get(key)
            if after is None:
                removed += len(before)
            elif after[1] is not before:
                removed += len(before - after[1])
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
        self._set_baseline(candidate, members)
        return GuardDecision(candidate, False, removed, total)
