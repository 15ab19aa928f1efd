"""One database read of a job for every waiter of a process that needs it at once.

When a job moves, the job feed wakes every event stream of that job in the process
(twenty readers of one job are twenty waiters), and each must then see the job as
committed *after* the notice. They need not each read it: a read that started after
the notice arrived (:attr:`api.feed_listener.Message.received_at`) shows that state to
all of them. :meth:`JobReads.read` returns such a read, made by whichever waiter asked
first while the others wait for it (one read in flight per job), so a notice costs a
process one query per job, not one per waiter.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.models import Job

# Reads older than this are forgotten (a waiter asks for one made after its notice,
# which is always recent).
KEEP_S = 60.0


@dataclass
class _Read:
    """One read of a job: when it started, and what it found once ``done``."""

    started_at: float
    done: threading.Event = field(default_factory=threading.Event)
    job: Job | None = None
    error: BaseException | None = None


class JobReads:
    """The latest read of each job, shared by this process's waiters (see the module
    docstring); ``load`` reads a job from the database."""

    def __init__(
        self, load: Callable[[uuid.UUID], Job], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._load = load
        self._clock = clock
        self._lock = threading.Lock()
        self._reads: dict[uuid.UUID, _Read] = {}
        self._pruned_at = clock()

    def read(self, job_id: uuid.UUID, since: float) -> Job:
        """The job as a read that started at or after ``since`` (``time.monotonic()``)
        found it; this call makes that read unless one is already made or under way.
        A read that failed raises its error in every waiter that shared it, and is not
        kept: the next waiter makes its own."""
        with self._lock:
            found = self._reads.get(job_id)
            mine = found is None or found.started_at < since
            if mine:
                found = self._reads[job_id] = _Read(self._clock())
                self._prune(found.started_at)
        assert found is not None
        if mine:
            try:
                found.job = self._load(job_id)
            except BaseException as exc:
                found.error = exc
                with self._lock:  # the next waiter tries again
                    if self._reads.get(job_id) is found:
                        del self._reads[job_id]
                raise
            finally:
                found.done.set()
        found.done.wait()
        if found.error is not None:
            raise found.error
        assert found.job is not None
        return found.job

    def _prune(self, now: float) -> None:
        """Forget reads older than ``KEEP_S`` (at most once per ``KEEP_S``; lock held)."""
        if now - self._pruned_at < KEEP_S:
            return
        self._pruned_at = now
        for job_id in [key for key, read in self._reads.items() if now - read.started_at > KEEP_S]:
            del self._reads[job_id]
