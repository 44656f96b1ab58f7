"""``lvs-extension`` verbs: render, check, settings, run; one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from cartridge_agent_lvs.director.cli import main

from . import _stratos as st
from ._feedutil import wait_for
from ._service import FakeKeepalived, vrrp_interface
from .conftest_broker import free_port

HERE = os.path.dirname(__file__)
SAMPLE = os.path.join(HERE, "samples", "shop-topology.json")
SHOP_MAP = "tomcat|192.168.56.40,php|192.168.56.41,dns|fd99::53,mysql|192.168.56.42"


def run_main(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_render_prints_the_golden_file_and_warnings_on_stderr(capsys, tmp_path):
    before = set(os.listdir(tmp_path))
    code, out, err = run_main(capsys, "render", "--topology", SAMPLE, "--vip-map", SHOP_MAP,
                              "--auth-pass", "s3cret", "--interface", "eth0",
                              "--keepalived-conf", str(tmp_path / "k.conf"))
    assert code == 0
    with open(os.path.join(HERE, "golden", "shop-dr.conf")) as f:
        assert out == f.read()
    assert "warning: service 'mysql': no Active member" in err
    assert set(os.listdir(tmp_path)) == before              # no side effects


def test_render_reads_a_config_file(capsys, tmp_path):
    config = tmp_path / "lvs.conf"
    config.write_text(f"vip_map = {SHOP_MAP}\nauth_pass = s3cret\ninterface = eth0\n")
    code, out, _ = run_main(capsys, "render", "--topology", SAMPLE, "--config", str(config))
    with open(os.path.join(HERE, "golden", "shop-dr.conf")) as f:
        assert (code, out) == (0, f.read())


@pytest.mark.keepalived
def test_check_accepts_and_rejects_with_the_real_binary(capsys):
    code, out, _ = run_main(capsys, "check", "--topology", SAMPLE, "--vip-map", SHOP_MAP,
                            "--interface", vrrp_interface())
    assert code == 0 and out.startswith("OK: keepalived accepts the file: 4 virtual servers")
    code, _, err = run_main(capsys, "check", "--topology", SAMPLE, "--vip-map", SHOP_MAP,
                            "--interface", "nosuch0")
    assert code == 1 and "keepalived rejected the rendered file" in err
    assert "interface nosuch0" in err


@pytest.mark.parametrize("argv, message", [
    (["--vip-map", "tomcat|192.168.56.300"], "--vip-map='192.168.56.300': not an IP"),
    (["--vip-map", "tomcat|192.168.56.40", "--state", "LEADER"], "--state='LEADER'"),
    (["--vip-map", "tomcat|192.168.56.40", "--priority", "0"], "--priority='0'"),
    ([], "vip_map=None: is mandatory"),
])
def test_bad_settings_are_one_line_exit_2(capsys, argv, message):
    code, out, err = run_main(capsys, "render", "--topology", SAMPLE, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_bad_topology_file_is_one_line_naming_the_file(capsys, tmp_path):
    truncated = tmp_path / "topology.json"
    with open(SAMPLE) as f:
        truncated.write_text(f.read()[:500])
    for path, message in ((truncated, "not valid JSON"),
                          (tmp_path / "missing.json", "cannot read")):
        code, out, err = run_main(capsys, "render", "--topology", str(path),
                                  "--vip-map", SHOP_MAP)
        assert code == 2 and out == "" and err.count("\n") == 1
        assert str(path) in err and message in err


def test_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["render", "--vip-map", SHOP_MAP])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_settings_round_trip_through_a_config_file(capsys, tmp_path):
    code, out, _ = run_main(capsys, "settings", "--vip-map", SHOP_MAP, "--mqtt",
                            "mb:1883,[fd00::1]:1883", "--reload-command",
                            "systemctl reload keepalived", "--sorry-server", "192.0.2.9 80",
                            "--nopreempt")
    assert code == 0
    config = tmp_path / "copy.conf"
    config.write_text(out)
    code, again, _ = run_main(capsys, "settings", "--config", str(config))
    assert (code, again) == (0, out)


def _status(port: int):
    """The running service's /status document, or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as r:
            return json.loads(r.read())
    except OSError:
        return None


