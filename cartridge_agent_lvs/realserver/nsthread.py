"""Run a function inside a network namespace without moving the caller's thread.

``/proc/sys/net`` follows the calling *thread's* namespace, and a socket stays bound to
the namespace it was created in.  So work that must happen "inside" a namespace runs in
a short-lived thread that first joins it (``pyroute2.netns.setns``) and then dies: no
thread that outlives the call ever changes namespace.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional, TypeVar

T = TypeVar("T")


def run_in_netns(netns: Optional[str], fn: Callable[[], T]) -> T:
    """``fn()`` inside *netns* (None: here); its exception is re-raised here.

    A missing namespace raises ``FileNotFoundError``.
    """
    if not netns:
        return fn()
    box: dict = {}

    def target() -> None:
        try:
            from pyroute2 import netns as pyroute2_netns
            pyroute2_netns.setns(netns, flags=0)
            box["value"] = fn()
        except BaseException as exc:   # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
