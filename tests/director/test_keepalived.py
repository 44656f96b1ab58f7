"""Applying: real ``keepalived -t`` gate, atomic 0600 write, reload only on change, lock."""

from __future__ import annotations

import multiprocessing
import os
import stat
import sys
import threading

import pytest

from cartridge_agent_lvs.director.keepalived import Keepalived, ValidationError
from cartridge_agent_lvs.director.plan import plan
from cartridge_agent_lvs.director.render import render
from cartridge_agent_lvs.director.settings import load
from cartridge_agent_lvs.director.topology import parse_topology
from cartridge_agent_lvs.errors import HostError

from . import _stratos as st
from ._service import fake_keepalived, vrrp_interface  # noqa: F401

pytestmark = pytest.mark.keepalived


def conf_text(*members: int, service: int = 0) -> str:
    settings = load(dict(vip_map=st.vip_map([service]), interface=vrrp_interface()))
    return render(settings, plan(settings, parse_topology(st.topology(
        {service: list(members)}))).config)


@pytest.fixture
def conf(tmp_path):
    return str(tmp_path / "keepalived.conf")


def test_apply_writes_0600_and_reloads_once_per_change(conf, fake_keepalived):
    k = Keepalived(conf, pidfile=fake_keepalived.pidfile)
    first = k.apply(conf_text(1, 2))
    assert (first.changed, first.reloaded) == (True, True)
    assert stat.S_IMODE(os.stat(conf).st_mode) == 0o600
    again = k.apply(conf_text(1, 2))
    assert (again.changed, again.reloaded) == (False, False)
    k.apply(conf_text(1, 2, 3))
    fake_keepalived.expect(2)
    assert [n for n in os.listdir(os.path.dirname(conf)) if n.endswith(".tmp")] == []


def test_validation_failure_keeps_the_last_good_file_and_does_not_reload(
        conf, fake_keepalived):
    k = Keepalived(conf, pidfile=fake_keepalived.pidfile)
    good = conf_text(1)
    k.apply(good)
    bad = good.replace("lb_algo rr", "lb_algo fastest")
    with pytest.raises(ValidationError) as err:
        k.apply(bad)
    assert any("lvs_scheduler" in m or "scheduler" in m for m in err.value.messages)
    with open(conf) as f:
        assert f.read() == good
    fake_keepalived.expect(1)
    assert [n for n in os.listdir(os.path.dirname(conf)) if n.endswith(".tmp")] == []


def test_no_running_keepalived_is_not_an_error(conf, tmp_path):
    assert Keepalived(conf, pidfile=str(tmp_path / "none.pid")).apply(conf_text(1)).reloaded \
        is False
    stale = tmp_path / "stale.pid"
    proc = multiprocessing.Process(target=int)
    proc.start()
    proc.join()                                  # a pid that no longer runs
    stale.write_text(f"{proc.pid}\n")
    result = Keepalived(conf, pidfile=str(stale)).apply(conf_text(1, 2))
    assert (result.changed, result.reloaded) == (True, False)


def test_garbage_pid_file_is_a_host_error(conf, tmp_path):
    bad = tmp_path / "bad.pid"
    bad.write_text("1; rm -rf /\n")
    with pytest.raises(HostError, match="does not hold a pid"):
        Keepalived(conf, pidfile=str(bad)).apply(conf_text(1))


def test_reload_command_runs_instead_of_the_signal(conf, tmp_path):
    marker = tmp_path / "reloaded"
    cmd = (sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')")
    k = Keepalived(conf, reload_command=cmd)
    assert k.apply(conf_text(1)).reloaded
    assert k.apply(conf_text(1)).reloaded is False
    assert marker.read_text() == "x"
    failing = Keepalived(conf, reload_command=(sys.executable, "-c", "raise SystemExit(3)"))
    with pytest.raises(HostError, match="exited 3"):
        failing.apply(conf_text(1, 2))


def test_missing_binary_is_one_clear_error(conf):
    with pytest.raises(HostError, match="not found"):
        Keepalived(conf, binary="/nonexistent/keepalived").validate(conf_text(1))


def test_a_reader_never_sees_a_partial_file(conf):
    texts = [conf_text(*range(n)) for n in (1, 40)]
    k = Keepalived(conf)
    k.apply(texts[0])
    seen, stop = set(), threading.Event()

    def reader():
        while not stop.is_set():
            with open(conf) as f:
                seen.add(f.read())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(12):
            k.apply(texts[(i + 1) % 2])
    finally:
        stop.set()
        thread.join()
    assert seen <= set(texts) and len(seen) == 2


def _apply_many(conf: str, text: str, rounds: int, queue) -> None:
    k = Keepalived(conf)
    changed = sum(k.apply(text if i % 2 else text + "# odd\n").changed for i in range(rounds))
    queue.put(changed)


def test_two_processes_on_one_path_do_not_interleave(conf):
    """Two writers alternate contents; the lock makes every apply whole: the file is
    always one of the candidates and every change was validated."""
    a, b = conf_text(1, 2), conf_text(3, 4)
    queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_apply_many, args=(conf, t, 6, queue))
             for t in (a, b)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert sum(queue.get(timeout=5) for _ in procs) >= 6
    with open(conf) as f:
        assert f.read() in (a, b, a + "# odd\n", b + "# odd\n")
    assert [n for n in os.listdir(os.path.dirname(conf)) if n.endswith(".tmp")] == []


def test_lock_is_exclusive(conf):
    k = Keepalived(conf)
    entered = threading.Event()
    with k.lock():
        thread = threading.Thread(target=lambda: (k.apply(conf_text(1)), entered.set()))
        thread.start()
        assert not entered.wait(0.5)         # blocked while we hold the lock
    thread.join(30)
    assert entered.is_set()
