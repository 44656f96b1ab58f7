"""What the plugin changed, kept in a small JSON file so cleanup undoes exactly that.

One file per network namespace (``state-host.json`` for the host) in the state
folder: ``$CARTRIDGE_AGENT_LVS_STATE_DIR``, else ``/var/lib/cartridge-agent-lvs``.
Written atomically (temporary file + rename, fsync) so a crash never leaves half a
record; the binder writes it *before* each change to the host (write-ahead), so a
crash at any point leaves a record that ``remove`` can undo.

The record is trusted only as far as it can be: the folder and the file must belong
to this user and be writable by no one else, and every field is validated (interface
names, addresses, the exact sysctls the plugin may touch) -- a planted file can never
make ``remove`` write an arbitrary path or delete an arbitrary link.
``lock()`` serialises applies and removes on one namespace.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import stat
import tempfile
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, Iterator, List, Optional

from ..addresses import check_ifname
from ..errors import HostError, InputError

DEFAULT_DIR = "/var/lib/cartridge-agent-lvs"
ENV_DIR = "CARTRIDGE_AGENT_LVS_STATE_DIR"


@dataclass
class State:
    interface: str
    mode: str                                   #: a :mod:`.modes` name
    created_link: bool = False
    #: "ADDRESS/PREFIXLEN" bound by us
    addresses: List[str] = field(default_factory=list)
    #: sysctl name -> its value before we first changed it
    sysctls: Dict[str, str] = field(default_factory=dict)
    #: "ADDRESS/PREFIXLEN IFNAME": a VIP the stock bash extension had bound with its
    #: subnet mask on a dummy link, taken off there (not put back by cleanup)
    adopted: List[str] = field(default_factory=list)

    #: the plugin brought the (existing) interface up: cleanup sets it down again
    brought_up: bool = False

    @property
    def empty(self) -> bool:
        return not (self.created_link or self.addresses or self.sysctls)

    def allowed_sysctls(self) -> set:
        """The only parameters the plugin ever changes."""
        from .modes import all_sysctl_keys
        return all_sysctl_keys(self.interface)


def _validate(data: object, path: str) -> State:
    """A :class:`State` from JSON *data*, every field checked."""
    def bad(what: str) -> HostError:
        return HostError(f"state file {path}: {what}; remove it after checking the host "
                         "by hand")
    names = {f.name for f in fields(State)}
    if not isinstance(data, dict) or not set(data) <= names or not \
            {"interface", "mode"} <= set(data):
        raise bad("not a record of this plugin")
    try:
        state = State(**data)
        check_ifname(state.interface, "interface")
    except (TypeError, InputError) as exc:
        raise bad(str(exc)) from None
    if state.mode not in ("dummy", "loopback", "tunnel") or not isinstance(state.created_link, bool) \
            or not isinstance(state.brought_up, bool):
        raise bad("mode/created_link/brought_up of the wrong kind")
    if not (isinstance(state.addresses, list) and isinstance(state.sysctls, dict)
            and isinstance(state.adopted, list)):
        raise bad("addresses/sysctls/adopted of the wrong kind")
    for entry in state.addresses + [str(a).split(" ")[0] for a in state.adopted]:
        try:
            address, _, plen = str(entry).partition("/")
            ip = ipaddress.ip_address(address)
            if not 0 < int(plen) <= ip.max_prefixlen:
                raise ValueError
        except ValueError:
            raise bad(f"address {entry!r}") from None
    allowed = state.allowed_sysctls()
    for key, value in state.sysctls.items():
        if key not in allowed or not isinstance(value, str) or not value.isdigit():
            raise bad(f"sysctl {key!r}={value!r} is not one this plugin sets")
    return state


class StateStore:
    def __init__(self, netns: Optional[str] = None, directory: Optional[str] = None) -> None:
        self.directory = directory or os.environ.get(ENV_DIR) or DEFAULT_DIR
        self.path = os.path.join(self.directory, f"state-{netns or 'host'}.json")

    def _check_owner(self, path: str, kind: str) -> None:
        """*path* (not followed if a link) must be ours and writable by no one else."""
        st = os.lstat(path)
        is_kind = stat.S_ISDIR(st.st_mode) if kind == "folder" else stat.S_ISREG(st.st_mode)
        if not is_kind:
            raise HostError(f"state {kind} {path} is not a plain {kind}: refusing it")
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise HostError(f"state {kind} {path} belongs to uid {st.st_uid} or is "
                            "writable by others: refusing to trust it")

    def _check_directory(self) -> bool:
        try:
            self._check_owner(self.directory, "folder")
        except FileNotFoundError:
            return False
        return True

    def load(self) -> Optional[State]:
        if not self._check_directory():
            return None
        try:
            self._check_owner(self.path, "file")
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise HostError(f"state file {self.path} is unreadable ({exc}); remove it "
                            "after checking the host by hand") from None
        return _validate(data, self.path)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One apply or remove at a time per namespace (``state-NS.lock``)."""
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            self._check_directory()
            fd = os.open(self.path[:-len(".json")] + ".lock",
                         os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise HostError(f"cannot lock {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def save(self, state: State) -> None:
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            self._check_directory()
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
