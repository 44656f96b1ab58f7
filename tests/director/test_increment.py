"""What keepalived must still accept of a new file (``increment.to_check``): the pure
cases, then its verdict against the real keepalived's on the whole file."""

from __future__ import annotations

import random
import re
import subprocess

import pytest

from cartridge_agent_lvs.director.increment import Accepted, Outline, shape, to_check
from cartridge_agent_lvs.director.keepalived import Keepalived, ValidationError
from cartridge_agent_lvs.director.plan import plan
from cartridge_agent_lvs.director.render import render, render_checkers
from cartridge_agent_lvs.director.settings import load
from cartridge_agent_lvs.director.topology import parse_topology

from . import _stratos as st
from ._service import logged_calls, logged_keepalived, vrrp_interface

RS_RE = re.compile(r"real_server (\S+) (\d+) \{\s*weight (\d+)")


def text(members: dict, whole: bool = False, weights: dict = None, **settings) -> str:
    """A shard's file (or with *whole* the one file, VRRP part included) for
    ``{service: [member numbers]}``; *weights* ``{ip: weight}`` edits the output."""
    config = dict(vip_map=st.vip_map(sorted(members)),
                  interface=vrrp_interface() if whole else "lo", **settings)
    planned = plan(load(config), parse_topology(st.topology(members))).config
    out = (render if whole else render_checkers)(planned)
    for ip, weight in (weights or {}).items():
        out, n = re.subn(rf"(real_server {re.escape(ip)} \d+ \{{\n\s+weight )\d+",
                         rf"\g<1>{weight}", out)
        assert n == 1
    return out


def check(old: str, new: str):
    return to_check(Outline(old), Outline(new))


def shape_of(conf: str, i: int) -> str:
    """The :func:`shape` of block *i* of the first virtual server of *conf*."""
    return shape(Outline(conf).servers[0][i])


def servers(probe: str) -> list:
    return [(ip, int(w)) for ip, _, w in RS_RE.findall(probe)]


# -- pure -----------------------------------------------------------------------------

def test_outline_gives_back_the_text_it_cut():
    t = text({0: range(4), 1: range(2)}, whole=True)
    o = Outline(t)
    assert o.skeleton is not None and [len(s) for s in o.servers] == [4, 2]
    assert "".join([o.prelude] + [h + "\n".join(b) + "\n" + tail for h, b, tail in
                                   zip(o.heads, o.servers, o.tails)]) == t


def test_members_that_only_left_leave_nothing_to_check():
    assert check(text({0: range(5), 1: range(3)}), text({0: [0, 2, 4], 1: range(3)})) is None


def test_a_member_that_came_is_checked_alone_in_its_own_virtual_server():
    old, new = text({0: range(3), 1: range(3)}), text({0: range(3), 1: range(4)})
    probe = check(old, new)
    assert servers(probe) == [(st.member_ip(1, 3), 1)]
    assert probe.count("virtual_server ") == 1 and f"virtual_server {st.vip(1)} 80 {{" in probe
    assert "global_defs {" in probe and probe.endswith("}\n")
    assert Outline(probe).skeleton is not None


def test_one_file_keeps_its_vrrp_part_in_what_is_checked():
    old = text({0: range(2)}, whole=True)
    probe = check(old, text({0: range(3)}, whole=True))
    assert "vrrp_instance VI_IPV4 {" in probe and servers(probe) == [(st.member_ip(0, 2), 1)]


def test_a_weight_only_change_is_not_new_while_the_quorum_is_met():
    """A drain (weight 0) or a member back from one: keepalived checks a weight only
    for its range, and the quorum is compared here."""
    old = text({0: range(3)})
    drained = text({0: range(3)}, weights={st.member_ip(0, 1): 0})
    assert check(old, drained) is None
    assert check(drained, old) is None
    assert shape_of(old, 1) == shape_of(drained, 1)


def test_a_weight_keepalived_refuses_keeps_its_block_new():
    old = text({0: range(3)})
    for weight in ("2147483648", "-1", "1e3"):
        new = old.replace(f"{st.member_ip(0, 1)} 80 {{\n        weight 1",
                          f"{st.member_ip(0, 1)} 80 {{\n        weight {weight}")
        assert new != old and check(old, new) is not None, weight


def test_a_new_drained_block_is_checked_beside_an_accepted_one_that_keeps_the_quorum():
    old = text({0: range(2)})
    new = text({0: range(3)}, weights={st.member_ip(0, 2): 0})
    assert servers(check(old, new)) == [(st.member_ip(0, 0), 1), (st.member_ip(0, 2), 0)]


