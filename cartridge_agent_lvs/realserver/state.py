"""What the plugin changed, kept in a small JSON file so cleanup undoes exactly that.

One file per network namespace (``state-host.json`` for the host) in the state
folder: ``$CARTRIDGE_AGENT_LVS_STATE_DIR``, else ``/var/lib/cartridge-agent-lvs``.
Written atomically (temporary file + rename) so a crash never leaves half a record.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from ..errors import HostError

DEFAULT_DIR = "/var/lib/cartridge-agent-lvs"
ENV_DIR = "CARTRIDGE_AGENT_LVS_STATE_DIR"


@dataclass
class State:
    interface: str
    mode: str                                   #: "dummy" or "loopback"
    created_link: bool = False
    #: "ADDRESS/PREFIXLEN" bound by us
    addresses: List[str] = field(default_factory=list)
    #: sysctl name -> its value before we first changed it
    sysctls: Dict[str, str] = field(default_factory=dict)
    #: "ADDRESS/PREFIXLEN IFNAME": a VIP the stock bash extension had bound with its
    #: subnet mask on a dummy link, taken off there (not put back by cleanup)
    adopted: List[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.created_link or self.addresses or self.sysctls)


class StateStore:
    def __init__(self, netns: Optional[str] = None, directory: Optional[str] = None) -> None:
        self.directory = directory or os.environ.get(ENV_DIR) or DEFAULT_DIR
        self.path = os.path.join(self.directory, f"state-{netns or 'host'}.json")

    def load(self) -> Optional[State]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            return State(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            raise HostError(f"state file {self.path} is unreadable ({exc}); remove it "
                            "after checking the host by hand") from None

    def save(self, state: State) -> None:
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".state-", dir=self.directory)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(asdict(state), f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise HostError(f"cannot write state file {self.path}: {exc.strerror}") from None

    def delete(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
