"""Follow the Stratos message broker over MQTT (paho-mqtt 2.x).

Stratos publishes every topology event on ``topology/<EventName>`` (the Java class name
below ``org.apache.stratos.messaging.event`` with dots as slashes), the payload being
the event as JSON.  This feed subscribes to ``topology/#``, takes the event name from
the last topic segment, and -- at every (re)connect, after subscribing -- publishes
``{}`` on ``initializer/CompleteTopologyRequestEvent`` so that Stratos sends the full
picture again (events missed while disconnected are thus covered).

Stratos answers the request from 4.1.5 on.  On 4.1.0-4.1.4 nobody answers it: the
complete topology only comes with the cloud controller's periodic topology sync
(every 60 s by default).  When no complete topology has arrived *complete_wait*
seconds (90) after connecting, the feed says so once, naming both causes: the wrong
broker or topic, or an old Stratos waiting for its periodic sync.

Brokers are tried in the order given (like the agent's ``mb.urls``).  When none
answers, a round is retried after a capped exponential backoff with jitter.  State
changes (connected, lost, unreachable, refused) are logged once each, retries only
at DEBUG.  Losing the broker changes nothing on the host: the last applied
keepalived configuration simply stays.
"""

from __future__ import annotations

import logging
import time
from typing import Optional, Sequence, Tuple

import paho.mqtt.client as mqtt

from . import COMPLETE, MAX_PAYLOAD_BYTES, Backoff, StateLog, ThreadFeed

log = logging.getLogger(__name__)

TOPIC = "topology/#"
REQUEST_TOPIC = "initializer/CompleteTopologyRequestEvent"
#: seconds one ``loop()`` call may block; bounds the reaction time to stop/refresh
_LOOP_STEP = 0.2


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class MqttFeed(ThreadFeed):
    """Push every ``topology/#`` message as a :class:`~.FeedUpdate`.

    :param brokers: ``[(host, port), ...]`` tried in order.
    :param password: the password itself (read from a file or the environment by the
        caller -- never from the command line).
    :param ca_file: enables TLS, verifying the broker against this CA bundle.
    :param complete_wait: seconds after connecting without a complete topology before
        the feed warns (once).
    """

    name = "mqtt"

    def __init__(self, brokers: Sequence[Tuple[str, int]], *,
                 username: Optional[str] = None, password: Optional[str] = None,
                 ca_file: Optional[str] = None, client_id: Optional[str] = None,
                 keepalive: int = 30, connect_timeout: float = 5.0,
                 backoff: Optional[Backoff] = None, complete_wait: float = 90.0) -> None:
        super().__init__()
        if not brokers:
            raise ValueError("at least one broker is needed")
        self.brokers = list(brokers)
        self.username, self.password = username, password
        self.ca_file, self.client_id = ca_file, client_id or ""
        self.keepalive, self.connect_timeout = keepalive, connect_timeout
        self.backoff = backoff or Backoff(initial=0.5, cap=30.0)
        self._states = StateLog(log, "message broker")
        self._oversized = False
        self.complete_wait = complete_wait
        self._complete_seen = False       #: a CompleteTopologyEvent arrived, ever
        self._complete_warned = False
        self._connected_at: Optional[float] = None
        self._other_messages = 0          #: topology messages before the first complete
        # per-session state, only touched by the feed's thread (paho callbacks run
        # inside client.loop(), which this thread calls)
        self._where = ""
        self._session_ok: Optional[bool] = None
        self._refusal = ""

    # -- paho callbacks -------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object,
                    reason_code: mqtt.ReasonCode, properties: object) -> None:
        if reason_code.is_failure:
            self._session_ok = False
            self._refusal = str(reason_code)
            return
        self._session_ok = True
        self.connected = True
        self._connected_at = time.monotonic()
        client.subscribe(TOPIC, qos=1)
        self._request_complete(client)
        self._states.report("connected", f"{self._where}, subscribed to {TOPIC}")

    def _on_message(self, client: mqtt.Client, userdata: object,
                    msg: mqtt.MQTTMessage) -> None:
        payload = msg.payload
        if len(payload) > MAX_PAYLOAD_BYTES:
            if not self._oversized:
                log.error("message broker: dropping a %d-byte message on %s "
                          "(limit %d bytes); further ones are dropped silently",
                          len(payload), msg.topic, MAX_PAYLOAD_BYTES)
                self._oversized = True
            return
        name = msg.topic.rsplit("/", 1)[-1]
        if name == COMPLETE:
            self._complete_seen = True
        elif not self._complete_seen:
            self._other_messages += 1
        self._push(name, bytes(payload), f"mqtt {msg.topic}")

    def _watch_complete(self) -> None:
        """Warn once when connected for *complete_wait* s without a complete topology."""
        if (self._complete_seen or self._complete_warned or self._connected_at is None
                or time.monotonic() - self._connected_at < self.complete_wait):
            return
        self._complete_warned = True
        log.warning(
            "message broker: no CompleteTopologyEvent %gs after connecting to %s (%d other "
            "topology messages received); nothing is applied until one arrives. Either "
            "the broker or topic is wrong (Stratos publishes on topology/# of its "
            "message broker), or this is Stratos 4.1.0-4.1.4, which does not answer %s: "
            "then the complete topology comes with the cloud controller's periodic "
            "topology sync (every 60 s by default)", self.complete_wait, self._where,
            self._other_messages, REQUEST_TOPIC)

    # -- the thread -----------------------------------------------------------------

    def _request_complete(self, client: mqtt.Client) -> None:
        client.publish(REQUEST_TOPIC, b"{}", qos=1)

    def _client(self) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=True, protocol=mqtt.MQTTv311,
                             reconnect_on_failure=False)
        client.connect_timeout = self.connect_timeout
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.ca_file:
            client.tls_set(ca_certs=self.ca_file)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        return client

    def _session(self, host: str, port: int) -> Tuple[bool, str]:
        """Connect to one broker and follow it until the connection ends.

        Returns (whether a session was established, why it ended or failed).
        """
        self._where = _where(host, port)
        self._session_ok = None
        self._connected_at = None
        client = self._client()
        try:
            client.connect(host, port, keepalive=self.keepalive)
        except (OSError, ValueError) as exc:
            return False, f"{self._where}: {getattr(exc, 'strerror', None) or exc}"
        rc = mqtt.MQTT_ERR_SUCCESS
        try:
            while not self._stopping.is_set() and self._session_ok is not False:
                if self._session_ok and self._refresh.is_set():
                    self._refresh.clear()
                    self._request_complete(client)
                rc = client.loop(timeout=_LOOP_STEP)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    break
                self._watch_complete()
        finally:
            self.connected = False
            client.disconnect()
            client.loop(timeout=0)   # flush the DISCONNECT, close the socket
            sock = client.socket()
            if sock is not None:
                sock.close()
        established = bool(self._session_ok)
        if self._session_ok is False:
            return established, f"{self._where}: refused: {self._refusal}"
        return established, f"{self._where}: {mqtt.error_string(rc)}"

    def _run(self) -> None:
        while not self._stopping.is_set():
            failures = []
            for host, port in self.brokers:
                if self._stopping.is_set():
                    return
                established, why = self._session(host, port)
                if established:
                    self.backoff.reset()
                    if not self._stopping.is_set():
                        self._states.report(
                            "connection lost, keeping the last applied configuration; "
                            "reconnecting", why, logging.WARNING)
                    break
                failures.append(why)
            else:
                self._states.report(
                    "unreachable, keeping the last applied configuration; retrying "
                    "with backoff", "; ".join(failures), logging.WARNING)
            if not self._sleep(self.backoff.next()):
                return
