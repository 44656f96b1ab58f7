"""The sharded keepalived layout (``keepalived_shards``): placement, files, reloads,
and the director's guarantees per shard -- validated by the real ``keepalived -t``,
reloads counted by fake keepalived processes (one per instance, each holding its own
file on its command line, as the pid check requires)."""

from __future__ import annotations

import os
import re
import time

import pytest

from cartridge_agent_lvs.director import service
from cartridge_agent_lvs.director.feeds import FeedUpdate
from cartridge_agent_lvs.director.keepalived import ValidationError
from cartridge_agent_lvs.director.plan import plan
from cartridge_agent_lvs.director.render import parse_rendered, render, render_checkers
from cartridge_agent_lvs.director.shards import (ShardedKeepalived, assign, keepalived_argv,
                                                 shard_conf, shard_pidfile, split)
from cartridge_agent_lvs.director.topology import parse_topology
from cartridge_agent_lvs.errors import HostError, SettingsError

from . import _stratos as st
from ._service import FakeKeepalived, logged_calls, logged_keepalived, make_settings

pytestmark = [pytest.mark.keepalived]

SHARDS = 3
SERVICES = range(5)
RS_RE = re.compile(r"real_server (\S+) (\d+) \{\s*weight (\d+)")


def _vs(config, s):
    return next(vs for vs in config.virtual_servers if vs.vip == st.vip(s))


def _config(members):
    settings = make_settings("/tmp", vip_map=st.vip_map(SERVICES))
    return plan(settings, parse_topology(st.topology(members))).config


# -- placement (pure) -----------------------------------------------------------------

def test_new_services_go_to_the_least_loaded_shard_and_never_move():
    config = _config({0: range(10), 1: range(2), 2: range(2), 3: range(1)})
    first = assign(config.virtual_servers, SHARDS, {})
    # key order: svc0 -> 1, svc1 -> 2, svc2 -> 3, svc3 -> the lightest (2 or 3: 2 wins)
    assert [first[_vs(config, s).key] for s in range(4)] == [1, 2, 3, 2]
    grown = _config({0: range(10), 1: range(40), 2: range(2), 3: range(1), 4: range(1)})
    second = assign(grown.virtual_servers, SHARDS, first)
    assert all(second[k] == v for k, v in first.items())     # nobody moved
    assert second[_vs(grown, 4).key] == 3                     # svc4: shard 3 is lightest
    # a sticky shard beyond the current count is kept (moving is never safe)
    assert assign(grown.virtual_servers, 1, second) == second


def test_split_keeps_every_virtual_server_exactly_once():
    config = _config({s: range(s + 1) for s in SERVICES})
    parts = split(config, assign(config.virtual_servers, SHARDS, {}), SHARDS)
    assert len(parts) == SHARDS
    assert sorted(vs.key for p in parts for vs in p.virtual_servers) == \
        sorted(vs.key for vs in config.virtual_servers)


def test_names_and_command_lines_of_the_instances():
    assert shard_conf("/etc/keepalived/keepalived.conf", 3) == \
        "/etc/keepalived/keepalived.shard-03.conf"
    assert shard_pidfile("/run/keepalived.pid", 12) == "/run/keepalived.shard-12.pid"
    vrrp = keepalived_argv("/etc/k/keepalived.conf", "/run/keepalived.pid")
    assert vrrp[:2] == ["keepalived", "-P"] and "/etc/k/keepalived.conf" in vrrp
    shard = keepalived_argv("/etc/k/keepalived.conf", "/run/keepalived.pid", 2)
    assert shard[:2] == ["keepalived", "-C"]
    assert shard[shard.index("-f") + 1] == "/etc/k/keepalived.shard-02.conf"
    assert shard[shard.index("-p") + 1] == "/run/keepalived.shard-02.pid"
    assert shard[shard.index("-c") + 1] == "/run/keepalived.shard-02.checkers.pid"
    pids = [a for argv in (vrrp, shard) for flag in ("-p", "-r", "-c")
            for a in [argv[argv.index(flag) + 1]]]
    assert len(set(pids)) == len(pids)                       # no instance shares a pid file


