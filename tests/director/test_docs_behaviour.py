"""What README.rst and ``--help`` say is what the program does (issue 18): inline
comments in the config file, ``--sorry-server IP PORT``, one default per help line,
an unknown topology event logged once."""

from __future__ import annotations

import json
import logging

import pytest

from cartridge_agent_lvs.director import service
from cartridge_agent_lvs.director.cli import main
from cartridge_agent_lvs.director.feeds import COMPLETE, FeedUpdate

from . import _stratos as st
from ._service import director_settings, fake_keepalived  # noqa: F401


def run_main(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_inline_comments_in_the_config_file(capsys, tmp_path):
    config = tmp_path / "c.conf"
    config.write_text("vip_map = tomcat|192.168.56.40   # the map\n"
                      "state = BACKUP            ; the other director is MASTER\n"
                      "priority = 100#not-a-comment-without-space\n")
    code, _, err = run_main(capsys, "settings", "--config", str(config))
    assert code == 2 and "priority='100#not-a-comment-without-space'" in err
    config.write_text(config.read_text().replace("100#not-a-comment-without-space", "90"))
    code, out, _ = run_main(capsys, "settings", "--config", str(config))
    assert code == 0
    assert "vip_map = tomcat|192.168.56.40\n" in out and "\nstate = BACKUP\n" in out
    assert "\npriority = 90\n" in out


@pytest.mark.parametrize("words", [["192.168.56.200", "80"], ["192.168.56.200 80"]])
def test_sorry_server_takes_what_the_help_shows(capsys, words):
    code, out, _ = run_main(capsys, "settings", "--vip-map", "tomcat|192.168.56.40",
                            "--sorry-server", *words)
    assert code == 0 and "\nsorry_server = 192.168.56.200 80\n" in out


def test_sorry_server_with_three_words_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["settings", "--vip-map", "tomcat|192.168.56.40", "--sorry-server", "1.2.3.4",
              "80", "81"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "--sorry-server takes IP PORT" in err


def test_every_help_line_names_one_default(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.count("(default: random)") == 0
    assert "MQTT client id (none: a random one) (default: none)" in text


def test_an_unknown_event_is_logged_once(director_settings, caplog):
    settings = director_settings()
    d = service.Director(settings, service.keepalived_for(settings))
    d.handle(FeedUpdate(COMPLETE, json.dumps(st.topology({0: [1]})), "test"), 0)
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            assert not d.handle(FeedUpdate("TenantSubscribedEvent", "{}", "mqtt"), 1)
    lines = [r.getMessage() for r in caplog.records if "TenantSubscribedEvent" in r.getMessage()]
    assert len(lines) == 1 and "does not change what the director serves" in lines[0]
