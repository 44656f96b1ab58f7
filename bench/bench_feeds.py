#!/usr/bin/env python3
"""Live-topology benchmark: 10,000 real servers on a real mosquitto broker.

Runs ``lvs-extension run``'s loop (``service.run`` with the MQTT feed, the real
``keepalived -t`` and a stand-in keepalived process counting the SIGHUPs) and measures:

1. latency from a member event published on the broker to the validated file renamed
   into place and the reload signalled (p50 / p90 / max over N events), for a short
   and the default quiet period side by side;
2. a storm of member events within one second, three ways, the same events for each,
   the rounds interleaved (so each way sees the same machine load): the baseline, ONE
   apply (plan, render, ``keepalived -t``, write, reload) PER EVENT; quiet period 0 (no
   waiting -- but the updates that queued up during an apply are folded into the next
   one); quiet period 0.5 s / max delay 5 s.  Median reloads and time from the first
   event to the last reload, and the baseline's ratio to each;
3. how many events per second the feed and loop absorb (publish N events as fast as
   the broker takes them, time until the loop has handled all of them).

Every stage checks its own bookkeeping before it prints a figure: every update handled,
one apply per event where that is the point, every reload signalled counted by the
stand-in keepalived, the final keepalived.conf exactly the one rendered from the final
topology.  When something does not add up the bench prints one line saying what and
exits 1.

Usage: python3 bench/bench_feeds.py [--events 50] [--services 10] [--members 1000]
       [--storm 50] [--rounds 3] [--absorb 20000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cartridge_agent_lvs.director import service  # noqa: E402
from cartridge_agent_lvs.director.feeds import Backoff  # noqa: E402
from cartridge_agent_lvs.director.feeds.mqtt import REQUEST_TOPIC, MqttFeed  # noqa: E402
from cartridge_agent_lvs.director.plan import plan  # noqa: E402
from cartridge_agent_lvs.director.render import render  # noqa: E402
from cartridge_agent_lvs.director.topology import parse_topology  # noqa: E402
from tests.director import _stratos as st  # noqa: E402
from tests.director._feedutil import Client  # noqa: E402
from tests.director._service import FakeKeepalived, make_settings  # noqa: E402
from tests.director.conftest_broker import Broker  # noqa: E402

#: seconds a stopping service loop may take (it checks its stop event every 0.2 s)
STOP_TIMEOUT = 30.0


class BenchError(Exception):
    """A stage's bookkeeping does not add up: no figure is printed for it."""


class TimedKeepalived:
    """Wraps the real Keepalived: records when each reload returned (the file is in
    place by then: the service writes, then reloads) and whether one was running."""

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
                    raise BenchError(f"no reload #{n} within {timeout:g}s")
                self.cond.wait(left)
            return [t for t, r in self.applied if r][n - 1]


class BenchDirector(service.Director):
    """The service's Director, observable from the bench's thread.

    With *per_event* it is the storm's baseline: every topology change applied on its
    own, at once -- plan, render, ``keepalived -t``, write, reload -- before the next
    update is read (the coalescer's deadline is "now" with quiet period 0).
    """

    def __init__(self, settings, keepalived, per_event: bool = False) -> None:
        super().__init__(settings, keepalived)
        self.per_event = per_event
        self.cond = threading.Condition()
        self.done = 0              #: updates handled, a per-event apply included
        self.done_at = 0.0         #: when the last of them was
        self.converging = False
        self.apply_seconds = []    #: how long each apply took

    def handle(self, update, now, *args, **kwargs):
        changed = super().handle(update, now, *args, **kwargs)
        if changed and self.per_event:
            self.apply_now(now)
        with self.cond:
            self.done += 1
            self.done_at = time.monotonic()
            self.cond.notify_all()
        return changed

    def apply_now(self, now: float) -> None:
        """The baseline's apply of one change (due at once: quiet period 0)."""
        self.tick(now)

    def _converge(self, now):
        with self.cond:
            self.converging = True
        started = time.perf_counter()
        try:
            super()._converge(now)
        finally:
            with self.cond:
                self.apply_seconds.append(time.perf_counter() - started)
                self.converging = False
                self.cond.notify_all()

    def wait_settled(self, done: int, timeout: float) -> None:
        """Until *done* updates are handled and nothing is left to apply or retry."""
        end = time.monotonic() + timeout
        with self.cond:
            while self.done < done or self.converging or self.deadline() is not None:
                left = end - time.monotonic()
                if left <= 0:
                    raise BenchError(
                        f"not settled after {timeout:g}s: {self.done} of {done} updates "
                        f"handled, {'an apply running' if self.converging else ''}"
                        f"{'' if self.deadline() is None else 'work still due'}")
                # a pending deadline passes without a notification: look again
                self.cond.wait(min(left, 0.2))


