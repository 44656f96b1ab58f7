"""The instance payload ("launch-params") and the LVS keys in it.  Pure functions.

The Stratos format is ONE line of comma-separated ``KEY=VALUE`` pairs: each pair is
split on its first ``=``, whitespace around keys and values is stripped, a pair
without ``=`` is skipped, and ``null`` (any case) or an empty value means "not set".
The same values reach the plugin three ways -- a launch-params file, the dict the
Stratos agent hands to plugins, the environment -- and all three end in
:func:`lvs_request`.

LVS keys:

``LVS_VIRTUAL_IP``  one or more VIPs separated by ``;`` or whitespace, each ``VIP``,
                    ``VIP|NETMASK`` (the Stratos form) or ``VIP/PREFIX``; IPv4 or IPv6.
``LVS_INTERFACE``   the dummy interface carrying the VIPs (default ``lvs0``).
``LVS_MODE``        ``auto`` (default: dummy, or ``lo`` where the kernel has no dummy
                    driver), ``dummy``, ``loopback``, or ``tunnel`` (LVS-TUN: the VIPs on
                    ``tunl0``, IPv4 only).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

from .addresses import VirtualIP, check_ifname, parse_vip
from .errors import PayloadError

KEY_VIP = "LVS_VIRTUAL_IP"
KEY_INTERFACE = "LVS_INTERFACE"
KEY_MODE = "LVS_MODE"
DEFAULT_INTERFACE = "lvs0"
MODES = ("auto", "dummy", "loopback", "tunnel")

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_VIP_SEP = re.compile(r"[;\s]+")
#: a launch-params line is a few KiB (a JWT token is the largest value); far above
#: that is not a payload
MAX_PAYLOAD_BYTES = 1 << 20
#: what looks like a VIP item (a pair without '=' after LVS_VIRTUAL_IP)
_VIP_LIKE = re.compile(r"^[0-9A-Fa-f:.]+([|/][0-9A-Fa-f:.]*)?$")


def is_unset(value: object) -> bool:
    """Stratos' "not set": absent, empty, or ``null`` in any case."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "null"))


def parse_launch_params(text: str, source: Optional[str] = None) -> Dict[str, str]:
    """``{KEY: value}`` from a launch-params line; unset values are left out.

    Only the first line counts (the format is one line, ended by ``\n``: other
    line-breaking characters are part of the line and fail validation where they
    matter); a repeated key keeps its last value, as the Stratos agent did.  A pair
    without ``=`` is skipped -- but one that looks like an address right after
    ``LVS_VIRTUAL_IP`` is an error: VIPs are separated by ``;``, a ``,`` ends the value.
    """
    if len(text) > MAX_PAYLOAD_BYTES:
        raise PayloadError("payload", f"{len(text)} characters", "larger than "
                           f"{MAX_PAYLOAD_BYTES} bytes: not a launch-params line", source)
    line = text.split("\n", 1)[0].rstrip("\r")
    values: Dict[str, str] = {}
    last = None
    for pair in line.split(","):
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep and last == KEY_VIP and _VIP_LIKE.match(key):
            raise PayloadError(KEY_VIP, f"{values.get(KEY_VIP, '')},{key}", "separate VIPs "
                               "with ';': a ',' ends the value (payload pairs are "
                               "comma-separated)", source, 1)
        last = key if sep else None
        if not sep or not key:
            continue
        if not _KEY_RE.match(key):
            raise PayloadError(key, value, "not a payload key", source, 1)
        if not is_unset(value):
            values[key] = value
        else:
            values.pop(key, None)
    return values


