"""Poll a URL that returns the topology (a CompleteTopologyEvent or a bare topology).

Every ``interval`` seconds: ``GET`` with ``If-None-Match`` (the last ``ETag``); ``304``
means nothing changed; a ``200`` body is pushed as a complete topology unless it is
byte-for-byte the last one pushed (for servers without ETags).  Connect and read
timeouts bound every network wait, and a total *deadline* bounds the body: it is
read as it arrives (``read1``), each wait capped by the time left, so a server
trickling one byte a second behind a huge Content-Length is cut off at the deadline
instead of holding the feed (and SIGTERM) forever.  :meth:`HttpFeed.stop` shuts the
socket of a body being read, so stopping is immediate.  Errors (network, non-2xx,
oversized body, deadline) back off exponentially with jitter and are logged once per
state change.  The last good topology stays applied throughout.

A URL is never logged with its user information (``http://***@host/``), and
credentials about to go over plain ``http`` (a bearer token, ``user:password@``)
are warned about once.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
import urllib.parse
from typing import Optional, Tuple

import requests
import urllib3

from . import COMPLETE, MAX_PAYLOAD_BYTES, Backoff, StateLog, ThreadFeed, redact_urls

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024


class _Stopped(Exception):
    """The feed is stopping: abandon the request in flight."""


class HttpFeed(ThreadFeed):
    """Push the URL's body as a complete topology whenever it changes.

    :param token: sent as ``Authorization: Bearer TOKEN`` when given.
    :param ca_file: CA bundle to verify an ``https`` server with (default: system).
    :param timeout: ``(connect, read)`` seconds: the longest single network wait.
    :param deadline: seconds the whole answer may take (default: connect + read).
    """

    name = "http"

    def __init__(self, url: str, *, interval: float = 5.0, token: Optional[str] = None,
                 ca_file: Optional[str] = None,
                 timeout: Tuple[float, float] = (3.0, 10.0),
                 deadline: Optional[float] = None,
                 backoff: Optional[Backoff] = None) -> None:
        super().__init__()
        self.url, self.interval, self.token = url, interval, token
        self.ca_file, self.timeout = ca_file, timeout
        self.deadline = deadline if deadline is not None else sum(timeout)
        self.backoff = backoff or Backoff(initial=min(1.0, interval), cap=max(60.0, interval))
        self.shown_url = redact_urls(url)
        self._states = StateLog(log, f"topology URL {self.shown_url}")
        self._etag: Optional[str] = None
        self._digest: Optional[bytes] = None
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None   #: of the body being read
        self._warn_plain_http()

    def _warn_plain_http(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme.lower() != "http":
            return
        sent = [what for what, present in (("a bearer token", self.token),
                                           ("the user name and password in the URL",
                                            parts.username or parts.password)) if present]
        if sent:
            log.warning("topology URL %s: %s would go over plain http, readable by anyone "
                        "on the path; use https", self.shown_url, " and ".join(sent))

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            sock = self._sock
        if sock is not None:               # wake a read blocked on a slow server
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        super().stop()

    def _headers(self) -> dict:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self._etag:
            headers["If-None-Match"] = self._etag
        return headers

    def _fetch(self, session: requests.Session) -> Optional[bytes]:
        """One request: the new body, or None when unchanged.  Raises on failure."""
        deadline = time.monotonic() + self.deadline
        connect, read = self.timeout
        with session.get(self.url, headers=self._headers(),
                         timeout=(min(connect, self.deadline), min(read, self.deadline)),
                         verify=self.ca_file or True, stream=True,
                         allow_redirects=False) as resp:
            if resp.status_code == 304:
                return None
            if resp.status_code != 200:
                raise IOError(f"HTTP {resp.status_code} {resp.reason}")
            length = resp.headers.get("Content-Length", "")
            if length.isdigit() and len(length) < 20 and int(length) > MAX_PAYLOAD_BYTES:
                raise IOError(f"body larger than {MAX_PAYLOAD_BYTES} bytes")
            body = self._body(resp.raw, deadline, read)
            etag = resp.headers.get("ETag")
        self._etag = etag
        digest = hashlib.sha256(body).digest()
        if digest == self._digest:
            return None
        self._digest = digest
        return bytes(body)

    def _body(self, raw: urllib3.response.HTTPResponse, deadline: float,
              read_timeout: float) -> bytearray:
        """The body as it arrives, within *deadline* (monotonic) and the size limit."""
        conn = getattr(raw, "connection", None) or getattr(raw, "_connection", None)
        sock = getattr(conn, "sock", None)
        with self._lock:
            if self._stopping.is_set():
                raise _Stopped()
            self._sock = sock
        # read1 (urllib3 >= 2.2) returns what has arrived; read() waits for a full chunk
        read1 = getattr(raw, "read1", None) or raw.read
        body = bytearray()
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise IOError(f"no complete answer within {self.deadline:g}s")
                if sock is not None:
                    sock.settimeout(min(read_timeout, left))
                try:
                    chunk = read1(_CHUNK, decode_content=True)
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    if self._stopping.is_set():
                        raise _Stopped() from None
                    if time.monotonic() >= deadline:
                        raise IOError(f"no complete answer within {self.deadline:g}s") \
                            from None
                    raise IOError(_describe(exc)) from None
                if self._stopping.is_set():
                    raise _Stopped()
                if not chunk:
                    return body
                body += chunk
                if len(body) > MAX_PAYLOAD_BYTES:
                    raise IOError(f"body larger than {MAX_PAYLOAD_BYTES} bytes")
        finally:
            with self._lock:
                self._sock = None

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stopping.is_set():
                if self._refresh.is_set():
                    self._refresh.clear()
                    self._etag = self._digest = None
                try:
                    body = self._fetch(session)
                except _Stopped:
                    break
                except (requests.RequestException, IOError) as exc:
                    if self._stopping.is_set():
                        break
                    self.connected = False
                    self._states.report("failing, keeping the last good topology; retrying "
                                        "with backoff", _describe(exc), logging.WARNING)
                    delay = self.backoff.next()
                else:
                    self.connected = True
                    self._states.report("ok")
                    self.backoff.reset()
                    if body is not None:
                        self._push(COMPLETE, body, f"http {self.shown_url}")
                    delay = self.interval
                if not self._sleep(delay):
                    break


def _describe(exc: Exception) -> str:
    """A short, stable description (no object addresses) so repeats compare equal."""
    if isinstance(exc, requests.ConnectTimeout):
        return "connect timeout"
    if isinstance(exc, requests.ReadTimeout):
        return "read timeout"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS error"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return "read timeout"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return "connection broken while reading the body"
    return redact_urls(str(exc))
