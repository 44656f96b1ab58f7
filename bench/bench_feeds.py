#!/usr/bin/env python3
"""Live-topology benchmark: 10,000 real servers on a real mosquitto broker.

Runs ``lvs-extension run``'s loop (``service.run`` with the MQTT feed, the real
``keepalived -t`` and a fake keepalived process receiving the SIGHUPs) and measures:

1. latency from a member event published on the broker to the validated file renamed
   into place and the reload signalled (p50 / p99 over N events), for a short and the
   default quiet period side by side;
2. a storm of 1,000 member events within one second, three ways: the baseline, ONE
   apply (plan, render, ``keepalived -t``, write, reload) PER EVENT; quiet period 0
   (no waiting -- but the updates that queued up during an apply are folded into the
   next one, so it still coalesces); quiet period 0.5 s / max delay 5 s. Reloads, the
   time until the last one, and whether the final file is exactly the one rendered
   from the final topology;
3. how many events per second the feed and loop absorb (publish N events as fast as
   the broker takes them, time until the loop has handled all of them).

Usage: python3 bench/bench_feeds.py [--events 200] [--services 10] [--members 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cartridge_agent_lvs.director import service  # noqa: E402
from cartridge_agent_lvs.director.feeds import Backoff  # noqa: E402
from cartridge_agent_lvs.director.feeds.mqtt import MqttFeed  # noqa: E402
from cartridge_agent_lvs.director.plan import plan  # noqa: E402
from cartridge_agent_lvs.director.render import render  # noqa: E402
from cartridge_agent_lvs.director.topology import parse_topology  # noqa: E402
from tests.director import _stratos as st  # noqa: E402
from tests.director._feedutil import Client  # noqa: E402
from tests.director._service import FakeKeepalived, make_settings  # noqa: E402
from tests.director.conftest_broker import Broker  # noqa: E402


class TimedKeepalived:
    """Wraps the real Keepalived: records when each reload returned (the file is in
    place by then: the service writes, then reloads)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.applied = []          # (time.monotonic(), reloaded)
        self.cond = threading.Condition()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def reload(self):
        reloaded = self.inner.reload()
        with self.cond:
            self.applied.append((time.monotonic(), reloaded))
            self.cond.notify_all()
        return reloaded

    def reloads(self) -> int:
        with self.cond:
            return sum(1 for _, r in self.applied if r)

    def wait_reloads(self, n: int, timeout: float) -> float:
        end = time.monotonic() + timeout
        with self.cond:
            while sum(1 for _, r in self.applied if r) < n:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no reload #{n} within {timeout}s")
                self.cond.wait(left)
            return [t for t, r in self.applied if r][n - 1]


class PerEventDirector(service.Director):
    """The baseline of the storm: every topology change applied on its own, at once --
    plan, render, ``keepalived -t``, write, reload -- before the next update is read."""

    def handle(self, update, now, *args, **kwargs):
        changed = super().handle(update, now, *args, **kwargs)
        if changed:
            self.tick(now)         # quiet period 0: due now
        return changed


class Bench:
    """Broker + fake keepalived + the service loop, for one quiet period."""

    def __init__(self, workdir: str, broker: Broker, services: int, members: int,
                 quiet: float, max_delay: float = 5.0, per_event: bool = False) -> None:
        self.services, self.members = services, members
        workdir = tempfile.mkdtemp(dir=workdir)      # a fresh keepalived.conf per run
        self.fake = FakeKeepalived(workdir)
        self.settings = make_settings(
            workdir, vip_map=st.vip_map(range(services)), mqtt=[broker.address],
            keepalived_pidfile=self.fake.pidfile, quiet_period=quiet,
            max_delay=max_delay, drain_seconds=0)
        self.ka = TimedKeepalived(service.keepalived_for(self.settings))
        self.director = (PerEventDirector if per_event else service.Director)(self.settings, self.ka)
        self.stop = threading.Event()
        feed = MqttFeed(self.settings.mqtt, backoff=Backoff(initial=0.05, cap=0.5))
        self.thread = threading.Thread(target=service.run, args=(self.settings, self.stop),
                                       kwargs=dict(feed=feed, director=self.director))
        self.pub = Client(broker)
        self.thread.start()
        self.inactive = {s: set() for s in range(services)}
        time.sleep(0.5)
        self.pub.publish("CompleteTopologyEvent", self.doc())
        self.ka.wait_reloads(1, 120)

    def doc(self) -> dict:
        return st.topology(
            {s: [i for i in range(self.members) if i not in self.inactive[s]]
             for s in range(self.services)},
            inactive={s: sorted(v) for s, v in self.inactive.items()})

    def flip(self, s: int, i: int) -> str:
        """Suspend member i of service s, or re-activate it; the event that says so."""
        if i in self.inactive[s]:
            self.inactive[s].discard(i)
            return "MemberActivatedEvent"
        self.inactive[s].add(i)
        return "MemberSuspendedEvent"

    def toggle(self, s: int, i: int, wait: bool = True) -> None:
        self.pub.publish(self.flip(s, i), st.member_event(s, i), wait=wait)

    def expected_conf(self) -> str:
        return render(plan(self.settings, parse_topology(self.doc())).config)

    def conf(self) -> str:
        with open(self.settings.keepalived_conf) as f:
            return f.read()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.pub.close()
        self.fake.stop()


