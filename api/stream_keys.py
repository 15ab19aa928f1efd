"""Whether the keys that opened this process's event streams still hold.

A stream asks before each event it sends (:mod:`api.streams`). Asked of the key cache
by each stream on its own, a thousand streams of one key sent a thousand database
queries in the same instant whenever the cache lapsed: the burst of a batch's start,
when every stream writes at once, found the cache empty in every one of them, since
each stream that missed it yielded on its query before any had put the answer back.
Here the answer is kept per key for ``check_s``; when it is due again, one stream asks
(``lookup``) and every other one takes the last answer meanwhile.

A lookup that fails (the database cannot be reached) keeps the last answer: a stream
then fails on its own reads, not on this check, and nothing can be revoked meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)

MAX_KEYS = 10_000


class StreamKeys:
    """Each key's last answer (see the module docstring); ``lookup(digest)`` says
    whether the key whose SHA-256 is ``digest`` is still active."""

    def __init__(
        self,
        lookup: Callable[[str], bool],
        check_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._check_s = check_s
        self._clock = clock
        self._lock = threading.Lock()
        self._known: dict[str, tuple[bool, float]] = {}  # digest: (holds, asked at)
        self._asking: set[str] = set()

    def holds(self, digest: str) -> bool:
        """Whether the key still holds, as last asked; asks again if it is due and no
        other stream is asking. A key not asked about yet holds: its stream was
        authenticated when it opened."""
        now = self._clock()
        with self._lock:
            holds, asked_at = self._known.get(digest, (True, -float("inf")))
            if now - asked_at < self._check_s or digest in self._asking:
                return holds
            self._asking.add(digest)
        try:
            holds = self._lookup(digest)
        except SQLAlchemyError as exc:
            log.warning("stream key not checked: %s", type(exc).__name__)
        finally:
            with self._lock:
                self._asking.discard(digest)
                if len(self._known) >= MAX_KEYS:
                    self._known.clear()
                self._known[digest] = (holds, self._clock())
        return holds
