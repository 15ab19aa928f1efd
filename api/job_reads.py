"""Database reads of jobs for the waiters of a process: one read per job per notice, and
one query for every job asked for at once.

When a job moves, the job feed wakes every event stream of that job in the process
(twenty readers of one job are twenty waiters), and each must then see the job as
committed *after* the notice. They need not each read it: a read that started after
the notice arrived (:attr:`api.feed_listener.Message.received_at`) shows that state to
all of them. :meth:`JobReads.read` returns such a read.

Nor need the jobs be read one query each. When a worker starts fifty jobs, fifty notices
arrive together; fifty queries at once would take every pooled connection of the
process (and open more), and a request that needs one would queue behind them. So the
process makes at most one such query at a time: the reads asked for while one is under
way wait and go out together in the next (``WHERE id IN (...)``), made by one of their
waiters while the others sleep. A notice costs a process one row per job, and a burst
of notices a few queries and one connection.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from shared.models import Job

# Reads older than this are forgotten (a waiter asks for one made after its notice,
# which is always recent).
KEEP_S = 60.0


class Gone(LookupError):
    """What a watcher read is no longer there: its job or batch was purged."""


@dataclass(eq=False)
class _Read:
    """One read of a job: when its query started (``None`` while it waits for one), and
    what it found once ``done``. ``wake`` is set when it is done, or when its waiters
    should see whether one of them is to make the next query."""

    started_at: float | None = None
    done: bool = False
    job: Job | None = None
    error: BaseException | None = None
    wake: threading.Event = field(default_factory=threading.Event)


class JobReads:
    """The latest read of each job, shared by this process's waiters (see the module
    docstring); ``load`` reads the jobs with these ids from the database (one query)
    and returns those it found."""

    def __init__(
        self,
        load: Callable[[Collection[uuid.UUID]], dict[uuid.UUID, Job]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._clock = clock
        self._lock = threading.Lock()
        self._reads: dict[uuid.UUID, _Read] = {}
        self._waiting: dict[uuid.UUID, _Read] = {}  # asked for, not yet in a query
        self._querying = False
        self._pruned_at = clock()

    def read(self, job_id: uuid.UUID, since: float) -> Job:
        """The job as a read that started at or after ``since`` (``time.monotonic()``)
        found it; this call asks for that read unless one is already made or asked for.
        A read that failed (:class:`Gone` for a job that is gone) raises its error in
        every waiter that shared it, and is not kept: the next waiter asks again."""
        with self._lock:
            found = self._reads.get(job_id)
            if found is None or (found.started_at is not None and found.started_at < since):
                found = self._reads[job_id] = self._waiting[job_id] = _Read()
        while True:
            with self._lock:
                if found.done:
                    break
                lead = not self._querying and found.started_at is None
                if lead:
                    self._querying = True
                    batch, self._waiting = self._waiting, {}
                    started_at = self._clock()
                    for read in batch.values():
                        read.started_at = started_at
                else:
                    found.wake.clear()
            if lead:
                self._query(batch, started_at)
            else:
                found.wake.wait()
        if found.error is not None:
            raise found.error
        assert found.job is not None
        return found.job

    def _query(self, batch: dict[uuid.UUID, _Read], started_at: float) -> None:
        """Read the jobs of ``batch`` in one query and hand each waiter its job; then
        wake the reads asked for meanwhile, so that one of their waiters makes the next
        query."""
        jobs: dict[uuid.UUID, Job] = {}
        error: BaseException | None = None
        try:
            jobs = self._load(list(batch))
        except BaseException as exc:
            error = exc
            raise
        finally:
            with self._lock:
                for job_id, read in batch.items():
                    read.job = jobs.get(job_id)
                    if read.job is None:
                        read.error = error or Gone(f"job {job_id} is gone")
                        if self._reads.get(job_id) is read:  # the next waiter asks again
                            del self._reads[job_id]
                    read.done = True
                    read.wake.set()
                self._querying = False
                for read in self._waiting.values():
                    read.wake.set()
                self._prune(started_at)

    def _prune(self, now: float) -> None:
        """Forget reads older than ``KEEP_S`` (at most once per ``KEEP_S``; lock held)."""
        if now - self._pruned_at < KEEP_S:
            return
        self._pruned_at = now
        stale = [
            job_id
            for job_id, read in self._reads.items()
            if read.started_at is not None and now - read.started_at > KEEP_S
        ]
        for job_id in stale:
            del self._reads[job_id]
