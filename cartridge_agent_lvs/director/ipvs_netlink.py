"""The IPVS table over generic netlink, requests and answers handled with ``struct``.

Why not pyroute2's IPVS API for this part: it decodes every attribute lazily through
its generic NLA machinery, about 0.13 ms per real server on these machines (measured:
1.3 s for a 10,000-real-server table before any socket time) -- too slow for a
Prometheus scrape.  The messages are small and fixed (``include/uapi/linux/ip_vs.h``):
this module asks the generic netlink controller for the ``IPVS`` family, dumps the
services, then the destinations of each service, and returns every message's
attributes as ``{type: raw bytes}``; :mod:`.stats` decodes them into its dataclasses.
The netlink framing helpers are shared with the real-server wing's batch codec
(:mod:`~cartridge_agent_lvs.realserver.rtnl`), and the socket is opened inside the
network namespace the same way (:func:`~cartridge_agent_lvs.realserver.nsthread.run_in_netns`).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Callable, Dict, List, Optional, Tuple

from ..realserver.nsthread import run_in_netns
from ..realserver.rtnl import _NLMSGHDR, _attr, _messages

NETLINK_GENERIC = 16
GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 16, 3, 1, 2
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x2, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_TYPE_MASK = 0x3FFF          #: without NLA_F_NESTED / NLA_F_NET_BYTEORDER
IPVS_GENL_NAME, IPVS_GENL_VERSION = b"IPVS", 1
IPVS_CMD_GET_SERVICE, IPVS_CMD_NEW_DEST, IPVS_CMD_SET_DEST, IPVS_CMD_DEL_DEST, \
    IPVS_CMD_GET_DEST = 4, 5, 6, 7, 8
IPVS_CMD_ATTR_SERVICE, IPVS_CMD_ATTR_DEST = 1, 2
#: the service attributes that name a service in a request (af, protocol, addr, port,
#: fwmark): IPVS_SVC_ATTR_*
SERVICE_KEY = (1, 2, 3, 4, 5)
# IPVS_SVC_ATTR_*, IPVS_DEST_ATTR_* (include/uapi/linux/ip_vs.h)
SVC_AF, SVC_PROTOCOL, SVC_ADDR, SVC_PORT, SVC_FWMARK, SVC_SCHED_NAME = 1, 2, 3, 4, 5, 6
SVC_STATS, SVC_STATS64 = 10, 12
DEST_ADDR, DEST_PORT, DEST_FWD_METHOD, DEST_WEIGHT, DEST_U_THRESH, DEST_L_THRESH = \
    1, 2, 3, 4, 5, 6
DEST_ACTIVE_CONNS, DEST_INACT_CONNS, DEST_STATS, DEST_ADDR_FAMILY, DEST_STATS64 = \
    7, 8, 10, 11, 12
#: IPPROTO_* -> protocol name
PROTOCOLS = {6: "TCP", 17: "UDP", 132: "SCTP"}
#: IP_VS_CONN_F_FWD_MASK values -> forwarding method
FORWARDING = {0: "NAT", 1: "LOCAL", 2: "TUN", 3: "DR", 4: "BYPASS"}
_PROTOCOL_NUMBER = {name: number for number, name in PROTOCOLS.items()}
_FORWARDING_NUMBER = {name: number for number, name in FORWARDING.items()}

_GENLMSGHDR = struct.Struct("=BBH")   # cmd, version, reserved
_NLATTR = struct.Struct("=HH")        # len, type

Attrs = Dict[int, bytes]


class NoIpvs(Exception):
    """The kernel has no IPVS generic netlink family (no ip_vs module)."""


def attributes(data: bytes, offset: int = 0) -> Attrs:
    """``{type: payload}`` of the netlink attributes in *data* from *offset*."""
    out: Attrs = {}
    while offset + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size:
            break
        out[kind & NLA_TYPE_MASK] = data[offset + _NLATTR.size:offset + length]
        offset += (length + 3) & ~3
    return out


def request(family: int, cmd: int, version: int, seq: int, flags: int,
            attrs: bytes = b"") -> bytes:
    """One generic netlink request."""
    body = _GENLMSGHDR.pack(cmd, version, 0) + attrs
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), family, NLM_F_REQUEST | flags, seq,
                          0) + body


class GenlSocket:
    """A NETLINK_GENERIC socket in *netns* (None: the caller's namespace)."""

    def __init__(self, netns: Optional[str] = None) -> None:
        self.sock = run_in_netns(netns, lambda: socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 0))

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def recv(self) -> bytes:
        return self.sock.recv(1 << 20)

    def close(self) -> None:
        self.sock.close()


