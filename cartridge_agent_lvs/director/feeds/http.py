"""Poll a URL that returns the topology (a CompleteTopologyEvent or a bare topology).

Every ``interval`` seconds: ``GET`` with ``If-None-Match`` (the last ``ETag``); ``304``
means nothing changed; a ``200`` body is pushed as a complete topology unless it is
byte-for-byte the last one pushed (for servers without ETags).  Connect and read
timeouts bound every request; errors (network, non-2xx, oversized body) back off
exponentially with jitter and are logged once per state change.  The last good
topology stays applied throughout.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Optional, Tuple

import requests

from . import COMPLETE, MAX_PAYLOAD_BYTES, Backoff, StateLog, ThreadFeed

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024


class HttpFeed(ThreadFeed):
    """Push the URL's body as a complete topology whenever it changes.

    :param token: sent as ``Authorization: Bearer TOKEN`` when given.
    :param ca_file: CA bundle to verify an ``https`` server with (default: system).
    :param timeout: ``(connect, read)`` seconds.
    """

    name = "http"

    def __init__(self, url: str, *, interval: float = 5.0, token: Optional[str] = None,
                 ca_file: Optional[str] = None,
                 timeout: Tuple[float, float] = (3.0, 10.0),
                 backoff: Optional[Backoff] = None) -> None:
        super().__init__()
        self.url, self.interval, self.token = url, interval, token
        self.ca_file, self.timeout = ca_file, timeout
        self.backoff = backoff or Backoff(initial=min(1.0, interval), cap=max(60.0, interval))
        self._states = StateLog(log, f"topology URL {url}")
        self._etag: Optional[str] = None
        self._digest: Optional[bytes] = None

    def _headers(self) -> dict:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self._etag:
            headers["If-None-Match"] = self._etag
        return headers

    def _fetch(self, session: requests.Session) -> Optional[bytes]:
        """One request: the new body, or None when unchanged.  Raises on failure."""
        with session.get(self.url, headers=self._headers(), timeout=self.timeout,
                         verify=self.ca_file or True, stream=True,
                         allow_redirects=False) as resp:
            if resp.status_code == 304:
                return None
            if resp.status_code != 200:
                raise IOError(f"HTTP {resp.status_code} {resp.reason}")
            body = bytearray()
            for chunk in resp.iter_content(_CHUNK):
                body += chunk
                if len(body) > MAX_PAYLOAD_BYTES:
                    raise IOError(f"body larger than {MAX_PAYLOAD_BYTES} bytes")
            etag = resp.headers.get("ETag")
        self._etag = etag
        digest = hashlib.sha256(body).digest()
        if digest == self._digest:
            return None
        self._digest = digest
        return bytes(body)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stopping.is_set():
                if self._refresh.is_set():
                    self._refresh.clear()
                    self._etag = self._digest = None
                try:
                    body = self._fetch(session)
                except (requests.RequestException, IOError) as exc:
                    self._states.report("failing, keeping the last good topology; retrying "
                                        "with backoff", _describe(exc), logging.WARNING)
                    delay = self.backoff.next()
                else:
                    self._states.report("ok")
                    self.backoff.reset()
                    if body is not None:
                        self._push(COMPLETE, body, f"http {self.url}")
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
    return str(exc)
