"""Reading files a user names without ever blocking on them.

``open(path)`` on a FIFO without a writer blocks until one appears, and a read from a
character device may never end.  Every file the director reads by name (topology
file, pid file, password and token files) is opened here: non-blocking, then checked
to be a regular file before anything is read.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from contextlib import contextmanager
from typing import BinaryIO, Iterator

from ..errors import HostError

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISDIR, "a directory"))


def open_regular(path: str) -> BinaryIO:
    """*path* opened for binary reading; ``OSError`` unless it is a regular file.

    The error's ``strerror`` says what it is instead (``not a regular file (a
    FIFO)``), so a caller's usual ``cannot read: {exc.strerror}`` line stays one line.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((what for test, what in _KINDS if test(mode)), "not a file")
            raise OSError(errno.EINVAL, f"not a regular file ({kind})", path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_text(path: str) -> "str | None":
    """A daemon's config file as text, None when there is none; HostError otherwise."""
    try:
        with open_regular(path) as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HostError(f"cannot read {path}: {exc.strerror}") from None


def read_first_line(path: str) -> str:
    """The first line of a small text file (a password or token), without its newline."""
    with open_regular(path) as f:
        return f.readline(64 * 1024).decode("utf-8").rstrip("\r\n")


@contextmanager
def temp_beside(target: str, text: str, prefix: str, suffix: str) -> Iterator[str]:
    """*text* in a new file (mode 0600, fsynced) beside *target*, removed on exit
    unless the caller renamed it into place; ``HostError`` when it cannot be written."""
    directory = os.path.dirname(target)
    try:
        fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
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


def fsync_dir(directory: str) -> None:
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:   # some filesystems refuse fsync on directories
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)
