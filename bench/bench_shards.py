#!/usr/bin/env python3
"""Event -> kernel converged at 1,000 / 4,000 / 10,000 real servers: one keepalived.conf
against the sharded layout (``keepalived_shards``), in a real kernel's IPVS.

keepalived 2.2.7 reloads in O(checkers^2).  For each size and each layout this starts
the real keepalived instance(s) the layout needs (one ``keepalived`` for the single
file; ``keepalived -P`` for VRRP plus one ``keepalived -C`` per shard), drives the
service loop (``service.Director``: coalescing, plan, render, ``keepalived -t``,
atomic write, SIGHUP -- the product's own code) with Stratos member events, and stops
each clock when IPVS itself (generic netlink, read by this process) shows the change:

* member events: a member suspended (its real server removed, ``drain_seconds`` 0),
  then activated again (added back), alternating, on services other than the probe's;
  then members never seen before, as Stratos brings them: MemberInitializedEvent (the
  instance has its address), the loop left until idle (the director has keepalived
  check the coming block ahead, :mod:`~cartridge_agent_lvs.director.ahead`), then
  MemberActivatedEvent, timed -- reported together and apart ("left": nothing new in
  the file, no ``keepalived -t``; "came": back, its block accepted before, no ``-t``
  either; "new": its block checked ahead, no ``-t`` when it is activated);
* drain: with ``drain_seconds`` 600 a leaving member only gets weight 0 and a
  returning one its weight back -- weight-only changes, still one reload each;
* health check under change: a member of the probe service (3 real servers,
  ``delay_loop`` 1 s, ``connect_timeout`` 1 s, ``retry`` 0) dies (its address
  leaves the host) at the moment another service's member event is applied; the
  time until keepalived's health check removes it from IPVS.

The director runs with the product's defaults, so ``ipvs_first`` is on: it writes
each member's change into IPVS itself once the file is validated and written, then
signals keepalived (:mod:`~cartridge_agent_lvs.director.kernel_first`).  So each
member event is timed twice: until IPVS shows it (what clients see), and until
keepalived's own reload has reached it (:class:`Confirmations`, from keepalived's
log lines in the guest's syslog sink; the next event waits for that too).
``--keepalived-alone`` turns ``ipvs_first`` off: IPVS then changes only when
keepalived's reload does.

The observer is kept light: after a member event IPVS is read only once the loop has
sent its SIGHUP, and only the virtual service concerned (the service list, then its
real servers -- not the whole table, whose decoding in Python costs seconds at 10,000
real servers in the emulated guest), of which only the real server concerned is
decoded (:class:`Observer`).  The loop is driven by hand: the convergence watcher's
thread is not started.

The sizes use 10 services of N/10 real servers (as in issue 14), plus the probe; the
real servers are addresses of a local route in the namespace, accepted by one
listener -- a process of its own, as a real server is another machine: it does not
compete with the measured loop for the interpreter -- so every TCP_CHECK succeeds
(``delay_loop`` 30 s, ``connect_timeout`` 3 s for the big services).

By default this boots the e2e suite's kernel VM and runs itself inside with
``--here`` (wrap it in ``/work/bin/vmslot``); ``--here`` makes a throwaway network
namespace (the host's IPVS is never touched) and runs ``--inner`` in it.

Usage: .venv/bin/python bench/bench_shards.py [--sizes 1000,4000,10000] [--events 20]
       [--single-events-at-10000 5] [--shards 10] [--layouts single,sharded]
       [--keepalived-alone] [--here] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PROBE = 10                       #: the probe service's number (svc10)
PROBE_MEMBERS = 3
SCALE_SERVICES = 10
PORT = 80


def _q(values, p):
    values = sorted(values)
    if not values:
        return None
    k = min(len(values) - 1, max(0, int(round(p / 100 * len(values) + 0.5)) - 1))
    return values[k]


def summary(values) -> dict:
    return {"n": len(values), "median": round(statistics.median(values), 3) if values else None,
            "p99": round(_q(values, 99), 3) if values else None,
            "max": round(max(values), 3) if values else None}


# -- inside the namespace -------------------------------------------------------------

def listen() -> None:
    """Accept and close every connection to port 80 (all real servers), forever.

    Run as a process of its own (``--listen``, see :class:`Listener`): at 10,000 real
    servers keepalived's checks arrive by hundreds a second, and a thread in the
    process that runs the service loop would compete with it for the interpreter --
    a real server is another machine."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", PORT))
    sock.listen(4096)
    while True:
        conn, _ = sock.accept()
        conn.close()