class IpvsDump:
    """The exchanges of one IPVS dump over *sock* (anything with ``send``, ``recv``
    and ``close``, e.g. :class:`GenlSocket`)."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self._seq = 0
        self.family = self._family()

    def _exchange(self, data_for_seq: Callable[[int], bytes]) -> List[bytes]:
        """Send one request; the payloads of its answers (until DONE for a dump)."""
        self._seq += 1
        seq = self._seq
        self.sock.send(data_for_seq(seq))
        out: List[bytes] = []
        while True:
            for kind, flags, msg_seq, payload in _messages(self.sock.recv()):
                if msg_seq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return out
                out.append(payload)
                if not flags & NLM_F_MULTI:
                    return out

    def _family(self) -> int:
        name = _attr(CTRL_ATTR_FAMILY_NAME, IPVS_GENL_NAME + b"\0")
        try:
            answers = self._exchange(lambda seq: request(
                GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1, seq, 0, name))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise NoIpvs() from None
            raise
        for payload in answers:
            found = attributes(payload, _GENLMSGHDR.size).get(CTRL_ATTR_FAMILY_ID)
            if found:
                return struct.unpack_from("=H", found)[0]
        raise NoIpvs()

    def _dump(self, cmd: int, attrs: bytes, nested: int) -> List[Attrs]:
        payloads = self._exchange(lambda seq: request(
            self.family, cmd, IPVS_GENL_VERSION, seq, NLM_F_DUMP, attrs))
        return [attributes(attributes(p, _GENLMSGHDR.size).get(nested, b""))
                for p in payloads]

    def services(self) -> List[Attrs]:
        """The attributes of every IPVS service (``IPVS_SVC_ATTR_*``)."""
        return self._dump(IPVS_CMD_GET_SERVICE, b"", IPVS_CMD_ATTR_SERVICE)

    def dests(self, service: Attrs) -> List[Attrs]:
        """The attributes of every destination of *service* (``IPVS_DEST_ATTR_*``)."""
        return [dest_attributes(p) for p in self.dest_messages(service)]

    def dest_messages(self, service: Attrs) -> List[bytes]:
        """The undecoded answer, one message per destination of *service* (a caller
        looking for one destination decodes only that one: :func:`dest_attributes`)."""
        return self._exchange(lambda seq: self.dest_request(service, seq))

    def command(self, cmd: int, attrs: bytes) -> None:
        """One IPVS command (*attrs* already encoded), acknowledged; ``OSError`` with
        the kernel's errno when it refuses (EEXIST, ENOENT, ESRCH ...)."""
        self._exchange(lambda seq: request(self.family, cmd, IPVS_GENL_VERSION, seq,
                                           NLM_F_ACK, attrs))

    def dest_request(self, service: Attrs, seq: int) -> bytes:
        """The request for the destinations of *service* (its key attributes suffice)."""
        key = b"".join(_attr(kind, service[kind]) for kind in SERVICE_KEY if kind in service)
        return request(self.family, IPVS_CMD_GET_DEST, IPVS_GENL_VERSION, seq, NLM_F_DUMP,
                       _attr(IPVS_CMD_ATTR_SERVICE, key))


def _address(text: str) -> Tuple[int, bytes]:
    """(address family, the 16 bytes of ``union nf_inet_addr``) of an IP address."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    return family, socket.inet_pton(family, text).ljust(16, b"\0")


def service_key(vip: str, port: int, protocol: str) -> bytes:
    """``IPVS_CMD_ATTR_SERVICE`` naming the virtual server VIP:PORT/PROTOCOL."""
    family, addr = _address(vip)
    return _attr(IPVS_CMD_ATTR_SERVICE, b"".join((
        _attr(SVC_AF, struct.pack("=H", family)),
        _attr(SVC_PROTOCOL, struct.pack("=H", _PROTOCOL_NUMBER[protocol])),
        _attr(SVC_ADDR, addr), _attr(SVC_PORT, struct.pack("!H", port)))))


def dest(ip: str, port: int, method: Optional[str] = None,
         weight: Optional[int] = None) -> bytes:
    """``IPVS_CMD_ATTR_DEST``: the real server IP:PORT; with *method* and *weight* the
    full entry a new or changed destination needs (thresholds 0: none, as rendered)."""
    family, addr = _address(ip)
    parts = [_attr(DEST_ADDR, addr), _attr(DEST_PORT, struct.pack("!H", port)),
             _attr(DEST_ADDR_FAMILY, struct.pack("=H", family))]
    if method is not None:
        parts += [_attr(DEST_FWD_METHOD, struct.pack("=I", _FORWARDING_NUMBER[method])),
                  _attr(DEST_WEIGHT, struct.pack("=I", weight or 0)),
                  _attr(DEST_U_THRESH, struct.pack("=I", 0)),
                  _attr(DEST_L_THRESH, struct.pack("=I", 0))]
    return _attr(IPVS_CMD_ATTR_DEST, b"".join(parts))


def dest_attributes(message: bytes) -> Attrs:
    """The ``IPVS_DEST_ATTR_*`` attributes of one answer of :meth:`IpvsDump.dest_messages`."""
    return attributes(attributes(message, _GENLMSGHDR.size).get(IPVS_CMD_ATTR_DEST, b""))


def dump(netns: Optional[str] = None,
         sock_factory: Callable[[Optional[str]], object] = GenlSocket,
         wanted: Optional[Callable[[Attrs], bool]] = None
         ) -> List[Tuple[Attrs, Optional[List[Attrs]]]]:
    """Every IPVS service with its destinations, as raw attributes.

    *wanted*: whether a service's destinations are asked for (None: every service's);
    the others come with None.  Raises :class:`NoIpvs`, ``FileNotFoundError`` (no such
    namespace) or ``OSError``.
    """
    sock = sock_factory(netns)
    try:
        ipvs = IpvsDump(sock)
        return [(service, ipvs.dests(service) if wanted is None or wanted(service) else None)
                for service in ipvs.services()]
    finally:
        sock.close()
