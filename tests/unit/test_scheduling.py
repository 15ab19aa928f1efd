"""The worker's scheduling decisions (``worker/scheduling.py``) on a fake clock, with fake
claims and fake forward passes: no database, no model."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from shared.models import Priority
from worker.scheduling import (
    INTERACTIVE_CLEAR_TOKENS,
    Room,
    bulk_joins,
    claim_order,
    collect,
    room,
    run_isolated,
    split_failed,
    triage,
)

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@dataclass
class FakeJob:
    name: str
    priority: Priority = Priority.BULK
    age_s: int = 0
    attempts: int = 1
    due_in_s: int = 3600
    id: uuid.UUID = field(default_factory=uuid.uuid4)

    @property
    def created_at(self) -> datetime:
        return NOW - timedelta(seconds=self.age_s)

    @property
    def deadline_at(self) -> datetime:
        return NOW + timedelta(seconds=self.due_in_s)


class FakeClock:
    """Time that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_claim_order_woken_first_then_interactive_then_oldest_and_suspects_last() -> None:
    old_bulk = FakeJob("old bulk", age_s=50)
    new_bulk = FakeJob("new bulk", age_s=1)
    interactive = FakeJob("interactive", Priority.INTERACTIVE, age_s=5)
    woken = FakeJob("woken", age_s=0)
    suspect = FakeJob("suspect", Priority.INTERACTIVE, age_s=99, attempts=2)
    jobs = [new_bulk, suspect, old_bulk, woken, interactive]
    ordered = sorted(jobs, key=lambda job: claim_order(job, woken.id))
    assert [job.name for job in ordered] == [
        "woken",
        "interactive",
        "old bulk",
        "new bulk",
        "suspect",
    ]
    no_preference = sorted(jobs, key=lambda job: claim_order(job, None))
    assert [job.name for job in no_preference][:2] == ["interactive", "old bulk"]


def test_triage_expires_the_overdue_and_sets_suspects_apart() -> None:
    fresh, suspect = FakeJob("fresh"), FakeJob("suspect", attempts=3)
    overdue, overdue_suspect = FakeJob("overdue", due_in_s=0), FakeJob("o", attempts=2, due_in_s=-1)
    split = triage([fresh, suspect, overdue, overdue_suspect], NOW)
    assert split.expired == [overdue, overdue_suspect]
    assert split.fresh == [fresh]
    assert split.suspects == [suspect]


def test_collect_polls_every_quarter_of_the_wait_until_the_batch_is_full() -> None:
    clock = FakeClock()
    arrivals = [[FakeJob("b")], [FakeJob("c"), FakeJob("d")], [FakeJob("e")]]
    asked: list[int] = []

    def claim_more(room: int) -> list[FakeJob]:
        asked.append(room)
        return arrivals.pop(0)[:room]

    jobs = collect([FakeJob("a")], claim_more, limit=4, wait_s=0.02, clock=clock, sleep=clock.sleep)
    assert [job.name for job in jobs] == ["a", "b", "c", "d"]
    assert asked == [3, 2]
    assert clock.sleeps == [0.005, 0.005]


def test_collect_stops_at_the_first_empty_claim_and_at_the_deadline() -> None:
    clock = FakeClock()
    jobs = collect(
        [FakeJob("a")], lambda room: [], limit=8, wait_s=0.02, clock=clock, sleep=clock.sleep
    )
    assert len(jobs) == 1 and clock.sleeps == [0.005]

    clock = FakeClock()
    endless = collect(
        [FakeJob("a")],
        lambda room: [FakeJob("more")],
        limit=100,
        wait_s=0.02,
        clock=clock,
        sleep=clock.sleep,
    )
    assert len(endless) == 5 and clock.now == pytest.approx(0.02)


def test_collect_counts_only_fresh_jobs_and_never_waits_for_nothing() -> None:
    clock = FakeClock()
    assert (
        collect([], lambda room: [FakeJob("x")], limit=2, wait_s=1, clock=clock, sleep=clock.sleep)
        == []
    )
    assert clock.sleeps == []
    suspect = FakeJob("suspect", attempts=2)
    jobs = collect(
        [suspect, FakeJob("a")],
        lambda room: [FakeJob("b")] * room,
        limit=2,
        wait_s=0.02,
        clock=clock,
        sleep=clock.sleep,
    )
    assert [job.name for job in jobs] == ["suspect", "a", "b"]


def test_run_isolated_splits_until_only_the_culprit_fails() -> None:
    passes: list[list[str]] = []
    splits: list[int] = []

    def run(items: list[str]) -> list[str]:
        passes.append(items)
        if "poison" in items:
            raise MemoryError("out of memory")
        return [f"ok {item}" for item in items]

    results = run_isolated(
        ["a", "b", "poison", "c", "d"],
        run,
        lambda item, exc: f"failed {item}: {type(exc).__name__}",
        lambda size, exc: splits.append(size),
    )
    assert results == ["ok a", "ok b", "failed poison: MemoryError", "ok c", "ok d"]
    assert passes == [
        ["a", "b", "poison", "c", "d"],
        ["a", "b"],
        ["poison", "c", "d"],
        ["poison"],
        ["c", "d"],
    ]
    assert splits == [5, 3]


