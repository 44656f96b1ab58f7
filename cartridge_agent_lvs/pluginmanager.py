"""The plugin manager: the built-in LVS plugin + third-party plugins, and the safe
dispatcher the agent shim and the CLI use.

Third-party plugins register under the setuptools entry-point group
``cartridge_agent_lvs.plugins``::

    [options.entry_points]
    cartridge_agent_lvs.plugins =
        myplugin = mypackage.myplugin

A plugin's exception is logged and reported in the :class:`Outcome`; it never
propagates into the agent's event loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional

import pluggy

from . import PROJECT_NAME, hookspecs
from .errors import LvsError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "cartridge_agent_lvs.plugins"

#: Stratos agent event name -> hook name
EVENT_HOOKS = {
    "CreateLVSDummyInterface": "instance_started",
    "InstanceStartedEvent": "instance_started",
    "InstanceActivatedEvent": "instance_activated",
    "InstanceCleanupMemberEvent": "instance_cleanup",
    "InstanceCleanupClusterEvent": "instance_cleanup",
    "CompleteTopologyEvent": "complete_topology",
    **{name: "member_event" for name in (
        "MemberCreatedEvent", "MemberInitializedEvent", "MemberStartedEvent",
        "MemberActivatedEvent", "MemberSuspendedEvent", "MemberTerminatedEvent",
        "MemberMaintenanceModeEvent", "MemberReadyToShutdownEvent")},
}


@dataclass(frozen=True)
class Context:
    """Where hooks act: a network namespace (None = the host) and the state folder."""

    netns: Optional[str] = None
    state_dir: Optional[str] = None


@dataclass
class Outcome:
    event: str
    hook: Optional[str]
    reports: List[Any] = field(default_factory=list)
    error: Optional[BaseException] = None

    @property
    def ok(self) -> bool:
        return self.error is None


def get_plugin_manager(entry_points: bool = True) -> pluggy.PluginManager:
    """A manager with the hook contract, the built-in plugin and (optionally) the
    plugins of the entry-point group."""
    from .realserver import plugin as builtin
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin, name="lvs-realserver")
    if entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    pm.check_pending()
    return pm


def fire(event: str, values: Mapping[str, Any], context: Optional[Context] = None,
         pm: Optional[pluggy.PluginManager] = None, log_errors: bool = True) -> Outcome:
    """Run the hook for *event*; never raises (a failure is in ``Outcome.error``,
    and logged unless *log_errors* is false -- the CLI prints it itself)."""
    hook_name = EVENT_HOOKS.get(event)
    outcome = Outcome(event, hook_name)
    if hook_name is None:
        log.debug("no hook for event %s", event)
        return outcome
    values = dict(values, EVENT=event)
    kwargs = dict(values=values, context=context or Context())
    if hook_name == "member_event":
        kwargs["event"] = event
    try:
        pm = pm or get_plugin_manager()
        outcome.reports = [r for r in getattr(pm.hook, hook_name)(**kwargs) if r]
    except Exception as exc:   # a plugin must never crash the agent
        outcome.error = exc
        if log_errors:
            log.error("%s (%s) failed: %s", hook_name, event, exc,
                      exc_info=not isinstance(exc, LvsError))
    return outcome
