"""Which running jobs may have been taken from this worker: told by the job feed.

A row must be aborted at the next step when its job stops being this worker's (canceled,
purged, claimed again after a lost lease). Asking the database before every step costs
a query per step; instead the worker subscribes to the feed channels of the jobs it
runs (:func:`shared.job_feed.job_channel`; every commit that moves a job publishes
``changed`` there) and asks the database only about jobs that got a notice, about jobs
that joined since the last question (a notice published before the subscription was
confirmed would be missed), and about all of them every ``full_check_s`` in case a
notice was lost. A job whose channel was subscribed again (the Redis client makes a
lost connection again by itself) is asked about too. While Redis cannot be reached,
:meth:`JobNotices.to_check` says to ask about every job, every step, as before.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Collection

import redis

from shared.job_feed import CHANGED, job_channel

log = logging.getLogger(__name__)

_CHANGED = CHANGED.encode()
_PREFIX = job_channel("")


class JobNotices:
    """The ``changed`` notices of the jobs a worker runs (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        full_check_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._full_check_s = full_check_s
        self._clock = clock
        self._pubsub: redis.client.PubSub | None = None
        self._following: set[uuid.UUID] = set()
        self._confirmed: set[uuid.UUID] = set()
        self._noticed: set[uuid.UUID] = set()
        self._checked: set[uuid.UUID] = set()
        self._full_at = -float("inf")

    def to_check(self, running: Collection[uuid.UUID]) -> set[uuid.UUID]:
        """The jobs of ``running`` to look up in the database before the next step (an
        empty set: none may have moved). Follows ``running`` from now on."""
        jobs = set(running)
        try:
            self._follow(jobs)
            self._read()
        except (redis.RedisError, OSError) as exc:
            log.warning("job notices lost (%s); checking every job", type(exc).__name__)
            self._reset()
        now = self._clock()
        if self._pubsub is None or now >= self._full_at:
            self._full_at = now + self._full_check_s
            wanted = set(jobs)
        else:
            unchecked = self._confirmed - self._checked  # joined: check once subscribed
            wanted = (self._noticed | unchecked) & jobs
        self._noticed -= wanted
        self._checked |= wanted & self._confirmed
        return wanted

    def _follow(self, running: set[uuid.UUID]) -> None:
        if self._pubsub is None:
            self._pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
        new, gone = running - self._following, self._following - running
        if new:
            self._pubsub.subscribe(*(job_channel(job_id) for job_id in new))
        if gone:
            self._pubsub.unsubscribe(*(job_channel(job_id) for job_id in gone))
            self._confirmed -= gone
            self._noticed -= gone
            self._checked -= gone
        self._following = running

    def _read(self) -> None:
        """Take every message already received, without waiting."""
        assert self._pubsub is not None
        while (message := self._pubsub.get_message(timeout=0.0)) is not None:
            channel = message["channel"]
            name = channel.decode() if isinstance(channel, bytes) else channel
            job_id = uuid.UUID(name.removeprefix(_PREFIX))
            if job_id not in self._following:
                continue  # sent before it was left
            if message["type"] == "subscribe":
                if job_id in self._confirmed:
                    # Subscribed again: the connection was lost and made again (the
                    # client does that itself), and a notice with it, maybe.
                    self._noticed.add(job_id)
                self._confirmed.add(job_id)
            elif message["type"] == "message" and message["data"] == _CHANGED:
                self._noticed.add(job_id)

    def _reset(self) -> None:
        if self._pubsub is not None:
            self._pubsub.close()
        self._pubsub = None
        self._following, self._confirmed, self._noticed, self._checked = set(), set(), set(), set()