def _last_apply(port: int) -> dict:
    return (_status(port) or {}).get("last_apply") or {}


def test_run_follows_a_file_reloads_on_change_and_stops_on_sigterm(tmp_path):
    """The console entry point as a process: SIGHUP re-reads, SIGTERM exits 0.

    Its /status (``--metrics-listen``) says when the SIGHUP was acted on: the forced
    re-render's outcome is what the test waits for instead of a sleep."""
    fake = FakeKeepalived(str(tmp_path))
    topo, conf = tmp_path / "topology.json", tmp_path / "keepalived.conf"
    topo.write_text(json.dumps(st.topology({0: [1, 2]})))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cartridge_agent_lvs.director.cli", "run",
         "--vip-map", st.vip_map([0]), "--interface", vrrp_interface(),
         "--topology-file", str(topo), "--keepalived-conf", str(conf),
         "--keepalived-pidfile", fake.pidfile, "--quiet-period", "0.1",
         "--drain-seconds", "0", "--metrics-listen", str(port)],
        stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: conf.exists() and st.member_ip(0, 2) in conf.read_text(), 30,
                 "first render")
        fake.expect(1)
        tmp = tmp_path / "t.tmp"
        tmp.write_text(json.dumps(st.topology({0: [1, 2, 3]})))
        os.replace(tmp, topo)
        wait_for(lambda: st.member_ip(0, 3) in conf.read_text(), 30, "second render")
        fake.expect(2)
        before = wait_for(lambda: _last_apply(port).get("outcome") == "reloaded"
                          and _last_apply(port), 30, "the second reload in /status")
        proc.send_signal(signal.SIGHUP)          # re-read: same content, no reload
        after = wait_for(lambda: _last_apply(port).get("unix", 0) > before["unix"]
                         and _last_apply(port), 30, "the re-render after SIGHUP")
        assert after["outcome"] == "file already in place"
        fake.expect(2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        fake.expect(2)                           # the process is gone: nothing more
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        fake.stop()
    log = proc.stderr.read()
    assert "Traceback" not in log and "SIGHUP" in log


def test_run_without_a_feed_is_one_line_exit_2(capsys, tmp_path):
    code, _, err = run_main(capsys, "run", "--vip-map", SHOP_MAP,
                            "--keepalived-conf", str(tmp_path / "k.conf"))
    assert code == 2 and "exactly one of --topology-file, --mqtt, --http" in err


# -- review (issue 10) ----------------------------------------------------------------

def _cli(*argv, timeout=30):
    return subprocess.run([sys.executable, "-m", "cartridge_agent_lvs.director.cli", *argv],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_a_fifo_as_topology_is_one_line_not_a_hang(tmp_path):
    fifo = tmp_path / "topology.json"
    os.mkfifo(fifo)
    proc = _cli("render", "--topology", str(fifo), "--vip-map", SHOP_MAP, timeout=20)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert str(fifo) in proc.stderr and "not a regular file (a FIFO)" in proc.stderr


@pytest.mark.parametrize("field, where", [
    ('"proxy": 80', "portMap"), ('"memberId": "svc0.member-1"', "memberId")])
def test_a_number_too_long_for_python_is_one_line_naming_the_field(capsys, tmp_path, field,
                                                                   where):
    text = json.dumps(st.topology({0: [1, 2]}))
    assert field in text
    huge = tmp_path / "huge.json"
    huge.write_text(text.replace(field, field.split(":")[0] + ": " + "9" * 5000, 1))
    for verb in ("render", "check"):
        code, out, err = run_main(capsys, verb, "--topology", str(huge),
                                  "--vip-map", st.vip_map([0]))
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert where in err and "5000 digits" in err and str(huge) in err


def test_settings_never_print_the_vrrp_password(capsys, tmp_path):
    code, out, _ = run_main(capsys, "settings", "--vip-map", SHOP_MAP, "--auth-pass", "s3cret",
                            "--http-url", "http://user:pa55@stratos/topology")
    assert code == 0 and "s3cret" not in out and "pa55" not in out
    assert "# auth_pass = *** (not shown)" in out
    assert "http://***@stratos/topology" in out


def test_auth_pass_file_keeps_the_password_out_of_ps_and_round_trips(capsys, tmp_path):
    secret = tmp_path / "vrrp.pass"
    secret.write_text("s3cret\n")
    code, out, _ = run_main(capsys, "render", "--topology", SAMPLE, "--vip-map", SHOP_MAP,
                            "--auth-pass-file", str(secret), "--interface", "eth0")
    with open(os.path.join(HERE, "golden", "shop-dr.conf")) as f:
        assert (code, out) == (0, f.read())           # same file as with --auth-pass
    code, out, _ = run_main(capsys, "settings", "--vip-map", SHOP_MAP,
                            "--auth-pass-file", str(secret))
    assert "s3cret" not in out and f"auth_pass_file = {secret}" in out
    config = tmp_path / "copy.conf"
    config.write_text(out)
    code, again, _ = run_main(capsys, "settings", "--config", str(config))
    assert (code, again) == (0, out)


def test_sigterm_is_effective_while_the_http_server_trickles(tmp_path):
    from .test_feed_http import SlowServer
    slow = SlowServer(every=0.2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cartridge_agent_lvs.director.cli", "run",
         "--vip-map", st.vip_map([0]), "--http-url", slow.url, "--http-timeout", "600",
         "--keepalived-conf", str(tmp_path / "keepalived.conf")],
        stderr=subprocess.PIPE, text=True)
    try:
        # the service is in the body read once the server drips into it
        wait_for(lambda: slow.drips >= 3, 30, "the body to trickle")
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - t < 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        slow.close()
    assert "Traceback" not in proc.stderr.read()


# -- issue 12 ---------------------------------------------------------------------------

PER_SERVICE_CONFIG = f"""\
vip_map = {SHOP_MAP}
interface = eth0
scheduler = wlc
delay_loop = 10

[service php]
health_check = HTTP_GET
http_path = /health
http_status = 200
scheduler = lc
persistence_timeout = 300
weight = 5
sorry_server = 192.168.56.200 8080

[service tomcat]
forwarding_method = NAT
health_check = SSL_GET
http_path = /ping
connect_timeout = 2
retry = 3

[service dns]
health_check = UDP_CHECK
scheduler = sh
delay_loop = 3

[service mysql]
health_check = NONE
"""


def test_render_with_service_sections_gives_the_per_service_golden_file(capsys, tmp_path):
    config = tmp_path / "lvs.conf"
    config.write_text(PER_SERVICE_CONFIG)
    code, out, err = run_main(capsys, "render", "--topology", SAMPLE, "--config", str(config))
    with open(os.path.join(HERE, "golden", "shop-per-service.conf")) as f:
        assert (code, out) == (0, f.read())
    assert "sorry_server 192.168.56.200 8080, but with DR" in err


def test_settings_round_trip_with_service_sections(capsys, tmp_path):
    config = tmp_path / "lvs.conf"
    config.write_text(PER_SERVICE_CONFIG)
    code, out, _ = run_main(capsys, "settings", "--config", str(config))
    assert code == 0 and "\n[service php]\n" in out and "sorry_server = 192.168.56.200 8080" in out
    copy = tmp_path / "copy.conf"
    copy.write_text(out)
    code, again, _ = run_main(capsys, "settings", "--config", str(copy))
    assert (code, again) == (0, out)


def test_a_bad_service_section_is_one_line_exit_2(capsys, tmp_path):
    config = tmp_path / "lvs.conf"
    config.write_text(PER_SERVICE_CONFIG + "priority = 90\n")
    code, out, err = run_main(capsys, "render", "--topology", SAMPLE, "--config", str(config))
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert f"{config}:29: priority='90': is a global setting" in err


def test_the_documented_run_http_url_command_parses(capsys):
    """README: ``lvs-extension run ... --http URL`` (was an ambiguous prefix)."""
    from cartridge_agent_lvs.director.cli import _parser
    args = _parser().parse_args(["run", "--vip-map", SHOP_MAP, "--http", "http://s/topo"])
    assert args.http_url == "http://s/topo"
    code, out, _ = run_main(capsys, "settings", "--vip-map", SHOP_MAP, "--http",
                            "http://s/topo")
    assert code == 0 and "http_url = http://s/topo" in out
