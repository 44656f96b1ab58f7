"""Director settings: one option table -> config file, flags, defaults, one-line errors."""

from __future__ import annotations

import argparse
import os
import textwrap
from dataclasses import fields

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


EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "deploy",
                       "lvs-extension.conf.example")


def test_the_shipped_example_config_loads():
    s = S.load({}, config_path=EXAMPLE)
    assert s.vip_map and s.mqtt == (("127.0.0.1", 1883),)
    assert s.for_service("php").health_check == "HTTP_GET"
    assert s.for_service("tomcat").health_check == "TCP_CHECK"


def test_the_shipped_example_config_is_generated_from_the_declaration():
    with open(EXAMPLE) as f:
        assert f.read() == S.example_config(), (
            "deploy/lvs-extension.conf.example is out of date: python -m "
            "cartridge_agent_lvs.director.settings example > deploy/lvs-extension.conf.example")
    for option in S.OPTIONS:
        assert f"{option.name} = " in S.example_config()


README = os.path.join(os.path.dirname(__file__), "..", "..", "README.rst")


def test_readme_documents_every_setting_and_default():
    with open(README) as f:
        assert S.reference_table() in f.read(), "README settings table is out of date"


def test_readme_shows_the_per_service_example():
    with open(README) as f:
        assert textwrap.indent(S.service_example(), "    ") in f.read()


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


# -- issue 12: one declaration; per-service sections; filters; --http ------------------

def test_settings_classes_are_generated_from_the_one_declaration():
    assert [f.name for f in fields(S.Settings)] == (
        [o.name for o in S.OPTIONS] + ["service_overrides"])
    assert [f.name for f in fields(S.ServiceSettings)] == [
        o.name for o in S.OPTIONS if o.scope == S.PER_SERVICE]
    assert {o.name for o in S.SERVICE_OPTIONS} == {
        "scheduler", "forwarding_method", "protocol", "persistence_timeout", "weight",
        "sorry_server", "health_check", "http_path", "http_status", "delay_loop",
        "connect_timeout", "retry"}


def test_reference_table_shows_scope_and_flag_aliases():
    rows = {line.split()[0]: line for line in S.reference_table().splitlines()
            if line.startswith("``")}
    assert "``--http-url``, ``--http``" in rows["``http_url``"]
    assert "per service" in rows["``health_check``"] and "global" in rows["``interface``"]


def test_http_is_a_flag_of_http_url():
    """The README's ``lvs-extension run --http URL``: not an ambiguous prefix."""
    for flag in ("--http", "--http-url"):
        s = S.load(parse_flags("--vip-map", "a|192.0.2.1", flag, "http://stratos/topo"))
        assert s.http_url == "http://stratos/topo"


SECTIONS = """\
vip_map = php|192.0.2.41, mysql|192.0.2.42, dns|fd99::53
health_check = TCP_CHECK
scheduler = rr

[service php]
health_check = HTTP_GET
http-path = /health
schedule.algorithm = wlc

[ service mysql ]
connect_timeout = 5
"""


def test_service_sections_override_the_global_values(tmp_path):
    s = S.load(parse_flags("--config", write(tmp_path, SECTIONS), "--scheduler", "lc"))
    php, mysql, dns = (s.for_service(n) for n in ("php", "mysql", "dns"))
    assert (php.health_check, php.http_path, php.scheduler) == ("HTTP_GET", "/health", "wlc")
    # a flag sets the global value; a section still wins for its service
    assert (mysql.health_check, mysql.connect_timeout, mysql.scheduler) == (
        "TCP_CHECK", 5, "lc")
    assert (dns.health_check, dns.scheduler, dns.http_path) == ("TCP_CHECK", "lc", "/")
    assert s.overrides("php") == {"health_check": "HTTP_GET", "http_path": "/health",
                                  "scheduler": "wlc"}
    assert s.overrides("dns") == {}


def test_service_overrides_given_as_a_dict():
    s = S.load({"vip_map": "php|192.0.2.41",
                "service_overrides": {"php": {"weight": "7", "sorry_server": "192.0.2.9 80"}}})
    assert s.for_service("php").weight == 7
    assert s.for_service("php").sorry_server == ("192.0.2.9", 80)
    for overrides, message in (({"php": {"interface": "eth1"}}, "not a per-service"),
                               ({"php": {"weight": "0"}}, "weight='0': must be 1-65535"),
                               ({"a{b": {"weight": "2"}}, "not allowed"),
                               ({"nginx": {"weight": "2"}}, "not in vip_map")):
        with pytest.raises(SettingsError, match=message) as err:
            S.load({"vip_map": "php|192.0.2.41", "service_overrides": overrides})
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("text, line, message", [
    (SECTIONS + "interface = eth1\n", 12,
     "interface='eth1': is a global setting, not one of [service mysql]"),
    (SECTIONS + "[service php]\n", 12, "section='[service php]': given twice (first on "
     "line 5)"),
    (SECTIONS + "[php]\n", 12, "section='[php]': expected '[service NAME]'"),
    (SECTIONS + "[service]\n", 12, "expected '[service NAME]'"),
    (SECTIONS + "[service a{b}]\n", 12, "service='a{b}'"),
    (SECTIONS + "[service nginx]\nweight = 2\n", 12,
     "service='nginx': has a [service] section but is not in vip_map"),
    (SECTIONS + "retry = 2\nretry = 3\n", 13, "retry='3': set twice (first on line 12)"),
    (SECTIONS + "health_check = HTTP_POST\n", 12,
     "health_check='HTTP_POST': must be one of TCP_CHECK, HTTP_GET, SSL_GET, UDP_CHECK"),
    (SECTIONS + "http_path = /x {\n", 12, "absolute URL path"),
    (SECTIONS + "bogus = 1\n", 12, "bogus='1': unknown setting"),
])
def test_service_section_errors_name_file_line_key_value(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as err:
        S.load({}, config_path=path)
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_filters_from_the_file_with_stratos_spellings(tmp_path):
    path = write(tmp_path, "vip_map = php|192.0.2.41\nnetwork-partition-id = np2, np1\n"
                 "cluster-ids = blog.php.domain shop.php.domain\n")
    s = S.load({}, config_path=path)
    assert s.network_partition_id == ("np1", "np2")
    assert s.cluster_ids == ("blog.php.domain", "shop.php.domain")
    s = S.load(parse_flags("--vip-map", "a|192.0.2.1", "--network-partition-id", "np1",
                           "--cluster-ids", "c1,c2"))
    assert (s.network_partition_id, s.cluster_ids) == (("np1",), ("c1", "c2"))
    with pytest.raises(SettingsError, match=r"cluster_ids='c1\}'.*not allowed"):
        S.load({"vip_map": "a|192.0.2.1", "cluster_ids": "c0,c1}"})
    with pytest.raises(SettingsError, match="at least one id"):
        S.load({"vip_map": "a|192.0.2.1", "cluster_ids": ", ,"})
