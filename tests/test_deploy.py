"""The operator's production path: the systemd unit, its command line and config, the
example topology and message shipped for a director quick start.

systemd is not PID 1 on these machines (nor in the kernel VM), so the unit is checked
with ``systemd-analyze verify`` and its ``ExecStart`` is run as the process systemd
would start -- with the documented config file -- against a stand-in keepalived.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.director._feedutil import wait_for
from tests.director._service import FakeKeepalived, vrrp_interface

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "lvs-extension.service"
EXAMPLES = ROOT / "deploy" / "examples"
#: where README.rst's production steps put the package and the config
PREFIX = "/opt/cartridge-agent-lvs"
CONFIG = "/etc/lvs-extension/lvs-extension.conf"
VENV_SCRIPT = Path(sys.executable).parent / "lvs-extension"


def _exec_start() -> list:
    line = next(line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart="))
    return shlex.split(line[len("ExecStart="):])


def test_the_unit_runs_the_documented_install():
    argv = _exec_start()
    assert argv == [f"{PREFIX}/bin/lvs-extension", "run", "--config", CONFIG]
    readme = (ROOT / "README.rst").read_text()
    assert f"python3 -m venv {PREFIX}" in readme and CONFIG in readme


def test_systemd_analyze_verify_is_clean(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing")
        pytest.skip("systemd-analyze is missing")
    # the unit as shipped, but with this environment's console script standing in for
    # the one the production steps install under /opt (which the tests do not create)
    unit = tmp_path / "lvs-extension.service"
    unit.write_text(UNIT.read_text().replace(f"{PREFIX}/bin/lvs-extension", str(VENV_SCRIPT)))
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stderr


def test_the_units_command_follows_the_example_topology(tmp_path):
    """ExecStart with the shipped example config, its feed switched from the broker to
    the example topology file as the README's quick start does (flags override what the
    test must place elsewhere: the keepalived file, its pid file, the VRRP interface)."""
    config = tmp_path / "lvs-extension.conf"
    example = (ROOT / "deploy" / "lvs-extension.conf.example").read_text()
    assert "\nmqtt = " in example
    config.write_text(example.replace("\nmqtt = ", "\n# mqtt = "))
    conf = tmp_path / "keepalived.conf"
    fake = FakeKeepalived(str(tmp_path), str(conf))
    argv = [str(VENV_SCRIPT) if a.endswith("/lvs-extension") else str(config) if a == CONFIG
            else a for a in _exec_start()]
    proc = subprocess.Popen(argv + [
        "--topology-file", str(EXAMPLES / "topology.json"), "--keepalived-conf", str(conf),
        "--keepalived-pidfile", fake.pidfile, "--interface", vrrp_interface()],
        stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: conf.exists(), 30, "keepalived.conf written")
        fake.expect(1)
        text = conf.read_text()
        for member in ("10.0.1.11", "10.0.1.12", "10.0.1.21", "10.0.1.22"):
            assert f"real_server {member} 80" in text
        assert "10.0.1.13" not in text              # Starting, not Active
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        fake.stop()
    log = proc.stderr.read()
    assert "Traceback" not in log and "WARNING" not in log, log


def test_the_example_message_is_a_member_of_the_example_topology():
    event = json.loads((EXAMPLES / "MemberActivatedEvent.json").read_text())
    topo = json.loads((EXAMPLES / "topology.json").read_text())["topology"]
    cluster = topo["serviceMap"][event["serviceName"]]["clusterIdClusterMap"][event["clusterId"]]
    member = cluster["memberMap"][event["memberId"]]
    assert member["memberStateManager"]["stateStack"][-1] == "Starting"
    assert event["defaultPrivateIP"] == member["defaultPrivateIP"]


def test_an_installed_wheel_carries_what_its_commands_need(tmp_path):
    """``pip install`` (not the clone): the demo finds its sample payload and
    ``install-pca`` the shim -- both ship inside the package."""
    source = tmp_path / "src"       # a copy: the build leaves nothing in the clone
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".tox", ".cache", "build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("cartridge_agent_lvs-*.whl"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)
    home = tmp_path / "pca"
    (home / "plugins").mkdir(parents=True)
    (home / "agent.py").write_text("")
    (home / "plugins" / "contracts.py").write_text("")
    run = [sys.executable, "-c", "import sys; from cartridge_agent_lvs.realserver.cli import "
           "main; sys.exit(main(sys.argv[1:]))"]
    env = dict(os.environ, PYTHONPATH=str(site))
    demo = subprocess.run(run + ["demo"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert demo.returncode == 0, demo.stderr
    assert str(site) in demo.stdout and "bound 192.168.56.40/32" in demo.stdout
    install = subprocess.run(run + ["install-pca", str(home), "--command", str(VENV_SCRIPT)],
                             cwd=tmp_path, env=env, capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    assert (home / "plugins" / "LvsRealServer.py").read_bytes() == \
        (ROOT / "plugins" / "LvsRealServer.py").read_bytes()


SHARD_UNITS = {"keepalived-vrrp.service": 0, "keepalived-shard@.service": 7}


@pytest.mark.parametrize("name", sorted(SHARD_UNITS))
def test_the_sharded_layout_units_run_what_the_director_expects(name, tmp_path):
    """ExecStart (instance 07 for the template) is ``shards.keepalived_argv`` for the
    shipped paths -- the files lvs-extension writes, the pid files it signals -- and
    ``systemd-analyze verify`` is clean."""
    from cartridge_agent_lvs.director.shards import keepalived_argv
    unit = ROOT / "deploy" / name
    shard = SHARD_UNITS[name]
    line = next(line for line in unit.read_text().splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(line[len("ExecStart="):].replace("%i", f"{shard:02d}"))
    assert argv == keepalived_argv("/etc/keepalived/keepalived.conf", "/run/keepalived.pid",
                                   shard, binary="/usr/sbin/keepalived")
    tool = shutil.which("systemd-analyze")
    if tool is None or not os.path.exists("/usr/sbin/keepalived"):
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze or keepalived is missing")
        pytest.skip("systemd-analyze or keepalived is missing")
    target = tmp_path / (name.replace("@", f"@{shard:02d}") if shard else name)
    target.write_text(unit.read_text())
    proc = subprocess.run([tool, "verify", str(target)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stderr