# -- the director on the sharded layout ---------------------------------------------

class Lab:
    """A Director on ShardedKeepalived, a fake keepalived per instance, a manual clock."""

    def __init__(self, tmp_path, **overrides) -> None:
        self.dir = str(tmp_path)
        pid = os.path.join(self.dir, "keepalived.pid")
        values = dict(vip_map=st.vip_map(SERVICES), keepalived_shards=SHARDS,
                      keepalived_pidfile=pid, quiet_period=1, max_delay=10,
                      drain_seconds=0)
        values.update(overrides)
        self.settings = make_settings(self.dir, **values)
        conf = self.settings.keepalived_conf
        self.fakes = {}
        for n in range(SHARDS + 1):
            path = conf if n == 0 else shard_conf(conf, n)
            fake = FakeKeepalived(self.dir, conf=path)
            os.replace(fake.pidfile, pid if n == 0 else shard_pidfile(pid, n))
            self.fakes[n] = fake
        self.members = {s: set(range(4)) for s in SERVICES}
        self.now = 1000.0
        self.director = self.new_director()

    def new_director(self):
        director = service.Director(self.settings, service.keepalived_for(self.settings))
        director.prepare()
        return director

    @property
    def layout(self) -> ShardedKeepalived:
        return self.director.keepalived

    def doc(self):
        return st.topology({s: sorted(m) for s, m in self.members.items()})

    def complete(self):
        self.director.handle(FeedUpdate("CompleteTopologyEvent", self.doc(), "t"), self.now)

    def event(self, name, s, i):
        (self.members[s].discard if name == "MemberSuspendedEvent" else
         self.members[s].add)(i)
        self.director.handle(FeedUpdate(name, st.member_event(s, i), "t"), self.now)

    def settle(self, seconds=1.0):
        self.now += seconds
        self.director.tick(self.now)

    def hups(self):
        return {n: f.hups() for n, f in self.fakes.items()}

    def text(self, n):
        path = self.layout.vrrp.conf_path if n == 0 else shard_conf(
            self.layout.conf_path, n)
        with open(path) as f:
            return f.read()

    def shard_of(self, s):
        return self.layout.placed[(st.vip(s), 80, "TCP")]

    def inodes(self):
        return {n: os.stat(self.text_path(n)).st_ino for n in range(SHARDS + 1)}

    def step(self, name, s, i):
        """One member event, settled; the files it replaced."""
        before = self.inodes()
        self.event(name, s, i)
        self.settle()
        return self.rewritten(before)

    def rewritten(self, before):
        """The files replaced since *before* (:meth:`inodes`), by instance number."""
        return [n for n, ino in self.inodes().items() if ino != before[n]]

    def text_path(self, n):
        return self.layout.conf_path if n == 0 else shard_conf(self.layout.conf_path, n)

    def stop(self):
        for fake in self.fakes.values():
            fake.stop()


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path)
    yield lab
    lab.stop()


def _settled_hups(lab, expected):
    for n, count in expected.items():
        lab.fakes[n].expect(count)


def test_first_apply_writes_every_file_valid_and_the_union_is_the_single_file(lab):
    lab.complete()
    lab.settle()
    _settled_hups(lab, {n: 1 for n in range(SHARDS + 1)})
    vrrp = lab.text(0)
    assert "vrrp_instance" in vrrp and "virtual_server" not in vrrp
    union = []
    for n in range(1, SHARDS + 1):
        text = lab.text(n)
        assert "vrrp_instance" not in text and "lvs_sync_daemon" not in text
        lab.layout.parts[n].check_file(lab.text_path(n))   # real keepalived -t, again
        union += parse_rendered(text).virtual_servers
    single = parse_rendered(render(lab.director.served))
    assert sorted(union, key=lambda v: v.key) == sorted(single.virtual_servers,
                                                       key=lambda v: v.key)
    assert parse_rendered(vrrp).vips == single.vips


