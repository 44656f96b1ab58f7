"""VIP binding for real, inside throwaway network namespaces (the host kernel has no
dummy driver, so the loopback fallback runs for real; the dummy path runs with
``fake_dummy_driver``)."""

from __future__ import annotations

import pytest

from cartridge_agent_lvs.errors import HostError, PayloadError
from cartridge_agent_lvs.payload import lvs_request
from cartridge_agent_lvs.realserver.binder import VipBinder
from cartridge_agent_lvs.realserver.netlink import NetlinkHost
from cartridge_agent_lvs.realserver.state import StateStore
from cartridge_agent_lvs.realserver.sysctl import Sysctl

from .conftest import addresses, routes, snapshot, sysctls

pytestmark = pytest.mark.netns

VIPS = "192.168.56.40|255.255.255.0;fd99::100/64"


def binder(ns, state_dir):
    return VipBinder(NetlinkHost(ns), Sysctl(ns), StateStore(ns, state_dir))


def request(vips=VIPS, **extra):
    return lvs_request({"LVS_VIRTUAL_IP": vips, **extra})


def test_loopback_fallback_binds_host_addresses_and_sets_sysctls(netns, state_dir):
    before = sysctls(netns)
    report = binder(netns, state_dir).apply(request())
    assert report.mode == "loopback" and any("no dummy driver" in n for n in report.notes)
    assert addresses(netns)["lo"] == sorted(["127.0.0.1/8", "::1/128",
                                             "192.168.56.40/32", "fd99::100/128"])
    now = sysctls(netns)
    for dev in ("all", "lo"):
        assert now[f"net/ipv4/conf/{dev}/arp_ignore"] == "1"
        assert now[f"net/ipv4/conf/{dev}/arp_announce"] == "2"
    assert before["net/ipv4/conf/all/arp_ignore"] == "0"
    # the payload's /24 must not become a subnet route
    assert not [r for r in routes(netns) if "192.168.56.0" in r]


def test_sysctls_are_per_namespace(netns, state_dir):
    with open("/proc/sys/net/ipv4/conf/all/arp_ignore") as f:
        host_value = f.read()
    binder(netns, state_dir).apply(request())
    with open("/proc/sys/net/ipv4/conf/all/arp_ignore") as f:
        assert f.read() == host_value


def test_reapply_is_a_no_op(netns, state_dir):
    b = binder(netns, state_dir)
    b.apply(request())
    state_before = open(b.store.path).read()
    seen = snapshot(netns)
    report = b.apply(request())
    assert not report.changed and snapshot(netns) == seen
    assert open(b.store.path).read() == state_before


def test_remove_restores_exactly_the_previous_state(netns, state_dir):
    # a pre-existing non-default value must come back as it was
    import subprocess
    subprocess.run(["ip", "netns", "exec", netns, "sh", "-c",
                    "echo 1 > /proc/sys/net/ipv4/conf/all/arp_announce"], check=True)
    before = snapshot(netns)
    b = binder(netns, state_dir)
    b.apply(request())
    assert snapshot(netns) != before
    b.remove()
    assert snapshot(netns) == before
    assert b.store.load() is None
    assert not b.remove().changed                      # nothing recorded: no-op


def test_remove_leaves_addresses_it_did_not_add(netns, state_dir):
    import subprocess
    subprocess.run(["ip", "-n", netns, "addr", "add", "192.168.56.40/32", "dev", "lo"],
                   check=True)
    b = binder(netns, state_dir)
    b.apply(request("192.168.56.40;192.168.56.41"))
    b.remove()
    assert "192.168.56.40/32" in addresses(netns)["lo"]
    assert "192.168.56.41/32" not in addresses(netns)["lo"]


def test_kernel_refusing_one_address_midway_rolls_everything_back(netns, state_dir):
    """A real netlink failure in the middle of the batch: IPv6 disabled on lo makes the
    kernel refuse the IPv6 VIP while the IPv4 ones around it are added."""
    import subprocess
    subprocess.run(["ip", "netns", "exec", netns, "sh", "-c",
                    "echo 1 > /proc/sys/net/ipv6/conf/lo/disable_ipv6"], check=True)
    before = snapshot(netns)
    b = binder(netns, state_dir)
    with pytest.raises(HostError, match="adding fd99::100"):
        b.apply(request("192.168.56.40;192.168.56.41;fd99::100;192.168.56.42"))
    assert snapshot(netns) == before
    assert b.store.load() is None


