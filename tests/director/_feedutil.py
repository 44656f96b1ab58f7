"""Helpers shared by the feed/service tests: a recording sink, an MQTT client, waiting."""

from __future__ import annotations

import contextlib
import json
import threading
from typing import List

import paho.mqtt.client as mqtt

from cartridge_agent_lvs.director.feeds import FeedUpdate

from .._wait import Spy, wait_for  # noqa: F401  (the feed and service tests' waits)


class Recorder:
    """A feed sink that keeps every update."""

    def __init__(self) -> None:
        self.updates: List[FeedUpdate] = []
        self._lock = threading.Lock()

    def __call__(self, update: FeedUpdate) -> None:
        with self._lock:
            self.updates.append(update)

    def names(self) -> List[str]:
        with self._lock:
            return [u.name for u in self.updates]

    def wait(self, n: int, timeout: float = 10.0) -> List[FeedUpdate]:
        wait_for(lambda: len(self.updates) >= n, timeout, f"{n} updates")
        with self._lock:
            return list(self.updates)


class Client:
    """A paho client on the test broker: publishes, and records what it receives."""

    def __init__(self, broker, subscribe: str = "", **auth) -> None:
        self.received: List[mqtt.MQTTMessage] = []
        self._sub = subscribe
        self._ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.c.reconnect_delay_set(0.1, 0.5)
        if auth:
            self.c.username_pw_set(auth["username"], auth["password"])
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *args: self._ready.set()
        self.c.connect(*broker.address)
        self.c.loop_start()
        if not self._ready.wait(10):
            raise AssertionError("test MQTT client could not connect")

    def _on_connect(self, client, userdata, flags, rc, props) -> None:
        if self._sub:       # ready once the broker acknowledged the subscription
            client.subscribe(self._sub, qos=1)
        else:
            self._ready.set()

    def _on_message(self, client, userdata, msg) -> None:
        self.received.append(msg)

    def publish(self, event: str, payload, topic_prefix: str = "topology/",
                wait: bool = True) -> None:
        data = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        info = self.c.publish(topic_prefix + event, data, qos=1)
        if wait:
            info.wait_for_publish(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@contextlib.contextmanager
def running_feeds(feed_class, **defaults):
    """Yields ``start(*args, **kw) -> (feed, Recorder)``; stops every feed at the end.

    A callable default is called per feed (a fresh :class:`Backoff` each time).
    """
    started = []

    def start(*args, **kw):
        for key, value in defaults.items():
            kw.setdefault(key, value() if callable(value) else value)
        feed = feed_class(*args, **kw)
        sink = Recorder()
        feed.start(sink)
        started.append(feed)
        return feed, sink

    try:
        yield start
    finally:
        for feed in started:
            feed.stop()


class FakeStratos(Client):
    """Publishes the complete topology like Stratos: on request and when it (re)connects.

    ``self.topology`` is the document it answers with; tests change it as Stratos would.
    """

    def __init__(self, broker, topology: dict) -> None:
        self.topology = topology
        super().__init__(broker, subscribe="initializer/CompleteTopologyRequestEvent")

    def _on_connect(self, client, userdata, flags, rc, props) -> None:
        super()._on_connect(client, userdata, flags, rc, props)
        self.publish("CompleteTopologyEvent", self.topology, wait=False)

    def _on_message(self, client, userdata, msg) -> None:
        super()._on_message(client, userdata, msg)
        self.publish("CompleteTopologyEvent", self.topology, wait=False)