def test_a_member_event_rewrites_and_reloads_only_its_own_shard(lab):
    lab.complete()
    lab.settle()
    shard = lab.shard_of(2)
    assert lab.step("MemberSuspendedEvent", 2, 1) == [shard]
    _settled_hups(lab, {n: 2 if n == shard else 1 for n in range(SHARDS + 1)})
    assert st.member_ip(2, 1) not in lab.text(shard)


def test_a_burst_on_two_services_is_coalesced_into_one_reload_per_touched_shard(lab):
    lab.complete()
    lab.settle()
    _settled_hups(lab, {n: 1 for n in range(SHARDS + 1)})
    touched = {lab.shard_of(0), lab.shard_of(1)}
    for i in range(4, 30):                      # 26 events on svc0, then svc1
        lab.event("MemberActivatedEvent", 0, i)
        lab.now += 0.1
        lab.director.tick(lab.now)
    lab.event("MemberSuspendedEvent", 1, 0)
    lab.settle(0.5)
    assert lab.hups() == {n: 1 for n in range(SHARDS + 1)}     # still quiet-period
    lab.settle(1.0)
    _settled_hups(lab, {n: 2 if n in touched else 1 for n in range(SHARDS + 1)})


def test_drain_is_a_weight_change_in_one_shard_then_a_removal_there(tmp_path):
    lab = Lab(tmp_path, drain_seconds=5)
    try:
        lab.complete()
        lab.settle()
        shard = lab.shard_of(3)
        lab.event("MemberSuspendedEvent", 3, 2)
        lab.settle()
        weights = {ip: int(w) for ip, _, w in RS_RE.findall(lab.text(shard))}
        assert weights[st.member_ip(3, 2)] == 0
        _settled_hups(lab, {n: 2 if n == shard else 1 for n in range(SHARDS + 1)})
        lab.settle(5)
        assert st.member_ip(3, 2) not in lab.text(shard)
        _settled_hups(lab, {n: 3 if n == shard else 1 for n in range(SHARDS + 1)})
    finally:
        lab.stop()


def test_a_mass_removal_is_held_in_every_shard(tmp_path):
    lab = Lab(tmp_path, mass_removal_hold=30)
    try:
        lab.complete()
        lab.settle()
        texts = {n: lab.text(n) for n in range(SHARDS + 1)}
        lab.members = {s: set() if s else set(range(4)) for s in SERVICES}  # 4/5 gone
        lab.complete()
        lab.settle()
        assert {n: lab.text(n) for n in texts} == texts
        assert lab.director.guard.holding
        lab.settle(31)                                # still so after the hold: applied
        assert st.member_ip(1, 0) not in lab.text(lab.shard_of(1))
    finally:
        lab.stop()


def test_a_rejected_shard_keeps_every_last_good_file(lab):
    lab.complete()
    lab.settle()
    texts = tuple(lab.text(n) for n in range(SHARDS + 1))
    inodes = lab.inodes()
    changed = list(lab.layout.render(lab.director.served))
    changed[1] = changed[1].replace("lb_algo rr", "lb_algo rr\n    bogus_keyword 1", 1)
    changed[2] = changed[2].replace("weight 1", "weight 2", 1)        # a valid change
    with pytest.raises(ValidationError) as err:
        lab.layout.write(tuple(changed))
    assert "bogus_keyword" in str(err.value)
    assert tuple(lab.text(n) for n in range(SHARDS + 1)) == texts     # none written
    assert lab.inodes() == inodes and not lab.layout.pending
    assert not [f for f in os.listdir(lab.dir) if f.endswith(".conf.tmp")]


