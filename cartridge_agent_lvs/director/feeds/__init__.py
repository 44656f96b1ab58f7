"""Topology feeds: where the director hears about the cluster topology.

A feed runs in its own thread and only ever *pushes* :class:`FeedUpdate` items into a
sink (the service loop's queue); it never touches the topology, the plan or keepalived.
Parsing happens in the loop, so a malformed payload is reported once there and a feed
needs no knowledge of the topology format.

Three feeds exist, one per source the service can follow:

* :class:`~.file.FileFeed` -- a topology file, re-read when it changes;
* :class:`~.mqtt.MqttFeed` -- the Stratos message broker (``topology/#``);
* :class:`~.http.HttpFeed` -- a URL polled with ``If-None-Match``.
"""

from __future__ import annotations

import logging
import random
import re
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Union

#: event name of a complete topology (also used for a bare topology object)
COMPLETE = "CompleteTopologyEvent"

#: payloads larger than this are dropped by the feeds (a 10,000-member
#: CompleteTopologyEvent is about 8 MiB)
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024

Payload = Union[bytes, str, dict]

#: ``scheme://userinfo@`` in any text (the userinfo ends at the last '@' before the path)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s?#]*@")


def redact_urls(text: str) -> str:
    """*text* with the user information of every URL in it replaced by ``***``
    (for every line that shows a URL: logs, ``lvs-extension settings``)."""
    return _USERINFO.sub(r"\1***@", text)


@dataclass(frozen=True)
class FeedUpdate:
    """One thing a feed heard: a complete topology or a single topology event.

    :param name: the event name (``MemberActivatedEvent`` ...); :data:`COMPLETE` for a
        complete topology, whether it came as a CompleteTopologyEvent or a bare
        topology object.
    :param payload: the raw payload, parsed by the service loop.
    :param source: where it came from, for log lines (``file /x.json``, ``mqtt``...).
    """

    name: str
    payload: Payload
    source: str = ""

    @property
    def complete(self) -> bool:
        return self.name == COMPLETE


Sink = Callable[[FeedUpdate], None]


class Feed:
    """The interface the service loop drives.

    ``start(sink)`` starts the feed's thread, which calls ``sink(update)`` for every
    update; ``refresh()`` asks for the full picture again now (SIGHUP); ``stop()`` ends
    the thread and returns once it is gone.  Feeds never raise from their thread: they
    log (once per state change) and retry.
    """

    name = "feed"
    #: the source answers: the file was read, the broker session is up, the last poll
    #: succeeded (set by the feed's thread, read by the metrics)
    connected = False

    def start(self, sink: Sink) -> None:
        raise NotImplementedError

    def refresh(self) -> None:
        """Re-read / re-request the complete topology as soon as possible."""

    def stop(self) -> None:
        raise NotImplementedError


class ThreadFeed(Feed):
    """A feed whose work is one ``_run()`` method in a daemon thread.

    ``_stopping`` is set by :meth:`stop`; ``_wake`` is set by :meth:`refresh` and
    :meth:`stop` so that a waiting ``_run`` reacts at once (see :meth:`_sleep`).
    """

    def __init__(self) -> None:
        self._sink: Optional[Sink] = None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._refresh = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self, sink: Sink) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} feed already started")
        self._sink = sink
        self._thread = threading.Thread(target=self._run, name=f"feed-{self.name}",
                                        daemon=True)
        self._thread.start()

    def refresh(self) -> None:
        self._refresh.set()
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _sleep(self, seconds: float) -> bool:
        """Wait up to *seconds*; False when the feed is stopping."""
        if seconds > 0:
            self._wake.wait(seconds)
        self._wake.clear()
        return not self._stopping.is_set()

    def _push(self, name: str, payload: Payload, source: str) -> None:
        assert self._sink is not None
        self._sink(FeedUpdate(name, payload, source))

    def _run(self) -> None:
        raise NotImplementedError


class Backoff:
    """Capped exponential backoff with jitter.

    The n-th delay is ``min(cap, initial * 2**n)`` scaled by a random factor in
    ``[1 - jitter, 1]`` so that many directors restarted together do not hammer a
    broker in lockstep.  :meth:`reset` after a success.
    """

    def __init__(self, initial: float = 0.5, cap: float = 30.0, jitter: float = 0.5,
                 rng: Optional[random.Random] = None) -> None:
        if initial <= 0 or cap < initial or not 0 <= jitter < 1:
            raise ValueError("backoff needs 0 < initial <= cap and 0 <= jitter < 1")
        self.initial, self.cap, self.jitter = initial, cap, jitter
        self._rng = rng or random.Random()
        self.attempts = 0

    def next(self) -> float:
        base = min(self.cap, self.initial * (2 ** min(self.attempts, 32)))
        self.attempts += 1
        return base * (1 - self.jitter * self._rng.random())

    def reset(self) -> None:
        self.attempts = 0


class StateLog:
    """Logs a feed's state only when it changes (never once per retry).

    ``report(state, detail)`` logs at *level* when ``(state, detail)`` differs from the
    last report, and at DEBUG otherwise.
    """

    def __init__(self, log: logging.Logger, prefix: str) -> None:
        self._log = log
        self._prefix = prefix
        self._last: Optional[tuple] = None

    @property
    def state(self) -> Optional[str]:
        return self._last[0] if self._last else None

    def report(self, state: str, detail: str = "", level: int = logging.INFO) -> None:
        text = f"{self._prefix}: {state}" + (f" ({detail})" if detail else "")
        if (state, detail) != self._last:
            self._last = (state, detail)
            self._log.log(level, "%s", text)
        else:
            self._log.debug("%s", text)
