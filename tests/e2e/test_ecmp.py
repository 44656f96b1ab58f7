"""End to end, mode bgp: three active directors behind a BIRD router's ECMP (scenarios
k, n, l, m of ``guest/ecmp.py``, in the same VM boot as the VRRP pair's scenarios).

Timers in the guest: BFD 200 ms x 3 on both ends, announce_interval 0.2 s,
drain_seconds 2 s. As in ``test_e2e.py`` the product's timers are asserted as
configured and only the processing allowance is multiplied by the guest's pace factor.

Detection and withdrawal are timed from the moment the victim's link went down (an
ioctl from the guest's runner, no process start) or the SIGTERM, to the router's
kernel route change, seen by an rtnetlink listener in the
router's namespace (``guest/ecmp.py`` ``RouteWatch``), not by polling ``ip route``:
a poll in the loaded guest costs an ``ip netns exec`` each time.
"""

from __future__ import annotations

import pytest

from tests.e2e.guest.ecmp import (ANNOUNCE_INTERVAL, BFD_INTERVAL_MS, BFD_MULTIPLIER, EDIRS,
                                  LONG_LIVED, PINNED_PORTS)
from tests.e2e.test_e2e import DRAIN_SECONDS, SLACK

pytestmark = pytest.mark.e2e

#: the router declares a director down after BFD_MULTIPLIER intervals without a packet;
#: the last packet came up to one interval (less BFD's jitter of up to 25 %) before
BFD_DETECTION = BFD_INTERVAL_MS * BFD_MULTIPLIER / 1000
BFD_EARLIEST = 0.75 * BFD_INTERVAL_MS * (BFD_MULTIPLIER - 1) / 1000


def test_k_new_connections_spread_over_every_director_and_real_server(e2e):
    m = e2e.expect_ok("k")["measurements"]
    assert set(EDIRS) <= set(m["directors"]) and all(m["directors"][d] > 0 for d in EDIRS), m
    assert len(m["real_servers"]) == 3 and sum(m["real_servers"].values()) == m["requests"], m
    # every director rendered the same bytes for the same topology, and runs sloppy TCP
    assert m["identical_keepalived_conf"] is True, m
    assert m["sloppy_tcp"] == {d: "1" for d in EDIRS}, m


def test_n_same_five_tuple_same_real_server_through_every_director(e2e):
    m = e2e.expect_ok("n")["measurements"]
    assert m["tuples"] == len(PINNED_PORTS), m
    assert m["same_real_server_through_every_director"] == m["tuples"], m
    assert m["distinct_real_servers"] >= 2, m        # mh-port: the ports spread


def test_l_dead_director_dropped_by_bfd_long_lived_connections_survive(e2e):
    m = e2e.expect_ok("l")["measurements"]
    assert BFD_EARLIEST <= m["detection_seconds"] <= BFD_DETECTION + SLACK * e2e.factor, m
    conns = m["long_lived"]
    assert conns["total"] == LONG_LIVED and m["long_lived_on_dead_director"] > 0, m
    # the dead director's flows re-hash to the survivors; mh picks the same real
    # server and sloppy TCP forwards their next packet: none is lost
    assert conns["failed"] == 0 and conns["changed_real_server"] == 0, m
    assert m["long_lived_on_dead_director_survived"] == m["long_lived_on_dead_director"], m
    # new connections whose SYN went to the dead director are retried by TCP (1 s)
    assert m["failed_new_requests"] == 0 and m["new_requests"] > 40, m


def test_m_graceful_withdraw_no_failed_request_no_reset(e2e):
    m = e2e.expect_ok("m")["measurements"]
    # SIGTERM -> withdrawn: the loop notices within its poll, BIRD sends the update
    # (processing allowances at the pace of the ECMP lab's moment: 3 directors, 4 BIRDs)
    factor = e2e.factor_at(m)
    assert m["withdraw_seconds"] <= ANNOUNCE_INTERVAL + SLACK * factor, m
    # ... then it waits drain_seconds from the withdrawal before exiting, and restores
    # sloppy_tcp (the stop path after the drain: host restored, threads joined, exit)
    assert DRAIN_SECONDS <= m["exit_seconds"], m
    assert m["exit_seconds"] <= m["withdraw_seconds"] + DRAIN_SECONDS + 2 * SLACK * factor, m
    assert m["exit_code"] == 0 and m["sloppy_tcp_after_exit"] == "0", m
    assert m["long_lived"]["failed"] == 0 and m["long_lived"]["changed_real_server"] == 0, m
    assert m["long_lived_on_withdrawn_director"] > 0, m
    assert m["failed_new_requests"] == 0 and m["new_requests"] > 20, m
