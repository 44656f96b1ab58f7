"""keepalived in shards: one VRRP-only instance, N health-check/IPVS instances.

keepalived 2.2.7 re-reads its whole file on a reload and migrates its checkers in
O(checkers^2) (upstream issue #2318, fixed only in 2.3): at 10,000 real servers one
reload takes over half a minute, during which its checker process does nothing else.
With ``keepalived_shards = N`` the configuration is split so that a change reloads
only what it touches:

* ``keepalived_conf`` holds ``global_defs`` and the VRRP instances only; it is run by
  ``keepalived -P`` (VRRP only) with ``keepalived_pidfile``;
* each virtual server lives in exactly one of N files ``<conf>.shard-NN.conf`` beside
  it (``keepalived.shard-01.conf`` ...), each run by its own ``keepalived -C``
  (checkers only) with the pid file ``<pidfile>.shard-NN.pid``;
* a file is validated (``keepalived -t``; what is new in it since its last write:
  :mod:`.increment`), written atomically and its instance sent SIGHUP only when its
  own text changed -- the other instances keep checking;
* per event, only the shards whose part of the configuration changed are rendered
  (each shard's text is kept with the part it was rendered from), and only the files
  whose text differs from what this object last wrote there are read back and
  compared (all of them when the service is forced, e.g. on its SIGHUP).

Assignment (:func:`assign`) is sticky: a virtual server stays in the shard it was
first given for the life of the process, and across restarts as long as the shard
files hold it -- so two instances never manage the same virtual server (one removing
what the other just added), and a new service never moves another one.  A new
virtual server goes to the shard with the fewest real servers, which keeps the
shards -- and so the cost of each reload -- even.

:class:`ShardedKeepalived` offers what the service loop uses of
:class:`~.keepalived.Keepalived` (``render``, ``write``, ``reload``, ``live_config``,
``remove_stale_temps``, ``conf_path``).  A set of files is applied all or nothing:
every changed file is validated before the first one is renamed into place, so a
rejected shard keeps every last good file.  Reloads that fail are retried for the
instances still owed one.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import replace
from typing import Dict, Iterable, List, Mapping, Optional, Set, Tuple

from .keepalived import Keepalived, _fsync_dir
from .model import LvsConfig, VirtualServer
from .render import Blocks, parse_rendered, render_checkers, render_vrrp

log = logging.getLogger(__name__)

Key = Tuple[str, int, str]


def _suffixed(path: str, shard: int) -> str:
    """``/etc/keepalived/keepalived.conf`` -> ``/etc/keepalived/keepalived.shard-01.conf``."""
    stem, ext = os.path.splitext(path)
    return f"{stem}.shard-{shard:02d}{ext}"


def shard_conf(conf_path: str, shard: int) -> str:
    """The file of shard *shard* (1-based) for the VRRP file *conf_path*."""
    return _suffixed(conf_path, shard)


def shard_pidfile(pidfile: str, shard: int) -> str:
    """The main pid file of shard *shard*'s keepalived (1-based)."""
    return _suffixed(pidfile, shard)


def assign(servers: Iterable[VirtualServer], shards: int,
           sticky: Mapping[Key, int]) -> Dict[Key, int]:
    """Shard (1..*shards*) of each virtual server; pure.

    A key in *sticky* keeps its shard (whatever *shards* is now: moving a live
    virtual server between two instances is never safe).  The others, in key order,
    go to the shard with the fewest real servers so far (the lowest number on a tie).
    """
    if shards < 1:
        raise ValueError("shards must be >= 1")
    servers = list(servers)
    load = {n: 0 for n in range(1, shards + 1)}
    chosen: Dict[Key, int] = {}
    for vs in servers:
        if vs.key in sticky:
            chosen[vs.key] = sticky[vs.key]
            load[chosen[vs.key]] = load.get(chosen[vs.key], 0) + 1 + len(vs.real_servers)
    for vs in sorted((v for v in servers if v.key not in chosen), key=lambda v: v.key):
        shard = min(range(1, shards + 1), key=lambda n: (load[n], n))
        chosen[vs.key] = shard
        load[shard] += 1 + len(vs.real_servers)
    return chosen


def split(config: LvsConfig, where: Mapping[Key, int], shards: int) -> List[LvsConfig]:
    """*config*'s virtual servers per shard (index 0 = shard 1), order kept; pure."""
    parts: List[List[VirtualServer]] = [[] for _ in range(max([shards, *where.values()]))]
    for vs in config.virtual_servers:
        parts[where[vs.key] - 1].append(vs)
    return [replace(config, virtual_servers=tuple(p)) for p in parts]