def test_state_file_failure_rolls_everything_back(netns, state_dir, mocker):
    before = snapshot(netns)
    b = binder(netns, state_dir)
    mocker.patch.object(StateStore, "save", side_effect=HostError("injected: disk full"))
    with pytest.raises(HostError, match="disk full"):
        b.apply(request())
    assert snapshot(netns) == before


def test_sysctl_failure_rolls_back_the_addresses(netns, state_dir, mocker):
    before = snapshot(netns)
    mocker.patch.object(Sysctl, "write_many", side_effect=HostError("injected sysctl"))
    with pytest.raises(HostError, match="injected sysctl"):
        binder(netns, state_dir).apply(request())
    assert snapshot(netns) == before


def test_second_vip_bad_changes_nothing(netns, state_dir):
    before = snapshot(netns)
    with pytest.raises(PayloadError, match="192.168.56.999"):
        binder(netns, state_dir).apply(request("192.168.56.40;192.168.56.999"))
    assert snapshot(netns) == before


def test_vip_bound_on_another_interface_is_an_error(netns, state_dir, fake_dummy_driver):
    import subprocess
    subprocess.run(["ip", "-n", netns, "link", "add", "eth9", "type", "veth",
                    "peer", "name", "eth9p"], check=True)
    subprocess.run(["ip", "-n", netns, "addr", "add", "192.168.56.41/24", "dev", "eth9"],
                   check=True)
    before = snapshot(netns)
    with pytest.raises(HostError, match="192.168.56.41 is already bound on eth9"):
        binder(netns, state_dir).apply(request("192.168.56.40;192.168.56.41"))
    assert snapshot(netns) == before                 # the created link was rolled back


def test_dummy_path_creates_binds_and_deletes_the_link(netns, state_dir, fake_dummy_driver):
    before = snapshot(netns)
    b = binder(netns, state_dir)
    report = b.apply(request())
    assert report.mode == "dummy" and "created dummy link lvs0" in report.actions
    # (the kernel adds an fe80:: link-local address to a new link, as to a real dummy)
    assert [a for a in addresses(netns)["lvs0"] if not a.startswith("fe80:")] == [
        "192.168.56.40/32", "fd99::100/128"]
    assert sysctls(netns)["net/ipv4/conf/lvs0/arp_ignore"] == "1"
    assert fake_dummy_driver == ["dummy"]
    assert not b.apply(request()).changed
    b.remove()
    assert snapshot(netns) == before


def test_forced_dummy_mode_without_driver_is_an_error(netns, state_dir):
    before = snapshot(netns)
    with pytest.raises(HostError, match="no dummy link driver"):
        binder(netns, state_dir).apply(request(LVS_MODE="dummy"))
    assert snapshot(netns) == before


def test_forced_loopback_mode(netns, state_dir, fake_dummy_driver):
    report = binder(netns, state_dir).apply(request("10.20.30.40", LVS_MODE="loopback"))
    assert report.interface == "lo" and "lvs0" not in addresses(netns)
    assert "10.20.30.40/32" in addresses(netns)["lo"]


def test_missing_namespace_is_a_host_error(state_dir):
    with pytest.raises(HostError, match="does not exist"):
        binder("lvs-test-no-such-ns", state_dir).apply(request())


# -- the stock bash extension, and interfaces that are not ours --------------------------

def _stock_extension(ns, vip="192.168.56.40", prefix=24):
    """What the agent's stock CreateLVSDummyInterface.sh leaves (`ifconfig dummy0 VIP
    netmask MASK`): VIP/MASK on dummy0, up, with its subnet route.  dummy0 is an ifb
    link here, which ``fake_dummy_driver`` reads back as a dummy one."""
    import subprocess
    for cmd in (["link", "add", "dummy0", "type", "ifb"],
                ["addr", "add", f"{vip}/{prefix}", "dev", "dummy0"],
                ["link", "set", "dummy0", "up"]):
        subprocess.run(["ip", "-n", ns, *cmd], check=True, capture_output=True)


def _v4(addrs):
    return [a for a in addrs if "." in a]


def test_a_vip_the_stock_extension_bound_is_turned_into_the_host_address(
        netns, state_dir, fake_dummy_driver):
    _stock_extension(netns)
    assert [r for r in routes(netns) if "192.168.56.0" in r]
    b = binder(netns, state_dir)
    report = b.apply(request("192.168.56.40|255.255.255.0"))
    assert any("took 192.168.56.40/24 off dummy0" in a for a in report.actions)
    now = addresses(netns)
    assert _v4(now["lvs0"]) == ["192.168.56.40/32"] and not _v4(now["dummy0"])
    assert not [r for r in routes(netns) if "192.168.56.0" in r]
    assert sysctls(netns)["net/ipv4/conf/lvs0/arp_ignore"] == "1"
    assert b.store.load().adopted == ["192.168.56.40/24 dummy0"]
    b.remove()
    now = addresses(netns)
    assert "lvs0" not in now and not _v4(now["dummy0"])
    assert not any("192.168.56.40" in a for v in now.values() for a in v)
    assert sysctls(netns)["net/ipv4/conf/all/arp_ignore"] == "0"


