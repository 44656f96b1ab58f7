"""Booting members' real servers checked by keepalived before Stratos activates them.

A member that comes costs its activation a ``keepalived -t`` of its new real-server
block (:mod:`.increment`): a keepalived start, on the way from the event to the
kernel.  Stratos announces a member long before it is active: MemberInitializedEvent
carries its addresses once its instance exists, MemberStartedEvent follows when its
cartridge agent runs, MemberActivatedEvent only once the agent reports the
application up -- tens of seconds to minutes later.  In between the director renders
what the topology will serve once its booting members are active
(:func:`~.topology.prospective`) and has keepalived check the new blocks in the
background (``Keepalived.vet``); blocks it accepts join what the instance knows
keepalived accepted, so the activation writes and signals at once.  A block refused
ahead is not remembered: its activation checks it again and is refused with
keepalived's own lines, as without this.

Side effects stay in ``Keepalived.vet`` (a temporary file, a child process); this
object only decides when, and polls.
"""

from __future__ import annotations

import logging
from typing import Callable, List, Optional

from .topology import BOOTING_EVENTS, Topology, prospective

log = logging.getLogger(__name__)

#: how often a running check is polled, s
POLL = 0.05


class AheadChecks:
    """When to check booting members ahead, and the checks running.

    :param plan: topology -> :class:`~.plan.Plan` (a plan cache of its own: the
        prospective topology must not evict the live one's plans).
    :param counted: told each check's result (True: accepted), for the metrics.
    """

    def __init__(self, plan: Callable[[Topology], object],
                 counted: Callable[[bool], None] = lambda ok: None) -> None:
        self._plan = plan
        self._counted = counted
        self.running: List = []
        self.due = False
        self._poll_at: Optional[float] = None

    def note(self, event_name: str, complete: bool) -> None:
        """A topology update was folded: may it have left members booting?"""
        if complete or event_name in BOOTING_EVENTS:
            self.due = True

    def deadline(self) -> Optional[float]:
        """When a running check is to be polled next.  Starting checks needs no
        deadline of its own: the loop ticks at least every few tenths of a second."""
        return self._poll_at if self.running else None

    def tick(self, now: float, topology: Optional[Topology], keepalived) -> None:
        """Poll the running checks; else, when due, start those the topology needs.
        The caller calls it only when its own pipeline is not waiting to run."""
        if self.running:
            still = []
            for check in self.running:
                ok = check.poll()
                if ok is None:
                    still.append(check)
                else:
                    self._counted(ok)
            self.running = still
            self._poll_at = now + POLL if still else None
            return
        if not self.due or topology is None:
            return
        self.due = False
        ahead = prospective(topology)
        if ahead is topology:
            return
        self.running = keepalived.vet(self._plan(ahead).config)
        if self.running:
            log.debug("checking %d file(s) of booting members' real servers ahead",
                      len(self.running))
            self._poll_at = now + POLL

    def close(self) -> None:
        """Stop the checks still running (the service stops)."""
        for check in self.running:
            check.cancel()
        self.running = []
