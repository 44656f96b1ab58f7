"""The mass-removal guard holds back updates that remove too many real servers."""

from __future__ import annotations

import logging

import pytest

from cartridge_agent_lvs.director.guard import MassRemovalGuard

from ._lvs import ips, lvs, weights

TEN = lvs(*ips(10))


def guarded(threshold=0.5, hold=60.0, allow=False) -> MassRemovalGuard:
    g = MassRemovalGuard(threshold, hold, allow)
    assert not g.check(TEN, 0).held          # baseline: nothing to remove yet
    return g


def test_first_config_and_small_changes_pass():
    g = guarded()
    five_gone = lvs(*ips(5))                  # 50 % is not MORE than 50 %
    d = g.check(five_gone, 1)
    assert not d.held and d.config is five_gone and d.removed == 5 and d.total == 10
    assert g.deadline() is None


def test_empty_topology_is_held_loudly_then_released_after_the_hold(caplog):
    g = guarded(hold=60)
    empty = lvs()
    with caplog.at_level(logging.WARNING):
        d = g.check(empty, 10)
    assert d.held and d.config is TEN and (d.removed, d.total) == (10, 10)
    assert "MASS REMOVAL HELD BACK" in caplog.text and "10 of 10" in caplog.text
    assert g.deadline() == 70
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert g.check(empty, 69.9).held     # seen again, but too early
    assert "HELD BACK" not in caplog.text    # the loud warning is not repeated
    d = g.check(empty, 70)
    assert not d.held and d.config is empty and g.deadline() is None


def test_still_as_drastic_but_different_update_also_releases():
    g = guarded(hold=60)
    assert g.check(lvs(*ips(2)), 0).held      # 8 of 10 removed
    d = g.check(lvs(*ips(3)), 61)             # 7 of 10: still drastic
    assert not d.held and len(weights(d.config)) == 3


def test_recovery_cancels_the_hold(caplog):
    g = guarded(hold=60)
    assert g.check(lvs(), 0).held
    with caplog.at_level(logging.WARNING):
        d = g.check(lvs(*ips(9)), 5)          # the topology came back
    assert not d.held and len(weights(d.config)) == 9
    assert "no longer pending" in caplog.text
    # a later drastic update starts a NEW hold: the clock restarted
    assert g.check(lvs(), 100).held
    assert g.check(lvs(), 159).held
    assert not g.check(lvs(), 160).held


def test_allow_mass_removal_lets_it_through(caplog):
    g = guarded(allow=True)
    with caplog.at_level(logging.WARNING):
        d = g.check(lvs(), 1)
    assert not d.held and d.config.real_server_count() == 0
    assert "allowed" in caplog.text


def test_additions_do_not_count_as_removals():
    g = guarded()
    d = g.check(lvs(*ips(4), *ips(30, "10.1.0.")), 1)   # 6 of 10 removed, 30 added
    assert d.held                               # share is of the CURRENT servers


def test_port_change_counts_as_removal():
    g = guarded()
    assert g.check(lvs(*ips(10), port=8080), 1).held


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_threshold_must_be_a_share(threshold):
    with pytest.raises(ValueError):
        MassRemovalGuard(threshold, 60)


def test_a_baseline_given_at_start_guards_the_very_first_update(caplog):
    """After a restart the live file is the baseline: an empty topology is held."""
    g = MassRemovalGuard(0.5, 60, baseline=TEN)
    with caplog.at_level(logging.WARNING):
        d = g.check(lvs(), 0)
    assert d.held and d.config is TEN and (d.removed, d.total) == (10, 10)
    assert "MASS REMOVAL HELD BACK" in caplog.text
    assert not MassRemovalGuard(0.5, 60, baseline=TEN).check(lvs(*ips(6)), 0).held


def test_removals_counted_per_virtual_server_match_the_whole_set_of_real_servers():
    # the guard keeps one set per virtual server and skips those whose real servers
    # did not change; what it counts must be what the plain set difference says
    import random
    from dataclasses import replace

    from cartridge_agent_lvs.director.guard import real_server_slots
    from cartridge_agent_lvs.director.model import LvsConfig
    rng = random.Random(14)
    pool = {port: lvs(*ips(30), port=port).virtual_servers[0] for port in (80, 81, 82, 83)}
    g = MassRemovalGuard(0.3, 0, allow=False)
    served = None
    for _ in range(200):
        servers = []
        for port, full in pool.items():
            if served is not None and rng.random() < 0.6:       # unchanged: same object
                kept = [vs for vs in served.virtual_servers if vs.port == port]
                servers += kept
                continue
            if rng.random() < 0.1:
                continue                                        # the virtual server goes
            keep = tuple(rs for rs in full.real_servers if rng.random() < 0.8)
            servers += [replace(full, real_servers=keep)] if keep else []
        candidate = LvsConfig(tuple(servers), ("192.0.2.10",))
        decision = g.check(candidate, 0)
        if served is not None:
            before, after = real_server_slots(served), real_server_slots(candidate)
            assert (decision.removed, decision.total) == (len(before - after), len(before))
        served = decision.config
