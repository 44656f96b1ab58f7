"""The bulk rtnetlink codec against the real kernel (compared with iproute2's view)."""

from __future__ import annotations

import errno
import socket

import pytest

from cartridge_agent_lvs.realserver.rtnl import (RTM_DELADDR, RTM_NEWADDR, RtnlSocket,
                                                 decode_addr, encode_addr)

from .conftest import addresses

pytestmark = pytest.mark.netns


def test_encode_decode_round_trip():
    for address, plen in (("192.0.2.7", 32), ("2001:db8::7", 128)):
        data = encode_addr(RTM_NEWADDR, 0, 1, (3, address, plen, 0x200))
        family = socket.AF_INET if "." in address else socket.AF_INET6
        assert decode_addr(data[16:]) == (family, address, plen, 3)
        assert len(data) % 4 == 0


def test_batch_add_dump_and_delete_in_a_namespace(netns):
    rtnl = RtnlSocket(netns)
    try:
        requests = [(1, f"10.9.{i // 250}.{i % 250 + 1}", 32, 0) for i in range(600)]
        requests.append((1, "fd00:9::1", 128, 0x2))
        assert rtnl.batch(RTM_NEWADDR, requests) == [0] * len(requests)
        # the same again: every one refused, one ack each
        assert set(rtnl.batch(RTM_NEWADDR, requests[:3])) == {errno.EEXIST}
        seen = {(a, p) for _, a, p, i in rtnl.dump_addresses() if i == 1}
        ip_view = {tuple(x.split("/")) for x in addresses(netns)["lo"]}
        assert seen == {(a, int(p)) for a, p in ip_view}
        assert rtnl.batch(RTM_DELADDR, requests) == [0] * len(requests)
        assert addresses(netns)["lo"] == ["127.0.0.1/8", "::1/128"]
    finally:
        rtnl.close()


def test_missing_namespace():
    with pytest.raises(FileNotFoundError):
        RtnlSocket("lvs-test-no-such-namespace")
