"""Shared reads of a job (``api/job_reads.py``): one read serves every waiter woken by
the same notice, never a waiter whose notice came after the read began. Real threads,
a loader that counts its calls and can be held mid-read."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from api.job_reads import KEEP_S, JobReads
from shared.models import Job, JobStatus


class Loader:
    """Stands in for the database: each call returns a new ``Job`` with the current
    ``status``, and waits for ``release`` while ``hold`` is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.status = JobStatus.QUEUED
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.error: Exception | None = None

    def __call__(self, job_id: uuid.UUID) -> Job:
        self.calls += 1
        status = self.status
        self.entered.set()
        if self.hold:
            assert self.release.wait(10)
        if self.error is not None:
            raise self.error
        return Job(id=job_id, status=status)


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
    loader.hold = False
    loader.status = JobStatus.SUCCEEDED
    clock.now = 101.0
    late = reads.read(job_id, since=100.5)
    loader.release.set()
    early[0].join(10)
    assert late.status is JobStatus.SUCCEEDED
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
