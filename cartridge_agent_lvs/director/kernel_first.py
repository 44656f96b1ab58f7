"""A member's real-server change, written into IPVS by the director ahead of keepalived.

keepalived 2.2.7 applies a new file only once its checker process has re-read and
re-parsed the whole of it (and, with ``keepalived_shards``, its parent process
before it): in the kernel VM, about a second for a shard of 1,000 real servers and
19 to 38 s for one file of 10,000 (issue 14, ``bench/bench_shards.py``).
The change a member event makes is one destination.  So, with ``ipvs_first`` (the
default), once the new file is validated and written -- never before -- the
director makes that change in IPVS itself over generic netlink, then signals
keepalived, whose reload finds the kernel already as the file says.

That is safe because of what keepalived 2.2.7 does on its reload (``keepalived/check/
ipwrapper.c`` and ``ipvswrapper.c``, read at tag v2.2.7): a real server new in the
file is added at once (no ``alpha`` is rendered) with a fresh checker, and an add
that finds the destination present (EEXIST) counts as done -- the checker owns it
from then on, and a failing check removes it; a real server gone from the file is
deleted, and a delete that finds nothing (ENOENT) counts as done.  keepalived logs
either at info level (``IPVS cmd ...ADDDEST(...) error: Destination already
exists(17)``, ``... DELDEST(...) error: No such destination(2)``).

What the director writes, per virtual server present in both files with the same
policy (:func:`changes`, pure):

* a real server new in the file: added, with its weight and forwarding method;
* a real server gone from the file: deleted;
* a lower weight (a drain): set, if IPVS has the destination (ENOENT: its health
  check holds it out, nothing to do);
* a higher weight (back from a drain): set likewise -- except with
  ``inhibit_on_failure`` (mode bgp), where weight 0 in IPVS may be a failed check
  the director cannot tell from a drain: keepalived's reload does it.

Left to keepalived alone: virtual servers added, removed or whose policy changed
(scheduler, method, persistence, check), virtual servers with a ``sorry_server``
(keepalived swaps it with the real servers as its quorum comes and goes), and any
virtual server the new file leaves without a real server of positive weight.  A
write the kernel refuses otherwise is logged and counted; the reload that follows
still brings IPVS to the file -- this is a head start, never the only path.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from ..errors import HostError
from .ipvs_netlink import (IPVS_CMD_DEL_DEST, IPVS_CMD_NEW_DEST, IPVS_CMD_SET_DEST,
                           GenlSocket, IpvsDump, NoIpvs, dest, service_key)
from .model import LvsConfig, RealServer, VirtualServer

log = logging.getLogger(__name__)

ADD, REMOVE, WEIGHT = "add", "remove", "weight"
#: results of one write: made, already so (EEXIST on add, ENOENT on remove or weight),
#: or refused by the kernel (left to keepalived's reload)
APPLIED, ALREADY, FAILED = "applied", "already", "failed"
OPS = (ADD, REMOVE, WEIGHT)
RESULTS = (APPLIED, ALREADY, FAILED)

_CMD = {ADD: IPVS_CMD_NEW_DEST, REMOVE: IPVS_CMD_DEL_DEST, WEIGHT: IPVS_CMD_SET_DEST}
#: the kernel's answer that means "already as wanted", per operation
_ALREADY = {ADD: errno.EEXIST, REMOVE: errno.ENOENT, WEIGHT: errno.ENOENT}


@dataclass(frozen=True)
class DestChange:
    """One destination write: *op* on real server *rs* of virtual server *vs*."""

    op: str
    vs: Tuple[str, int, str]        #: (VIP, port, protocol)
    rs: RealServer
    method: str                     #: the virtual server's forwarding method

    def request(self) -> Tuple[int, bytes]:
        """(IPVS command, its attributes)."""
        full = self.op != REMOVE
        return _CMD[self.op], service_key(*self.vs) + dest(
            self.rs.ip, self.rs.port, self.method if full else None,
            self.rs.weight if full else None)

    def __str__(self) -> str:
        vip, port, protocol = self.vs
        what = f"weight {self.rs.weight}" if self.op != REMOVE else ""
        return (f"{self.op} {self.rs.ip}:{self.rs.port} {what} in {vip}:{port}/"
                f"{protocol}").replace("  ", " ")


def changes(before: Optional[LvsConfig], after: LvsConfig) -> Tuple[DestChange, ...]:
    """The destination writes that take IPVS from *before*'s real servers to
    *after*'s, under the rules of this module (none when there is no *before*)."""
    if before is None or after.vrrp is None:
        return ()
    inhibit = after.vrrp.mode == "bgp"      # the renderer's inhibit_on_failure
    old: Dict[Tuple[str, int, str], VirtualServer] = {
        vs.key: vs for vs in before.virtual_servers}
    out: List[DestChange] = []
    for vs in after.virtual_servers:
        was = old.get(vs.key)
        if was is None or was is vs or was.policy != vs.policy or vs.policy is None:
            continue
        if was.real_servers == vs.real_servers:
            continue
        if vs.policy.sorry_server or not any(rs.weight > 0 for rs in vs.real_servers):
            continue                        # quorum and sorry server: keepalived's
        method = vs.policy.forwarding_method
        then = {rs.key: rs for rs in was.real_servers}
        now = {rs.key: rs for rs in vs.real_servers}
        for key, rs in now.items():
            prior = then.get(key)
            if prior is None:
                out.append(DestChange(ADD, vs.key, rs, method))
            elif prior.weight != rs.weight and (rs.weight < prior.weight or not inhibit):
                out.append(DestChange(WEIGHT, vs.key, rs, method))
        out += [DestChange(REMOVE, vs.key, rs, method)
                for key, rs in then.items() if key not in now]
    return tuple(out)


