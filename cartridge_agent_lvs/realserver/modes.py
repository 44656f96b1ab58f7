"""How the VIPs are made local on a real server: one small strategy per ``LVS_MODE``.

Each mode says which interface carries the VIPs, what kind of link it must be, how
to get that link, which kernel parameters it needs and what ``status`` must check.
The binder (:mod:`.binder`) runs the same steps for every mode -- journal, bind,
sysctls, record -- and asks the mode for the parts that differ.

``dummy``
    a dummy link (default ``lvs0``), created when absent and deleted at cleanup;
``loopback``
    ``lo`` (where the kernel has no dummy driver; ``auto`` falls back to it);
``tunnel``
    ``tunl0``, the IPIP fallback device, for LVS-TUN: the director encapsulates each
    packet to the real server, which may sit in another subnet.  The kernel creates
    ``tunl0`` in every namespace once the ``ipip`` module is loaded; asking netlink
    for an ``ipip`` link loads it.  Decapsulated packets arrive on ``tunl0`` with the
    client's source address, which strict reverse-path filtering drops: ``rp_filter``
    is made loose (2) on ``tunl0`` and ``all`` where it is strict (1) -- the kernel
    applies the maximum of the two.

All modes set ``arp_ignore=1`` / ``arp_announce=2`` on ``all`` and the interface, and
never lower a stricter value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional

ARP_WANTED = (("arp_ignore", 1), ("arp_announce", 2))
#: rp_filter: 0 off, 1 strict, 2 loose
RP_STRICT, RP_LOOSE = "1", "2"


def conf_key(dev: str, name: str) -> str:
    return f"net/ipv4/conf/{dev}/{name}"


@dataclass(frozen=True)
class BindingMode:
    """The default strategy (loopback); subclasses change what differs."""

    name: str = "loopback"
    #: the link kind the interface must have (None: loopback, no kind)
    kind: Optional[str] = None
    #: the plugin creates the link when absent and deletes it at cleanup
    creates_link: bool = False
    fixed_interface: Optional[str] = "lo"

    def interface(self, requested: str) -> str:
        return self.fixed_interface or requested

    def sysctl_keys(self, ifname: str) -> list:
        """Every parameter this mode reads (and may set)."""
        return [conf_key(dev, name) for dev in ("all", ifname) for name, _ in ARP_WANTED]

    def changes(self, ifname: str, current: Mapping[str, str]) -> Dict[str, str]:
        """Parameter -> new value, for those that must change (never weakening one)."""
        out = {}
        for dev in ("all", ifname):
            for name, want in ARP_WANTED:
                key = conf_key(dev, name)
                if not current[key].isdigit() or int(current[key]) < want:
                    out[key] = str(want)
        return out

    def problems(self, ifname: str, values: Mapping[str, Optional[str]]) -> list:
        """What keeps this host from serving LVS in this mode (sysctls only)."""
        problems = []
        for name, want in ARP_WANTED:
            effective = max((int(values[conf_key(d, name)] or 0) for d in ("all", ifname)))
            if effective < want:
                problems.append(f"{name} < {want}: the host "
                                + ("answers ARP for the VIPs" if name == "arp_ignore"
                                   else "may announce the VIPs"))
        return problems


@dataclass(frozen=True)
class TunnelMode(BindingMode):
    name: str = "tunnel"
    kind: Optional[str] = "ipip"
    fixed_interface: Optional[str] = "tunl0"

    def sysctl_keys(self, ifname: str) -> list:
        return super().sysctl_keys(ifname) + [conf_key(d, "rp_filter") for d in ("all", ifname)]

    def changes(self, ifname: str, current: Mapping[str, str]) -> Dict[str, str]:
        out = super().changes(ifname, current)
        for dev in ("all", ifname):
            if current[conf_key(dev, "rp_filter")] == RP_STRICT:
                out[conf_key(dev, "rp_filter")] = RP_LOOSE
        return out

    def problems(self, ifname: str, values: Mapping[str, Optional[str]]) -> list:
        problems = super().problems(ifname, values)
        if RP_STRICT in (values[conf_key(d, "rp_filter")] for d in ("all", ifname)):
            problems.append("rp_filter is strict: decapsulated packets are dropped")
        return problems


DUMMY = BindingMode(name="dummy", kind="dummy", creates_link=True, fixed_interface=None)
LOOPBACK = BindingMode()
TUNNEL = TunnelMode()
MODES = {m.name: m for m in (DUMMY, LOOPBACK, TUNNEL)}


def mode_of(name: str) -> BindingMode:
    return MODES[name]


def all_sysctl_keys(ifname: str) -> set:
    """Every parameter any mode may set for *ifname* (what a state file may name)."""
    return {k for m in MODES.values() for k in m.sysctl_keys(ifname)}
