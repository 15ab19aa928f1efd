"""Whether the keys that opened this process's event streams still hold.

A stream asks before each event it sends (:mod:`api.streams`). Asked of the key cache
by each stream on its own, a thousand streams of one key sent a thousand database
queries in the same instant whenever the cache lapsed: the burst of a batch's start,
when every stream writes at once, found the cache empty in every one of them, since
each stream that missed it yielded on its query before any had put the answer back.
Here each key's row is kept, as last looked up, and asked for again (``lookup``) once
it is ``check_s`` old, by one stream while every other one takes the row it has; its
expiry is checked at every answer.

A stream starts from the row its request was authenticated with (:meth:`opened`). A
lookup that fails (the database cannot be reached) keeps the row it had, for at most
``stale_s`` of lookups failing in a row: then the key no longer holds, as no new
request with it does while the database is away. A stream gets its text from Redis,
so without that limit a key revoked just before an outage would read on for as long
as the outage lasted. Time without lookups (no stream wrote) is not an outage: the row
is then as good as it was, and asked for again at the next write.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError

from shared.keys import is_active
from shared.models import ApiKey

log = logging.getLogger(__name__)

MAX_KEYS = 10_000


@dataclass(frozen=True)
class _Known:
    row: ApiKey | None  # None: the key is no longer there
    asked_at: float
    failing_since: float | None = None  # the first of the lookups failing since


class StreamKeys:
    """Each key's row as last looked up (see the module docstring); ``lookup(digest)``
    is the row of the key whose SHA-256 is ``digest``, or ``None``."""

    def __init__(
        self,
        lookup: Callable[[str], ApiKey | None],
        *,
        check_s: float,
        stale_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._check_s = check_s
        self._stale_s = stale_s
        self._clock = clock
        self._lock = threading.Lock()
        self._known: dict[str, _Known] = {}
        self._asking: set[str] = set()

    def opened(self, row: ApiKey) -> None:
        """A stream opened with ``row``, just authenticated: the key's row from now,
        unless one is known already."""
        now = self._clock()
        with self._lock:
            if len(self._known) >= MAX_KEYS:
                self._known.clear()
            self._known.setdefault(row.key_sha256, _Known(row, now))

    def holds(self, digest: str) -> bool:
        """Whether the key still holds: its row as last looked up, asked for again if
        that is due and no other stream is asking."""
        now = self._clock()
        with self._lock:
            known = self._known.get(digest)
            due = known is None or now - known.asked_at >= self._check_s
            if not due or digest in self._asking:
                return self._answer(known, now)
            self._asking.add(digest)
        try:
            row = self._lookup(digest)
        except SQLAlchemyError as exc:
            log.warning("stream key not checked: %s", type(exc).__name__)
            if known is None:
                return False  # never seen (the memory was cleared): ask it to reconnect
            known = _Known(known.row, now, known.failing_since or now)
        else:
            known = _Known(row, now)
        finally:
            with self._lock:
                self._asking.discard(digest)
        with self._lock:
            self._known[digest] = known
        return self._answer(known, self._clock())

    def _answer(self, known: _Known | None, now: float) -> bool:
        if known is None:  # being asked for the first time (the memory was cleared)
            return True
        if known.failing_since is not None and now - known.failing_since >= self._stale_s:
            return False
        return known.row is not None and is_active(known.row, datetime.now(UTC))
