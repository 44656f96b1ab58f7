"""Is this host (or namespace) set up for LVS-DR?  Inspection only.

The kernel applies the *maximum* of ``all`` and the interface's value for
``arp_ignore`` and ``arp_announce``, so the verdict uses that effective value.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..payload import DEFAULT_INTERFACE
from .netlink import NetlinkHost
from .state import StateStore
from .modes import DUMMY, LOOPBACK, TUNNEL, mode_of
from .sysctl import Sysctl

_LOOPBACK_ADDRS = {"127.0.0.1", "::1"}


def inspect(host: NetlinkHost, sysctl: Sysctl, store: StateStore,
            interface: Optional[str] = None) -> Dict[str, Any]:
    state = store.load()
    ifname = interface or (state.interface if state else DEFAULT_INTERFACE)
    index = host.link_index(ifname)
    if index is None and interface is None and not state:
        ifname, index = "lo", host.link_index("lo")
    recorded = set(state.addresses) if state else set()
    vips: List[str] = []
    if index is not None:
        for a in host.addresses():
            if a.index == index and a.address not in _LOOPBACK_ADDRS and (
                    ifname != "lo" or f"{a.address}/{a.prefixlen}" in recorded or not state):
                vips.append(f"{a.address}/{a.prefixlen}")
    mode = mode_of(state.mode) if state else (TUNNEL if ifname == TUNNEL.interface("")
                                              else LOOPBACK if ifname == "lo" else DUMMY)
    values = sysctl.read_many(mode.sysctl_keys(ifname))
    effective = {}
    for key in ("arp_ignore", "arp_announce"):
        nums = [int(v) for k, v in values.items() if k.endswith(key) and v is not None]
        effective[key] = max(nums) if nums else None
    problems = []
    if index is None:
        problems.append(f"interface {ifname} does not exist")
    elif not host.is_up(index):
        problems.append(f"interface {ifname} is down")
    kind = (host.link_kind(index) if index is not None else None) or \
        ("loopback" if ifname == "lo" else None)
    if index is not None and kind not in ("dummy", "loopback", "ipip"):
        problems.append(f"interface {ifname} is a {kind or 'physical'} link: a VIP there "
                        "answers ARP")
    if not vips:
        problems.append("no VIP bound")
    problems += mode.problems(ifname, values)
    return {
        "namespace": host.netns,
        "interface": ifname,
        "exists": index is not None,
        "up": index is not None and host.is_up(index),
        "kind": kind,
        "vips": sorted(vips),
        "mode": mode.name,
        "sysctls": {k.replace("/", "."): v for k, v in sorted(values.items())},
        "effective": effective,
        "recorded": state is not None,
        "ready": not problems,
        "problems": problems,
    }


def format_status(status: Dict[str, Any]) -> str:
    lines = [f"namespace:  {status['namespace'] or '(host)'}",
             f"interface:  {status['interface']} "
             f"({status['kind'] or 'absent'}, {'up' if status['up'] else 'down'})",
             f"VIPs:       {', '.join(status['vips']) or '(none)'}"]
    lines += [f"sysctl:     {k} = {v}" for k, v in status["sysctls"].items()]
    method = "LVS-TUN" if status["mode"] == TUNNEL.name else "LVS-DR"
    verdict = f"ready for {method}" if status["ready"] else f"NOT ready for {method}: " + \
        "; ".join(status["problems"])
    lines.append(f"verdict:    {verdict}")
    return "\n".join(lines)


#: the prefix of every metric the real-server wing writes
METRIC_PREFIX = "cartridge_agent_lvs"


def write_textfile(status: Dict[str, Any], path: str) -> None:
    """The verdict, VIPs and kernel parameters in node_exporter's textfile format,
    written atomically (prometheus_client writes a temporary file and renames it)."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
    registry = CollectorRegistry()
    labels = {"interface": status["interface"], "mode": status["mode"]}
    ready = Gauge(f"{METRIC_PREFIX}_ready", "1 when this host is set up to serve its VIPs "
                  "(cartridge-agent-lvs status verdict)", list(labels), registry=registry)
    ready.labels(**labels).set(1 if status["ready"] else 0)
    problems = Gauge(f"{METRIC_PREFIX}_problems", "problems found by the status verdict",
                     registry=registry)
    problems.set(len(status["problems"]))
    vip = Gauge(f"{METRIC_PREFIX}_vip", "a VIP bound on the LVS interface",
                ["vip", "interface"], registry=registry)
    for entry in status["vips"]:
        vip.labels(vip=entry, interface=status["interface"]).set(1)
    sysctl = Gauge(f"{METRIC_PREFIX}_sysctl", "a kernel parameter LVS depends on",
                   ["name"], registry=registry)
    for name, value in status["sysctls"].items():
        if value is not None and value.lstrip("-").isdigit():
            sysctl.labels(name=name).set(int(value))
    write_to_textfile(path, registry)
