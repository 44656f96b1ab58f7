"""``bench/bench_shards.py`` runs only in the kernel VM; its observer's look-up of one
real server in a service's undecoded answer is checked here, on genuine IPVS
messages of both address encodings, and so is its reading of keepalived's
confirmations in the guest's syslog."""

from __future__ import annotations

import importlib.util
import socket
import struct
from pathlib import Path

import pytest

from cartridge_agent_lvs.director.ipvs_netlink import (IPVS_CMD_ATTR_DEST, IpvsDump,
                                                       dest_attributes)

from ._ipvs import FakeGenl, dest, svc

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_shards.py"
spec = importlib.util.spec_from_file_location("bench_shards", BENCH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _messages(dests):
    """The undecoded answer of a service with *dests*, through the real dump code."""
    ipvs = IpvsDump(FakeGenl([(svc("192.0.2.10", 80), dests)], split=True))
    return ipvs.dest_messages(ipvs.services()[0])


def _as_kernel_sends(message: bytes) -> bytes:
    """*message* (generic netlink header, then the nested ``IPVS_CMD_ATTR_DEST``) with
    its IPv4 address attribute widened to the kernel's 16-byte union (pyroute2 encodes
    4 bytes; the product reads both the same)."""
    i = message.index(struct.pack("=HH", 8, 1))
    widened = struct.pack("=HH", 20, 1) + message[i + 4:i + 8] + b"\0" * 12
    out = message[:i] + widened + message[i + 8:]
    length, kind = struct.unpack_from("=HH", out, 4)      # the enclosing attribute
    assert kind & 0x3FFF == IPVS_CMD_ATTR_DEST
    return out[:4] + struct.pack("=H", length + 12) + out[6:]


@pytest.mark.parametrize("kernel_form", [False, True])
def test_find_dest_decodes_only_the_real_server_asked_for(kernel_form):
    dests = [dest(f"10.1.0.{n}", 80, weight=n % 3) for n in (1, 10, 11, 100)]
    messages = _messages(dests)
    if kernel_form:
        messages = [_as_kernel_sends(m) for m in messages]
        assert dest_attributes(messages[0])[1] == bytes([10, 1, 0, 1]) + bytes(12)
    find = bench.find_dest
    assert [find(messages, f"10.1.0.{n}", socket.AF_INET) for n in (1, 10, 11, 100)] \
        == [1, 1, 2, 1]
    assert find(messages, "10.1.0.2", socket.AF_INET) is None     # a prefix of .2x: no
    assert find(messages[:1], "10.1.0.10", socket.AF_INET) is None


def test_find_dest_ipv6():
    messages = _messages([dest("fd99::1", 80, af=10, weight=0),
                          dest("fd99::10", 80, af=10, weight=4)])
    assert bench.find_dest(messages, "fd99::10", socket.AF_INET6) == 4
    assert bench.find_dest(messages, "fd99::1", socket.AF_INET6) == 0
    assert bench.find_dest(messages, "fd99::2", socket.AF_INET6) is None


@pytest.mark.parametrize("split", [False, True])
def test_the_observer_finds_one_real_server_in_the_raw_answer(split):
    dests = [dest(f"10.1.0.{n}", 80, weight=n % 3) for n in (1, 10, 11, 100)]
    genl = FakeGenl([(svc("192.0.2.10", 80), dests)], split=split)
    observer = bench.Observer(genl)
    assert [observer.read("192.0.2.10", f"10.1.0.{n}") for n in (1, 10, 11, 100)] \
        == [(True, 1), (True, 1), (True, 2), (True, 1)]
    assert observer.read("192.0.2.10", "10.1.0.2") == (True, None)
    assert observer.read("192.0.2.99", "10.1.0.1") == (False, None)   # no such service
    services = sum(1 for r in genl.requests if r["cmd"] == 4)
    assert services == 2            # the service's key was looked up once, then kept


def test_confirmations_find_keepalived_s_line_about_the_real_server(tmp_path):
    """Stamped syslog lines (as the sink writes them): the first line after the event
    that says keepalived found the destination there (or the real server gone)."""
    log = tmp_path / "syslog.log"
    log.write_bytes(b"5.000000 <30>K: IPVS cmd ADDDEST(34) error: Destination already "
                    b"exists(17) (10.0.0.1:80 -> 10.1.0.5:80)\n")
    confirmations = bench.Confirmations(str(log))       # what was there is old
    with open(log, "ab") as f:
        f.write(b"10.000000 <30>K: IPVS cmd ADDDEST(34) error: Destination already "
                b"exists(17) (10.0.0.1:80 -> 10.1.0.55:80)\n"
                b"10.500000 <30>K: service [10.1.0.5]:tcp:80 no longer exist\n"
                b"11.250000 <30>K: IPVS cmd ADDDEST(34) error: Destination already "
                b"exists(17) (10.0.0.1:80 -> 10.1.0.5:80)\n"
                b"12.000000 <30>K: partial line without its end")
    assert confirmations.wait(10.0, "10.1.0.5", gone=False, timeout=0) == 1.25
    with pytest.raises(TimeoutError):
        confirmations.wait(10.0, "10.1.0.5", gone=True, timeout=0)    # looked at once
    with open(log, "ab") as f:
        f.write(b"\n13.000000 <30>K: service [10.1.0.5]:tcp:80 no longer exist\n")
    assert confirmations.wait(12.5, "10.1.0.5", gone=True, timeout=0) == 0.5
