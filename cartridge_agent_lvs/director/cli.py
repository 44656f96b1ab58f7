"""``lvs-extension``: the director's command line.

Verbs:

``render``   the keepalived.conf for a topology file on stdout, warnings on stderr;
             no side effects.
``check``    settings + topology + the rendered file through ``keepalived -t``.
``run``      the long-running service (:mod:`.service`): follow a topology feed and
             keep keepalived in step.
``stats``    IPVS services and real servers with their counters (netlink), and the
             in-flight connections per cluster; ``--interval`` repeats it (like
             ``vmstat``), each snapshot stamped with the time it was read.
``status``   what the running service serves, read from its ``/status`` document
             (``metrics_listen``): per service the VIP, this director's VRRP role, the
             real servers in the kernel or not, the last apply and its outcome.
``settings`` the effective settings, as config-file lines.
``withdraw`` mode bgp, maintenance: creates ``withdrawn_file``; the running service
             withdraws every VIP within ``announce_interval`` (and stays withdrawn,
             across restarts, until ``announce``).
``announce`` removes ``withdrawn_file``: the service announces again what it can serve.

Errors are one line on stderr and a non-zero exit: 2 for bad input (settings,
topology, usage), 1 when the host or keepalived refuses.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Optional, Sequence

from ..clikit import verb_parser
from ..errors import HostError, InputError, LvsError, TopologyError
from . import settings as settings_mod
from .files import open_regular
from .keepalived import ValidationError

PROG = "lvs-extension"



def _parser() -> argparse.ArgumentParser:
    parser, verbs = verb_parser(PROG, "LVS extension: Stratos topology -> "
                     "validated keepalived.conf -> graceful reload.")

    def verb(name: str, help_: str, topology: bool = False) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help_, description=help_)
        if topology:
            sub.add_argument("--topology", metavar="FILE", required=True,
                             help="CompleteTopologyEvent JSON (or the bare topology)")
        settings_mod.add_arguments(sub)
        return sub

    verb("render", "print the keepalived.conf for a topology file", topology=True)
    verb("check", "validate settings, topology and the rendered file with keepalived -t",
         topology=True)
    verb("run", "follow the topology and keep keepalived in step (SIGHUP: re-read, "
         "SIGTERM/SIGINT: stop)")
    verb("settings", "print the effective settings as config-file lines")
    for name, help_ in (("withdraw", "mode bgp: withdraw this director's VIPs for "
                         "maintenance (creates withdrawn_file; kept across restarts)"),
                        ("announce", "mode bgp: announce again (removes withdrawn_file)")):
        sub = verbs.add_parser(name, help=help_, description=help_)
        settings_mod.add_arguments(sub, exclude=tuple(
            o.name for o in settings_mod.OPTIONS if o.group != settings_mod.G_BGP))
    stats = verbs.add_parser("stats", help="IPVS counters per virtual/real server and "
                             "in-flight connections per cluster")
    stats.add_argument("--json", action="store_true", help="one JSON document")
    stats.add_argument("--netns", metavar="NAME", help="read IPVS in this network namespace")
    stats.add_argument("--topology", metavar="FILE",
                       help="topology to attribute real servers to clusters "
                       "(with --vip-map / --config)")
    stats.add_argument("--interval", metavar="SECONDS", type=_positive(float),
                       help="read again every SECONDS until interrupted, each snapshot "
                       "headed by the UTC time it was read (with --json: one document "
                       "per line, its time in \"time\")")
    stats.add_argument("--count", metavar="N", type=_positive(int),
                       help="with --interval: stop after N snapshots")
    settings_mod.add_arguments(stats)
    status = verbs.add_parser(
        "status", help="what the running service serves: per service the VIP, VRRP "
        "role, real servers in the kernel or not, last apply (asks the service at "
        "metrics_listen)")
    status.add_argument("--json", action="store_true", help="the /status JSON document")
    settings_mod.add_arguments(status, exclude=tuple(
        o.name for o in settings_mod.OPTIONS if o.group != settings_mod.G_OBSERVE))
    return parser


def read_topology(path: str):
    from .topology import parse_topology
    try:
        with open_regular(path) as f:
            data = f.read()
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return parse_topology(data)
    except TopologyError as exc:
        raise TopologyError(f"{path}: {exc}") from None


def _planned(args, settings):
    from .plan import plan
    from .render import render
    result = plan(settings, read_topology(args.topology))
    for warning in result.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    return result.config, render(result.config)


def _render(args, settings) -> int:
    sys.stdout.write(_planned(args, settings)[1])
    return 0


def _check(args, settings) -> int:
    from .service import keepalived_for
    config, _ = _planned(args, settings)
    layout = keepalived_for(settings)
    layout.validate(layout.render(config))      # every file of a sharded layout too
    print(f"OK: keepalived accepts the file: {len(config.virtual_servers)} virtual servers, "
          f"{config.real_server_count()} real servers, {len(config.vips)} VIPs")
    return 0


def _run(args, settings) -> int:
    from .service import run
    return run(settings)


def _settings(args, settings) -> int:
    """Config-file lines (secrets masked), ``[service NAME]`` sections included."""
    for line in settings_mod.config_lines(settings):
        print(line)
    return 0


def _stats(args) -> int:
    from . import stats
    config = None
    if args.topology:
        from .plan import plan
        config = plan(settings_mod.load(args), read_topology(args.topology)).config
    if args.interval is None:
        services = stats.read_ipvs(args.netns)
        totals = stats.cluster_totals(services, config)
        print(stats.to_json(services, totals) if args.json
              else stats.format_table(services, totals))
        return 0
    shown = 0
    while True:
        read_at = time.time()
        services = stats.read_ipvs(args.netns)
        totals = stats.cluster_totals(services, config)
        print(stats.snapshot(services, totals, read_at, args.json), flush=True)
        shown += 1
        if args.count is not None and shown >= args.count:
            return 0
        time.sleep(max(0.0, read_at + args.interval - time.time()))


def _positive(kind):
    """argparse type: a number of ``kind`` (float or int) greater than 0."""
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            noun = "whole number" if kind is int else "number"
            raise argparse.ArgumentTypeError(f"{text!r} is not a {noun} greater than 0")
        return value
    return convert


def _status(args) -> int:
    """GET /status from the running service and print it."""
    import json
    import urllib.error
    import urllib.request
    from .status import format_text
    settings = settings_mod.load(args, need_vip_map=False)
    if settings.metrics_listen is None:
        raise InputError("metrics_listen", None, "status asks the running service: give "
                         "--config FILE (the service's, with metrics_listen) or "
                         "--metrics-listen [HOST:]PORT")
    host, port = settings.metrics_listen
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with urllib.request.urlopen(f"http://{where}/status", timeout=30) as answer:
            doc = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        raise HostError(f"http://{where}/status answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise HostError(f"no lvs-extension answers on {where} (metrics_listen): {reason}; "
                        "is 'lvs-extension run' running with this metrics_listen?") from None
    except ValueError:
        raise HostError(f"http://{where}/status did not answer a JSON document") from None
    print(json.dumps(doc, indent=2, sort_keys=True) if args.json else format_text(doc))
    return 0


def _maintenance(args) -> int:
    """``withdraw`` / ``announce``: create / remove the withdrawn file."""
    settings = settings_mod.load(args, need_vip_map=False)
    path = settings.withdrawn_file
    try:
        if args.verb == "withdraw":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                f.write("withdrawn by 'lvs-extension withdraw'; 'lvs-extension announce' "
                        "ends it\n")
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    except OSError as exc:
        raise HostError(f"{args.verb}: {path}: {exc.strerror}") from None
    what = ("every VIP is withdrawn" if args.verb == "withdraw"
            else "each VIP it can serve is announced")
    print(f"{args.verb}: {path} {'created' if args.verb == 'withdraw' else 'removed'}; "
          f"within announce_interval ({settings.announce_interval:g} s) {what} by the "
          "running service")
    return 0


_VERBS = {"render": _render, "check": _check, "run": _run, "settings": _settings}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.verb in ("withdraw", "announce"):
            _logging("WARNING")
            return _maintenance(args)
        if args.verb in ("stats", "status"):
            _logging("WARNING")
            return _stats(args) if args.verb == "stats" else _status(args)
        settings = settings_mod.load(args)
        _logging(settings.log_level)
        return _VERBS[args.verb](args, settings)
    except ValidationError as exc:
        print(f"{PROG}: error: keepalived rejected the rendered file "
              f"(exit {exc.returncode}):", file=sys.stderr)
        for line in exc.messages:
            print(f"  {line}", file=sys.stderr)
        return 1
    except (InputError, TopologyError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except LvsError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:          # e.g. `lvs-extension render ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format=f"{PROG}: %(levelname)s: %(message)s")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
