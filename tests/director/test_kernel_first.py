"""ipvs_first: a member's real-server change written into IPVS ahead of keepalived's
reload (:mod:`cartridge_agent_lvs.director.kernel_first`).

The rules are pure (:func:`changes` over two configurations); the writes go through
the real netlink encoder to a stand-in kernel that decodes each request with
pyroute2 and answers as the kernel does (EEXIST, ENOENT, ESRCH) -- the host kernel
has no IPVS.  The e2e suite (scenario c) has the real kernel and keepalived take a
real server the director added and remove it on a failed health check.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import replace

import pytest

from cartridge_agent_lvs.director import kernel_first as kf
from cartridge_agent_lvs.director.feeds import FeedUpdate
from cartridge_agent_lvs.director.model import LvsConfig, RealServer
from cartridge_agent_lvs.director.plan import plan
from cartridge_agent_lvs.director.topology import parse_topology

from . import _stratos as st
from ._ipvs import DEL_DEST, NEW_DEST, SET_DEST, Kernel
from ._service import fake_keepalived, make_settings  # noqa: F401


def config(members, settings, inactive=None) -> LvsConfig:
    return plan(settings, parse_topology(st.topology(members, inactive=inactive))).config


@pytest.fixture
def settings(tmp_path):
    return make_settings(str(tmp_path), vip_map=st.vip_map([0, 1]))


def with_weights(cfg: LvsConfig, weights: dict) -> LvsConfig:
    return replace(cfg, virtual_servers=tuple(
        replace(vs, real_servers=tuple(replace(rs, weight=weights.get(rs.ip, rs.weight))
                                       for rs in vs.real_servers))
        for vs in cfg.virtual_servers))


def ops(writes) -> list:
    return sorted((w.op, w.vs[0], w.rs.ip, w.rs.weight) for w in writes)


def test_a_member_added_removed_or_reweighted_is_one_write(settings):
    before = config({0: [0, 1, 2], 1: [0]}, settings)
    after = config({0: [0, 2, 3], 1: [0]}, settings)
    assert ops(kf.changes(before, after)) == [
        ("add", st.vip(0), st.member_ip(0, 3), 1),
        ("remove", st.vip(0), st.member_ip(0, 1), 1)]
    drained = with_weights(before, {st.member_ip(0, 1): 0})
    assert ops(kf.changes(before, drained)) == [("weight", st.vip(0), st.member_ip(0, 1), 0)]
    assert ops(kf.changes(drained, before)) == [("weight", st.vip(0), st.member_ip(0, 1), 1)]
    assert kf.changes(before, before) == ()
    assert kf.changes(None, after) == ()        # keepalived starts with the first file


def test_with_inhibit_on_failure_a_weight_is_never_raised_ahead(settings):
    """Mode bgp renders inhibit_on_failure: weight 0 in IPVS may be a failed check."""
    before = config({0: [0, 1]}, settings)
    bgp = replace(before, vrrp=replace(before.vrrp, mode="bgp"))
    drained = with_weights(bgp, {st.member_ip(0, 1): 0})
    assert ops(kf.changes(bgp, drained)) == [("weight", st.vip(0), st.member_ip(0, 1), 0)]
    assert kf.changes(drained, bgp) == ()
    assert ops(kf.changes(bgp, config({0: [0, 1, 2]}, settings))) == [
        ("add", st.vip(0), st.member_ip(0, 2), 1)]


def test_virtual_servers_new_gone_changed_or_left_empty_are_keepalived_s(settings, tmp_path):
    before = config({0: [0, 1]}, settings)
    assert kf.changes(before, config({0: [0, 1], 1: [0]}, settings)) == ()   # new VS
    assert kf.changes(config({0: [0, 1], 1: [0]}, settings), before) == ()   # VS gone
    wlc = make_settings(str(tmp_path), vip_map=st.vip_map([0, 1]), scheduler="wlc")
    assert kf.changes(before, config({0: [0, 1, 2]}, wlc)) == ()             # policy
    # the last real server of positive weight leaves: quorum and sorry server
    assert kf.changes(before, with_weights(before, {st.member_ip(0, 0): 0,
                                                    st.member_ip(0, 1): 0})) == ()
    assert kf.changes(config({0: [0]}, settings), config({0: [1]}, settings)) != ()
    sorry = make_settings(str(tmp_path), vip_map=st.vip_map([0, 1]),
                          sorry_server="192.0.2.99 80")
    assert kf.changes(config({0: [0, 1]}, sorry), config({0: [0, 1, 2]}, sorry)) == ()


def test_requests_decode_as_the_kernel_reads_them():
    """Our encoding, decoded by pyroute2's IPVS message class (the stand-in kernel)."""
    kernel = Kernel()
    cfg_vs = ("192.0.2.10", 80, "TCP")
    writes = [kf.DestChange(kf.ADD, cfg_vs, RealServer("10.0.0.5", 8080, 3), "DR"),
              kf.DestChange(kf.WEIGHT, cfg_vs, RealServer("10.0.0.5", 8080, 0), "TUN"),
              kf.DestChange(kf.REMOVE, cfg_vs, RealServer("10.0.0.5", 8080, 0), "NAT"),
              kf.DestChange(kf.ADD, ("2001:db8::10", 443, "UDP"),
                            RealServer("2001:db8::5", 443, 1), "DR")]
    kf.KernelFirst(kernel.genl).apply(writes)
    assert kernel.writes == [
        (NEW_DEST, "192.0.2.10", 80, "10.0.0.5", 8080, 3, 3),
        (SET_DEST, "192.0.2.10", 80, "10.0.0.5", 8080, 0, 2),
        (DEL_DEST, "192.0.2.10", 80, "10.0.0.5", 8080, None, None),
        (NEW_DEST, "2001:db8::10", 443, "2001:db8::5", 443, 1, 3)]


