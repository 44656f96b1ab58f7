"""Applying: real ``keepalived -t`` gate, atomic 0600 write, reload only on change, lock."""

from __future__ import annotations

import multiprocessing
import os
import stat
import sys
import threading
import time

import pytest

from cartridge_agent_lvs.director.keepalived import Keepalived, ValidationError
from cartridge_agent_lvs.director.plan import plan
from cartridge_agent_lvs.director.render import render
from cartridge_agent_lvs.director.settings import load
from cartridge_agent_lvs.director.topology import parse_topology
from cartridge_agent_lvs.errors import HostError

from . import _stratos as st
from ._feedutil import wait_for
from ._service import FakeKeepalived, fake_keepalived, vrrp_interface  # noqa: F401

pytestmark = pytest.mark.keepalived


def conf_text(*members: int, service: int = 0) -> str:
    settings = load(dict(vip_map=st.vip_map([service]), interface=vrrp_interface()))
    return render(plan(settings, parse_topology(st.topology(
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


def _waiting_for_flock(path: str) -> bool:
    """Someone is blocked in flock() on *path*: /proc/locks lists the waiter ("->")."""
    st = os.stat(path)
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as f:
        return any("->" in line.split() and where in line.split() for line in f)


def test_lock_is_exclusive(conf):
    k = Keepalived(conf)
    entered = threading.Event()
    with k.lock():
        thread = threading.Thread(target=lambda: (k.apply(conf_text(1)), entered.set()))
        thread.start()
        wait_for(lambda: _waiting_for_flock(conf + ".lock") or entered.is_set(), 10,
                 "the second locker")
        assert not entered.is_set()          # blocked while we hold the lock
    thread.join(30)
    assert entered.is_set()


# -- review (issue 10): who gets the SIGHUP, stale temp files, the lock file ----------

@pytest.fixture
def sleeper(tmp_path):
    """A process named ``sleep`` (even running ``-f`` our file) that counts SIGHUPs."""
    proc = FakeKeepalived(str(tmp_path), name="sleep")
    yield proc
    proc.stop()


def test_sighup_never_goes_to_a_process_that_is_not_keepalived(conf, tmp_path, sleeper):
    """A reused or planted pid in the pid file: the process is not signalled."""
    pidfile = tmp_path / "planted.pid"
    pidfile.write_text(f"{sleeper.proc.pid}\n")
    k = Keepalived(conf, pidfile=str(pidfile))
    with pytest.raises(HostError) as err:
        k.apply(conf_text(1))
    assert "is not keepalived" in str(err.value) and "\n" not in str(err.value)
    assert str(sleeper.proc.pid) in str(err.value) and "'sleep'" in str(err.value)
    sleeper.expect(0)                               # not signalled (counted, not hoped)
    assert sleeper.proc.poll() is None
    with open(conf) as f:
        assert f.read() == conf_text(1)             # the file itself was written


def test_sighup_needs_keepalived_running_our_config_file(conf, tmp_path):
    other = FakeKeepalived(str(tmp_path), conf=str(tmp_path / "other.conf"))
    try:
        with pytest.raises(HostError, match=r"runs .*other\.conf, not .*keepalived\.conf"):
            Keepalived(conf, pidfile=other.pidfile).apply(conf_text(1))
        assert other.hups() == 0
    finally:
        other.stop()


@pytest.mark.parametrize("argv, expected", [
    (["keepalived", "-n", "-l", "-D", "-f", "/x/k.conf", "-p", "/run/k.pid"], "/x/k.conf"),
    (["/usr/sbin/keepalived", "--use-file=/x/k.conf"], "/x/k.conf"),
    (["keepalived", "--use-file", "/x/k.conf"], "/x/k.conf"),
    (["keepalived", "-f/x/k.conf"], "/x/k.conf"),
    (["keepalived", "-D", "--dont-fork"], "/etc/keepalived/keepalived.conf"),
    (["keepalived", "-f", "k.conf"], "/work/k.conf"),
])
def test_config_file_of_a_keepalived_command_line(argv, expected):
    from cartridge_agent_lvs.director.keepalived import config_file_of
    assert config_file_of(argv, cwd="/work") == expected


def _age(path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_stale_temp_files_of_our_own_are_removed_at_start(conf, tmp_path):
    dead = multiprocessing.Process(target=int)
    dead.start()
    dead.join()
    names = {
        ".keepalived-abc123.conf.tmp": 3600,                 # old naming, an hour old
        f".keepalived-{dead.pid}-x1.conf.tmp": 0,            # writer gone
        f".keepalived-{os.getppid()}-x2.conf.tmp": 0,        # writer alive, fresh: kept
        ".keepalived-young.conf.tmp": 0,                     # fresh, no pid: kept
        "keepalived.conf.tmp": 3600,                         # not our pattern: kept
        ".keepalived-foreign.conf.tmp": 3600,                # someone else's: kept
    }
    for name, age in names.items():
        (tmp_path / name).write_text("x")
        _age(tmp_path / name, age)
    os.chown(tmp_path / ".keepalived-foreign.conf.tmp", 4242, 4242)
    os.symlink("/etc/hostname", tmp_path / ".keepalived-link.conf.tmp")
    _age_link = time.time() - 3600
    os.utime(tmp_path / ".keepalived-link.conf.tmp", (_age_link, _age_link),
             follow_symlinks=False)
    removed = Keepalived(conf).remove_stale_temps()
    assert sorted(removed) == sorted([".keepalived-abc123.conf.tmp",
                                      f".keepalived-{dead.pid}-x1.conf.tmp"])
    assert sorted(os.listdir(tmp_path)) == sorted(
        set(names) - set(removed) | {".keepalived-link.conf.tmp", "keepalived.conf.lock"})


def test_temp_files_name_their_writer(conf, monkeypatch):
    seen = []
    k = Keepalived(conf)
    monkeypatch.setattr(k, "check_file", lambda path: seen.append(os.path.basename(path)))
    k.apply(conf_text(1))
    assert seen and seen[0].startswith(f".keepalived-{os.getpid()}-")


def test_lock_file_symlink_is_refused_and_not_followed(conf, tmp_path):
    target = tmp_path / "elsewhere" / "created-by-us"
    target.parent.mkdir()
    os.symlink(target, conf + ".lock")
    with pytest.raises(HostError) as err:
        Keepalived(conf).apply(conf_text(1))
    assert "symbolic link" in str(err.value) and "\n" not in str(err.value)
    assert not target.exists() and not os.path.exists(conf)
