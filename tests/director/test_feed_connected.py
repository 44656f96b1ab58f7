"""``Feed.connected`` (``lvs_extension_feed_connected``) follows each real source: the
file read or not, the HTTP poll answered or not, the broker session up or down."""

from __future__ import annotations

import pytest

from cartridge_agent_lvs.director.feeds import Backoff
from cartridge_agent_lvs.director.feeds.file import FileFeed
from cartridge_agent_lvs.director.feeds.http import HttpFeed
from cartridge_agent_lvs.director.feeds.mqtt import MqttFeed

from ._feedutil import running_feeds, wait_for
from .conftest_broker import broker, broker_factory  # noqa: F401
from .test_feed_http import TopologyServer


def test_file(tmp_path):
    path = tmp_path / "topology.json"
    with running_feeds(FileFeed, interval=0.02) as start:
        feed, sink = start(str(path))
        wait_for(lambda: feed._states.state is not None, what="a first attempt")
        assert not feed.connected                       # no file yet
        path.write_text('{"topology": {}}')
        sink.wait(1)
        assert feed.connected
        path.unlink()
        wait_for(lambda: not feed.connected, what="the file gone")


def test_http():
    server = TopologyServer()
    try:
        with running_feeds(HttpFeed, interval=0.05,
                           backoff=lambda: Backoff(initial=0.05, cap=0.1)) as start:
            feed, sink = start(server.url)
            sink.wait(1)
            assert feed.connected
            server.status = 503
            wait_for(lambda: not feed.connected, what="a failing poll")
            server.status = 200
            wait_for(lambda: feed.connected, what="a good poll again")
    finally:
        server.close()


@pytest.mark.broker
def test_mqtt(broker):
    with running_feeds(MqttFeed, backoff=lambda: Backoff(initial=0.05, cap=0.2)) as start:
        feed, _ = start([broker.address])
        wait_for(lambda: feed.connected, what="connected")
        broker.stop()
        wait_for(lambda: not feed.connected, what="the broker gone")
        broker.start()
        wait_for(lambda: feed.connected, what="reconnected")
