"""The Stratos agent stand-in, driven from Python 3: shared by the namespace tests
(``test_pca.py``) and the kernel-VM scenario (``tests/e2e/guest/scenarios.py``).

No pytest here: the VM guest imports it too.
"""

from __future__ import annotations

import glob
import os
import selectors
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
STANDIN = os.path.join(HERE, "pca_standin.py")
#: Yapsy for Python 2.7, installed by scripts/bootstrap (pip --target)
PY2_SITE = os.path.join(REPO, ".cache", "py2")
#: the stock extension as the facts describe it (Stratos' source tree has it 644;
#: the cartridge base image makes it executable)
STOCK_EXTENSION = textwrap.dedent("""\
    #!/bin/bash
    modprobe dummy numdummies=1
    ifconfig dummy0 ${STRATOS_LVS_DUMMY_VIRTUAL_IP} netmask ${STRATOS_LVS_SUBNET_MASK}
    echo "update the dummy interface with ${STRATOS_LVS_DUMMY_VIRTUAL_IP}"
    """)
CONTRACTS = textwrap.dedent("""\
    from yapsy.IPlugin import IPlugin
    class ICartridgeAgentPlugin(IPlugin):
        def run_plugin(self, values):
            raise NotImplementedError
    """)
#: a plugin run is a Python 3 start + import + netlink: seconds at most, even on a
#: busy machine; the stand-in's answer to an event is awaited this long
EVENT_DEADLINE = 90


def find_python27() -> Optional[str]:
    """A Python 2.7 that imports Yapsy from :data:`PY2_SITE` (PATH, then pyenv)."""
    candidates = [shutil.which("python2.7")]
    try:
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout
        candidates += sorted(glob.glob(os.path.join(root.strip(), "versions", "2.7*",
                                                    "bin", "python")))
    except OSError:
        pass
    candidates += sorted(glob.glob("/root/.pyenv/versions/2.7*/bin/python"))
    env = dict(os.environ, PYTHONPATH=PY2_SITE)
    for path in filter(None, candidates):
        ok = subprocess.run([path, "-c", "import sys, yapsy; assert sys.version_info[:2] "
                             "== (2, 7)"], env=env, capture_output=True).returncode == 0
        if ok:
            return path
    return None


def make_pca_home(home: Path, payload: str) -> Path:
    """An agent home as the facts describe it: agent.py, plugins/contracts.py, the bash
    extensions (the stock CreateLVSDummyInterface.sh among them), the payload."""
    (home / "plugins").mkdir(parents=True)
    (home / "extensions" / "bash").mkdir(parents=True)
    (home / "agent.py").write_text("# the agent\n")
    (home / "plugins" / "__init__.py").write_text("")
    (home / "plugins" / "contracts.py").write_text(CONTRACTS)
    bash = home / "extensions" / "bash"
    (bash / "CreateLVSDummyInterface.sh").write_text(STOCK_EXTENSION)
    for event in ("InstanceStartedEvent", "InstanceActivatedEvent", "MemberTerminatedEvent",
                  "clean"):
        (bash / f"{event}.sh").write_text(f"#!/bin/bash\necho {event}\n")
    for script in bash.iterdir():
        script.chmod(0o755)
    (home / "launch-params").write_text(payload)
    return home


class Agent:
    """The stand-in agent in network namespace *netns*, alive across events like the
    real one."""

    def __init__(self, python27: str, netns: str, home: Path, **env: str) -> None:
        self.home = home
        environ = dict(os.environ, PYTHONPATH=PY2_SITE, **env)
        if "CARTRIDGE_AGENT_LVS_STATE_DIR" not in env:
            environ.pop("CARTRIDGE_AGENT_LVS_STATE_DIR", None)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, python27, STANDIN, str(home),
             str(home / "launch-params")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=environ, cwd=str(home))

    def fire(self, event: str) -> str:
        """Send one event; the stand-in's answer (``done EVENT``)."""
        self.proc.stdin.write(event + "\n")
        self.proc.stdin.flush()
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(EVENT_DEADLINE):
                raise TimeoutError(f"the agent stand-in did not answer {event} in "
                                   f"{EVENT_DEADLINE} s")
        return self.proc.stdout.readline().strip()

    def close(self) -> str:
        """End the agent; its log."""
        self.proc.stdin.close()
        self.proc.wait(EVENT_DEADLINE)
        if self.proc.returncode != 0:
            raise RuntimeError(f"agent stand-in exit {self.proc.returncode}: "
                               f"{self.proc.stderr.read()[-2000:]}")
        return self.log()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return (self.home / "agent.log").read_text()


def plugin_lines(log: str) -> list:
    """The shim's lines in the agent's log, one per event."""
    return [line for line in log.splitlines() if " LvsRealServer: " in line]


def errors(log: str) -> list:
    """ERROR lines and tracebacks -- but not Yapsy's DEBUG ones at plugin load, which
    it writes for every non-class name of every plugin module, the agent's own too."""
    bad, lines = [], log.splitlines()
    for i, line in enumerate(lines):
        if " ERROR " in line:
            bad.append(line)
        if line.startswith("Traceback") and "correct subclass tests failed" not in \
                lines[i - 1]:
            bad.append(lines[i - 1])
    return bad
