"""Payload (launch-params) and LVS_VIRTUAL_IP parsing: every sample, and properties."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import example, given, strategies as hs

from cartridge_agent_lvs.errors import PayloadError
from cartridge_agent_lvs.payload import (from_environ, lvs_request, parse_launch_params,
                                         parse_vips, read_payload)

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "payload_samples")
GOOD = sorted(f for f in os.listdir(SAMPLES) if f.endswith(".launch-params"))
BAD = sorted(os.listdir(os.path.join(SAMPLES, "malformed")))

EXPECTED = {
    "single-vip-netmask.launch-params": (["192.168.56.40"], "lvs0", "auto"),
    "several-vips.launch-params": (["192.168.56.40", "192.168.56.41", "192.168.56.42"],
                                   "lvs0", "auto"),
    "ipv6.launch-params": (["fd99::100", "2001:db8:56::40"], "lvs0", "auto"),
    "dual-stack-interface.launch-params": (["192.168.56.40", "fd99::100"], "lvs1", "auto"),
    "loopback-mode.launch-params": (["10.20.30.40"], "lo", "loopback"),
    "no-vip.launch-params": None,
    "null-vip.launch-params": None,
}


def test_every_good_sample_is_expected():
    assert set(GOOD) == set(EXPECTED)


@pytest.mark.parametrize("name", GOOD)
def test_good_samples(name):
    values = read_payload(os.path.join(SAMPLES, name))
    assert values["MEMBER_ID"] == "tomcat.member-7" and "LB_CLUSTER_ID" not in values
    request = lvs_request(values)
    if EXPECTED[name] is None:
        assert request is None
    else:
        vips, interface, mode = EXPECTED[name]
        assert ([v.address for v in request.vips], request.interface, request.mode) == \
            (vips, interface, mode)


@pytest.mark.parametrize("name", BAD)
def test_malformed_samples_raise_one_line_naming_key_and_value(name):
    path = os.path.join(SAMPLES, "malformed", name)
    with pytest.raises(PayloadError) as err:
        lvs_request(read_payload(path), source=path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(path)
    assert err.value.key in ("LVS_VIRTUAL_IP", "LVS_INTERFACE", "LVS_MODE")
    assert repr(err.value.value) in message


def test_launch_params_rules():
    values = parse_launch_params(" A = 1 ,B=x=y,C=null,D=NULL,E=,noequals, F =  two words \n"
                                 "SECOND_LINE=ignored")
    assert values == {"A": "1", "B": "x=y", "F": "two words"}


def test_the_stratos_form_and_its_netmask():
    (vip,) = parse_vips("192.168.56.40|255.255.255.0")
    assert (vip.address, vip.prefixlen, vip.host_prefixlen) == ("192.168.56.40", 24, 32)
    assert [v.address for v in parse_vips(" 10.0.0.1;10.0.0.2  fd00::1 ")] == [
        "10.0.0.1", "10.0.0.2", "fd00::1"]


def test_agent_dict_and_environment_sources():
    assert lvs_request({"LVS_VIRTUAL_IP": None}) is None
    assert lvs_request({"LVS_VIRTUAL_IP": "  "}) is None
    with pytest.raises(PayloadError, match="must be text"):
        lvs_request({"LVS_VIRTUAL_IP": 17})
    env = from_environ({"LVS_VIRTUAL_IP": "10.1.2.3", "LVS_MODE": "null", "path": "x"})
    assert env == {"LVS_VIRTUAL_IP": "10.1.2.3"}
    assert lvs_request(env).vips[0].address == "10.1.2.3"


def test_unreadable_payload_file(tmp_path):
    with pytest.raises(PayloadError, match="cannot read"):
        read_payload(str(tmp_path / "missing"))


@given(hs.text(max_size=200))
@example("MEMBER_ID=m,LVS_VIRTUAL_IP=10.1.1.1|255.255.255.0;10.1.1.2/24 fd00::5,X=null")
@example("LVS_VIRTUAL_IP=10.1.1.1,10.1.1.2")
@example("LVS_VIRTUAL_IP=300.1.1.1")
def test_random_launch_params_parse_consistently_or_name_the_key(text):
    """Valid: every VIP is one of the value's items, parsed the same way again.
    Invalid: one line naming a key that is in the text (or the payload itself)."""
    try:
        values = parse_launch_params(text)
        request = lvs_request(values)
    except PayloadError as exc:
        assert "\n" not in str(exc)
        assert exc.key == "payload" or exc.key in text, (exc.key, text)
        return
    line = text.split("\n", 1)[0]
    for key, value in values.items():
        assert key in line and value in line
    if request is not None:
        items = [i for i in re.split(r"[;\s]+", values["LVS_VIRTUAL_IP"].strip()) if i]
        assert [v.address for v in request.vips] == [parse_vips(i)[0].address for i in items]
        assert lvs_request(parse_launch_params(text)) == request


_vipish = hs.text(alphabet="0123456789abcdef.:|/;, {}x\t", max_size=60)


@given(_vipish, hs.sampled_from(["", "lvs0", "lo", "x" * 16, "a/b"]),
       hs.sampled_from(["", "auto", "dummy", "loopback", "nope"]))
def test_random_lvs_values_raise_only_payload_error(vip, interface, mode):
    try:
        request = lvs_request({"LVS_VIRTUAL_IP": vip, "LVS_INTERFACE": interface,
                               "LVS_MODE": mode})
    except PayloadError as exc:
        assert "\n" not in str(exc)
    else:
        assert request is None or (request.vips and all(
            not (v.ip.is_loopback or v.ip.is_multicast or v.ip.is_unspecified)
            for v in request.vips))
