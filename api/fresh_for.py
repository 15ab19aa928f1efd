"""One value an API process recomputes at most once per interval, however often it is
asked for (the figures of ``/metrics``, the verdict of ``/readyz``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class FreshFor(Generic[T]):
    """``compute()``'s result, reused for ``ttl_s`` seconds (0: computed at every call).

    Callers arriving while the value is being recomputed wait for that computation
    instead of starting their own, so a burst of requests costs one computation per
    interval per process. ``compute`` should not raise (report failure in its value);
    if it does, nothing is remembered and the exception reaches the caller.
    """

    def __init__(
        self, ttl_s: float, compute: Callable[[], T], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl_s = ttl_s
        self._compute = compute
        self._clock = clock
        self._lock = threading.Lock()
        self._value: tuple[T, float] | None = None

    def get(self) -> T:
        """The remembered value if younger than ``ttl_s``, else a fresh one."""
        with self._lock:
            if self._value is not None and self._clock() - self._value[1] < self._ttl_s:
                return self._value[0]
            value = self._compute()
            self._value = (value, self._clock())
            return value
