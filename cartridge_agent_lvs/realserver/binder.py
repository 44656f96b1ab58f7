"""Apply and undo the LVS-DR real-server setup: VIPs on a dummy link + ARP sysctls.

``apply(request)``:

1. look at the host once (all addresses, the link) and decide everything first: a VIP
   already bound on another interface is an error before anything changes;
2. with ``LVS_MODE=auto``, create the dummy link; where the kernel has no dummy
   driver (EOPNOTSUPP), bind on ``lo`` instead and say so; ``dummy`` / ``loopback``
   force one;
3. bind every VIP as a host address (/32, /128: a payload netmask is accepted but
   never installs a subnet route), IPv6 without DAD;
4. take a VIP off a dummy link where the Stratos agent's stock bash extension bound
   it as ``VIP/NETMASK`` (``dummy0``, with a subnet route and no ARP settings): the
   host ends with exactly the host address;
5. set ``arp_ignore=1`` / ``arp_announce=2`` on ``all`` and on the VIP's interface;
6. record what changed (and the sysctls' previous values) in the state file.

An existing interface named by ``LVS_INTERFACE`` must be a dummy link: a VIP on a
real NIC would answer ARP for it (``arp_ignore`` cannot help on the interface that
owns the address) and steal the director's traffic.

Every change is journalled; if any step fails, the journal is undone in reverse and
the host is as before.  A second apply of the same request changes nothing.

``remove()`` undoes exactly what the state file records, then deletes it.
"""

from __future__ import annotations

import logging
import copy
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from ..errors import HostError
from ..payload import LvsRequest
from .modes import DUMMY, LOOPBACK, TUNNEL, BindingMode, mode_of
from .netlink import NetlinkHost, NoLinkDriver, PartialAdd
from .state import State, StateStore
from .sysctl import Sysctl

log = logging.getLogger(__name__)


@dataclass
class Report:
    """What an apply/remove did, for the log and the CLI."""

    interface: str = ""
    mode: str = ""
    actions: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.actions)

    def lines(self) -> List[str]:
        head = [f"interface {self.interface} ({self.mode})"] if self.interface else []
        return head + self.actions + self.notes + ([] if self.actions else ["no change"])


class _Journal:
    """Undo steps, run in reverse on failure."""

    def __init__(self) -> None:
        self._undo: List[Tuple[str, Callable[[], object]]] = []

    def add(self, what: str, undo: Callable[[], object]) -> None:
        self._undo.append((what, undo))

    def rollback(self) -> bool:
        """Undo everything; False when some step could not be undone."""
        ok = True
        for what, undo in reversed(self._undo):
            try:
                undo()
            except Exception as exc:   # keep undoing the rest
                log.error("rollback: could not undo %s: %s", what, exc)
                ok = False
        self._undo.clear()
        return ok