def test_the_last_member_drained_is_checked_as_the_whole_virtual_server_would_be():
    old = text({0: range(2)})
    new = text({0: range(2)}, weights={st.member_ip(0, 0): 0, st.member_ip(0, 1): 0})
    assert servers(check(old, new)) == [(st.member_ip(0, 0), 0), (st.member_ip(0, 1), 0)]


@pytest.mark.parametrize("old, new", [
    ({0: range(2)}, {0: range(2), 1: range(1)}),          # a virtual server came
    ({0: range(2), 1: range(1)}, {0: range(2)}),          # one went
], ids=["service-came", "service-went"])
def test_a_change_of_virtual_servers_checks_the_whole_file(old, new):
    t = text(new)
    assert check(text(old), t) is t


def test_a_changed_header_or_opening_part_checks_the_whole_file():
    old = text({0: range(2)})
    for new in (text({0: range(3)}, scheduler="wrr"), text({0: range(3)}, delay_loop=7),
                old.replace("router_id lvs_extension", "router_id other")):
        assert check(old, new) is new


def test_an_emptied_virtual_server_or_a_real_server_twice_checks_the_whole_file():
    old = text({0: range(2)})
    blocks = Outline(old).servers[0]
    emptied = old.replace(blocks[0] + "\n", "").replace(blocks[1] + "\n", "")
    assert Outline(emptied).skeleton is None and check(old, emptied) is emptied
    twice = old.replace(blocks[1], blocks[1].replace(" weight 1", " weight 2") + "\n"
                        + blocks[1])
    assert check(old, twice) is twice


def test_a_text_the_renderer_does_not_write_is_checked_whole():
    old = text({0: range(2)})
    for new in (old[:-3], old.replace("    real_server", "    # note\n    real_server", 1)):
        assert check(old, new) is new
    assert to_check(None, Outline(old)) is old


def remembered(*texts: str) -> Accepted:
    memory = Accepted()
    for t in texts:
        memory.add(Outline(t))
    return memory


def test_a_block_accepted_before_in_its_virtual_server_is_not_new():
    full, left = text({0: range(3), 1: range(3)}), text({0: range(3), 1: [0, 2]})
    back = full                                      # member 1 of svc1 comes back
    assert check(left, back) is not None             # the last file alone: new
    assert to_check(Outline(left), Outline(back), remembered(full, left)) is None
    # ... but only in the virtual server it was accepted in, under the same opening
    other = text({0: range(3), 1: [0, 2]}, delay_loop=7)
    assert remembered(full).known(Outline(other).prelude, Outline(other).heads[1]) \
        == remembered(full).known(Outline(full).prelude, Outline(other).heads[1]) == set()
    moved = Accepted()
    moved.add(Outline(full.replace("router_id lvs_extension", "router_id other")))
    assert to_check(Outline(left), Outline(back), moved) is not None


def test_members_that_left_until_only_drained_ones_stay_are_checked_whole():
    # svc0: member 0 at weight 1, member 1 drained; member 0 leaves -> the weights add
    # up to 0 < quorum 1, which keepalived warns about (a refusal)
    old = text({0: range(2)}, weights={st.member_ip(0, 1): 0})
    new = text({0: [1]}, weights={st.member_ip(0, 1): 0})
    assert to_check(Outline(old), Outline(new), remembered(old)) is new


def test_the_memory_keeps_live_blocks_and_a_bounded_number_of_others():
    memory = Accepted()
    big = text({0: range(Accepted.SLACK + 20)})
    memory.add(Outline(big))
    small = Outline(text({0: range(5)}))
    memory.add(small)
    memory.trim(small)                      # 1044 known > 2 * 5 + 1024: start over
    assert memory.known(small.prelude, small.heads[0]) == set(map(shape, small.servers[0]))
    memory.add(Outline(text({0: range(5), 1: range(2)})))
    assert len(memory) == 7
    memory.trim(small)                                  # svc1 left the file
    assert len(memory) == 5
    memory.trim(Outline(text({1: range(2)})))          # another opening part
    assert len(memory) == 0


# -- against the real keepalived ------------------------------------------------------

def accepted(tmp_path, conf: str) -> bool:
    path = tmp_path / "check.conf"
    path.write_text(conf)
    proc = subprocess.run(["keepalived", "-t", "-f", str(path)], capture_output=True,
                          text=True, timeout=120)
    return proc.returncode == 0 and not (proc.stdout + proc.stderr).strip()


