"""Stratos cartridge agent plugin: LVS direct routing on this real server.

Copy (or link) this file and ``LvsRealServer.yapsy-plugin`` into the agent's
``plugins/`` folder, with ``cartridge-agent-lvs`` pip-installed into the agent's
virtualenv.  The agent calls :meth:`LvsRealServer.run_plugin` for each event named in
the descriptor's Description; the event goes to the pluggy hooks of
``cartridge_agent_lvs`` (the same ones the ``cartridge-agent-lvs`` CLI fires).

Whatever happens, ``run_plugin`` returns: a failure is logged, never raised into the
agent's event loop.
"""

import logging

try:  # inside the Stratos agent
    from plugins.contracts import ICartridgeAgentPlugin
except ImportError:  # elsewhere (tests, other agents built on Yapsy)
    from yapsy.IPlugin import IPlugin as ICartridgeAgentPlugin

log = logging.getLogger("LvsRealServer")


class LvsRealServer(ICartridgeAgentPlugin):
    """Dispatches ``values["EVENT"]`` to the cartridge_agent_lvs hooks."""

    def run_plugin(self, values):
        event = (values or {}).get("EVENT", "")
        try:
            from cartridge_agent_lvs.pluginmanager import fire
            outcome = fire(event, values or {})
        except Exception:  # not even importable: log, never raise into the agent
            log.exception("LVS plugin could not run for %s", event)
            return
        if outcome.ok:
            for report in outcome.reports:
                for line in report.lines():
                    log.info("%s: %s", event, line)
        else:
            log.error("LVS plugin failed for %s: %s", event, outcome.error)
