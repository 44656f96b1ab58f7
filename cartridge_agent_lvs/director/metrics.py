"""Prometheus metrics and the ``/status`` document, with prometheus_client.

Two kinds of metric, one prefix (``lvs_extension_``):

* the loop's own events (:class:`LoopMetrics`): Counter / Histogram / Gauge objects
  the single-writer loop and the convergence watcher update as things happen;
* the kernel's state (:class:`KernelCollector`): a custom collector that, at each
  scrape, reads IPVS over generic netlink and the VRRP interface over rtnetlink
  (:func:`~.status.observe`) and reports every virtual and real server *of the
  rendered configuration* -- so the number of series follows the topology, never
  the traffic (a real server IPVS has but the file does not is counted in
  ``drift_entries{kind="unexpected"}``, not exported by name).

:class:`MetricsServer` serves ``/metrics`` (prometheus_client's WSGI app) and
``/status`` (JSON) from one threaded HTTP server.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from typing import Callable, FrozenSet, Iterator, List, Optional, Sequence, Tuple
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app
from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily,
                                            Metric)
from prometheus_client.registry import Collector

from ..errors import HostError
from . import kernel_first
from .stats import cluster_totals
from .status import DirectorView, Observation, document, observe

log = logging.getLogger(__name__)

PREFIX = "lvs_extension_"

RS_LABELS = ("service", "cluster", "member", "vip", "port", "protocol", "real_server")
VS_LABELS = ("service", "vip", "port", "protocol")
_DIRECTIONS = (("in", "in_packets", "in_bytes"), ("out", "out_packets", "out_bytes"))
#: event names kept as a label value (anything else is "other"), and how many
_EVENT_RE = re.compile(r"^[A-Z][A-Za-z0-9]{0,80}Event$")
MAX_EVENT_NAMES = 64


class LoopMetrics:
    """The director's own events, on *registry*."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name, doc, labels=()):
            return Counter(PREFIX + name, doc, labels, registry=registry)

        def gauge(name, doc, labels=()):
            return Gauge(PREFIX + name, doc, labels, registry=registry)

        self.reloads = counter("reloads", "keepalived reloads signalled")
        self.reload_failures = counter(
            "reload_failures", "reloads that failed (retried with backoff)")
        self.validation_failures = counter(
            "validation_failures", "rendered files keepalived -t rejected (the last good "
            "file stays)")
        self.apply_duration = Histogram(
            PREFIX + "apply_duration_seconds", "plan, render, keepalived -t, write and "
            "reload of one change", registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.last_success = gauge(
            "last_apply_success_timestamp_seconds", "Unix time of the last apply that "
            "left keepalived with the rendered configuration")
        self.feed_connected = gauge(
            "feed_connected", "1 while the topology source answers (file read, broker "
            "session up, last HTTP poll ok)", ("feed",))
        self.events = counter("feed_events", "topology updates received, by event name "
                              "(other: names beyond the first 64 or not Stratos-like)",
                              ("event",))
        self.ignored = counter("feed_events_ignored", "topology updates that changed "
                               "nothing, by reason", ("reason",))
        self.ahead_checks = counter(
            "ahead_checks", "keepalived -t runs on booting members' real-server blocks "
            "before their activation, by result (accepted, refused)", ("result",))
        for result in ("accepted", "refused"):
            self.ahead_checks.labels(result)        # exported from the start, at 0
        self.ipvs_first = counter(
            "ipvs_first_writes", "real-server changes the director wrote into IPVS "
            "ahead of keepalived's reload (ipvs_first), by operation (add, remove, "
            "weight) and result (applied; already: IPVS had it, or a health check holds "
            "the real server out; failed: left to the reload)", ("op", "result"))
        for op in kernel_first.OPS:
            for result in kernel_first.RESULTS:
                self.ipvs_first.labels(op, result)      # exported from the start, at 0
        self.mass_removal_held = gauge(
            "mass_removal_held", "1 while a mass removal is held back")
        self.draining = gauge("real_servers_draining",
                              "real servers kept at weight 0 before their removal")
        self.convergence = Histogram(
            PREFIX + "convergence_seconds", "from the topology event that caused a change "
            "(the first of a coalesced burst) until IPVS shows the applied configuration",
            registry=registry,
            buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120))
        self.converged = gauge(
            "converged", "1 when IPVS showed the last applied configuration (0 while "
            "waiting, after the bound, or when IPVS cannot be read)")
        self.convergence_timeouts = counter(
            "convergence_timeouts", "reloads IPVS did not follow within the bound")
        self._event_names: set = set()

    def event(self, name: str) -> None:
        """Count one received update under a bounded label."""
        if name not in self._event_names:
            if _EVENT_RE.match(name) and len(self._event_names) < MAX_EVENT_NAMES:
                self._event_names.add(name)
            else:
                name = "other"
        self.events.labels(name).inc()

    def watch_feed(self, feed) -> None:
        """``feed_connected`` follows ``feed.connected`` at each scrape."""
        self.feed_connected.labels(feed.name).set_function(lambda: float(feed.connected))


