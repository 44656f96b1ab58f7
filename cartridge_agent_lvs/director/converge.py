"""Does the kernel's IPVS table show what keepalived was asked to serve?  Pure.

A reload is a SIGHUP: fire and forget.  keepalived can fail to apply a file that
``keepalived -t`` accepted, or not run at all.  So after each reload the service
reads IPVS back (:mod:`.watcher`) and compares it with the configuration it
rendered, using :func:`compare`.

**Converged** means, for the rendered :class:`~.model.LvsConfig`:

1. every desired virtual server (VIP, port, protocol) is in IPVS, with the desired
   scheduler;
2. every real server IPVS lists under a desired virtual server is desired there
   (or is that virtual server's ``sorry_server``), with the desired weight;
3. every real server that is *new* in this configuration (not in the one served
   before) has been seen in IPVS at least once since the reload: keepalived adds a
   new real server at once (no ``alpha`` is rendered) and its health check takes it
   out later if it is down;
4. no other IPVS service exists (keepalived.conf is this director's whole file).

A desired real server that was already served before the reload and is absent from
IPVS is **not in kernel**: keepalived kept its checker state across the reload and
its health check holds it out.  The kernel cannot say why a real server is absent,
so this is reported apart (status, ``real_server_in_kernel 0``) and is not drift.

Everything else is **drift**: desired entries *missing* (a virtual server, which
counts once, a wrong scheduler, a new real server never seen, a wrong weight) and
*unexpected* entries present.  :func:`bound` is how long a reload may take before
drift is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Container, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, \
    Tuple

from .guard import Slot
from .model import LvsConfig
from .stats import ServiceStats, _endpoint

VsKey = Tuple[str, int, str]
RsKey = Tuple[str, int]
#: slots grouped by virtual server (what the watcher keeps of the new real servers)
Pending = Mapping[VsKey, FrozenSet[RsKey]]

#: what keepalived needs to re-read its file and change IPVS, beyond a check cycle
RELOAD_GRACE = 10.0


@dataclass(frozen=True)
class Drift:
    """The difference between a desired configuration and IPVS (empty = converged)."""

    missing_virtual_servers: Tuple[VsKey, ...] = ()
    #: (virtual server, desired scheduler, kernel scheduler)
    wrong_schedulers: Tuple[Tuple[VsKey, str, str], ...] = ()
    #: new real servers not seen in IPVS since the reload
    missing_real_servers: Tuple[Slot, ...] = ()
    #: (slot, desired weight, kernel weight)
    wrong_weights: Tuple[Tuple[Slot, int, int], ...] = ()
    unexpected_virtual_servers: Tuple[VsKey, ...] = ()
    unexpected_real_servers: Tuple[Slot, ...] = ()
    #: served before the reload, absent now: held out by the health check (not drift)
    not_in_kernel: Tuple[Slot, ...] = ()

    @property
    def missing(self) -> int:
        """Desired entries IPVS does not show as desired."""
        return (len(self.missing_virtual_servers) + len(self.wrong_schedulers)
                + len(self.missing_real_servers) + len(self.wrong_weights))

    @property
    def unexpected(self) -> int:
        """Entries IPVS shows that are not desired."""
        return len(self.unexpected_virtual_servers) + len(self.unexpected_real_servers)

    @property
    def converged(self) -> bool:
        return self.missing == 0 and self.unexpected == 0

    def lines(self) -> List[str]:
        """One short phrase per drift entry (for logs and the status document)."""
        out = [f"virtual server {vs_name(k)} missing" for k in self.missing_virtual_servers]
        out += [f"virtual server {vs_name(k)} scheduler {kernel}, not {want}"
                for k, want, kernel in self.wrong_schedulers]
        out += [f"real server {slot_name(s)} never appeared" for s in self.missing_real_servers]
        out += [f"real server {slot_name(s)} weight {kernel}, not {want}"
                for s, want, kernel in self.wrong_weights]
        out += [f"unexpected virtual server {vs_name(k)}"
                for k in self.unexpected_virtual_servers]
        out += [f"unexpected real server {slot_name(s)}" for s in self.unexpected_real_servers]
        return out

    def summary(self, limit: int = 5) -> str:
        lines = self.lines()
        more = f"; ... ({len(lines) - limit} more)" if len(lines) > limit else ""
        return "; ".join(lines[:limit]) + more


def vs_name(key: VsKey) -> str:
    vip, port, protocol = key
    return f"{protocol} {_endpoint(vip, port)}" if vip else f"{protocol} {port}"


def slot_name(slot: Slot) -> str:
    vs, (ip, port) = slot
    return f"{_endpoint(ip, port)} of {vs_name(vs)}"


def kernel_key(service: ServiceStats) -> VsKey:
    """A kernel service's key; a firewall-mark service has no address (``FWM mark``)."""
    return ("", service.fwmark, "FWM") if service.fwmark else service.key


def kernel_slots(services: Iterable[ServiceStats]) -> FrozenSet[Slot]:
    """Every (virtual server, real server) pair IPVS shows."""
    return frozenset((kernel_key(s), (d.address, d.port)) for s in services for d in s.dests)


