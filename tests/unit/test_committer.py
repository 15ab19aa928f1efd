"""The committer: commits made on a thread of their own, in order, errors raised back.

The writes here are plain functions that record what they were given (the committer's
contract is only the order, the thread, the merging and the errors); the real commits
are exercised by every worker test of the suite.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence

import pytest

from shared.lifecycle import Outcome
from shared.models import Job, JobStatus
from worker.committer import Committer


def _outcomes(count: int = 1) -> list[Outcome]:
    return [Outcome(job_id=uuid.uuid4(), status=JobStatus.SUCCEEDED) for _ in range(count)]


class Recorder:
    """A write that records each call and its thread; the first call waits to be
    released (``entered`` is set once it has begun)."""

    def __init__(self, *, fail_on: int | None = None) -> None:
        self.calls: list[Sequence[Outcome]] = []
        self.threads: set[str] = set()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_on = fail_on

    def __call__(self, jobs: Sequence[Job], outcomes: Sequence[Outcome]) -> list[Outcome]:
        self.entered.set()
        assert self.release.wait(10)
        self.threads.add(threading.current_thread().name)
        self.calls.append(list(outcomes))
        if self.fail_on == len(self.calls):
            raise ConnectionError("the database went away")
        return list(outcomes[1:])  # all but the first written: the first was "gone"


def test_commits_are_made_in_order_on_their_own_thread_while_the_caller_goes_on() -> None:
    write = Recorder()
    first, second, third = _outcomes(2), _outcomes(1), _outcomes(3)
    with Committer(write).running() as committer:
        committer.submit([], first)
        assert write.entered.wait(10)
        committer.submit([], second)
        committer.submit([], third)

        assert committer.take() == [], "submit returned before any commit was made"
        write.release.set()
        made = committer.flush()

    # Handed over while the first was being made, the next two went in one commit.
    assert write.calls == [first, second + third]
    assert write.threads == {"committer"}
    assert [commit.outcomes for commit in made] == write.calls
    assert [commit.written for commit in made] == [first[1:], (second + third)[1:]]
    assert committer.take() == []


def test_a_failed_commit_is_raised_to_the_caller_and_nothing_after_it_is_made() -> None:
    write = Recorder(fail_on=2)
    write.release.set()
    with Committer(write).running() as committer:
        committer.submit([], _outcomes())
        committer.flush()
        committer.submit([], _outcomes())
        with pytest.raises(ConnectionError, match="went away"):
            committer.flush()
        committer.submit([], _outcomes())
        with pytest.raises(ConnectionError):
            committer.flush()

    assert len(write.calls) == 2, "nothing was committed after the failed commit"


def test_what_is_still_handed_over_when_the_block_ends_is_committed() -> None:
    write = Recorder()
    first, rest = _outcomes(), [_outcomes() for _ in range(3)]
    with Committer(write).running() as committer:
        committer.submit([], first)
        assert write.entered.wait(10)
        for each in rest:
            committer.submit([], each)
        write.release.set()

    assert write.calls == [first, [o for each in rest for o in each]]