def test_run_isolated_a_healthy_pass_runs_once() -> None:
    calls: list[int] = []

    def run(xs: list[int]) -> list[int]:
        calls.append(len(xs))
        return xs

    assert run_isolated([1, 2, 3], run, lambda x, e: -x) == [1, 2, 3]
    assert calls == [3]


@pytest.mark.parametrize(
    ("rows", "bulk_rows", "free", "expected"),
    [
        (0, 0, 10, Room(any=8, interactive_only=0)),  # idle: a full batch of anything
        (5, 5, 5, Room(any=3, interactive_only=2)),
        (8, 8, 2, Room(any=0, interactive_only=2)),  # full of bulk: interactive still joins
        (9, 8, 1, Room(any=0, interactive_only=1)),
        (10, 8, 0, Room(any=0, interactive_only=0)),  # the engine's own limit holds
        (8, 1, 2, Room(any=0, interactive_only=1)),  # one row per running bulk row
        (8, 0, 2, Room(any=0, interactive_only=0)),  # interactive alone keeps the cap
        (3, 3, 2, Room(any=2, interactive_only=0)),  # the engine is short of rows (tokens)
    ],
)
def test_room_lets_interactive_jobs_past_the_row_cap_only_beside_bulk_rows(
    rows: int, bulk_rows: int, free: int, expected: Room
) -> None:
    assert room(rows, bulk_rows=bulk_rows, max_rows=8, headroom=2, free=free) == expected


def test_room_without_headroom_is_the_row_cap() -> None:
    assert room(8, bulk_rows=8, max_rows=8, headroom=0, free=0) == Room(0, 0)
    assert room(6, bulk_rows=6, max_rows=8, headroom=0, free=2) == Room(any=2, interactive_only=0)


def _joins(free: int, **kwargs: object) -> int:
    defaults: dict[str, object] = {
        "group": 4,
        "free_ahead": 4,
        "waiting_ahead": 0,
        "waited_steps": 0,
    }
    return bulk_joins(free, **{**defaults, **kwargs})  # type: ignore[arg-type]


def test_bulk_jobs_join_a_group_at_a_time_the_rest_ahead_of_their_rows() -> None:
    assert _joins(1) == 4, "one free row: a group of four, three to wait prefilled"
    assert _joins(3) == 4
    assert _joins(6) == 6, "more free rows than a group: every one of them"
    assert _joins(1, free_ahead=2) == 3, "no more ahead than the engine takes"
    assert _joins(1, group=1) == 1
    assert _joins(0) == 0, "no free row: nothing"


def test_no_bulk_joins_while_jobs_added_ahead_still_wait_for_rows() -> None:
    assert _joins(2, waiting_ahead=1, free_ahead=3) == 0


def test_bulk_jobs_do_not_join_while_an_interactive_row_decodes_its_first_tokens() -> None:
    young = INTERACTIVE_CLEAR_TOKENS - 1
    assert _joins(8, interactive_tokens=[40, young]) == 0
    assert _joins(8, interactive_tokens=[INTERACTIVE_CLEAR_TOKENS, 40]) == 8
    # A steady flow of interactive jobs delays bulk joins; it never stops them.
    assert _joins(1, waited_steps=INTERACTIVE_CLEAR_TOKENS, interactive_tokens=[0, 3]) == 4


def test_run_isolated_lets_an_exception_it_does_not_catch_through() -> None:
    calls: list[list[str]] = []

    def run(group: list[str]) -> list[str]:
        calls.append(group)
        if len(group) == 2:
            raise ConnectionError("the database went away")
        raise RuntimeError("boom")

    with pytest.raises(ConnectionError):
        run_isolated(["a", "b", "c", "d"], run, lambda item, exc: item, catch=RuntimeError)
    assert calls == [["a", "b", "c", "d"], ["a", "b"]], "nothing split after it"


def test_split_failed_starts_from_a_known_failure_without_running_it_again() -> None:
    calls: list[list[str]] = []

    def run(group: list[str]) -> list[str]:
        calls.append(group)
        if "bad" in group:
            raise RuntimeError("boom")
        return [f"ok {item}" for item in group]

    results = split_failed(
        ["a", "bad", "c"], RuntimeError("first"), run, lambda item, exc: f"failed {item}"
    )

    assert results == ["ok a", "failed bad", "ok c"]
    assert ["a", "bad", "c"] not in calls, "the group that failed is not run again"
