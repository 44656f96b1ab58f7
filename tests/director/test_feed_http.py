"""The HTTP feed against a real local HTTP server (http.server in a thread)."""

from __future__ import annotations

import hashlib
import http.server
import logging
import socket
import threading
import time

import pytest

from cartridge_agent_lvs.director.feeds import COMPLETE, Backoff
from cartridge_agent_lvs.director.feeds import http as http_feed
from cartridge_agent_lvs.director.feeds.http import HttpFeed

from ._feedutil import running_feeds, wait_for


class TopologyServer:
    """Serves ``body`` at /topology with a strong ETag; knobs for failures."""

    def __init__(self) -> None:
        self.body = b'{"topology": {}}'
        self.etags = True
        self.status = 200
        self.delay = 0.0
        self.requests = []          # (path, headers dict)
        self.times = []             # time.monotonic() of each request
        self.replies = []           # status codes sent
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.times.append(time.monotonic())
                outer.requests.append((self.path, dict(self.headers)))
                time.sleep(outer.delay)     # the scenario: a slow server (read timeout)
                etag = '"%s"' % hashlib.sha1(outer.body).hexdigest()
                if outer.status != 200:
                    code, body = outer.status, b"nope"
                elif outer.etags and self.headers.get("If-None-Match") == etag:
                    code, body = 304, b""
                else:
                    code, body = 200, outer.body
                outer.replies.append(code)
                self.send_response(code)
                if outer.etags and code in (200, 304):
                    self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/topology"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = TopologyServer()
    yield s
    s.close()


@pytest.fixture
def feeds():
    with running_feeds(HttpFeed, interval=0.05,
                       backoff=lambda: Backoff(initial=0.05, cap=0.1)) as start:
        yield start


def test_pushes_once_then_uses_etags(server, feeds):
    feed, sink = feeds(server.url)
    assert sink.wait(1)[0].name == COMPLETE
    wait_for(lambda: server.replies.count(304) >= 3, what="304 replies")
    assert len(sink.updates) == 1                         # 304 pushes nothing
    assert server.requests[1][1]["If-None-Match"].startswith('"')
    server.body = b'{"topology": {"serviceMap": {}}}'
    assert sink.wait(2)[1].payload == server.body


def test_without_etags_identical_bodies_are_not_pushed_twice(server, feeds):
    server.etags = False
    feed, sink = feeds(server.url)
    wait_for(lambda: len(server.requests) >= 5, what="polls")
    assert len(sink.updates) == 1


def test_errors_back_off_log_once_and_recover(server, feeds, caplog):
    server.status = 503
    with caplog.at_level(logging.INFO, logger="cartridge_agent_lvs.director.feeds"):
        feed, sink = feeds(server.url, backoff=Backoff(initial=0.05, cap=0.2))
        wait_for(lambda: len(server.requests) >= 5, what="retries")
        assert sink.updates == []
        server.status = 200
        sink.wait(1)
    assert caplog.text.count("HTTP 503") == 1
    assert caplog.text.count(": ok") == 1


def test_backoff_grows_between_failures(server, feeds):
    server.status = 500
    feeds(server.url, interval=0.01, backoff=Backoff(initial=0.1, cap=0.4, jitter=0))
    wait_for(lambda: len(server.times) >= 6, what="six failed polls")
    gaps = [b - a for a, b in zip(server.times, server.times[1:6])]
    # after each failure the backoff (0.1, 0.2, 0.4, then capped at 0.4), not the
    # 0.01 s interval: a busy machine only makes the gaps longer, so these lower
    # bounds hold under load.  The cap is told from the doubling it stops (0.8 s,
    # 1.6 s) with 0.35 s to spare.
    for gap, delay in zip(gaps, (0.1, 0.2, 0.4, 0.4, 0.4)):
        assert gap >= delay, gaps
    assert max(gaps[3:]) < 0.75, gaps


def test_read_timeout_is_an_error_not_a_hang(server, feeds, caplog):
    server.delay = 1.0
    with caplog.at_level(logging.WARNING, logger="cartridge_agent_lvs.director.feeds"):
        feed, sink = feeds(server.url, timeout=(1.0, 0.2))
        wait_for(lambda: "read timeout" in caplog.text, what="read timeout")
    assert sink.updates == []


