"""``converge``: when IPVS shows the rendered configuration, and what drift is.

The kernel side is genuine pyroute2 IPVS messages read by the real ``read_ipvs``
(``_ipvs.Kernel``)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cartridge_agent_lvs.director import converge
from cartridge_agent_lvs.director.model import (HealthCheck, LvsConfig, Policy, RealServer,
                                                VirtualServer)

from ._ipvs import Kernel

VIP, VIP6 = "192.0.2.10", "fd99::100"
CHECK = HealthCheck("TCP_CHECK", "/", 200, connect_timeout=3, retry=1)
POLICY = Policy("rr", "DR", 0, 6, None, CHECK)
WEB = (VIP, 80, "TCP")


def config(*members, weights=None, sorry=None, scheduler="rr") -> LvsConfig:
    weights = weights or {}
    policy = replace(POLICY, sorry_server=sorry, scheduler=scheduler)
    rss = tuple(RealServer(ip, 80, weights.get(ip, 1), f"m-{ip}", "web.c1")
                for ip in members)
    return LvsConfig((VirtualServer(VIP, 80, "TCP", "web", rss, policy),), (VIP,))


def kernel_of(desired: LvsConfig, **kw):
    k = Kernel()
    k.apply(desired, **kw)
    return k.read()


def slot(ip):
    return (WEB, (ip, 80))


def test_the_applied_configuration_is_converged():
    desired = config("10.0.0.1", "10.0.0.2")
    drift = converge.compare(desired, kernel_of(desired), frozenset({slot("10.0.0.1")}))
    assert drift.converged and drift == converge.Drift()


def test_a_missing_virtual_server_counts_once():
    desired = config("10.0.0.1", "10.0.0.2")
    drift = converge.compare(desired, (), converge.new_slots(desired, None))
    assert drift.missing_virtual_servers == (WEB,) and drift.missing == 1
    assert not drift.converged
    assert drift.lines() == ["virtual server TCP 192.0.2.10:80 missing"]


def test_new_real_server_never_seen_is_missing_a_kept_one_is_held_out_by_its_check():
    before = config("10.0.0.1", "10.0.0.2")
    desired = config("10.0.0.1", "10.0.0.2", "10.0.0.3")
    pending = converge.new_slots(desired, before)
    assert pending == {slot("10.0.0.3")}
    # 10.0.0.2 was served before and is absent: its health check holds it out
    kernel = kernel_of(desired, absent=[("10.0.0.2", 80), ("10.0.0.3", 80)])
    drift = converge.compare(desired, kernel, pending)
    assert drift.missing_real_servers == (slot("10.0.0.3"),)
    assert drift.not_in_kernel == (slot("10.0.0.2"),)
    assert drift.missing == 1 and drift.unexpected == 0
    # once seen (pending emptied by the watcher), its later absence is the check's doing
    drift = converge.compare(desired, kernel, frozenset())
    assert drift.converged and len(drift.not_in_kernel) == 2


def test_wrong_weight_wrong_scheduler_and_unexpected_entries():
    desired = config("10.0.0.1", "10.0.0.2", weights={"10.0.0.2": 0})     # draining
    applied_elsewhere = config("10.0.0.1", "10.0.0.2", scheduler="wlc")
    other = LvsConfig((VirtualServer("192.0.2.99", 443, "TCP", "x",
                                     (RealServer("10.9.9.9", 443),), POLICY),), ())
    k = Kernel()
    k.apply(applied_elsewhere, extra=[("10.0.0.7", 80)])
    table = k.table
    k.apply(other)
    k.table = table + k.table
    drift = converge.compare(desired, k.read())
    assert drift.wrong_schedulers == ((WEB, "rr", "wlc"),)
    assert drift.wrong_weights == ((slot("10.0.0.2"), 0, 1),)
    assert drift.unexpected_real_servers == (slot("10.0.0.7"),)
    assert drift.unexpected_virtual_servers == (("192.0.2.99", 443, "TCP"),)
    assert (drift.missing, drift.unexpected) == (2, 2)
    assert "real server 10.0.0.2:80 of TCP 192.0.2.10:80 weight 1, not 0" in drift.lines()
    assert drift.summary(limit=1).endswith("... (3 more)")


def test_the_sorry_server_is_expected_when_keepalived_puts_it_in():
    desired = config("10.0.0.1", sorry=("10.0.0.200", 80))
    kernel = kernel_of(desired, absent=[("10.0.0.1", 80)], extra=[("10.0.0.200", 80)])
    drift = converge.compare(desired, kernel)
    assert drift.converged and drift.not_in_kernel == (slot("10.0.0.1"),)


def test_ipv6_and_firewall_mark_services():
    rs = RealServer("fd00::21", 80, 1)
    desired = LvsConfig((VirtualServer(VIP6, 80, "TCP", "web6", (rs,), POLICY),), (VIP6,))
    k = Kernel()
    k.apply(desired)
    assert converge.compare(desired, k.read()).converged
    from ._ipvs import svc
    k.table = k.table + [(svc(None, 0, fwmark=5), [])]
    drift = converge.compare(desired, k.read())
    assert drift.unexpected_virtual_servers == (("", 5, "FWM"),)
    assert drift.lines() == ["unexpected virtual server FWM 5"]


@pytest.mark.parametrize("check, delay, expected", [
    (CHECK, 6, converge.RELOAD_GRACE + 6 + 3 * 2),
    (None, 2, converge.RELOAD_GRACE + 2),
])
def test_the_bound_is_one_health_check_cycle_beyond_the_reload_grace(check, delay, expected):
    desired = config("10.0.0.1")
    vs = replace(desired.virtual_servers[0],
                 policy=replace(POLICY, check=check, delay_loop=delay))
    assert converge.bound(replace(desired, virtual_servers=(vs,))) == expected
    assert converge.bound(LvsConfig()) == converge.RELOAD_GRACE


def test_still_desired_keeps_the_slots_that_the_new_configuration_serves():
    from cartridge_agent_lvs.director.guard import real_server_slots
    web = config("10.0.0.1", "10.0.0.2", "10.0.0.3").virtual_servers[0]
    other = replace(web, vip="192.0.2.11")
    before = LvsConfig((web, other), (VIP, "192.0.2.11"))
    fewer = replace(other, real_servers=other.real_servers[:1])
    after = replace(before, virtual_servers=(web, fewer))      # web: the same object
    slots = converge.by_virtual_server(real_server_slots(before))
    for prior in (before, None):              # with the old configuration or without
        kept = converge.still_desired(slots, after, prior)
        assert kept == converge.by_virtual_server(real_server_slots(before)
                                                  & real_server_slots(after))
        assert sum(map(len, kept.values())) == 4
    # the unchanged virtual server keeps its very set: nothing per real server
    assert converge.still_desired(slots, after, before)[WEB] is slots[WEB]
    assert converge.still_desired(slots, replace(before, virtual_servers=()), before) == {}


def test_changed_virtual_servers_are_those_not_served_as_they_are():
    web = config("10.0.0.1", "10.0.0.2").virtual_servers[0]
    other = replace(web, vip="192.0.2.11")
    before = LvsConfig((web, other), (VIP, "192.0.2.11"))
    drained = replace(other, real_servers=(replace(other.real_servers[0], weight=0),
                                           other.real_servers[1]))
    new = replace(web, port=443)
    after = replace(before, virtual_servers=(web, drained, new))
    assert converge.changed_virtual_servers(after, before) == {drained.key, new.key}
    assert converge.changed_virtual_servers(before, before) == frozenset()
    equal = replace(before, virtual_servers=(replace(web), other))    # equal, not the same
    assert converge.changed_virtual_servers(equal, before) == frozenset()
    assert converge.changed_virtual_servers(after, None) is None      # all of them


def test_compare_only_some_real_servers_checks_the_others_presence_and_scheduler():
    web = config("10.0.0.1", "10.0.0.2").virtual_servers[0]
    other = replace(web, vip="192.0.2.11")
    desired = LvsConfig((web, other), (VIP, "192.0.2.11"))
    k = Kernel()
    k.apply(replace(desired, virtual_servers=(web, replace(other, real_servers=()))))
    kernel = k.read(dests_of=lambda service: service.address == VIP)
    assert [len(s.dests) for s in kernel] == [2, 0]
    assert converge.compare(desired, kernel, only={WEB}) == converge.Drift()
    # read as a whole table, other's real servers would look held out
    assert len(converge.compare(desired, kernel).not_in_kernel) == 2
    k.apply(LvsConfig((web,), (VIP,)))
    drift = converge.compare(desired, k.read(dests_of=lambda s: False), only=set())
    assert drift.missing_virtual_servers == (other.key,)
    k.apply(replace(desired, virtual_servers=(web, replace(other, policy=replace(
        POLICY, scheduler="wlc")))))
    drift = converge.compare(desired, k.read(dests_of=lambda s: False), only=set())
    assert drift.wrong_schedulers == ((other.key, "rr", "wlc"),)
