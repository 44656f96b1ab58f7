"""Links and addresses over netlink (pyroute2), on the host or in a network namespace.

A small object so tests and the CLI can hand it a namespace name.  Only what the
real-server wing needs: find a link, create a dummy one, bring it up, list, add and
delete host addresses.  Errors become :class:`HostError` (one line);
:class:`NoLinkDriver` says the kernel lacks a link kind (dummy, ipip: EOPNOTSUPP).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import List, Optional

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD, IFA_F_NOPREFIXROUTE

from ..addresses import VirtualIP
from ..errors import HostError
from .rtnl import RTM_DELADDR, RTM_NEWADDR, RtnlSocket, strerror

IFF_UP = 0x1


class NoLinkDriver(HostError):
    """The kernel has no driver for a link kind (netlink EOPNOTSUPP)."""


class PartialAdd(HostError):
    """Some addresses of a batch were not added; ``added`` lists those that were."""

    def __init__(self, message: str, added: List[VirtualIP]) -> None:
        super().__init__(message)
        self.added = added


@dataclass(frozen=True)
class Address:
    address: str
    prefixlen: int
    index: int
    ifname: str


class NetlinkHost:
    """rtnetlink in *netns* (None = the host's own namespace)."""

    def __init__(self, netns: Optional[str] = None) -> None:
        self.netns = netns
        self._ipr: Optional[IPRoute] = None
        self._rtnl: Optional[RtnlSocket] = None

    @property
    def where(self) -> str:
        return f"network namespace {self.netns}" if self.netns else "the host"

    def _open(self, factory):
        try:
            return factory()
        except FileNotFoundError:
            raise HostError(f"network namespace {self.netns!r} does not exist") from None
        except OSError as exc:
            raise HostError(f"cannot open netlink in {self.where}: {exc}") from None

    def _conn(self) -> IPRoute:
        """pyroute2 for links and single requests."""
        if self._ipr is None:
            self._ipr = self._open(lambda: IPRoute(netns=self.netns, flags=0)
                                   if self.netns else IPRoute())
        return self._ipr

    def _bulk(self) -> RtnlSocket:
        """The batch socket for addresses (:mod:`.rtnl`)."""
        if self._rtnl is None:
            self._rtnl = self._open(lambda: RtnlSocket(self.netns))
        return self._rtnl

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self._rtnl is not None:
            self._rtnl.close()
            self._rtnl = None

    def __enter__(self) -> "NetlinkHost":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NetlinkError as exc:
            raise HostError(f"{what} in {self.where}: {strerror(exc.code)}") from exc

    # -- links ----------------------------------------------------------------------

    def link_index(self, ifname: str) -> Optional[int]:
        found = self._call(f"looking up {ifname}", self._conn().link_lookup, ifname=ifname)
        return found[0] if found else None

    def link_names(self) -> dict:
        """{index: name} of every link."""
        return {link["index"]: link.get("ifname")
                for link in self._call("listing links", self._conn().link, "dump")}

    def link_kind(self, index: int) -> Optional[str]:
        link = self._call("reading a link", self._conn().link, "get", index=index)[0]
        return link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")

    def is_up(self, index: int) -> bool:
        link = self._call("reading a link", self._conn().link, "get", index=index)[0]
        return bool(link["flags"] & IFF_UP)

    def _add_link(self, ifname: str, kind: str, exists_ok: bool = False) -> int:
        try:
            self._conn().link("add", ifname=ifname, kind=kind)
        except NetlinkError as exc:
            if exc.code == errno.EOPNOTSUPP:
                raise NoLinkDriver(f"the kernel of {self.where} has no {kind} link "
                                   "driver") from None
            if not (exists_ok and exc.code == errno.EEXIST):
                raise HostError(f"creating {kind} link {ifname} in {self.where}: "
                                f"{strerror(exc.code)}") from exc
        index = self.link_index(ifname)
        if index is None:
            raise HostError(f"{kind} link {ifname} is missing after its creation in "
                            f"{self.where}")
        return index

    def create_dummy(self, ifname: str) -> int:
        """A new dummy link; :class:`NoLinkDriver` without the dummy driver."""
        return self._add_link(ifname, "dummy")

    def ensure_tunnel(self, ifname: str = "tunl0") -> int:
        """The IPIP fallback device: asking for an ``ipip`` link makes the kernel load
        the module, which creates ``tunl0`` in every namespace (so the add itself
        answers EEXIST).  Never deleted: the kernel owns it."""
        index = self.link_index(ifname)
        return index if index is not None else self._add_link(ifname, "ipip",
                                                               exists_ok=True)

    def set_up(self, index: int) -> None:
        self._call("bringing a link up", self._conn().link, "set", index=index, state="up")

    def set_down(self, index: int) -> None:
        self._call("setting a link down", self._conn().link, "set", index=index,
                   state="down")

    def delete_link(self, index: int) -> None:
        self._call("deleting a link", self._conn().link, "del", index=index)

    # -- addresses ------------------------------------------------------------------

    def addresses(self) -> List[Address]:
        """Every address of every link (one dump)."""
        names = self.link_names()
        try:
            entries = self._bulk().dump_addresses()
        except OSError as exc:
            raise HostError(f"listing addresses in {self.where}: {exc}") from None
        return [Address(address, plen, index, names.get(index, str(index)))
                for _, address, plen, index in entries]

    def add_addresses(self, index: int, vips: List[VirtualIP]) -> None:
        """Bind each VIP as a host address (/32, /128) with no prefix route, IPv6
        without DAD -- one batch.  :class:`PartialAdd` when any was refused."""
        requests = [(index, v.address, v.host_prefixlen,
                     IFA_F_NOPREFIXROUTE | (IFA_F_NODAD if v.version == 6 else 0))
                    for v in vips]
        codes = self._bulk().batch(RTM_NEWADDR, requests)
        failed = [(v, c) for v, c in zip(vips, codes) if c]
        if failed:
            vip, code = failed[0]
            raise PartialAdd(f"adding {vip.address} in {self.where}: {strerror(code)}",
                             [v for v, c in zip(vips, codes) if not c])

    def add_subnet_addresses(self, index: int, entries: List[tuple]) -> None:
        """Add (address, prefixlen) pairs as plain addresses, prefix route included
        (only to put back what a rollback must restore)."""
        codes = self._bulk().batch(RTM_NEWADDR, [(index, a, p, 0) for a, p in entries])
        for (address, _), code in zip(entries, codes):
            if code not in (0, errno.EEXIST):
                raise HostError(f"adding {address} in {self.where}: {strerror(code)}")

    def delete_addresses(self, index: int, entries: List[tuple]) -> List[bool]:
        """Remove (address, prefixlen) pairs; per pair, False when it was not there."""
        codes = self._bulk().batch(RTM_DELADDR, [(index, a, p, 0) for a, p in entries])
        for (address, _), code in zip(entries, codes):
            if code not in (0, errno.EADDRNOTAVAIL, errno.ENODEV):
                raise HostError(f"removing {address} in {self.where}: {strerror(code)}")
        return [code == 0 for code in codes]
