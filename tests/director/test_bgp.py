"""Mode bgp: settings, the pure decision and renderings, checked by the real binaries
(``keepalived -t``, ``bird -p``), and deterministic output across directors."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import replace

import pytest

from cartridge_agent_lvs.director import bgp
from cartridge_agent_lvs.director import settings as S
from cartridge_agent_lvs.director.drain import Drain
from cartridge_agent_lvs.director.guard import MassRemovalGuard
from cartridge_agent_lvs.director.keepalived import Keepalived
from cartridge_agent_lvs.director.plan import plan
from cartridge_agent_lvs.director.render import parse_rendered, render
from cartridge_agent_lvs.director.topology import parse_topology

from . import _stratos as st

VIP4, VIP6 = st.vip(0), st.vip(1)      # services svc0 and svc1
BGP = dict(mode="bgp", scheduler="mh", bgp_local_as="65001", bgp_router_id="10.0.0.11",
           bgp_peers="10.0.0.1 65000")


def settings(**overrides):
    values = dict(vip_map=st.vip_map([0, 1]), **BGP)
    values.update(overrides)
    return S.load(values)


def topology(members=(0, 1, 2), shuffle_seed=None):
    """svc0 and svc1 with these Active members; their member maps in a shuffled order."""
    doc = st.topology({0: members, 1: members})
    if shuffle_seed is not None:
        for service in doc["topology"]["serviceMap"].values():
            for cluster in service["clusterIdClusterMap"].values():
                items = list(cluster["memberMap"].items())
                random.Random(shuffle_seed).shuffle(items)
                cluster["memberMap"] = dict(items)
    return parse_topology(json.dumps(doc))


# -- settings -------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (dict(scheduler="rr"), "scheduler='rr': mode bgp needs scheduler mh"),
    (dict(bgp_peers=None), "bgp_peers=None: is mandatory with mode bgp"),
    (dict(bgp_local_as=None), "bgp_local_as=None: is mandatory with mode bgp"),
    (dict(bgp_router_id="10.0.0"), "must be an IPv4 address"),
    (dict(bgp_peers="10.0.0.1"), "must be 'IP AS' pairs"),
    (dict(bgp_peers="10.0.0.1 65000,10.0.0.1 65002"), "peer 10.0.0.1 named twice"),
    (dict(bgp_peers='10.0.0.1 65000";}'), "not an integer"),
    (dict(vip_map="web|fd00::40"), "no IPv6 peer to announce fd00::40 (web) to"),
    (dict(bgp_local_as="4294967296"), "must be 1-4294967295"),
    (dict(sync_interface="eth0"), "mode bgp runs no VRRP"),
    (dict(service_overrides={"svc0": {"scheduler": "wlc"}}),
     "[service svc0]: mode bgp needs scheduler mh"),
    (dict(bird_conf="/etc/bird/x y.conf"), "must not contain whitespace"),
])
def test_bad_bgp_settings_are_one_line_errors(change, message):
    with pytest.raises(S.SettingsError) as err:
        settings(**change)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_names_the_bad_setting_in_one_line_and_exits_2(tmp_path):
    topo = tmp_path / "t.json"
    topo.write_text(json.dumps(st.topology({})))
    proc = subprocess.run([sys.executable, "-m", "cartridge_agent_lvs.director.cli", "render",
                           "--topology", str(topo), "--vip-map", f"web|{VIP4}", "--mode", "bgp",
                           "--bgp-local-as", "65001", "--bgp-router-id", "10.0.0.11",
                           "--bgp-peers", "10.0.0.1 65000"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "lvs-extension: error: scheduler='rr': mode bgp needs scheduler mh: every director "
        "must send a flow to the same real server"]


# -- keepalived.conf ------------------------------------------------------------------

@pytest.mark.keepalived
def test_keepalived_accepts_the_bgp_mode_file_without_vrrp(tmp_path):
    config = plan(settings(), topology()).config
    text = render(config)
    assert "vrrp_instance" not in text and "lvs_sync_daemon" not in text
    blocks = text.split("virtual_server ")[1:]
    assert len(blocks) == 2
    for block in blocks:
        assert "    lb_algo mh\n    mh-port\n" in block
        assert block.count("inhibit_on_failure") == block.count("real_server ") == 3
    # the VRRP mode's file has neither
    vrrp = render(plan(settings(mode="vrrp"), topology()).config)
    assert "mh-port" not in vrrp and "inhibit_on_failure" not in vrrp
    Keepalived(str(tmp_path / "keepalived.conf")).validate(text)
    # read back as the guard's baseline after a restart
    back = parse_rendered(text)
    assert [vs.key for vs in back.virtual_servers] == [vs.key for vs in config.virtual_servers]


def _pipeline(settings_, topologies, start):
    """plan -> guard -> drain -> render for each (offset, topology); the texts."""
    guard = MassRemovalGuard(settings_.mass_removal_threshold, settings_.mass_removal_hold)
    drain = Drain(settings_.drain_seconds)
    texts = []
    for offset, topo in topologies:
        now = start + offset
        texts.append(render(drain.apply(guard.check(plan(settings_, topo).config, now).config,
                                        now)))
    return texts


def test_every_director_renders_the_same_bytes_for_the_same_topology():
    """Directors differ only in their BGP identity; their members arrive in another order
    and their clocks differ; the sequence (all up, one leaves and drains, the drain ends,
    most leave and the guard holds) renders byte-identical files on each."""
    one = settings(bgp_router_id="10.0.0.11", bgp_peers="10.0.0.1 65000")
    two = settings(bgp_router_id="10.0.0.12", bgp_peers="10.0.0.2 65010,fd00::2 65010",
                   bgp_local_as="65002", bird_conf="/tmp/other/bird.conf")
    full = (0, 1, 2)
    sequence = lambda seed: [(0, topology(full, seed)), (1, topology(full[:2], seed)),
                             (1 + one.drain_seconds, topology(full[:2], seed)),
                             (40, topology((), seed))]
    a = _pipeline(one, sequence(None), 1000.0)
    b = _pipeline(two, sequence(7), 5.5)
    assert a == b
    assert "weight 0" in a[1] and st.member_ip(0, 2) not in a[2]   # drained, then removed
    assert a[3] == a[2]                     # every member gone at once: held back


# -- the decision ---------------------------------------------------------------------

def _served():
    return plan(settings(), topology()).config


def _health(**overrides):
    served = _served()
    values = dict(stopping=False, withdrawn=False, keepalived=True,
                  kernel={vs.key: 3 for vs in served.virtual_servers},
                  local=frozenset({VIP4, VIP6}))
    values.update(overrides)
    return bgp.Health(**values)


def test_announced_only_while_every_condition_holds():
    served = _served()
    assert bgp.decide((VIP4, VIP6), served, _health()) == {VIP4: None, VIP6: None}
    for change, reason in ((dict(stopping=True), bgp.STOPPING),
                           (dict(withdrawn=True), bgp.WITHDRAWN),
                           (dict(keepalived=False), bgp.NO_KEEPALIVED),
                           (dict(kernel=None), bgp.NO_KERNEL),
                           (dict(sysctls=False), bgp.NO_SYSCTLS)):
        assert bgp.decide((VIP4, VIP6), served, _health(**change)) == {VIP4: reason,
                                                                       VIP6: reason}
    assert bgp.decide((VIP4, VIP6), served, _health(local=frozenset({VIP6}))) == {
        VIP4: bgp.NOT_LOCAL, VIP6: None}
    assert bgp.decide((VIP4, VIP6), None, _health()) == {VIP4: bgp.NO_SERVICE,
                                                         VIP6: bgp.NO_SERVICE}


def test_one_virtual_server_without_usable_real_server_withdraws_its_vip_only():
    served = _served()
    extra = replace(served.virtual_servers[0], port=443)
    served = replace(served, virtual_servers=served.virtual_servers + (extra,))
    kernel = {vs.key: 2 for vs in served.virtual_servers}
    kernel[(VIP4, 443, "TCP")] = 0          # every real server at weight 0 (inhibited)
    decision = bgp.decide((VIP4, VIP6), served, _health(kernel=kernel))
    assert decision == {VIP4: f"virtual server {VIP4}:443/TCP has no real server with "
                              "weight > 0 in the kernel", VIP6: None}
    del kernel[(VIP4, 443, "TCP")]          # not in the kernel at all
    assert bgp.decide((VIP4,), served, _health(kernel=kernel))[VIP4].startswith(
        f"virtual server {VIP4}:443/TCP")


# -- bird.conf ------------------------------------------------------------------------

@pytest.mark.bird
def test_bird_accepts_the_rendered_configuration(tmp_path):
    speaker = bgp.speaker_of(settings(bgp_peers="10.0.0.1 65000,fd00::1 65000"))
    VIP6 = "fd00::40"
    for announced in ((), (VIP4,), (VIP4, VIP6)):
        text = bgp.render_bird(speaker, announced)
        path = tmp_path / "bird.conf"
        path.write_text(text)
        proc = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        routes = [line.strip() for line in text.splitlines() if line.strip().startswith("route ")]
        assert routes == [f"route {v}/{32 if ':' not in v else 128} blackhole;" for v in announced]
    assert "bfd on;" in text and "multiplier 3;" in text and "min tx interval 300 ms;" in text
    assert bgp.render_bird(replace(speaker, bfd=False), ()).count("bfd") == 0
    # the order VIPs are given in does not matter
    assert bgp.render_bird(speaker, (VIP6, VIP4)) == bgp.render_bird(speaker, (VIP4, VIP6))


def test_every_bird_word_comes_from_a_validated_setting():
    """Peers are addresses and AS numbers, the router id an IPv4 address: a value that
    could carry BIRD syntax never parses."""
    for key, value in (("bgp_peers", '10.0.0.1 65000; export all'), ("bgp_router_id", "1.2.3.4;"),
                       ("bfd_interval_ms", "300 ms")):
        with pytest.raises(S.SettingsError):
            settings(**{key: value})
    # what parses is typed: an address and an int, whatever white space separated them
    assert settings(bgp_peers="10.0.0.1\n65000").bgp_peers == (("10.0.0.1", 65000),)
    assert bgp.peer_name("fd00::1") == "peer_fd00__1"
