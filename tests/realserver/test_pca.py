"""The plugin inside the Stratos agent: Python 2.7, the agent's own events, install-pca.

The agent is played by ``pca_standin.py`` -- a stand-in event loop written from the
facts about the real agent (Yapsy over ``PCA_HOME/plugins``, raw ``values``, the bash
extension run first, ``clean`` for cleanup, member events with this instance's own
``MEMBER_ID``) -- run by a real Python 2.7 interpreter inside a throwaway network
namespace, as one long-lived process like the agent.  The shim hands each event to
this package's console script (Python 3).  The host state is read with iproute2 after
every event.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from cartridge_agent_lvs.realserver import cli, pca

from .conftest import addresses, snapshot, sysctls
from .pca_agent import (EVENT_DEADLINE, Agent, errors, find_python27, make_pca_home,
                        plugin_lines)

pytestmark = pytest.mark.netns

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
SCRIPT = os.path.join(os.path.dirname(sys.executable), "cartridge-agent-lvs")
VIP = "192.168.56.40"
PAYLOAD = ("APPLICATION_ID=shop,SERVICE_NAME=tomcat,CLUSTER_ID=tomcat.shop.domain,"
           "MEMBER_ID=tomcat.member-7,PORTS=8080,LB_CLUSTER_ID=null,TOKEN=c2VjcmV0==,"
           f"LVS_VIRTUAL_IP={VIP}|255.255.255.0\n")


@pytest.fixture(scope="module")
def python27():
    path = find_python27()
    if path is None:
        message = ("no Python 2.7 with Yapsy (python2.7 on PATH or under pyenv, Yapsy in "
                   ".cache/py2: scripts/bootstrap installs it)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def pca_home(tmp_path):
    return make_pca_home(tmp_path / "pca", PAYLOAD)


@pytest.fixture
def agent(python27, netns, pca_home):
    made = []

    def start():
        made.append(Agent(python27, netns, pca_home))
        return made[-1]
    yield start
    for a in made:
        a.kill()


def install(home, *extra):
    assert cli.main(["install-pca", str(home), "--command", SCRIPT, *extra]) == 0


def test_the_agent_start_sequence_binds_and_clean_restores(agent, netns, pca_home,
                                                          state_dir):
    before = snapshot(netns)
    install(pca_home, "--state-dir", state_dir)
    a = agent()
    assert a.fire("CreateLVSDummyInterface") == "done CreateLVSDummyInterface"
    bound = snapshot(netns)
    assert f"{VIP}/32" in addresses(netns)["lo"]      # the host kernel: lo fallback
    assert not [r for r in bound[1] if "192.168.56.0" in r]     # no /24 subnet route
    assert sysctls(netns)["net/ipv4/conf/all/arp_ignore"] == "1"
    assert sysctls(netns)["net/ipv4/conf/all/arp_announce"] == "2"
    for event in ("InstanceStartedEvent", "InstanceActivatedEvent",
                  "MemberTerminatedEvent"):       # another member's termination
        assert a.fire(event) == f"done {event}"
        assert snapshot(netns) == bound, event
    assert a.fire("clean") == "done clean"
    assert snapshot(netns) == before
    log = a.close()
    assert errors(log) == []
    lines = plugin_lines(log)
    assert [line.split(" LVS ")[1].split(" (")[0] for line in lines] == [
        "CreateLVSDummyInterface", "InstanceStartedEvent", "InstanceActivatedEvent", "clean"]
    assert "(instance_started, subprocess, " in lines[0] and f"bound {VIP}/32" in lines[0]
    assert f"removed {VIP}/32" in lines[-1]
    assert "Executing plugin LvsRealServer for event MemberTerminatedEvent" not in log
    # Yapsy logs a DEBUG traceback for every module name that is not a class: the shim
    # keeps its module down to the names every module has
    tried = {line.split("failed for: ")[1].split(" ")[0] for line in log.splitlines()
             if "correct subclass tests failed" in line and "LvsRealServer" in line}
    assert tried and all(name.startswith("__") for name in tried), tried


def test_after_an_agent_restart_clean_still_restores(agent, netns, pca_home, state_dir):
    """The record lives on disk: a new agent process undoes what the old one did."""
    before = snapshot(netns)
    install(pca_home, "--state-dir", state_dir)
    first = agent()
    first.fire("CreateLVSDummyInterface")
    first.close()
    second = agent()
    second.fire("CreateLVSDummyInterface")            # the agent starts again: no-op
    assert "no change" in plugin_lines(second.log())[-1]
    second.fire("clean")
    assert snapshot(netns) == before


def test_values_go_on_stdin_never_on_the_command_line(agent, pca_home, tmp_path):
    """A recording stand-in for the console script: argv, environment and stdin."""
    record = tmp_path / "record.json"
    fake = tmp_path / "fake-cartridge-agent-lvs"
    fake.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys
        json.dump({{"argv": sys.argv, "stdin": sys.stdin.read(),
                    "pythonpath": os.environ.get("PYTHONPATH")}}, open({str(record)!r}, "w"))
        print("a log line first")
        print(json.dumps({{"ok": True, "hook": "instance_started", "lines": ["fine"]}}))
        """))
    fake.chmod(0o755)
    install(pca_home)
    json_config = pca_home / "plugins" / pca.CONFIG
    json_config.write_text(json.dumps({"command": str(fake)}))
    a = agent()
    a.fire("CreateLVSDummyInterface")
    seen = json.loads(record.read_text())
    assert seen["argv"][1:] == ["agent-event"]
    assert "TOKEN" not in " ".join(seen["argv"]) and "c2VjcmV0" not in " ".join(seen["argv"])
    values = json.loads(seen["stdin"])
    assert values["TOKEN"] == "c2VjcmV0"            # the agent cut it at its second '='
    assert values["EVENT"] == "CreateLVSDummyInterface"
    assert values["LVS_DUMMY_VIRTUAL_IP"] == VIP and "LB_CLUSTER_ID" not in values
    assert seen["pythonpath"] is None               # the agent's Python 2 path is not passed
    assert "CreateLVSDummyInterface (instance_started, subprocess" in plugin_lines(a.log())[0]


