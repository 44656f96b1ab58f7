"""``cartridge-agent-lvs``: the real-server plugin from the command line.

``apply`` and ``remove`` fire the same hooks the cartridge agent fires
(``InstanceStartedEvent``, ``InstanceCleanupMemberEvent``); ``status`` inspects;
``demo`` runs apply/status/remove on a sample payload inside a throwaway network
namespace.  Exit codes: 0 success, 2 bad input (one line naming key and value), 1
when the host refuses (rolled back).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional, Sequence

from ..clikit import verb_parser
from ..errors import InputError, LvsError
from ..payload import read_payload
from ..pluginmanager import Context, fire
from .netlink import NetlinkHost
from .state import StateStore
from .status import format_status, inspect
from .sysctl import Sysctl

PROG = "cartridge-agent-lvs"
NETNS_DIR = "/var/run/netns"
SAMPLES = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..",
                                        "payload_samples"))



def _parser() -> argparse.ArgumentParser:
    parser, verbs = verb_parser(PROG, "LVS direct-routing setup of a real server, "
                     "driven by the instance payload (LVS_VIRTUAL_IP).")

    def verb(name: str, help_: str, payload: Optional[bool]) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help_, description=help_)
        if payload is not None:
            sub.add_argument("--payload", metavar="FILE", required=payload,
                             help="launch-params file (one line of KEY=VALUE pairs)")
        sub.add_argument("--netns", metavar="NAME",
                         help="act inside this network namespace (sysctls included)")
        sub.add_argument("--state-dir", metavar="DIR",
                         help="where the record of changes is kept (default "
                         "$CARTRIDGE_AGENT_LVS_STATE_DIR or /var/lib/cartridge-agent-lvs)")
        sub.add_argument("-v", "--verbose", action="store_true")
        return sub

    verb("apply", "bind the payload's VIPs and set the ARP sysctls", True)
    verb("remove", "undo exactly what apply recorded", False)
    status = verb("status", "show interface, VIPs, sysctls and an LVS-DR verdict", None)
    status.add_argument("--json", action="store_true", help="one JSON document")
    demo = verbs.add_parser("demo", help="apply a sample payload in a throwaway network "
                            "namespace, show the result, clean up")
    demo.add_argument("--payload", metavar="FILE",
                      default=os.path.join(SAMPLES, "several-vips.launch-params"))
    return parser


def _context(args) -> Context:
    if args.netns and not os.path.exists(os.path.join(NETNS_DIR, args.netns)):
        raise InputError("--netns", args.netns, "no such network namespace")
    return Context(args.netns, args.state_dir)


def _fire(event: str, values, context: Context) -> int:
    outcome = fire(event, values, context, log_errors=False)
    if not outcome.ok:
        raise outcome.error
    for report in outcome.reports:
        for line in report.lines():
            print(line)
    return 0


def _apply(args) -> int:
    return _fire("InstanceStartedEvent", read_payload(args.payload), _context(args))


def _remove(args) -> int:
    values = read_payload(args.payload) if args.payload else {}
    return _fire("InstanceCleanupMemberEvent", values, _context(args))


def _inspect(context: Context) -> dict:
    with NetlinkHost(context.netns) as host:
        return inspect(host, Sysctl(context.netns),
                       StateStore(context.netns, context.state_dir))


def _status(args) -> int:
    status = _inspect(_context(args))
    print(json.dumps(status, indent=2, sort_keys=True) if args.json else format_status(status))
    return 0


def _demo(args) -> int:
    import tempfile
    from pyroute2 import netns
    name = f"lvs-demo-{os.getpid()}"
    values = read_payload(args.payload)
    with tempfile.TemporaryDirectory(prefix="lvs-demo-") as state_dir:
        netns.create(name)
        try:
            with NetlinkHost(name) as host:
                host.set_up(host.link_index("lo"))
            context = Context(name, state_dir)
            print(f"== throwaway network namespace {name}; payload {args.payload}")
            print(f"   LVS_VIRTUAL_IP={values.get('LVS_VIRTUAL_IP')}")
            print("== apply (InstanceStartedEvent)")
            _fire("InstanceStartedEvent", values, context)
            print("== status")
            print(format_status(_inspect(context)))
            print("== apply again (agent restart): a no-op")
            _fire("InstanceStartedEvent", values, context)
            print("== remove (InstanceCleanupMemberEvent)")
            _fire("InstanceCleanupMemberEvent", values, context)
            print("== status after remove")
            print(format_status(_inspect(context)))
        finally:
            netns.remove(name)
            print(f"== namespace {name} deleted")
    return 0



_VERBS = {"apply": _apply, "remove": _remove, "status": _status, "demo": _demo}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False)
                        else logging.WARNING, stream=sys.stderr,
                        format=f"{PROG}: %(levelname)s: %(message)s")
    try:
        return _VERBS[args.verb](args)
    except InputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (LvsError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
