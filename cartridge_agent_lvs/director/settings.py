"""Director settings: each one declared once, as an :class:`Option` in :data:`OPTIONS`.

An option names its key, parser, default, help, group, aliases and scope (global, or
also per service).  Everything else is generated from that one declaration:

* :class:`Settings` and :class:`ServiceSettings` (frozen dataclasses, one field per
  option);
* the config file format: ``key = value`` lines, ``#`` / ``;`` comments, keys spelt
  with ``_`` or ``-`` or as a declared alias (the Java extension's property names,
  e.g. ``lvs.service.virtualip.set``); after the global keys, ``[service NAME]``
  sections override the per-service options for one service of ``vip_map``;
* the command-line flags (``--vip-map`` for ``vip_map``, plus declared aliases such
  as ``--http``), see :func:`add_arguments`;
* the README table (:func:`reference_table`), the shipped example config
  (:func:`example_config`) and ``lvs-extension settings`` (:func:`config_lines`).

Precedence: defaults < config file < command line for the global values; a
``[service NAME]`` key wins over the global value for that service.  Every value is
parsed here, once: whatever reaches :class:`Settings` is valid, so nothing downstream
re-checks it and nothing a user types can add a directive to ``keepalived.conf``.  A
bad value raises :class:`~cartridge_agent_lvs.errors.SettingsError` naming the key (or
flag), the value and the file:line it came from.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import shlex
import textwrap
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ..addresses import check_ifname, check_safe_name, parse_host_ip, parse_port
from ..errors import SettingsError
from .files import read_first_line

# -- value parsers ------------------------------------------------------------------
# Each takes (value, key, source, line); value is a str (file, flag) or already a
# Python value (dict given by a caller); each returns the parsed value or raises.

Parser = Callable[[Any, str, Optional[str], Optional[int]], Any]

# characters that could break out of a keepalived line or block
_UNSAFE = re.compile(r"[\s{}\"'#!\\]")
_PATH_RE = re.compile(r"^/[A-Za-z0-9._~%/?=&+:@,;-]*$")
#: "this network" (RFC 1122): a source-only range, never a service address
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


def _fail(value: Any, key: str, source: Optional[str], line: Optional[int], reason: str):
    raise SettingsError(key, value, reason, source, line)


def choice(*allowed: str, case: bool = True) -> Parser:
    """One of *allowed*; with ``case=False`` matched case-insensitively."""
    def parse(value, key, source, line):
        if isinstance(value, str):
            for a in allowed:
                if value == a or (not case and value.lower() == a.lower()):
                    return a
        _fail(value, key, source, line, "must be one of " + ", ".join(allowed))
    return parse


def _ranged(pattern: str, convert, types: tuple, what: str, lo: float, hi: float,
            bounds: str) -> Parser:
    def parse(raw, key, source, line):
        value = raw
        if isinstance(raw, str) and re.fullmatch(pattern, raw.strip()):
            value = convert(raw)
        if isinstance(value, bool) or not isinstance(value, types):
            _fail(raw, key, source, line, what)
        if not lo <= value <= hi:
            _fail(raw, key, source, line, bounds)
        return value
    return parse


def integer(lo: int, hi: int) -> Parser:
    return _ranged(r"[0-9]{1,10}", int, (int,), "not an integer", lo, hi,
                   f"must be {lo}-{hi}")


def number(lo: float, hi: float) -> Parser:
    return _ranged(r"[0-9]{1,9}(\.[0-9]{1,6})?", float, (int, float), "not a number", lo, hi,
                   f"must be between {lo:g} and {hi:g}")


def boolean(value, key, source, line) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
    _fail(value, key, source, line, "must be true or false")


def text(value, key, source, line) -> str:
    """Free text that never reaches keepalived.conf (paths, URLs, ids): one line."""
    if not isinstance(value, str) or not value or any(c in value for c in "\r\n\0"):
        _fail(value, key, source, line, "must be one non-empty line")
    return value


def optional(parse: Parser) -> Parser:
    """*parse*, or None for an empty value / ``none``."""
    def wrapped(value, key, source, line):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        return parse(value, key, source, line)
    return wrapped


def conf_word(value, key, source, line) -> str:
    """A path that keepalived.conf itself refers to: no whitespace, quotes, braces."""
    value = text(value, key, source, line)
    if _UNSAFE.search(value):
        _fail(value, key, source, line, "must not contain whitespace, quotes, braces, "
              "'#', '!' or '\\'")
    return value


def ifname(value, key, source, line) -> str:
    return check_ifname(value, key, error=SettingsError, source=_at(source, line))


def safe_name(value, key, source, line) -> str:
    return check_safe_name(value, key, error=SettingsError, source=_at(source, line))


def auth_pass(value, key, source, line) -> str:
    """VRRP PASS authentication: 1-8 characters (keepalived truncates more); the value
    is never echoed in an error."""
    if (not isinstance(value, str) or not 1 <= len(value) <= 8 or not value.isprintable()
            or _UNSAFE.search(value)):
        _fail("***", key, source, line, "must be 1-8 printable characters without "
              "whitespace, quotes, braces, '#', '!' or '\\' (keepalived truncates longer "
              "passwords)")
    return value


def http_path(value, key, source, line) -> str:
    if not isinstance(value, str) or not _PATH_RE.match(value) or len(value) > 1024:
        _fail(value, key, source, line, "must be an absolute URL path without spaces, "
              "quotes, braces, '#' or '!'")
    return value


def command(value, key, source, line) -> Tuple[str, ...]:
    """A command line, split like a shell would (run without a shell)."""
    if isinstance(value, (list, tuple)):
        words = tuple(value)
    else:
        value = text(value, key, source, line)
        try:
            words = tuple(shlex.split(value))
        except ValueError as exc:
            _fail(value, key, source, line, f"cannot be split into words: {exc}")
    if not words or not all(isinstance(w, str) and w for w in words):
        _fail(value, key, source, line, "must be a command")
    return words


def endpoint(value, key, source, line) -> Tuple[str, int]:
    """``IP:PORT``, ``[IPv6]:PORT`` or ``HOST:PORT`` (hostname), or a (host, port) pair."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        host, port = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\S+)|([^:\s\[\]]+):(\S+)", value.strip())
        if not m:
            _fail(value, key, source, line, "must be HOST:PORT")
        host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    else:
        _fail(value, key, source, line, "must be HOST:PORT")
    if not isinstance(host, str) or not re.fullmatch(r"[A-Za-z0-9.:_-]{1,253}", host):
        _fail(value, key, source, line, "not a host name or address")
    return host, parse_port(port, key, error=SettingsError, source=_at(source, line))


