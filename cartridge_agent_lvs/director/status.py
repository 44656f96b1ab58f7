"""What this director serves, joined with what the kernel shows.

:func:`observe` is the edge: it reads IPVS (generic netlink) and the VRRP interface's
addresses (rtnetlink) once and returns an :class:`Observation`.  Everything else is
pure: :func:`join` pairs each rendered virtual and real server with its kernel entry
(the rows behind the per-real-server metrics and the status document),
:func:`document` builds the ``/status`` document (``lvs-extension status --json``)
and :func:`format_text` the operator's view of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

from .. import __version__
from ..errors import HostError
from .converge import Drift, compare, slot_name
from .guard import Slot
from .model import LvsConfig, RealServer, VirtualServer
from .stats import DestStats, ServiceStats, _endpoint
from .vrrp import Role, role_of, roles as vrrp_roles
from .watcher import Report


@dataclass(frozen=True)
class ApplyRecord:
    """The outcome of the last time the loop gave keepalived a configuration."""

    at: float                   #: Unix time
    outcome: str                #: see ``service.OUTCOMES``
    ok: bool
    detail: str = ""
    virtual_servers: int = 0
    real_servers: int = 0
    draining: int = 0
    mass_removal_held: bool = False


@dataclass(frozen=True)
class DirectorView:
    """What the loop publishes for the metrics and status readers (immutable)."""

    vip_map: Tuple[Tuple[str, str], ...]
    interface: str
    config: Optional[LvsConfig]         #: what keepalived was given (None: nothing yet)
    #: services of the current topology (None before the first complete topology)
    topology_services: Optional[FrozenSet[str]]
    last_apply: Optional[ApplyRecord]
    convergence: Optional[Report]       #: the watcher's verdict on the last reload
    pending: FrozenSet[Slot]            #: new real servers not yet seen in IPVS
    #: mode bgp: (VIP, None if announced else why not), in VIP order; None in mode vrrp
    announcements: Optional[Tuple[Tuple[str, Optional[str]], ...]] = None


@dataclass(frozen=True)
class RealServerRow:
    server: RealServer
    dest: Optional[DestStats]           #: None: not in the kernel

    @property
    def endpoint(self) -> str:
        return _endpoint(self.server.ip, self.server.port)


@dataclass(frozen=True)
class VirtualServerRow:
    vs: VirtualServer
    kernel: Optional[ServiceStats]      #: None: not in the kernel
    real_servers: Tuple[RealServerRow, ...]

    def connections(self, field: str) -> int:
        """*field* (``active_conns`` / ``inactive_conns``) summed over the kernel's real
        servers of this virtual server (a sorry server included)."""
        return sum(getattr(d, field) for d in self.kernel.dests) if self.kernel else 0


def join(config: Optional[LvsConfig], kernel: Sequence[ServiceStats]
         ) -> Tuple[VirtualServerRow, ...]:
    """Every rendered virtual/real server with its kernel entry (or None)."""
    if config is None:
        return ()
    services = {s.key: s for s in kernel if not s.fwmark}
    rows = []
    for vs in config.virtual_servers:
        found = services.get(vs.key)
        dests = {(d.address, d.port): d for d in found.dests} if found else {}
        rows.append(VirtualServerRow(vs, found, tuple(RealServerRow(rs, dests.get(rs.key))
                                                      for rs in vs.real_servers)))
    return tuple(rows)


@dataclass(frozen=True)
class Observation:
    """One read of the kernel against the served configuration."""

    config: Optional[LvsConfig]
    kernel: Tuple[ServiceStats, ...]
    rows: Tuple[VirtualServerRow, ...]
    roles: Tuple[Role, ...]
    drift: Optional[Drift]              #: None when IPVS could not be read
    errors: Tuple[Tuple[str, str], ...] = ()        #: (source, message)
    seconds: Tuple[Tuple[str, float], ...] = ()     #: (source, read time)

    @property
    def ipvs_read(self) -> bool:
        """False when IPVS could not be read: nothing is known about the kernel."""
        return "ipvs" not in dict(self.errors)


def observe(config: Optional[LvsConfig], interface: str, pending: FrozenSet[Slot],
            read_ipvs: Callable[[], Sequence[ServiceStats]],
            read_addresses: Callable[[str], FrozenSet[str]],
            keepalived_running: Optional[Callable[[], bool]] = None) -> Observation:
    """Read IPVS and the VRRP interface once; a failing read is recorded, not raised.

    :param keepalived_running: whether keepalived runs (None: assumed to)."""
    errors, seconds = [], []
    kernel: Tuple[ServiceStats, ...] = ()
    drift = None
    started = time.perf_counter()
    try:
        kernel = tuple(read_ipvs())
        if config is not None:
            drift = compare(config, kernel, pending)
    except HostError as exc:
        errors.append(("ipvs", str(exc)))
    seconds.append(("ipvs", time.perf_counter() - started))
    roles: Tuple[Role, ...] = ()
    vrrp = config is not None and (config.vrrp is None or config.vrrp.mode == "vrrp")
    if config is not None and config.vips and vrrp:      # mode bgp has no VRRP roles
        started = time.perf_counter()
        try:
            roles = vrrp_roles(config, interface, read_addresses(interface),
                               keepalived_running() if keepalived_running else True)
        except HostError as exc:
            errors.append(("addresses", str(exc)))
        seconds.append(("addresses", time.perf_counter() - started))
    return Observation(config, kernel, join(config, kernel), roles, drift, tuple(errors),
                       tuple(seconds))


# -- the status document ------------------------------------------------------------

def _real_server(row: RealServerRow, known: bool) -> Dict[str, Any]:
    rs, dest = row.server, row.dest
    doc = {"real_server": row.endpoint, "address": rs.ip, "port": rs.port,
           "member": rs.member_id, "cluster": rs.cluster_id, "weight": rs.weight,
           "in_kernel": dest is not None if known else None}
    if dest is not None:
        doc.update(kernel_weight=dest.weight, active_connections=dest.active_conns,
                   inactive_connections=dest.inactive_conns, connections=dest.conns)
    return doc


def _virtual_server(row: VirtualServerRow, known: bool) -> Dict[str, Any]:
    vs = row.vs
    doc = {"vip": vs.vip, "port": vs.port, "protocol": vs.protocol,
           "scheduler": vs.policy.scheduler if vs.policy else None,
           "in_kernel": row.kernel is not None if known else None,
           "real_servers": [_real_server(r, known) for r in row.real_servers]}
    if row.kernel is not None:
        doc.update(kernel_scheduler=row.kernel.scheduler,
                   active_connections=row.connections("active_conns"),
                   inactive_connections=row.connections("inactive_conns"),
                   connections=row.kernel.conns)
    return doc


def _convergence(report: Optional[Report]) -> Optional[Dict[str, Any]]:
    if report is None:
        return None
    drift = report.drift
    return {"state": report.state, "seconds": _round(report.seconds),
            "event_seconds": _round(report.event_seconds), "error": report.error,
            "drift": drift.lines() if drift is not None and report.state != "converged"
            else []}


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 3)


def document(view: DirectorView, observation: Observation) -> Dict[str, Any]:
    """The status document: per mapped service its VIP, this director's VRRP role,
    each real server (member, in kernel or not, weight, connections); services mapped
    but absent from the topology; the last apply and the convergence verdict."""
    rows: Dict[str, List[VirtualServerRow]] = {}
    for row in observation.rows:
        rows.setdefault(row.vs.service, []).append(row)
    known = view.topology_services
    announced = None if view.announcements is None else dict(view.announcements)
    services = []
    for name, vip in view.vip_map:
        role = role_of(observation.roles, vip)
        bgp = None
        if announced is not None:
            reason = announced.get(vip, "not checked yet")
            bgp = {"announced": vip in announced and reason is None, "reason": reason}
        services.append({
            "service": name, "vip": vip,
            "vrrp_instance": role.instance if role else None,
            "vrrp_state": role.state if role else None,
            "bgp": bgp,
            "in_topology": None if known is None else name in known,
            "virtual_servers": [_virtual_server(r, observation.ipvs_read)
                                for r in rows.get(name, [])]})
    drift = observation.drift
    apply = view.last_apply
    return {
        "version": __version__,
        "interface": view.interface,
        "vrrp": [{"instance": r.instance, "state": r.state, "vips": list(r.vips),
                  "held": list(r.held)} for r in observation.roles],
        "services": services,
        "absent_from_topology": [] if known is None else
        [name for name, _ in view.vip_map if name not in known],
        "topology_received": known is not None,
        "last_apply": None if apply is None else {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(apply.at)),
            "unix": round(apply.at, 3), "outcome": apply.outcome, "ok": apply.ok,
            "detail": apply.detail, "virtual_servers": apply.virtual_servers,
            "real_servers": apply.real_servers, "draining": apply.draining,
            "mass_removal_held": apply.mass_removal_held},
        "convergence": _convergence(view.convergence),
        "drift": None if drift is None else {
            "missing": drift.missing, "unexpected": drift.unexpected,
            "entries": drift.lines(),
            "not_in_kernel": [slot_name(s) for s in drift.not_in_kernel]},
        "kernel_errors": dict(observation.errors),
    }


_UNKNOWN = "  kernel unknown"


def format_text(doc: Dict[str, Any]) -> str:
    """The status document for a terminal."""
    out = []
    vrrp = ", ".join(f"{r['instance']} {r['state']}" for r in doc["vrrp"]) or "no VIPs"
    out.append(f"lvs-extension {doc['version']}: VRRP on {doc['interface']}: {vrrp}")
    for svc in doc["services"]:
        where = {None: "  (no complete topology yet)", False: "  ABSENT from the topology",
                 True: ""}[svc["in_topology"]]
        role = f"  {svc['vrrp_instance']} {svc['vrrp_state']}" if svc["vrrp_state"] else ""
        if svc.get("bgp"):
            role = ("  BGP announced" if svc["bgp"]["announced"]
                    else f"  BGP withdrawn ({svc['bgp']['reason']})")
        out.append(f"service {svc['service']}  VIP {svc['vip']}{role}{where}")
        for vs in svc["virtual_servers"]:
            head = f"  {vs['protocol']} {_endpoint(vs['vip'], vs['port'])} {vs['scheduler']}"
            if vs["in_kernel"]:
                head += (f"  in kernel  active {vs['active_connections']}  inactive "
                         f"{vs['inactive_connections']}  connections {vs['connections']}")
            else:
                head += _UNKNOWN if vs["in_kernel"] is None else "  NOT IN KERNEL"
            out.append(head)
            for rs in vs["real_servers"]:
                line = f"    {rs['real_server']:<24} member {rs['member'] or '-':<24}"
                if rs["in_kernel"]:
                    line += (f" in kernel      weight {rs['kernel_weight']}  active "
                             f"{rs['active_connections']}  inactive "
                             f"{rs['inactive_connections']}  connections "
                             f"{rs['connections']}")
                elif rs["in_kernel"] is None:
                    line += f"{_UNKNOWN}  weight {rs['weight']}"
                else:
                    line += f" NOT IN KERNEL  weight {rs['weight']}"
                out.append(line.rstrip())
    apply = doc["last_apply"]
    if apply is None:
        out.append("last apply: none yet")
    else:
        out.append(f"last apply: {apply['time']}: {apply['outcome']}"
                   + (f" ({apply['detail']})" if apply["detail"] else ""))
    conv = doc["convergence"]
    if conv is not None:
        text = conv["state"]
        if conv["seconds"] is not None:
            text += f" in {conv['seconds']} s after the reload"
        if conv["event_seconds"] is not None:
            text += f" ({conv['event_seconds']} s after the topology event)"
        if conv["error"]:
            text += f": {conv['error']}"
        out.append(f"convergence: {text}")
    drift = doc["drift"]
    if drift is not None:
        entries = "; ".join(drift["entries"][:10])
        out.append(f"drift now: {drift['missing']} missing, {drift['unexpected']} unexpected"
                   + (f": {entries}" if entries else ""))
    for source, message in doc["kernel_errors"].items():
        out.append(f"cannot read {source}: {message}")
    return "\n".join(out)
