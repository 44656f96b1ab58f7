"""IPVS without IPVS: genuine pyroute2 ``ipvsmsg`` messages, answered on the wire by a
stand-in for the kernel's generic netlink socket (:class:`FakeGenl`).

The host kernel has no IPVS; the kernel-VM suite reads a live one.  :class:`Kernel`
plays a kernel whose table the test sets (also from an :class:`LvsConfig`, the way
keepalived would apply it) and is read through the real :func:`stats.read_ipvs`.
"""

from __future__ import annotations

import errno
import ipaddress
import struct
import threading
from typing import Dict, Iterable, Optional, Tuple

from pyroute2.netlink import ctrlmsg
from pyroute2.netlink.generic.ipvs import ipvsmsg

from cartridge_agent_lvs.director import stats
from cartridge_agent_lvs.director.model import LvsConfig

PROTO = {"TCP": 6, "UDP": 17, "SCTP": 132}


def _stats(counters: dict) -> dict:
    return {"attrs": [(f"IPVS_STATS_ATTR_{k}", v) for k, v in counters.items()]}


def message(kind: str, attrs: dict, counters: dict) -> ipvsmsg:
    """A genuine IPVS netlink message, round-tripped through its wire encoding."""
    prefix = "IPVS_SVC_ATTR_" if kind == "service" else "IPVS_DEST_ATTR_"
    nla = [(prefix + k, v) for k, v in attrs.items()]
    nla.append((prefix + "STATS64", _stats(counters)))
    msg = ipvsmsg()
    msg["attrs"] = [("IPVS_CMD_ATTR_" + kind.upper(), {"attrs": nla})]
    msg.encode()
    decoded = ipvsmsg(msg.data)
    decoded.decode()
    return decoded


def svc(addr, port, proto=6, af=2, sched="rr", fwmark=None, **counters):
    attrs = {"AF": af, "PROTOCOL": proto, "ADDR": addr, "PORT": port, "SCHED_NAME": sched,
             "FLAGS": {"flags": 0, "mask": 0xFFFF}, "TIMEOUT": 0}
    if fwmark:
        attrs = {"AF": af, "FWMARK": fwmark, "SCHED_NAME": sched,
                 "FLAGS": {"flags": 0, "mask": 0xFFFF}, "TIMEOUT": 0}
    if af == 2 and not fwmark:
        attrs["NETMASK"] = "255.255.255.255"
    return message("service", attrs, counters)


def dest(addr, port, af=2, weight=1, active=0, inactive=0, fwd=3, **counters):
    return message("dest", {"ADDR_FAMILY": af, "ADDR": addr, "PORT": port,
                            "FWD_METHOD": fwd, "WEIGHT": weight, "ACTIVE_CONNS": active,
                            "INACT_CONNS": inactive}, counters)


FAMILY = 0x1D                      #: the IPVS family id this fake kernel hands out
NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP = 0x2, 0x4, 0x300
#: IPVS_CMD_NEW_DEST, SET_DEST, DEL_DEST
NEW_DEST, SET_DEST, DEL_DEST = WRITES = (5, 6, 7)
_HEADER = struct.Struct("=IHHII")


def _done(seq: int, kind: int = 3, code: int = 0) -> bytes:
    """NLMSG_DONE (or, with kind 2, NLMSG_ERROR carrying -errno *code*)."""
    body = struct.pack("=i", code) + (b"\0" * 16 if kind == 2 else b"")
    return _HEADER.pack(_HEADER.size + len(body), kind, 0, seq, 0) + body


def _wire(msg, kind: str, seq: int) -> bytes:
    """*msg*'s nested service/dest attribute in a kernel-like answer, encoded by
    pyroute2."""
    out = ipvsmsg()
    out["header"]["type"], out["header"]["flags"] = FAMILY, NLM_F_MULTI
    out["header"]["sequence_number"] = seq
    out["cmd"], out["version"] = (1 if kind == "service" else 5), 1
    name = f"IPVS_CMD_ATTR_{kind.upper()}"
    out["attrs"] = [(name, msg.get_attr(name))]
    out.encode()
    return bytes(out.data)


class FakeGenl:
    """Stands in for the kernel's generic netlink socket: decodes each request with
    pyroute2 and answers with pyroute2-encoded messages (the wire format).

    *table*: ``[(service message, [dest messages])]``; *missing*: no IPVS family;
    *split*: one datagram per message (as the kernel does for a large dump); *write*:
    answers NEW_DEST / SET_DEST / DEL_DEST requests.
    """

    def __init__(self, table, missing: bool = False, split: bool = False, write=None):
        self.table = table
        self.missing = missing
        self.split = split
        #: answers a write request (decoded): 0 or -errno (None: EOPNOTSUPP)
        self.write = write
        self.requests = []
        self.answers = []
        self.closed = False

    def send(self, data: bytes) -> None:
        kind, seq = _HEADER.unpack_from(data)[1], _HEADER.unpack_from(data)[3]
        if kind == 16:                                       # GENL_ID_CTRL
            msg = ctrlmsg(data)
            msg.decode()
            assert msg.get_attr("CTRL_ATTR_FAMILY_NAME") == "IPVS"
            if self.missing:
                self.answers.append(_done(seq, 2, -errno.ENOENT))
                return
            reply = ctrlmsg()
            reply["header"]["type"], reply["header"]["sequence_number"] = 16, seq
            reply["cmd"], reply["version"] = 1, 2
            reply["attrs"] = [("CTRL_ATTR_FAMILY_ID", FAMILY),
                              ("CTRL_ATTR_FAMILY_NAME", "IPVS")]
            reply.encode()
            self.answers.append(bytes(reply.data))
            return
        assert kind == FAMILY
        msg = ipvsmsg(data)
        msg.decode()
        self.requests.append(msg)
        if msg["cmd"] in WRITES:
            assert msg["header"]["flags"] & NLM_F_ACK
            code = self.write(msg) if self.write else -errno.EOPNOTSUPP
            self.answers.append(_done(seq, 2, code))
            return
        assert msg["header"]["flags"] & NLM_F_DUMP == NLM_F_DUMP
        if msg["cmd"] == 4:                                  # IPVS_CMD_GET_SERVICE
            parts = [_wire(s, "service", seq) for s, _ in self.table]
        else:                                                # IPVS_CMD_GET_DEST
            assert msg["cmd"] == 8
            key = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
            wanted = (key.get_attr("IPVS_SVC_ATTR_ADDR"), key.get_attr("IPVS_SVC_ATTR_PORT"),
                      key.get_attr("IPVS_SVC_ATTR_PROTOCOL"),
                      key.get_attr("IPVS_SVC_ATTR_FWMARK"))
            parts = [_wire(d, "dest", seq) for s, dests in self.table for d in dests
                     if (s.get(("service", "addr")), s.get(("service", "port")),
                         s.get(("service", "protocol")),
                         s.get(("service", "fwmark"))) == wanted]
        parts.append(_done(seq))
        self.answers += parts if self.split else [b"".join(parts)]

    def recv(self) -> bytes:
        return self.answers.pop(0)

    def close(self) -> None:
        self.closed = True


