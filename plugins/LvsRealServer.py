# -*- coding: utf-8 -*-
"""Stratos cartridge agent plugin: LVS direct routing on this real server.

The Stratos Python cartridge agent is Python 2.7 code with no virtualenv; this
package needs Python 3.  So this file is written for both: it imports nothing that
Python 2.7 lacks, and it hands each event to ``cartridge_agent_lvs``

* in-process, when the agent's own interpreter can import ``cartridge_agent_lvs``
  (a Python 3 agent that has the package installed); otherwise
* to the package installed in its own Python 3 environment: the console script
  ``cartridge-agent-lvs agent-event`` runs as a child process, the agent's ``values``
  go to it as JSON on standard input (never on the command line, where payload
  secrets such as ``TOKEN`` would show in ``ps``), it answers with one JSON line, and
  it is killed after a timeout.

``cartridge-agent-lvs install-pca PCA_HOME`` copies this file and its descriptor into
``PCA_HOME/plugins`` and writes ``LvsRealServer.json`` beside them: where the console
script lives (``command``), the child's ``timeout`` in seconds and an optional
``state_dir``.  Without that file the environment variable
``CARTRIDGE_AGENT_LVS_COMMAND`` or ``cartridge-agent-lvs`` on ``PATH`` is used.

Whatever happens, ``run_plugin`` returns: every outcome is logged in one line per
event, nothing is raised into the agent's event loop.

Everything lives in the class: Yapsy tries every name of a plugin module as a plugin
class and logs a DEBUG traceback for each one that is not a class, so the module
holds nothing else.
"""

try:  # inside the Stratos agent
    from plugins.contracts import ICartridgeAgentPlugin
except ImportError:  # elsewhere (tests, other agents built on Yapsy)
    from yapsy.IPlugin import IPlugin as ICartridgeAgentPlugin


class LvsRealServer(ICartridgeAgentPlugin):
    """Hands ``values["EVENT"]`` to the cartridge_agent_lvs hooks."""

    CONFIG_FILE = "LvsRealServer.json"
    ENV_COMMAND = "CARTRIDGE_AGENT_LVS_COMMAND"
    SCRIPT = "cartridge-agent-lvs"
    DEFAULT_TIMEOUT = 60.0
    #: the child is a Python 3 program: the agent's Python 2 settings must not reach it
    SCRUBBED_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE")

    def run_plugin(self, values):
        import logging
        import time
        log = logging.getLogger("LvsRealServer")
        event = "?"
        started = time.time()
        try:
            values = dict(values or {})
            event = values.get("EVENT") or "?"
            config = self._config()
            answer = self._in_process(event, values, config)
            where = "in-process"
            if answer is None:
                answer = self._child(values, config)
                where = "subprocess"
            line = "LVS %s (%s, %s, %.2f s): %s" % (
                event, answer.get("hook") or "no hook", where, time.time() - started,
                "; ".join(answer.get("lines") or []) or "nothing to do")
            if answer.get("ok"):
                log.info(line)
            else:
                log.error(line)
        except Exception as exc:  # never raise into the agent's event loop
            log.error("LVS %s: plugin could not run: %s", event, exc)

    @classmethod
    def _config(cls):
        import json
        import os
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), cls.CONFIG_FILE)
        try:
            with open(path) as f:
                config = json.load(f)
        except (IOError, OSError):
            return {}
        if not isinstance(config, dict):
            raise ValueError("%s is not a JSON object" % path)
        return config

    @classmethod
    def _find_command(cls, config):
        import os
        command = config.get("command") or os.environ.get(cls.ENV_COMMAND)
        if command:
            return command
        for folder in os.environ.get("PATH", "").split(os.pathsep):
            candidate = os.path.join(folder, cls.SCRIPT)
            if folder and os.access(candidate, os.X_OK):
                return candidate
        raise RuntimeError("%s not found: run '%s install-pca PCA_HOME' from the package's "
                           "Python 3 environment" % (cls.SCRIPT, cls.SCRIPT))

    @staticmethod
    def _jsonable(values):
        """The agent's values as text -> text (Python 2 hands str/unicode/other)."""
        try:
            text = unicode  # noqa: F821 -- Python 2
        except NameError:
            text = str

        def as_text(value):
            if isinstance(value, bytes):
                return value.decode("utf-8", "replace")
            return value if isinstance(value, text) else text(value)
        return dict((as_text(k), as_text(v)) for k, v in values.items() if v is not None)

    @staticmethod
    def _in_process(event, values, config):
        """Fire the hooks here; None when this interpreter cannot import the package."""
        import logging
        try:
            from cartridge_agent_lvs.pluginmanager import Context, fire
        except Exception:  # Python 2, or the package is not installed here
            return None
        logging.getLogger("pyroute2").setLevel(logging.WARNING)
        outcome = fire(event, values, Context(state_dir=config.get("state_dir")),
                       log_errors=False)
        return {"ok": outcome.ok, "hook": outcome.hook, "lines": outcome.lines()}

    @classmethod
    def _child(cls, values, config):
        """Hand the event to the console script of the package's Python 3 environment."""
        import json
        import os
        import subprocess
        import threading
        argv = [cls._find_command(config), "agent-event"]
        if config.get("state_dir"):
            argv += ["--state-dir", config["state_dir"]]
        timeout = float(config.get("timeout") or cls.DEFAULT_TIMEOUT)
        env = dict((k, v) for k, v in os.environ.items() if k not in cls.SCRUBBED_ENV)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, close_fds=True, env=env)
        except OSError as exc:
            raise RuntimeError("cannot run %s: %s" % (argv[0], exc.strerror or exc))
        killed = []

        def kill():
            killed.append(True)
            proc.kill()
        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            out, err = proc.communicate(json.dumps(cls._jsonable(values)).encode("utf-8"))
        finally:
            timer.cancel()
        if killed:
            raise RuntimeError("%s timed out after %g s and was killed" % (argv[0], timeout))
        answer = out.decode("utf-8", "replace").strip().splitlines()
        try:
            return json.loads(answer[-1])
        except (IndexError, ValueError):
            detail = " ".join(err.decode("utf-8", "replace").split())[-300:]
            raise RuntimeError("%s exited %s without an answer%s" % (
                argv[0], proc.returncode, (": " + detail) if detail else ""))
