"""What this process's open event streams keep alive in Redis, kept alive together.

An open stream holds two things in Redis that lapse unless renewed: its tenant's stream
slot (:mod:`shared.redis_slots`, a lease) and, for a job stream, the job's watch key
(:mod:`shared.job_feed`: while it exists the worker publishes the job's text). Renewed
by each stream on its own, a thousand streams make a hundred Redis round trips a second
and come in bursts (streams opened together renew together). Here one background thread
(a greenlet under gunicorn's gevent worker) renews every hold and every watched job of
the process in one pipeline each ``every_s``, and gives back the slots of streams that
ended, as soon as they end, many in one pipeline when many end at once. The thread ends
when the process has no stream open, and starts again with the next one.

Best effort, as before: when Redis cannot be reached, a renewal is tried again at the
next round, and a slot not given back lapses after its lease.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter

import redis

from shared.job_feed import WATCH_TTL_S, watch_key
from shared.redis_slots import Hold, RedisSlots

log = logging.getLogger(__name__)


class StreamUpkeep:
    """Renews the slots and watch keys of one process's streams (see the module
    docstring). ``lease_s`` is the slots' lease; they are renewed every third of it,
    watch keys every third of their TTL."""

    def __init__(self, client: redis.Redis, lease_s: float) -> None:
        self._client = client
        self._slots = RedisSlots(client)
        self.lease_s = lease_s
        self._every_s = min(lease_s, WATCH_TTL_S) / 3
        self._lock = threading.Lock()
        self._holds: set[Hold] = set()
        self._released: list[Hold] = []
        self._watched: Counter[uuid.UUID] = Counter()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def slots(self) -> RedisSlots:
        """The slots the holds are taken from."""
        return self._slots

    def take(self, limits: dict[str, int]) -> Hold | None:
        """A slot in every key of ``limits`` (:meth:`RedisSlots.acquire`), renewed from
        now until :meth:`release`; ``None`` when any is full. Raises
        ``redis.RedisError`` when Redis cannot be reached."""
        hold = self._slots.acquire(limits, self.lease_s)
        if hold is not None:
            with self._lock:
                self._start()
                self._holds.add(hold)
        return hold

    def release(self, hold: Hold) -> None:
        """Stop renewing ``hold`` and give it back (at once, in the background)."""
        with self._lock:
            self._holds.discard(hold)
            self._released.append(hold)
        self._wake.set()

    def watch(self, job_id: uuid.UUID) -> None:
        """Keep ``job_id``'s watch key set until as many :meth:`unwatch` calls."""
        with self._lock:
            self._start()
            self._watched[job_id] += 1

    def unwatch(self, job_id: uuid.UUID) -> None:
        with self._lock:
            self._watched[job_id] -= 1
            if self._watched[job_id] <= 0:
                del self._watched[job_id]

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="stream-upkeep", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        renew_at = time.monotonic() + self._every_s
        while True:
            self._wake.wait(max(0.0, renew_at - time.monotonic()))
            self._wake.clear()
            renew = time.monotonic() >= renew_at
            if renew:
                renew_at = time.monotonic() + self._every_s
            with self._lock:
                released, self._released = self._released, []
                holds = list(self._holds) if renew else []
                watched = list(self._watched) if renew else []
                idle = not (self._holds or self._watched)
                if idle:  # no stream open: end (the next one starts the thread again)
                    self._thread = None
            try:
                self._apply(released, holds, watched)
            except redis.RedisError as exc:
                log.warning("stream upkeep failed (%s); slots lapse on their own", exc)
            if idle:
                return

    def _apply(self, released: list[Hold], holds: list[Hold], watched: list[uuid.UUID]) -> None:
        """Give back ``released``, renew ``holds`` and the watch keys of ``watched``: one
        round trip."""
        with self._client.pipeline(transaction=False) as pipe:
            for hold in released:
                self._slots.release(hold, pipe)
            self._slots.renew_all(holds, self.lease_s, pipe)
            for job_id in watched:
                key = watch_key(job_id)
                pipe.set(key, uuid.uuid4().hex, ex=WATCH_TTL_S, nx=True)
                pipe.expire(key, WATCH_TTL_S)
            pipe.execute()
