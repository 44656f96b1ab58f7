"""``lvs-extension run``: follow the topology and keep keepalived in step with it.

One thread owns all state.  The feed (file, MQTT or HTTP -- exactly one) pushes
:class:`~.feeds.FeedUpdate` items into a queue; the loop applies them to the current
:class:`~.topology.Topology` and, once changes have settled (:mod:`.coalesce`),
runs the pipeline::

    plan -> mass-removal guard -> drain -> render -> keepalived -t, write, SIGHUP

Each step's work is proportional to what changed, not to the whole topology: the
plan of each service is kept (:class:`PlanCache`) until its topology entry changes,
an unchanged service keeps its very :class:`~.model.VirtualServer` objects, and the
guard, the drain and the sharded layout (:mod:`.shards`: only the files whose text
changed are validated and written) skip those at the cost of a look-up.

Rules the loop keeps:

* nothing is written before the first complete topology (events before it are
  dropped: they cannot be applied to nothing);
* a malformed or unappliable update is logged once per distinct problem and ignored
  -- the last good topology stays;
* losing the feed changes nothing: the last applied configuration stays untouched;
* planner warnings are logged when they first appear, not on every render;
* at start, stale temporary files of a killed writer are removed and the
  mass-removal guard takes the live keepalived.conf (what keepalived serves) as its
  baseline, so an empty topology kept on the broker is held, not applied;
* "written" and "reloaded" are tracked apart: a reload that fails after the file was
  written is retried with capped exponential backoff (and at once on SIGHUP) until
  it succeeds -- the file in place must not hide it;
* SIGHUP re-requests the complete topology (re-reads the file) and forces a
  re-render; SIGTERM / SIGINT end the loop and ``run`` returns 0;
* after each reload the :class:`~.watcher.ConvergenceWatcher` (a thread that only
  reads) checks that IPVS shows what was rendered; the loop never waits for it;
* mode bgp: every ``announce_interval`` the :class:`~.announce.Announcer` re-checks
  what this director can serve and has BIRD announce exactly that; SIGTERM withdraws
  every VIP, waits ``drain_seconds``, then restores the host (:meth:`Director.stop_announcing`).

The loop records what it does in :class:`~.metrics.LoopMetrics` and publishes an
immutable :class:`~.status.DirectorView` (:meth:`Director.view`) for the metrics
listener (``metrics_listen``), whose threads only read it and the kernel.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from dataclasses import replace
from typing import Callable, Dict, FrozenSet, Optional, Set, Tuple

from prometheus_client import CollectorRegistry

from ..errors import HostError, LvsError, SettingsError, TopologyError
from .ahead import AheadChecks
from .coalesce import Coalescer
from .drain import Drain
from .feeds import Backoff, Feed, FeedUpdate
from .guard import MassRemovalGuard
from .keepalived import Keepalived, ValidationError
from .kernel_first import KernelFirst, changes
from .metrics import KernelCollector, LoopMetrics, MetricsServer
from .model import LvsConfig
from .plan import MemberMemo, Plan, ServicePlan, combine, plan_service, vrrp_of
from .render import RenderedFileError
from .settings import read_secret
from .shards import ShardedKeepalived
from .stats import read_ipvs
from .status import ApplyRecord, DirectorView
from .topology import Service, Topology, apply_event, is_handled, parse_topology
from .vrrp import interface_addresses
from .watcher import ConvergenceWatcher

log = logging.getLogger(__name__)

Clock = Callable[[], float]

#: longest the loop blocks without checking signals and the stop event
_POLL = 0.2
#: updates handled before the loop looks at its timers again
_BATCH = 5000
#: a logged problem is cut to this many characters (payloads can be megabytes)
_MAX_MESSAGE = 400

#: why a feed update changed nothing (``feed_events_ignored_total{reason}``)
BEFORE_COMPLETE, UNHANDLED, INVALID, ERROR, UNCHANGED = (
    "before_complete", "unhandled", "invalid", "error", "unchanged")
#: what became of a configuration given to keepalived (``ApplyRecord.outcome``)
RELOADED, NOT_RUNNING, UNCHANGED_FILE, RELOAD_FAILED, REJECTED, WRITE_FAILED, \
    PLAN_FAILED = ("reloaded", "written; keepalived not running",
                   "file already in place", "written; reload failed, retrying",
                   "rejected by keepalived -t", "could not be written", "plan failed")


class ProblemLog:
    """Logs each distinct problem once (per category), so junk cannot flood the log.

    ``forget(category)`` re-arms a category once its problem is gone (e.g. the
    topology file parses again), so a recurrence is reported again.  At most *limit*
    distinct problems are remembered; beyond that they are counted, not logged.
    """

    def __init__(self, logger: logging.Logger, limit: int = 1000) -> None:
        self._log = logger
        self._limit = limit
        self._seen: Dict[str, Set[str]] = {}
        self.suppressed = 0

    def report(self, category: str, message: str, level: int = logging.WARNING,
               exc_info: bool = False) -> bool:
        if len(message) > _MAX_MESSAGE:
            message = message[:_MAX_MESSAGE] + "..."
        seen = self._seen.setdefault(category, set())
        if message in seen:
            self._log.debug("%s (repeated)", message)
            return False
        if sum(map(len, self._seen.values())) >= self._limit:
            self.suppressed += 1
            if self.suppressed == 1:
                self._log.warning("too many distinct problems; further ones are not logged")
            return False
        seen.add(message)
        self._log.log(level, "%s", message, exc_info=exc_info)
        return True

    def forget(self, category: str) -> None:
        self._seen.pop(category, None)


class PlanCache:
    """The plan of each mapped service, kept while its topology entry is unchanged.

    The planner is pure (:func:`~.plan.plan_service`: settings and one service in,
    its virtual servers out); this is the memory at the edge that makes a member
    event plan one service instead of all of them.  A service is planned again when
    its :class:`~.topology.Service` value differs from the one planned last
    (:func:`~.topology.apply_event` keeps the other services' values as they were, so
    the comparison is mostly an identity check).  An unchanged service yields the very
    same :class:`~.model.VirtualServer` objects, which lets the guard, the drain and
    the sharded renderer skip it cheaply too.  A service that changed is planned with
    its :class:`~.plan.MemberMemo`: its unchanged members cost a look-up each.
    """

    def __init__(self, settings) -> None:
        self.settings = settings
        self._parts: Dict[Tuple[str, str], Tuple[Optional[Service], ServicePlan]] = {}
        self._memos: Dict[Tuple[str, str], MemberMemo] = {}
        self.planned = 0        #: services planned (not taken from the cache)

    def plan(self, topology: Topology) -> Plan:
        """The same :class:`~.plan.Plan` as ``plan(settings, topology)``."""
        parts, kept = [], {}
        for name, vip in self.settings.vip_map:
            service = topology.services.get(name)
            old = self._parts.get((name, vip))
            if old is not None and (old[0] is service or old[0] == service):
                part = old[1]
            else:
                memo = self._memos.setdefault((name, vip), MemberMemo())
                part = plan_service(self.settings, name, vip, service, memo)
                self.planned += 1
            kept[(name, vip)] = (service, part)
            parts.append((name, part))
        self._parts = kept
        return combine(self.settings, parts)


def _secret(path: Optional[str], key: str, env: str) -> Optional[str]:
    """A password/token from the file setting *key* (first line) or else *env*."""
    if path:
        return read_secret(path, key)
    return os.environ.get(env) or None


def build_feed(settings) -> Feed:
    """The one feed the settings name; ``SettingsError`` unless exactly one is set."""
    chosen = [flag for flag, value in (("--topology-file", settings.topology_file),
                                       ("--mqtt", settings.mqtt),
                                       ("--http", settings.http_url)) if value]
    if len(chosen) != 1:
        raise SettingsError("feed", " ".join(chosen) or "(none)",
                            "exactly one of --topology-file, --mqtt, --http is required")
    if settings.topology_file:
        from .feeds.file import FileFeed
        return FileFeed(settings.topology_file)
    if settings.mqtt:
        from .feeds.mqtt import MqttFeed
        return MqttFeed(settings.mqtt, username=settings.mqtt_username or None,
                        password=_secret(settings.mqtt_password_file, "mqtt_password_file",
                                         "LVS_MQTT_PASSWORD"),
                        ca_file=settings.mqtt_ca_file or None,
                        client_id=settings.mqtt_client_id or None)
    from .feeds.http import HttpFeed
    timeout = settings.http_timeout
    if not isinstance(timeout, (tuple, list)):
        timeout = (min(float(timeout), 3.0), float(timeout))
    return HttpFeed(settings.http_url, interval=settings.http_interval,
                    token=_secret(settings.http_token_file, "http_token_file",
                                  "LVS_HTTP_TOKEN"),
                    ca_file=settings.http_ca_file or None, timeout=tuple(timeout),
                    deadline=max(timeout))


def keepalived_for(settings):
    """The keepalived layout the settings name: one file (:class:`Keepalived`), or a
    VRRP file and ``keepalived_shards`` shard files (:class:`ShardedKeepalived`)."""
    if settings.keepalived_shards:
        return ShardedKeepalived(settings.keepalived_conf, settings.keepalived_shards,
                                 binary=settings.keepalived_bin,
                                 pidfile=settings.keepalived_pidfile)
    return Keepalived(settings.keepalived_conf, binary=settings.keepalived_bin,
                      pidfile=settings.keepalived_pidfile,
                      reload_command=settings.reload_command)


class Director:
    """The loop's state and pipeline; single-threaded, clock passed in.

    ``prepare()`` (once, at start) cleans up and takes the guard's baseline from the
    live file; ``handle(update, now)`` folds one feed update into the topology;
    ``tick(now)`` converges when the coalescer, a drain or a held mass removal is
    due, or retries a failed reload; ``deadline()`` says when ``tick`` next has work.

    :param reload_backoff: delays between reload retries (default 1 s doubling to
        60 s, with jitter).
    :param read_kernel: reads the IPVS table (default: :func:`~.stats.read_ipvs` in
        this network namespace), for the metrics, the announcer and the convergence
        watcher, which passes ``dests_of`` (the services whose real servers it needs).
    :param clock: the loop's clock (the watcher's times must be comparable).
    """

    def __init__(self, settings, keepalived: Keepalived,
                 reload_backoff: Optional[Backoff] = None,
                 read_kernel: Optional[Callable[..., tuple]] = None,
                 clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self.keepalived = keepalived
        self.topology: Optional[Topology] = None
        self.coalescer = Coalescer(settings.quiet_period, settings.max_delay)
        self.guard = MassRemovalGuard(settings.mass_removal_threshold,
                                      settings.mass_removal_hold,
                                      settings.allow_mass_removal)
        self.drain = Drain(settings.drain_seconds)
        self.plans = PlanCache(settings)
        self.problems = ProblemLog(log)
        self._warned: frozenset = frozenset()
        self._applied_text: Optional[str] = None    #: last text written (or in place)
        self._reload_pending = False                #: written, not yet reloaded
        self._reload_at: Optional[float] = None     #: when to retry a failed reload
        self.reload_backoff = reload_backoff or Backoff(initial=1.0, cap=60.0)
        self._force = False
        self.handled = 0       #: feed updates handled (applied or ignored)
        self.renders = 0       #: times the pipeline ran
        self.reloads = 0       #: reloads signalled
        self.registry = CollectorRegistry()
        self.metrics = LoopMetrics(self.registry)
        #: keepalived checks of booting members' real servers, ahead of their activation
        self.ahead = AheadChecks(PlanCache(settings).plan, lambda ok: (
            self.metrics.ahead_checks.labels("accepted" if ok else "refused").inc()))
        self.read_kernel = read_kernel or read_ipvs
        #: ipvs_first: a member's change written into IPVS before keepalived reloads
        self.kernel_first: Optional[KernelFirst] = None
        if getattr(settings, "ipvs_first", False):
            self.kernel_first = KernelFirst(count=lambda op, result: (
                self.metrics.ipvs_first.labels(op, result).inc()))
        self.watcher = ConvergenceWatcher(self.read_kernel, self.metrics, clock)
        #: what keepalived was given last (the live file's content at start)
        self.served: Optional[LvsConfig] = None
        self.last_apply: Optional[ApplyRecord] = None
        self._cause: Optional[float] = None     #: first unapplied change, received at
        #: (config, previous, cause) to hand to the watcher once keepalived was told
        self._verify: Optional[Tuple[LvsConfig, Optional[LvsConfig], Optional[float]]] = None
        #: mode bgp: the BGP announcements (None in mode vrrp)
        self.announcer = None
        if getattr(settings, "mode", "vrrp") == "bgp":
            from .announce import Announcer
            self.announcer = Announcer(settings, keepalived, self.read_kernel, self.registry)

    def view(self) -> DirectorView:
        """The loop's state for the metrics and status readers (immutable parts)."""
        topology = self.topology
        announcer = self.announcer
        return DirectorView(self.settings.vip_map, self.settings.interface, self.served,
                            None if topology is None else frozenset(topology.services),
                            self.last_apply, self.watcher.report, self.watcher.pending(),
                            None if announcer is None else tuple(announcer.reasons.items()))

    def prepare(self) -> None:
        """At start: remove stale temporary files, seed the guard from the live file.

        A live file that is absent, unreadable or not ours is logged; the guard then
        starts without a baseline (its first candidate passes, as on a first start).
        """
        conf = self.keepalived.conf_path
        try:
            self.keepalived.remove_stale_temps()
        except (HostError, OSError) as exc:
            log.warning("cannot clean up stale temporary files: %s", exc)
        level, why = logging.INFO, "there is none"
        try:
            served = self.keepalived.live_config()
            if served is not None:
                # the file's virtual servers; the VRRP part is always the current one
                config = replace(served, vrrp=vrrp_of(self.settings))
                self.guard.seed(config)
                self.served = config
                log.info("mass-removal guard baseline: %d real servers in %d virtual "
                         "servers, from the live %s", config.real_server_count(),
                         len(config.virtual_servers), conf)
                return
        except (HostError, RenderedFileError) as exc:
            level, why = logging.WARNING, str(exc)
        log.log(level, "live %s: %s; starting without a baseline for the mass-removal "
                "guard", conf, why)

    # -- feed updates ---------------------------------------------------------------

    def handle(self, update: FeedUpdate, now: float,
               received: Optional[float] = None) -> bool:
        """Fold *update* (received at *received*, default *now*) into the topology;
        True when the topology changed."""
        self.handled += 1
        self.metrics.event(update.name)
        try:
            new = self._fold(update)
        except TopologyError as exc:
            self.metrics.ignored.labels(INVALID).inc()
            self.problems.report(update.name, f"ignored {update.name} from {update.source}: "
                                 f"{exc}")
            return False
        except Exception as exc:  # never let one payload end the service
            self.metrics.ignored.labels(ERROR).inc()
            self.problems.report(update.name, f"ignored {update.name} from {update.source}: "
                                 f"unexpected {type(exc).__name__}: {exc}",
                                 logging.ERROR, exc_info=True)
            return False
        if new is None:
            return False
        if new is self.topology or (update.complete and new == self.topology):
            # a duplicate event, or e.g. a file re-read on SIGHUP
            self.metrics.ignored.labels(UNCHANGED).inc()
            return False
        if self.topology is None:
            log.info("first complete topology received from %s", update.source)
        self.topology = new
        self.ahead.note(update.name, update.complete)
        self.coalescer.touch(now)
        if self._cause is None:
            self._cause = now if received is None else received
        return True

    def _fold(self, update: FeedUpdate) -> Optional[Topology]:
        if update.complete:
            topology = parse_topology(update.payload)
            self.problems.forget(update.name)
            return topology
        if self.topology is None:
            self.metrics.ignored.labels(BEFORE_COMPLETE).inc()
            self.problems.report("before-complete", f"ignoring {update.name} and other "
                                 "events until the first complete topology arrives",
                                 logging.INFO)
            return None
        if not is_handled(update.name):
            self.metrics.ignored.labels(UNHANDLED).inc()
            self.problems.report("unhandled", f"{update.name} from {update.source} does "
                                 "not change what the director serves (logged once per "
                                 "event name)", logging.INFO)
            return None
        return apply_event(self.topology, update.name, update.payload)

    # -- converging -----------------------------------------------------------------

    def force(self) -> None:
        """Re-render and re-apply at the next tick even if nothing changed."""
        self._force = True

    def _pipeline_deadline(self) -> Optional[float]:
        times = [t for t in (self.coalescer.deadline(), self.drain.deadline(),
                             self.guard.deadline()) if t is not None]
        return min(times) if times else None

    def deadline(self) -> Optional[float]:
        pipeline = self._pipeline_deadline()
        # checks ahead wait while a change waits to be applied (see tick)
        ahead = self.ahead.deadline() if pipeline is None else None
        times = [t for t in (pipeline, self._reload_at, ahead,
                             self.announcer and self.announcer.deadline()) if t is not None]
        return min(times) if times else None

    def announce(self, now: float) -> None:
        """Mode bgp: re-check what this director can serve and announce that."""
        if self.announcer is not None:
            self.announcer.tick(now, self.served)

    def stop_announcing(self, then: Callable[[], None] = lambda: None,
                        sleep: Callable[[float], None] = time.sleep) -> None:
        """On SIGTERM. Mode bgp: withdraw every VIP first, run *then* (stop the feed),
        let the router move the flows (``drain_seconds`` from the withdrawal), then put
        the host back as it was. Mode vrrp: just *then*."""
        if self.announcer is None:
            then()
            return
        try:
            try:
                withdrawn = not self.announcer.withdraw_all(self.served)
                withdrawn_at = time.monotonic()
                log.info("stopping: %s; waiting drain_seconds=%gs before exiting",
                         "every VIP withdrawn" if withdrawn else "BIRD could not be told "
                         "to withdraw", self.settings.drain_seconds)
            finally:
                then()
            sleep(max(0.0, withdrawn_at + self.settings.drain_seconds - time.monotonic()))
        finally:
            self.announcer.close()

    def tick(self, now: float) -> bool:
        """Run the pipeline (or retry a failed reload) if due; True when it ran.
        Else, while no change waits to be applied, check booting members ahead."""
        if self.topology is None:
            return False
        deadline = self._pipeline_deadline()
        if self._force or (deadline is not None and now >= deadline):
            try:
                self._converge(now)
            except Exception as exc:
                self.problems.report("converge", f"could not apply the topology: "
                                     f"{type(exc).__name__}: {exc}", logging.ERROR,
                                     exc_info=not isinstance(exc, LvsError))
            return True
        if self._reload_at is not None and now >= self._reload_at:
            self._reload(now)
            return True
        if deadline is None and self.served is not None:
            try:
                self.ahead.tick(now, self.topology, self.keepalived)
            except Exception as exc:    # an optimisation: never the service's end
                self.problems.report("ahead", "could not check booting members ahead: "
                                     f"{type(exc).__name__}: {exc}", logging.WARNING,
                                     exc_info=not isinstance(exc, LvsError))
        return False

    def _reload(self, now: float) -> bool:
        """Reload keepalived for the file in place; on failure schedule a retry."""
        try:
            reloaded = self.keepalived.reload()
        except (HostError, OSError) as exc:
            delay = self.reload_backoff.next()
            self._reload_at = now + delay
            self.metrics.reload_failures.inc()
            self._record(RELOAD_FAILED, False, str(exc))
            self.problems.report("reload", "could not reload keepalived; the new file is "
                                 f"in place, retrying with backoff: {exc}", logging.ERROR)
            log.debug("next reload attempt in %.2fs", delay)
            return False
        detail = ""
        if self._reload_at is not None:
            detail = f"after {self.reload_backoff.attempts} failed attempt(s)"
            log.info("keepalived reloaded %s", detail)
        self._reload_pending, self._reload_at = False, None
        self.reload_backoff.reset()
        self.problems.forget("reload")
        if reloaded:
            self.reloads += 1
            self.metrics.reloads.inc()
        self._record(RELOADED if reloaded else NOT_RUNNING, True, detail)
        self._hand_to_watcher()
        return reloaded

    def _record(self, outcome: str, ok: bool, detail: str = "") -> None:
        """The outcome of giving keepalived a configuration (status, metrics)."""
        config = self.served or LvsConfig()
        self.last_apply = ApplyRecord(time.time(), outcome, ok, detail,
                                      len(config.virtual_servers),
                                      config.real_server_count(), self.drain.draining,
                                      self.guard.holding)
        if ok:
            self.metrics.last_success.set(self.last_apply.at)

    def _hand_to_watcher(self) -> None:
        """keepalived has been told (or the file was in place): verify IPVS."""
        if self._verify is not None:
            self.watcher.expect(*self._verify)
            self._verify = None

    def _converge(self, now: float) -> None:
        force, self._force = self._force, False
        cause, self._cause = self._cause, None
        self.coalescer.reset()
        self.renders += 1
        started = time.perf_counter()
        try:
            result = self.plans.plan(self.topology)
        except SettingsError as exc:
            self._record(PLAN_FAILED, False, str(exc))
            self.problems.report("plan", f"keeping the current configuration: {exc}",
                                 logging.ERROR)
            return
        self.problems.forget("plan")
        warnings = frozenset(result.warnings)
        for warning in result.warnings:
            if warning not in self._warned:
                log.warning("%s", warning)
        self._warned = warnings
        decision = self.guard.check(result.config, now)
        config = self.drain.apply(decision.config, now)
        self.metrics.mass_removal_held.set(1 if decision.held else 0)
        self.metrics.draining.set(self.drain.draining)
        text = self.keepalived.render(config)
        if text == self._applied_text and not force:
            return
        try:
            changed = self.keepalived.write(text, recheck=force)
        except ValidationError as exc:
            self.metrics.validation_failures.inc()
            self._record(REJECTED, False, str(exc))
            self.problems.report("apply", "keepalived rejected the rendered configuration; "
                                 f"keeping the last good file: {exc}", logging.ERROR)
            return
        except (HostError, OSError) as exc:
            self._record(WRITE_FAILED, False, str(exc))
            self.problems.report("apply", f"could not apply the configuration: {exc}",
                                 logging.ERROR)
            return
        self.problems.forget("apply")
        first = self._applied_text is None
        self._applied_text = text
        previous, self.served = self.served, config
        if changed or force or first:
            if self._verify is not None:    # a file keepalived was not told about yet
                _, previous, older = self._verify
                if older is not None:
                    cause = older if cause is None else min(cause, older)
            self._verify = (config, previous, cause)
        if changed:                     # a new file: reload now, backoff starts over
            if self.kernel_first is not None:
                self.kernel_first.apply(changes(previous, config))
            self._reload_pending = True
            self._reload_at = None
            self.reload_backoff.reset()
        reloaded = False
        if self._reload_pending and (changed or force):
            reloaded = self._reload(now)
        elif not self._reload_pending:   # the file was already in place
            self._record(UNCHANGED_FILE, True)
            self._hand_to_watcher()
        self.metrics.apply_duration.observe(time.perf_counter() - started)
        if changed:
            log.info("applied %d virtual servers, %d real servers (%d draining)%s%s",
                     len(config.virtual_servers), config.real_server_count(),
                     self.drain.draining, ", reloaded" if reloaded else "",
                     ", mass removal held back" if decision.held else "")