class VipBinder:
    def __init__(self, host: NetlinkHost, sysctl: Sysctl, store: StateStore) -> None:
        self.host, self.sysctl, self.store = host, sysctl, store

    # -- apply ----------------------------------------------------------------------

    def apply(self, request: LvsRequest) -> Report:
        original = self.store.load()
        if original and original.interface not in (request.interface, "lo"):
            raise HostError(f"this host is already set up on {original.interface}; remove "
                            f"that first (cartridge-agent-lvs remove)")
        journal = _Journal()
        try:
            return self._apply(request, copy.deepcopy(original), journal)
        except BaseException:
            if journal.rollback():      # the host is as before: so is the record
                self._restore_record(original)
            raise

    def _restore_record(self, original: Optional[State]) -> None:
        if original is None:
            self.store.delete()
        else:
            self.store.save(original)

    def _apply(self, request: LvsRequest, state: Optional[State],
               journal: _Journal) -> Report:
        """Every change is recorded (write-ahead) before it is made."""
        bound = self.host.addresses()
        mode = self._choose(request, state)
        ifname = mode.interface(request.interface)
        stock = self._stock_bindings({v.address: v.host_prefixlen for v in request.vips},
                                     bound, ifname)
        bound = [a for a in bound if a not in stock]
        self._check_conflicts(request.vips, bound, ifname, request.mode)
        report = Report(ifname, mode.name)
        state = state or State(interface=ifname, mode=mode.name)
        index = self.host.link_index(ifname)
        if index is not None:
            self._check_kind(mode, ifname, index)
        else:
            index, mode = self._create(request, mode, state, journal, report)
            ifname = report.interface = mode.interface(request.interface)
            report.mode = mode.name
            self._check_conflicts(request.vips, bound, ifname, "fixed")
        if not self.host.is_up(index):
            if not state.created_link:
                state.brought_up = True
                self.store.save(state)
            self.host.set_up(index)
            report.actions.append(f"brought {ifname} up")
        here = {(a.address, a.prefixlen) for a in bound if a.index == index}
        todo = [v for v in request.vips if (v.address, v.host_prefixlen) not in here]
        if todo:
            state.addresses += [f"{v.address}/{v.host_prefixlen}" for v in todo
                                if f"{v.address}/{v.host_prefixlen}" not in state.addresses]
            self.store.save(state)
        added = todo          # unless the kernel says which, any of them may be there
        try:
            self.host.add_addresses(index, todo)
        except PartialAdd as exc:
            added = exc.added
            raise
        finally:
            if todo:
                journal.add("addresses", lambda: self.host.delete_addresses(
                    index, [(v.address, v.host_prefixlen) for v in added]))
        for vip in todo:
            report.actions.append(f"bound {vip.address}/{vip.host_prefixlen} on {ifname}"
                                  + (f" (payload mask /{vip.prefixlen}: no subnet route)"
                                     if vip.prefixlen != vip.host_prefixlen else ""))
        self._take_off(stock, state, journal, report)
        self._set_sysctls(mode, ifname, state, journal, report)
        self._converge(request, index, state, report)
        if report.changed:
            self.store.save(state)
        return report

    def _converge(self, request: LvsRequest, index: int, state: State,
                  report: Report) -> None:
        """Unbind what an earlier payload bound and this one no longer asks for."""
        wanted = {f"{v.address}/{v.host_prefixlen}" for v in request.vips}
        stale = [e for e in state.addresses if e not in wanted]
        if not stale:
            return
        entries = [(a, int(p)) for a, _, p in (e.partition("/") for e in stale)]
        self.host.delete_addresses(index, entries)
        state.addresses = [e for e in state.addresses if e in wanted]
        report.actions += [f"removed {e} from {state.interface} (no longer in the payload)"
                           for e in stale]

    @staticmethod
    def _choose(request: LvsRequest, state: Optional[State]) -> BindingMode:
        if request.mode == "auto":
            return LOOPBACK if state and state.mode == LOOPBACK.name else DUMMY
        return mode_of(request.mode)

    def _create(self, request: LvsRequest, mode: BindingMode, state: State,
                journal: _Journal, report: Report) -> Tuple[int, BindingMode]:
        """Get the mode's link: create the dummy one (or fall back to lo in auto mode
        without the driver), have the kernel make ``tunl0``."""
        if mode is TUNNEL:
            index = self.host.ensure_tunnel(mode.interface(""))
            return index, mode
        if not mode.creates_link:
            raise HostError(f"no {mode.interface(request.interface)} in {self.host.where}")
        state.interface, state.mode, state.created_link = request.interface, mode.name, True
        self.store.save(state)
        try:
            index = self.host.create_dummy(request.interface)
        except NoLinkDriver:
            state.interface, state.mode, state.created_link = "lo", LOOPBACK.name, False
            if request.mode == "dummy":
                raise HostError(f"LVS_MODE=dummy but the kernel of {self.host.where} has "
                                "no dummy link driver") from None
            log.warning("no dummy link driver in %s: binding the VIPs on lo instead",
                        self.host.where)
            report.notes.append("the kernel has no dummy driver: VIPs bound on lo "
                                "(loopback fallback)")
            index = self.host.link_index("lo")
            if index is None:
                raise HostError(f"no lo in {self.host.where}") from None
            return index, LOOPBACK
        journal.add(f"link {request.interface}", lambda: self.host.delete_link(index))
        report.actions.append(f"created dummy link {request.interface}")
        return index, mode

    def _check_kind(self, mode: BindingMode, ifname: str, index: int) -> None:
        kind = self.host.link_kind(index)
        if mode.kind is not None and kind != mode.kind:
            raise HostError(f"{ifname} is an existing {kind or 'physical'} link, not a "
                            f"{mode.kind} one: a VIP there would answer ARP and steal the "
                            "director's traffic; name a dummy or a new interface")

    def _stock_bindings(self, wanted: dict, bound, ifname: str) -> list:
        """Addresses the stock ``CreateLVSDummyInterface.sh`` left: a VIP (address ->
        its host prefix length in *wanted*) with a subnet prefix on a dummy link other
        than ours."""
        kinds: dict = {}
        found = []
        for a in bound:
            if a.ifname != ifname and a.prefixlen < wanted.get(a.address, 0):
                if a.index not in kinds:
                    kinds[a.index] = self.host.link_kind(a.index)
                if kinds[a.index] == "dummy":
                    found.append(a)
        return found

    def _take_off(self, stock: list, state: State, journal: _Journal,
                  report: Report) -> None:
        if stock:
            state.adopted += [f"{a.address}/{a.prefixlen} {a.ifname}" for a in stock]
            self.store.save(state)
        for a in stock:
            self.host.delete_addresses(a.index, [(a.address, a.prefixlen)])
            journal.add(f"{a.address}/{a.prefixlen} on {a.ifname}",
                        lambda a=a: self.host.add_subnet_addresses(
                            a.index, [(a.address, a.prefixlen)]))
            report.actions.append(f"took {a.address}/{a.prefixlen} off {a.ifname} (bound "
                                  "there by the stock bash extension, with a subnet route)")

    @staticmethod
    def _check_conflicts(vips, bound, ifname: str, mode: str) -> None:
        allowed = {ifname} | ({"lo"} if mode == "auto" else set())
        where: dict = {}
        for a in bound:
            if a.ifname not in allowed:
                where.setdefault(a.address, a.ifname)
        for vip in vips:
            if vip.address in where:
                raise HostError(f"VIP {vip.address} is already bound on "
                                f"{where[vip.address]}; refusing to bind it twice")

    def _set_sysctls(self, mode: BindingMode, ifname: str, state: State,
                     journal: _Journal, report: Report) -> None:
        current = self.sysctl.read_many(mode.sysctl_keys(ifname))
        missing = [k for k, v in current.items() if v is None]
        if missing:
            raise HostError(f"kernel parameter {missing[0].replace('/', '.')} does not exist")
        changes = mode.changes(ifname, current)
        if not changes:
            return
        previous = {k: current[k] for k in changes}
        for k in changes:
            state.sysctls.setdefault(k, previous[k])
        self.store.save(state)
        journal.add("sysctls", lambda: self.sysctl.write_many(previous))
        self.sysctl.write_many(changes)
        for k in changes:
            report.actions.append(f"set {k.replace('/', '.')}={changes[k]} "
                                  f"(was {previous[k]})")

    # -- remove ---------------------------------------------------------------------

    def remove(self) -> Report:
        state = self.store.load()
        if state is None:
            return Report(notes=["nothing recorded: nothing to undo"])
        report = Report(state.interface, state.mode)
        index = self.host.link_index(state.interface)
        failures: List[str] = []
        remaining = State(state.interface, state.mode)
        entries = [(a, int(p)) for a, _, p in (e.partition("/") for e in state.addresses)]
        if index is not None and entries:
            try:
                removed = self.host.delete_addresses(index, entries)
                report.actions += [f"removed {a}/{p} from {state.interface}"
                                   for (a, p), done in zip(entries, removed) if done]
            except HostError as exc:
                failures.append(str(exc))
                remaining.addresses = list(state.addresses)
        try:    # the stock bash extension may have bound a VIP again since apply
            for a in self._stock_bindings(dict(entries), self.host.addresses(),
                                          state.interface):
                self.host.delete_addresses(a.index, [(a.address, a.prefixlen)])
                report.actions.append(f"removed {a.address}/{a.prefixlen} from {a.ifname} "
                                      "(bound there by the stock bash extension)")
        except HostError as exc:
            failures.append(str(exc))
        if state.created_link and index is not None:
            try:
                self._check_kind(DUMMY, state.interface, index)   # never delete another
                self.host.delete_link(index)
                report.actions.append(f"deleted dummy link {state.interface}")
                index = None
            except HostError as exc:
                failures.append(str(exc))
                remaining.created_link = True
        if state.brought_up and index is not None:
            try:
                self.host.set_down(index)
                report.actions.append(f"set {state.interface} down (it was down before)")
            except HostError as exc:
                failures.append(str(exc))
                remaining.brought_up = True
        restore = {k: v for k, v in state.sysctls.items()
                   if index is not None or "/all/" in k or f"/{state.interface}/" not in k}
        try:
            self.sysctl.write_many(restore)
            report.actions += [f"restored {k.replace('/', '.')}={v}" for k, v in
                               restore.items()]
        except HostError as exc:
            failures.append(str(exc))
            remaining.sysctls = dict(restore)
        if failures:
            self.store.save(remaining)
            raise HostError("cleanup incomplete: " + "; ".join(failures))
        self.store.delete()
        return report