BAD_BLOCKS = [
    lambda b: b.replace(" 80 {", " 81 {", 1),               # DR: ports must match
    lambda b: b.replace("weight 1", "weight 70000"),         # out of range
    lambda b: b.replace("connect_timeout", "connect_timeout_typo"),
    lambda b: b.replace("TCP_CHECK {", "TCP_CHECK {\n            bogus_keyword 1"),
]


@pytest.mark.keepalived
def test_its_verdict_is_keepalived_verdict_on_the_whole_file(tmp_path):
    """A walk of changes (members come and go, drain to weight 0, a block keepalived
    refuses, a service comes or goes): whenever the last file was accepted, keepalived accepts
    what :func:`to_check` returns (nothing counts as accepted) exactly when it
    accepts the whole new file."""
    rng = random.Random(14)
    members = {0: set(range(6)), 1: set(range(4))}
    drained: set = set()
    good = text({s: sorted(m) for s, m in members.items()})
    assert accepted(tmp_path, good)
    memory = remembered(good)           # every block accepted so far, as the writer's
    seen = {"nothing": 0, "part": 0, "whole": 0, "refused": 0}
    for step in range(48):
        s = rng.choice([0, 1])
        move = rng.choice(["leave", "come", "back", "drain", "undrain", "bad",
                           "drain-all", "service"])
        new_members = {k: set(v) for k, v in members.items()}
        new_drained = set(drained)
        if move == "leave" and len(new_members[s]) > 1:
            new_members[s].discard(rng.choice(sorted(new_members[s])))
        elif move == "back":                    # a member that left comes back
            gone = set(range(max(new_members[s] | {0}))) - new_members[s]
            if gone:
                new_members[s].add(rng.choice(sorted(gone)))
        elif move in ("come", "bad"):
            new_members[s].add(max(new_members[s] | {0}) + rng.randint(1, 3))
        elif move == "drain":
            new_drained.add(st.member_ip(s, rng.choice(sorted(new_members[s]))))
        elif move == "undrain" and new_drained:
            new_drained.discard(rng.choice(sorted(new_drained)))
        elif move == "drain-all":
            new_drained |= {st.member_ip(s, i) for i in new_members[s]}
        elif move == "service":                 # a service comes or goes
            if new_members.pop(2, None) is None:
                new_members[2] = {0, 1}
        live = {ip for k, v in new_members.items() for ip in map(
            lambda i, k=k: st.member_ip(k, i), v)}
        new = text({k: sorted(v) for k, v in new_members.items()},
                   weights={ip: 0 for ip in new_drained & live})
        if move == "bad":
            block = [b for b in Outline(new).servers[s] if b not in good]
            new = new.replace(block[0], rng.choice(BAD_BLOCKS)(block[0]))
        todo = to_check(Outline(good), Outline(new), memory)
        verdict = True if todo is None else accepted(tmp_path, todo)
        whole = accepted(tmp_path, new)
        assert verdict == whole, (step, move, todo)
        seen["nothing" if todo is None else "whole" if todo is new else "part"] += 1
        if whole:
            good, members, drained = new, new_members, new_drained & live
            memory.add(Outline(good))
            memory.trim(Outline(good))
        else:
            seen["refused"] += 1
    assert all(seen.values()), seen          # every kind of answer came up


# -- in the writer --------------------------------------------------------------------

@pytest.mark.keepalived
def test_the_writer_checks_the_whole_file_first_then_what_is_new(tmp_path):
    log = str(tmp_path / "calls")
    k = Keepalived(str(tmp_path / "keepalived.conf"),
                   binary=logged_keepalived(tmp_path, log, reject="weight 7"))

    def checked_since(n):
        return "\n".join(logged_calls(log + ".checked")[n:])
    first = text({0: range(3), 1: range(2)}, whole=True)
    assert k.write(first, recheck=False)                   # nothing accepted yet: all
    assert len(logged_calls(log)) == 1 and checked_since(0) == first.rstrip("\n")
    assert k.write(text({0: [0, 2], 1: range(2)}, whole=True), recheck=False)
    assert len(logged_calls(log)) == 1                     # members left: no -t
    n = len(logged_calls(log + ".checked"))
    came = text({0: [0, 2], 1: range(3)}, whole=True)
    assert k.write(came, recheck=False)
    assert len(logged_calls(log)) == 2
    assert servers(checked_since(n)) == [(st.member_ip(1, 2), 1)]
    # a new block keepalived refuses: nothing is written
    refused = text({0: [0, 2], 1: range(4)}, whole=True, weights={st.member_ip(1, 3): 7})
    with pytest.raises(ValidationError):
        k.write(refused, recheck=False)
    assert k.current() == came
    # recheck: the whole file, even with nothing new in it
    n = len(logged_calls(log + ".checked"))
    assert k.write(text({0: [0], 1: range(3)}, whole=True), recheck=True)
    assert checked_since(n).count("real_server ") == 4