class Listener:
    """The real servers' stand-in: :func:`listen` in its own process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--listen"],
                                     stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 300) -> None:
        """Until port 80 accepts (a Python start takes seconds in the emulated guest)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the listener exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", PORT), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the listener did not accept within {timeout:g} s")
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def find_dest(messages, ip: str, family: int):
    """The weight of real server *ip*:80 in *messages* (a service's undecoded
    destinations: ``IpvsDump.dest_messages``), None when it is not there.  Only the message carrying its address attribute is
    decoded -- as the kernel sends it (the 16-byte address union) or as long as the
    address itself."""
    from cartridge_agent_lvs.director.ipvs_netlink import dest_attributes
    from cartridge_agent_lvs.director.stats import DEST_ADDR, dest_from_attrs
    packed = socket.inet_pton(family, ip)
    needles = [struct.pack("=HH", 4 + 16, DEST_ADDR) + packed.ljust(16, b"\0"),
               struct.pack("=HH", 4 + len(packed), DEST_ADDR) + packed]
    for message in messages:
        if any(n in message for n in needles):
            dest = dest_from_attrs(dest_attributes(message), family)
            if dest.address == ip and dest.port == PORT:
                return dest.weight
    return None


class Observer:
    """One real server of one IPVS service, read with the product's generic netlink
    code and kept light, for polling: one socket kept open (*sock*, default a
    :class:`GenlSocket` here), the service's key kept from one read to the next, and
    the answer with its real servers searched as raw bytes -- only message headers are
    walked (to find the end of the dump) and only the message holding the address is
    decoded (:func:`find_dest`).  Decoding every real server of a 1,000-real-server
    service costs a tenth of a second or more of the emulated guest's processor;
    polled every 10 ms after a SIGHUP, that would take a processor from the keepalived
    reload being timed."""

    def __init__(self, sock=None) -> None:
        from cartridge_agent_lvs.director.ipvs_netlink import GenlSocket, IpvsDump
        self.sock = sock if sock is not None else GenlSocket(None)
        self.ipvs = IpvsDump(self.sock)
        self._keys: dict = {}
        self._seq = 1 << 20           #: its own sequence numbers, apart from IpvsDump's

    def _key(self, vip: str):
        from cartridge_agent_lvs.director.stats import service_from_attrs
        if vip not in self._keys:
            for attrs in self.ipvs.services():
                found = service_from_attrs(attrs)
                if found.address == vip and found.port == PORT and found.protocol == "TCP":
                    self._keys[vip] = attrs
        return self._keys.get(vip)

    def read(self, vip: str, ip: str):
        """``(service there, weight)`` of real server *ip*:80 of service *vip*:80/TCP
        (weight None when the real server is absent)."""
        from cartridge_agent_lvs.director import ipvs_netlink as nl
        from cartridge_agent_lvs.director.stats import DEST_ADDR
        from cartridge_agent_lvs.realserver.rtnl import _NLMSGHDR
        key = self._key(vip)
        if key is None:
            return False, None
        self._seq += 1
        seq = self._seq
        self.sock.send(self.ipvs.dest_request(key, seq))
        family = socket.AF_INET6 if ":" in vip else socket.AF_INET
        packed = socket.inet_pton(family, ip)
        needles = [struct.pack("=HH", 4 + 16, DEST_ADDR) + packed.ljust(16, b"\0"),
                   struct.pack("=HH", 4 + len(packed), DEST_ADDR) + packed]
        weight, there = None, True
        while True:
            data = self.sock.recv()
            hits = [at for at in (data.find(n) for n in needles) if at >= 0]
            offset, done = 0, False
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _, msg_seq, _ = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    break
                if msg_seq == seq:
                    if kind == nl.NLMSG_DONE:
                        done = True
                    elif kind == nl.NLMSG_ERROR:
                        done, there = True, struct.unpack_from("=i", data, offset + 16)[0] == 0
                    elif any(offset <= at < offset + length for at in hits):
                        found = find_dest([data[offset + _NLMSGHDR.size:offset + length]],
                                          ip, family)
                        weight = found if found is not None else weight
                offset += (length + 3) & ~3
            if done:
                break
        if not there:
            self._keys.pop(vip, None)
            return False, None
        return True, weight

    def close(self) -> None:
        self.sock.close()