class Bench:
    """Broker + stand-in keepalived + the service loop, for one quiet period.

    Everything lives in its own directory, removed by :meth:`close` only after the
    service loop stopped and the stand-in keepalived (which writes its count files
    there) has exited.
    """

    def __init__(self, workdir: str, broker: Broker, services: int, members: int,
                 quiet: float, max_delay: float = 5.0, per_event: bool = False) -> None:
        self.services, self.members = services, members
        self.workdir = tempfile.mkdtemp(dir=workdir)   # a fresh keepalived.conf per run
        self.fake = self.thread = self.pub = None
        self.stop = threading.Event()
        try:
            self._start(broker, quiet, max_delay, per_event)
        except BaseException:
            self.close(quiet=True)
            raise

    def _start(self, broker: Broker, quiet: float, max_delay: float,
               per_event: bool) -> None:
        self.fake = FakeKeepalived(self.workdir)
        self.settings = make_settings(
            self.workdir, vip_map=st.vip_map(range(self.services)), mqtt=[broker.address],
            keepalived_pidfile=self.fake.pidfile, quiet_period=quiet,
            max_delay=max_delay, drain_seconds=0)
        self.ka = TimedKeepalived(service.keepalived_for(self.settings))
        self.director = BenchDirector(self.settings, self.ka, per_event)
        # the publisher answers the feed's request for the complete topology, which the
        # feed sends once it has subscribed -- as Stratos does
        self.pub = Client(broker, subscribe=REQUEST_TOPIC)
        feed = MqttFeed(self.settings.mqtt, backoff=Backoff(initial=0.05, cap=0.5))
        self.thread = threading.Thread(target=service.run, args=(self.settings, self.stop),
                                       kwargs=dict(feed=feed, director=self.director),
                                       daemon=True)
        self.thread.start()
        self.inactive = {s: set() for s in range(self.services)}
        end = time.monotonic() + 30
        while not self.pub.received:
            if time.monotonic() > end or not self.thread.is_alive():
                raise BenchError("the service's MQTT feed did not request the complete "
                                 "topology within 30s")
            time.sleep(0.01)        # the polling step of this wait
        self.pub.publish("CompleteTopologyEvent", self.doc())
        # applied, and handled to the end (the baseline reloads inside handle())
        self.director.wait_settled(1, 120)

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

    def mark(self) -> tuple:
        """Counters at the start of a stage, for :meth:`account`."""
        return (self.director.done, self.director.renders, self.ka.reloads(),
                len(self.ka.applied), self._hups())

    def _hups(self) -> int:
        """SIGHUPs the stand-in keepalived counted, all sent so far included."""
        if self.fake.proc.poll() is not None:
            raise BenchError(f"the stand-in keepalived exited (code {self.fake.proc.poll()})")
        try:
            self.fake.flush()
            return self.fake.hups()
        except (OSError, ValueError, AssertionError) as exc:
            raise BenchError(f"the stand-in keepalived's count file "
                             f"{self.fake.count_file}: {exc}") from None

    def account(self, mark: tuple, events: int, timeout: float,
                applies: int = 0) -> int:
        """Once the loop has settled after *events* events: check the stage's books
        (every event handled, *applies* applies if given, every apply reloaded a
        running keepalived that counted it, the final file exact); the reloads."""
        done0, renders0, reloads0, applied0, hups0 = mark
        self.director.wait_settled(done0 + events, timeout)
        reloads = self.ka.reloads() - reloads0
        attempts = len(self.ka.applied) - applied0
        hups = self._hups() - hups0
        renders = self.director.renders - renders0
        if self.director.done - done0 != events:
            raise BenchError(f"{self.director.done - done0} updates handled, "
                             f"{events} events published")
        if attempts != reloads:
            raise BenchError(f"{attempts - reloads} of {attempts} reloads found no "
                             "keepalived running")
        if hups != reloads:
            raise BenchError(f"{reloads} reloads signalled, the stand-in keepalived "
                             f"counted {hups}")
        if applies and (renders != applies or reloads != applies):
            raise BenchError(f"{renders} applies and {reloads} reloads for {events} "
                             f"events, expected {applies} of each")
        if self.conf() != self.expected_conf():
            raise BenchError("the final keepalived.conf is not the one rendered from "
                             "the final topology")
        return reloads

    def expected_conf(self) -> str:
        return render(plan(self.settings, parse_topology(self.doc())).config)

    def conf(self) -> str:
        with open(self.settings.keepalived_conf) as f:
            return f.read()

    def __enter__(self) -> "Bench":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(quiet=exc_type is not None)   # the first failure is the one to tell

    def close(self, quiet: bool = False) -> None:
        self.stop.set()
        stuck = False
        try:
            if self.thread is not None:
                self.thread.join(STOP_TIMEOUT)
                stuck = self.thread.is_alive()
            if self.pub is not None:
                self.pub.close()
        finally:
            if self.fake is not None:
                self.fake.stop()           # killed and reaped: nothing writes here now
            shutil.rmtree(self.workdir, ignore_errors=True)
        if stuck and not quiet:
            raise BenchError(f"the service loop did not stop within {STOP_TIMEOUT:g}s")


