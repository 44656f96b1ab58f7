"""Links and addresses over netlink (pyroute2), on the host or in a network namespace.

A small object so tests and the CLI can hand it a namespace name.  Only what the
real-server wing needs: find a link, create a dummy one, bring it up, list, add and
delete host addresses.  Errors become :class:`HostError` (one line);
:class:`NoDummyDriver` says the kernel lacks the dummy link kind (EOPNOTSUPP).
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

IFF_UP = 0x1


class NoDummyDriver(HostError):
    """The kernel has no ``dummy`` link kind (netlink EOPNOTSUPP)."""


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

    @property
    def where(self) -> str:
        return f"network namespace {self.netns}" if self.netns else "the host"

    def _conn(self) -> IPRoute:
        if self._ipr is None:
            try:
                self._ipr = IPRoute(netns=self.netns, flags=0) if self.netns else IPRoute()
            except FileNotFoundError:
                raise HostError(f"network namespace {self.netns!r} does not exist") from None
            except OSError as exc:
                raise HostError(f"cannot open netlink in {self.where}: {exc}") from None
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def __enter__(self) -> "NetlinkHost":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NetlinkError as exc:
            raise HostError(f"{what} in {self.where}: {_strerror(exc.code)}") from exc

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

    def create_dummy(self, ifname: str) -> int:
        try:
            self._conn().link("add", ifname=ifname, kind="dummy")
        except NetlinkError as exc:
            if exc.code == errno.EOPNOTSUPP:
                raise NoDummyDriver(f"the kernel of {self.where} has no dummy link driver")\
                    from None
            raise HostError(f"creating dummy link {ifname} in {self.where}: "
                            f"{_strerror(exc.code)}") from exc
        index = self.link_index(ifname)
        if index is None:
            raise HostError(f"dummy link {ifname} vanished after creation in {self.where}")
        return index

    def set_up(self, index: int) -> None:
        self._call("bringing a link up", self._conn().link, "set", index=index, state="up")

    def delete_link(self, index: int) -> None:
        self._call("deleting a link", self._conn().link, "del", index=index)

    # -- addresses ------------------------------------------------------------------

    def addresses(self) -> List[Address]:
        """Every address of every link (one dump)."""
        names = self.link_names()
        return [Address(a.get("address"), a["prefixlen"], a["index"],
                        names.get(a["index"], str(a["index"])))
                for a in self._call("listing addresses", self._conn().addr, "dump")
                if a.get("address")]

    def add_address(self, index: int, vip: VirtualIP) -> None:
        """Bind *vip* as a host address: /32 or /128, no prefix route, no DAD."""
        flags = IFA_F_NOPREFIXROUTE | (IFA_F_NODAD if vip.version == 6 else 0)
        self._call(f"adding {vip.address}", self._conn().addr, "add", index=index,
                   address=vip.address, prefixlen=vip.host_prefixlen, flags=flags)

    def delete_address(self, index: int, address: str, prefixlen: int) -> bool:
        """Remove an address; False when it was not there."""
        try:
            self._conn().addr("del", index=index, address=address, prefixlen=prefixlen)
        except NetlinkError as exc:
            if exc.code in (errno.EADDRNOTAVAIL, errno.ENODEV):
                return False
            raise HostError(f"removing {address} in {self.where}: "
                            f"{_strerror(exc.code)}") from exc
        return True


def _strerror(code: int) -> str:
    import os
    try:
        return f"{os.strerror(code)} (errno {code})"
    except (ValueError, TypeError):
        return f"netlink error {code}"
