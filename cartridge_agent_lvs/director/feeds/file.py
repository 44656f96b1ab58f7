"""Follow a topology file: re-read it when it changes and on SIGHUP.

The file holds a CompleteTopologyEvent or a bare topology object (JSON).  It is polled
(``os.stat``: inode, device, size, mtime) rather than watched with inotify, which
also works for files replaced by rename, on network file systems and in containers.
A file that cannot be read is reported once; the last good topology stays applied
(the loop rejects a file that does not parse, also reported once).  Only a regular
file is read: a FIFO or device is refused (``open()`` of a FIFO would block the feed,
and SIGTERM with it, until a writer appears).
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Tuple

from ..files import open_regular
from . import COMPLETE, MAX_PAYLOAD_BYTES, StateLog, ThreadFeed

log = logging.getLogger(__name__)

Signature = Tuple[int, int, int, int]


def _signature(st: os.stat_result) -> Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileFeed(ThreadFeed):
    """Push the file's content as a complete topology whenever its stat changes."""

    name = "file"

    def __init__(self, path: str, interval: float = 0.5) -> None:
        super().__init__()
        self.path = path
        self.interval = interval
        self._states = StateLog(log, f"topology file {path}")

    def _read(self) -> Tuple[Optional[Signature], Optional[bytes]]:
        try:
            with open_regular(self.path) as f:
                st = os.fstat(f.fileno())
                if st.st_size > MAX_PAYLOAD_BYTES:
                    self._states.report("too large, ignored",
                                        f"{st.st_size} > {MAX_PAYLOAD_BYTES} bytes",
                                        logging.ERROR)
                    return _signature(st), None
                data = f.read(MAX_PAYLOAD_BYTES + 1)
        except OSError as exc:
            self._states.report("cannot be read, keeping the last good topology",
                                exc.strerror or str(exc), logging.ERROR)
            self.connected = False
            return None, None
        self._states.report("read")
        self.connected = True
        return _signature(st), data

    def _run(self) -> None:
        seen: Optional[Signature] = None
        while not self._stopping.is_set():
            forced = self._refresh.is_set()
            self._refresh.clear()
            try:
                current: Optional[Signature] = _signature(os.stat(self.path))
            except OSError:
                current = None
            if forced or current is None or current != seen:
                sig, data = self._read()
                # remember what was read; a failed read is retried every interval
                seen = sig
                if data is not None:
                    self._push(COMPLETE, data, f"file {self.path}")
            if not self._sleep(self.interval):
                break
