"""The convergence watcher: IPVS read back after a reload (genuine IPVS messages through
the real ``read_ipvs``, a fake clock; one test with the real thread)."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from cartridge_agent_lvs.director import converge
from cartridge_agent_lvs.director.metrics import LoopMetrics
from cartridge_agent_lvs.director.model import LvsConfig
from cartridge_agent_lvs.director.watcher import (AFTER_DEADLINE_POLL, CONVERGED, DRIFT,
                                                  UNVERIFIED, WAITING, ConvergenceWatcher)
from cartridge_agent_lvs.errors import HostError

from ._feedutil import wait_for
from ._ipvs import Kernel
from .test_converge import config, slot


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup():
    registry = CollectorRegistry()
    kernel, clock = Kernel(), Clock()
    watcher = ConvergenceWatcher(kernel.read, LoopMetrics(registry), clock)
    return watcher, kernel, clock, lambda name, **labels: registry.get_sample_value(
        "lvs_extension_" + name, labels)


def test_converged_after_the_reload_logs_and_observes_the_event_latency(setup, caplog):
    watcher, kernel, clock, sample = setup
    desired = config("10.0.0.1", "10.0.0.2")
    assert watcher.step() is None                       # nothing to watch yet
    watcher.expect(desired, None, cause=clock.now - 1.5)
    assert watcher.report.state == WAITING and sample("converged") == 0
    assert watcher.step() == pytest.approx(0.075)       # IPVS still empty: poll again
    assert watcher.pending() == {slot("10.0.0.1"), slot("10.0.0.2")}
    kernel.apply(desired)
    clock.now += 0.3
    with caplog.at_level(logging.INFO):
        assert watcher.step() is None
    report = watcher.report
    assert report.state == CONVERGED and report.seconds == pytest.approx(0.3)
    assert report.event_seconds == pytest.approx(1.8)
    assert "IPVS converged in 0.30 s after the reload, 1.80 s after the topology event: " \
           "1 virtual servers, 2 real servers" in caplog.text
    assert sample("convergence_seconds_count") == 1
    assert sample("convergence_seconds_sum") == pytest.approx(1.8)
    assert sample("converged") == 1
    assert watcher.step() is None and kernel.reads == 2     # done: no more reads


def test_not_converged_within_the_bound_is_one_error_then_the_recovery(setup, caplog):
    watcher, kernel, clock, sample = setup
    before = config("10.0.0.1")
    desired = config("10.0.0.1", "10.0.0.2", weights={"10.0.0.1": 0})
    kernel.apply(before, extra=[("10.0.0.9", 80)])      # keepalived ignored the reload
    watcher.expect(desired, before, cause=clock.now)
    watcher.step()
    clock.now += converge.bound(desired) + 0.1
    with caplog.at_level(logging.INFO):
        assert watcher.step() == AFTER_DEADLINE_POLL
        watcher.step()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert ("IPVS does not show the applied configuration 22.1 s after the reload: 2 "
            "desired entries missing, 1 unexpected present (real server 10.0.0.2:80 of TCP "
            "192.0.2.10:80 never appeared; real server 10.0.0.1:80 of TCP 192.0.2.10:80 "
            "weight 1, not 0; unexpected real server 10.0.0.9:80 of TCP 192.0.2.10:80); "
            "keepalived may have failed to apply the file, or is not running"
            ) == errors[0].getMessage()
    assert watcher.report.state == DRIFT and watcher.report.drift.missing == 2
    assert sample("convergence_timeouts_total") == 1 and sample("converged") == 0
    kernel.apply(desired)                               # keepalived finally applies it
    clock.now += 5
    with caplog.at_level(logging.INFO):
        assert watcher.step() is None
    assert "IPVS now shows the applied configuration, 27.1 s after the reload" in caplog.text
    assert watcher.report.state == CONVERGED and sample("convergence_seconds_count") == 1


def test_a_new_expectation_keeps_what_the_previous_one_still_waited_for(setup):
    watcher, kernel, clock, sample = setup
    first = config("10.0.0.1", "10.0.0.2")
    second = config("10.0.0.1", "10.0.0.2", "10.0.0.3")
    watcher.expect(first, config("10.0.0.1"), cause=clock.now)
    watcher.step()
    clock.now += 1
    watcher.expect(second, first, cause=clock.now)
    # 10.0.0.2 (new in the first, never seen) is still awaited, with the first cause
    assert watcher.pending() == {slot("10.0.0.2"), slot("10.0.0.3")}
    kernel.apply(second, absent=[("10.0.0.2", 80)])
    assert watcher.step() is not None
    kernel.apply(second)
    clock.now += 1
    assert watcher.step() is None
    assert watcher.report.event_seconds == pytest.approx(2.0)
    assert watcher.report.seconds == pytest.approx(1.0)


def test_unreadable_ipvs_is_unverified_logged_once_and_given_up_after_the_bound(setup,
                                                                               caplog):
    watcher, kernel, clock, sample = setup
    kernel.broken = True                        # a kernel without IPVS: said once, INFO
    desired = config("10.0.0.1")
    watcher.expect(desired, None)
    with caplog.at_level(logging.INFO):
        assert watcher.step() == AFTER_DEADLINE_POLL
        assert watcher.step() == AFTER_DEADLINE_POLL
        clock.now += converge.bound(desired)
        assert watcher.step() is None
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert said == [(logging.INFO, "cannot read IPVS to verify the reload: IPVS is not "
                     "available in the kernel of this host (no ip_vs module / generic "
                     "netlink family)")]
    assert watcher.report.state == UNVERIFIED and sample("converged") == 0


def test_any_other_read_failure_is_a_warning(caplog):
    def refused(dests_of=None):
        raise HostError("reading IPVS in this host: Operation not permitted")
    watcher = ConvergenceWatcher(refused, LoopMetrics(CollectorRegistry()), Clock())
    watcher.expect(config("10.0.0.1"), None)
    with caplog.at_level(logging.INFO):
        watcher.step()
        watcher.step()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "cannot read IPVS to verify the reload: reading IPVS in this "
         "host: Operation not permitted")]
    assert watcher.report.error.endswith("Operation not permitted")


def test_the_thread_polls_while_the_caller_goes_on(caplog):
    registry = CollectorRegistry()
    kernel = Kernel()
    watcher = ConvergenceWatcher(kernel.read, LoopMetrics(registry))
    desired = config("10.0.0.1")
    watcher.start()
    try:
        started = time.monotonic()
        watcher.expect(desired, None, cause=started)
        assert time.monotonic() - started < 0.05          # expect() never waits
        time.sleep(0.3)     # the scenario: IPVS follows the reload 0.3 s late
        reads = kernel.reads
        wait_for(lambda: kernel.reads > reads, 5, "the watcher to look again")
        assert watcher.report.state == WAITING            # looked: not there yet
        kernel.apply(desired)
        wait_for(lambda: watcher.report.state == CONVERGED, 5, "convergence")
        assert 0.3 <= watcher.report.event_seconds < 2
    finally:
        watcher.stop()


def _dests_read(kernel) -> list:
    """The virtual servers whose real servers the last read asked for (VIP, port)."""
    return [(r.get_attr("IPVS_CMD_ATTR_SERVICE").get_attr("IPVS_SVC_ATTR_ADDR"),
             r.get_attr("IPVS_CMD_ATTR_SERVICE").get_attr("IPVS_SVC_ATTR_PORT"))
            for r in kernel.last.requests if r["cmd"] == 8]


def test_only_the_virtual_servers_a_reload_changed_are_read(setup):
    watcher, kernel, clock, sample = setup
    web = config("10.0.0.1", "10.0.0.2").virtual_servers[0]
    other = replace(web, vip="192.0.2.11")
    first = LvsConfig((web, other), (web.vip, other.vip))
    watcher.expect(first, None, cause=clock.now)          # a start: everything is new
    kernel.apply(first)
    assert watcher.step() is None and watcher.report.state == CONVERGED
    assert _dests_read(kernel) == [(web.vip, 80), (other.vip, 80)]
    # one member leaves web: only web's real servers are read back
    second = replace(first, virtual_servers=(replace(
        web, real_servers=web.real_servers[:1]), other))
    watcher.expect(second, first, cause=clock.now)
    assert watcher.step() is not None                     # keepalived not there yet
    assert _dests_read(kernel) == [(web.vip, 80)]
    # before that converged, other changes too: both are read until both show
    third = replace(second, virtual_servers=(second.virtual_servers[0], replace(
        other, real_servers=other.real_servers + (replace(web.real_servers[0],
                                                          ip="10.0.0.3"),))))
    watcher.expect(third, second, cause=clock.now)
    assert watcher.pending() == {((other.vip, 80, "TCP"), ("10.0.0.3", 80))}
    kernel.apply(third)
    assert watcher.step() is None and watcher.report.state == CONVERGED
    assert _dests_read(kernel) == [(web.vip, 80), (other.vip, 80)]
    # a virtual server that was not changed but vanished is still seen: the service
    # list is always read whole
    fourth = replace(third, virtual_servers=(third.virtual_servers[0], replace(
        third.virtual_servers[1], real_servers=third.virtual_servers[1].real_servers[:2])))
    watcher.expect(fourth, third, cause=clock.now)
    kernel.apply(replace(fourth, virtual_servers=fourth.virtual_servers[1:]))
    watcher.step()
    assert _dests_read(kernel) == [(other.vip, 80)]
    assert watcher.report.state == WAITING
    assert watcher.report.drift.missing_virtual_servers == (web.key,)