def test_a_failed_shard_reload_is_owed_until_it_succeeds(lab):
    lab.complete()
    lab.settle()
    shard = lab.shard_of(4)
    pidfile = shard_pidfile(lab.settings.keepalived_pidfile, shard)
    with open(pidfile) as f:
        good = f.read()
    with open(pidfile, "w") as f:
        f.write(f"{os.getpid()}\n")               # not keepalived: refused, no signal
    lab.event("MemberSuspendedEvent", 4, 0)
    lab.settle()
    assert lab.layout.pending == {shard}
    with open(pidfile, "w") as f:
        f.write(good)
    lab.now = lab.director.deadline()
    lab.director.tick(lab.now)
    assert not lab.layout.pending
    _settled_hups(lab, {n: 2 if n == shard else 1 for n in range(SHARDS + 1)})


def test_a_restart_keeps_the_placement_from_the_files_and_writes_nothing(lab):
    lab.complete()
    lab.settle()
    placed = dict(lab.layout.placed)
    inodes = lab.inodes()
    lab.director = lab.new_director()             # lvs-extension restarted
    assert lab.layout.placed == placed
    assert lab.director.served.real_server_count() == 20
    lab.members[0].add(9)                         # the new svc0 member joins svc0's shard
    lab.complete()
    lab.settle()
    assert lab.rewritten(inodes) == [placed[(st.vip(0), 80, "TCP")]]


def test_settings_refuse_a_reload_command_with_shards(tmp_path):
    with pytest.raises(SettingsError, match="reload_command.*keepalived_shards"):
        make_settings(str(tmp_path), keepalived_shards=2,
                      reload_command="systemctl reload keepalived")