def read_payload(path: str) -> Dict[str, str]:
    """:func:`parse_launch_params` of a file; PayloadError naming it if unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_PAYLOAD_BYTES + 1)
    except OSError as exc:
        raise PayloadError("payload", path, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise PayloadError("payload", path, "not UTF-8 text") from None
    return parse_launch_params(text, source=path)


def from_environ(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The payload keys present in the environment (``LVS_*`` and the Stratos keys)."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.isupper() and not is_unset(v)}


@dataclass(frozen=True)
class LvsRequest:
    """What the payload asks of this real server."""

    vips: Tuple[VirtualIP, ...]
    interface: str = DEFAULT_INTERFACE
    mode: str = "auto"


def _text(values: Mapping[str, object], key: str, source: Optional[str]) -> Optional[str]:
    value = values.get(key)
    if is_unset(value):
        return None
    if not isinstance(value, str):
        raise PayloadError(key, value, "must be text", source)
    return value.strip()


def parse_vips(text: str, key: str = KEY_VIP,
               source: Optional[str] = None) -> Tuple[VirtualIP, ...]:
    """Every VIP of an ``LVS_VIRTUAL_IP`` value, validated all before any is used."""
    vips, seen = [], set()
    for item in _VIP_SEP.split(text.strip()):
        if item:
            vip = parse_vip(item, key, error=PayloadError, source=source)
            if vip.address in seen:
                raise PayloadError(key, item, "VIP given twice", source)
            seen.add(vip.address)
            vips.append(vip)
    if not vips:
        raise PayloadError(key, text, "no virtual IP", source)
    return tuple(vips)


def lvs_request(values: Mapping[str, object],
                source: Optional[str] = "payload") -> Optional[LvsRequest]:
    """The LVS request of a payload, or None when ``LVS_VIRTUAL_IP`` is not set.

    Raises :class:`PayloadError` naming the key and the offending value.
    """
    text = _text(values, KEY_VIP, source)
    if text is None:
        return None
    vips = parse_vips(text, KEY_VIP, source)
    interface = _text(values, KEY_INTERFACE, source) or DEFAULT_INTERFACE
    check_ifname(interface, KEY_INTERFACE, error=PayloadError, source=source)
    mode = (_text(values, KEY_MODE, source) or "auto").lower()
    if mode not in MODES:
        raise PayloadError(KEY_MODE, values.get(KEY_MODE), "must be one of "
                           + ", ".join(MODES), source)
    if mode == "tunnel":
        if _text(values, KEY_INTERFACE, source) not in (None, "tunl0"):
            raise PayloadError(KEY_INTERFACE, values.get(KEY_INTERFACE), "LVS_MODE=tunnel "
                               "binds the VIPs on tunl0", source)
        for vip in vips:
            if vip.version == 6:
                raise PayloadError(KEY_VIP, vip.address, "LVS_MODE=tunnel is IPv4 only "
                                   "(tunl0); IPv6 tunnelling (ip6tnl0) is not supported",
                                   source)
        interface = "tunl0"
    elif mode == "loopback":
        interface = "lo"
    elif interface == "lo":
        raise PayloadError(KEY_INTERFACE, interface, "use LVS_MODE=loopback to bind on lo",
                           source)
    return LvsRequest(vips, interface, mode)


def stratos_agent_warnings(values: Mapping[str, object]) -> List[str]:
    """What in a valid payload the Stratos Python agent itself cannot take.

    The agent computes ``LVS_VIRTUAL_IP.split("|")[1]`` before any plugin runs: a
    value without ``|`` (a bare VIP, ``VIP/PREFIX``) raises IndexError and ends the
    agent.  It also cuts every payload value at a second ``=``.
    """
    warnings = []
    text = _text(values, KEY_VIP, None)
    if text is not None and "|" not in text:
        warnings.append(f"{KEY_VIP}={text!r}: the Stratos agent splits this value on '|' "
                        "before any plugin runs and exits when there is none: write "
                        "each VIP as VIP|NETMASK for the Stratos agent")
    for key in (KEY_VIP, KEY_INTERFACE, KEY_MODE):
        value = values.get(key)
        if isinstance(value, str) and "=" in value:
            warnings.append(f"{key}={value!r}: the Stratos agent cuts payload values "
                            "at '='")
    return warnings
