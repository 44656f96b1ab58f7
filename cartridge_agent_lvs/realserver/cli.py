"""``cartridge-agent-lvs``: the real-server plugin from the command line.

``apply`` and ``remove`` fire the same hooks the cartridge agent fires
(``InstanceStartedEvent``, ``clean``); ``check`` validates a payload, also against
what the Stratos agent itself can take; ``status`` inspects; ``demo`` runs
apply/status/remove on a sample payload inside a throwaway network namespace.
``install-pca`` installs the plugin into a Stratos agent home, and ``agent-event`` is
what the plugin's shim runs for each agent event (values as JSON on stdin, one JSON
line out).  Exit codes: 0 success, 2 bad input (one line naming key and value), 1
when the host refuses (rolled back).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from typing import Optional, Sequence

from ..clikit import verb_parser
from ..errors import InputError, LvsError
from ..payload import lvs_request, read_payload, stratos_agent_warnings
from ..pluginmanager import BUILTIN, Context, failure_line, fire
from . import pca
from .netlink import NetlinkHost
from .state import StateStore
from .status import format_status, inspect, write_textfile
from .sysctl import Sysctl

PROG = "cartridge-agent-lvs"
NETNS_DIR = "/var/run/netns"
#: the largest ``values`` document ``agent-event`` reads (a payload is one line)
MAX_EVENT_BYTES = 4 << 20


def sample(name: str) -> str:
    """A shipped sample payload (``payload_samples/``, packaged with the code)."""
    from ..shipped import folder
    return str(folder("payload_samples").joinpath(name))


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
    check = verbs.add_parser("check", help="validate a payload, also against what the "
                             "Stratos agent itself can take (changes nothing)")
    check.add_argument("--payload", metavar="FILE", required=True,
                       help="launch-params file (one line of KEY=VALUE pairs)")
    event = verb("agent-event", "run the hooks of one agent event: the agent's values "
                 "as a JSON object on standard input (EVENT names the event), one JSON "
                 "line out (what the plugin shim runs)", None)
    event.set_defaults(verbose=False)
    install = verbs.add_parser("install-pca", help="install the plugin into a Stratos "
                               "Python cartridge agent", description=pca.__doc__.split(
                                   "\n\n")[0])
    install.add_argument("pca_home", metavar="PCA_HOME", help="the agent's folder (with "
                         "agent.py and plugins/)")
    install.add_argument("--uninstall", action="store_true", help="put back what "
                         "install-pca changed")
    install.add_argument("--command", metavar="PATH", help="the cartridge-agent-lvs "
                         "console script the agent runs (default: this one, "
                         f"{pca.default_command()})")
    install.add_argument("--timeout", metavar="SECONDS", type=float, default=60.0,
                         help="kill a plugin run after this long (default 60)")
    install.add_argument("--state-dir", metavar="DIR", help="where the plugin records "
                         "its changes (default /var/lib/cartridge-agent-lvs)")
    status = verb("status", "show interface, VIPs, sysctls and an LVS-DR verdict", None)
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.add_argument("--prometheus", metavar="FILE", help="also write the verdict, "
                        "VIPs and sysctls to FILE in node_exporter's textfile format "
                        "(atomically; e.g. /var/lib/node_exporter/textfile/lvs.prom)")
    demo = verbs.add_parser("demo", help="apply a sample payload in a throwaway network "
                            "namespace, show the result, clean up")
    demo.add_argument("--payload", metavar="FILE",
                      default=sample("several-vips.launch-params"))
    return parser


#: a name `ip netns add` accepts: no '/', not '.' or '..' (never a path such as
#: /proc/PID/ns/net)
_NETNS_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _context(args) -> Context:
    if args.netns is not None:
        if not _NETNS_RE.match(args.netns) or args.netns in (".", ".."):
            raise InputError("--netns", args.netns, "not a network namespace name (as "
                             "`ip netns` names them: letters, digits, '_', '.', '-')")
        if not os.path.exists(os.path.join(NETNS_DIR, args.netns)):
            raise InputError("--netns", args.netns, "no such network namespace")
    return Context(args.netns, args.state_dir)


def _fire(event: str, values, context: Context) -> int:
    outcome = fire(event, values, context, log_errors=False)
    for line in outcome.result_lines():
        print(line)
    if len(outcome.failures) == 1 and outcome.failures[0][0] == BUILTIN:
        raise outcome.error      # its own exit status: 2 for bad input, 1 otherwise
    if outcome.failures:
        raise LvsError("; ".join(failure_line(*f) for f in outcome.failures))
    return 0


def _warn_stratos(values) -> None:
    for warning in stratos_agent_warnings(values):
        print(f"{PROG}: warning: {warning}", file=sys.stderr)


def _apply(args) -> int:
    values = read_payload(args.payload)
    lvs_request(values, source=args.payload)        # bad input: one line, before warnings
    _warn_stratos(values)
    return _fire("InstanceStartedEvent", values, _context(args))


def _remove(args) -> int:
    values = read_payload(args.payload) if args.payload else {}
    return _fire("clean", values, _context(args))


def _check(args) -> int:
    values = read_payload(args.payload)
    request = lvs_request(values, source=args.payload)
    if request is None:
        print(f"{args.payload}: no LVS_VIRTUAL_IP: the plugin will do nothing")
        return 0
    print(f"{args.payload}: {len(request.vips)} VIP(s) "
          f"{', '.join(v.address for v in request.vips)} on {request.interface} "
          f"(mode {request.mode})")
    _warn_stratos(values)
    return 1 if stratos_agent_warnings(values) else 0


def _agent_event(args) -> int:
    """One agent event from the shim: never a traceback, always one JSON line."""
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    answer = {"ok": False, "hook": None, "lines": []}
    try:
        raw = sys.stdin.buffer.read(MAX_EVENT_BYTES + 1)
        if len(raw) > MAX_EVENT_BYTES:
            raise InputError("values", f"{len(raw)} bytes", "larger than "
                             f"{MAX_EVENT_BYTES} bytes", "stdin")
        values = json.loads(raw.decode("utf-8"))
        if not isinstance(values, dict) or not isinstance(values.get("EVENT"), str):
            raise InputError("values", str(values)[:60], "not a JSON object with EVENT",
                             "stdin")
        outcome = fire(values["EVENT"], values, _context(args), log_errors=False)
        answer.update(ok=outcome.ok, hook=outcome.hook, lines=outcome.lines())
    except Exception as exc:  # the shim logs this line in the agent
        answer["lines"] = [" ".join(str(exc).split()) or type(exc).__name__]
    print(json.dumps(answer))
    return 0 if answer["ok"] else 1


def _install_pca(args) -> int:
    lines = pca.uninstall(args.pca_home) if args.uninstall else pca.install(
        args.pca_home, args.command, args.timeout, args.state_dir)
    print("\n".join(lines))
    return 0


def _inspect(context: Context) -> dict:
    with NetlinkHost(context.netns) as host:
        return inspect(host, Sysctl(context.netns),
                       StateStore(context.netns, context.state_dir))


def _status(args) -> int:
    status = _inspect(_context(args))
    print(json.dumps(status, indent=2, sort_keys=True) if args.json else format_status(status))
    if args.prometheus:
        write_textfile(status, args.prometheus)
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
            print("== remove (clean: the agent's instance cleanup)")
            _fire("clean", values, context)
            print("== status after remove")
            print(format_status(_inspect(context)))
        finally:
            netns.remove(name)
            print(f"== namespace {name} deleted")
    return 0



_VERBS = {"apply": _apply, "remove": _remove, "check": _check, "status": _status,
          "demo": _demo, "agent-event": _agent_event, "install-pca": _install_pca}


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
