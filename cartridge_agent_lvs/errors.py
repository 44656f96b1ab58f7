"""Typed errors shared by both wings.

Every error that can be caused by user input carries enough context to be printed as
ONE line naming what was wrong (key, value, file, line).  The CLIs print ``str(exc)``
and exit non-zero; they never show a traceback for these.
"""

from __future__ import annotations


class LvsError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(LvsError, ValueError):
    """A value given by a user (payload, settings, topology, CLI) is invalid.

    :param key: the name of the setting / payload key / field that was wrong.
    :param value: the offending value, as given.
    :param reason: what is wrong with it, in a few words.
    :param source: where it came from (a file name, ``"payload"``, ``"--vip-map"``...).
    :param line: a 1-based line number inside *source*, when known.
    """

    def __init__(self, key: str, value: object, reason: str,
                 source: str | None = None, line: int | None = None) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        self.source = source
        self.line = line
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.source:
            where = self.source + (f":{self.line}" if self.line else "") + ": "
        return f"{where}{self.key}={self.value!r}: {self.reason}"


class PayloadError(InputError):
    """The instance payload (launch-params) is malformed."""


class SettingsError(InputError):
    """A director setting (config file or CLI flag) is missing or invalid."""


class TopologyError(LvsError, ValueError):
    """A topology document or event cannot be parsed; nothing was applied."""


class HostError(LvsError):
    """The host refused a change (netlink / sysctl / keepalived); state was rolled back."""
