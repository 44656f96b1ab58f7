"""Waiting for what a test can observe, instead of sleeping: a deadline-bounded poll
(:func:`wait_for`) and a call counter on one object (:class:`Spy`).  Shared by the
director and real-server tests."""

from __future__ import annotations

import time
from typing import Callable, List


def wait_for(predicate: Callable[[], object], timeout: float = 10.0,
             what: str = "condition") -> object:
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)        # the polling step of this wait, not a synchronisation


class Spy:
    """Counts the calls of one method of one object (a test-only observation point).

    ``Spy(feed, "_sleep")`` replaces the method on that instance by a wrapper that
    counts each call *as it starts* and keeps its time (``times``).  A feed thread
    calls ``_sleep`` once at the end of every poll, failed connection round or
    backoff, and the service loop calls ``Director.tick`` once per pass, so "k more
    calls" is "k more passes of that thread" -- what an absence check waits for
    instead of sleeping.  Nothing in the product changes.
    """

    def __init__(self, obj: object, name: str) -> None:
        self.count = 0
        self.times: List[float] = []
        inner = getattr(obj, name)

        def counted(*args, **kw):
            self.times.append(time.monotonic())
            self.count += 1
            return inner(*args, **kw)
        setattr(obj, name, counted)

    def wait(self, more: int, timeout: float = 10.0, what: str = "calls") -> None:
        """Wait until *more* further calls have started."""
        target = self.count + more
        wait_for(lambda: self.count >= target, timeout, f"{more} more {what}")
