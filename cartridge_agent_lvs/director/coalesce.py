"""Coalescing: one render/validate/reload for a burst of topology changes.

A change arms the coalescer; it fires once no further change arrived for
``quiet_period`` seconds, but never later than ``max_delay`` seconds after the first
change of the burst, so a steady stream of events still converges.  Pure logic over
timestamps given by the caller (an injectable clock).
"""

from __future__ import annotations

from typing import Optional


class Coalescer:
    """``touch(now)`` on every change; act when ``due(now)``; then ``reset()``."""

    def __init__(self, quiet_period: float, max_delay: float) -> None:
        if quiet_period < 0 or max_delay < 0:
            raise ValueError("quiet_period and max_delay must be >= 0")
        self.quiet_period = quiet_period
        self.max_delay = max(max_delay, quiet_period)
        self._first: Optional[float] = None
        self._last: Optional[float] = None

    @property
    def pending(self) -> bool:
        return self._first is not None

    def touch(self, now: float) -> None:
        if self._first is None:
            self._first = now
        self._last = now

    def deadline(self) -> Optional[float]:
        """When the pending burst is due, or None when nothing is pending."""
        if self._first is None or self._last is None:
            return None
        return min(self._last + self.quiet_period, self._first + self.max_delay)

    def due(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def reset(self) -> None:
        self._first = self._last = None