def endpoints(value, key, source, line) -> Tuple[Tuple[str, int], ...]:
    """One or more endpoints separated by commas (a broker list: first is preferred)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    result = tuple(endpoint(v.strip() if isinstance(v, str) else v, key, source, line)
                   for v in items)
    if not result:
        _fail(value, key, source, line, "must name at least one HOST:PORT")
    return result


def host_port(value, key, source, line) -> Tuple[str, int]:
    """``IP PORT`` or ``IP:PORT`` where IP is a literal address (keepalived sorry_server)."""
    if isinstance(value, str):
        parts = value.split()
        if len(parts) == 1 and value.count(":") == 1:
            parts = value.split(":")
    else:
        parts = list(value)
    if len(parts) != 2:
        _fail(value, key, source, line, "must be 'IP PORT'")
    ip = parse_host_ip(parts[0], key, error=SettingsError, source=_at(source, line))
    return ip.compressed, parse_port(parts[1], key, error=SettingsError,
                                     source=_at(source, line))


def listen(value, key, source, line) -> Tuple[str, int]:
    """``[HOST:]PORT`` to listen on: HOST an IP address (IPv6 in brackets) or
    ``localhost``; a bare PORT listens on 127.0.0.1.  No name lookup."""
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        host, port = "127.0.0.1", parse_port(value, key, error=SettingsError,
                                             source=_at(source, line))
    else:
        host, port = endpoint(value, key, source, line)
    if host == "localhost":
        host = "127.0.0.1"
    try:
        return ipaddress.ip_address(host).compressed, port
    except ValueError:
        _fail(value, key, source, line, "HOST must be an IP address or localhost")


def vip_map(value, key, source, line) -> Tuple[Tuple[str, str], ...]:
    """Service -> VIP: the Stratos string ``svc|VIP,svc|VIP`` or a mapping.

    Returns ``((service, vip), ...)`` sorted by service; a service named twice is an
    error, as is an unusable address.  A VIP may serve several services (on
    different ports; the planner rejects a VIP:port:protocol claimed twice).
    """
    if isinstance(value, Mapping):
        pairs = [(k, v) for k, v in value.items()]
    elif isinstance(value, str):
        pairs = []
        for item in re.split(r"[,\s]+", value.strip()):
            if not item:
                continue
            name, sep, vip = item.partition("|")
            if not sep or not name or not vip:
                _fail(item, key, source, line, "must be SERVICE|VIP (pairs separated by ',')")
            pairs.append((name, vip))
    else:
        _fail(value, key, source, line, "must be SERVICE|VIP,SERVICE|VIP")
    result: Dict[str, str] = {}
    where = _at(source, line)
    for name, vip in pairs:
        check_safe_name(name, key, error=SettingsError, source=where)
        if name in result:
            _fail(name, key, source, line, "service named twice")
        ip = parse_host_ip(vip, key, error=SettingsError, source=where)
        if ip.version == 4 and ip in _THIS_NETWORK:
            _fail(vip, key, source, line, "is in 0.0.0.0/8 ('this network'), which cannot "
                  "be a virtual IP")
        result[name] = ip.compressed
    if not result:
        _fail(value, key, source, line, "must name at least one SERVICE|VIP pair")
    return tuple(sorted(result.items()))


def router_id(value, key, source, line) -> str:
    """A BGP router id: a dotted-quad IPv4 address (any, 0.0.0.0 excepted)."""
    try:
        ip = ipaddress.IPv4Address(value) if isinstance(value, str) else None
    except ValueError:
        ip = None
    if ip is None or int(ip) == 0:
        _fail(value, key, source, line, "must be an IPv4 address (a.b.c.d), not 0.0.0.0")
    return ip.compressed


def bgp_peers(value, key, source, line) -> Tuple[Tuple[str, int], ...]:
    """BGP neighbours: ``IP AS`` pairs separated by commas (``10.0.0.1 65000``), or a
    list of (IP, AS); returned sorted by address, each address once."""
    items = value.split(",") if isinstance(value, str) else list(value)
    where = _at(source, line)
    peers: Dict[str, int] = {}
    for item in items:
        words = item.split() if isinstance(item, str) else list(item)
        if not words:
            continue
        if len(words) != 2:
            _fail(item, key, source, line, "must be 'IP AS' pairs separated by ','")
        ip = parse_host_ip(str(words[0]), key, error=SettingsError, source=where)
        asn = AS_NUMBER(str(words[1]), key, source, line)
        if ip.compressed in peers:
            _fail(item, key, source, line, f"peer {ip} named twice")
        peers[ip.compressed] = asn
    if not peers:
        _fail(value, key, source, line, "must name at least one 'IP AS' peer")
    return tuple(sorted(peers.items(), key=lambda p: (":" in p[0], p[0])))


def id_list(value, key, source, line) -> Tuple[str, ...]:
    """Stratos ids (cluster ids, network partition ids) separated by commas or
    whitespace, or a list; returned sorted, each checked against the safe-name pattern."""
    items = re.split(r"[,\s]+", value.strip()) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        _fail(value, key, source, line, "must be ids separated by ','")
    where = _at(source, line)
    result = {check_safe_name(item, key, error=SettingsError, source=where)
              for item in items if item != ""}
    if not result:
        _fail(value, key, source, line, "must name at least one id")
    return tuple(sorted(result))


def read_secret(path: str, key: str) -> str:
    """The first line of a password/token file; ``SettingsError`` naming *key* and the
    path (never the content) when it cannot be read."""
    try:
        return read_first_line(path)
    except OSError as exc:
        raise SettingsError(key, path, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SettingsError(key, path, "not UTF-8 text") from None


def _at(source: Optional[str], line: Optional[int]) -> Optional[str]:
    """``source:line`` as one string for the address helpers' *source* argument."""
    if source and line:
        return f"{source}:{line}"
    return source


