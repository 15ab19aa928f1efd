"""A clock tests move by hand, for code that takes ``clock=time.monotonic``."""

from __future__ import annotations


class ManualClock:
    """Returns ``now``; tests advance it."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
