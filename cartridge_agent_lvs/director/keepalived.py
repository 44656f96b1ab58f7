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
   keepalived's own lines.  The service loop's writes (:meth:`Keepalived.write`
   without *recheck*) have keepalived check only what is new since the last file
   this object validated and wrote -- the new real-server blocks, in their virtual
   servers; nothing when members only left (:mod:`.increment`);
5. rename over the live file (atomic: a reader sees the old or the new file, never a
   mix), fsync the directory;
6. reload: the configured command, or SIGHUP to the pid in the pid file -- only once
   ``/proc`` shows that pid is keepalived (``exe`` or ``comm``) running this very file
   (``-f``/``--use-file``, else keepalived's default); anything else (a reused or
   planted pid) is a :class:`HostError` and gets no signal.  Never a restart -- a
   restart drops VRRP mastership and flushes IPVS.  No running keepalived (no pid
   file / no process) is not an error: it reads the file when it starts.

:meth:`Keepalived.write` and :meth:`Keepalived.reload` are also offered separately, so
that a caller can retry a failed reload of a file already in place (the service
does, with backoff).  Temporary files are named ``.keepalived-PID-XXXXXXXX.conf.tmp``
after their writer; :meth:`Keepalived.remove_stale_temps` removes those a killed
writer left behind.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import signal
import stat
import subprocess
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

from ..errors import HostError, LvsError
from .files import fsync_dir as _fsync_dir
from .files import open_regular, read_text, temp_beside
from .increment import Accepted, Outline, to_check

log = logging.getLogger(__name__)

#: the file keepalived reads when started without ``-f``
DEFAULT_CONF = "/etc/keepalived/keepalived.conf"
#: what a keepalived process is called (``/proc/PID/exe`` basename or ``comm``)
PROCESS_NAME = "keepalived"

_TEMP_PREFIX, _TEMP_SUFFIX = ".keepalived-", ".conf.tmp"
#: our temporary files: ``.keepalived-PID-RANDOM.conf.tmp`` (``PID-`` absent in the
#: names of older versions)
_TEMP_RE = re.compile(r"^\.keepalived-(?:([0-9]+)-)?[A-Za-z0-9_]+\.conf\.tmp$")


class ValidationError(LvsError):
    """``keepalived -t`` rejected a rendered file; ``messages`` are its own lines."""

    def __init__(self, messages: Sequence[str], returncode: Optional[int] = None) -> None:
        self.messages = tuple(messages)
        self.returncode = returncode
        detail = "; ".join(self.messages[:5]) or "no message"
        if len(self.messages) > 5:
            detail += f"; ... ({len(self.messages)} problems)"
        super().__init__(f"keepalived -t failed (exit {returncode}): {detail}")


