"""Install the plugin into a Stratos Python cartridge agent (PCA) home, and undo that.

``install(home)``:

* copies the shim ``LvsRealServer.py`` and its Yapsy descriptor into
  ``home/plugins`` (the agent loads every ``*.yapsy-plugin`` there);
* writes ``home/plugins/LvsRealServer.json``: the absolute path of this environment's
  ``cartridge-agent-lvs`` console script (the shim runs it with Python 3, since the
  agent's Python 2.7 cannot import this package), the child's timeout and an optional
  state folder;
* replaces the stock ``extensions/bash/CreateLVSDummyInterface.sh`` -- which the
  agent runs *before* the plugins and which binds ``VIP/NETMASK`` on ``dummy0`` with
  no ARP settings -- by an executable no-op that says the plugin does the work; the
  stock script is kept beside it as ``CreateLVSDummyInterface.sh.stock``.

Every step is idempotent; ``uninstall(home)`` puts the stock script back and removes
what ``install`` wrote (and nothing else).  Files are written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import List, Optional

from ..errors import InputError
from ..shipped import folder

SHIM = "LvsRealServer.py"
DESCRIPTOR = "LvsRealServer.yapsy-plugin"
CONFIG = "LvsRealServer.json"
EXTENSION = "CreateLVSDummyInterface.sh"
BACKUP_SUFFIX = ".stock"
SCRIPT = "cartridge-agent-lvs"
MARKER = "# installed by cartridge-agent-lvs install-pca"
NO_OP = f"""#!/bin/sh
{MARKER}
# The LvsRealServer plugin binds the LVS VIPs (as /32 or /128, with the ARP settings
# direct routing needs) and undoes it at cleanup; the stock script, which bound
# VIP/NETMASK on dummy0 without them, is kept as {EXTENSION}{BACKUP_SUFFIX}.
echo "CreateLVSDummyInterface: done by the LvsRealServer plugin (cartridge-agent-lvs)"
"""


def default_command() -> str:
    """This environment's console script (the one running now, or beside Python)."""
    beside = os.path.join(os.path.dirname(sys.executable), SCRIPT)
    return beside if os.access(beside, os.X_OK) else (shutil.which(SCRIPT) or beside)


class AgentHome:
    """The parts of a PCA home this installer touches."""

    def __init__(self, home: str) -> None:
        self.home = os.path.abspath(home)
        if not os.path.isdir(self.home):
            raise InputError("PCA_HOME", home, "not a directory")
        if not (os.path.isfile(os.path.join(self.home, "agent.py"))
                and os.path.isfile(os.path.join(self.home, "plugins", "contracts.py"))):
            raise InputError("PCA_HOME", home, "not a Stratos cartridge agent home (no "
                             "agent.py and plugins/contracts.py)")
        self.plugins = os.path.join(self.home, "plugins")
        self.extension = os.path.join(self.home, "extensions", "bash", EXTENSION)
        self.backup = self.extension + BACKUP_SUFFIX

    def path(self, name: str) -> str:
        return os.path.join(self.plugins, name)

    def extension_is_ours(self) -> bool:
        return MARKER in _read(self.extension)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _write(path: str, data: bytes, mode: int) -> bool:
    """Atomically make *path* hold *data* with *mode*; False when it already did."""
    try:
        with open(path, "rb") as f:
            if f.read() == data and (os.stat(path).st_mode & 0o777) == mode:
                return False
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=".cartridge-agent-lvs-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


def install(home: str, command: Optional[str] = None, timeout: float = 60.0,
            state_dir: Optional[str] = None) -> List[str]:
    """Install into *home*; the lines say what changed."""
    agent = AgentHome(home)
    command = os.path.abspath(command or default_command())
    if not (os.path.isfile(command) and os.access(command, os.X_OK)):
        raise InputError("--command", command, "not an executable file (the "
                         f"{SCRIPT} console script of the package's Python 3 environment)")
    if not 1 <= timeout <= 3600:
        raise InputError("--timeout", timeout, "must be between 1 and 3600 seconds")
    done: List[str] = []
    source = folder("pca_plugin")
    for name in (SHIM, DESCRIPTOR):
        if _write(agent.path(name), source.joinpath(name).read_bytes(), 0o644):
            done.append(f"wrote {agent.path(name)}")
    config = {"command": command, "timeout": timeout}
    if state_dir:
        config["state_dir"] = os.path.abspath(state_dir)
    if _write(agent.path(CONFIG), (json.dumps(config, indent=1, sort_keys=True) + "\n")
              .encode(), 0o644):
        done.append(f"wrote {agent.path(CONFIG)} (command {command})")
    if os.path.isdir(os.path.dirname(agent.extension)):
        if os.path.exists(agent.extension) and not agent.extension_is_ours():
            if os.path.exists(agent.backup):
                raise InputError(EXTENSION, agent.extension, "is not ours and a backup "
                                 f"{agent.backup} exists already: move one of them aside")
            os.rename(agent.extension, agent.backup)
            done.append(f"kept the stock {EXTENSION} as {agent.backup}")
        if _write(agent.extension, NO_OP.encode(), 0o755):
            done.append(f"wrote {agent.extension} (no-op: the plugin does the work)")
    return done or ["already installed: nothing to do"]


def uninstall(home: str) -> List[str]:
    """Put *home* back as it was before :func:`install`."""
    agent = AgentHome(home)
    done: List[str] = []
    for name in (SHIM, DESCRIPTOR, CONFIG):
        try:
            os.unlink(agent.path(name))
            done.append(f"removed {agent.path(name)}")
        except FileNotFoundError:
            pass
    if agent.extension_is_ours():
        if os.path.exists(agent.backup):
            os.replace(agent.backup, agent.extension)
            done.append(f"restored the stock {agent.extension}")
        else:
            os.unlink(agent.extension)
            done.append(f"removed {agent.extension}")
    return done or ["not installed: nothing to do"]
