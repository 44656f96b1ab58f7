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
from typing import BinaryIO

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


def read_first_line(path: str) -> str:
    """The first line of a small text file (a password or token), without its newline."""
    with open_regular(path) as f:
        return f.readline(64 * 1024).decode("utf-8").rstrip("\r\n")
