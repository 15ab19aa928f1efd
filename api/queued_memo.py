"""A per-process memo of tenants' queued-job counts, so the queue cap need not count the
queue at every submission."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable


class QueuedMemo:
    """What this process last knew of each tenant's queued jobs: the count it read, plus
    what it accepted since, for ``max_age_s`` seconds.

    Counting a tenant's queue at every submission costs as much as the rest of the
    request once thousands wait. Far below the cap the answer cannot change, so a fresh
    memo is trusted there; in the last ``exact_fraction`` of the cap (and whenever the
    memo is stale) the queue is counted exactly. Other API processes' submissions show up
    only at this process's next count, so the cap can be passed by at most what they
    accepted in the last ``max_age_s`` while this one trusted its memo.
    """

    def __init__(
        self,
        max_age_s: float = 1.0,
        exact_fraction: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_age_s = max_age_s
        self._clock = clock
        self._exact_fraction = exact_fraction
        self._lock = threading.Lock()
        self._known: dict[uuid.UUID, tuple[int, float]] = {}

    def admit(self, tenant_id: uuid.UUID, adding: int, cap: int) -> bool:
        """Whether ``adding`` more jobs are safely within ``cap`` by the memo alone (then
        they are counted in); ``False`` means: count exactly."""
        now = self._clock()
        with self._lock:
            known = self._known.get(tenant_id)
            if known is None or now - known[1] > self._max_age_s:
                return False
            if known[0] + adding > cap * (1 - self._exact_fraction):
                return False
            self._known[tenant_id] = (known[0] + adding, known[1])
            return True

    def counted(self, tenant_id: uuid.UUID, queued: int) -> None:
        """Remember ``queued`` (just counted, including what is being accepted now)."""
        with self._lock:
            self._known[tenant_id] = (queued, self._clock())