def test_connection_refused_is_reported(feeds, caplog):
    from .conftest_broker import free_port
    with caplog.at_level(logging.WARNING, logger="cartridge_agent_lvs.director.feeds"):
        feeds(f"http://127.0.0.1:{free_port()}/t")
        wait_for(lambda: "connection failed" in caplog.text, what="refusal")


def test_bearer_token_is_sent(server, feeds):
    feed, sink = feeds(server.url, token="t0ken")
    sink.wait(1)
    assert server.requests[0][1]["Authorization"] == "Bearer t0ken"


def test_oversized_body_is_refused(server, feeds, monkeypatch, caplog):
    monkeypatch.setattr(http_feed, "MAX_PAYLOAD_BYTES", 100)
    server.body = b"{" + b" " * 5000 + b"}"
    with caplog.at_level(logging.WARNING, logger="cartridge_agent_lvs.director.feeds"):
        feeds(server.url)
        wait_for(lambda: "larger than 100 bytes" in caplog.text, what="size limit")
    assert caplog.text.count("larger than") == 1


def test_refresh_fetches_again_even_if_unchanged(server, feeds):
    feed, sink = feeds(server.url, interval=30)
    sink.wait(1)
    feed.refresh()
    assert sink.wait(2)[1].payload == sink.updates[0].payload


# -- review (issue 10): a slow server, credentials ------------------------------------

class SlowServer:
    """Answers 200 with a large Content-Length, then drips one byte every *every* s."""

    def __init__(self, every: float = 0.2, length: int = 1_000_000) -> None:
        self.every, self.length = every, length
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/topology"
        self.closed = threading.Event()
        self.connections = 0
        self.drips = 0              # bytes of the body sent after the headers
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n{" % self.length)
                while not self.closed.wait(self.every):    # the scenario: a slow body
                    conn.sendall(b" ")
                    self.drips += 1
            except OSError:
                pass

    def close(self) -> None:
        self.closed.set()
        try:            # wakes the accept(): a bare close() leaves it listening
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(10)


@pytest.fixture
def slow():
    s = SlowServer()
    yield s
    s.close()


def test_a_slow_body_is_cut_at_the_total_deadline(slow, feeds, caplog):
    """One byte every 0.2 s never trips a 1 s read timeout: only a deadline ends it."""
    with caplog.at_level(logging.WARNING, logger="cartridge_agent_lvs.director.feeds"):
        t = time.monotonic()
        feed, sink = feeds(slow.url, timeout=(1.0, 1.0), deadline=1.0)
        wait_for(lambda: "no complete answer within 1s" in caplog.text, 5, "the deadline")
        assert time.monotonic() - t < 3
        wait_for(lambda: slow.connections >= 2, 5, "a retry")
    assert sink.updates == []


def test_stop_is_prompt_during_a_slow_body(slow, feeds):
    feed, sink = feeds(slow.url, timeout=(1.0, 30.0), deadline=60.0)
    wait_for(lambda: feed._sock is not None, 10, "the feed reading the body")
    t = time.monotonic()
    feed.stop()
    assert time.monotonic() - t < 1.5
    assert not feed._thread.is_alive()


def test_url_credentials_never_reach_the_log_and_plain_http_is_warned(server, feeds,
                                                                    caplog):
    url = server.url.replace("http://", "http://admin:pa55word@")
    with caplog.at_level(logging.DEBUG, logger="cartridge_agent_lvs.director.feeds"):
        feed, sink = feeds(url, token="t0ken")
        sink.wait(1)
        feed.refresh()
        sink.wait(2)
    assert "pa55word" not in caplog.text and "t0ken" not in caplog.text
    assert "admin" not in caplog.text
    assert "http://***@127.0.0.1" in caplog.text
    assert all("pa55word" not in u.source for u in sink.updates)
    assert caplog.text.count("plain http") == 1


def test_no_warning_without_credentials(server, feeds, caplog):
    with caplog.at_level(logging.WARNING, logger="cartridge_agent_lvs.director.feeds"):
        feeds(server.url)[1].wait(1)
    assert "plain http" not in caplog.text


@pytest.mark.parametrize("text, expected", [
    ("http://u:p@h:1/x?q=1", "http://***@h:1/x?q=1"),
    ("failed: https://tok@[fd00::1]:8443/t and http://a:b@c/", 
     "failed: https://***@[fd00::1]:8443/t and http://***@c/"),
    ("http://h/x@y", "http://h/x@y"),
    ("no url here", "no url here"),
])
def test_redact_urls(text, expected):
    assert http_feed.redact_urls(text) == expected
