"""Shared reads of jobs (``api/job_reads.py``): one read serves every waiter woken by
the same notice, never a waiter whose notice came after the read began, and reads asked
for while a query is under way go out together in the next. Real threads, a loader that
records its queries and can be held mid-query."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Collection
from typing import Any

import pytest

from api.job_reads import KEEP_S, JobReads
from shared.models import Job, JobStatus


class Loader:
    """Stands in for the database: each call (one query) returns a new ``Job`` with the
    current ``status`` for every id asked for but those in ``gone``, and waits for
    ``release`` while ``hold`` is set."""

    def __init__(self) -> None:
        self.queries: list[set[uuid.UUID]] = []
        self.status = JobStatus.QUEUED
        self.gone: set[uuid.UUID] = set()
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.error: Exception | None = None

    @property
    def calls(self) -> int:
        return len(self.queries)

    def __call__(self, job_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Job]:
        self.queries.append(set(job_ids))
        status = self.status
        self.entered.set()
        if self.hold:
            assert self.release.wait(10)
        if self.error is not None:
            raise self.error
        return {
            job_id: Job(id=job_id, status=status) for job_id in job_ids if job_id not in self.gone
        }


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _in_threads(count: int, target: Any) -> list[threading.Thread]:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def test_waiters_woken_by_one_notice_share_one_read() -> None:
    loader, clock = Loader(), Clock()
    reads, job_id = JobReads(loader, clock), uuid.uuid4()
    loader.hold = True
    seen: list[Job] = []
    threads = _in_threads(20, lambda: seen.append(reads.read(job_id, since=99.0)))
    assert loader.entered.wait(10)
    loader.release.set()
    for thread in threads:
        thread.join(10)
    assert loader.calls == 1
    assert len(seen) == 20 and all(job is seen[0] for job in seen)
    # A read already made after the notice serves a waiter that comes later.
    assert reads.read(job_id, since=100.0) is seen[0]
    assert loader.calls == 1


def test_a_notice_after_the_read_began_gets_a_new_read() -> None:
    loader, clock = Loader(), Clock()
    reads, job_id = JobReads(loader, clock), uuid.uuid4()
    first = reads.read(job_id, since=100.0)
    loader.status = JobStatus.RUNNING  # committed, then the notice arrives
    clock.now = 100.5
    second = reads.read(job_id, since=100.2)
    assert loader.calls == 2
    assert (first.status, second.status) == (JobStatus.QUEUED, JobStatus.RUNNING)


def test_a_waiter_does_not_take_a_read_that_started_before_its_notice() -> None:
    """The read under way began before the second notice: it may miss that change, so the
    second waiter reads again rather than wait for it."""
    loader, clock = Loader(), Clock()
    reads, job_id = JobReads(loader, clock), uuid.uuid4()
    loader.hold = True
    early = _in_threads(1, lambda: reads.read(job_id, since=99.0))
    assert loader.entered.wait(10)
    loader.status = JobStatus.SUCCEEDED
    clock.now = 101.0
    late: list[Job] = []
    waiter = _in_threads(1, lambda: late.append(reads.read(job_id, since=100.5)))
    loader.hold = False
    loader.release.set()
    for thread in early + waiter:
        thread.join(10)
    assert late[0].status is JobStatus.SUCCEEDED
    assert loader.calls == 2


def test_a_failed_read_fails_every_waiter_that_shared_it_and_is_not_kept() -> None:
    loader, clock = Loader(), Clock()
    reads, job_id = JobReads(loader, clock), uuid.uuid4()
    loader.hold, loader.error = True, LookupError("gone")
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            reads.read(job_id, since=99.0)
        except LookupError as exc:
            errors.append(exc)

    threads = _in_threads(5, wait)
    assert loader.entered.wait(10)
    loader.release.set()
    for thread in threads:
        thread.join(10)
    assert len(errors) == 5 and loader.calls == 1
    loader.hold, loader.error = False, None
    assert reads.read(job_id, since=99.0).status is JobStatus.QUEUED
    assert loader.calls == 2


def test_old_reads_are_forgotten() -> None:
    loader, clock = Loader(), Clock()
    reads = JobReads(loader, clock)
    old = uuid.uuid4()
    reads.read(old, since=100.0)
    clock.now += KEEP_S + 1
    reads.read(uuid.uuid4(), since=clock.now)
    assert old not in reads._reads


@pytest.mark.parametrize("since", [99.0, 100.0])
def test_reads_of_different_jobs_are_apart(since: float) -> None:
    loader, clock = Loader(), Clock()
    reads = JobReads(loader, clock)
    first, second = uuid.uuid4(), uuid.uuid4()
    assert reads.read(first, since).id == first
    assert reads.read(second, since).id == second
    assert loader.calls == 2


def test_reads_asked_for_during_a_query_go_out_together_in_the_next() -> None:
    """Fifty jobs moving at once cost two queries, not fifty: the reads asked for while
    the first is held are made by one of their waiters in one query once it ends."""
    loader, clock = Loader(), Clock()
    reads = JobReads(loader, clock)
    first, others = uuid.uuid4(), [uuid.uuid4() for _ in range(10)]
    loader.hold = True
    seen: dict[uuid.UUID, Job] = {}

    def read(job_id: uuid.UUID) -> None:
        seen[job_id] = reads.read(job_id, since=99.0)

    threads = _in_threads(1, lambda: read(first))
    assert loader.entered.wait(10)
    threads += [threading.Thread(target=read, args=(job_id,)) for job_id in others * 2]
    for thread in threads[1:]:
        thread.start()
    for _ in range(1000):  # all asked for before the first ends
        if len(reads._waiting) == len(others):
            break
        threading.Event().wait(0.01)
    loader.hold = False
    loader.release.set()
    for thread in threads:
        thread.join(10)
    assert loader.queries == [{first}, set(others)]
    assert {job_id: job.id for job_id, job in seen.items()} == {
        job_id: job_id for job_id in [first, *others]
    }


def test_a_job_that_is_gone_raises_lookup_error_and_is_asked_for_again() -> None:
    loader, clock = Loader(), Clock()
    reads, job_id = JobReads(loader, clock), uuid.uuid4()
    loader.gone.add(job_id)
    with pytest.raises(LookupError):
        reads.read(job_id, since=99.0)
    with pytest.raises(LookupError):
        reads.read(job_id, since=99.0)
    assert loader.calls == 2