def _running_in(groups) -> list:
    """Pids of the processes of the process *groups* that are not zombies (a killed
    keepalived's children are reparented and may wait to be reaped)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) in groups:
                out.append(int(name))
    return out


class Confirmations:
    """When keepalived's own reload reached a real server, from the guest's syslog
    (:func:`syslog_sink`): with ``ipvs_first`` the director has already written the
    change into IPVS, and keepalived 2.2.7 logs finding it done -- "service [IP]:..
    no longer exist" for a real server gone from its file, "Destination already
    exists (... -> IP:PORT)" for one new in it.  A weight change (drain) it makes
    silently: not timed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = os.path.getsize(path) if os.path.exists(path) else 0
        self.lines: list = []

    def _read(self) -> None:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        self.lines += data[:end].splitlines()

    def wait(self, since: float, ip: str, gone: bool, timeout: float) -> float:
        """Seconds from *since* to keepalived's line about *ip*."""
        mark, name = ((b"no longer exist", f"[{ip}]:".encode()) if gone else
                      (b"already exists", f"-> {ip}:".encode()))
        deadline = time.monotonic() + timeout
        while True:
            self._read()
            lines, self.lines = self.lines, []      # each line is looked at once
            for i, line in enumerate(lines):
                if mark in line and name in line:
                    at = float(line.split(b" ", 1)[0])
                    if at >= since:
                        self.lines = lines[i + 1:]
                        return at - since
            if time.monotonic() > deadline:
                raise TimeoutError(f"keepalived did not log reaching {ip} within "
                                   f"{timeout:g} s")
            time.sleep(0.05)