# -- the kernel, at each scrape ------------------------------------------------------

def kernel_families(observation: Observation, real_servers: bool = True) -> List[Metric]:
    """The metric families of one kernel read (pure).

    :param real_servers: include the per-real-server families (``metrics_real_servers``);
        without them a scrape's size follows the virtual servers, not the pool sizes.
    """
    def family(kind, name, doc, labels, unit=""):
        return kind(PREFIX + name, doc, labels=labels, unit=unit)

    rs_in = family(GaugeMetricFamily, "real_server_in_kernel", "1 when IPVS has the real "
                   "server (keepalived's health check keeps it in)", RS_LABELS)
    rs_weight = family(GaugeMetricFamily, "real_server_weight", "weight in IPVS", RS_LABELS)
    rs_active = family(GaugeMetricFamily, "real_server_active_connections",
                       "active (established) connections", RS_LABELS)
    rs_inactive = family(GaugeMetricFamily, "real_server_inactive_connections",
                         "inactive connections", RS_LABELS)
    rs_conns = family(CounterMetricFamily, "real_server_connections",
                      "connections scheduled", RS_LABELS)
    rs_packets = family(CounterMetricFamily, "real_server_packets", "packets",
                        RS_LABELS + ("direction",))
    rs_bytes = family(CounterMetricFamily, "real_server_bytes", "bytes",
                      RS_LABELS + ("direction",))
    vs_in = family(GaugeMetricFamily, "virtual_server_in_kernel", "1 when IPVS has the "
                   "virtual server", VS_LABELS)
    vs_servers = family(GaugeMetricFamily, "virtual_server_real_servers",
                        "real servers rendered (desired) and in IPVS (in_kernel)",
                        VS_LABELS + ("state",))
    vs_active = family(GaugeMetricFamily, "virtual_server_active_connections",
                       "active connections of all its real servers", VS_LABELS)
    vs_inactive = family(GaugeMetricFamily, "virtual_server_inactive_connections",
                         "inactive connections of all its real servers", VS_LABELS)
    vs_conns = family(CounterMetricFamily, "virtual_server_connections",
                      "connections scheduled", VS_LABELS)
    vs_packets = family(CounterMetricFamily, "virtual_server_packets", "packets",
                        VS_LABELS + ("direction",))
    vs_bytes = family(CounterMetricFamily, "virtual_server_bytes", "bytes",
                      VS_LABELS + ("direction",))
    for row in observation.rows if observation.ipvs_read else ():
        vs = row.vs
        vs_labels = [vs.service, vs.vip, str(vs.port), vs.protocol]
        vs_in.add_metric(vs_labels, 1 if row.kernel else 0)
        vs_servers.add_metric(vs_labels + ["desired"], len(row.real_servers))
        vs_servers.add_metric(vs_labels + ["in_kernel"],
                              sum(1 for r in row.real_servers if r.dest))
        if row.kernel is not None:
            vs_active.add_metric(vs_labels, row.connections("active_conns"))
            vs_inactive.add_metric(vs_labels, row.connections("inactive_conns"))
            _traffic(row.kernel, vs_labels, vs_conns, vs_packets, vs_bytes)
        for rsr in row.real_servers if real_servers else ():
            rs, dest = rsr.server, rsr.dest
            labels = [vs.service, rs.cluster_id, rs.member_id, vs.vip, str(vs.port),
                      vs.protocol, rsr.endpoint]
            rs_in.add_metric(labels, 1 if dest else 0)
            if dest is not None:
                rs_weight.add_metric(labels, dest.weight)
                rs_active.add_metric(labels, dest.active_conns)
                rs_inactive.add_metric(labels, dest.inactive_conns)
                _traffic(dest, labels, rs_conns, rs_packets, rs_bytes)
    families = [rs_in, rs_weight, rs_active, rs_inactive, rs_conns, rs_packets, rs_bytes
                ] if real_servers else []
    families += [vs_in, vs_servers, vs_active, vs_inactive, vs_conns, vs_packets, vs_bytes]
    families += _cluster_family(observation)
    families += _vrrp_families(observation)
    families += _drift_families(observation)
    return families


def _traffic(stats, labels, conns, packets, bytes_) -> None:
    conns.add_metric(labels, stats.conns)
    for direction, pkts, octets in _DIRECTIONS:
        packets.add_metric(labels + [direction], getattr(stats, pkts))
        bytes_.add_metric(labels + [direction], getattr(stats, octets))


def _cluster_family(observation: Observation) -> List[Metric]:
    family = GaugeMetricFamily(PREFIX + "cluster_active_connections", "in-flight (active) "
                               "connections of a Stratos cluster's real servers (what the "
                               "autoscaler reads)", labels=("service", "cluster"))
    if observation.config is not None and observation.ipvs_read:
        service_of = {rs.cluster_id: vs.service for vs in observation.config.virtual_servers
                      for rs in vs.real_servers if rs.cluster_id}
        for cluster, active in cluster_totals(observation.kernel, observation.config).items():
            family.add_metric([service_of[cluster], cluster], active)
    return [family]