class ShardedKeepalived:
    """The VRRP file and N shard files, each with its own keepalived instance."""

    def __init__(self, conf_path: str, shards: int, binary: str = "keepalived",
                 pidfile: str = "/run/keepalived.pid", timeout: float = 120.0) -> None:
        if shards < 1:
            raise ValueError("shards must be >= 1")
        self.shards = shards
        self.binary, self.pidfile, self.timeout = binary, pidfile, timeout
        self.vrrp = Keepalived(conf_path, binary, pidfile, timeout=timeout)
        self.parts: Dict[int, Keepalived] = {}
        for n in range(1, shards + 1):
            self._part(n)
        #: every virtual server ever placed, and where (sticky for the process' life)
        self.placed: Dict[Key, int] = {}
        #: instances (0 = VRRP, n = shard n) whose new file has not been reloaded yet
        self.pending: Set[int] = set()
        #: shard -> (its part of the configuration, its text): an unchanged shard is
        #: not rendered again
        self._rendered: Dict[int, Tuple[LvsConfig, str]] = {}
        #: and within a changed shard, each unchanged virtual server (and real server)
        #: is not rendered again either
        self._blocks = Blocks()
        self._vet_blocks = Blocks()       #: the same, for :meth:`vet`'s renderings
        #: instance -> the text this object last wrote to its file or found there
        self._in_place: Dict[int, str] = {}

    @property
    def conf_path(self) -> str:
        return self.vrrp.conf_path

    def _part(self, n: int) -> Keepalived:
        if n not in self.parts:
            self.parts[n] = Keepalived(shard_conf(self.vrrp.conf_path, n), self.binary,
                                       shard_pidfile(self.pidfile, n), timeout=self.timeout)
        return self.parts[n]

    def instances(self) -> List[Tuple[int, Keepalived]]:
        """(0, VRRP) then the shards in order."""
        return [(0, self.vrrp)] + sorted(self.parts.items())

    # -- rendering ------------------------------------------------------------------

    def render(self, config: LvsConfig) -> Tuple[str, ...]:
        """The VRRP file's text, then each shard's (a shard may be empty)."""
        where = assign(config.virtual_servers, self.shards, self.placed)
        self.placed.update(where)
        parts = split(config, where, self.shards)
        for n in range(1, len(parts) + 1):
            self._part(n)
        self._blocks.forget_others(where)
        return (render_vrrp(config),) + tuple(self._render_part(n, p)
                                              for n, p in enumerate(parts, 1))

    def _render_part(self, n: int, part: LvsConfig) -> str:
        cached = self._rendered.get(n)
        if cached is not None and cached[0] == part:
            return cached[1]
        text = render_checkers(part, self._blocks)
        self._rendered[n] = (part, text)
        return text

    def vet(self, config: LvsConfig) -> list:
        """Check ahead of time, in the background, the new real-server blocks of
        *config* in each shard (:meth:`Keepalived.vet`); a virtual server not placed
        yet is left to the check when it is applied."""
        placed = [vs for vs in config.virtual_servers if vs.key in self.placed]
        self._vet_blocks.forget_others(vs.key for vs in placed)
        parts = split(replace(config, virtual_servers=tuple(placed)),
                      {vs.key: self.placed[vs.key] for vs in placed}, self.shards)
        started = []
        for n, part in enumerate(parts, 1):
            live = self._rendered.get(n)
            if n in self.parts and live is not None and live[0] != part:
                started += self.parts[n].vet_text(render_checkers(part, self._vet_blocks))
        return started

    # -- applying -------------------------------------------------------------------

    def write(self, texts: Tuple[str, ...], recheck: bool = False) -> bool:
        """Validate every changed file, then write them all; True when one changed.

        All or nothing: when ``keepalived -t`` rejects one file, none is written.  Does
        not reload: :meth:`reload` then signals the instances whose file changed.

        A file whose text is the one this object last wrote or found there is not
        read again (at 10,000 real servers reading every shard on every event is
        most of an event's file work); *recheck* reads every file (the service
        passes it when forced, e.g. on SIGHUP, so a file changed behind its back is
        put right).
        """
        instances = self.instances()
        if len(texts) != len(instances):
            raise ValueError(f"{len(texts)} texts for {len(instances)} files")
        todo = [(n, part, text) for (n, part), text in zip(instances, texts)
                if recheck or self._in_place.get(n) != text]
        with ExitStack() as stack:
            for _, part, _ in todo:         # always in file order: no deadlock
                stack.enter_context(part.lock())
            changed = []
            for n, part, text in todo:
                if part.current() == text:
                    self._in_place[n] = text
                else:
                    changed.append((n, part, text))
            temps = [(part, stack.enter_context(part._temp(text)), text)
                     for n, part, text in changed]
            checked = _check_all(temps, recheck)
            for (part, path, text), (n, _, _), outline in zip(temps, changed, checked):
                os.replace(path, part.conf_path)
                part.accepted(outline)
                self._in_place[n] = text
                self.pending.add(n)
            for directory in sorted({os.path.dirname(p.conf_path) for p, _, _ in temps}):
                _fsync_dir(directory)
        if changed:
            log.debug("wrote %s", ", ".join(p.conf_path for _, p, _ in changed))
        return bool(changed)

    def reload(self) -> bool:
        """SIGHUP the instances whose file changed since their last reload.

        True when at least one was signalled.  A failure leaves that instance (and
        those not tried yet) owed a reload and raises :class:`HostError`.
        """
        signalled = False
        for n in sorted(self.pending):
            part = self.vrrp if n == 0 else self.parts[n]
            if part.reload():
                signalled = True
            self.pending.discard(n)
        return signalled

    def running(self) -> bool:
        """Whether every instance (VRRP and each shard) is alive and runs its file."""
        return all(part.running() for _, part in self.instances())

    # -- the files in place ---------------------------------------------------------

    def live_config(self) -> Optional[LvsConfig]:
        """What the files in place serve (VIPs from the VRRP file, virtual servers
        from the shards), None when there is none; also makes their placement sticky.

        A shard file beyond ``shards`` (the setting was lowered) still counts: its
        virtual servers stay where they are.
        """
        configs: List[LvsConfig] = []
        vrrp_text = self.vrrp.current()
        if vrrp_text is not None:
            configs.append(parse_rendered(vrrp_text))
        n = 1
        while True:
            part = self._part(n) if n <= self.shards else Keepalived(
                shard_conf(self.vrrp.conf_path, n), self.binary,
                shard_pidfile(self.pidfile, n), timeout=self.timeout)
            text = part.current()
            if text is None and n > self.shards:
                break
            if text is not None:
                self.parts[n] = part
                served = parse_rendered(text)
                for vs in served.virtual_servers:
                    self.placed[vs.key] = n
                configs.append(served)
            n += 1
        if not configs:
            return None
        return LvsConfig(tuple(vs for c in configs for vs in c.virtual_servers),
                         tuple(v for c in configs for v in c.vips))

    def remove_stale_temps(self) -> List[str]:
        """The shard files live beside the VRRP file: one clean-up covers them all."""
        return self.vrrp.remove_stale_temps()


