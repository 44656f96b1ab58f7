"""How a director of the lab runs keepalived: one file, or the sharded layout.

``shards == 0``: one ``keepalived`` reads ``keepalived.conf`` (pid files
``keepalived.pid``, ``vrrp.pid``, ``checkers.pid``).  ``shards == N``: lvs-extension
runs with ``--keepalived-shards N`` and the director runs exactly what the product's
systemd units run (``shards.keepalived_argv``): ``keepalived -P`` on
``keepalived.conf`` and one ``keepalived -C`` per ``keepalived.shard-NN.conf``.  All
instances of a director log into the same file, so the scenarios read one log.
"""

from __future__ import annotations

from pathlib import Path

from cartridge_agent_lvs.director.shards import keepalived_argv, shard_conf


def extension_flags(shards: int) -> list:
    return ["--keepalived-shards", str(shards)] if shards else []


def conf_files(d: Path, shards: int) -> list:
    """The files lvs-extension writes (keepalived needs all of them to start)."""
    conf = str(d / "keepalived.conf")
    return [Path(conf)] + [Path(shard_conf(conf, n)) for n in range(1, shards + 1)]


def commands(d: Path, shards: int) -> list:
    """The keepalived command line(s) of director directory *d*."""
    conf, pid = str(d / "keepalived.conf"), str(d / "keepalived.pid")
    if not shards:
        return [["keepalived", "-n", "-l", "-D", "-f", conf, "-p", pid,
                 "-r", str(d / "vrrp.pid"), "-c", str(d / "checkers.pid")]]
    return [keepalived_argv(conf, pid, n) for n in range(shards + 1)]


def _pidfiles(argv: list) -> list:
    return [Path(argv[argv.index(flag) + 1]) for flag in ("-p", "-r", "-c")]


def main_pids(d: Path, shards: int) -> list:
    """The main process of every instance (SIGHUP reloads it); the VRRP one first."""
    return [int(_pidfiles(argv)[0].read_text()) for argv in commands(d, shards)]


def pids(d: Path, shards: int) -> list:
    """Every keepalived process of the director (main processes first, VRRP's first):
    the pid files its instances wrote (a -P instance writes no checkers pid, a -C
    instance no VRRP pid)."""
    mains = main_pids(d, shards)
    children = [int(p.read_text()) for argv in commands(d, shards)
                for p in _pidfiles(argv)[1:] if p.exists()]
    return mains + children
