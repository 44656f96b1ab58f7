"""Bulk rtnetlink for addresses: many RTM_NEWADDR / RTM_DELADDR in one ``sendmsg``, and
an address dump decoded with ``struct``.

Why not pyroute2 for this part: pyroute2 0.9's synchronous ``IPRoute`` runs its
asyncio loop once per netlink message, so adding 1,000 addresses took ~0.23 ms each
and dumping 1,000 addresses ~30 ms (measured here; see ``bench/bench_realserver.py``)
-- slower than the targets for an agent restart.  The messages themselves are tiny
and fixed (``ifaddrmsg`` + IFA_LOCAL/IFA_ADDRESS + IFA_FLAGS), so this module packs
them with ``struct``, sends them as one batch and reads one ack per message.  Links,
the dummy driver check and everything else stay on pyroute2 (:mod:`.netlink`).

The socket is opened inside the target network namespace
(:func:`.nsthread.run_in_netns`); a netlink socket stays bound to the namespace it was
created in, so the caller's thread never changes namespace.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from typing import List, Optional, Sequence, Tuple

from .nsthread import run_in_netns

NETLINK_ROUTE = 0
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8

_NLMSGHDR = struct.Struct("=IHHII")       # len, type, flags, seq, pid
_IFADDRMSG = struct.Struct("=BBBBI")      # family, prefixlen, flags, scope, index
_RTATTR = struct.Struct("=HH")            # len, type
_ERRNO = struct.Struct("=i")

#: (family, address, prefixlen, ifindex)
AddrEntry = Tuple[int, str, int, int]
#: (ifindex, address, prefixlen, IFA_F_* flags)
AddrRequest = Tuple[int, str, int, int]


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * (_align(length) - length)


def encode_addr(msg_type: int, flags: int, seq: int, request: AddrRequest) -> bytes:
    """One RTM_NEWADDR / RTM_DELADDR message."""
    index, address, prefixlen, ifa_flags = request
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    body = _IFADDRMSG.pack(family, prefixlen, ifa_flags & 0xFF, 0, index)
    body += _attr(IFA_LOCAL, ip.packed) + _attr(IFA_ADDRESS, ip.packed)
    if msg_type == RTM_NEWADDR:
        body += _attr(IFA_FLAGS, struct.pack("=I", ifa_flags))
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def _messages(data: bytes):
    """(type, flags, seq, payload) of every netlink message in *data*."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, flags, seq, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        yield kind, flags, seq, data[offset + _NLMSGHDR.size:offset + length]
        offset += _align(length)


def decode_addr(payload: bytes) -> Optional[AddrEntry]:
    """(family, address, prefixlen, index) of an RTM_NEWADDR payload."""
    family, prefixlen, _, _, index = _IFADDRMSG.unpack_from(payload)
    local = address = None
    offset = _IFADDRMSG.size
    while offset + _RTATTR.size <= len(payload):
        length, kind = _RTATTR.unpack_from(payload, offset)
        if length < _RTATTR.size:
            break
        value = payload[offset + _RTATTR.size:offset + length]
        if kind == IFA_LOCAL:
            local = value
        elif kind == IFA_ADDRESS:
            address = value
        offset += _align(length)
    raw = local if family == socket.AF_INET and local else address
    if raw is None:
        return None
    return family, socket.inet_ntop(family, raw), prefixlen, index


class RtnlSocket:
    """A NETLINK_ROUTE socket in *netns* (None = the caller's namespace)."""

    def __init__(self, netns: Optional[str] = None) -> None:
        self.netns = netns
        self.sock = self._open()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 0))
        self._seq = 0

    def _open(self) -> socket.socket:
        return run_in_netns(self.netns, lambda: socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE))

    def close(self) -> None:
        self.sock.close()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def dump_addresses(self) -> List[AddrEntry]:
        """Every address of every link, IPv4 and IPv6."""
        seq = self._next_seq()
        request = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        self.sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(request), RTM_GETADDR,
                                      NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + request)
        out: List[AddrEntry] = []
        while True:
            data = self.sock.recv(1 << 20)
            for kind, _, msg_seq, payload in _messages(data):
                if msg_seq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    code = -_ERRNO.unpack_from(payload)[0]
                    raise OSError(code, os.strerror(code))
                if kind == RTM_NEWADDR:
                    entry = decode_addr(payload)
                    if entry:
                        out.append(entry)

    def batch(self, msg_type: int, requests: Sequence[AddrRequest]) -> List[int]:
        """Send every request in one batch; the errno of each (0 = done), in order."""
        if not requests:
            return []
        flags = NLM_F_REQUEST | NLM_F_ACK
        if msg_type == RTM_NEWADDR:
            flags |= NLM_F_CREATE | NLM_F_EXCL
        first = self._seq + 1
        self._seq += len(requests)
        results = {}
        for start in range(0, len(requests), 512):     # stay well inside the socket buffer
            chunk = requests[start:start + 512]
            self.sock.send(b"".join(encode_addr(msg_type, flags, first + start + i, r)
                                    for i, r in enumerate(chunk)))
            while len(results) < start + len(chunk):
                for kind, _, seq, payload in _messages(self.sock.recv(1 << 20)):
                    if kind == NLMSG_ERROR and first <= seq < first + len(requests):
                        results[seq] = -_ERRNO.unpack_from(payload)[0]
        return [results[first + i] for i in range(len(requests))]


def strerror(code: int) -> str:
    return f"{os.strerror(code)} (errno {code})" if code else "ok"
