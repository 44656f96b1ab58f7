"""Graceful drain: leavers get weight 0, then go; a comeback is restored at once."""

from __future__ import annotations

import pytest

from cartridge_agent_lvs.director.drain import Drain
from cartridge_agent_lvs.director.model import RealServer, VirtualServer

from ._lvs import VIP, ips, lvs, weights

A, B, C = ips(3)


def test_leaver_is_weight_zero_until_the_drain_ends():
    d = Drain(30)
    assert weights(d.apply(lvs(A, B, C), 0)) == {(VIP, 80, A): 1, (VIP, 80, B): 1,
                                                 (VIP, 80, C): 1}
    out = d.apply(lvs(A, B), 10)
    assert weights(out)[(VIP, 80, C)] == 0 and weights(out)[(VIP, 80, A)] == 1
    assert d.deadline() == 40 and d.draining == 1
    assert weights(d.apply(lvs(A, B), 39.9))[(VIP, 80, C)] == 0   # re-render mid-drain
    out = d.apply(lvs(A, B), 40)
    assert weights(out) == {(VIP, 80, A): 1, (VIP, 80, B): 1}
    assert d.deadline() is None and d.draining == 0


def test_comeback_is_restored_at_once():
    d = Drain(30)
    d.apply(lvs(A, B), 0)
    d.apply(lvs(A), 1)
    out = d.apply(lvs(A, B), 2)
    assert weights(out) == {(VIP, 80, A): 1, (VIP, 80, B): 1}
    assert d.deadline() is None
    # leaving again starts a fresh drain period
    d.apply(lvs(A), 5)
    assert d.deadline() == 35


def test_last_real_servers_leaving_keep_their_weight_until_the_drain_ends():
    # keepalived 2.2.7 -t rejects a virtual server whose real servers all weigh 0
    d = Drain(30)
    d.apply(lvs(A, B, C), 0)
    d.apply(lvs(B, C), 1)                     # A leaves first: weight 0
    out = d.apply(lvs(), 2)                   # then the last two together
    assert weights(out) == {(VIP, 80, A): 0, (VIP, 80, B): 1, (VIP, 80, C): 1}
    assert out.virtual_servers[0].service == "svc"
    assert weights(d.apply(lvs(), 31)) == {(VIP, 80, B): 1, (VIP, 80, C): 1}
    assert d.apply(lvs(), 32).virtual_servers == ()


def test_drain_deadline_does_not_move_on_rerender():
    d = Drain(30)
    d.apply(lvs(A, B), 0)
    d.apply(lvs(A), 10)
    d.apply(lvs(A), 20)
    assert d.deadline() == 40


def test_staggered_leavers_have_their_own_deadlines():
    d = Drain(30)
    d.apply(lvs(A, B, C), 0)
    d.apply(lvs(A, B), 0)
    d.apply(lvs(A), 10)
    assert d.deadline() == 30
    assert weights(d.apply(lvs(A), 30)) == {(VIP, 80, A): 1, (VIP, 80, B): 0}
    assert d.deadline() == 40


def test_zero_disables_draining():
    d = Drain(0)
    d.apply(lvs(A, B), 0)
    desired = lvs(A)
    assert d.apply(desired, 1) is desired and d.deadline() is None


def test_output_is_deterministic_and_sorted():
    d1, d2 = Drain(30), Drain(30)
    for d in (d1, d2):
        d.apply(lvs(C, B, A), 0)
    assert d1.apply(lvs(C), 1) == d2.apply(lvs(C), 1)
    rss = d1.apply(lvs(C), 2).virtual_servers[0].real_servers
    assert [r.key for r in rss] == sorted(r.key for r in rss)


def test_negative_drain_is_rejected():
    with pytest.raises(ValueError):
        Drain(-1)


def test_a_drain_passes_the_other_virtual_servers_through_untouched_and_keeps_the_order():
    # only the virtual server with a leaver is rebuilt, its real servers in the
    # planner's order (addresses as numbers: 10.0.0.9 before 10.0.0.10); the others are
    # the very objects given, so a shard without a leaver renders the same text
    from dataclasses import replace

    from cartridge_agent_lvs.director.model import LvsConfig
    from cartridge_agent_lvs.director.plan import rs_sort_key
    twelve = sorted((RealServer(ip, 80) for ip in ips(12)), key=rs_sort_key)
    a = VirtualServer("192.0.2.9", 80, "TCP", "a", tuple(twelve))
    b = VirtualServer(VIP, 80, "TCP", "b", tuple(twelve))
    d = Drain(30)
    assert d.apply(LvsConfig((a, b), (a.vip, VIP)), 0).virtual_servers == (a, b)
    leaving = replace(a, real_servers=tuple(rs for rs in twelve if rs.ip != "10.0.0.5"))
    out = d.apply(LvsConfig((leaving, b), (a.vip, VIP)), 1)
    assert out.virtual_servers[1] is b
    assert [rs.ip for rs in out.virtual_servers[0].real_servers] == ips(12)
    assert weights(out)[(a.vip, 80, "10.0.0.5")] == 0
    gone = d.apply(LvsConfig((b,), (a.vip, VIP)), 2)      # a's service goes: a shell
    assert [vs.vip for vs in gone.virtual_servers] == ["192.0.2.9", VIP]
    assert gone.virtual_servers[1] is b


def test_a_draining_virtual_server_is_the_same_object_while_nothing_of_it_changes():
    # an event on another virtual server must not make the draining one look changed
    # (the guard, the renderer and the convergence watcher skip it by identity)
    from dataclasses import replace

    from cartridge_agent_lvs.director.model import LvsConfig
    a = VirtualServer("192.0.2.9", 80, "TCP", "a", tuple(RealServer(ip, 80) for ip in ips(4)))
    b = VirtualServer(VIP, 80, "TCP", "b", (RealServer(A, 80), RealServer(B, 80)))
    d = Drain(30)
    d.apply(LvsConfig((a, b), (a.vip, VIP)), 0)
    fewer = replace(a, real_servers=a.real_servers[1:])
    draining = d.apply(LvsConfig((fewer, b), (a.vip, VIP)), 1).virtual_servers[0]
    b2 = replace(b, real_servers=b.real_servers[:1])          # b changes meanwhile
    out = d.apply(LvsConfig((fewer, b2), (a.vip, VIP)), 2)
    assert out.virtual_servers[0] is draining
    assert weights(out)[(VIP, 80, B)] == 0                    # b's leaver drains too
    # a re-render with nothing new: both are the objects of the last call
    again = d.apply(LvsConfig((fewer, b2), (a.vip, VIP)), 3).virtual_servers
    assert again[0] is draining and again[1] is out.virtual_servers[1]
    # a changes again (another leaver): rebuilt
    fewest = replace(fewer, real_servers=fewer.real_servers[1:])
    again = d.apply(LvsConfig((fewest, b2), (a.vip, VIP)), 4).virtual_servers[0]
    assert again is not draining and weights(LvsConfig((again,), ())) == {
        (a.vip, 80, ip): 0 if ip in ips(2) else 1 for ip in ips(4)}
