"""Throwaway network namespaces, observed with iproute2 (independent of the code under
test), and the mock that stands in for the missing dummy driver."""

from __future__ import annotations

import itertools
import json
import os
import subprocess

import pytest
from pyroute2 import netns as pyroute2_netns

from cartridge_agent_lvs.realserver.netlink import NetlinkHost

_ids = itertools.count()

SYSCTLS = [f"net/ipv4/conf/{dev}/{key}" for dev in ("all", "lo", "lvs0")
           for key in ("arp_ignore", "arp_announce")]


@pytest.fixture
def netns():
    """A fresh network namespace with lo up; deleted afterwards, whatever happened."""
    name = f"lvs-test-{os.getpid()}-{next(_ids)}"
    pyroute2_netns.create(name)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        pyroute2_netns.remove(name)
    assert name not in pyroute2_netns.listnetns()


@pytest.fixture
def state_dir(tmp_path):
    return str(tmp_path / "state")


def addresses(ns: str) -> dict:
    """{ifname: sorted ["addr/plen", ...]} of every link, from `ip -j addr`."""
    out = subprocess.run(["ip", "-n", ns, "-j", "addr", "show"], check=True,
                         capture_output=True, text=True).stdout
    return {link["ifname"]: sorted(f"{a['local']}/{a['prefixlen']}"
                                   for a in link.get("addr_info", []))
            for link in json.loads(out)}


def routes(ns: str) -> list:
    out = subprocess.run(["ip", "-n", ns, "-j", "route", "show", "table", "all"], check=True,
                         capture_output=True, text=True).stdout
    return sorted(json.dumps(r, sort_keys=True) for r in json.loads(out))


def sysctls(ns: str) -> dict:
    values = {}
    for name in SYSCTLS:
        proc = subprocess.run(["ip", "netns", "exec", ns, "cat", f"/proc/sys/{name}"],
                              capture_output=True, text=True)
        values[name] = proc.stdout.strip() if proc.returncode == 0 else None
    return values


def snapshot(ns: str) -> tuple:
    return addresses(ns), routes(ns), sysctls(ns)


def _fake_driver(mocker, kind: str) -> list:
    """The host kernel lacks the *kind* link driver: such a link is created as an ifb
    link (another virtual device the host kernel has), and an ifb link reads back as
    *kind*, so the path -- create, bring up, bind, sysctls on the link, delete --
    runs against real netlink.  Returns the list of link kinds requested."""
    requested = []
    real_conn = NetlinkHost._conn

    class Rtnl:
        def __init__(self, ipr):
            self._ipr = ipr

        def __getattr__(self, name):
            return getattr(self._ipr, name)

        def link(self, command, **kwargs):
            if command == "add":
                requested.append(kwargs.get("kind"))
                if kwargs.get("kind") == kind:
                    kwargs["kind"] = "ifb"
            return self._ipr.link(command, **kwargs)

    mocker.patch.object(NetlinkHost, "_conn", autospec=True,
                        side_effect=lambda self: Rtnl(real_conn(self)))
    real_kind = NetlinkHost.link_kind
    mocker.patch.object(NetlinkHost, "link_kind", autospec=True,
                        side_effect=lambda self, index: {"ifb": kind}.get(
                            real_kind(self, index), real_kind(self, index)))
    return requested


@pytest.fixture
def fake_dummy_driver(mocker):
    """No dummy driver on the host kernel: dummy links are ifb links that read back as
    dummy (the stock extension's dummy0 too)."""
    return _fake_driver(mocker, "dummy")


@pytest.fixture
def fake_ipip_driver(mocker):
    """No ipip driver on the host kernel: ``tunl0`` is an ifb link that reads back as
    ipip (the kernel VM runs the real one)."""
    return _fake_driver(mocker, "ipip")