class Run:
    """One size and one layout: keepalived instance(s), the Director, the events."""

    def __init__(self, args, size: int, shards: int, drain: float) -> None:
        from cartridge_agent_lvs.director import service
        from cartridge_agent_lvs.director.settings import load
        from tests.director import _stratos as st
        self.st, self.size, self.shards = st, size, shards
        self.per = size // SCALE_SERVICES
        self.workdir = tempfile.mkdtemp(prefix=f"bench-shards-{size}-{shards}-")
        self.settings = load(dict(
            vip_map=st.vip_map(range(SCALE_SERVICES + 1)), interface="kb0",
            keepalived_conf=os.path.join(self.workdir, "keepalived.conf"),
            keepalived_pidfile=os.path.join(self.workdir, "keepalived.pid"),
            keepalived_shards=shards, quiet_period=args.quiet, max_delay=5,
            drain_seconds=drain, delay_loop=30, connect_timeout=3, retry=1,
            mass_removal_threshold=1, forwarding_method="DR", scheduler="rr",
            ipvs_first=not getattr(args, "keepalived_alone", False),
            health_check="TCP_CHECK", advert_int=1,
            service_overrides={f"svc{PROBE}": dict(delay_loop=1, connect_timeout=1,
                                                   retry=0)}))
        self.layout = service.keepalived_for(self.settings)
        self.director = service.Director(self.settings, self.layout)
        self.inactive = {s: set() for s in range(SCALE_SERVICES + 1)}
        self.procs = []
        self.observer = None
        log = getattr(args, "syslog_file", None)
        #: keepalived's own reload reaching each change (None: no syslog sink here)
        self.confirmations = Confirmations(log) if log else None
        self.confirmed = None       #: seconds, for the last event (None: not timed)

    def doc(self) -> dict:
        members = {s: [i for i in range(self.per) if i not in self.inactive[s]]
                   for s in range(SCALE_SERVICES)}
        members[PROBE] = [i for i in range(PROBE_MEMBERS) if i not in self.inactive[PROBE]]
        return self.st.topology(members, inactive={s: sorted(v) for s, v in
                                                   self.inactive.items()})

    def pump(self, until, timeout: float, what: str, start: float = 0.0,
             dest=None, after_reload: bool = False, interval: float = 0.01) -> float:
        """Tick the loop and poll IPVS every *interval* until ``until(reading)``;
        seconds since *start* (default: now).  The reading is the whole table, or with
        *dest* = (vip, ip) only that real server (:class:`Observer`) (the observer
        must not slow the guest down); with *after_reload* IPVS is read only once the
        loop has sent its SIGHUP (it cannot show the change before)."""
        from cartridge_agent_lvs.director.stats import read_ipvs
        start = start or time.monotonic()
        reloads, self.signalled = self.director.reloads, None
        while True:
            now = time.monotonic()
            self.director.tick(now)
            if self.signalled is None and self.director.reloads > reloads:
                self.signalled = time.monotonic() - start     # validated, written, SIGHUP
            if not (after_reload and self.signalled is None) and until(
                    self.observer.read(*dest) if dest else read_ipvs()):
                return time.monotonic() - start
            if now - start > timeout:
                raise TimeoutError(f"{what}: not seen in IPVS within {timeout:g} s")
            time.sleep(interval)

    def start(self) -> float:
        from cartridge_agent_lvs.director.feeds import FeedUpdate
        from cartridge_agent_lvs.director.shards import keepalived_argv
        self.director.prepare()
        self.director.handle(FeedUpdate("CompleteTopologyEvent", self.doc(), "bench"),
                             time.monotonic())
        self.director.tick(time.monotonic() + 3600)        # writes; nothing to reload
        applied = self.director.last_apply
        if applied is None or not applied.ok:
            raise RuntimeError(f"the first configuration was not written: "
                               f"{applied.detail if applied else 'nothing applied'}")
        conf, pid = self.settings.keepalived_conf, self.settings.keepalived_pidfile
        if self.shards:
            argvs = [keepalived_argv(conf, pid, n) for n in range(self.shards + 1)]
        else:
            base = os.path.splitext(pid)[0]
            argvs = [["keepalived", "-n", "-l", "-D", "-f", conf, "-p", pid,
                      "-r", f"{base}.vrrp.pid", "-c", f"{base}.checkers.pid"]]
        started = time.monotonic()
        log = open(os.path.join(self.workdir, "keepalived.log"), "w")
        for argv in argvs:
            self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL,
                                               start_new_session=True))
        want = self.size + PROBE_MEMBERS
        self.observer = Observer()
        self.pump(lambda k: sum(len(s.dests) for s in k) >= want, 600, "keepalived start",
                  interval=0.5)
        for _, part in self.layout.instances() if self.shards else [(0, self.layout)]:
            pidfile = part.pidfile
            deadline = time.monotonic() + 60
            while not os.path.exists(pidfile) and time.monotonic() < deadline:
                time.sleep(0.05)
        return time.monotonic() - started

    def event(self, s: int, i: int) -> float:
        """Suspend or re-activate member i of service s; seconds until IPVS shows it."""
        from cartridge_agent_lvs.director.feeds import FeedUpdate
        vip, ip = self.st.vip(s), self.st.member_ip(s, i)
        if i in self.inactive[s]:
            self.inactive[s].discard(i)
            name = "MemberActivatedEvent"
        else:
            self.inactive[s].add(i)
            name = "MemberSuspendedEvent"
        gone = name != "MemberActivatedEvent"
        drain = self.director.drain.drain_seconds > 0

        def shown(reading):
            there, weight = reading
            if drain:
                return there and weight is not None and (weight == 0) == gone
            return there and (weight is None) == gone
        t0 = time.monotonic()
        self.director.handle(FeedUpdate(name, self.st.member_event(s, i), "bench"), t0)
        seconds = self.pump(shown, 900, f"{name} svc{s} member {i}", t0, dest=(vip, ip),
                            after_reload=True)
        self.confirm(t0, ip, gone, timed=not drain)
        return seconds

    def confirm(self, t0: float, ip: str, gone: bool, timed: bool = True) -> None:
        """:attr:`confirmed`: until keepalived's reload reached *ip* (when it says so)
        -- the next event waits for it, as it waited for IPVS before ipvs_first."""
        self.confirmed = None
        if self.confirmations is not None and timed and self.settings.ipvs_first:
            self.confirmed = self.confirmations.wait(t0, ip, gone, 900)

    def new_member(self, s: int, i: int) -> tuple:
        """A member never seen before, as Stratos brings one: MemberInitializedEvent
        (its instance has its address), the loop ticked until it is idle again (the
        director's check ahead of the member's block has answered), then
        MemberActivatedEvent.  (seconds until idle, seconds from the activation until
        IPVS shows the real server)."""
        from cartridge_agent_lvs.director.feeds import FeedUpdate
        vip, ip = self.st.vip(s), self.st.member_ip(s, i)
        t0 = time.monotonic()
        self.director.handle(FeedUpdate("MemberInitializedEvent", self.st.member_event(s, i),
                                        "bench"), t0)
        ahead = self.director.ahead
        while True:
            now = time.monotonic()
            self.director.tick(now)
            if not (ahead.due or ahead.running or self.director.deadline() is not None):
                break
            if now - t0 > 900:
                raise TimeoutError(f"svc{s} member {i}: the loop is not idle after 900 s")
            time.sleep(0.01)
        idle = time.monotonic() - t0
        t1 = time.monotonic()
        self.director.handle(FeedUpdate("MemberActivatedEvent", self.st.member_event(s, i),
                                        "bench"), t1)
        seconds = self.pump(lambda r: r[0] and r[1] is not None, 900,
                            f"MemberActivatedEvent svc{s} new member {i}", t1,
                            dest=(vip, ip), after_reload=True)
        self.confirm(t1, ip, gone=False)
        return idle, seconds

    def probe(self, s: int, i: int) -> dict:
        """Kill a probe real server while member i of service s changes."""
        from cartridge_agent_lvs.director.feeds import FeedUpdate
        vip, dead = self.st.vip(PROBE), self.st.member_ip(PROBE, 1)
        self.inactive[s].add(i)
        t0 = time.monotonic()
        self.director.handle(FeedUpdate("MemberSuspendedEvent", self.st.member_event(s, i),
                                        "bench"), t0)
        self.director.tick(t0 + 3600)         # the other service's change, applied now
        subprocess.run(["ip", "addr", "del", f"{dead}/32", "dev", "lo"], check=True)
        killed = time.monotonic()

        def removed(reading):
            there, weight = reading
            return there and weight is None
        seconds = self.pump(removed, 900, "dead probe real server", killed,
                            dest=(vip, dead))
        subprocess.run(["ip", "addr", "add", f"{dead}/32", "dev", "lo"], check=True)
        return {"removed_after": round(seconds, 3), "apply_seconds": round(killed - t0, 3)}

    def stop(self) -> None:
        """Kill every keepalived of this run -- its VRRP and checker children too
        (each instance is a process group of its own), and wait until they are all
        gone before IPVS is cleared: a checker child outliving its parent goes on
        tearing its virtual servers down, and would delete the next run's."""
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in self.procs:
            p.wait()
        groups = {p.pid for p in self.procs}
        deadline = time.monotonic() + 60
        while _running_in(groups) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _running_in(groups):
            print(f"  warning: keepalived processes {_running_in(groups)} still run 60 s "
                  "after SIGKILL", flush=True)
        if self.observer is not None:
            self.observer.close()
        subprocess.run(["ipvsadm", "-C"], check=False)


