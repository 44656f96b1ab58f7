"""Coalescing: a burst gives one action after the quiet period, bounded by max delay."""

from __future__ import annotations

import pytest

from cartridge_agent_lvs.director.coalesce import Coalescer


def test_idle_coalescer_is_never_due():
    c = Coalescer(0.5, 5)
    assert not c.pending and c.deadline() is None and not c.due(1e9)


def test_burst_fires_once_after_the_quiet_period():
    c = Coalescer(0.5, 5)
    for i in range(10):                       # ten events 0.1 s apart
        c.touch(100 + i * 0.1)
        assert not c.due(100 + i * 0.1)
    assert c.deadline() == pytest.approx(100.9 + 0.5)
    assert not c.due(101.39)
    assert c.due(101.4)
    c.reset()
    assert not c.pending and not c.due(1e9)


def test_steady_stream_still_converges_at_max_delay():
    c = Coalescer(0.5, 2)
    t = 0.0
    fired = None
    while t < 10:
        c.touch(t)
        if c.due(t + 0.1):
            fired = t + 0.1
            break
        t += 0.1                              # never quiet for 0.5 s
    assert fired == pytest.approx(2.0, abs=0.11)


def test_zero_quiet_period_fires_at_once():
    c = Coalescer(0, 0)
    c.touch(7)
    assert c.due(7)


def test_max_delay_is_never_shorter_than_the_quiet_period():
    c = Coalescer(1.0, 0.2)
    c.touch(0)
    assert c.deadline() == 1.0


@pytest.mark.parametrize("quiet, delay", [(-1, 5), (0.5, -1)])
def test_negative_times_are_rejected(quiet, delay):
    with pytest.raises(ValueError):
        Coalescer(quiet, delay)
