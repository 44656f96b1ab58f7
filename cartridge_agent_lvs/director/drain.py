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
from typing import Dict, FrozenSet, Optional, Tuple

from .model import LvsConfig, RealServer, VirtualServer
from .plan import rs_sort_key, vs_sort_key

VsKey = Tuple[str, int, str]
RsKey = Tuple[str, int]


class Drain:
    """Turns each desired configuration into the one to render, remembering leavers.

    Work per call is proportional to what changed: a virtual server whose real
    servers are the very ones of the previous call is passed through as it is (the
    same object, so an unchanged shard stays unchanged), and a virtual server with a
    real server draining is rebuilt, in the planner's order, only when it or its
    draining real servers changed -- otherwise the object built last time is given
    again, so an event elsewhere does not make it look changed to the guard, the
    renderer and the convergence watcher.
    """

    def __init__(self, drain_seconds: float) -> None:
        if drain_seconds < 0:
            raise ValueError("drain_seconds must be >= 0")
        self.drain_seconds = drain_seconds
        #: the previous call's desired virtual servers, by key
        self._desired: Dict[VsKey, VirtualServer] = {}
        # (vs key, rs key) -> (the real server as it was before leaving, removal time)
        self._draining: Dict[Tuple[VsKey, RsKey], Tuple[RealServer, float]] = {}
        self._vs_shells: Dict[VsKey, VirtualServer] = {}
        #: vs key -> (desired virtual server, its draining entries, what was built)
        self._built: Dict[VsKey, Tuple[VirtualServer, tuple, VirtualServer]] = {}

    @property
    def draining(self) -> int:
        return len(self._draining)

    def deadline(self) -> Optional[float]:
        """The next time a draining real server is due for removal."""
        return min((until for _, until in self._draining.values()), default=None)

    def apply(self, desired: LvsConfig, now: float) -> LvsConfig:
        """The configuration to render at *now* for *desired*."""
        wanted = {vs.key: vs for vs in desired.virtual_servers}
        before, self._desired = self._desired, wanted
        if self.drain_seconds == 0:
            return desired
        keys: Dict[VsKey, FrozenSet[RsKey]] = {}

        def wanted_keys(key: VsKey) -> FrozenSet[RsKey]:
            if key not in keys:
                vs = wanted.get(key)
                keys[key] = frozenset(rs.key for rs in vs.real_servers) if vs else frozenset()
            return keys[key]
        # newly leaving: desired last time, not now (draining ones are never desired)
        for key, old in before.items():
            new = wanted.get(key)
            if new is not None and (new.real_servers is old.real_servers
                                    or new.real_servers == old.real_servers):
                continue
            for rs in old.real_servers:
                if rs.key not in wanted_keys(key):
                    self._draining[(key, rs.key)] = (rs, now + self.drain_seconds)
                    self._vs_shells[key] = replace(old, real_servers=())
        # back again, or drained long enough
        for slot, (_, until) in list(self._draining.items()):
            if now >= until or slot[1] in wanted_keys(slot[0]):
                del self._draining[slot]
        extra: Dict[VsKey, list] = {}
        for (vs_key, _), (rs, until) in self._draining.items():
            extra.setdefault(vs_key, []).append((rs, until))
        self._vs_shells = {k: v for k, v in self._vs_shells.items() if k in extra}
        built, self._built = self._built, {}
        if not extra:
            return desired
        servers = [vs for vs in desired.virtual_servers if vs.key not in extra]
        for key, leaving in extra.items():
            vs = wanted.get(key) or self._vs_shells[key]
            entries = tuple(leaving)
            old = built.get(key)
            if old is not None and old[0] is vs and len(old[1]) == len(entries) and all(
                    rs is was and until == then
                    for (rs, until), (was, then) in zip(entries, old[1])):
                self._built[key] = old
                servers.append(old[2])
                continue
            merged = vs.real_servers + _leaving(leaving, key not in wanted)
            result = replace(vs, real_servers=tuple(sorted(merged, key=rs_sort_key)))
            self._built[key] = (vs, entries, result)
            servers.append(result)
        return replace(desired, virtual_servers=tuple(sorted(servers, key=vs_sort_key)))


def _leaving(draining: list, last_ones: bool) -> Tuple[RealServer, ...]:
    """The draining real servers of one virtual server, weighted.

    Weight 0, except when no desired real server is left (*last_ones*): then the
    latest leavers keep their weight so that keepalived accepts the block.
    """
    latest = max((until for _, until in draining), default=None)
    return tuple(rs if last_ones and until == latest and rs.weight else replace(rs, weight=0)
                 for rs, until in draining)
