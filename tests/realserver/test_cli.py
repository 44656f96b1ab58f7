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
    before = set(pyroute2_netns.listnetns())
    code, out, _ = cli(capsys, "demo")
    assert code == 0 and "verdict:    ready for LVS-DR" in out
    assert "== apply again (agent restart): a no-op" in out and "no change" in out
    assert set(pyroute2_netns.listnetns()) == before
