"""This director's VRRP role, read from the kernel (never ``ip`` or ``ipvsadm``).

keepalived adds an instance's ``virtual_ipaddress`` entries to the VRRP interface
when the instance becomes MASTER and removes them when it leaves that state, so the
addresses on the interface tell the role: **MASTER** when every VIP of the instance
is there, **BACKUP** when none is, **PARTIAL** otherwise (someone added or removed
an address by hand). A keepalived that was killed leaves its VIPs on the interface:
when keepalived is not running the role is **STOPPED**, whatever the addresses say.  :func:`roles` is pure; :func:`interface_addresses` reads the
interface with pyroute2, in a network namespace when one is named.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Dict, FrozenSet, Optional, Tuple

from ..errors import HostError
from .model import LvsConfig
from .render import instance_name

MASTER, BACKUP, PARTIAL, STOPPED = "MASTER", "BACKUP", "PARTIAL", "STOPPED"


@dataclass(frozen=True)
class Role:
    instance: str               #: ``VI_IPV4`` / ``VI_IPV6``
    interface: str
    vips: Tuple[str, ...]       #: the instance's VIPs
    held: Tuple[str, ...]       #: those on the interface now
    running: bool = True        #: keepalived runs (its VIPs may outlive it)

    @property
    def state(self) -> str:
        if not self.running:
            return STOPPED
        if self.held == self.vips:
            return MASTER
        return BACKUP if not self.held else PARTIAL


def instances(config: LvsConfig) -> Dict[str, Tuple[str, ...]]:
    """Instance name -> its VIPs, as :func:`~.render.render` writes them."""
    out: Dict[str, Tuple[str, ...]] = {}
    for vip in config.vips:
        name = instance_name(ipaddress.ip_address(vip).version)
        out[name] = out.get(name, ()) + (vip,)
    return dict(sorted(out.items()))


def roles(config: LvsConfig, interface: str, addresses: FrozenSet[str],
          running: bool = True) -> Tuple[Role, ...]:
    """The role of every VRRP instance of *config*, given the interface's addresses
    and whether keepalived runs."""
    return tuple(Role(name, interface, vips, tuple(v for v in vips if v in addresses), running)
                 for name, vips in instances(config).items())


def role_of(roles_: Tuple[Role, ...], vip: str) -> Optional[Role]:
    """The instance owning *vip*."""
    return next((r for r in roles_ if vip in r.vips), None)


def interface_addresses(interface: str, netns: Optional[str] = None) -> FrozenSet[str]:
    """The addresses on *interface* (canonical strings); HostError when it is absent."""
    from pyroute2 import IPRoute
    where = f"network namespace {netns}" if netns else "this host"
    try:
        ipr = IPRoute(netns=netns, flags=0) if netns else IPRoute()
    except FileNotFoundError:
        raise HostError(f"network namespace {netns!r} does not exist") from None
    except OSError as exc:
        raise HostError(f"cannot open netlink in {where}: {exc}") from None
    try:
        index = ipr.link_lookup(ifname=interface)
        if not index:
            raise HostError(f"VRRP interface {interface} does not exist in {where}")
        found = set()
        for msg in ipr.get_addr(index=index[0]):
            address = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
            if address:
                found.add(ipaddress.ip_address(address).compressed)
        return frozenset(found)
    except OSError as exc:
        raise HostError(f"reading the addresses of {interface} in {where}: {exc}") from None
    finally:
        ipr.close()
