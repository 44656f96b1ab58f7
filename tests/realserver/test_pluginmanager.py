"""The hook contract and the plugin manager: built-in plugin, entry-point plugins,
failures contained."""

from __future__ import annotations

import inspect
import sys
import textwrap

import pytest

from cartridge_agent_lvs import hookspecs
from cartridge_agent_lvs.pluginmanager import (ENTRY_POINT_GROUP, EVENT_HOOKS, Context, fire,
                                               get_plugin_manager)


def test_every_hook_is_documented_and_every_event_maps_to_a_hook():
    specs = {name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
             if hasattr(fn, "cartridge_agent_lvs_spec")}
    assert {"instance_started", "instance_activated", "instance_cleanup", "member_event",
            "complete_topology"} <= specs
    for name in specs:
        doc = getattr(hookspecs, name).__doc__
        assert doc and ":param values:" in doc and ":param context:" in doc, name
    assert set(EVENT_HOOKS.values()) <= specs


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """A real installed-distribution layout (dist-info + entry_points.txt) on sys.path."""
    (tmp_path / "lvs_audit.py").write_text(textwrap.dedent("""
        from cartridge_agent_lvs import hookimpl
        seen = []
        @hookimpl
        def instance_activated(values, context):
            seen.append(values["EVENT"])
            return "audited"
        @hookimpl
        def complete_topology(values, context):
            raise RuntimeError("audit plugin is broken")
        @hookimpl
        def instance_started(values, context):
            raise RuntimeError("audit cannot start")
        @hookimpl(trylast=True)
        def instance_cleanup(values, context):
            return None
    """))
    info = tmp_path / "lvs_audit-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lvs-audit\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\naudit = lvs_audit\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("lvs_audit", None)


def test_entry_point_plugins_are_loaded_and_called(third_party):
    pm = get_plugin_manager()
    assert pm.get_plugin("audit") is not None and pm.get_plugin("lvs-realserver")
    outcome = fire("InstanceActivatedEvent", {"MEMBER_ID": "m"}, Context(), pm)
    assert outcome.ok and outcome.reports == ["audited"]
    assert sys.modules["lvs_audit"].seen == ["InstanceActivatedEvent"]


def test_a_plugin_exception_is_contained(third_party, caplog):
    outcome = fire("CompleteTopologyEvent", {}, Context(), get_plugin_manager())
    assert not outcome.ok and "audit plugin is broken" in str(outcome.error)
    assert ("complete_topology (CompleteTopologyEvent): plugin audit failed: audit plugin "
            "is broken") in caplog.text


def test_a_failing_plugin_does_not_stop_the_builtin_one(third_party, mocker):
    """The third-party plugin runs first (registered last) and raises: the built-in
    plugin still binds, and the outcome lists the failure in one line."""
    setup = mocker.patch("cartridge_agent_lvs.realserver.plugin.setup",
                         return_value="bound")
    outcome = fire("InstanceStartedEvent", {"LVS_VIRTUAL_IP": "10.1.1.1"}, Context(),
                   get_plugin_manager())
    assert setup.call_count == 1
    assert outcome.results == [("lvs-realserver", "bound")]
    assert outcome.lines() == ["bound", "plugin audit failed: audit cannot start"]
    assert not outcome.ok


@pytest.mark.parametrize("returned, lines", [
    ("a string", ["a string"]), (None, []), (["one", 2], ["one", "2"]), (7, ["7"])])
def test_whatever_a_hook_returns_becomes_lines(returned, lines):
    import pluggy
    from cartridge_agent_lvs import hookimpl

    class Plugin:
        @hookimpl
        def instance_activated(self, values, context):
            return returned
    pm = pluggy.PluginManager("cartridge_agent_lvs")
    pm.add_hookspecs(hookspecs)
    pm.register(Plugin())
    outcome = fire("InstanceActivatedEvent", {}, pm=pm)
    assert outcome.ok and outcome.lines() == lines


def test_the_process_builds_one_plugin_manager():
    from cartridge_agent_lvs.pluginmanager import default_plugin_manager
    assert default_plugin_manager() is default_plugin_manager()


def test_agent_event_names():
    """The real agent's names: ``clean`` undoes; member events never do."""
    assert EVENT_HOOKS["clean"] == "instance_cleanup"
    assert EVENT_HOOKS["CreateLVSDummyInterface"] == EVENT_HOOKS["InstanceStartedEvent"] \
        == "instance_started"
    assert EVENT_HOOKS["MemberTerminatedEvent"] == "member_event"
    from cartridge_agent_lvs.realserver import plugin
    assert not hasattr(plugin, "member_event")


def test_unknown_events_do_nothing():
    outcome = fire("ArtifactUpdatedEvent", {"LVS_VIRTUAL_IP": "10.1.1.1"})
    assert outcome.ok and outcome.hook is None and outcome.reports == []


def test_no_vip_means_success_and_no_change():
    outcome = fire("InstanceStartedEvent", {"MEMBER_ID": "m", "LVS_VIRTUAL_IP": "null"},
                   Context(netns="never-opened"), get_plugin_manager(entry_points=False))
    assert outcome.ok
    assert outcome.reports[0].lines() == ["LVS_VIRTUAL_IP not set: nothing to do",
                                          "no change"]