def percentile(values, p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


def latency(b: Bench, events: int) -> list:
    mark = b.mark()
    out = []
    for k in range(events):
        n = b.ka.reloads()
        t0 = time.monotonic()
        b.toggle(k % b.services, (k // (2 * b.services)) % b.members)
        out.append(b.ka.wait_reloads(n + 1, 60) - t0)
    b.account(mark, events, 60, applies=events)
    return out


def storm(b: Bench, events: int, seconds: float) -> tuple:
    """*events* member events (distinct members) spread evenly over *seconds*;
    (reloads, seconds from the first event to the last reload, seconds per apply)."""
    mark = b.mark()
    first_apply = len(b.director.apply_seconds)
    t0 = time.monotonic()
    for k in range(events):
        b.toggle(k % b.services, (k // b.services) % b.members, wait=False)
        delay = t0 + (k + 1) * seconds / events - time.monotonic()
        if delay > 0:
            time.sleep(delay)       # pacing the publisher, not a synchronisation
    per_event = b.director.per_event
    reloads = b.account(mark, events, max(120.0, 10.0 * events),
                        applies=events if per_event else 0)
    with b.ka.cond:
        last = max(t for t, r in b.ka.applied if r) - t0
    return reloads, last, b.director.apply_seconds[first_apply:]


def absorb(b: Bench, events: int) -> tuple:
    """Publish *events* as fast as the broker takes them; (publish/s, handled/s).

    The events go round the first quarter of each service's members, so that no
    moment of the stream is a mass removal held back by the guard.
    """
    mark = b.mark()
    t0 = time.monotonic()
    infos = []
    quarter = max(1, b.members // 4)
    for k in range(events):
        s, i = k % b.services, (k // b.services) % quarter
        name = b.flip(s, i)
        infos.append(b.pub.c.publish("topology/" + name, json.dumps(st.member_event(s, i)),
                                     qos=1))
    for info in infos:
        info.wait_for_publish(120)
    t_pub = time.monotonic() - t0
    b.account(mark, events, 300)
    return events / t_pub, events / (b.director.done_at - t0)


#: (name, what it is, quiet period, max delay, one apply per event)
STORM_WAYS = (("baseline", "one apply per event", 0.0, 0.0, True),
              ("quiet 0", "queued updates fold", 0.0, 0.0, False),
              ("coalesced", "quiet 0.5 s, max delay 5 s", 0.5, 5.0, False))


@contextlib.contextmanager
def stage(name: str):
    """A BenchError inside names the stage it happened in."""
    try:
        yield
    except BenchError as exc:
        raise BenchError(f"{name}: {exc}") from None


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def run(args, workdir: str, broker: Broker) -> None:
    total = args.services * args.members
    print(f"topology: {args.services} services x {args.members} members = "
          f"{total:,} real servers; broker mosquitto on 127.0.0.1:{broker.port}; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)

    print(f"\n1. latency: event -> validated file in place + reload signalled "
          f"({args.events} events, one at a time)")
    print(f"   {'quiet period':>12} {'p50':>9} {'p90':>9} {'max':>9} {'p50-quiet':>10}",
          flush=True)
    for quiet in args.quiet:
        with stage(f"1. latency, quiet period {quiet:g}"), \
                Bench(workdir, broker, args.services, args.members, quiet) as b:
            lat = latency(b, args.events)
        p50, p90 = percentile(lat, 50), percentile(lat, 90)
        print(f"   {quiet:>11.2f}s {p50 * 1000:>7.0f}ms {p90 * 1000:>7.0f}ms "
              f"{max(lat) * 1000:>7.0f}ms {(p50 - quiet) * 1000:>8.0f}ms", flush=True)

    print(f"\n2. storm: {args.storm:,} member events within {args.storm_seconds:g} s, the "
          f"same {args.storm:,} for every way ({args.rounds} round(s), interleaved)")
    if args.storm < 1000:
        print(f"   ({args.storm:,}, not the 1,000 a storm can bring: the baseline's round "
              "lasts events x one apply, measured below; --storm sets the number)")
    print(f"   {'round':>5} {'':>40} {'reloads':>8} {'last reload':>12}", flush=True)
    results = {name: [] for name, *_ in STORM_WAYS}
    applies = []            # seconds, every apply of the baseline
    labels = {name: f"{name}: {what}" for name, what, *_ in STORM_WAYS}
    for r in range(1, args.rounds + 1):
        for name, _, quiet, max_delay, per_event in STORM_WAYS:
            with stage(f"2. storm, round {r}, {name}"), \
                    Bench(workdir, broker, args.services, args.members, quiet, max_delay,
                          per_event) as b:
                reloads, last, seconds = storm(b, args.storm, args.storm_seconds)
            results[name].append((reloads, last))
            if per_event:
                applies += seconds
            print(f"   {r:>5} {labels[name]:>40} {reloads:>8} {last:>11.1f}s", flush=True)
    medians = {name: (statistics.median(x for x, _ in rows),
                      statistics.median(t for _, t in rows))
               for name, rows in results.items()}
    print(f"   {'median':>5}")
    for name, (reloads, last) in medians.items():
        print(f"   {'':>5} {labels[name]:>40} {reloads:>8g} {last:>11.1f}s")
    (base, (base_reloads, base_last)), *others = medians.items()
    print(f"   one apply (plan, render, keepalived -t, write, reload) took "
          f"{statistics.median(applies) * 1000:.0f} ms (median of the {base}'s "
          f"{len(applies):,})")
    for name, (reloads, last) in others:
        print(f"   {base} / {name}: {base_reloads / reloads:.1f}x the reloads, "
              f"{base_last / last:.1f}x the time to the last reload")
    print("   every way: each event handled, every reload counted by the stand-in "
          "keepalived, final file exact", flush=True)

    print(f"\n3. absorption: {args.absorb:,} member events published back to back")
    with stage("3. absorption"), \
            Bench(workdir, broker, args.services, args.members, 0.5) as b:
        pub_rate, handled_rate = absorb(b, args.absorb)
    print(f"   broker accepted {pub_rate:,.0f} events/s; the loop handled "
          f"{handled_rate:,.0f} events/s end to end; final file exact")
    print(f"\nload average at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=positive, default=50,
                    help="latency: events per quiet period (default 50)")
    ap.add_argument("--services", type=positive, default=10)
    ap.add_argument("--members", type=positive, default=1000)
    ap.add_argument("--storm", type=positive, default=50,
                    help="storm: member events, the same for every way (default 50: "
                    "one apply at 10,000 real servers costs 0.4 to 1 s, so the "
                    "baseline's round with 1,000 would take many minutes)")
    ap.add_argument("--storm-seconds", type=float, default=1.0)
    ap.add_argument("--rounds", type=positive, default=3, help="storm rounds (default 3)")
    ap.add_argument("--absorb", type=positive, default=20000)
    ap.add_argument("--quiet", type=float, nargs="+", default=[0.05, 0.5])
    args = ap.parse_args(argv)
    if args.storm > args.services * args.members:
        ap.error(f"--storm {args.storm} exceeds the {args.services * args.members} "
                 "members: the storm's events must name distinct members")
    workdir = tempfile.mkdtemp(prefix="lvs-bench-feeds-")
    broker = Broker(workdir).start()
    try:
        run(args, workdir, broker)
    except BenchError as exc:
        print(f"bench_feeds: FAILED: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:    # a harness part (broker, stand-in, client) failed
        print(f"bench_feeds: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