def test_a_hanging_child_is_killed_and_the_agent_goes_on(agent, pca_home, tmp_path):
    hang = tmp_path / "hang"
    hang.write_text("#!/bin/sh\nexec sleep 600\n")
    hang.chmod(0o755)
    install(pca_home, "--timeout", "1")
    config = json.loads((pca_home / "plugins" / pca.CONFIG).read_text())
    (pca_home / "plugins" / pca.CONFIG).write_text(json.dumps(dict(config,
                                                                   command=str(hang))))
    a = agent()
    started = time.monotonic()
    assert a.fire("CreateLVSDummyInterface") == "done CreateLVSDummyInterface"
    assert time.monotonic() - started < EVENT_DEADLINE
    assert a.fire("clean") == "done clean"          # still alive
    lines = plugin_lines(a.close())
    assert "timed out after 1 s and was killed" in lines[0] and " ERROR " in lines[0]
    assert len(lines) == 2 and not [t for t in a.log().splitlines()
                                    if t.startswith("Traceback") and "LvsRealServer" in t]


def test_no_console_script_is_one_logged_line(agent, pca_home):
    install(pca_home)
    (pca_home / "plugins" / pca.CONFIG).write_text(json.dumps({"command": "/nonexistent"}))
    a = agent()
    a.fire("CreateLVSDummyInterface")
    lines = plugin_lines(a.close())
    assert len(lines) == 1 and "plugin could not run" in lines[0] and "/nonexistent" in lines[0]


def test_a_bad_payload_is_one_line_and_the_host_untouched(agent, netns, pca_home, state_dir):
    before = snapshot(netns)
    (pca_home / "launch-params").write_text("MEMBER_ID=m,LVS_VIRTUAL_IP=300.1.1.1|255.0.0.0")
    install(pca_home, "--state-dir", state_dir)
    a = agent()
    a.fire("CreateLVSDummyInterface")
    lines = plugin_lines(a.close())
    assert " ERROR " in lines[0] and "LVS_VIRTUAL_IP='300.1.1.1': not an IP" in lines[0]
    assert snapshot(netns) == before