def _af(address: str) -> int:
    return 2 if ipaddress.ip_address(address).version == 4 else 10


Counters = Dict[str, int]


class Kernel:
    """A kernel's IPVS table, read with the real :func:`stats.read_ipvs`.

    ``apply(config)`` makes the table what keepalived would make of *config*;
    ``absent`` leaves real servers out (their health check failed), ``counters``
    sets a real server's (or a virtual server's, keyed by (vip, port)) dest fields
    and counters.  ``broken`` makes reads fail like a kernel without IPVS.
    """

    def __init__(self) -> None:
        self.table = []
        self.broken = False
        self.reads = 0
        self.last: Optional[FakeGenl] = None    #: the last read's socket (its requests)
        #: (cmd, vip, port, real server, port, weight, method) of each write, in order
        self.writes = []
        self._lock = threading.Lock()

    def apply(self, config: LvsConfig, absent: Iterable[Tuple[str, int]] = (),
              counters: Optional[Dict[tuple, dict]] = None, weights: Optional[dict] = None,
              extra: Iterable[Tuple[str, int]] = ()) -> None:
        counters = counters or {}
        weights = weights or {}
        absent = set(absent)
        table = []
        for vs in config.virtual_servers:
            sched = vs.policy.scheduler if vs.policy else "rr"
            service = svc(vs.vip, vs.port, PROTO[vs.protocol], _af(vs.vip), sched,
                          **counters.get((vs.vip, vs.port), {}))
            dests = [dest(rs.ip, rs.port, _af(rs.ip), weight=weights.get(rs.key, rs.weight),
                          **counters.get(rs.key, {}))
                     for rs in vs.real_servers if rs.key not in absent]
            dests += [dest(ip, port, _af(ip)) for ip, port in extra]
            table.append((service, dests))
        with self._lock:
            self.table = table

    def clear(self) -> None:
        with self._lock:
            self.table = []

    def genl(self) -> FakeGenl:
        """A socket onto this table that also takes destination writes."""
        with self._lock:
            broken = self.broken
        self.last = FakeGenl(self.table, broken, write=self._write)
        return self.last

    def _write(self, msg) -> int:
        """Apply one decoded NEW/SET/DEL_DEST as the kernel would: 0 or -errno."""
        key = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
        d = msg.get_attr("IPVS_CMD_ATTR_DEST")
        addr, port = d.get_attr("IPVS_DEST_ATTR_ADDR"), d.get_attr("IPVS_DEST_ATTR_PORT")
        with self._lock:
            self.writes.append((msg["cmd"], key.get_attr("IPVS_SVC_ATTR_ADDR"),
                                key.get_attr("IPVS_SVC_ATTR_PORT"), addr, port,
                                d.get_attr("IPVS_DEST_ATTR_WEIGHT"),
                                d.get_attr("IPVS_DEST_ATTR_FWD_METHOD")))
            for i, (service, dests) in enumerate(self.table):
                if (service.get(("service", "addr")), service.get(("service", "port")),
                        service.get(("service", "protocol"))) != (
                        key.get_attr("IPVS_SVC_ATTR_ADDR"), key.get_attr("IPVS_SVC_ATTR_PORT"),
                        key.get_attr("IPVS_SVC_ATTR_PROTOCOL")):
                    continue
                rest = [m for m in dests
                        if (m.get(("dest", "addr")), m.get(("dest", "port"))) != (addr, port)]
                there = len(rest) < len(dests)
                if msg["cmd"] == NEW_DEST and there:
                    return -errno.EEXIST
                if msg["cmd"] != NEW_DEST and not there:
                    return -errno.ENOENT
                if msg["cmd"] != DEL_DEST:
                    rest.append(dest(addr, port, _af(addr),
                                     weight=d.get_attr("IPVS_DEST_ATTR_WEIGHT"),
                                     fwd=d.get_attr("IPVS_DEST_ATTR_FWD_METHOD")))
                self.table = self.table[:i] + [(service, rest)] + self.table[i + 1:]
                return 0
            return -errno.ESRCH

    def read(self, dests_of=None):
        with self._lock:
            self.reads += 1
            broken, table = self.broken, list(self.table)
        self.last = FakeGenl(table, broken)
        return stats.read_ipvs(None, sock_factory=lambda netns: self.last,
                               dests_of=dests_of)