def new_slots(desired: LvsConfig, previous: Optional[LvsConfig]) -> FrozenSet[Slot]:
    """The real servers *desired* serves that *previous* did not.

    Virtual servers whose real servers did not change are skipped without building
    their slots (at 10,000 real servers this runs after every reload)."""
    before = {vs.key: vs.real_servers for vs in previous.virtual_servers} \
        if previous is not None else {}
    new = []
    for vs in desired.virtual_servers:
        old = before.get(vs.key)
        if old == vs.real_servers:
            continue
        known = {(rs.ip, rs.port) for rs in old} if old else set()
        new += [(vs.key, (rs.ip, rs.port)) for rs in vs.real_servers
                if (rs.ip, rs.port) not in known]
    return frozenset(new)


def by_virtual_server(slots: Iterable[Slot]) -> Dict[VsKey, FrozenSet[RsKey]]:
    """*slots* grouped by virtual server."""
    out: Dict[VsKey, set] = {}
    for vs_key, rs_key in slots:
        out.setdefault(vs_key, set()).add(rs_key)
    return {k: frozenset(v) for k, v in out.items()}


def still_desired(pending: Pending, desired: LvsConfig,
                  before: Optional[LvsConfig] = None) -> Dict[VsKey, FrozenSet[RsKey]]:
    """Those of *pending* (real servers of *before*, by virtual server) that *desired*
    still serves.

    A virtual server whose real servers are the very ones it had in *before* keeps its
    set as it is (no look-up per real server: at 10,000 real servers this runs on every
    reload); a set is intersected only for the others."""
    servers = {vs.key: vs.real_servers for vs in desired.virtual_servers}
    old = {vs.key: vs.real_servers for vs in before.virtual_servers} \
        if before is not None else {}
    out = {}
    for key, rs_keys in pending.items():
        now = servers.get(key)
        if now is None:
            continue
        if now is not old.get(key):
            rs_keys = rs_keys & frozenset(rs.key for rs in now)
        if rs_keys:
            out[key] = rs_keys
    return out


def changed_virtual_servers(desired: LvsConfig,
                            previous: Optional[LvsConfig]) -> Optional[FrozenSet[VsKey]]:
    """The virtual servers of *desired* that differ from *previous*' (new ones
    included); None when there is no *previous* (all of them are new).

    The very same object counts as unchanged without a comparison, so one member event
    at 10,000 real servers compares one virtual server."""
    if previous is None:
        return None
    before = {vs.key: vs for vs in previous.virtual_servers}
    return frozenset(vs.key for vs in desired.virtual_servers
                     if not (before.get(vs.key) is vs or before.get(vs.key) == vs))


def compare(desired: LvsConfig, kernel: Sequence[ServiceStats],
            pending: Container[Slot] = frozenset(),
            only: Optional[Container[VsKey]] = None) -> Drift:
    """*kernel* against *desired*; *pending*: new real servers not yet seen in IPVS.

    *only*: the virtual servers whose real servers *kernel* holds (None: all); of the
    others only the presence and the scheduler are compared -- the service list is
    short, the real servers are what is costly to read."""
    by_key = {kernel_key(s): s for s in kernel}
    missing_vs, schedulers, missing_rs, weights, unexpected_rs, absent = [], [], [], [], [], []
    for vs in desired.virtual_servers:
        found = by_key.pop(vs.key, None)
        if found is None:
            missing_vs.append(vs.key)
            continue
        if vs.policy is not None and found.scheduler != vs.policy.scheduler:
            schedulers.append((vs.key, vs.policy.scheduler, found.scheduler))
        if only is not None and vs.key not in only:
            continue
        dests = {(d.address, d.port): d for d in found.dests}
        for rs in vs.real_servers:
            slot = (vs.key, rs.key)
            dest = dests.pop(rs.key, None)
            if dest is None:
                (missing_rs if slot in pending else absent).append(slot)
            elif dest.weight != rs.weight:
                weights.append((slot, rs.weight, dest.weight))
        sorry = vs.policy.sorry_server if vs.policy is not None else None
        unexpected_rs += [(vs.key, key) for key in sorted(dests) if key != sorry]
    return Drift(tuple(missing_vs), tuple(schedulers), tuple(missing_rs), tuple(weights),
                 tuple(sorted(by_key)), tuple(unexpected_rs), tuple(absent))


def bound(config: LvsConfig) -> float:
    """Seconds after a reload by which IPVS must show *config*.

    :data:`RELOAD_GRACE` plus one health-check cycle of the slowest virtual server
    (``delay_loop + connect_timeout * (retry + 1)``): keepalived re-reads the whole file
    in its checker process, and a real server kept across the reload may be held out
    until its next check.
    """
    cycles = [0.0]
    for vs in config.virtual_servers:
        policy = vs.policy
        if policy is None:
            continue
        check = policy.check
        cycles.append(policy.delay_loop + (check.connect_timeout * (check.retry + 1)
                                           if check is not None else 0))
    return RELOAD_GRACE + max(cycles)