def one(args, size: int, shards: int, events: int, new_events: int) -> dict:
    run = Run(args, size, shards, drain=0)
    out = {"size": size, "shards": shards}
    try:
        out["start_seconds"] = round(run.start(), 3)
        times, signalled, kinds, confirmed = [], [], [], []
        for k in range(events):
            s, i = 1 + (k // 2) % (SCALE_SERVICES - 1), (k // 2) % run.per
            kinds.append("came" if i in run.inactive[s] else "left")
            times.append(run.event(s, i))
            signalled.append(run.signalled)
            confirmed.append(run.confirmed)
            print(f"  {size} shards={shards} event {k + 1}/{events} ({kinds[-1]}): "
                  f"{times[-1]:.3f} s (SIGHUP sent after {run.signalled} s; keepalived "
                  f"confirmed after {run.confirmed} s)", flush=True)
        idle = []
        for k in range(new_events):          # members never seen, on services 1..9
            s = 1 + k % (SCALE_SERVICES - 1)
            took, seconds = run.new_member(s, run.per + k)
            idle.append(took)
            times.append(seconds)
            signalled.append(run.signalled)
            confirmed.append(run.confirmed)
            kinds.append("new")
            print(f"  {size} shards={shards} new member {k + 1}/{new_events}: "
                  f"{seconds:.3f} s (SIGHUP sent after {run.signalled} s; the loop was "
                  f"idle {took:.2f} s after MemberInitializedEvent)", flush=True)
        out["events"] = summary(times)
        # left: nothing new to -t; came: back, its block accepted before; new: its
        # block checked ahead, between MemberInitializedEvent and its activation
        for kind in ("left", "came", "new"):
            out[kind] = summary([t for t, k in zip(times, kinds) if k == kind])
        out["to_sighup"] = summary([t for t in signalled if t is not None])
        out["confirmed"] = summary([t for t in confirmed if t is not None])
        out["ipvs_first"] = run.settings.ipvs_first
        out["idle_after_initialized"] = summary(idle)
        out["event_seconds"] = [round(t, 3) for t in times]
        out["event_kinds"] = kinds
        out["probe"] = run.probe(5, run.per - 1)
        print(f"  {size} shards={shards} probe: {out['probe']}", flush=True)
        if args.drain_events:
            run.director.drain.drain_seconds = 600     # leaving members: weight 0 only
            drains = [run.event(2 + k % 3, run.per - 2 - k // 2)
                      for k in range(args.drain_events)]
            out["drain"] = summary(drains)
            print(f"  {size} shards={shards} drain: {out['drain']}", flush=True)
    finally:
        run.stop()
    return out


def empty_shard_then_filled() -> dict:
    """A ``keepalived -C`` started on a shard file without virtual servers, then given
    one (file rewritten, SIGHUP): does the virtual server reach IPVS?"""
    from cartridge_agent_lvs.director.keepalived import Keepalived
    from cartridge_agent_lvs.director.shards import keepalived_argv, shard_conf
    from cartridge_agent_lvs.director.stats import read_ipvs
    from tests.director import _stratos as st
    from cartridge_agent_lvs.director.plan import plan
    from cartridge_agent_lvs.director.render import render_checkers
    from cartridge_agent_lvs.director.settings import load
    from cartridge_agent_lvs.director.topology import parse_topology
    workdir = tempfile.mkdtemp(prefix="bench-shards-empty-")
    conf, pid = os.path.join(workdir, "keepalived.conf"), os.path.join(workdir, "k.pid")
    settings = load(dict(vip_map=st.vip_map([PROBE]), interface="kb0"))
    full = plan(settings, parse_topology(st.topology({PROBE: range(3)}))).config
    empty = replace(full, virtual_servers=())
    part = Keepalived(shard_conf(conf, 1), pidfile=pid.replace(".pid", ".shard-01.pid"))
    part.write(render_checkers(empty))
    log = open(os.path.join(workdir, "keepalived.log"), "w")
    proc = subprocess.Popen(keepalived_argv(conf, pid, 1), stdout=log, stderr=subprocess.STDOUT)
    out = {}
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(part.pidfile) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1)
        out["running_when_empty"] = proc.poll() is None
        part.write(render_checkers(full))
        t0 = time.monotonic()
        out["reload_signalled"] = part.reload() if proc.poll() is None else False
        seen = None
        while time.monotonic() - t0 < 20:
            if any(x.address == st.vip(PROBE) for x in read_ipvs()):
                seen = round(time.monotonic() - t0, 3)
                break
            time.sleep(0.05)
        out["in_ipvs_after"] = seen
    finally:
        proc.kill()
        proc.wait()
        subprocess.run(["ipvsadm", "-C"], check=False)
    with open(os.path.join(workdir, "keepalived.log")) as f:
        out["log_tail"] = f.read()[-1500:]
    return out


def inner(args) -> dict:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "link", "add", "kb0", "type", "dummy"], check=True)
    subprocess.run(["ip", "link", "set", "kb0", "multicast", "on", "up"], check=True)
    subprocess.run(["ip", "addr", "add", "10.250.0.2/24", "dev", "kb0"], check=True)
    for s in range(SCALE_SERVICES):             # every member of the big services
        subprocess.run(["ip", "route", "add", "local", f"10.{s}.0.0/16", "dev", "lo"],
                       check=True)
    from tests.director import _stratos as st
    for i in range(PROBE_MEMBERS):              # the probe's members, one by one
        subprocess.run(["ip", "addr", "add", f"{st.member_ip(PROBE, i)}/32", "dev", "lo"],
                       check=True)
    listener = Listener()
    try:
        listener.wait_ready()
        results = []
        empty = empty_shard_then_filled()
        print(f"  empty shard, then filled: {empty}", flush=True)
        for size in args.sizes:
            for shards in [{"single": 0, "sharded": args.shards}[name]
                           for name in args.layouts]:
                events, new = args.events, args.new_events
                if shards == 0 and size >= 10000 and args.single_events_at_10000:
                    events = args.single_events_at_10000
                    new = min(new, max(1, events // 2))
                results.append(one(args, size, shards, events, new))
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump({"runs": results, "empty_shard": empty,
                                   "args": vars(args)}, f, indent=1)
    finally:
        listener.stop()
    return {"runs": results, "empty_shard": empty}


SYSLOG = "/dev/log"


def syslog_sink(path: str) -> None:
    """Receive syslog datagrams on :data:`SYSLOG` and append them to *path*, forever
    (``--syslog``): the host's journald or rsyslog, which the guest lacks.  Without
    one, keepalived's syslog(3) calls fail and -- with ``-l``, which the lab's
    command lines carry -- glibc writes every message to ``/dev/console`` instead: in
    the guest an emulated serial line, about 40,000 lines per run ("Activating
    healthchecker ..." for each of a shard's checkers at every reload).  Each line
    starts with the monotonic time it arrived: :class:`Confirmations` reads when
    keepalived's reload reached a real server.  Written in bursts, flushed when
    20 ms pass without a message, to a file in the guest's own /tmp (the shared
    work directory is a 9p mount: one host round trip per write)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(SYSLOG)
    sock.settimeout(0.02)
    with open(path, "ab", buffering=1 << 16) as out:
        while True:
            try:
                data = sock.recv(8192)      # stamped on receipt: CLOCK_MONOTONIC
            except socket.timeout:          # a quiet moment: the reader sees it all
                out.flush()
                continue
            out.write(b"%.6f " % time.monotonic() + data + b"\n")


def here(args) -> dict:
    for module in ("ip_vs", "ip_vs_rr", "dummy"):
        subprocess.run(["modprobe", module], check=False)
    sink, log = None, None
    if not os.path.exists(SYSLOG):            # a guest: no syslog daemon
        log = os.path.join(tempfile.mkdtemp(prefix="bench-syslog-"), "syslog.log")
        sink = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--syslog", log],
                                stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not os.path.exists(SYSLOG) and time.monotonic() < deadline:
            time.sleep(0.05)
    ns = f"lvsbench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        argv = [sys.executable, os.path.abspath(__file__), "--inner", "--json", args.json,
                *_common(args)] + (["--syslog-file", log] if log else [])
        subprocess.run(["ip", "netns", "exec", ns, *argv], check=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        if sink is not None:
            sink.kill()
            sink.wait()
            os.unlink(SYSLOG)
    with open(args.json) as f:
        return json.load(f)


def _common(args) -> list:
    return ["--sizes", ",".join(map(str, args.sizes)), "--events", str(args.events),
            "--single-events-at-10000", str(args.single_events_at_10000),
            "--shards", str(args.shards), "--quiet", str(args.quiet),
            "--drain-events", str(args.drain_events), "--new-events", str(args.new_events),
            "--layouts", ",".join(args.layouts)] + (
                ["--keepalived-alone"] if args.keepalived_alone else [])


def in_vm(args) -> dict:
    from tests.e2e.kernel import ensure_kernel
    from tests.e2e.vm import boot, check_host
    check_host()
    workdir = tempfile.mkdtemp(prefix="bench-shards-vm-")
    result = os.path.join(workdir, "result.json")
    command = [sys.executable, os.path.join(ROOT, "bench", "bench_shards.py"), "--here",
               "--json", result, *_common(args)]
    booted = boot(ensure_kernel(), command, Path(workdir), timeout=args.timeout,
                  cwd=Path(ROOT), memory="3G")
    print(f"VM: {booted.seconds:.0f} s wall-clock, exit {booted.returncode}, console "
          f"{workdir}/vng.log")
    if not os.path.exists(result):
        tail = "\n".join(booted.output.splitlines()[-40:])
        sys.exit(f"bench_shards: the VM wrote no result:\n{tail}")
    with open(result) as f:
        return json.load(f)


def report(r: dict) -> str:
    rows = {}
    for run in r["runs"]:
        rows.setdefault(run["size"], {})[run["shards"]] = run
    lines = ["event -> kernel converged (s), member suspended/activated alternately; "
             "probe = dead real server's health-check removal while another service "
             "changes; keepalived = event -> keepalived's own reload reached the change "
             "(ipvs_first: the director wrote it into IPVS first)", ""]
    head = (f"{'real servers':>12}  {'layout':<22}{'start':>7}  {'events':>6} "
            f"{'median':>7} {'p99':>7} {'max':>7}  {'to SIGHUP med/p99':>18}  "
            f"{'drain med/p99':>14}  {'probe':>7}  {'left med/p99':>13}  {'came med/p99':>13}  "
            f"{'new med/p99':>13}  {'keepalived med/p99':>18}")
    lines.append(head)
    for size in sorted(rows):
        for shards, run in sorted(rows[size].items()):
            layout = "single file" if shards == 0 else f"{shards} shards + VRRP"
            e = run.get("events", {})
            drain, sig = _pair(run.get("drain")), _pair(run.get("to_sighup"))
            lines.append(f"{size:>12,}  {layout:<22}{run.get('start_seconds', '-'):>7}  "
                         f"{e.get('n', '-'):>6} {e.get('median', '-'):>7} "
                         f"{e.get('p99', '-'):>7} {e.get('max', '-'):>7}  {sig:>18}  "
                         f"{drain:>14}  "
                         f"{run.get('probe', {}).get('removed_after', '-'):>7}  "
                         + "  ".join(f"{_pair(run.get(k)):>13}" for k in ("left", "came",
                                                                          "new"))
                         + f"  {_pair(run.get('confirmed')):>18}")
    return "\n".join(lines)


def _pair(s) -> str:
    return f"{s['median']}/{s['p99']}" if s and s.get("n") else "-"


def layout_arguments(parser: argparse.ArgumentParser) -> None:
    """--sizes, --events, --shards, --layouts (also ``bench_pipeline.py``'s)."""
    parser.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")],
                        default=[1000, 4000, 10000])
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--layouts", type=lambda v: v.split(","), default=["single", "sharded"],
                        help="single,sharded (default both, side by side, in this order)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    layout_arguments(parser)
    parser.add_argument("--single-events-at-10000", type=int, default=5,
                        help="member events for the single file at >= 10,000 (37 s each)")
    parser.add_argument("--quiet", type=float, default=0.2, help="quiet_period, s")
    parser.add_argument("--drain-events", type=int, default=6)
    parser.add_argument("--new-events", type=int, default=10,
                        help="members never seen: initialized, then activated")
    parser.add_argument("--keepalived-alone", action="store_true",
                        help="ipvs_first off: keepalived's reload alone changes IPVS")
    parser.add_argument("--here", action="store_true")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--listen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--syslog", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--syslog-file", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    if args.listen:
        listen()
        return 0
    if args.syslog:
        syslog_sink(args.syslog)
        return 0
    if args.inner:
        result = inner(args)
    elif args.here:
        args.json = args.json or tempfile.mktemp(suffix=".json")
        result = here(args)
    else:
        result = in_vm(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    if not args.inner:
        print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
