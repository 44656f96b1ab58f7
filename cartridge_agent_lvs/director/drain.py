"""Graceful drain: a real server leaves with weight 0 first, and is removed later.

Why: on a keepalived reload a real server missing from the file is deleted from
IPVS, and with the kernel default ``net.ipv4.vs.expire_nodest_conn=0`` the
connections still pointing at it are not reset -- they stall until they time out.
Weight 0 instead stops new connections while existing ones finish.  So a real server
that leaves the desired configuration is kept with weight 0 for ``drain_seconds``
and only then dropped; one that comes back meanwhile is restored at once (it is
simply in the desired configuration again).  ``drain_seconds=0`` disables draining.

A virtual server whose last real servers leave is kept until the drain ends too, but
those last ones keep their weight: keepalived 2.2.7 rejects a virtual server whose
real servers all weigh 0 ("quorum 1 ... exceeds total weight of real servers 0",
``keepalived -t`` exits 5), and dropping it at once would stall its connections.
So the last to leave still take new connections while alive (the health check
removes a dead one) and earlier leavers stay at 0.  Pure: no I/O, time passed in by
the caller; the service re-renders at :meth:`Drain.deadline`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Dict, Optional, Tuple

from .model import LvsConfig, RealServer, VirtualServer

VsKey = Tuple[str, int, str]
RsKey = Tuple[str, int]


class Drain:
    """Turns each desired configuration into the one to render, remembering leavers."""

    def __init__(self, drain_seconds: float) -> None:
        if drain_seconds < 0:
            raise ValueError("drain_seconds must be >= 0")
        self.drain_seconds = drain_seconds
        self._last: LvsConfig = LvsConfig()
        # (vs key, rs key) -> (the real server as it was before leaving, removal time)
        self._draining: Dict[Tuple[VsKey, RsKey], Tuple[RealServer, float]] = {}
        self._vs_shells: Dict[VsKey, VirtualServer] = {}

    @property
    def draining(self) -> int:
        return len(self._draining)

    def deadline(self) -> Optional[float]:
        """The next time a draining real server is due for removal."""
        return min((until for _, until in self._draining.values()), default=None)

    def apply(self, desired: LvsConfig, now: float) -> LvsConfig:
        """The configuration to render at *now* for *desired*."""
        if self.drain_seconds == 0:
            self._last = desired
            return desired
        wanted = {vs.key: vs for vs in desired.virtual_servers}
        wanted_rs = {(vs.key, rs.key) for vs in desired.virtual_servers
                     for rs in vs.real_servers}
        # newly leaving: in what was last rendered, not desired now
        for vs in self._last.virtual_servers:
            for rs in vs.real_servers:
                slot = (vs.key, rs.key)
                if slot not in wanted_rs and slot not in self._draining:
                    self._draining[slot] = (rs, now + self.drain_seconds)
                    self._vs_shells[vs.key] = replace(vs, real_servers=())
        # back again, or drained long enough
        for slot, (_, until) in list(self._draining.items()):
            if slot in wanted_rs or now >= until:
                del self._draining[slot]
        extra: Dict[VsKey, list] = {}
        for (vs_key, _), (rs, until) in self._draining.items():
            extra.setdefault(vs_key, []).append((rs, until))
        self._vs_shells = {k: v for k, v in self._vs_shells.items() if k in extra}
        if not extra:
            self._last = desired
            return desired
        servers = []
        for key in sorted(set(wanted) | set(extra)):
            vs = wanted.get(key) or self._vs_shells[key]
            merged = tuple(sorted(vs.real_servers + _leaving(extra.get(key, ()),
                                                             key not in wanted),
                                  key=lambda r: r.key))
            servers.append(replace(vs, real_servers=merged))
        result = replace(desired, virtual_servers=tuple(servers))
        self._last = result
        return result


def _leaving(draining: list, last_ones: bool) -> Tuple[RealServer, ...]:
    """The draining real servers of one virtual server, weighted.

    Weight 0, except when no desired real server is left (*last_ones*): then the
    latest leavers keep their weight so that keepalived accepts the block.
    """
    latest = max((until for _, until in draining), default=None)
    return tuple(rs if last_ones and until == latest and rs.weight else replace(rs, weight=0)
                 for rs, until in draining)
