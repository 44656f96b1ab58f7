"""Director settings: one option table -> config file, flags, defaults, one-line errors."""

from __future__ import annotations

import argparse
import os

import pytest

from cartridge_agent_lvs.director import settings as S
from cartridge_agent_lvs.errors import SettingsError

REQUIRED_FLAGS = ("--config", "--vip-map", "--interface", "--state", "--priority",
                  "--virtual-router-id", "--scheduler", "--forwarding-method",
                  "--health-check", "--keepalived-conf", "--keepalived-bin",
                  "--keepalived-pidfile", "--reload-command")


def parse_flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    S.add_arguments(parser)
    return parser.parse_args(argv)


def write(tmp_path, text: str) -> str:
    path = tmp_path / "lvs-extension.conf"
    path.write_text(text)
    return str(path)


def test_required_flags_exist():
    parser = argparse.ArgumentParser()
    S.add_arguments(parser)
    flags = {s for a in parser._actions for s in a.option_strings}
    assert set(REQUIRED_FLAGS) <= flags


def test_defaults():
    s = S.load({"vip_map": "tomcat|192.168.56.40"})
    assert (s.state, s.priority, s.virtual_router_id, s.scheduler, s.forwarding_method,
            s.health_check, s.protocol, s.persistence_timeout) == (
        "MASTER", 100, 51, "rr", "DR", "TCP_CHECK", "TCP", 0)
    assert s.keepalived_conf == "/etc/keepalived/keepalived.conf"
    assert s.reload_command is None and s.auth_pass is None


def test_stratos_vip_map_string():
    s = S.load({"vip_map": " tomcat2|192.168.56.40, tomcat1|192.168.56.41,web6|FD99::0100"})
    assert s.vip_map == (("tomcat1", "192.168.56.41"), ("tomcat2", "192.168.56.40"),
                         ("web6", "fd99::100"))
    assert s.services["tomcat2"] == "192.168.56.40"


@pytest.mark.parametrize("value, reason", [
    ("tomcat", "must be SERVICE|VIP"),
    ("tomcat|", "must be SERVICE|VIP"),
    ("|192.0.2.1", "must be SERVICE|VIP"),
    ("a|192.0.2.1,a|192.0.2.2", "service named twice"),
    ("a|192.0.2.300", "not an IP address"),
    ("a|127.0.0.1", "loopback"),
    ("a|224.0.0.1", "multicast"),
    ("a|0.1.2.3", "0.0.0.0/8"),                 # "this network": never a host
    ("a|0.0.0.1", "0.0.0.0/8"),
    ("a{b|192.0.2.1", "not allowed"),
    ("a|192.0.2.1/24", "not an IP address"),
    ("", "at least one"),
])
def test_bad_vip_map_names_key_and_value(value, reason):
    with pytest.raises(SettingsError) as err:
        S.load({"vip_map": value})
    assert err.value.key == "vip_map" and reason in str(err.value)
    assert "\n" not in str(err.value)


def test_vip_map_is_mandatory():
    with pytest.raises(SettingsError, match="vip_map=None: is mandatory"):
        S.load({})


def test_config_file_then_flags(tmp_path):
    path = write(tmp_path, """\
# director settings
vip_map = tomcat|192.168.56.40
state = backup
priority = 90
; comment style two
health-check = HTTP_GET
http_path = /health?probe=1
reload_command = systemctl reload keepalived
mqtt = mb1:1883, [fd00::1]:8883
sorry_server = 192.0.2.200 8080
""")
    s = S.load(parse_flags("--config", path, "--priority", "120"))
    assert s.state == "BACKUP" and s.priority == 120          # flag wins over the file
    assert s.health_check == "HTTP_GET" and s.http_path == "/health?probe=1"
    assert s.reload_command == ("systemctl", "reload", "keepalived")
    assert s.mqtt == (("mb1", 1883), ("fd00::1", 8883))
    assert s.sorry_server == ("192.0.2.200", 8080)


def test_java_property_names_are_accepted(tmp_path):
    path = write(tmp_path, "lvs.service.virtualip.set=tomcat2|192.168.56.40,tomcat1|"
                 "192.168.56.41\nserver.state=BACKUP\nschedule.algorithm=wlc\n"
                 "conf.file.path=/tmp/k.conf\n")
    s = S.load({}, config_path=path)
    assert (s.state, s.scheduler, s.keepalived_conf) == ("BACKUP", "wlc", "/tmp/k.conf")
    assert len(s.vip_map) == 2


