"""Kernel parameters through ``/proc/sys``, on the host or inside a network namespace.

``/proc/sys/net`` shows the network namespace of the calling *thread*: inside a
namespace, reads and writes run through :func:`.nsthread.run_in_netns`.
No ``sysctl`` process is spawned.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, Mapping, Optional, TypeVar

from ..errors import HostError
from .nsthread import run_in_netns

T = TypeVar("T")

PROC_SYS = "/proc/sys"


class Sysctl:
    def __init__(self, netns: Optional[str] = None, root: str = PROC_SYS) -> None:
        self.netns = netns
        self.root = root

    def _run(self, fn: Callable[[], T]) -> T:
        try:
            return run_in_netns(self.netns, fn)
        except FileNotFoundError:   # setns: the namespace is gone
            raise HostError(f"network namespace {self.netns!r} does not exist") from None

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def read_many(self, names: Iterable[str]) -> Dict[str, Optional[str]]:
        """name -> current value (None where the parameter does not exist)."""
        names = list(names)

        def read() -> Dict[str, Optional[str]]:
            out: Dict[str, Optional[str]] = {}
            for name in names:
                try:
                    with open(self._path(name)) as f:
                        out[name] = f.read().strip()
                except FileNotFoundError:
                    out[name] = None
            return out
        return self._run(read)

    def write_many(self, values: Mapping[str, str]) -> None:
        """Write in order; a failure names the parameter (earlier writes stay)."""
        items = list(values.items())

        def write() -> None:
            for name, value in items:
                try:
                    with open(self._path(name), "w") as f:
                        f.write(str(value))
                except OSError as exc:
                    raise HostError(f"cannot set {name.replace('/', '.')}={value}: "
                                    f"{exc.strerror}") from None
        self._run(write)
