"""Data folders shipped with the package: ``plugins/`` and ``payload_samples/``.

Installed, they are the packages ``cartridge_agent_lvs.pca_plugin`` and
``cartridge_agent_lvs.payload_samples`` (setup.cfg maps them with ``package_dir``);
run from a source tree, they are the top-level folders beside the package.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_TOP = {"pca_plugin": "plugins", "payload_samples": "payload_samples"}


def folder(name: str):
    """A Traversable (installed) or Path (source tree) for *name* (a key of _TOP)."""
    try:
        return resources.files(f"cartridge_agent_lvs.{name}")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / _TOP[name]