@pytest.mark.parametrize("text, line, message", [
    ("vip_map = a|192.0.2.1\npriority = 255\n", 2, "priority='255': must be 1-254"),
    ("vip_map = a|192.0.2.1\n\nbogus = 1\n", 3, "bogus='1': unknown setting"),
    ("vip_map = a|192.0.2.1\njust words\n", 2, "expected 'key = value'"),
    ("vip_map = a|192.0.2.1\nstate = MASTER\nstate = BACKUP\n", 3, "set twice"),
    ("vip_map = a|192.0.2.999\n", 1, "not an IP address"),
    ("vip_map = a|192.0.2.1\nscheduler = fastest\n", 2, "must be one of rr, wrr"),
    ("vip_map = a|192.0.2.1\nforwarding_method = DSR\n", 2, "must be one of DR, NAT, TUN"),
    ("vip_map = a|192.0.2.1\nauth_pass = longerthan8\n", 2, "must be 1-8 printable"),
    ("vip_map = a|192.0.2.1\ninterface = eth0/1\n", 2, "not a valid interface name"),
    ("vip_map = a|192.0.2.1\nhttp_path = /x }\n", 2, "absolute URL path"),
    ("vip_map = a|192.0.2.1\nkeepalived_conf = /etc/k a.conf\n", 2, "whitespace"),
    ("vip_map = a|192.0.2.1\nmqtt = broker\n", 2, "HOST:PORT"),
    ("vip_map = a|192.0.2.1\nmass_removal_threshold = 1.5\n", 2, "between 0 and 1"),
])
def test_config_errors_name_file_line_key_value(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as err:
        S.load({}, config_path=path)
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_auth_pass_is_not_echoed(tmp_path):
    for secret in ("supersecret9", "pass word"):
        path = write(tmp_path, f"vip_map = a|192.0.2.1\nauth_pass = {secret}\n")
        with pytest.raises(SettingsError) as err:
            S.load({}, config_path=path)
        assert secret not in str(err.value) and "auth_pass='***'" in str(err.value)


def test_flag_errors_name_the_flag():
    with pytest.raises(SettingsError, match=r"--virtual-router-id='0': must be 1-255"):
        S.load(parse_flags("--vip-map", "a|192.0.2.1", "--virtual-router-id", "0"))


def test_missing_config_file(tmp_path):
    with pytest.raises(SettingsError, match="cannot read"):
        S.load({}, config_path=str(tmp_path / "nope.conf"))


def test_boolean_flag_without_value():
    s = S.load(parse_flags("--vip-map", "a|192.0.2.1", "--allow-mass-removal"))
    assert s.allow_mass_removal is True


def test_values_that_could_inject_directives_are_refused():
    for key, value in (("router_id", "x\n}\nvrrp_strict"), ("auth_pass", "a b"),
                       ("http_path", "/ok\nvrrp_strict"), ("keepalived_conf", "/x{")):
        with pytest.raises(SettingsError):
            S.load({"vip_map": "a|192.0.2.1", key: value})


def test_reference_table_lists_every_option():
    table = S.reference_table()
    for option in S.OPTIONS:
        assert f"``{option.name}``" in table and option.flag in table


def test_the_shipped_example_config_loads():
    example = os.path.join(os.path.dirname(__file__), "..", "..", "deploy",
                           "lvs-extension.conf.example")
    s = S.load({}, config_path=example)
    assert s.vip_map and s.mqtt == (("127.0.0.1", 1883),)


def test_readme_documents_every_setting_and_default():
    readme = os.path.join(os.path.dirname(__file__), "..", "..", "README.rst")
    with open(readme) as f:
        assert S.reference_table() in f.read(), "README settings table is out of date"


def test_auth_pass_from_a_file(tmp_path):
    secret = tmp_path / "vrrp.pass"
    secret.write_text("s3cret\nignored second line\n")
    s = S.load({"vip_map": "a|192.0.2.1", "auth_pass_file": str(secret)})
    assert s.auth_pass == "s3cret" and s.auth_pass_file == str(secret)


@pytest.mark.parametrize("content, extra, message", [
    ("longerthan8\n", {}, "must be 1-8 printable"),
    ("s3cret\n", {"auth_pass": "other"}, "not both"),
    (None, {}, "cannot read"),
])
def test_auth_pass_file_errors_are_one_line_and_never_echo(tmp_path, content, extra,
                                                          message):
    secret = tmp_path / "vrrp.pass"
    if content is not None:
        secret.write_text(content)
    with pytest.raises(SettingsError) as err:
        S.load({"vip_map": "a|192.0.2.1", "auth_pass_file": str(secret), **extra})
    assert message in str(err.value) and "\n" not in str(err.value)
    assert "longerthan8" not in str(err.value) and "s3cret" not in str(err.value)


def test_auth_pass_file_refuses_a_fifo(tmp_path):
    fifo = tmp_path / "vrrp.pass"
    os.mkfifo(fifo)
    with pytest.raises(SettingsError, match="not a regular file"):
        S.load({"vip_map": "a|192.0.2.1", "auth_pass_file": str(fifo)})