def refused(returncode: int, output: str) -> Optional[ValidationError]:
    """keepalived 2.2.7's ``-t`` verdict: it exits 0 only for a clean file and prints
    one line per problem, so any output is a problem too; None when it accepted."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return ValidationError(lines, returncode) if returncode != 0 or lines else None


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
        self._blocks = None
        self._vet_blocks = None
        #: the last text this object had keepalived accept and then wrote (see
        #: :meth:`check_new`); never a file it found in place
        self._validated: Optional[Outline] = None
        #: every real-server block keepalived accepted here (:mod:`.increment`)
        self._accepted = Accepted()

    # -- the layout the service loop drives (see also shards.ShardedKeepalived) -----

    def render(self, config) -> str:
        """The one file for *config* (unchanged virtual servers' text kept from the
        previous call: :class:`~.render.Blocks`)."""
        from .render import Blocks, render
        if self._blocks is None:
            self._blocks = Blocks()
        self._blocks.forget_others(vs.key for vs in config.virtual_servers)
        return render(config, self._blocks)

    def live_config(self):
        """The :class:`~.model.LvsConfig` the live file serves (without its VRRP part),
        None when there is none; ``RenderedFileError`` when it is not ours."""
        from .render import parse_rendered
        text = self.current()
        return None if text is None else parse_rendered(text)

    # -- validation -----------------------------------------------------------------

    def check_file(self, path: str) -> None:
        """``keepalived -t -f PATH``; ValidationError unless exit 0 with no output."""
        proc = run_checker(self.test_argv(path), self.timeout,
                           f"keepalived binary {self.binary!r} not found (install "
                           "keepalived or set keepalived_bin)")
        if proc is None:
            raise ValidationError([f"no answer within {self.timeout:g} s"])
        refusal = refused(proc.returncode, proc.stderr + proc.stdout)
        if refusal is not None:
            raise refusal

    def test_argv(self, path: str) -> List[str]:
        """``keepalived -t -f PATH``: check a file, as :meth:`check_file` does."""
        return [self.binary, "-t", "-f", path]

    def validate(self, text: str) -> None:
        """Validate *text* in a temporary file beside the target; nothing else changes."""
        with self._temp(text) as path:
            self.check_file(path)

    def check_new(self, path: str, text: str, recheck: bool = True) -> Outline:
        """``keepalived -t`` on what is new in *text* (already in the temporary file
        *path*) since the last file this object validated and wrote: the whole file,
        a file of only the new real-server blocks in their virtual servers, or nothing
        when members only left (:func:`~.increment.to_check`).  *recheck* checks the
        whole file.  Returns *text*'s outline, for :meth:`accepted`."""
        outline = Outline(text)
        todo = to_check(None if recheck else self._validated, outline, self._accepted)
        if todo is None:
            log.debug("%s: nothing new for keepalived -t", self.conf_path)
        elif todo is text:
            self.check_file(path)
        else:
            self.validate(todo)
        return outline

    def accepted(self, checked: Outline) -> None:
        """The text *checked* by :meth:`check_new` is now the live file."""
        self._validated = checked
        self._accepted.add(checked)
        self._accepted.trim(checked)

    def remember(self, checked: Outline) -> None:
        """keepalived accepted the blocks of *checked* (a check ahead of time)."""
        self._accepted.add(checked)

    def vet(self, config) -> List["Vetting"]:
        """Have keepalived check ahead of time, in the background, the real-server
        blocks *config* (what the topology will serve once its booting members are
        active) adds to the live file -- so that their activation finds them accepted
        and runs no ``keepalived -t`` on its way to the kernel.  Nothing starts when
        there is no baseline, nothing new, or more than new blocks (a new virtual
        server, a changed header: that is checked whole when it is applied)."""
        from .render import Blocks, render
        if self._vet_blocks is None:
            self._vet_blocks = Blocks()
        self._vet_blocks.forget_others(vs.key for vs in config.virtual_servers)
        return self.vet_text(render(config, self._vet_blocks))

    def vet_text(self, text: str) -> List["Vetting"]:
        """:meth:`vet` for the rendered *text*."""
        if self._validated is None:
            return []
        todo = to_check(self._validated, Outline(text), self._accepted)
        if todo is None or todo is text:
            return []
        return [Vetting(self, todo)]

    # -- applying -------------------------------------------------------------------

    def apply(self, text: str) -> ApplyResult:
        """Validate, write and reload only when *text* differs from the live file."""
        with self.lock():
            changed = self._write(text)
            return ApplyResult(changed=changed, reloaded=self.reload() if changed else False)

    def write(self, text: str, recheck: bool = True) -> bool:
        """Validate and write *text* unless the live file holds it; True when written.

        Does not reload: the caller calls :meth:`reload` (and retries it on failure).
        The live file is always read; without *recheck* keepalived checks only what
        is new since the last file this object wrote (:meth:`check_new`).
        """
        with self.lock():
            return self._write(text, recheck)

    def _write(self, text: str, recheck: bool = True) -> bool:
        if self.current() == text:
            return False
        with self._temp(text) as path:
            checked = self.check_new(path, text, recheck)
            os.replace(path, self.conf_path)
        self.accepted(checked)
        _fsync_dir(os.path.dirname(self.conf_path))
        log.debug("wrote %s", self.conf_path)
        return True

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
            _signal_checked(pid, signal.SIGHUP, lambda: self._check_process(pid))
        except ProcessLookupError:
            log.info("keepalived (pid %d from %s) is not running; it reads the new file "
                     "when it starts", pid, self.pidfile)
            return False
        except PermissionError:
            raise HostError(f"not allowed to signal keepalived pid {pid}") from None
        return True

    def _check_process(self, pid: int) -> None:
        """HostError unless *pid* is keepalived reading :attr:`conf_path`.

        ``ProcessLookupError`` when the process is gone.
        """
        proc = f"/proc/{pid}"
        names = []
        try:
            names.append(os.readlink(f"{proc}/exe").removesuffix(" (deleted)"))
        except OSError:
            pass                # another user's process, a kernel thread, or gone
        try:
            names.append(_read_proc(f"{proc}/comm").rstrip("\n"))
        except FileNotFoundError:
            raise ProcessLookupError(pid) from None
        except OSError:
            pass
        base = [os.path.basename(n) for n in names]
        if PROCESS_NAME not in base:
            what = base[-1] if base else "unknown"
            raise HostError(f"pid {pid} in {self.pidfile} is not keepalived (it is "
                            f"{what!r}); not signalling it")
        try:
            argv = _read_proc(f"{proc}/cmdline").split("\0")
        except FileNotFoundError:
            raise ProcessLookupError(pid) from None
        except OSError:
            return              # cannot be read: the name has to do
        argv = argv[:-1] if argv and argv[-1] == "" else argv
        if not argv:
            return
        try:
            cwd = os.readlink(f"{proc}/cwd")
        except OSError:
            cwd = "/"
        running = config_file_of(argv, cwd)
        if os.path.realpath(running) != os.path.realpath(self.conf_path):
            raise HostError(f"pid {pid} in {self.pidfile} is keepalived but runs {running}, "
                            f"not {self.conf_path}; not signalling it")

    def running(self) -> bool:
        """Whether the keepalived of the pid file is alive and runs this file (mode bgp
        announces the VIPs only then).  Never raises; a zombie is not running."""
        try:
            pid = self._pid(quiet=True)
            if pid is None:
                return False
            self._check_process(pid)
            stat_ = _read_proc(f"/proc/{pid}/stat")
        except (ProcessLookupError, HostError, OSError):
            return False
        state = stat_.rpartition(")")[2].split()[:1]
        return state not in (["Z"], ["X"])

    def _pid(self, quiet: bool = False) -> Optional[int]:
        if not self.pidfile:
            return None
        try:
            with open_regular(self.pidfile) as f:
                text = f.read(64).decode("ascii", "replace").strip()
        except FileNotFoundError:
            if quiet:
                return None
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
        """Exclusive lock on ``<conf>.lock``, held for the whole apply.

        The lock file is never followed through a symbolic link (that would create or
        truncate the link's target as root): a link there is a :class:`HostError`.
        """
        path = self.conf_path + ".lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise HostError(f"lock file {path} is a symbolic link; refusing to follow "
                                "it (remove it)") from None
            raise HostError(f"cannot open lock file {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)   # closing releases the lock

    def current(self) -> Optional[str]:
        """The live file's text, or None when there is none."""
        return read_text(self.conf_path)

    def remove_stale_temps(self) -> List[str]:
        """Remove the temporary files killed writers left beside the live file.

        Only regular files of this user named like ours (``.keepalived-*.conf.tmp``),
        and only when their writer (the pid in the name) is gone, or when they are
        older than any write can take (the ``keepalived -t`` timeout plus a minute).
        Runs under the lock, so no apply of this path is in flight.  Returns the names
        removed.
        """
        directory = os.path.dirname(self.conf_path)
        removed = []
        with self.lock():
            try:
                names = os.listdir(directory)
            except OSError as exc:
                raise HostError(f"cannot list {directory}: {exc.strerror}") from None
            oldest = time.time() - (self.timeout + 60)
            for name in sorted(names):
                match = _TEMP_RE.match(name)
                path = os.path.join(directory, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if (not match or not stat.S_ISREG(st.st_mode)
                        or st.st_uid != os.geteuid()):
                    continue
                pid = int(match.group(1)) if match.group(1) else None
                writer_gone = pid is not None and pid != os.getpid() and not _alive(pid)
                if writer_gone or st.st_mtime < oldest:
                    try:
                        os.unlink(path)
                    except OSError:
                        continue
                    removed.append(name)
        if removed:
            log.info("removed %d stale temporary file(s) in %s: %s", len(removed),
                     directory, ", ".join(removed))
        return removed

    def _temp(self, text: str):
        return temp_beside(self.conf_path, text, f"{_TEMP_PREFIX}{os.getpid()}-",
                           _TEMP_SUFFIX)


class Vetting:
    """One ``keepalived -t`` running in the background on a file of real-server blocks
    checked ahead of time (:meth:`Keepalived.vet`); :meth:`poll` until it answers.
    Accepted blocks join the instance's memory of accepted blocks; refused ones do
    not, and are checked again, and refused with keepalived's lines, when applied."""

    def __init__(self, owner: Keepalived, text: str) -> None:
        self.owner, self.outline = owner, Outline(text)
        self.started = time.monotonic()
        self.ok: Optional[bool] = None
        self._stack = ExitStack()
        try:
            path = self._stack.enter_context(owner._temp(text))
            self._output = self._stack.enter_context(tempfile.TemporaryFile())
            self.proc = subprocess.Popen(owner.test_argv(path), stdin=subprocess.DEVNULL, stdout=self._output,
                                         stderr=subprocess.STDOUT)
        except (OSError, HostError) as exc:
            self._stack.close()
            self.ok = False
            self.proc = None
            log.debug("could not check ahead for %s: %s", owner.conf_path, exc)

    def poll(self) -> Optional[bool]:
        """None while keepalived runs; then whether it accepted the blocks."""
        if self.ok is not None or self.proc is None:
            return self.ok
        code = self.proc.poll()
        if code is None:
            if time.monotonic() - self.started <= self.owner.timeout:
                return None
            self.proc.kill()
            code = self.proc.wait()
        self._output.seek(0)
        refusal = refused(code, self._output.read().decode("utf-8", "replace"))
        self._stack.close()
        self.ok = refusal is None
        if self.ok:
            self.owner.remember(self.outline)
        else:
            log.info("%s: blocks checked ahead of time were refused (they are checked "
                     "again when applied): %s", self.owner.conf_path, refusal)
        return self.ok

    def cancel(self) -> None:
        """Stop the check (the service is stopping)."""
        if self.proc is not None and self.ok is None:
            self.proc.kill()
            self.proc.wait()
            self.ok = False
        self._stack.close()


def run_checker(argv: Sequence[str], timeout: float,
                missing: str) -> Optional[subprocess.CompletedProcess]:
    """Run a daemon's config checker (no shell, no input); None when it did not answer
    within *timeout*, ``HostError(missing)`` when the binary is absent."""
    try:
        return subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace", timeout=timeout, check=False)
    except FileNotFoundError:
        raise HostError(missing) from None
    except subprocess.TimeoutExpired:
        return None


def config_file_of(argv: Sequence[str], cwd: str = "/") -> str:
    """The config file a keepalived command line reads (absolute; pure).

    ``-f FILE``, ``-fFILE``, ``-lDf FILE``, ``--use-file FILE``, ``--use-file=FILE``;
    :data:`DEFAULT_CONF` without one.  A relative name is taken from *cwd*.
    """
    found = DEFAULT_CONF
    words = list(argv[1:])
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            break
        value = None
        if word == "--use-file":
            value = words[i] if i < len(words) else None
            i += 1
        elif word.startswith("--use-file="):
            value = word.partition("=")[2]
        elif word.startswith("-") and not word.startswith("--") and "f" in word[1:]:
            rest = word[word.index("f", 1) + 1:]
            if rest:
                value = rest
            else:
                value = words[i] if i < len(words) else None
                i += 1
        if value:
            found = value
    return os.path.normpath(os.path.join(cwd, found))


def _read_proc(path: str) -> str:
    with open(path, "rb") as f:
        return f.read(1 << 20).decode("utf-8", "replace")


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _signal_checked(pid: int, signum: int, check) -> None:
    """Send *signum* to *pid* once *check()* passed, without a pid-reuse race.

    With a pidfd (Linux 5.3+) the process is pinned before it is checked: if the pid
    was reused in between, the signal goes nowhere (``ProcessLookupError``) rather
    than to the newcomer.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    send = getattr(signal, "pidfd_send_signal", None)
    fd = None
    if pidfd_open and send:
        try:
            fd = pidfd_open(pid)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                raise ProcessLookupError(pid) from None
            fd = None                         # ENOSYS and the like: plain kill below
    try:
        check()
        if fd is not None:
            send(fd, signum)
        else:
            os.kill(pid, signum)
    finally:
        if fd is not None:
            os.close(fd)