def test_without_install_pca_the_stock_extension_runs_first(agent, pca_home, state_dir):
    """The facts: the agent runs extensions/bash/<EVENT>.sh before the plugins.  Here
    the host has no dummy driver and no ifconfig: the stock script writes to stderr,
    which the agent logs as an error -- install-pca's no-op replaces it."""
    install(pca_home, "--state-dir", state_dir)
    stock = pca_home / "extensions" / "bash" / "CreateLVSDummyInterface.sh.stock"
    os.replace(stock, pca_home / "extensions" / "bash" / "CreateLVSDummyInterface.sh")
    a = agent()
    a.fire("CreateLVSDummyInterface")
    log = a.close()
    assert any("Error while executing extension for event CreateLVSDummyInterface" in line
               for line in errors(log))
    assert "Extension execution failed for script CreateLVSDummyInterface" in log
    assert f"bound {VIP}/32" in plugin_lines(log)[0]    # the plugin ran all the same


# -- install-pca ------------------------------------------------------------------------

def _tree(home):
    out = {}
    for root, _, files in os.walk(home):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, home)] = (f.read(), stat.S_IMODE(
                    os.stat(path).st_mode))
    return out


def test_install_pca_is_idempotent_and_uninstall_puts_everything_back(pca_home, capsys):
    before = _tree(pca_home)
    install(pca_home)
    first = _tree(pca_home)
    extension = first["extensions/bash/CreateLVSDummyInterface.sh"]
    assert extension[1] == 0o755 and pca.MARKER.encode() in extension[0]
    assert first["extensions/bash/CreateLVSDummyInterface.sh.stock"] == \
        before["extensions/bash/CreateLVSDummyInterface.sh"]
    assert first["plugins/LvsRealServer.py"][0] == open(
        os.path.join(REPO, "plugins", "LvsRealServer.py"), "rb").read()
    assert json.loads(first["plugins/LvsRealServer.json"][0]) == {"command": SCRIPT,
                                                                  "timeout": 60.0}
    capsys.readouterr()
    install(pca_home)
    assert capsys.readouterr().out == "already installed: nothing to do\n"
    assert _tree(pca_home) == first
    assert cli.main(["install-pca", str(pca_home), "--uninstall"]) == 0
    assert _tree(pca_home) == before
    assert cli.main(["install-pca", str(pca_home), "--uninstall"]) == 0
    assert capsys.readouterr().out.endswith("not installed: nothing to do\n")


def test_the_no_op_extension_writes_nothing_to_stderr(pca_home):
    install(pca_home)
    proc = subprocess.run([str(pca_home / "extensions/bash/CreateLVSDummyInterface.sh")],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "" and "LvsRealServer" in proc.stdout


@pytest.mark.parametrize("setup, message", [
    (lambda home: home / "missing", "not a directory"),
    (lambda home: (home / "plugins" / "contracts.py").unlink() or home,
     "not a Stratos cartridge agent home"),
])
def test_install_pca_refuses_what_is_not_an_agent_home(pca_home, capsys, setup, message):
    target = setup(pca_home)
    before = _tree(pca_home)
    assert cli.main(["install-pca", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "PCA_HOME=" in err
    assert _tree(pca_home) == before


def test_install_pca_refuses_a_command_that_is_not_executable(pca_home, capsys, tmp_path):
    (tmp_path / "plain").write_text("")
    assert cli.main(["install-pca", str(pca_home), "--command", str(tmp_path / "plain")]) == 2
    assert "--command=" in capsys.readouterr().err


# -- what the shim is made of ------------------------------------------------------------

def test_the_shim_is_python_2_and_3(python27):
    for python in (python27, sys.executable):
        proc = subprocess.run([python, "-c", "import ast, sys; ast.parse(open(sys.argv[1])"
                               ".read())", os.path.join(REPO, "plugins", "LvsRealServer.py")],
                              capture_output=True, text=True)
        assert proc.returncode == 0, (python, proc.stderr)


def test_descriptor_events_are_the_agents_names_without_spaces():
    import configparser
    parser = configparser.ConfigParser()
    parser.read(os.path.join(REPO, "plugins", "LvsRealServer.yapsy-plugin"))
    events = parser["Documentation"]["Description"].split(",")
    assert events == [e.strip() for e in events]
    assert {"CreateLVSDummyInterface", "InstanceStartedEvent", "clean"} <= set(events)
    assert not [e for e in events if e.startswith("Member")]
