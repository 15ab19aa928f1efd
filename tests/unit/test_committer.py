"""The committer: commits made on a thread of their own, in order, errors raised back.

The writes here are plain functions that record what they were given (the committer's
contract is only the order, the thread and the errors); the real commits are exercised
by every worker test of the suite.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence

import pytest

from shared.lifecycle import Outcome
from shared.models import Job, JobStatus
from worker.committer import Committer


def _outcome() -> Outcome:
    return Outcome(job_id=uuid.uuid4(), status=JobStatus.SUCCEEDED, result="ok")


class Recorder:
    """A write that records each call and its thread, held back until released."""

    def __init__(self, *, fail_on: int | None = None) -> None:
        self.calls: list[Sequence[Outcome]] = []
        self.threads: set[str] = set()
        self.release = threading.Event()
        self.fail_on = fail_on

    def __call__(self, jobs: Sequence[Job], outcomes: Sequence[Outcome]) -> list[Outcome]:
        self.release.wait(10)
        self.threads.add(threading.current_thread().name)
        self.calls.append(outcomes)
        if self.fail_on == len(self.calls):
            raise ConnectionError("the database went away")
        return list(outcomes[:1])  # the first of each written, the rest "gone"


def test_commits_are_made_in_order_on_their_own_thread_while_the_caller_goes_on() -> None:
    write = Recorder()
    first, second = [_outcome(), _outcome()], [_outcome()]
    with Committer(write).running() as committer:
        committer.submit([], first)
        committer.submit([], second)

        assert committer.take() == [], "submit returned before the commits were made"
        write.release.set()
        made = committer.flush()

    assert write.calls == [first, second]
    assert write.threads == {"committer"}
    assert [commit.outcomes for commit in made] == [first, second]
    assert [commit.written for commit in made] == [first[:1], second]
    assert committer.take() == []


def test_a_failed_commit_is_raised_to_the_caller_and_nothing_after_it_is_made() -> None:
    write = Recorder(fail_on=2)
    write.release.set()
    with Committer(write).running() as committer:
        committer.submit([], [_outcome()])
        committer.flush()
        committer.submit([], [_outcome()])
        committer.submit([], [_outcome()])
        with pytest.raises(ConnectionError, match="went away"):
            committer.flush()
        with pytest.raises(ConnectionError):
            committer.take()

    assert len(write.calls) == 2, "the commit after the failed one was not attempted"


def test_what_is_still_handed_over_when_the_block_ends_is_committed() -> None:
    write = Recorder()
    outcomes = [[_outcome()] for _ in range(3)]
    with Committer(write).running() as committer:
        for each in outcomes:
            committer.submit([], each)
        write.release.set()

    assert write.calls == outcomes
