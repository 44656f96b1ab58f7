"""The Stratos agent's way in: Yapsy loads plugins/, run_plugin fires the hooks.

The Yapsy run happens in a child process started inside the test namespace with
``ip netns exec`` -- as the agent would run on a real server -- and the result is
observed from outside with iproute2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from .conftest import addresses, snapshot, sysctls

pytestmark = pytest.mark.netns

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# What the Stratos agent does (plugin folder + contract class + Yapsy manager); the
# contract module stands in for the agent's own plugins/contracts.py.
AGENT = textwrap.dedent("""
    import json, sys
    from yapsy.PluginManager import PluginManager
    from plugins.contracts import ICartridgeAgentPlugin
    manager = PluginManager()
    manager.setPluginPlaces([sys.argv[1]])
    manager.setCategoriesFilter({"CartridgeAgentPlugin": ICartridgeAgentPlugin})
    manager.collectPlugins()
    plugins = manager.getPluginsOfCategory("CartridgeAgentPlugin")
    events = [e.strip() for p in plugins for e in p.description.split(",")]
    values = json.loads(sys.argv[2])
    for plugin in plugins:
        if values["EVENT"] in events:
            plugin.plugin_object.run_plugin(values)
    print(json.dumps({"names": [p.name for p in plugins], "events": events}))
""")

CONTRACTS = textwrap.dedent("""
    from yapsy.IPlugin import IPlugin
    class ICartridgeAgentPlugin(IPlugin):
        def run_plugin(self, values):
            raise NotImplementedError
""")


@pytest.fixture
def agent_home(tmp_path):
    home = tmp_path / "pca"
    (home / "plugins").mkdir(parents=True)
    (home / "plugins" / "__init__.py").write_text("")
    (home / "plugins" / "contracts.py").write_text(CONTRACTS)
    for name in ("LvsRealServer.yapsy-plugin", "LvsRealServer.py"):
        shutil.copy(os.path.join(REPO, "plugins", name), home / "plugins" / name)
    return home


def run_agent(netns, home, state_dir, **values):
    import json
    env = dict(os.environ, PYTHONPATH=str(home), CARTRIDGE_AGENT_LVS_STATE_DIR=state_dir)
    proc = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", AGENT,
                           str(home / "plugins"), json.dumps(values)],
                          capture_output=True, text=True, env=env, cwd=str(home), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_yapsy_loads_the_plugin_and_events_bind_and_unbind(netns, agent_home, state_dir):
    before = snapshot(netns)
    payload = dict(MEMBER_ID="tomcat.member-7", LVS_VIRTUAL_IP="192.168.56.40|255.255.255.0")
    info, _ = run_agent(netns, agent_home, state_dir, EVENT="CreateLVSDummyInterface",
                        **payload)
    assert info["names"] == ["LvsRealServer"]
    assert {"CreateLVSDummyInterface", "InstanceStartedEvent",
            "InstanceCleanupMemberEvent", "MemberTerminatedEvent"} <= set(info["events"])
    assert "192.168.56.40/32" in addresses(netns)["lo"]
    assert sysctls(netns)["net/ipv4/conf/all/arp_ignore"] == "1"
    run_agent(netns, agent_home, state_dir, EVENT="InstanceStartedEvent", **payload)
    # another member's termination is not ours
    run_agent(netns, agent_home, state_dir, EVENT="MemberTerminatedEvent",
              memberId="tomcat.member-8", **payload)
    assert "192.168.56.40/32" in addresses(netns)["lo"]
    run_agent(netns, agent_home, state_dir, EVENT="MemberTerminatedEvent",
              memberId="tomcat.member-7", **payload)
    assert snapshot(netns) == before


def test_a_failing_plugin_never_breaks_the_agent(netns, agent_home, state_dir):
    before = snapshot(netns)
    _, log = run_agent(netns, agent_home, state_dir, EVENT="InstanceStartedEvent",
                       LVS_VIRTUAL_IP="192.168.56.40;300.1.1.1")
    assert "LVS plugin failed for InstanceStartedEvent" in log and "300.1.1.1" in log
    assert snapshot(netns) == before
