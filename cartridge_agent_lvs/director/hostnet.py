"""Mode bgp at the edge of the host: sysctls through ``/proc/sys`` and the VIPs as
local addresses through netlink (pyroute2) -- never ``sysctl`` or ``ip``.

Both remember what they changed and put back exactly that on :meth:`restore`:
a sysctl its previous value, the VIP interface only the addresses this process
added (one that was already there stays).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from typing import Dict, FrozenSet, Iterable, Optional, Tuple

from ..errors import HostError

log = logging.getLogger(__name__)

#: what mode bgp sets while it runs: IPVS schedules a mid-connection packet of a flow
#: it has never seen (another director had it), and the VIPs on lo get no ARP answers
SLOPPY_TCP = ("net/ipv4/vs/sloppy_tcp", "1")
NO_ARP = (("net/ipv4/conf/all/arp_ignore", "1"), ("net/ipv4/conf/all/arp_announce", "2"))


class Sysctls:
    """Set ``/proc/sys`` values; :meth:`restore` puts the previous ones back.

    A value whose file does not exist yet (``net/ipv4/vs`` appears once ``ip_vs`` is
    loaded, usually by keepalived) is set by a later :meth:`apply`.
    """

    def __init__(self, wanted: Iterable[Tuple[str, str]], root: str = "/proc/sys") -> None:
        self.wanted = tuple(wanted)
        self.root = root
        self.saved: Dict[str, str] = {}

    @property
    def pending(self) -> bool:
        return len(self.saved) < len(self.wanted)

    def apply(self) -> bool:
        """Set every wanted value not set yet; True once all are."""
        for name, value in self.wanted:
            if name in self.saved:
                continue
            path = os.path.join(self.root, name)
            try:
                with open(path) as f:
                    before = f.read().strip()
                if before != value:
                    with open(path, "w") as f:
                        f.write(value)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise HostError(f"cannot set {name.replace('/', '.')}={value}: "
                                f"{exc.strerror}") from None
            self.saved[name] = before
            log.info("%s = %s (was %s; restored on exit)", name.replace("/", "."), value,
                     before)
        return not self.pending

    def restore(self) -> None:
        for name, before in self.saved.items():
            try:
                with open(os.path.join(self.root, name), "w") as f:
                    f.write(before)
            except OSError as exc:
                log.warning("could not restore %s=%s: %s", name.replace("/", "."), before,
                            exc.strerror)
        self.saved.clear()


class LocalVips:
    """The VIPs as host addresses (/32, /128) on *interface*, in this network namespace."""

    def __init__(self, interface: str, netns: Optional[str] = None) -> None:
        self.interface = interface
        self.netns = netns
        self.added: set = set()
        self.present: FrozenSet[str] = frozenset()

    def _ipr(self):
        from pyroute2 import IPRoute
        try:
            return IPRoute(netns=self.netns, flags=0) if self.netns else IPRoute()
        except OSError as exc:
            raise HostError(f"cannot open netlink: {exc}") from None

    def ensure(self, vips: Iterable[str]) -> FrozenSet[str]:
        """Add the missing *vips*; the ones now present (HostError if the interface is
        absent or the kernel refuses)."""
        ipr = self._ipr()
        try:
            index = ipr.link_lookup(ifname=self.interface)
            if not index:
                raise HostError(f"vip_interface {self.interface} does not exist")
            have = {ipaddress.ip_address(m.get("IFA_LOCAL") or m.get("IFA_ADDRESS")).compressed
                    for m in ipr.get_addr(index=index[0])}
            for vip in sorted(set(vips) - have):
                prefix = 32 if ipaddress.ip_address(vip).version == 4 else 128
                ipr.addr("add", index=index[0], address=vip, prefixlen=prefix)
                self.added.add(vip)
                have.add(vip)
                log.info("added %s/%d to %s", vip, prefix, self.interface)
            self.present = frozenset(v for v in vips if v in have)
            return self.present
        except OSError as exc:
            raise HostError(f"VIPs on {self.interface}: {exc}") from None
        finally:
            ipr.close()

    def restore(self) -> None:
        """Remove the addresses this object added."""
        if not self.added:
            return
        ipr = self._ipr()
        try:
            index = ipr.link_lookup(ifname=self.interface)
            for vip in sorted(self.added):
                prefix = 32 if ipaddress.ip_address(vip).version == 4 else 128
                try:
                    if index:
                        ipr.addr("del", index=index[0], address=vip, prefixlen=prefix)
                except OSError as exc:
                    log.warning("could not remove %s from %s: %s", vip, self.interface, exc)
            self.added.clear()
        finally:
            ipr.close()
