"""Recently looked-up API keys of one API process.

Looking a key up costs a database round trip and an ORM load on every request, a fifth
of the API's time for a small job. A key seen in the last ``ttl_s`` seconds is trusted
from memory (revoked keys too, so they are refused without a query); so a revocation
takes effect on every API process within ``ttl_s``. Expiry is checked at every request
all the same. Unknown keys are never remembered: guessing cannot fill the memory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from shared.keys import find_key_by_hash, is_active
from shared.models import ApiKey

MAX_ENTRIES = 10_000


class KeyCache:
    """Key rows by the key's SHA-256, each for ``ttl_s`` seconds (0: nothing is kept)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._rows: dict[str, tuple[ApiKey, float]] = {}

    def get(self, digest: str) -> ApiKey | None:
        """The row remembered for ``digest`` if still fresh, else ``None``."""
        with self._lock:
            found = self._rows.get(digest)
        if found is None or self._clock() - found[1] >= self._ttl_s:
            return None
        return found[0]

    def put(self, digest: str, row: ApiKey) -> None:
        """Remember ``row`` (detached, read-only from now on) under ``digest``."""
        if self._ttl_s <= 0:
            return
        with self._lock:
            if len(self._rows) >= MAX_ENTRIES:
                self._rows.clear()
            self._rows[digest] = (row, self._clock())


def active_key_row(sessions: sessionmaker[Session], cache: KeyCache, digest: str) -> ApiKey | None:
    """The row of the key whose SHA-256 is ``digest`` if it is neither revoked nor
    expired, else ``None``; looked up in ``cache`` first, then the database."""
    row = cache.get(digest)
    if row is None:
        with sessions() as session:
            row = find_key_by_hash(session, digest)
        if row is None:
            return None
        cache.put(digest, row)
    return row if is_active(row, datetime.now(UTC)) else None