def percentile(values, p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


def latency(b: Bench, events: int) -> list:
    out = []
    for k in range(events):
        n = b.ka.reloads()
        t0 = time.monotonic()
        b.toggle(k % b.services, (k // (2 * b.services)) % b.members)
        out.append(b.ka.wait_reloads(n + 1, 60) - t0)
    return out


def storm(b: Bench, events: int = 1000, seconds: float = 1.0) -> tuple:
    """events member events spread evenly over *seconds*;
    (reloads, exact, spread, seconds from the first event to the last reload)."""
    n0 = b.ka.reloads()
    t0 = time.monotonic()
    for k in range(events):
        b.toggle(k % b.services, (k // b.services) % b.members, wait=False)
        delay = t0 + (k + 1) * seconds / events - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    spread = time.monotonic() - t0
    # settle: no reload for 3 quiet periods (and at least 2 s)
    last = -1
    while last != b.ka.reloads():
        last = b.ka.reloads()
        time.sleep(max(2.0, 3 * b.settings.quiet_period))
    with b.ka.cond:
        last_reload = max((t for t, r in b.ka.applied if r and t >= t0), default=None)
    return (b.ka.reloads() - n0, b.conf() == b.expected_conf(), spread,
            None if last_reload is None else last_reload - t0)


def absorb(b: Bench, events: int) -> tuple:
    """Publish *events* as fast as the broker takes them; (publish/s, handled/s)."""
    h0 = b.director.handled
    t0 = time.monotonic()
    infos = []
    for k in range(events):
        s, i = k % b.services, (k // b.services) % b.members
        name = b.flip(s, i)
        infos.append(b.pub.c.publish("topology/" + name, json.dumps(st.member_event(s, i)),
                                     qos=1))
    for info in infos:
        info.wait_for_publish(120)
    t_pub = time.monotonic() - t0
    end = time.monotonic() + 300
    while b.director.handled - h0 < events and time.monotonic() < end:
        time.sleep(0.005)
    t_all = time.monotonic() - t0
    return events / t_pub, (b.director.handled - h0) / t_all


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--services", type=int, default=10)
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--absorb", type=int, default=20000)
    ap.add_argument("--quiet", type=float, nargs="+", default=[0.05, 0.5])
    args = ap.parse_args()
    total = args.services * args.members
    workdir = tempfile.mkdtemp(prefix="lvs-bench-feeds-")
    broker = Broker(workdir).start()
    try:
        print(f"topology: {args.services} services x {args.members} members = "
              f"{total} real servers; broker mosquitto on 127.0.0.1:{broker.port}")
        print("\n1. event -> validated file in place + reload signalled "
              f"({args.events} events)")
        print(f"   {'quiet period':>12} {'p50':>9} {'p99':>9} {'p50-quiet':>10}")
        for quiet in args.quiet:
            b = Bench(workdir, broker, args.services, args.members, quiet)
            try:
                lat = latency(b, args.events)
            finally:
                b.close()
            p50, p99 = percentile(lat, 50), percentile(lat, 99)
            print(f"   {quiet:>11.2f}s {p50 * 1000:>7.0f}ms {p99 * 1000:>7.0f}ms "
                  f"{(p50 - quiet) * 1000:>8.0f}ms")
        print("\n2. storm: 1,000 member events within 1 s")
        print(f"   {'':>34} {'reloads':>8} {'last reload':>12} {'final file exact':>17} {'spread':>7}")
        for label, quiet, max_delay, per_event in (
                ("baseline: one apply per event", 0.0, 0.0, True),
                ("quiet 0 (queued updates fold)", 0.0, 0.0, False),
                ("coalesced: quiet 0.5, max 5 s", 0.5, 5.0, False)):
            b = Bench(workdir, broker, args.services, args.members, quiet, max_delay, per_event)
            try:
                reloads, exact, spread, converged = storm(b)
            finally:
                b.close()
            last = "-" if converged is None else f"{converged:.1f}s"
            print(f"   {label:>34} {reloads:>8} {last:>12} {str(exact):>17} {spread:>6.2f}s")
        print(f"\n3. absorption: {args.absorb} member events published back to back")
        b = Bench(workdir, broker, args.services, args.members, 0.5)
        try:
            pub_rate, handled_rate = absorb(b, args.absorb)
        finally:
            b.close()
        print(f"   broker accepted {pub_rate:,.0f} events/s; the loop handled "
              f"{handled_rate:,.0f} events/s end to end")
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
