"""``cartridge-agent-lvs`` verbs in real namespaces: exit codes, one-line errors."""

from __future__ import annotations

import json
import os

import pytest
from pyroute2 import netns as pyroute2_netns

from cartridge_agent_lvs.realserver.cli import main

from .conftest import addresses, snapshot

pytestmark = pytest.mark.netns

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "payload_samples")


def sample(name: str) -> str:
    return os.path.join(SAMPLES, name)


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_apply_status_remove(capsys, netns, state_dir):
    before = snapshot(netns)
    where = ("--netns", netns, "--state-dir", state_dir)
    code, out, _ = cli(capsys, "apply", "--payload", sample("several-vips.launch-params"),
                       *where)
    assert code == 0 and "bound 192.168.56.42/32 on lo" in out
    code, out, _ = cli(capsys, "status", "--json", *where)
    status = json.loads(out)
    assert code == 0 and status["ready"] and status["interface"] == "lo"
    assert status["vips"] == ["192.168.56.40/32", "192.168.56.41/32", "192.168.56.42/32"]
    assert status["effective"] == {"arp_ignore": 1, "arp_announce": 2}
    code, out, _ = cli(capsys, "status", *where)
    assert "verdict:    ready for LVS-DR" in out
    code, out, _ = cli(capsys, "remove", *where)
    assert code == 0 and "restored net.ipv4.conf.all.arp_ignore=0" in out
    assert snapshot(netns) == before
    code, out, _ = cli(capsys, "status", "--json", *where)
    assert not json.loads(out)["ready"]


def test_no_vip_payload_is_success(capsys, netns, state_dir):
    before = snapshot(netns)
    code, out, _ = cli(capsys, "apply", "--payload", sample("no-vip.launch-params"),
                       "--netns", netns, "--state-dir", state_dir)
    assert code == 0 and "nothing to do" in out and snapshot(netns) == before


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(SAMPLES, "malformed"))))
def test_malformed_payload_exit_2_one_line_host_untouched(capsys, netns, state_dir, name):
    before = snapshot(netns)
    code, out, err = cli(capsys, "apply", "--payload", sample(f"malformed/{name}"),
                         "--netns", netns, "--state-dir", state_dir)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "Traceback" not in err and ("LVS_" in err)
    assert snapshot(netns) == before


def test_vip_bound_elsewhere_exit_1(capsys, netns, state_dir):
    import subprocess
    subprocess.run(["ip", "-n", netns, "link", "add", "eth9", "type", "veth", "peer", "name",
                    "eth9p"], check=True)
    subprocess.run(["ip", "-n", netns, "addr", "add", "192.168.56.41/24", "dev", "eth9"],
                   check=True)
    code, _, err = cli(capsys, "apply", "--payload", sample("several-vips.launch-params"),
                       "--netns", netns, "--state-dir", state_dir)
    assert code == 1 and "192.168.56.41 is already bound on eth9" in err
    assert "192.168.56.40/32" not in addresses(netns)["lo"]


def test_missing_namespace_and_payload_are_one_line_errors(capsys, state_dir):
    code, _, err = cli(capsys, "status", "--netns", "lvs-no-such-ns")
    assert code == 2 and err.count("\n") == 1 and "no such network namespace" in err
    code, _, err = cli(capsys, "apply", "--payload", "/nonexistent/launch-params")
    assert code == 2 and err.count("\n") == 1 and "cannot read" in err


def test_demo_cleans_up_its_namespace(capsys):
    # the demo's own namespace only: other test runs on this machine make theirs
    mine = f"lvs-demo-{os.getpid()}"
    assert mine not in pyroute2_netns.listnetns()
    code, out, _ = cli(capsys, "demo")
    assert code == 0 and "verdict:    ready for LVS-DR" in out
    assert "== apply again (agent restart): a no-op" in out and "no change" in out
    assert f"== throwaway network namespace {mine};" in out
    assert f"== namespace {mine} deleted" in out
    assert mine not in pyroute2_netns.listnetns()