class _Signals:
    """SIGTERM/SIGINT -> stop, SIGHUP -> refresh; only from the main thread.

    The handlers only set flags: the loop polls them (it never blocks longer than
    ``_POLL``), so no lock is ever taken inside a signal handler.
    """

    def __init__(self) -> None:
        self.stop = False
        self.hup = False
        self._old: Dict[int, object] = {}

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for sig, handler in ((signal.SIGTERM, self._on_stop),
                                 (signal.SIGINT, self._on_stop),
                                 (signal.SIGHUP, self._on_hup)):
                self._old[sig] = signal.signal(sig, handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stop = True

    def _on_hup(self, signum: int, frame: object) -> None:
        self.hup = True


def run(settings, stop: Optional[threading.Event] = None, *,
        clock: Clock = time.monotonic, feed: Optional[Feed] = None,
        keepalived: Optional[Keepalived] = None,
        director: Optional[Director] = None) -> int:
    """Follow the topology until SIGTERM/SIGINT or *stop* is set; returns 0.

    :param feed: defaults to the one the settings name (:func:`build_feed`, which
        raises ``SettingsError`` unless exactly one is configured).
    :param keepalived: defaults to :func:`keepalived_for` the settings.
    :param director: lets a caller (tests, bench) inspect the loop's counters.
    """
    feed = feed or build_feed(settings)
    if director is None:
        director = Director(settings, keepalived or keepalived_for(settings), clock=clock)
    director.prepare()
    director.metrics.watch_feed(feed)
    server = None
    if settings.metrics_listen:
        server = serve_metrics(director, settings.metrics_listen)
    stop = stop or threading.Event()
    updates: "queue.Queue[Tuple[float, FeedUpdate]]" = queue.Queue()
    director.watcher.start()
    try:
        with _Signals() as signals:
            feed.start(lambda update: updates.put((clock(), update)))
            log.info("following the topology from the %s feed", feed.name)
            try:
                _loop(director, feed, updates, stop, signals, clock)
            finally:
                # mode bgp: the routers hear the withdrawal before anything else is
                # shut down (a feed can take a while to stop)
                director.stop_announcing(feed.stop)
    finally:
        director.ahead.close()
        director.watcher.stop()
        if server is not None:
            server.stop()
    log.info("stopped")
    return 0


def serve_metrics(director: Director, address: Tuple[str, int],
                  read_addresses: Callable[[str], FrozenSet[str]] = interface_addresses
                  ) -> MetricsServer:
    """Start ``/metrics`` and ``/status`` for *director* on *address*.

    :param read_addresses: the VRRP interface's addresses (default: read with
        pyroute2 in this network namespace).
    """
    collector = KernelCollector(director.view, director.read_kernel, read_addresses,
                                director.settings.metrics_real_servers,
                                director.keepalived.running)
    director.registry.register(collector)
    server = MetricsServer(address, director.registry, collector)
    try:
        server.start()
    except HostError:
        director.registry.unregister(collector)
        raise
    return server


def _loop(director: Director, feed: Feed,
          updates: "queue.Queue[Tuple[float, FeedUpdate]]",
          stop: threading.Event, signals: _Signals, clock: Clock) -> None:
    while not (stop.is_set() or signals.stop):
        if signals.hup:
            signals.hup = False
            log.info("SIGHUP: re-reading the topology and re-rendering")
            feed.refresh()
            director.force()
        timeout = _POLL
        deadline = director.deadline()
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - clock()))
        try:
            item: Optional[Tuple[float, FeedUpdate]] = updates.get(timeout=timeout)
        except queue.Empty:
            item = None
        handled = 0
        while item is not None:
            received, update = item
            director.handle(update, clock(), received)
            handled += 1
            if handled >= _BATCH:
                break
            try:
                item = updates.get_nowait()
            except queue.Empty:
                item = None
        director.tick(clock())
        director.announce(clock())
