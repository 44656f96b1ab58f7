"""The MQTT feed against a real mosquitto broker."""

from __future__ import annotations

import logging
import time

import pytest

from cartridge_agent_lvs.director.feeds import COMPLETE, Backoff
from cartridge_agent_lvs.director.feeds import mqtt as mqtt_feed
from cartridge_agent_lvs.director.feeds.mqtt import REQUEST_TOPIC, MqttFeed

from ._feedutil import Client, Spy, running_feeds, wait_for
from .conftest_broker import broker, broker_factory, free_port  # noqa: F401

pytestmark = pytest.mark.broker


@pytest.fixture
def feeds():
    with running_feeds(MqttFeed, backoff=lambda: Backoff(initial=0.05, cap=0.2)) as start:
        yield start


@pytest.fixture
def clients():
    made = []

    def make(broker, **kw):
        made.append(Client(broker, **kw))
        return made[-1]

    yield make
    for c in made:
        c.close()


def requests_seen(watcher) -> int:
    return sum(1 for m in watcher.received if m.topic == REQUEST_TOPIC)


def test_subscribes_requests_complete_topology_and_names_events(broker, feeds, clients):
    watcher = clients(broker, subscribe=REQUEST_TOPIC)
    feed, sink = feeds([broker.address])
    wait_for(lambda: requests_seen(watcher) == 1, what="CompleteTopologyRequestEvent")
    assert watcher.received[0].payload == b"{}"
    pub = clients(broker)
    pub.publish("CompleteTopologyEvent", {"topology": {}})
    pub.publish("MemberActivatedEvent", {"memberId": "m1"})
    pub.publish("member/MemberSuspendedEvent", {"memberId": "m1"})   # last segment wins
    pub.publish("ignored", {}, topic_prefix="other/")                  # not topology/#
    pub.publish("MemberStartedEvent", {})     # a barrier: delivered in order, after it
    updates = sink.wait(4)
    assert sink.names() == [COMPLETE, "MemberActivatedEvent", "MemberSuspendedEvent",
                            "MemberStartedEvent"]
    assert updates[1].payload == b'{"memberId": "m1"}'
    assert "topology/MemberActivatedEvent" in updates[1].source


def test_broker_restart_reconnects_and_requests_again(broker, feeds, clients, caplog):
    # the first reconnect comes 0.5-1 s after the loss: time for the watcher to subscribe
    feed, sink = feeds([broker.address], backoff=Backoff(initial=1.0, cap=1.0))
    watcher = clients(broker, subscribe=REQUEST_TOPIC)
    wait_for(lambda: feed._states.state == "connected", what="connected")
    with caplog.at_level(logging.INFO, logger="cartridge_agent_lvs.director.feeds"):
        watcher.close()
        broker.restart()
        watcher = clients(broker, subscribe=REQUEST_TOPIC)
        wait_for(lambda: requests_seen(watcher) >= 1, what="re-request after restart")
        clients(broker).publish("MemberActivatedEvent", {"n": 1})
        assert sink.wait(1)[-1].name == "MemberActivatedEvent"
    text = caplog.text
    assert text.count("connection lost") == 1 and text.count("connected (") == 1


def test_broker_down_at_startup_then_up(broker_factory, feeds, clients, caplog):
    late = broker_factory()
    with caplog.at_level(logging.INFO, logger="cartridge_agent_lvs.director.feeds"):
        feed, sink = feeds([late.address], backoff=Backoff(initial=0.05, cap=0.1))
        Spy(feed, "_sleep").wait(10, what="failed rounds")
        assert feed._states.state.startswith("unreachable")
        late.start()
        wait_for(lambda: feed._states.state == "connected", what="connected")
    assert caplog.text.count("unreachable") == 1      # once, not once per retry
    clients(late).publish("CompleteTopologyEvent", {"topology": {}})
    assert sink.wait(1)[0].name == COMPLETE


def test_brokers_are_tried_in_order(broker, feeds):
    dead = ("127.0.0.1", free_port())
    feed, sink = feeds([dead, broker.address])
    wait_for(lambda: feed._states.state == "connected", what="second broker")
    assert f"127.0.0.1:{broker.port}" in feed._where


def test_username_and_password(broker_factory, feeds, clients, caplog):
    b = broker_factory(users={"lvs": "s3cret"}).start()
    with caplog.at_level(logging.WARNING, logger="cartridge_agent_lvs.director.feeds"):
        bad, _ = feeds([b.address], username="lvs", password="wrong")
        rounds = Spy(bad, "_sleep")
        wait_for(lambda: (bad._states.state or "").startswith("unreachable"),
                 what="refusal")
        rounds.wait(5, what="refused rounds")
    assert "refused" in caplog.text and caplog.text.count("unreachable") == 1
    good, sink = feeds([b.address], username="lvs", password="s3cret")
    wait_for(lambda: good._states.state == "connected", what="authenticated")
    clients(b, username="lvs", password="s3cret").publish("MemberActivatedEvent", {})
    assert sink.wait(1)[0].name == "MemberActivatedEvent"