def test_cleanup_also_removes_a_vip_the_stock_extension_bound_again(
        netns, state_dir, fake_dummy_driver):
    b = binder(netns, state_dir)
    b.apply(request("192.168.56.40|255.255.255.0"))
    _stock_extension(netns)                   # e.g. the agent restarted without install-pca
    report = b.remove()
    assert any("removed 192.168.56.40/24 from dummy0" in a for a in report.actions)
    assert not any("192.168.56.40" in a for v in addresses(netns).values() for a in v)


def test_a_rollback_puts_the_stock_binding_back(netns, state_dir, fake_dummy_driver, mocker):
    _stock_extension(netns)
    before = snapshot(netns)
    b = binder(netns, state_dir)
    mocker.patch.object(b, "_set_sysctls", side_effect=HostError("sysctl refused"))
    with pytest.raises(HostError):
        b.apply(request("192.168.56.40|255.255.255.0"))
    assert snapshot(netns) == before


def test_an_existing_nic_named_in_the_payload_is_refused(netns, state_dir, fake_dummy_driver):
    """A VIP on a real NIC answers ARP for it: exactly what direct routing must avoid."""
    import subprocess
    subprocess.run(["ip", "-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name",
                    "eth1"], check=True)
    before = snapshot(netns)
    with pytest.raises(HostError, match="eth0 is an existing veth link, not a dummy"):
        binder(netns, state_dir).apply(request(LVS_INTERFACE="eth0"))
    assert snapshot(netns) == before and binder(netns, state_dir).store.load() is None


# -- tunnel mode (LVS-TUN) ---------------------------------------------------------------

def _set(ns, key, value):
    import subprocess
    subprocess.run(["ip", "netns", "exec", ns, "sh", "-c",
                    f"echo {value} > /proc/sys/net/ipv4/conf/{key}"], check=True)


def _read(ns, key):
    import subprocess
    return subprocess.run(["ip", "netns", "exec", ns, "cat", f"/proc/sys/net/ipv4/conf/{key}"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_tunnel_mode_binds_on_tunl0_loosens_rp_filter_and_restores(netns, state_dir,
                                                                   fake_ipip_driver):
    from cartridge_agent_lvs.realserver.status import inspect
    _set(netns, "all/rp_filter", 1)                   # a strict host, as many are
    b = binder(netns, state_dir)
    report = b.apply(request("192.168.56.40|255.255.255.0", LVS_MODE="tunnel"))
    assert fake_ipip_driver == ["ipip"] and report.mode == "tunnel"
    assert _v4(addresses(netns)["tunl0"]) == ["192.168.56.40/32"]
    assert _read(netns, "all/rp_filter") == "2" and _read(netns, "tunl0/rp_filter") in "02"
    assert _read(netns, "tunl0/arp_ignore") == "1" and _read(netns, "all/arp_announce") == "2"
    status = inspect(b.host, b.sysctl, b.store)
    assert status["ready"] and status["mode"] == "tunnel" and status["kind"] == "ipip", status
    b.remove()
    assert _read(netns, "all/rp_filter") == "1"
    assert "tunl0" in addresses(netns) and not _v4(addresses(netns)["tunl0"])
    status = inspect(b.host, b.sysctl, b.store, interface="tunl0")
    assert not status["ready"] and any("rp_filter is strict" in p for p in status["problems"])


def test_tunnel_mode_without_the_ipip_driver_is_one_line(netns, state_dir):
    """The host kernel really has no ipip: nothing is changed."""
    before = snapshot(netns)
    with pytest.raises(HostError, match="no ipip link driver"):
        binder(netns, state_dir).apply(request("192.168.56.40", LVS_MODE="tunnel"))
    assert snapshot(netns) == before


@pytest.mark.parametrize("extra, message", [
    ({"LVS_VIRTUAL_IP": "fd99::100"}, "IPv4 only"),
    ({"LVS_INTERFACE": "eth0"}, "binds the VIPs on tunl0"),
])
def test_tunnel_mode_payload_errors(extra, message):
    values = {"LVS_VIRTUAL_IP": "192.168.56.40", "LVS_MODE": "tunnel", **extra}
    with pytest.raises(PayloadError, match=message):
        lvs_request(values)
