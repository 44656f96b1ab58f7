"""The LVS real-server plugin: hook implementations (see :mod:`..hookspecs`).

Registered by :func:`cartridge_agent_lvs.pluginmanager.get_plugin_manager` as
``lvs-realserver``.  On instance start it binds the payload's VIPs (nothing when the
payload has no ``LVS_VIRTUAL_IP``); on instance cleanup (the agent's ``clean``) it undoes
exactly what it recorded.  It never acts on member events: the agent fires those for
*other* members of the topology, with this instance's own payload in ``values``.
Errors propagate to the dispatcher, which logs them and keeps the agent running.
"""

from __future__ import annotations

import logging

from .. import hookimpl
from ..payload import lvs_request
from .binder import Report, VipBinder
from .netlink import NetlinkHost
from .state import StateStore
from .sysctl import Sysctl

log = logging.getLogger(__name__)


def _binder(context, host: NetlinkHost, store: StateStore) -> VipBinder:
    return VipBinder(host, Sysctl(context.netns), store)


def setup(values, context) -> Report:
    request = lvs_request(values)          # validates everything before any change
    if request is None:
        return Report(notes=["LVS_VIRTUAL_IP not set: nothing to do"])
    store = StateStore(context.netns, context.state_dir)
    with store.lock(), NetlinkHost(context.netns) as host:
        report = _binder(context, host, store).apply(request)
    for line in report.lines():
        log.info("%s", line)
    return report


def cleanup(values, context) -> Report:
    store = StateStore(context.netns, context.state_dir)
    with store.lock(), NetlinkHost(context.netns) as host:
        report = _binder(context, host, store).remove()
    for line in report.lines():
        log.info("%s", line)
    return report


@hookimpl
def instance_started(values, context):
    return setup(values, context)


@hookimpl
def instance_cleanup(values, context):
    return cleanup(values, context)
