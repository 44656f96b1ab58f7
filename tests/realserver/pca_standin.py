# -*- coding: utf-8 -*-
"""A stand-in for the Stratos Python cartridge agent's event loop, for Python 2.7.

Written from the facts in ``shared/reference/stratos.md`` (section 2), not from the
agent's code: it does what the agent does around plugins, no more.

* Plugins: Yapsy ``PluginManager`` over ``PCA_HOME/plugins``, category
  ``CartridgeAgentPlugin`` = ``plugins.contracts.ICartridgeAgentPlugin``; each
  plugin's descriptor Description is split on ``,`` WITHOUT stripping: each item is an
  event name.
* Payload: the launch-params file split on ``,``; each pair split on ``=`` and the
  value taken as the second item (so a value is cut at a second ``=``); ``null`` or
  empty means None; None values are dropped from ``values``.
* ``values`` = payload parameters + ``MB_IP``, ``APPLICATION_PATH``,
  ``PARAM_FILE_PATH`` + ``EVENT``; never a field of the event itself.
  ``CreateLVSDummyInterface`` adds ``LVS_DUMMY_VIRTUAL_IP`` / ``LVS_SUBNET_MASK`` from
  ``LVS_VIRTUAL_IP.split("|")`` -- a value without ``|`` raises IndexError and the
  agent dies (exit 3 here).
* Each event: first ``extensions/bash/<EVENT>.sh`` with every value exported as
  ``STRATOS_<KEY>`` (non-empty stderr is an error the agent logs with a traceback),
  then each plugin of the event in its own thread, joined.
* Logging: the root logger at DEBUG into ``PCA_HOME/agent.log``.

Protocol: event names on standard input, one per line; after each event the stand-in
prints ``done EVENT`` on standard output.  EOF ends it.
"""

import logging
import os
import subprocess
import sys
import threading
import traceback

from yapsy.PluginManager import PluginManager

HOME = os.path.abspath(sys.argv[1])
PAYLOAD = os.path.abspath(sys.argv[2])
sys.path.insert(0, HOME)
from plugins.contracts import ICartridgeAgentPlugin  # noqa: E402  (the agent home's)

logging.basicConfig(filename=os.path.join(HOME, "agent.log"), level=logging.DEBUG,
                    format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
log = logging.getLogger("standin.agent")


def read_payload(path):
    params = {}
    with open(path) as f:
        for pair in f.read().split(","):
            if pair.strip():
                parts = pair.strip().split("=")
                if len(parts) < 2:
                    continue
                value = parts[1]
                params[parts[0]] = None if value.strip().lower() in ("null", "") else value
    return params


def load_plugins():
    manager = PluginManager()
    manager.setCategoriesFilter({"CartridgeAgentPlugin": ICartridgeAgentPlugin})
    manager.setPluginPlaces([os.path.join(HOME, "plugins")])
    manager.collectPlugins()
    by_event = {}
    for info in manager.getPluginsOfCategory("CartridgeAgentPlugin"):
        manager.activatePluginByName(info.name)
        for event in info.description.split(","):
            if event.strip():
                by_event.setdefault(event, []).append(info)
    return by_event


def run_extension(event, values):
    script = os.path.join(HOME, "extensions", "bash", event + ".sh")
    env = dict(os.environ)
    env.update(("STRATOS_" + k, v) for k, v in values.items())
    try:
        proc = subprocess.Popen([script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env)
        out, err = proc.communicate()
        if err:
            raise RuntimeError("Extension execution failed for script %s: %s" % (event, err))
        log.debug("%s Extension executed. [output]: %s", event, out)
    except OSError as exc:
        log.warning("No extension was found for event %s: %s", event, exc)
    except Exception:
        log.exception("Error while executing extension for event %s", event)


def run_plugin(info, values):
    try:
        info.plugin_object.run_plugin(values)
    except Exception:
        log.exception("Error while executing plugin %s", info.name)


def fire(event, payload, plugins):
    values = {"MB_IP": "127.0.0.1", "APPLICATION_PATH": "/var/www",
              "PARAM_FILE_PATH": PAYLOAD}
    if event == "CreateLVSDummyInterface":
        vip = payload["LVS_VIRTUAL_IP"].split("|")
        values.update(LVS_DUMMY_VIRTUAL_IP=vip[0], LVS_SUBNET_MASK=vip[1])
    values.update(payload)
    values = dict((k, v) for k, v in values.items() if v is not None)
    values["EVENT"] = event
    log.debug("Executing extensions for [event] %s", event)
    run_extension(event, values)
    for info in plugins.get(event, []):
        log.debug("Executing plugin %s for event %s", info.name, event)
        thread = threading.Thread(target=run_plugin, args=(info, values))
        thread.start()
        thread.join()


def main():
    payload = read_payload(PAYLOAD)
    plugins = load_plugins()
    for line in iter(sys.stdin.readline, ""):
        event = line.strip()
        try:
            fire(event, payload, plugins)
        except IndexError:   # LVS_VIRTUAL_IP without '|': the agent dies here
            log.error("agent terminated: %s", traceback.format_exc())
            sys.stdout.write("died %s\n" % event)
            sys.stdout.flush()
            return 3
        sys.stdout.write("done %s\n" % event)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
