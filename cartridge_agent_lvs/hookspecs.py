"""The hook contract: the cartridge agent's lifecycle events, one hookspec each.

The Stratos Python cartridge agent (PCA) runs plugins on named events; the shim in
``plugins/`` and the ``cartridge-agent-lvs`` CLI translate each event into the hook
below (see :data:`cartridge_agent_lvs.pluginmanager.EVENT_HOOKS`).  Every hook is
called with keyword arguments:

``values``
    the dict the Stratos agent passes to plugins, as it passes it: every payload
    parameter under its raw name (``LVS_VIRTUAL_IP``, ``MEMBER_ID``, ``CLUSTER_ID``
    ...), plus ``MB_IP``, ``APPLICATION_PATH``, ``PARAM_FILE_PATH``, ``EVENT`` (the
    event name) and, on some events, ``TOPOLOGY_JSON``.  Keys whose value is None are
    absent.  **The event's own fields are never passed**: on a member event
    ``MEMBER_ID`` is this instance's id, not the id of the member the event is about.
    Read-only for hooks.
``context``
    a :class:`cartridge_agent_lvs.pluginmanager.Context`: where to act (``netns``:
    a network namespace name or None for the host) and where to keep state
    (``state_dir``).

A hook returns a short human-readable report -- an object with ``lines()``, a string,
a list of strings -- or None; the dispatcher turns each into log lines.  Every
implementation is called on its own: an exception in one plugin is logged, listed in
the outcome and does not stop the others, and nothing reaches the agent's event loop
(:func:`cartridge_agent_lvs.pluginmanager.fire`).

Events the real agent sends, in order, for one instance: ``CreateLVSDummyInterface``
(at agent start, only when the payload has ``LVS_VIRTUAL_IP``; before the topology),
``InstanceStartedEvent``, ``InstanceActivatedEvent``, and at the end ``clean`` (the
agent's name for instance cleanup).

Third-party plugins implement any subset of these hooks with
``@cartridge_agent_lvs.hookimpl`` and register under the entry-point group
``cartridge_agent_lvs.plugins``.
"""

from __future__ import annotations

import pluggy

from . import PROJECT_NAME

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


# -- instance lifecycle (this member) ----------------------------------------------

@hookspec
def instance_started(values, context):
    """The instance starts: set up what the member needs before it serves.

    Fired for ``CreateLVSDummyInterface`` (the PCA fires it first, when the payload
    has ``LVS_VIRTUAL_IP``) and for ``InstanceStartedEvent`` (after the member is
    initialised).  Both may arrive, and again after an agent restart: implementations
    must be idempotent.

    :param values: payload parameters + ``EVENT``.
    :param context: where to act.
    """


@hookspec
def instance_activated(values, context):
    """The member became Active (``InstanceActivatedEvent``): it now receives traffic.

    :param values: payload parameters + ``EVENT``.
    :param context: where to act.
    """


@hookspec
def instance_cleanup(values, context):
    """The member goes away: undo everything :func:`instance_started` did.

    Fired for ``clean``: the Stratos agent hands ``InstanceCleanupMemberEvent`` and
    ``InstanceCleanupClusterEvent`` of the broker to plugins under that one name (the
    broker names are mapped too, for agents that pass them through).  Never fired for
    ``MemberTerminatedEvent``: that event is about another member.  Must succeed when
    there is nothing to undo.

    :param values: payload parameters + ``EVENT``.
    :param context: where to act.
    """


# -- topology (other members, seen from this instance) ---------------------------

@hookspec
def member_event(event, values, context):
    """A topology member event: ``MemberActivatedEvent``, ``MemberSuspendedEvent``,
    ``MemberTerminatedEvent``, ``MemberMaintenanceModeEvent``,
    ``MemberReadyToShutdownEvent``, ``MemberInitializedEvent``,
    ``MemberStartedEvent``, ``MemberCreatedEvent``.

    The agent fires these for any member of the topology (cached as Initialized) and
    passes none of the event's fields: nothing in ``values`` says which member the
    event is about, so an implementation must never undo this instance's setup here.

    :param event: the event name.
    :param values: payload parameters + ``EVENT`` (this instance's ``MEMBER_ID``).
    :param context: where to act.
    """


@hookspec
def complete_topology(values, context):
    """``CompleteTopologyEvent``: the agent received the whole topology.

    :param values: payload parameters + ``EVENT`` (+ ``TOPOLOGY_JSON`` when the agent
        passes it).
    :param context: where to act.
    """