# -- how a parsed value is written back (config file, README, example) --------------

def show(value: Any) -> str:
    """A parsed value as the config file takes it back."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _show_vip_map(value) -> str:
    return ",".join(f"{svc}|{vip}" for svc, vip in value)


def _show_endpoint(value) -> str:
    host, port = value
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _show_endpoints(value) -> str:
    return ",".join(map(_show_endpoint, value))


def _show_words(value) -> str:
    return shlex.join(value)


def _show_pair(value) -> str:
    return f"{value[0]} {value[1]}"


def _show_peers(value) -> str:
    return ",".join(f"{ip} {asn}" for ip, asn in value)


def _show_ids(value) -> str:
    return ",".join(value)


AS_NUMBER = integer(1, 4294967295)


# -- the declaration ----------------------------------------------------------------

GLOBAL, PER_SERVICE = "global", "per service"


@dataclass(frozen=True)
class Option:
    """One setting, declared once.

    :param aliases: other spellings: config-file keys (``lvs.service.virtualip.set``)
        and, starting with ``--``, extra flags (``--http``).
    :param scope: :data:`GLOBAL`, or :data:`PER_SERVICE` for options a
        ``[service NAME]`` section may override.
    :param display: writes a parsed value back as the config file takes it.
    :param example: the value ``deploy/lvs-extension.conf.example`` sets (the other
        keys are shown commented out, with their default).
    """

    name: str
    parse: Parser
    default: Any
    help: str
    group: str
    metavar: Optional[str] = None
    secret: bool = False        #: never printed (``lvs-extension settings`` masks it)
    aliases: Tuple[str, ...] = ()
    scope: str = GLOBAL
    display: Callable[[Any], str] = show
    example: Optional[str] = None

    @property
    def flags(self) -> Tuple[str, ...]:
        return ("--" + self.name.replace("_", "-"),) + tuple(
            a for a in self.aliases if a.startswith("--"))

    @property
    def flag(self) -> str:
        return self.flags[0]

    @property
    def keys(self) -> Tuple[str, ...]:
        """Every spelling a config file may use for this option."""
        names = (self.name,) + tuple(a for a in self.aliases if not a.startswith("--"))
        return tuple(dict.fromkeys(n for name in names
                                   for n in (name, name.replace("_", "-"))))

    @property
    def per_service(self) -> bool:
        return self.scope == PER_SERVICE

    def format(self, value: Any) -> str:
        return "none" if value is None else self.display(value)


_G_SVC, _G_FILTER, _G_VRRP, G_BGP, _G_IPVS, _G_CHECK, _G_KA, _G_FEED, _G_LOOP, G_OBSERVE = (
    "services", "topology filters (the subset of the topology this director serves)",
    "VRRP (director high availability)",
    "BGP (mode bgp: every director active behind the router's ECMP)", "IPVS virtual servers", "health checks",
    "keepalived", "topology feed", "service loop",
    "observability (Prometheus /metrics and the /status document)")

SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo",
              "ovf", "twos")
METHODS = ("DR", "NAT", "TUN")
PROTOCOLS = ("TCP", "UDP", "SCTP")
CHECKS = ("TCP_CHECK", "HTTP_GET", "SSL_GET", "UDP_CHECK", "NONE")

OPTIONS: Tuple[Option, ...] = (
    Option("vip_map", vip_map, None, "service -> VIP map, 'svc|VIP,svc|VIP' (mandatory)",
           _G_SVC, "MAP", aliases=("lvs.service.virtualip.set",), display=_show_vip_map,
           example="tomcat|192.168.56.40,php|192.168.56.41"),
    # filters
    Option("network_partition_id", optional(id_list), None,
           "serve only members of these network partitions ('np1,np2'; a member "
           "without one is kept, as in Stratos)", _G_FILTER, "IDS",
           aliases=("network.partition.id",), display=_show_ids),
    Option("cluster_ids", optional(id_list), None,
           "serve only these clusters ('c1,c2'; Stratos' cluster-id filter)", _G_FILTER,
           "IDS", aliases=("cluster-id",), display=_show_ids),
    # VRRP
    Option("state", choice("MASTER", "BACKUP", case=False), "MASTER",
           "initial VRRP role of this director", _G_VRRP, aliases=("server.state",)),
    Option("priority", integer(1, 254), 100, "VRRP priority (the higher wins)", _G_VRRP),
    Option("virtual_router_id", integer(1, 255), 51,
           "VRRP virtual router id, the same on every director of the pair", _G_VRRP),
    Option("interface", ifname, "eth0", "interface VRRP runs on and the VIPs are added to",
           _G_VRRP),
    Option("auth_pass", optional(auth_pass), None,
           "VRRP PASS authentication for the IPv4 instance, at most 8 characters "
           "(weak: sent in clear; keep VRRP on a trusted segment)", _G_VRRP, "PASSWORD",
           secret=True),
    Option("auth_pass_file", optional(text), None,
           "file holding auth_pass (first line), so that it is not on the command line",
           _G_VRRP, "FILE"),
    Option("advert_int", integer(1, 255), 1,
           "VRRP advertisement interval, whole seconds (VRRPv2)", _G_VRRP),
    Option("nopreempt", boolean, False,
           "a recovered higher-priority director does not take the VIPs back "
           "(needs state BACKUP on both)", _G_VRRP),
    Option("router_id", safe_name, "lvs_extension", "keepalived router_id (global_defs)",
           _G_VRRP),
    Option("sync_interface", optional(ifname), None,
           "synchronise IPVS connections to the other director over this interface "
           "(lvs_sync_daemon), so a new MASTER knows the established connections",
           _G_VRRP, "IFACE"),
    # BGP
    Option("mode", choice("vrrp", "bgp"), "vrrp",
           "vrrp: an active/backup pair sharing the VIPs by VRRP; bgp: every director "
           "active, each announcing its VIPs by BGP (BIRD) while it can serve them",
           G_BGP),
    Option("vip_interface", ifname, "lo",
           "mode bgp: the interface the VIPs are added to (lo: no ARP answers)", G_BGP),
    Option("bgp_local_as", optional(AS_NUMBER), None,
           "mode bgp: this director's AS number", G_BGP, "AS"),
    Option("bgp_router_id", optional(router_id), None,
           "mode bgp: this director's BGP router id, unique per director (IPv4 form)",
           G_BGP, "A.B.C.D"),
    Option("bgp_peers", optional(bgp_peers), None,
           "mode bgp: the routers to announce to, 'IP AS[,IP AS...]'", G_BGP, "PEERS",
           display=_show_peers),
    Option("bgp_hold_time", integer(3, 65535), 9,
           "mode bgp: BGP hold time, seconds (the fallback when BFD is off)", G_BGP),
    Option("bfd", boolean, True,
           "mode bgp: BFD on every BGP session, so a router drops a dead director "
           "after bfd_interval_ms x bfd_multiplier", G_BGP),
    Option("bfd_interval_ms", integer(10, 60000), 300,
           "mode bgp: BFD transmit / receive interval, milliseconds", G_BGP),
    Option("bfd_multiplier", integer(1, 255), 3,
           "mode bgp: BFD packets missed before a session is down", G_BGP),
    Option("bird_conf", conf_word, "/etc/bird/bird.conf",
           "mode bgp: the BIRD configuration file written (BIRD must run with it)",
           G_BGP, "FILE"),
    Option("bird_socket", text, "/run/bird/bird.ctl",
           "mode bgp: BIRD's control socket (told to re-read bird_conf)", G_BGP, "FILE"),
    Option("bird_bin", text, "bird", "mode bgp: BIRD binary used for 'bird -p' (parse "
           "check)", G_BGP, "FILE"),
    Option("announce_interval", number(0.05, 60), 0.5,
           "mode bgp: seconds between checks that keepalived runs and IPVS has real "
           "servers for each VIP (a failed check withdraws at once)", G_BGP),
    Option("withdrawn_file", text, "/var/lib/lvs-extension/withdrawn",
           "mode bgp: while this file exists every VIP is withdrawn ('lvs-extension "
           "withdraw' creates it, 'announce' removes it)", G_BGP, "FILE"),
    Option("sloppy_tcp", boolean, True,
           "mode bgp: net.ipv4.vs.sloppy_tcp=1 while running (restored on exit), so a "
           "director that inherits a flow mid-connection forwards it", G_BGP),
    # IPVS
    Option("scheduler", choice(*SCHEDULERS), "rr", "IPVS scheduler", _G_IPVS,
           aliases=("schedule.algorithm",), scope=PER_SERVICE),
    Option("forwarding_method", choice(*METHODS, case=False), "DR",
           "IPVS forwarding method", _G_IPVS, scope=PER_SERVICE),
    Option("protocol", choice(*PROTOCOLS, case=False), "TCP",
           "protocol of a port whose portMap protocol is not tcp/udp/sctp/http(s)", _G_IPVS,
           scope=PER_SERVICE),
    Option("persistence_timeout", integer(0, 31536000), 0,
           "client affinity in seconds (0 = none)", _G_IPVS, scope=PER_SERVICE),
    Option("weight", integer(1, 65535), 1, "weight of every real server", _G_IPVS,
           scope=PER_SERVICE),
    Option("sorry_server", optional(host_port), None,
           "'IP PORT' served while every real server of a virtual server (of the "
           "same address family) is down", _G_IPVS, "IP PORT", scope=PER_SERVICE,
           display=_show_pair),
    # health checks
    Option("health_check", choice(*CHECKS, case=False), "TCP_CHECK",
           "health check of the real servers (UDP_CHECK: a datagram, down on ICMP port "
           "unreachable)", _G_CHECK, scope=PER_SERVICE),
    Option("http_path", http_path, "/", "URL path of HTTP_GET / SSL_GET", _G_CHECK, "PATH",
           scope=PER_SERVICE),
    Option("http_status", integer(100, 599), 200, "expected HTTP status code", _G_CHECK,
           scope=PER_SERVICE),
    Option("delay_loop", integer(1, 86400), 6, "seconds between health checks", _G_CHECK,
           scope=PER_SERVICE),
    Option("connect_timeout", integer(1, 3600), 3, "health check timeout, seconds",
           _G_CHECK, scope=PER_SERVICE),
    Option("retry", integer(0, 100), 1, "failed checks before a real server is removed",
           _G_CHECK, scope=PER_SERVICE),
    # keepalived
    Option("keepalived_conf", conf_word, "/etc/keepalived/keepalived.conf",
           "the file written (mode 0600)", _G_KA, "FILE", aliases=("conf.file.path",)),
    Option("keepalived_bin", text, "keepalived", "keepalived binary used for 'keepalived -t'",
           _G_KA, "FILE"),
    Option("keepalived_pidfile", optional(text), "/run/keepalived.pid",
           "pid file of the keepalived to SIGHUP after a change", _G_KA, "FILE"),
    Option("keepalived_shards", integer(0, 64), 0,
           "0: one keepalived.conf; N: keepalived_conf holds only VRRP (keepalived -P) and "
           "the virtual servers go to N files keepalived.shard-NN.conf, each run by its "
           "own keepalived -C and reloaded only when it changed", _G_KA, "N"),
    Option("ipvs_first", boolean, True,
           "write a member's real-server change (added, removed, weight) into IPVS over "
           "netlink once its file is validated and written, then reload keepalived, "
           "which finds it done: the kernel does not wait for keepalived to re-read "
           "its file", _G_KA),
    Option("reload_command", optional(command), None,
           "command that reloads keepalived instead of the SIGHUP, e.g. "
           "'systemctl reload keepalived' (run without a shell)", _G_KA, "COMMAND",
           display=_show_words),
    # feeds
    Option("topology_file", optional(text), None,
           "follow this CompleteTopologyEvent JSON file (re-read on change and SIGHUP)",
           _G_FEED, "FILE"),
    Option("mqtt", optional(endpoints), None,
           "follow the Stratos broker(s) over MQTT, HOST:PORT[,HOST:PORT...]", _G_FEED,
           "BROKERS", display=_show_endpoints, example="127.0.0.1:1883"),
    Option("mqtt_username", optional(text), None, "MQTT user name", _G_FEED, "NAME"),
    Option("mqtt_password_file", optional(text), None,
           "file holding the MQTT password (else $LVS_MQTT_PASSWORD)", _G_FEED, "FILE"),
    Option("mqtt_ca_file", optional(text), None, "CA bundle: connect to the broker with TLS",
           _G_FEED, "FILE"),
    Option("mqtt_client_id", optional(text), None, "MQTT client id (none: a random one)",
           _G_FEED, "ID"),
    Option("http_url", optional(text), None,
           "poll a CompleteTopologyEvent JSON document at this URL", _G_FEED, "URL",
           aliases=("--http",)),
    Option("http_interval", number(0.01, 86400), 5, "seconds between HTTP polls", _G_FEED),
    Option("http_timeout", number(0.01, 3600), 10,
           "HTTP timeout, seconds: for each network wait and for the whole answer", _G_FEED),
    Option("http_token_file", optional(text), None,
           "file holding a bearer token for the HTTP feed (else $LVS_HTTP_TOKEN)", _G_FEED,
           "FILE"),
    Option("http_ca_file", optional(text), None, "CA bundle for the HTTPS feed", _G_FEED,
           "FILE"),
    # loop
    Option("quiet_period", number(0, 3600), 1,
           "apply once the topology has been quiet this long (coalesces bursts)", _G_LOOP),
    Option("max_delay", number(0, 3600), 10,
           "apply at the latest this long after the first unapplied change", _G_LOOP),
    Option("drain_seconds", number(0, 86400), 30,
           "a leaving real server keeps weight 0 this long before removal (0 = at once)",
           _G_LOOP),
    Option("mass_removal_threshold", number(0, 1), 0.5,
           "hold back an update removing more than this share of all real servers",
           _G_LOOP),
    Option("mass_removal_hold", number(0, 86400), 60,
           "... until it is still the case after this many seconds", _G_LOOP),
    Option("allow_mass_removal", boolean, False, "apply mass removals at once", _G_LOOP),
    Option("log_level", choice("DEBUG", "INFO", "WARNING", "ERROR", case=False), "INFO",
           "log level", _G_LOOP),
    # observability
    Option("metrics_listen", optional(listen), None,
           "serve Prometheus /metrics and the /status document on [HOST:]PORT (HOST an IP "
           "address; a bare PORT listens on 127.0.0.1; none = off)", G_OBSERVE,
           "[HOST:]PORT", display=_show_endpoint),
    Option("metrics_allow_remote", boolean, False,
           "allow a metrics_listen address that is not loopback (/metrics and /status "
           "name every VIP and real server)", G_OBSERVE),
    Option("metrics_real_servers", boolean, True,
           "export the per-real-server series (9 per real server); false: per virtual "
           "server and per cluster only -- a scrape at 10,000 real servers then stays "
           "small (bench/bench_metrics.py)", G_OBSERVE),
)

BY_NAME: Dict[str, Option] = {o.name: o for o in OPTIONS}
#: scheduler every director of mode bgp uses: Maglev, the same choice on each
BGP_SCHEDULER = "mh"
SERVICE_OPTIONS: Tuple[Option, ...] = tuple(o for o in OPTIONS if o.per_service)
#: every spelling a config file may use -> option name
_KEYS: Dict[str, str] = {key: o.name for o in OPTIONS for key in o.keys}

#: the ``[service NAME]`` sections of the shipped example config and the README
EXAMPLE_SERVICES: Tuple[Tuple[str, Tuple[Tuple[str, str], ...]], ...] = (
    ("php", (("health_check", "HTTP_GET"), ("http_path", "/health"),
             ("scheduler", "wlc"))),
    ("tomcat", (("persistence_timeout", "300"), ("sorry_server", "192.168.56.200 80"))),
)


# -- the classes generated from it --------------------------------------------------

Overrides = Tuple[Tuple[str, Tuple[Tuple[str, Any], ...]], ...]


def _generated(name: str, options: Tuple[Option, ...], doc: str, extra=(),
               namespace: Optional[Dict[str, Any]] = None) -> type:
    cls = make_dataclass(name, [(o.name, Any) for o in options] + list(extra),
                         frozen=True, namespace=namespace)
    cls.__module__, cls.__doc__ = __name__, doc
    return cls


ServiceSettings = _generated(
    "ServiceSettings", SERVICE_OPTIONS,
    "The per-service options of one service, resolved: its ``[service NAME]`` value, "
    "else the global one.")


def _services(self) -> Dict[str, str]:
    """service name -> VIP."""
    return dict(self.vip_map)


def _overrides(self, service: str) -> Dict[str, Any]:
    """The values a ``[service NAME]`` section sets for *service* (parsed)."""
    return dict(dict(self.service_overrides).get(service, ()))


def _for_service(self, service: str) -> Any:
    """The :class:`ServiceSettings` of *service*: overrides, else the global values."""
    given = self.overrides(service)
    return ServiceSettings(**{o.name: given.get(o.name, getattr(self, o.name))
                              for o in SERVICE_OPTIONS})


Settings = _generated(
    "Settings", OPTIONS,
    "Every director setting (one field per option of :data:`OPTIONS`), parsed; "
    "``service_overrides`` holds the ``[service NAME]`` sections "
    "(``((service, ((option, value), ...)), ...)``, sorted).",
    extra=[("service_overrides", Any, field(default=()))],
    namespace={"services": property(_services), "overrides": _overrides,
               "for_service": _for_service})


# -- sources ------------------------------------------------------------------------

_SECTION_RE = re.compile(r"^\[\s*service\s+([^\s\]]+)\s*\]$")

Entries = Dict[str, Tuple[str, int]]


@dataclass
class ConfigFile:
    """A config file, read: ``{name: (raw value, line)}`` for the global keys, and per
    ``[service NAME]`` section its header line and entries."""

    values: Entries = field(default_factory=dict)
    sections: Dict[str, Tuple[int, Entries]] = field(default_factory=dict)


_INLINE_COMMENT = re.compile(r"\s[#;]")


def read_config(path: str) -> ConfigFile:
    """The raw entries of a config file; SettingsError on any bad line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise SettingsError("--config", path, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SettingsError("--config", path, "not UTF-8 text") from None
    config = ConfigFile()
    found, section = config.values, None
    for number_, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("["):
            section = _section(config, stripped, path, number_)
            found = config.sections[section][1]
            continue
        key, sep, value = stripped.partition("=")
        # an inline comment: '#' or ';' after white space ("key = value  # note")
        key, value = key.strip(), _INLINE_COMMENT.split(value, maxsplit=1)[0].strip()
        if not sep:
            raise SettingsError(key, stripped, "expected 'key = value'", path, number_)
        name = _KEYS.get(key) or _KEYS.get(key.replace("-", "_"))
        if name is None:
            raise SettingsError(key, value, "unknown setting", path, number_)
        if section is not None and not BY_NAME[name].per_service:
            raise SettingsError(key, value, f"is a global setting, not one of [service "
                                f"{section}]: put it before the first [service] section",
                                path, number_)
        if name in found:
            raise SettingsError(key, value, f"set twice (first on line {found[name][1]})",
                                path, number_)
        found[name] = (value, number_)
    return config


def _section(config: ConfigFile, header: str, path: str, line: int) -> str:
    match = _SECTION_RE.match(header)
    if not match:
        raise SettingsError("section", header, "expected '[service NAME]'", path, line)
    name = check_safe_name(match.group(1), "service", error=SettingsError,
                           source=_at(path, line))
    if name in config.sections:
        raise SettingsError("section", header, f"given twice (first on line "
                            f"{config.sections[name][0]})", path, line)
    config.sections[name] = (line, {})
    return name


def load(given: Any = None, config_path: Optional[str] = None, *,
         need_vip_map: bool = True) -> Settings:
    """Settings from defaults, then *config_path*, then *given*.

    ``need_vip_map=False`` is for a caller that only reads other settings (``status``
    reads ``metrics_listen``): a missing ``vip_map`` is then not an error.

    *given* is an ``argparse.Namespace`` (attributes named after the options; absent
    or None = not given; ``config`` names the config file) or a plain dict of option
    names to values (strings or Python values), where ``service_overrides`` may map
    service names to dicts of per-service options.
    """
    values: Dict[str, Any] = {o.name: o.default for o in OPTIONS}
    overrides: Dict[str, Dict[str, Any]] = {}
    headers: Dict[str, int] = {}
    if isinstance(given, argparse.Namespace):
        config_path = config_path or getattr(given, "config", None)
        items = {k: v for k, v in vars(given).items() if k in BY_NAME and v is not None}
        flags = True
    else:
        items = dict(given or {})
        _given_overrides(items.pop("service_overrides", None) or {}, overrides)
        unknown = sorted(set(items) - set(BY_NAME))
        if unknown:
            raise SettingsError(unknown[0], items[unknown[0]], "unknown setting")
        flags = False
    parsed: Dict[str, Any] = {}
    #: option name -> (key as given, file, line): where a parsed value came from
    origin: Dict[str, Tuple[str, Optional[str], Optional[int]]] = {}
    if config_path:
        config = read_config(config_path)
        parsed.update(_parsed(config.values, config_path))
        origin.update({name: (name, config_path, line)
                       for name, (_, line) in config.values.items()})
        for service, (line, entries) in config.sections.items():
            headers[service] = line
            overrides[service] = {**_parsed(entries, config_path),
                                  **overrides.get(service, {})}
    for name, value in items.items():
        option = BY_NAME[name]
        key = option.flag if flags else name
        parsed[name] = option.parse(value, key, None, None)
        origin[name] = (key, None, None)
    values.update(parsed)
    if values["auth_pass_file"]:
        _auth_pass_from_file(values)
    _check_listen(values, origin.get("metrics_listen", ("metrics_listen", None, None)))
    if values["keepalived_shards"] and values["reload_command"]:
        key, source, line = origin.get("reload_command", ("reload_command", None, None))
        raise SettingsError(key, _show_words(values["reload_command"]), "cannot be used "
                            "with keepalived_shards: each shard is reloaded on its own "
                            "(SIGHUP to the pid in its pid file)", source, line)
    if values["keepalived_shards"] and values["mode"] == "bgp":
        key, source, line = origin.get("keepalived_shards", ("keepalived_shards", None, None))
        raise SettingsError(key, values["keepalived_shards"], "cannot be used with mode bgp "
                            "(not supported together yet: use a single file)", source, line)
    if values["keepalived_shards"] and not values["keepalived_pidfile"]:
        raise SettingsError("keepalived_shards", values["keepalived_shards"], "needs "
                            "keepalived_pidfile: the shards' pid files are named after it")
    if values["vip_map"] is None and need_vip_map:
        raise SettingsError("vip_map", None, "is mandatory: give --vip-map 'svc|VIP,...' or "
                            "vip_map in the config file", config_path)
    mapped = dict(values["vip_map"] or ())
    if values["mode"] == "bgp":
        _check_bgp(values, overrides, origin)
    for service in sorted(overrides):
        if service not in mapped:
            raise SettingsError("service", service, "has a [service] section but is not in "
                                "vip_map", config_path if service in headers else None,
                                headers.get(service))
    return Settings(**values, service_overrides=tuple(
        (service, tuple(sorted(overrides[service].items()))) for service in sorted(overrides)
        if overrides[service]))


def _parsed(entries: Entries, path: str) -> Dict[str, Any]:
    return {name: BY_NAME[name].parse(raw, name, path, line)
            for name, (raw, line) in entries.items()}


def _given_overrides(given: Mapping[str, Mapping[str, Any]],
                     into: Dict[str, Dict[str, Any]]) -> None:
    """``{service: {option: value}}`` from a caller, parsed into *into*."""
    for service, entries in given.items():
        check_safe_name(service, "service", error=SettingsError)
        for name, value in entries.items():
            option = BY_NAME.get(name)
            if option is None or not option.per_service:
                raise SettingsError(name, value, f"not a per-service setting (service "
                                    f"{service!r})")
            into.setdefault(service, {})[name] = option.parse(value, name, None, None)


def _auth_pass_from_file(values: Dict[str, Any]) -> None:
    path = values["auth_pass_file"]
    if values["auth_pass"] is not None:
        raise SettingsError("auth_pass_file", path, "give auth_pass or auth_pass_file, "
                            "not both")
    values["auth_pass"] = BY_NAME["auth_pass"].parse(read_secret(path, "auth_pass_file"),
                                                     "auth_pass_file", path, 1)


def _check_bgp(values: Dict[str, Any], overrides: Dict[str, Dict[str, Any]],
               origin: Dict[str, Tuple[str, Optional[str], Optional[int]]]) -> None:
    """Mode bgp: the BGP settings are given, every service uses ``mh`` (each director
    must send a flow to the same real server), no VRRP-only setting, and each VIP's
    address family has a peer to be announced to."""
    def fail(name: str, value: Any, reason: str):
        key, source, line = origin.get(name, (name, None, None))
        raise SettingsError(key, value if value is None else BY_NAME[name].format(value),
                            reason, source, line)

    for name in ("bgp_local_as", "bgp_router_id", "bgp_peers"):
        if values[name] is None:
            fail(name, None, "is mandatory with mode bgp")
    if values["sync_interface"] is not None:
        fail("sync_interface", values["sync_interface"], "mode bgp runs no VRRP: IPVS "
             "connection sync has no master to follow (mh + sloppy_tcp carry flows)")
    reason = (f"mode bgp needs scheduler {BGP_SCHEDULER}: every director must send a flow "
              "to the same real server")
    if values["scheduler"] != BGP_SCHEDULER:
        fail("scheduler", values["scheduler"], reason)
    for service in sorted(overrides):
        chosen = overrides[service].get("scheduler", BGP_SCHEDULER)
        if chosen != BGP_SCHEDULER:
            raise SettingsError("scheduler", chosen, f"[service {service}]: {reason}")
    families = {ipaddress.ip_address(ip).version for ip, _ in values["bgp_peers"]}
    for service, vip in values["vip_map"] or ():
        if ipaddress.ip_address(vip).version not in families:
            fail("bgp_peers", values["bgp_peers"], f"no IPv{ipaddress.ip_address(vip).version} "
                 f"peer to announce {vip} ({service}) to")


def _check_listen(values: Dict[str, Any],
                  origin: Tuple[str, Optional[str], Optional[int]]) -> None:
    """A non-loopback ``metrics_listen`` only with ``metrics_allow_remote``."""
    address = values["metrics_listen"]
    if address is None or values["metrics_allow_remote"]:
        return
    if not ipaddress.ip_address(address[0]).is_loopback:
        key, source, line = origin
        raise SettingsError(key, _show_endpoint(address), "is not a loopback address: "
                            "/metrics and /status name every VIP and real server; set "
                            "metrics_allow_remote = true (--metrics-allow-remote) to serve "
                            "them to the network", source, line)


# -- what is generated from the declaration ------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, exclude: Tuple[str, ...] = ()) -> None:
    """One flag (plus aliases) per option, grouped; values stay strings, :func:`load`
    parses them."""
    groups: Dict[str, Any] = {}
    parser.add_argument("--config", metavar="FILE",
                        help="config file of 'key = value' lines and [service NAME] "
                        "sections (flags override its global keys)")
    for option in OPTIONS:
        if option.name in exclude:
            continue
        group = groups.get(option.group)
        if group is None:
            group = groups[option.group] = parser.add_argument_group(option.group)
        extra = dict(nargs="?", const="true") if option.parse is boolean else {}
        if option.metavar and " " in option.metavar:    # 'IP PORT': two words, or one
            extra = dict(nargs="+", action=_JoinWords)      # usage: IP [PORT ...]
        scope = "; per service in [service NAME]" if option.per_service else ""
        metavar = tuple(option.metavar.split()) if "action" in extra else option.metavar
        group.add_argument(*option.flags, dest=option.name, metavar=metavar,
                           help=f"{option.help} (default: {describe(option)}{scope})",
                           **extra)


class _JoinWords(argparse.Action):
    """A value the help writes as two words (``--sorry-server IP PORT``) taken as
    given: two words, or one quoted word."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) > 2:
            parser.error(f"{option_string} takes {' '.join(self.metavar)}, got "
                         f"{' '.join(values)!r}")
        setattr(namespace, self.dest, " ".join(values))


def describe(option: Option) -> str:
    """The default as a user would write it."""
    return option.format(option.default)


def reference_table() -> str:
    """The reST table of every key, its flags, default and scope (README ``Settings``)."""
    rows = [(f"``{o.name}``", ", ".join(f"``{f}``" for f in o.flags), describe(o),
             o.scope, o.help) for o in OPTIONS]
    head = ("key", "flag", "default", "scope", "meaning")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    rule = "  ".join("=" * w for w in widths)
    out = [rule, "  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip(), rule]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    out.append(rule)
    return "\n".join(out)


def _rule(title: str) -> str:
    return f"# -- {title} ".ljust(82, "-")


def _comment(text_: str) -> List[str]:
    return textwrap.wrap(text_, 86, initial_indent="# ", subsequent_indent="# ")


def service_example() -> str:
    """The ``[service NAME]`` sections of the example config (also in the README)."""
    blocks = ["\n".join([f"[service {service}]"] + [f"{k} = {v}" for k, v in entries])
              for service, entries in EXAMPLE_SERVICES]
    return "\n\n".join(blocks) + "\n"


def example_config() -> str:
    """The text of ``deploy/lvs-extension.conf.example``."""
    out = [
        "# lvs-extension configuration: 'key = value' lines; '#' or ';' starts a comment.",
        "# Every key is also a command-line flag (vip_map -> --vip-map); flags override "
        "this file.",
        "# Keys left commented out keep the default shown. Keys marked [per service] can "
        "also be",
        "# set for one service in a [service NAME] section at the end of the file.",
        "# (Generated: python -m cartridge_agent_lvs.director.settings example)"]
    group = None
    for o in OPTIONS:
        if o.group != group:
            group = o.group
            out += ["", _rule(group)]
        out += _comment(o.help + (" [per service]" if o.per_service else ""))
        out.append(f"{o.name} = {o.example}" if o.example is not None
                   else f"# {o.name} = {describe(o)}")
    out += ["", _rule("per-service settings")]
    out += _comment("A [service NAME] section, for a service of vip_map, sets keys marked "
                    "[per service] for that service only; the keys it does not set keep "
                    "the global value. Sections come after every global key.")
    return "\n".join(out) + "\n" + service_example()


def config_lines(settings: Settings) -> List[str]:
    """The effective settings as config-file lines (``lvs-extension settings``).

    A secret is commented out and masked, a URL with credentials commented out and
    redacted: a copy of the output must not set a wrong password either.
    """
    from .feeds import redact_urls

    def line(option: Option, value: Any) -> str:
        text_ = f"{option.name} = {option.format(value)}"
        if option.secret and value is not None:
            return f"# {option.name} = *** (not shown)"
        if redact_urls(text_) != text_:
            return f"# {redact_urls(text_)} (credentials not shown)"
        return text_

    out = [line(o, getattr(settings, o.name)) for o in OPTIONS]
    for service, entries in settings.service_overrides:
        out += ["", f"[service {service}]"]
        out += [line(BY_NAME[name], value) for name, value in entries]
    return out


if __name__ == "__main__":  # pragma: no cover - regenerates the documentation
    import sys
    what = sys.argv[1:] or ["example"]
    print(example_config() if what == ["example"] else reference_table(), end="")