def test_write_refuses_a_wrong_number_of_texts(tmp_path):
    layout = ShardedKeepalived(os.path.join(str(tmp_path), "k.conf"), 2,
                               pidfile=os.path.join(str(tmp_path), "k.pid"))
    with pytest.raises(ValueError):
        layout.write(("a", "b"))
    with pytest.raises(HostError):
        layout.vrrp.pidfile = os.path.join(str(tmp_path), "k.pid")
        with open(layout.vrrp.pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
        layout.pending.add(0)
        layout.reload()
    assert layout.pending == {0}


def test_settings_refuse_shards_in_mode_bgp(tmp_path):
    with pytest.raises(SettingsError, match="keepalived_shards=2: cannot be used with mode bgp"):
        make_settings(str(tmp_path), keepalived_shards=2, mode="bgp", scheduler="mh",
                      bgp_local_as="65001", bgp_router_id="10.0.0.11",
                      bgp_peers="10.0.0.1 65000")


def test_running_means_every_instance_runs(lab):
    assert lab.layout.running() is True
    lab.fakes[max(lab.fakes)].stop()               # one checker shard killed
    assert lab.layout.running() is False


# -- per-event work proportional to the change -----------------------------------------

def _logged_lab(tmp_path, reject: str = ""):
    """A settled Lab whose keepalived calls are logged (and files holding *reject*
    refused): (lab, log)."""
    log = os.path.join(str(tmp_path), "calls")
    lab = Lab(tmp_path, keepalived_bin=logged_keepalived(tmp_path, log, reject=reject))
    try:
        lab.complete()
        lab.settle()
    except BaseException:
        lab.stop()
        raise
    return lab, log


def test_an_event_validates_and_writes_only_its_own_shard(tmp_path):
    lab, log = _logged_lab(tmp_path)
    try:
        assert len(logged_calls(log)) == SHARDS + 1          # the first apply: every file
        first = len(logged_calls(log + ".checked"))
        shard = lab.shard_of(1)
        assert lab.step("MemberSuspendedEvent", 1, 2) == [shard]
        assert st.member_ip(1, 2) not in lab.text(shard)
        # a member left: nothing in the new file is new to keepalived
        assert logged_calls(log)[SHARDS + 1:] == []
        # it came back: its block is one keepalived accepted there before
        assert lab.step("MemberActivatedEvent", 1, 2) == [shard]
        assert st.member_ip(1, 2) in lab.text(shard)
        assert logged_calls(log)[SHARDS + 1:] == []
        # a member never seen: one keepalived -t ...
        assert lab.step("MemberActivatedEvent", 1, 7) == [shard]
        assert st.member_ip(1, 7) in lab.text(shard)
        calls = logged_calls(log)[SHARDS + 1:]
        assert len(calls) == 1 and calls[0].startswith("-t -f ")
        # ... of global_defs and svc1's header with the one block that came
        checked = "\n".join(logged_calls(log + ".checked")[first:])
        assert RS_RE.findall(checked) == [(st.member_ip(1, 7), "80", "1")]
        assert "global_defs {" in checked and checked.count("virtual_server ") == 1
        assert f"virtual_server {st.vip(1)} 80 {{" in checked
    finally:
        lab.stop()


def _checked_ahead(lab):
    """Tick until the director's checks ahead have answered (each is bounded by the
    keepalived timeout, which bounds this wait too); how many ran."""
    lab.settle(0)                              # nothing waits to be applied: they start
    started = list(lab.director.ahead.running)
    deadline = time.monotonic() + lab.layout.timeout + 5
    while lab.director.ahead.running:
        assert time.monotonic() < deadline, "the check ahead did not answer"
        time.sleep(0.02)
        lab.director.tick(lab.now)
    return len(started)


def _ahead_checks(lab):
    """The metric's [accepted, refused] checks ahead."""
    return [lab.director.registry.get_sample_value(
        "lvs_extension_ahead_checks_total", {"result": r}) for r in ("accepted", "refused")]


def test_a_booting_member_is_checked_ahead_and_its_activation_runs_no_check(tmp_path):
    refused = st.member_ip(2, 9)
    lab, log = _logged_lab(tmp_path, reject=refused)
    try:
        calls, first = len(logged_calls(log)), len(logged_calls(log + ".checked"))
        before = lab.inodes()
        # Stratos: the instance has its addresses; the member is not active yet
        lab.director.handle(FeedUpdate("MemberInitializedEvent", st.member_event(1, 7), "t"),
                            lab.now)
        lab.settle()
        assert lab.rewritten(before) == []              # nothing new is served ...
        assert _checked_ahead(lab) == 1                 # ... but its block is checked
        assert len(logged_calls(log)) == calls + 1
        checked = "\n".join(logged_calls(log + ".checked")[first:])
        assert RS_RE.findall(checked) == [(st.member_ip(1, 7), "80", "1")]
        assert checked.count("virtual_server ") == 1
        assert _checked_ahead(lab) == 0                 # once
        shard = lab.shard_of(1)
        assert lab.step("MemberActivatedEvent", 1, 7) == [shard]
        assert st.member_ip(1, 7) in lab.text(shard)
        assert len(logged_calls(log)) == calls + 1      # activated: no keepalived -t
        assert _ahead_checks(lab) == [1, 0]
        # refused ahead: not remembered, so checked again -- and refused -- when activated
        lab.director.handle(FeedUpdate("MemberStartedEvent", st.member_event(2, 9), "t"),
                            lab.now)
        lab.settle()
        assert _checked_ahead(lab) == 1 and _ahead_checks(lab) == [1, 1]
        before = lab.inodes()
        lab.event("MemberActivatedEvent", 2, 9)
        lab.settle()
        assert lab.rewritten(before) == [] and refused not in lab.text(lab.shard_of(2))
        assert lab.director.last_apply.outcome == service.REJECTED
        assert len(logged_calls(log)) == calls + 3
    finally:
        lab.stop()


def test_a_drain_rewrites_only_its_own_shard_from_start_to_end(tmp_path):
    # 12 members: in text order 10.3.0.10 sorts before 10.3.0.2; a drain once re-sorted
    # every virtual server that way, rewriting (and reloading) every shard
    lab = Lab(tmp_path, drain_seconds=5)
    try:
        lab.members = {s: set(range(12)) for s in SERVICES}
        lab.complete()
        lab.settle()
        shard = lab.shard_of(3)
        assert lab.step("MemberSuspendedEvent", 3, 4) == [shard]
        assert {ip: int(w) for ip, _, w in RS_RE.findall(lab.text(shard))}[
            st.member_ip(3, 4)] == 0
        after = lab.inodes()
        lab.settle(5)
        assert st.member_ip(3, 4) not in lab.text(shard)
        assert lab.rewritten(after) == [shard]
        _settled_hups(lab, {n: 3 if n == shard else 1 for n in range(SHARDS + 1)})
    finally:
        lab.stop()


def test_a_shard_file_changed_behind_its_back_is_put_right_when_forced(lab):
    lab.complete()
    lab.settle()
    mine, other = lab.shard_of(0), lab.shard_of(1)
    assert mine != other
    good = lab.text(other)
    with open(lab.text_path(other), "w") as f:
        f.write(good.replace("weight 1", "weight 7"))
    lab.event("MemberSuspendedEvent", 0, 1)          # another shard's change: the file
    lab.settle()                                     # it wrote last is not read again
    assert "weight 7" in lab.text(other)
    _settled_hups(lab, {n: 2 if n == mine else 1 for n in range(SHARDS + 1)})
    lab.director.force()                             # lvs-extension's SIGHUP
    lab.director.tick(lab.now)
    assert lab.text(other) == good
    _settled_hups(lab, {n: 2 if n in (mine, other) else 1 for n in range(SHARDS + 1)})


def test_after_a_refused_shard_the_next_change_is_applied(tmp_path):
    refused = st.member_ip(2, 7)
    lab, log = _logged_lab(tmp_path, reject=refused)
    try:
        texts = {n: lab.text(n) for n in range(SHARDS + 1)}
        lab.event("MemberActivatedEvent", 2, 7)      # keepalived -t refuses svc2's shard
        lab.settle()
        assert {n: lab.text(n) for n in texts} == texts
        assert lab.director.last_apply.outcome == service.REJECTED
        lab.event("MemberSuspendedEvent", 2, 7)      # back to the file in place
        lab.event("MemberSuspendedEvent", 4, 0)      # and a change in svc4's shard
        lab.settle()
        assert {n: lab.text(n) for n in texts if n != lab.shard_of(4)} == \
            {n: t for n, t in texts.items() if n != lab.shard_of(4)}
        assert st.member_ip(4, 0) not in lab.text(lab.shard_of(4))
        _settled_hups(lab, {n: 2 if n == lab.shard_of(4) else 1
                            for n in range(SHARDS + 1)})
    finally:
        lab.stop()


def test_the_incremental_path_serves_what_a_fresh_plan_serves(lab):
    import random
    rng = random.Random(14)
    lab.complete()
    lab.settle()
    planned = lab.director.plans.planned
    for _ in range(25):
        s, i = rng.choice(list(SERVICES)), rng.randrange(6)
        lab.event("MemberSuspendedEvent" if i in lab.members[s] and rng.random() < 0.6
                  else "MemberActivatedEvent", s, i)
        lab.settle()
        want = plan(lab.settings, lab.director.topology).config
        assert lab.director.served == want
        on_disk = [vs for n in range(1, SHARDS + 1)
                   for vs in parse_rendered(lab.text(n)).virtual_servers]
        assert sorted(on_disk, key=lambda v: v.key) == \
            sorted(parse_rendered(render(want)).virtual_servers, key=lambda v: v.key)
        # each file is, to the byte, a fresh rendering of its part (the kept blocks of
        # unchanged virtual and real servers change the work, not the text)
        parts = split(want, lab.director.keepalived.placed, SHARDS)
        assert [lab.text(n) for n in range(1, SHARDS + 1)] == [render_checkers(p)
                                                                for p in parts]
        assert lab.director.plans.planned <= planned + 1      # one service planned
        planned = lab.director.plans.planned