def _vrrp_families(observation: Observation) -> List[Metric]:
    master = GaugeMetricFamily(PREFIX + "vrrp_master", "1 when keepalived runs and every "
                               "VIP of the VRRP instance is on its interface (this director "
                               "is MASTER)",
                               labels=("vrrp_instance", "interface"))
    held = GaugeMetricFamily(PREFIX + "vrrp_vips_held", "VIPs of the instance on the "
                             "interface", labels=("vrrp_instance", "interface"))
    for role in observation.roles:
        master.add_metric([role.instance, role.interface], 1 if role.state == "MASTER" else 0)
        held.add_metric([role.instance, role.interface], len(role.held))
    return [master, held]


def _drift_families(observation: Observation) -> List[Metric]:
    drift = GaugeMetricFamily(PREFIX + "drift_entries", "IPVS against the applied "
                              "configuration: desired entries missing, unexpected entries "
                              "present", labels=("kind",))
    absent = GaugeMetricFamily(PREFIX + "real_servers_not_in_kernel", "desired real "
                               "servers kept across a reload and held out of IPVS by the "
                               "health check (not drift)")
    ok = GaugeMetricFamily(PREFIX + "kernel_read_ok", "1 when the scrape could read the "
                           "source (ipvs: generic netlink, addresses: the VRRP interface)",
                           labels=("source",))
    seconds = GaugeMetricFamily(PREFIX + "kernel_read_seconds", "time the scrape spent "
                                "reading the source", labels=("source",))
    if observation.drift is not None:
        drift.add_metric(["missing"], observation.drift.missing)
        drift.add_metric(["unexpected"], observation.drift.unexpected)
        absent.add_metric([], len(observation.drift.not_in_kernel))
    failed = dict(observation.errors)
    for source, spent in observation.seconds:
        ok.add_metric([source], 0 if source in failed else 1)
        seconds.add_metric([source], spent)
    return [drift, absent, ok, seconds]


class KernelCollector(Collector):
    """Reads the kernel at each scrape (one read at a time) for the director's view.

    :param view: returns the director's current :class:`~.status.DirectorView`.
    """

    def __init__(self, view: Callable[[], DirectorView], read_ipvs: Callable[[], Sequence],
                 read_addresses: Callable[[str], FrozenSet[str]],
                 real_servers: bool = True,
                 keepalived_running: Optional[Callable[[], bool]] = None) -> None:
        self._view = view
        self._keepalived_running = keepalived_running
        self._real_servers = real_servers
        self._read_ipvs = read_ipvs
        self._read_addresses = read_addresses
        self._lock = threading.Lock()

    def observe(self) -> Tuple[DirectorView, Observation]:
        view = self._view()
        with self._lock:
            return view, observe(view.config, view.interface, view.pending,
                                 self._read_ipvs, self._read_addresses,
                                 self._keepalived_running)

    def describe(self) -> List[Metric]:
        return []      # no kernel read when the collector is registered

    def collect(self) -> Iterator[Metric]:
        yield from kernel_families(self.observe()[1], self._real_servers)

    def status(self) -> dict:
        return document(*self.observe())


# -- the HTTP side -------------------------------------------------------------------

class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        log.debug("metrics listener: " + format, *args)


class MetricsServer:
    """``/metrics`` and ``/status`` on *address* (host, port), in daemon threads."""

    def __init__(self, address: Tuple[str, int], registry: CollectorRegistry,
                 collector: KernelCollector) -> None:
        self.address = address
        self._metrics_app = make_wsgi_app(registry)
        self._collector = collector
        self._server = None
        self._thread: Optional[threading.Thread] = None

    def app(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        if path == "/status":
            if environ["REQUEST_METHOD"] != "GET":
                start_response("405 Method Not Allowed", [("Allow", "GET")])
                return [b""]
            body = json.dumps(self._collector.status(), indent=1, sort_keys=True).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        body = b"lvs-extension: /metrics (Prometheus), /status (JSON)\n"
        start_response("404 Not Found", [("Content-Type", "text/plain"),
                                         ("Content-Length", str(len(body)))])
        return [body]

    def start(self) -> None:
        host, port = self.address
        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self._server = make_server(host, port, self.app, Server,
                                       handler_class=_QuietHandler)
        except OSError as exc:
            raise HostError(f"cannot listen on {where} for metrics (metrics_listen): "
                            f"{exc.strerror or exc}") from None
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="metrics", daemon=True)
        self._thread.start()
        log.info("serving /metrics and /status on http://%s", where)

    @property
    def port(self) -> int:
        """The bound port (the one asked for, or the kernel's pick for port 0)."""
        return self._server.server_address[1] if self._server else self.address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
