"""BIRD at the edge: check a configuration with ``bird -p``, write it atomically,
and tell the running daemon to re-read it over its control socket.

``Bird.apply(text)``: ``bird -p -c TEMP`` (parse only; exit 0 or one line naming the
file and line), rename over ``bird_conf``, then ``configure "bird_conf"`` on the
control socket.  The socket speaks BIRD's line protocol: every reply line starts
with a four-digit code, ``-`` after it when more lines follow, a space on the last
one; codes 8000 and above are errors.  No ``birdc`` process is started.
"""

from __future__ import annotations

import os
import re
import socket
from typing import List, Optional, Tuple

from ..errors import HostError, LvsError
from .files import fsync_dir, read_text, temp_beside
from .keepalived import run_checker

#: ``configure`` answered: 0003 Reconfigured, 0004 in progress, 0018/0019/0020 (confirm,
#: nothing to do, ...); any code >= 8000 is a failure
_FINAL = re.compile(rb"^([0-9]{4}) ")
_LINE = re.compile(rb"^([0-9]{4})[ -]")


class BirdError(LvsError):
    """BIRD refused the file or the command (the message is BIRD's own line)."""


class Bird:
    def __init__(self, conf_path: str, socket_path: str, binary: str = "bird",
                 timeout: float = 10.0) -> None:
        self.conf_path = os.path.abspath(conf_path)
        self.socket_path = socket_path
        self.binary = binary
        self.timeout = timeout

    def check_file(self, path: str) -> None:
        """``bird -p -c PATH``; BirdError unless it exits 0."""
        proc = run_checker([self.binary, "-p", "-c", path], self.timeout,
                           f"BIRD binary {self.binary!r} not found (install bird2 or set "
                           "bird_bin)")
        if proc is None:
            raise BirdError(f"bird -p: no answer within {self.timeout:g} s")
        if proc.returncode != 0:
            lines = (proc.stderr + proc.stdout).strip().splitlines()
            raise BirdError(f"bird -p rejected the configuration: "
                            f"{lines[-1] if lines else f'exit {proc.returncode}'}")

    def current(self) -> Optional[str]:
        """The live file's text, or None when there is none."""
        return read_text(self.conf_path)

    def write(self, text: str) -> bool:
        """Check and write *text* unless the file holds it; True when written."""
        if self.current() == text:
            return False
        with temp_beside(self.conf_path, text, ".bird-", ".conf.tmp") as path:
            self.check_file(path)
            os.replace(path, self.conf_path)
        fsync_dir(os.path.dirname(self.conf_path))
        return True

    def configure(self) -> str:
        """Make the running BIRD read :attr:`conf_path`; its last reply line."""
        replies = self.request(f'configure "{self.conf_path}"')
        code, text = replies[-1]
        if code >= 8000:
            raise BirdError(f"BIRD refused to reconfigure: {text}")
        return text

    def request(self, command: str) -> List[Tuple[int, str]]:
        """One command on the control socket: its reply lines as (code, text)."""
        if any(c in command for c in "\r\n\0"):
            raise ValueError("one line only")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.socket_path)
                reader = sock.makefile("rb")
                _reply(reader)                       # the greeting: 0001 BIRD x.y ready.
                sock.sendall(command.encode() + b"\n")
                return _reply(reader)
        except (OSError, EOFError) as exc:
            raise HostError(f"BIRD control socket {self.socket_path}: "
                            f"{getattr(exc, 'strerror', None) or exc}") from None


def _reply(reader) -> List[Tuple[int, str]]:
    lines: List[Tuple[int, str]] = []
    code = 0
    while True:
        raw = reader.readline(65536)
        if not raw:
            raise EOFError("BIRD closed the connection")
        match = _LINE.match(raw)
        if match:
            code = int(match.group(1))
            lines.append((code, raw[5:].decode("utf-8", "replace").rstrip("\n")))
        else:                                        # " text": continues the last code
            lines.append((code, raw[1:].decode("utf-8", "replace").rstrip("\n")))
        if _FINAL.match(raw):
            return lines