# -- what the Stratos agent itself can take ------------------------------------------------

@pytest.mark.parametrize("name, code", [("single-vip-netmask.launch-params", 0),
                                        ("ipv6.launch-params", 1),
                                        ("loopback-mode.launch-params", None)])
def test_check_warns_about_payloads_the_stratos_agent_crashes_on(capsys, name, code):
    with open(sample(name)) as f:
        vip = f.read().split("LVS_VIRTUAL_IP=")[1].split(",")[0].strip()
    expected = 0 if "|" in vip else 1
    assert code in (None, expected)
    got, out, err = cli(capsys, "check", "--payload", sample(name))
    assert got == expected and "VIP(s)" in out
    if expected:
        assert err.count("\n") == 1 and "LVS_VIRTUAL_IP=" in err and "'|'" in err
    else:
        assert err == ""


def test_check_of_a_malformed_payload_is_one_line_exit_2(capsys):
    code, out, err = cli(capsys, "check", "--payload", sample("malformed/bad-octet.launch-params"))
    assert code == 2 and out == "" and err.count("\n") == 1 and "LVS_VIRTUAL_IP=" in err


def test_apply_warns_but_applies_a_form_only_the_agent_cannot_take(capsys, netns, state_dir):
    code, out, err = cli(capsys, "apply", "--payload", sample("ipv6.launch-params"),
                         "--netns", netns, "--state-dir", state_dir)
    assert code == 0 and "bound fd99::100/128" in out
    assert "warning: LVS_VIRTUAL_IP=" in err and "Stratos agent" in err


def test_agent_event_answers_one_json_line(capsys, monkeypatch, netns, state_dir):
    import io
    before = snapshot(netns)
    values = {"EVENT": "InstanceStartedEvent", "LVS_VIRTUAL_IP": "192.168.56.40|255.255.255.0"}
    for stdin, ok in ((json.dumps(values), True), ("not json", False), ("[1]", False),
                      (json.dumps(dict(values, LVS_VIRTUAL_IP="300.1.1.1")), False),
                      (json.dumps({"EVENT": "clean"}), True)):
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
        code, out, err = cli(capsys, "agent-event", "--netns", netns, "--state-dir",
                             state_dir)
        answer = json.loads(out)
        assert out.count("\n") == 1 and answer["ok"] is ok and code == (0 if ok else 1)
        assert answer["lines"] and "Traceback" not in err
        if stdin.startswith('{"EVENT": "InstanceStartedEvent", "LVS_VIRTUAL_IP": "192'):
            assert "192.168.56.40/32" in addresses(netns)["lo"]
    assert snapshot(netns) == before


def test_status_writes_node_exporter_textfile(capsys, netns, state_dir, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families
    prom = tmp_path / "lvs.prom"
    where = ("--netns", netns, "--state-dir", state_dir)
    cli(capsys, "apply", "--payload", sample("several-vips.launch-params"), *where)
    assert cli(capsys, "status", "--prometheus", str(prom), *where)[0] == 0
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(prom.read_text()) for s in f.samples}
    assert samples[("cartridge_agent_lvs_ready", (("interface", "lo"), ("mode", "loopback")))] == 1
    assert samples[("cartridge_agent_lvs_problems", ())] == 0
    assert samples[("cartridge_agent_lvs_vip", (("interface", "lo"),
                                                ("vip", "192.168.56.41/32")))] == 1
    assert samples[("cartridge_agent_lvs_sysctl",
                    (("name", "net.ipv4.conf.all.arp_ignore"),))] == 1
    cli(capsys, "remove", *where)
    cli(capsys, "status", "--prometheus", str(prom), *where)
    text = prom.read_text()
    assert "cartridge_agent_lvs_ready{" in text and "} 0.0" in text.split("_ready{")[1][:80]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lvs.prom", "state"]  # no temp left
