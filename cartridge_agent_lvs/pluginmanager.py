"""The plugin manager: the built-in LVS plugin + third-party plugins, and the safe
dispatcher the agent shim and the CLI use.

Third-party plugins register under the setuptools entry-point group
``cartridge_agent_lvs.plugins``::

    [options.entry_points]
    cartridge_agent_lvs.plugins =
        myplugin = mypackage.myplugin

:func:`fire` calls every implementation of the event's hook on its own, in pluggy's
order (``tryfirst``, newest registered first, ``trylast``): one plugin's exception is
logged and listed in the :class:`Outcome` and the other plugins still run.  Nothing
ever propagates into the agent's event loop.  Hook wrappers are not supported here,
because a wrapper could let one plugin's failure stop the others.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Tuple

import pluggy

from . import PROJECT_NAME, hookspecs
from .errors import LvsError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "cartridge_agent_lvs.plugins"
BUILTIN = "lvs-realserver"

#: The Stratos agent's own event names -> hook name.  ``clean`` is how the agent hands
#: instance cleanup (``InstanceCleanupMemberEvent`` / ``...ClusterEvent`` on the broker)
#: to plugins; the broker names stay mapped for agents that pass them through.
EVENT_HOOKS = {
    "CreateLVSDummyInterface": "instance_started",
    "InstanceStartedEvent": "instance_started",
    "InstanceActivatedEvent": "instance_activated",
    "clean": "instance_cleanup",
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
    """What one event did: the hook called, each plugin's result, each failure."""

    event: str
    hook: Optional[str]
    #: (plugin name, what its implementation returned), None results left out
    results: List[Tuple[str, Any]] = field(default_factory=list)
    #: (plugin name, the exception it raised)
    failures: List[Tuple[str, BaseException]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def error(self) -> Optional[BaseException]:
        """The first failure (the CLI turns it into its exit status)."""
        return self.failures[0][1] if self.failures else None

    @property
    def reports(self) -> List[Any]:
        return [result for _, result in self.results]

    def lines(self) -> List[str]:
        """:meth:`result_lines`, then one line per failure."""
        return self.result_lines() + [failure_line(n, e) for n, e in self.failures]

    def result_lines(self) -> List[str]:
        """Every result as text lines, whatever the plugin returned: a report object
        with ``lines()``, a string, a list of strings ..."""
        out: List[str] = []
        for _, result in self.results:
            if hasattr(result, "lines"):
                out += [str(line) for line in result.lines()]
            elif isinstance(result, (list, tuple)):
                out += [str(item) for item in result]
            else:
                out.append(str(result))
        return out


def failure_line(plugin: str, exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"plugin {plugin} failed: {text}"


def get_plugin_manager(entry_points: bool = True) -> pluggy.PluginManager:
    """A new manager with the hook contract, the built-in plugin and (optionally) the
    plugins of the entry-point group."""
    from .realserver import plugin as builtin
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin, name=BUILTIN)
    if entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    pm.check_pending()
    return pm


@functools.lru_cache(maxsize=None)
def default_plugin_manager() -> pluggy.PluginManager:
    """The process's one manager (entry points are scanned once, not per event)."""
    return get_plugin_manager()


def fire(event: str, values: Mapping[str, Any], context: Optional[Context] = None,
         pm: Optional[pluggy.PluginManager] = None, log_errors: bool = True) -> Outcome:
    """Run every implementation of *event*'s hook; never raises.

    Failures are in ``Outcome.failures`` (and logged unless *log_errors* is false --
    the CLI prints them itself).
    """
    hook_name = EVENT_HOOKS.get(event)
    outcome = Outcome(event, hook_name)
    if hook_name is None:
        log.debug("no hook for event %s", event)
        return outcome
    kwargs = dict(values=dict(values, EVENT=event), context=context or Context(),
                  event=event)
    try:
        pm = pm or default_plugin_manager()
        impls = list(reversed(getattr(pm.hook, hook_name).get_hookimpls()))
    except Exception as exc:   # e.g. a third-party plugin that does not import
        impls = []
        outcome.failures.append(("plugin manager", exc))
    for impl in impls:
        try:
            if impl.hookwrapper or impl.wrapper:
                raise LvsError("hook wrappers are not supported")
            result = impl.function(**{name: kwargs[name] for name in impl.argnames})
        except Exception as exc:   # contained to this plugin
            outcome.failures.append((impl.plugin_name, exc))
            continue
        if result is not None:
            outcome.results.append((impl.plugin_name, result))
    if log_errors:
        for name, exc in outcome.failures:
            log.error("%s (%s): %s", hook_name, event, failure_line(name, exc),
                      exc_info=None if isinstance(exc, LvsError) else exc)
    return outcome