def test_the_kernel_s_answers_are_counted_and_refusals_logged_once(settings, caplog):
    kernel = Kernel()
    before = config({0: [0, 1]}, settings)
    kernel.apply(before)
    counted = []
    writer = kf.KernelFirst(kernel.genl, lambda op, result: counted.append((op, result)))
    after = config({0: [0, 2]}, settings)
    assert writer.apply(kf.changes(before, after)) == {"applied": 2, "already": 0, "failed": 0}
    assert {d.address for vs in kernel.read() for d in vs.dests} == {
        st.member_ip(0, 0), st.member_ip(0, 2)}
    # the same writes again: IPVS has them (keepalived's reload would find the same)
    assert writer.apply(kf.changes(before, after)) == {"applied": 0, "already": 2, "failed": 0}
    assert sorted(counted) == sorted([("add", "applied"), ("remove", "applied"),
                                      ("add", "already"), ("remove", "already")])
    # a virtual server IPVS does not have (keepalived not running): ESRCH, logged once
    kernel.clear()
    caplog.set_level(logging.WARNING)
    assert writer.apply(kf.changes(before, after)) == {"applied": 0, "already": 0, "failed": 2}
    assert [r.message for r in caplog.records] == [
        f"IPVS refused 2 of 2 real-server change(s) (first: add {st.member_ip(0, 2)}:80 "
        f"weight 1 in {st.vip(0)}:80/TCP: {os.strerror(errno.ESRCH)}"
        "); keepalived's reload applies the file"]


def test_a_kernel_without_ipvs_is_warned_about_once(settings, caplog):
    kernel = Kernel()
    kernel.broken = True
    writer = kf.KernelFirst(kernel.genl)
    writes = kf.changes(config({0: [0]}, settings), config({0: [0, 1]}, settings))
    caplog.set_level(logging.DEBUG, logger=kf.__name__)
    for _ in range(3):
        assert writer.apply(writes) == {"applied": 0, "already": 0, "failed": 1}
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.message for r in warned] == [
        "the kernel has no IPVS (ip_vs not loaded); 1 real-server change(s) left to "
        "keepalived's reload"]


def test_the_director_writes_after_the_file_is_validated_and_before_the_reload(
        tmp_path, fake_keepalived):
    """A member event: the kernel has the change when keepalived is signalled; a file
    keepalived -t refuses writes nothing; ipvs_first = false writes nothing."""
    from cartridge_agent_lvs.director import service
    kernel = Kernel()
    s = make_settings(str(tmp_path), keepalived_pidfile=fake_keepalived.pidfile,
                      quiet_period=0, drain_seconds=0)
    director = service.Director(s, service.keepalived_for(s), read_kernel=kernel.read)
    director.kernel_first.sock_factory = kernel.genl
    seen_at_reload = []
    reload = director.keepalived.reload
    director.keepalived.reload = lambda: (seen_at_reload.append(
        {d.address for vs in kernel.read() for d in vs.dests}), reload())[1]
    director.prepare()
    director.handle(FeedUpdate("CompleteTopologyEvent", st.topology({0: [0, 1]}), "t"), 0.0)
    director.tick(1.0)
    kernel.apply(director.served)             # keepalived started with the first file
    director.handle(FeedUpdate("MemberActivatedEvent", st.member_event(0, 2), "t"), 2.0)
    director.tick(3.0)
    assert seen_at_reload[-1] == {st.member_ip(0, i) for i in (0, 1, 2)}
    assert [w[0] for w in kernel.writes] == [NEW_DEST]
    metric = director.metrics.ipvs_first.labels("add", "applied")
    assert metric._value.get() == 1

    # a file keepalived refuses is not written: neither is IPVS
    kernel.writes.clear()
    def refuse(text, recheck=False):
        raise service.ValidationError("refused (test)")
    director.keepalived.write = refuse
    director.handle(FeedUpdate("MemberSuspendedEvent", st.member_event(0, 0), "t"), 4.0)
    director.tick(5.0)
    assert kernel.writes == []

    off = make_settings(str(tmp_path), keepalived_pidfile=fake_keepalived.pidfile,
                        ipvs_first=False)
    assert service.Director(off, service.keepalived_for(off)).kernel_first is None