def test_a_weight_that_is_not_a_number_is_left_to_keepalived_on_the_whole_file():
    old = text({0: range(2)})
    new = text({0: range(3)}).replace("weight 1", "weight x", 3)
    assert check(old, new) is new


@pytest.mark.keepalived
def test_blocks_checked_ahead_are_written_later_without_a_check(tmp_path):
    import time
    from cartridge_agent_lvs.director.topology import apply_event, prospective
    log = str(tmp_path / "calls")
    k = Keepalived(str(tmp_path / "keepalived.conf"),
                   binary=logged_keepalived(tmp_path, log), timeout=60)
    settings = load(dict(vip_map=st.vip_map([0, 1]), interface=vrrp_interface()))
    topology = parse_topology(st.topology({0: range(3), 1: range(2)}))
    assert k.vet(plan(settings, topology).config) == []     # no baseline yet
    assert k.write(render(plan(settings, topology).config), recheck=False)
    booting = apply_event(topology, "MemberInitializedEvent", st.member_event(1, 5))
    assert plan(settings, booting).config == plan(settings, topology).config
    ahead = plan(settings, prospective(booting)).config
    n = len(logged_calls(log + ".checked"))
    checks = k.vet(ahead)
    assert len(checks) == 1
    deadline = time.monotonic() + k.timeout + 5
    while checks[0].poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert checks[0].ok and len(logged_calls(log)) == 2
    assert servers("\n".join(logged_calls(log + ".checked")[n:])) == [
        (st.member_ip(1, 5), 1)]
    assert k.vet(ahead) == []                               # known now: nothing to check
    active = apply_event(booting, "MemberActivatedEvent", st.member_event(1, 5))
    assert k.write(render(plan(settings, active).config), recheck=False)
    assert len(logged_calls(log)) == 2                      # written without a -t
    assert not [n for n in (tmp_path).iterdir() if n.name.endswith(".conf.tmp")]


def test_prospective_activates_booting_members_only():
    from cartridge_agent_lvs.director.topology import apply_event, prospective
    topology = parse_topology(st.topology({0: range(2), 1: range(2)}))
    assert prospective(topology) is topology
    for event, i in (("MemberCreatedEvent", 4), ("MemberInitializedEvent", 5),
                     ("MemberStartedEvent", 6), ("MemberSuspendedEvent", 1)):
        topology = apply_event(topology, event, st.member_event(0, i))
    ahead = prospective(topology)
    assert {m.member_id: m.status for m in ahead.members("svc0")} == {
        st.member_id(0, 0): "Active", st.member_id(0, 1): "Suspended",
        st.member_id(0, 4): "Active", st.member_id(0, 5): "Active",
        st.member_id(0, 6): "Active"}
    assert ahead.services["svc1"] is topology.services["svc1"]


def _slow_keepalived(tmp_path) -> str:
    """A ``keepalived_bin`` that never answers in time (the check ahead must not wait
    on it forever, nor leave it or its file behind)."""
    path = tmp_path / "keepalived-slow"
    path.write_text("#!/bin/sh\nexec sleep 60\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_a_check_ahead_that_does_not_answer_is_stopped_and_cleaned_up(tmp_path, how):
    import time
    k = Keepalived(str(tmp_path / "keepalived.conf"), binary=_slow_keepalived(tmp_path),
                   timeout=0.5)
    old = text({0: range(2)}, whole=True)
    k.accepted(Outline(old))                      # as if written after a check
    checks = k.vet_text(text({0: range(3)}, whole=True))
    assert len(checks) == 1 and checks[0].poll() is None
    temps = [n for n in tmp_path.iterdir() if n.name.endswith(".conf.tmp")]
    assert len(temps) == 1
    if how == "timeout":
        deadline = time.monotonic() + 30
        while checks[0].poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    else:
        checks[0].cancel()
    assert checks[0].ok is False and checks[0].proc.poll() is not None
    assert not temps[0].exists()
    assert to_check(Outline(old), Outline(text({0: range(3)}, whole=True)),
                    k._accepted) is not None       # nothing was remembered
