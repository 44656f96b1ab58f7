"""The promises the repository makes to its users, checked cheaply."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.rst").read_text()
    return re.findall(r"^    (scripts/bootstrap && .+)$", text, re.MULTILINE)


def test_readme_gives_a_demo_and_a_test_command():
    commands = _readme_commands()
    # the first command: set up, and the main job on an embedded default (tests/test_demo.py,
    # tests/e2e/test_demo.py)
    assert commands[0] == "scripts/bootstrap && scripts/demo", commands
    assert os.access(ROOT / "scripts" / "demo", os.X_OK)
    assert any("tox" in c for c in commands), commands


def test_ci_runs_exactly_the_readme_test_command():
    test_command = next(c for c in _readme_commands() if "tox" in c)
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_product_code_never_shells_out_to_network_tools():
    pattern = re.compile(r"""["'](ip|ifconfig|ipvsadm|sysctl|modprobe)["']""")
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "cartridge_agent_lvs").rglob("*.py")
                 if pattern.search(p.read_text())]
    assert offenders == []
