"""keepalived at the edge: validate with the real binary, write atomically, reload.

``Keepalived.apply(text)``:

1. take an exclusive ``flock`` on ``<conf>.lock`` (two instances on one path never
   interleave);
2. if the live file already holds *text*: done -- no write, no reload;
3. write *text* to a temporary file beside the target (mode 0600: it can hold the VRRP
   password), fsync it;
4. ``keepalived -t -f TEMP``: keepalived 2.2.7 exits 0 only for a clean file and prints
   one line per problem (any output is a problem);  on failure the temporary file is
   removed, the live file stays as it was and :class:`ValidationError` carries
   keepalived's own lines;
5. rename over the live file (atomic: a reader sees the old or the new file, never a
   mix), fsync the directory;
6. reload: the configured command, or SIGHUP to the pid in the pid file.  Never a
   restart -- a restart drops VRRP mastership and flushes IPVS.  No running keepalived
   (no pid file / no process) is not an error: it reads the file when it starts.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple

from ..errors import HostError, LvsError

log = logging.getLogger(__name__)


class ValidationError(LvsError):
    """``keepalived -t`` rejected a rendered file; ``messages`` are its own lines."""

    def __init__(self, messages: Sequence[str], returncode: Optional[int] = None) -> None:
        self.messages = tuple(messages)
        self.returncode = returncode
        detail = "; ".join(self.messages[:5]) or "no message"
        if len(self.messages) > 5:
            detail += f"; ... ({len(self.messages)} problems)"
        super().__init__(f"keepalived -t failed (exit {returncode}): {detail}")


@dataclass(frozen=True)
class ApplyResult:
    changed: bool     #: the live file was replaced
    reloaded: bool    #: keepalived was told to reload


class Keepalived:
    def __init__(self, conf_path: str, binary: str = "keepalived",
                 pidfile: Optional[str] = None,
                 reload_command: Optional[Sequence[str]] = None,
                 timeout: float = 120.0) -> None:
        self.conf_path = os.path.abspath(conf_path)
        self.binary = binary
        self.pidfile = pidfile
        self.reload_command: Optional[Tuple[str, ...]] = (
            tuple(reload_command) if reload_command else None)
        self.timeout = timeout

    # -- validation -----------------------------------------------------------------

    def check_file(self, path: str) -> None:
        """``keepalived -t -f PATH``; ValidationError unless exit 0 with no output."""
        try:
            proc = subprocess.run([self.binary, "-t", "-f", path], stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, errors="replace",
                                  timeout=self.timeout, check=False)
        except FileNotFoundError:
            raise HostError(f"keepalived binary {self.binary!r} not found "
                            "(install keepalived or set keepalived_bin)") from None
        except subprocess.TimeoutExpired:
            raise ValidationError([f"no answer within {self.timeout:g} s"]) from None
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        if proc.returncode != 0 or lines:
            raise ValidationError(lines, proc.returncode)

    def validate(self, text: str) -> None:
        """Validate *text* in a temporary file beside the target; nothing else changes."""
        with self._temp(text) as path:
            self.check_file(path)

    # -- applying -------------------------------------------------------------------

    def apply(self, text: str) -> ApplyResult:
        """Validate, write and reload only when *text* differs from the live file."""
        with self.lock():
            if self._current() == text:
                return ApplyResult(changed=False, reloaded=False)
            with self._temp(text) as path:
                self.check_file(path)
                os.replace(path, self.conf_path)
            _fsync_dir(os.path.dirname(self.conf_path))
            log.debug("wrote %s", self.conf_path)
            return ApplyResult(changed=True, reloaded=self.reload())

    def reload(self) -> bool:
        """Ask keepalived to re-read its file; False when none is running."""
        if self.reload_command:
            try:
                proc = subprocess.run(self.reload_command, stdin=subprocess.DEVNULL,
                                      capture_output=True, text=True, errors="replace",
                                      timeout=self.timeout, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise HostError(f"reload command {' '.join(self.reload_command)!r} "
                                f"failed: {exc}") from None
            if proc.returncode != 0:
                message = (proc.stderr or proc.stdout).strip().splitlines()
                raise HostError(f"reload command {' '.join(self.reload_command)!r} exited "
                                f"{proc.returncode}: {message[-1] if message else ''}")
            return True
        pid = self._pid()
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            log.info("keepalived (pid %d from %s) is not running; it reads the new file "
                     "when it starts", pid, self.pidfile)
            return False
        except PermissionError:
            raise HostError(f"not allowed to signal keepalived pid {pid}") from None
        return True

    def _pid(self) -> Optional[int]:
        if not self.pidfile:
            return None
        try:
            with open(self.pidfile, encoding="ascii", errors="replace") as f:
                text = f.read().strip()
        except FileNotFoundError:
            log.info("no keepalived pid file %s; keepalived reads the new file when it "
                     "starts", self.pidfile)
            return None
        except OSError as exc:
            raise HostError(f"cannot read pid file {self.pidfile}: {exc.strerror}") from None
        if not text.isdigit() or int(text) <= 1:
            raise HostError(f"pid file {self.pidfile} does not hold a pid: {text[:20]!r}")
        return int(text)

    # -- files ----------------------------------------------------------------------

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock on ``<conf>.lock``, held for the whole apply."""
        fd = os.open(self.conf_path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)   # closing releases the lock

    def _current(self) -> Optional[str]:
        try:
            with open(self.conf_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return None

    @contextmanager
    def _temp(self, text: str) -> Iterator[str]:
        directory = os.path.dirname(self.conf_path)
        try:
            fd, path = tempfile.mkstemp(prefix=".keepalived-", suffix=".conf.tmp",
                                        dir=directory)
        except OSError as exc:
            raise HostError(f"cannot write in {directory}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            yield path
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass   # renamed into place


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:   # some filesystems refuse fsync on directories
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)
