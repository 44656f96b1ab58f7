"""Validation of addresses, netmasks, ports and names shared by both wings.

Pure functions over strings: they either return a parsed value or raise
:class:`~cartridge_agent_lvs.errors.InputError` (or the subclass passed as *error*)
naming the key and the offending value.  Nothing here touches the host.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Type, Union

from .errors import InputError

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# Linux: IFNAMSIZ is 16 including the NUL, so at most 15 bytes; no '/', no whitespace,
# no ':' (alias syntax), and not "." or "..".
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
# Identifiers that end up in keepalived.conf (instance names, comments): no spaces,
# quotes, braces, '#', '!' or control characters can ever pass.
_SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,127}$")


def parse_ip(text: str, key: str, *, error: Type[InputError] = InputError,
             source: str | None = None) -> IPAddress:
    """Parse one IPv4/IPv6 address written strictly (no zone id, no spaces, no brackets)."""
    if not isinstance(text, str) or not text or text != text.strip() or "%" in text:
        raise error(key, text, "not an IP address", source)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise error(key, text, "not an IP address", source) from None


def check_host_address(addr: IPAddress, key: str, text: str, *,
                       error: Type[InputError] = InputError,
                       source: str | None = None) -> IPAddress:
    """Reject addresses that can never be a service (virtual or real) address."""
    for attr, what in (("is_unspecified", "unspecified"), ("is_loopback", "loopback"),
                       ("is_multicast", "multicast"), ("is_link_local", "link-local"),
                       ("is_reserved", "reserved")):
        if getattr(addr, attr):
            raise error(key, text, f"{what} address cannot be used", source)
    if addr.version == 4 and addr == ipaddress.IPv4Address("255.255.255.255"):
        raise error(key, text, "broadcast address cannot be used", source)
    return addr


def parse_host_ip(text: str, key: str, *, error: Type[InputError] = InputError,
                  source: str | None = None) -> IPAddress:
    """:func:`parse_ip` + :func:`check_host_address`."""
    return check_host_address(parse_ip(text, key, error=error, source=source), key, text,
                              error=error, source=source)


def parse_prefix(text: str, version: int, key: str, *,
                 error: Type[InputError] = InputError, source: str | None = None) -> int:
    """Parse a prefix length (``24``) or a contiguous netmask (``255.255.255.0``)."""
    maxlen = 32 if version == 4 else 128
    if text.isdigit() and text == str(int(text)):
        plen = int(text)
        if plen <= maxlen:
            return plen
        raise error(key, text, f"prefix length must be 0-{maxlen}", source)
    if version == 4 and "." in text:
        try:
            mask = int(ipaddress.IPv4Address(text))
        except ValueError:
            raise error(key, text, "not a netmask", source) from None
        inverted = (~mask) & 0xFFFFFFFF
        if inverted & (inverted + 1):
            raise error(key, text, "netmask is not contiguous", source)
        return 32 - inverted.bit_length()
    raise error(key, text, "not a netmask or prefix length", source)


@dataclass(frozen=True, order=True)
class VirtualIP:
    """A virtual IP as given by a user: the address and the prefix it was written with.

    ``prefixlen`` is informational (the Stratos form ``VIP|NETMASK``); the VIP is always
    bound and served as a host address (/32 or /128).
    """

    version: int
    address: str
    prefixlen: int

    @property
    def ip(self) -> IPAddress:
        return ipaddress.ip_address(self.address)

    @property
    def host_prefixlen(self) -> int:
        return 32 if self.version == 4 else 128

    def __str__(self) -> str:
        return self.address


def parse_vip(text: str, key: str, *, error: Type[InputError] = InputError,
              source: str | None = None) -> VirtualIP:
    """Parse ``VIP``, ``VIP|NETMASK`` (Stratos) or ``VIP/PREFIX``.

    With a mask, the VIP must not be that subnet's network or broadcast address.
    """
    if not isinstance(text, str) or not text:
        raise error(key, text, "empty virtual IP", source)
    sep = "|" if "|" in text else ("/" if "/" in text else None)
    if sep:
        addr_text, _, mask_text = text.partition(sep)
        if not mask_text or not addr_text:
            raise error(key, text, f"'{sep}' must join an address and a mask", source)
    else:
        addr_text, mask_text = text, ""
    addr = parse_host_ip(addr_text, key, error=error, source=source)
    plen = addr.max_prefixlen
    if mask_text:
        try:
            plen = parse_prefix(mask_text, addr.version, key, error=error, source=source)
        except InputError as exc:   # name the whole VIP, not just its mask
            raise error(key, text, exc.reason, source) from None
        net = ipaddress.ip_network(f"{addr}/{plen}", strict=False)
        if addr.version == 4 and plen <= 30:
            if addr == net.network_address:
                raise error(key, text, "is the network address of its subnet", source)
            if addr == net.broadcast_address:
                raise error(key, text, "is the broadcast address of its subnet", source)
    return VirtualIP(addr.version, addr.compressed, plen)


def parse_port(value: object, key: str, *, error: Type[InputError] = InputError,
               source: str | None = None) -> int:
    """A TCP/UDP port 1-65535 given as int or decimal string (bools rejected)."""
    if isinstance(value, bool):
        raise error(key, value, "not a port", source)
    if isinstance(value, int):
        port = value
    elif isinstance(value, str) and value.isdigit() and value.isascii() and len(value) <= 5:
        port = int(value)
    else:
        raise error(key, value, "not a port", source)
    if not 1 <= port <= 65535:
        raise error(key, value, "port must be 1-65535", source)
    return port


def check_ifname(name: object, key: str, *, error: Type[InputError] = InputError,
                 source: str | None = None) -> str:
    """An interface name Linux accepts: 1-15 chars, no '/', ':' or whitespace."""
    if not isinstance(name, str) or not _IFNAME_RE.match(name) or name in (".", ".."):
        raise error(key, name, "not a valid interface name (1-15 of A-Z a-z 0-9 _ . -)",
                    source)
    return name


def check_safe_name(name: object, key: str, *, error: Type[InputError] = InputError,
                    source: str | None = None) -> str:
    """An identifier that may appear in a generated config file verbatim."""
    if not isinstance(name, str) or not _SAFE_NAME_RE.match(name):
        raise error(key, name, "contains characters that are not allowed", source)
    return name
