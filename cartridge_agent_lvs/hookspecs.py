"""The hook contract: the cartridge agent's lifecycle events, one hookspec each.

The Stratos Python cartridge agent (PCA) runs plugins on named events; the shim in
``plugins/`` and the ``cartridge-agent-lvs`` CLI translate each event into the hook
below (see :data:`cartridge_agent_lvs.pluginmanager.EVENT_HOOKS`).  Every hook is
called with keyword arguments:

``values``
    the dict the agent passes to plugins: every payload parameter (``LVS_VIRTUAL_IP``,
    ``MEMBER_ID``, ``CLUSTER_ID`` ...), plus ``EVENT`` (the event name) and the
    event's own fields.  Read-only for hooks.
``context``
    a :class:`cartridge_agent_lvs.pluginmanager.Context`: where to act (``netns``:
    a network namespace name or None for the host) and where to keep state
    (``state_dir``).

A hook returns a short human-readable report (or None); the caller collects them.
An exception in a hook is logged by the dispatcher and never reaches the agent's
event loop (:func:`cartridge_agent_lvs.pluginmanager.fire`).

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

    Fired for ``InstanceCleanupMemberEvent`` and ``InstanceCleanupClusterEvent``, and
    for ``MemberTerminatedEvent`` when the terminated member is this instance
    (``values["memberId"] == values["MEMBER_ID"]``).  Must succeed when there is
    nothing to undo.

    :param values: payload parameters + ``EVENT`` (+ the event's fields).
    :param context: where to act.
    """


# -- topology (other members, seen from this instance) ---------------------------

@hookspec
def member_event(event, values, context):
    """A topology member event: ``MemberActivatedEvent``, ``MemberSuspendedEvent``,
    ``MemberTerminatedEvent``, ``MemberMaintenanceModeEvent``,
    ``MemberReadyToShutdownEvent``, ``MemberInitializedEvent``,
    ``MemberStartedEvent``, ``MemberCreatedEvent``.

    :param event: the event name.
    :param values: payload parameters + ``EVENT`` + the event's fields (``serviceName``,
        ``clusterId``, ``memberId`` ...).
    :param context: where to act.
    """


@hookspec
def complete_topology(values, context):
    """``CompleteTopologyEvent``: the agent received the whole topology.

    :param values: payload parameters + ``EVENT`` (+ ``TOPOLOGY_JSON`` when the agent
        passes it).
    :param context: where to act.
    """