def test_oversized_payload_is_dropped(broker, feeds, clients, monkeypatch, caplog):
    monkeypatch.setattr(mqtt_feed, "MAX_PAYLOAD_BYTES", 1000)
    feed, sink = feeds([broker.address])
    wait_for(lambda: feed._states.state == "connected", what="connected")
    pub = clients(broker)
    with caplog.at_level(logging.ERROR):
        pub.publish("MemberActivatedEvent", b"x" * 5000)
        pub.publish("MemberActivatedEvent", b"y" * 5000)
        pub.publish("MemberSuspendedEvent", b"{}")
        sink.wait(1)
    assert sink.names() == ["MemberSuspendedEvent"]
    assert caplog.text.count("dropping a 5000-byte message") == 1


def test_refresh_requests_the_complete_topology_again(broker, feeds, clients):
    watcher = clients(broker, subscribe=REQUEST_TOPIC)
    feed, _ = feeds([broker.address])
    wait_for(lambda: requests_seen(watcher) == 1, what="first request")
    feed.refresh()
    wait_for(lambda: requests_seen(watcher) == 2, what="second request")


def test_stop_is_prompt_even_while_backing_off(feeds):
    feed, _ = feeds([("127.0.0.1", free_port())], backoff=Backoff(initial=30, cap=30))
    # the failed round is reported just before the 15-30 s backoff wait starts
    wait_for(lambda: (feed._states.state or "").startswith("unreachable"), 10, "backoff")
    t = time.monotonic()
    feed.stop()
    assert time.monotonic() - t < 1.0


def test_backoff_is_capped_exponential_with_jitter():
    import random
    b = Backoff(initial=0.5, cap=30, jitter=0.5, rng=random.Random(1))
    delays = [b.next() for _ in range(12)]
    for n, d in enumerate(delays):
        base = min(30, 0.5 * 2 ** n)
        assert base * 0.5 <= d <= base
    assert len(set(delays)) == len(delays)          # jittered, not lockstep
    b.reset()
    assert b.next() <= 0.5


@pytest.mark.parametrize("kw", [dict(initial=0), dict(initial=2, cap=1), dict(jitter=1)])
def test_backoff_rejects_nonsense(kw):
    with pytest.raises(ValueError):
        Backoff(**kw)


# -- issue 12: Stratos 4.1.0-4.1.4 never answers the complete-topology request ----------

def test_no_complete_topology_after_connecting_is_said_once_naming_both_causes(
        broker, feeds, clients, caplog):
    with caplog.at_level(logging.WARNING, logger="cartridge_agent_lvs.director.feeds"):
        feed, sink = feeds([broker.address], complete_wait=0.5)
        checks = Spy(feed, "_watch_complete")
        wait_for(lambda: feed._states.state == "connected", what="connected")
        clients(broker).publish("MemberActivatedEvent", {"memberId": "m1"})
        wait_for(lambda: "no CompleteTopologyEvent" in caplog.text, 5, "the warning")
        checks.wait(5, what="checks after the warning")   # ... and only once
    [record] = [r for r in caplog.records if "CompleteTopologyEvent" in r.getMessage()]
    text = record.getMessage()
    assert f"0.5s after connecting to 127.0.0.1:{broker.port}" in text
    assert "(1 other topology messages received)" in text
    assert "broker or topic is wrong" in text and "Stratos 4.1.0-4.1.4" in text
    assert "topology sync (every 60 s by default)" in text and "\n" not in text


def test_a_complete_topology_in_time_gives_no_warning(broker, feeds, clients, caplog):
    with caplog.at_level(logging.WARNING, logger="cartridge_agent_lvs.director.feeds"):
        feed, sink = feeds([broker.address], complete_wait=0.5)
        checks = Spy(feed, "_watch_complete")
        wait_for(lambda: feed._states.state == "connected", what="connected")
        clients(broker).publish("CompleteTopologyEvent", {"topology": {}})
        sink.wait(1)
        # a check made after complete_wait had passed since connecting
        wait_for(lambda: checks.times and feed._connected_at is not None and
                 checks.times[-1] > feed._connected_at + 0.5, 10, "a late check")
        checks.wait(1, what="check")            # ... and that check is over
    assert "no CompleteTopologyEvent" not in caplog.text