def _check_all(temps: List[Tuple[Keepalived, str, str]], recheck: bool) -> list:
    """``keepalived -t`` on what is new in every (instance, temporary file, text),
    side by side (one change often touches several shards, and each -t costs a
    keepalived start); the first failure, in file order, is raised once all have
    finished.  What is new: :meth:`Keepalived.check_new` (all of it with *recheck*),
    whose outlines are returned in order."""
    if len(temps) == 1:
        part, path, text = temps[0]
        return [part.check_new(path, text, recheck)]
    workers = max(1, min(len(temps), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(part.check_new, path, text, recheck)
                   for part, path, text in temps]
    return [future.result() for future in futures]


def keepalived_argv(conf_path: str, pidfile: str, shard: int = 0,
                    binary: str = "keepalived") -> List[str]:
    """The foreground command line of one instance of the sharded layout (0 = VRRP):
    what the systemd units in ``deploy/`` run, and what the test lab starts."""
    if shard == 0:
        base = os.path.splitext(pidfile)[0]
        return [binary, "-P", "-n", "-l", "-D", "-f", conf_path, "-p", pidfile,
                "-r", f"{base}.vrrp.pid", "-c", f"{base}.checkers.pid"]
    conf, pid = shard_conf(conf_path, shard), shard_pidfile(pidfile, shard)
    base = os.path.splitext(pid)[0]
    return [binary, "-C", "-n", "-l", "-D", "-i", f"shard-{shard:02d}", "-f", conf,
            "-p", pid, "-r", f"{base}.vrrp.pid", "-c", f"{base}.checkers.pid"]
