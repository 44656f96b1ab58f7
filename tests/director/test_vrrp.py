"""The VRRP role from the addresses on the interface (pure), read with pyroute2 in a
throwaway network namespace."""

from __future__ import annotations

import subprocess

import pytest

from cartridge_agent_lvs.director.model import LvsConfig
from cartridge_agent_lvs.director.vrrp import (BACKUP, MASTER, PARTIAL, instances,
                                               interface_addresses, role_of, roles)
from cartridge_agent_lvs.errors import HostError
from tests.realserver.conftest import netns  # noqa: F401

CONFIG = LvsConfig((), ("192.0.2.10", "192.0.2.11", "fd99::100"))


def test_instances_as_rendered_and_roles_from_addresses():
    assert instances(CONFIG) == {"VI_IPV4": ("192.0.2.10", "192.0.2.11"),
                                 "VI_IPV6": ("fd99::100",)}
    got = roles(CONFIG, "eth0", frozenset({"192.0.2.10", "192.0.2.11", "10.0.0.5"}))
    assert [(r.instance, r.state) for r in got] == [("VI_IPV4", MASTER), ("VI_IPV6", BACKUP)]
    partial = roles(CONFIG, "eth0", frozenset({"192.0.2.11", "fd99::100"}))
    assert [r.state for r in partial] == [PARTIAL, MASTER]
    assert role_of(partial, "fd99::100").held == ("fd99::100",)
    assert role_of(partial, "198.51.100.1") is None
    assert roles(LvsConfig(), "eth0", frozenset()) == ()


@pytest.mark.netns
def test_interface_addresses_in_a_network_namespace(netns):
    subprocess.run(["ip", "-n", netns, "link", "add", "vrrp0", "type", "veth", "peer",
                    "name", "peer0"], check=True)
    for address in ("192.0.2.10/32", "fd99:0:0::100/128"):
        subprocess.run(["ip", "-n", netns, "addr", "add", address, "dev", "vrrp0"],
                       check=True)
    assert interface_addresses("vrrp0", netns) >= {"192.0.2.10", "fd99::100"}
    assert "192.0.2.10" not in interface_addresses("lo", netns)
    with pytest.raises(HostError, match=f"VRRP interface eth7 does not exist in network "
                       f"namespace {netns}"):
        interface_addresses("eth7", netns)
    with pytest.raises(HostError, match="network namespace 'no-such-ns' does not exist"):
        interface_addresses("lo", "no-such-ns")
