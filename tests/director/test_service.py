"""``lvs-extension run`` end to end: real broker / file / HTTP server, real
``keepalived -t``, a fake keepalived process counting the SIGHUPs it is sent."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time

import pytest

from cartridge_agent_lvs.director import service
from cartridge_agent_lvs.director.feeds import Backoff
from cartridge_agent_lvs.director.feeds.mqtt import REQUEST_TOPIC, MqttFeed
from cartridge_agent_lvs.errors import SettingsError

from . import _stratos as st
from ._feedutil import Client, FakeStratos, Spy, wait_for
from ._service import director_settings, fake_keepalived  # noqa: F401
from .conftest_broker import broker, broker_factory  # noqa: F401

pytestmark = [pytest.mark.keepalived]

RS_RE = re.compile(r"real_server (\S+) (\d+) \{\s*weight (\d+)")


def real_servers(conf_text: str) -> dict:
    """{ip: weight} of every real_server block in a keepalived.conf."""
    return {ip: int(w) for ip, _, w in RS_RE.findall(conf_text)}


class Running:
    """``service.run`` in a thread; ``conf()`` reads the live file.

    Two test-only observation points, set on this run's own objects (the product is
    not changed): the updates the feed pushes are counted (``pushed``) and the loop's
    passes are counted (a :class:`Spy` on ``Director.tick``); :meth:`settled` uses
    them instead of sleeping.
    """

    def __init__(self, settings, feed=None) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.director = service.Director(settings, service.keepalived_for(settings))
        self.ticks = Spy(self.director, "tick")
        self.feed = feed or service.build_feed(settings)
        self.pushed = 0
        start = self.feed.start

        def counting_start(sink):
            def counted(update):
                self.pushed += 1            # before the loop can see it
                sink(update)
            start(counted)
        self.feed.start = counting_start
        self.result = []
        self.thread = threading.Thread(
            target=lambda: self.result.append(
                service.run(settings, self.stop, director=self.director, feed=self.feed)),
            daemon=True)
        self.thread.start()

    def conf(self) -> str:
        try:
            with open(self.settings.keepalived_conf) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def servers(self) -> dict:
        return real_servers(self.conf())

    def wait_servers(self, expected: dict, timeout: float = 15.0) -> None:
        wait_for(lambda: self.servers() == expected, timeout,
                 f"real servers {expected}, have {self.servers()}")

    def ignored(self, reason: str) -> float:
        """``feed_events_ignored_total{reason}`` of this run."""
        return self.director.registry.get_sample_value(
            "lvs_extension_feed_events_ignored_total", {"reason": reason}) or 0

    def settled(self, timers: bool = False, timeout: float = 15.0) -> None:
        """Wait until the loop has done everything the updates it got call for.

        That is: every update the feed pushed is handled, no change waits for its
        quiet period (nor, unless *timers*, a drain, a held mass removal or a reload
        retry for its timer), and one whole pass of the loop then went by without a
        render or a reload.  From here on the service does nothing until the next
        update (or, with *timers*, until a timer is due), so an absence check needs
        no sleep.
        """
        d = self.director

        def pending():
            return (d.coalescer.deadline() if timers else d.deadline()) is not None

        def quiet() -> bool:
            before = (self.pushed, d.handled, d.renders, d.reloads)
            if before[0] != before[1] or pending():
                return False
            self.ticks.wait(2, timeout, "passes of the service loop")
            return (self.pushed, d.handled, d.renders, d.reloads) == before and not pending()
        wait_for(quiet, timeout, "the service to settle")

    def close(self) -> int:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "service did not stop"
        return self.result[0]


@pytest.fixture
def running():
    made = []

    def start(settings, **kw) -> Running:
        made.append(Running(settings, **kw))
        return made[-1]

    yield start
    for r in made:
        if r.thread.is_alive():
            r.close()


def fast_mqtt(settings) -> MqttFeed:
    return MqttFeed(settings.mqtt, backoff=Backoff(initial=0.05, cap=0.2))


def active(*members, s=0) -> dict:
    return {st.member_ip(s, i): 1 for i in members}


# -- MQTT ---------------------------------------------------------------------------

@pytest.mark.broker
def test_mqtt_follows_stratos(broker, director_settings, fake_keepalived, running):
    settings = director_settings(mqtt=[broker.address], drain_seconds=0)
    pub = Client(broker, subscribe=REQUEST_TOPIC)
    try:
        svc = running(settings, feed=fast_mqtt(settings))
        # the feed asks for the complete topology once subscribed: from then on it
        # hears what is published
        wait_for(lambda: pub.received, what="the feed's CompleteTopologyRequestEvent")
        pub.publish("MemberActivatedEvent", st.member_event(0, 9))  # before complete
        wait_for(lambda: svc.ignored("before_complete") == 1, what="the early event")
        svc.settled()
        assert svc.conf() == ""                                 # nothing written yet
        fake_keepalived.expect(0)
        pub.publish("CompleteTopologyEvent", st.topology({0: [0, 1, 2]}, inactive={0: [3]}))
        svc.wait_servers(active(0, 1, 2))
        wait_for(lambda: fake_keepalived.hups() == 1, what="one reload")
        pub.publish("MemberActivatedEvent", st.member_event(0, 3))
        svc.wait_servers(active(0, 1, 2, 3))
        pub.publish("MemberTerminatedEvent", st.member_event(0, 1))
        svc.wait_servers(active(0, 2, 3))
        svc.settled()
        fake_keepalived.expect(3)
    finally:
        pub.close()
    assert svc.close() == 0


@pytest.mark.broker
def test_burst_gives_one_reload(broker, director_settings, fake_keepalived, running):
    settings = director_settings(mqtt=[broker.address], quiet_period=0.4, drain_seconds=0)
    stratos = FakeStratos(broker, st.topology({0: range(40)}, inactive={0: range(40, 60)}))
    try:
        svc = running(settings, feed=fast_mqtt(settings))
        svc.wait_servers(active(*range(40)))
        wait_for(lambda: fake_keepalived.hups() == 1, what="first reload")
        for i in range(20):                                   # 40 events in a burst
            stratos.publish("MemberSuspendedEvent", st.member_event(0, i))
            stratos.publish("MemberActivatedEvent", st.member_event(0, i + 40))
        svc.wait_servers(active(*range(20, 60)))
        svc.settled()
        fake_keepalived.expect(2)
    finally:
        stratos.close()


@pytest.mark.broker
def test_broker_restart_mid_stream(broker, director_settings, fake_keepalived, running):
    settings = director_settings(mqtt=[broker.address], quiet_period=0.1, drain_seconds=0)
    stratos = FakeStratos(broker, st.topology({0: [0, 1, 2, 3]}))
    try:
        svc = running(settings, feed=fast_mqtt(settings))
        svc.wait_servers(active(0, 1, 2, 3))
        broker.stop()
        wait_for(lambda: not svc.feed.connected, what="the feed to notice the loss")
        svc.settled()
        assert svc.servers() == active(0, 1, 2, 3)     # feed loss changes nothing
        fake_keepalived.expect(1)
        # while the broker is down a member leaves; only the complete topology
        # re-requested after the reconnect can tell
        stratos.topology = st.topology({0: [0, 1, 2]})
        broker.start()
        svc.wait_servers(active(0, 1, 2))
        svc.settled()
        fake_keepalived.expect(2)
    finally:
        stratos.close()


@pytest.mark.broker
def test_broker_down_at_startup(broker_factory, director_settings, fake_keepalived,
                                running):
    late = broker_factory()
    settings = director_settings(mqtt=[late.address])
    feed = fast_mqtt(settings)
    rounds = Spy(feed, "_sleep")
    svc = running(settings, feed=feed)
    rounds.wait(5, what="failed connection rounds")        # backoff 0.05 s to 0.2 s
    assert svc.conf() == "" and svc.thread.is_alive()
    late.start()
    stratos = FakeStratos(late, st.topology({0: [5, 6]}))
    try:
        svc.wait_servers(active(5, 6))
        svc.settled()
        fake_keepalived.expect(1)
    finally:
        stratos.close()


JUNK = [
    ("MemberActivatedEvent", b"{not json"),
    ("MemberActivatedEvent", b"\xff\xfe garbage"),
    ("MemberActivatedEvent", b"[]"),
    ("MemberActivatedEvent", b'{"memberId": 5}'),
    ("NoSuchEvent", b"{}"),
    ("MemberActivatedEvent", json.dumps(dict(st.member_event(0, 1), serviceName="nope"))),
    ("MemberActivatedEvent", json.dumps(dict(st.member_event(0, 1),
                                             clusterId="no.such.cluster"))),
    ("MemberTerminatedEvent", json.dumps(dict(st.member_event(0, 1),
                                              memberId="svc0.member-999"))),
    ("MemberActivatedEvent", json.dumps(st.member_event(0, 0))),   # duplicate activation
    ("MemberSuspendedEvent", json.dumps(st.member_event(0, 2))),   # already suspended
    ("MemberActivatedEvent", b"[" * 100000 + b"]" * 100000),       # deep nesting
    ("MemberActivatedEvent", b'{"x": "' + b"a" * (8 << 20) + b'"}'),  # 8 MiB
    ("CompleteTopologyEvent", b'{"topology": {"serviceMap": {"svc0": '),  # truncated
    ("CompleteTopologyEvent", b"null"),
    ("ServiceRemovedEvent", b'{"serviceName": 7}'),
]


@pytest.mark.broker
def test_junk_never_crashes_nor_changes_the_config(broker, director_settings,
                                                   fake_keepalived, running, caplog):
    settings = director_settings(mqtt=[broker.address], quiet_period=0.1, drain_seconds=0)
    stratos = FakeStratos(broker, st.topology({0: [0, 1]}, inactive={0: [2]}))
    try:
        svc = running(settings, feed=fast_mqtt(settings))
        svc.wait_servers(active(0, 1))
        good = svc.conf()
        handled = svc.director.handled
        with caplog.at_level(logging.WARNING):
            for _ in range(2):                              # each junk item twice
                for name, payload in JUNK:
                    stratos.publish(name, payload)
            wait_for(lambda: svc.director.handled >= handled + 2 * len(JUNK), 30,
                     "junk handled")
            svc.settled()
        assert svc.conf() == good
        fake_keepalived.expect(1)
        assert svc.thread.is_alive()
        ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
        assert len(ignored) == len(set(ignored))            # each problem logged once
        # ... and the service still follows real events
        stratos.publish("MemberActivatedEvent", st.member_event(0, 2))
        svc.wait_servers(active(0, 1, 2))
    finally:
        stratos.close()


@pytest.mark.broker
def test_mass_removal_is_held_then_applied(broker, director_settings, fake_keepalived,
                                           running, caplog):
    settings = director_settings(mqtt=[broker.address], quiet_period=0.1,
                                 drain_seconds=0, mass_removal_hold=2)
    stratos = FakeStratos(broker, st.topology({0: range(10)}))
    try:
        svc = running(settings, feed=fast_mqtt(settings))
        svc.wait_servers(active(*range(10)))
        with caplog.at_level(logging.WARNING):
            asked = time.monotonic()
            stratos.publish("CompleteTopologyEvent", st.topology({0: [0, 1]}))  # 8 of 10
            wait_for(lambda: "MASS REMOVAL HELD BACK" in caplog.text, what="warning")
        svc.settled(timers=True)                # the change is held, the hold runs
        assert svc.servers() == active(*range(10))
        fake_keepalived.expect(1)
        seen = []                               # every state of the file until applied
        wait_for(lambda: seen.append(svc.servers()) or seen[-1] == active(0, 1), 10,
                 "the removal after the hold")
        took = time.monotonic() - asked
        assert took >= 2, f"applied after {took:.2f}s, before mass_removal_hold"
        assert all(s in (active(*range(10)), active(0, 1)) for s in seen)
        svc.settled()
        fake_keepalived.expect(2)
    finally:
        stratos.close()


@pytest.mark.broker
def test_drain_weight_zero_then_removed_and_comeback(broker, director_settings,
                                                     fake_keepalived, running):
    settings = director_settings(mqtt=[broker.address], quiet_period=0.1,
                                 drain_seconds=1.5)
    stratos = FakeStratos(broker, st.topology({0: [0, 1, 2]}))
    try:
        svc = running(settings, feed=fast_mqtt(settings))
        svc.wait_servers(active(0, 1, 2))
        stratos.publish("MemberSuspendedEvent", st.member_event(0, 2))
        svc.wait_servers(dict(active(0, 1), **{st.member_ip(0, 2): 0}))
        t = time.monotonic()
        svc.wait_servers(active(0, 1))
        assert time.monotonic() - t > 1.0
        # a member leaving and coming back within the drain is restored at once
        stratos.publish("MemberSuspendedEvent", st.member_event(0, 1))
        svc.wait_servers({st.member_ip(0, 0): 1, st.member_ip(0, 1): 0})
        stratos.publish("MemberActivatedEvent", st.member_event(0, 1))
        # "at once": after the quiet period (0.1 s), well before its drain (1.5 s) ends
        svc.wait_servers(active(0, 1), timeout=1.0)
        svc.settled()                   # a drain timer left for member 1 would fire first
        assert svc.servers() == active(0, 1)
        fake_keepalived.expect(5)
    finally:
        stratos.close()


# -- file and HTTP feeds --------------------------------------------------------------

def write_json(path, doc) -> None:
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        f.write(doc if isinstance(doc, str) else json.dumps(doc))
    os.replace(tmp, path)


def test_file_feed_change_reloads_once_bad_file_keeps_last_good(
        tmp_path, director_settings, fake_keepalived, running, caplog):
    topo = tmp_path / "topology.json"
    write_json(topo, st.topology({0: [0, 1]}))
    settings = director_settings(topology_file=str(topo), quiet_period=0.1,
                                 drain_seconds=0)
    svc = running(settings)
    svc.wait_servers(active(0, 1))
    write_json(topo, st.topology({0: [0, 1, 2]}))
    svc.wait_servers(active(0, 1, 2))
    svc.settled()
    fake_keepalived.expect(2)
    with caplog.at_level(logging.WARNING):
        write_json(topo, '{"topology": {"serviceMap": ')            # truncated
        wait_for(lambda: svc.ignored("invalid") == 1, what="the bad file rejected")
        svc.settled()
    assert svc.servers() == active(0, 1, 2)
    fake_keepalived.expect(2)
    assert sum("ignored CompleteTopologyEvent" in r.getMessage()
               for r in caplog.records) == 1
    write_json(topo, st.topology({0: [1, 2]}))     # 1 of 3 leaves: under the mass guard
    svc.wait_servers(active(1, 2))
    assert svc.close() == 0


def test_http_feed(tmp_path, director_settings, fake_keepalived, running):
    from .test_feed_http import TopologyServer
    server = TopologyServer()
    try:
        server.body = json.dumps(st.topology({0: [3, 4]})).encode()
        settings = director_settings(http_url=server.url, http_interval=0.1,
                                     quiet_period=0.1, drain_seconds=0)
        svc = running(settings)
        svc.wait_servers(active(3, 4))
        server.body = json.dumps(st.topology({0: [3, 4, 5]})).encode()
        svc.wait_servers(active(3, 4, 5))
        server.status = 500                               # feed loss: keep last good
        wait_for(lambda: server.replies.count(500) >= 3, what="failed polls")
        svc.settled()
        assert svc.servers() == active(3, 4, 5)
        fake_keepalived.expect(2)
    finally:
        server.close()


@pytest.mark.parametrize("feeds", [{}, {"topology_file": "/x", "http_url": "http://x/"}])
def test_exactly_one_feed_is_required(director_settings, feeds):
    with pytest.raises(SettingsError, match="exactly one of"):
        service.build_feed(director_settings(**feeds))


# -- review (issue 10): restart over a live file, reload retries ----------------------

def _live_conf(settings, members) -> str:
    """The keepalived.conf an earlier run left in place for *members* of svc0."""
    from cartridge_agent_lvs.director.plan import plan
    from cartridge_agent_lvs.director.render import render
    from cartridge_agent_lvs.director.topology import parse_topology
    text = render(plan(settings, parse_topology(st.topology({0: members}))).config)
    with open(settings.keepalived_conf, "w") as f:
        f.write(text)
    return text


@pytest.mark.parametrize("after_restart", [
    {"topology": {"serviceMap": {}}},           # an empty topology kept on the broker
    st.topology({0: [0]}),                      # 9 of 10 gone
])
def test_restart_over_a_live_conf_holds_a_mass_removal(
        tmp_path, director_settings, fake_keepalived, running, caplog, after_restart):
    topo = tmp_path / "topology.json"
    write_json(topo, after_restart)
    settings = director_settings(topology_file=str(topo), quiet_period=0.1,
                                 drain_seconds=0, mass_removal_hold=60)
    live = _live_conf(settings, range(10))
    stale = tmp_path / ".keepalived-k1ll3d9x.conf.tmp"   # left by a kill -9
    stale.write_text("partial")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    with caplog.at_level(logging.INFO):
        svc = running(settings)
        wait_for(lambda: "MASS REMOVAL HELD BACK" in caplog.text, what="the guard")
        svc.settled(timers=True)                # the hold (60 s) runs; nothing else
    assert "removes 10 of 10" in caplog.text or "removes 9 of 10" in caplog.text
    assert svc.conf() == live                       # nothing removed
    fake_keepalived.expect(0)
    assert "baseline: 10 real servers" in caplog.text
    assert not stale.exists()
    assert svc.close() == 0


def test_restart_over_an_unreadable_conf_starts_without_a_baseline(
        tmp_path, director_settings, fake_keepalived, running, caplog):
    topo = tmp_path / "topology.json"
    write_json(topo, st.topology({0: [0]}))
    settings = director_settings(topology_file=str(topo), quiet_period=0.1,
                                 drain_seconds=0)
    with open(settings.keepalived_conf, "w") as f:
        f.write("# hand-written\nvirtual_server 192.0.2.10 80 {\n")
    with caplog.at_level(logging.INFO):
        svc = running(settings)
        svc.wait_servers(active(0))
    assert "starting without a baseline" in caplog.text
    assert "not written by lvs-extension" in caplog.text
    svc.settled()
    fake_keepalived.expect(1)


def test_a_failed_reload_is_retried_with_capped_backoff_and_on_sighup(
        tmp_path, director_settings):
    from cartridge_agent_lvs.director.feeds import COMPLETE, FeedUpdate
    fail, attempts = tmp_path / "fail", tmp_path / "attempts"
    fail.write_text("")
    cmd = (sys.executable, "-c",
           f"import os, sys; open({str(attempts)!r}, 'a').write('x'); "
           f"sys.exit(3 if os.path.exists({str(fail)!r}) else 0)")
    settings = director_settings(reload_command=cmd, quiet_period=0, drain_seconds=0)
    d = service.Director(settings, service.keepalived_for(settings),
                         reload_backoff=Backoff(initial=1, cap=4, jitter=0))

    def tried() -> int:
        return len(attempts.read_text()) if attempts.exists() else 0

    d.handle(FeedUpdate(COMPLETE, json.dumps(st.topology({0: [1, 2]})), "test"), 0)
    assert d.tick(0)
    assert st.member_ip(0, 2) in open(settings.keepalived_conf).read()   # written ...
    assert (tried(), d.reloads) == (1, 0)                                # ... not reloaded
    for now, deadline in ((0, 1), (1, 3), (3, 7), (7, 11), (11, 15)):    # 1, 2, 4, 4, 4
        assert d.deadline() == deadline
        d.tick(deadline - 0.01)
        assert tried() == 1 + [0, 1, 3, 7, 11].index(now)               # not early
        d.tick(deadline)
    assert tried() == 6
    fail.unlink()
    d.force()                                   # SIGHUP: retried at once
    d.tick(12)
    assert (tried(), d.reloads, d.deadline()) == (7, 1, None)
    d.force()                                   # confirmed: no further reload
    d.tick(13)
    assert tried() == 7


# -- issue 12: a Stratos 4.1.6 message sequence over a real broker -----------------------

REPLAY = os.path.join(os.path.dirname(__file__), "samples", "stratos-4.1.6-replay.json")


@pytest.mark.broker
def test_stratos_416_new_application_enters_and_leaves(broker, director_settings,
                                                       fake_keepalived, running, caplog):
    """Complete topology, then a new application's ApplicationClustersCreatedEvent and
    its members' Created/Initialized/Started/Activated events, then
    ApplicationClustersRemovedEvent: the new cluster's Active members go into
    keepalived.conf and leave it after the drain; every step passes keepalived -t."""
    with open(REPLAY) as f:
        replay = json.load(f)
    complete, created, starting, activated, removed = replay["steps"]
    settings = director_settings(mqtt=[broker.address], vip_map=replay["vip_map"],
                                 quiet_period=0.1, drain_seconds=1.5)
    checker = service.keepalived_for(settings)
    shop = {"10.0.3.31": 1, "10.0.3.32": 1}
    stratos = FakeStratos(broker, complete["messages"][0]["payload"])

    def replay_step(step, then: dict) -> None:
        handled = svc.director.handled
        for message in step["messages"]:
            stratos.publish(message["topic"].split("/", 1)[1], message["payload"])
        wait_for(lambda: svc.director.handled >= handled + len(step["messages"]), 10,
                 step["note"])
        svc.wait_servers(then)
        svc.settled(timers=True)            # nothing else comes (but a drain may run)
        assert svc.servers() == then, step["note"]
        checker.check_file(settings.keepalived_conf)          # the real keepalived -t

    try:
        with caplog.at_level(logging.INFO):
            svc = running(settings, feed=fast_mqtt(settings))
            svc.wait_servers(shop)
            checker.check_file(settings.keepalived_conf)
            replay_step(created, shop)
            replay_step(starting, shop)                       # not Active yet
            replay_step(activated, {**shop, "10.0.3.41": 1, "10.0.3.42": 1})
            replay_step(removed, {**shop, "10.0.3.41": 0, "10.0.3.42": 0})   # draining
            svc.wait_servers(shop, timeout=10)                # ... then removed
            checker.check_file(settings.keepalived_conf)
    finally:
        stratos.close()
    assert "unknown cluster" not in caplog.text and "ignored" not in caplog.text
    svc.settled()
    fake_keepalived.expect(4)               # complete, activated, drain start, drain end


def test_restart_over_a_live_conf_with_per_service_settings_holds_it_byte_for_byte(
        tmp_path, director_settings, fake_keepalived, running, caplog):
    """The guard's baseline read back from the file carries each service's own
    settings, so the held configuration renders exactly the live file."""
    topo = tmp_path / "topology.json"
    write_json(topo, {"topology": {"serviceMap": {}}})
    settings = director_settings(
        topology_file=str(topo), quiet_period=0.1, drain_seconds=0, mass_removal_hold=60,
        service_overrides={"svc0": dict(health_check="HTTP_GET", http_path="/health",
                                        scheduler="wlc", persistence_timeout="60",
                                        sorry_server="192.0.2.200 80", weight="3")})
    live = _live_conf(settings, range(10))
    assert "HTTP_GET" in live and "lb_algo wlc" in live
    with caplog.at_level(logging.INFO):
        svc = running(settings)
        wait_for(lambda: "MASS REMOVAL HELD BACK" in caplog.text, what="the guard")
        svc.settled(timers=True)                # the hold (60 s) runs; nothing else
    assert svc.conf() == live
    fake_keepalived.expect(0)
    assert svc.close() == 0
