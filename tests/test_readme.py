"""Every command and example in README.rst, walked.

Each literal block of README.rst is classified; a command line this test does not know
how to treat fails it, so a new README command is either run here or listed with the
reason it is not.

* synopses (``[--flag X]``, ``FILE``): every verb and every flag must be accepted by
  that program's ``--help``;
* commands that run here: run, as written (paths under ``/etc/lvs-extension`` are the
  shipped example they are installed from);
* commands that install or change the machine (apt-get, systemctl, a virtualenv under
  /opt ...): not run -- ``tests/test_deploy.py`` covers what they install -- but every
  repository file they name must exist;
* config-file examples are loaded by the settings parser.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
README = (ROOT / "README.rst").read_text()
INSTALLED_CONFIG = "/etc/lvs-extension/lvs-extension.conf"
EXAMPLE_CONFIG = str(ROOT / "deploy" / "lvs-extension.conf.example")

#: first word -> why it is not run here (it changes the machine or needs a service)
NOT_RUN = {
    "apt-get": "installs Debian packages",
    "python3": "creates a virtualenv under /opt",
    "install": "installs files under /etc",
    "$EDITOR": "an editor",
    "systemctl": "needs systemd as PID 1 (tests/test_deploy.py verifies the unit)",
    "journalctl": "needs systemd",
    "mosquitto_pub": "needs the site's broker",
    "scripts/bootstrap": "the set-up command itself (CI runs it)",
    ".venv/bin/tox": "the test command itself",
}
PROGRAMS = ("cartridge-agent-lvs", "lvs-extension")


def literal_blocks():
    """(line number, [lines]) of every ``::`` literal block."""
    lines, blocks, i = README.splitlines(), [], 0
    while i < len(lines):
        if lines[i].rstrip().endswith("::"):
            j, block = i + 1, []
            while j < len(lines) and not lines[j].strip():
                j += 1
            indent = len(lines[j]) - len(lines[j].lstrip()) if j < len(lines) else 0
            base = len(lines[i]) - len(lines[i].lstrip())
            while indent > base and j < len(lines) and (
                    not lines[j].strip() or lines[j].startswith(" " * indent)):
                if lines[j].strip():
                    block.append(lines[j][indent:])
                j += 1
            blocks.append((i + 1, block))
            i = j
        else:
            i += 1
    return blocks


def commands():
    """Command lines (continuation lines joined), with their README line."""
    out = []
    for number, block in literal_blocks():
        for line in block:
            if line.startswith(" ") and out and out[-1][0] == number:
                out[-1] = (number, out[-1][1] + " " + line.strip())
            elif re.match(r"^(\.venv/|/opt/|scripts/|LVS_E2E|[a-z$][\w.-]*(\s|$))", line) \
                    and not re.match(r"^\S+ = ", line) and not line.startswith("["):
                out.append((number, line.split("  #")[0].strip()))
    return out


def inline_commands():
    """Commands quoted inline in the prose (````.venv/bin/python bench/x.py````)."""
    out = []
    for number, text in enumerate(README.splitlines(), 1):
        for quoted in re.findall(r"``([^`]+)``", text):
            if re.match(r"^(\.venv/bin/\S+|python3? (bench|tests|scripts)/\S+\.py|"
                        r"lvs-extension [a-z]|cartridge-agent-lvs [a-z])", quoted):
                out.append((number, quoted))
    return out


def _program(word: str) -> str:
    return next((p for p in PROGRAMS if word.endswith(p)), "")


def _help(program: str, verb: str = "") -> str:
    argv = [str(BIN / program)] + ([verb] if verb else []) + ["--help"]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, (argv, proc.stderr)
    return proc.stdout


def _is_synopsis(words, line) -> bool:
    """Placeholders, options in brackets -- or a verb named inline in the prose."""
    if (line, True) in _INLINE:
        return True
    return any(w.startswith("[") or w in ("|", "<", "...") or re.fullmatch(r"[A-Z_]+", w)
               for w in words[1:])


_INLINE = {(line, True) for _, line in inline_commands()}


@pytest.mark.parametrize("number, line", commands() + inline_commands(),
                         ids=lambda v: str(v)[:60])
def test_readme_command(number, line):
    words = shlex.split(line.replace("$EDITOR", "EDITOR"), comments=True)
    first = line.split()[0]
    words = [w for w in words if not re.match(r"^[A-Z_]+=", w)]      # VAR=value prefix
    program = _program(words[0])
    if first in NOT_RUN or words[0] in NOT_RUN or first.startswith("LVS_E2E"):
        for path in re.findall(r"\b(deploy/[\w./-]+|plugins/[\w./-]+|scripts/[\w.-]+)", line):
            assert (ROOT / path).exists(), f"README line {number}: {path} does not exist"
        return
    if words[0].startswith("/opt/cartridge-agent-lvs/bin/"):
        tail = words[0].rsplit("/", 1)[1]
        if tail in ("pip",):
            return                                   # an install step (NOT_RUN reason)
        words[0] = str(BIN / tail)                  # the same console script, from here
        program = _program(tail)
    if words[0].startswith(".venv/bin/python"):
        script = ROOT / words[1]
        assert script.exists(), f"README line {number}: {words[1]} does not exist"
        if words[1].startswith("tests/"):
            return      # a helper of the suite (it fetches a kernel): the e2e run uses it
        proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, (line, proc.stderr[-500:])
        return
    assert program, f"README line {number}: no rule for this command: {line}"
    verb = next((w for w in words[1:] if not w.startswith("-")), "")
    if _is_synopsis(words, line):
        text = _help(program, verb)
        for flag in re.findall(r"(--[a-z][a-z-]+)", line):
            assert flag in text, f"README line {number}: {flag} not in {program} {verb} --help"
        return
    argv = [str(BIN / program) if w == words[0] else EXAMPLE_CONFIG if w == INSTALLED_CONFIG
            else w for w in words]
    if verb == "install-pca":
        return          # needs an agent home: tests/realserver/test_pca.py runs it
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, (line, proc.stdout[-500:], proc.stderr[-500:])


def test_the_quick_start_check_prints_what_the_readme_says():
    expected = re.search(r"prints ``(OK: keepalived accepts the file[^`]*)``", README).group(1)
    proc = subprocess.run([str(BIN / "lvs-extension"), "check", "--config", EXAMPLE_CONFIG,
                           "--topology", "deploy/examples/topology.json"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.stdout.strip() == expected


def test_config_examples_load(tmp_path):
    from cartridge_agent_lvs.director.settings import load
    blocks = [b for _, b in literal_blocks() if b and re.match(r"^[a-z_]+ = ", b[0])]
    assert blocks, "README shows no config-file example"
    for block in blocks:
        path = tmp_path / "example.conf"
        path.write_text("\n".join(block) + "\n")
        load(None, str(path))
