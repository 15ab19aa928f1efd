"""The one way tests wait: for a condition, with an explicit timeout, never a bare sleep.

A test that sleeps for "long enough" passes on a quiet machine and fails on a busy one;
a test that waits for what it needs is as fast as the machine allows and fails only when
the thing never happens, with a message that says what was awaited.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None], *, timeout_s: float, what: str, interval_s: float = 0.05
) -> T:
    """Call ``condition`` every ``interval_s`` seconds until it returns something truthy,
    and return that. Raises ``AssertionError`` naming ``what`` (and the last value seen)
    when ``timeout_s`` seconds pass first. The condition is always tried once more at the
    deadline, so a slow first call still counts."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout_s:g} s for {what}; last saw {value!r}")
        time.sleep(interval_s)