class KernelFirst:
    """Writes :func:`changes` into IPVS (the edge of this module).

    :param sock_factory: opens the generic netlink socket (default
        :class:`~.ipvs_netlink.GenlSocket` in this network namespace).
    :param count: called with (op, result) for every write (the metrics).
    """

    def __init__(self, sock_factory: Callable[[], object] = GenlSocket,
                 count: Callable[[str, str], None] = lambda op, result: None) -> None:
        self.sock_factory = sock_factory
        self.count = count
        self._unreachable: Optional[str] = None     #: the reason last logged

    def apply(self, writes: Iterable[DestChange]) -> Dict[str, int]:
        """Make each write; {result: how many}.  Never raises: what the kernel refuses
        (or a kernel without IPVS) is logged and left to keepalived's reload."""
        writes = list(writes)
        tally = dict.fromkeys(RESULTS, 0)
        if not writes:
            return tally
        try:
            sock = self.sock_factory()
        except OSError as exc:
            self._failed(writes, tally, f"no generic netlink socket: {exc}")
            return tally
        why, refused = None, []
        try:
            ipvs = IpvsDump(sock)
            for write in writes:
                cmd, attrs = write.request()
                try:
                    ipvs.command(cmd, attrs)
                    result = APPLIED
                except OSError as exc:
                    result = ALREADY if exc.errno == _ALREADY[write.op] else FAILED
                    if result == FAILED:
                        refused.append(f"{write}: {exc.strerror}")
                tally[result] += 1
                self.count(write.op, result)
        except NoIpvs:
            why = "the kernel has no IPVS (ip_vs not loaded)"
        except (OSError, HostError) as exc:
            why = f"IPVS is not reachable: {exc}"
        finally:
            sock.close()
        if refused:
            log.warning("IPVS refused %d of %d real-server change(s) (first: %s); "
                        "keepalived's reload applies the file", len(refused), len(writes),
                        refused[0])
        if why is not None:
            self._failed(writes[sum(tally.values()):], tally, why)
        else:
            self._unreachable = None
        return tally

    def _failed(self, writes: List[DestChange], tally: Dict[str, int], why: str) -> None:
        """Count *writes* as failed; log *why* once until a write gets through."""
        log.log(logging.WARNING if why != self._unreachable else logging.DEBUG,
                "%s; %d real-server change(s) left to keepalived's reload", why,
                len(writes))
        self._unreachable = why
        for write in writes:
            tally[FAILED] += 1
            self.count(write.op, FAILED)
