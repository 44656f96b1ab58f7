"""The file feed: pushes the file when its stat changes, keeps quiet otherwise."""

from __future__ import annotations

import logging
import os
import time

import pytest

from cartridge_agent_lvs.director.feeds import COMPLETE
from cartridge_agent_lvs.director.feeds.file import FileFeed

from ._feedutil import Spy, running_feeds, wait_for


@pytest.fixture
def follow():
    with running_feeds(FileFeed, interval=0.02) as start:
        yield lambda path, **kw: start(str(path), **kw)


def replace_file(path, data: bytes) -> None:
    tmp = str(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def test_initial_read_then_only_on_change(tmp_path, follow):
    path = tmp_path / "topology.json"
    path.write_bytes(b'{"topology": {}}')
    feed, sink = follow(path)
    first = sink.wait(1)[0]
    assert first.name == COMPLETE and first.payload == b'{"topology": {}}'
    assert str(path) in first.source
    Spy(feed, "_sleep").wait(5, what="polls")
    assert len(sink.updates) == 1                  # unchanged file: no re-push
    replace_file(path, b'{"topology": {"serviceMap": {}}}')   # rename: new inode
    assert sink.wait(2)[1].payload == b'{"topology": {"serviceMap": {}}}'
    with open(path, "ab") as f:                    # in-place append: size changes
        f.write(b" ")
    assert sink.wait(3)[2].payload.endswith(b"} ")


def test_missing_file_logged_once_then_picked_up(tmp_path, follow, caplog):
    path = tmp_path / "later.json"
    with caplog.at_level(logging.INFO, logger="cartridge_agent_lvs.director.feeds"):
        feed, sink = follow(path)
        Spy(feed, "_sleep").wait(15, what="polls")
        assert sink.updates == []
        path.write_bytes(b"{}")
        sink.wait(1)
    assert caplog.text.count("cannot be read") == 1
    assert caplog.text.count(": read") == 1


def test_deleted_file_keeps_quiet_and_returns(tmp_path, follow):
    path = tmp_path / "t.json"
    path.write_bytes(b"1")
    feed, sink = follow(path)
    sink.wait(1)
    polls = Spy(feed, "_sleep")
    path.unlink()
    polls.wait(5, what="polls")
    assert len(sink.updates) == 1                  # nothing pushed for a missing file
    path.write_bytes(b"2")
    assert sink.wait(2)[1].payload == b"2"


def test_refresh_rereads_an_unchanged_file(tmp_path, follow):
    path = tmp_path / "t.json"
    path.write_bytes(b"{}")
    feed, sink = follow(path, interval=30)
    sink.wait(1)
    feed.refresh()
    assert len(sink.wait(2)) == 2


def test_stop_is_prompt(tmp_path, follow):
    feed, _ = follow(tmp_path / "none.json", interval=30)
    t = time.monotonic()
    feed.stop()
    assert time.monotonic() - t < 1
    wait_for(lambda: not feed._thread.is_alive(), 1, "thread gone")


def test_a_fifo_is_refused_not_waited_on(tmp_path, follow, caplog):
    """``open()`` of a FIFO without a writer blocks forever: never open one."""
    fifo = tmp_path / "topology.json"
    os.mkfifo(fifo)
    try:
        with caplog.at_level(logging.INFO, logger="cartridge_agent_lvs.director.feeds"):
            feed, sink = follow(fifo)
            polls = Spy(feed, "_sleep")
            wait_for(lambda: "not a regular file (a FIFO)" in caplog.text, 3,
                     "the refusal")
            polls.wait(5, what="polls")
        assert caplog.text.count("not a regular file") == 1 and sink.updates == []
        t = time.monotonic()
        feed.stop()
        assert time.monotonic() - t < 1
    finally:
        try:                 # (without the fix) release a reader blocked in open()
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
