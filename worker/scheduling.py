"""The worker's scheduling decisions, as pure functions of jobs, a clock and callbacks.

No database, no model, no Celery: the batch loop (``worker/batching.py``) calls these with
its claims and forward passes, and a step-level engine can call the same ones. Each is
unit-tested with a fake clock and fake passes (``tests/unit/test_scheduling.py``).

- :func:`claim_order`: the order claimed jobs run in: anything claimed before (a suspect)
  last, then the job whose message woke the worker, interactive before bulk, oldest first.
  The claim's SQL orders queued jobs the same way; this orders what one claim returned.
- :func:`triage`: which claimed jobs expire without running, which run together, and
  which run alone (suspects: claimed before, so possibly what killed their last worker).
- :func:`collect`: how long an idle worker keeps claiming to fill a batch.
- :func:`room`: how many bulk and interactive jobs a running batch may take in now.
- :func:`bulk_joins`: how many bulk jobs join a running batch now.
- :func:`run_isolated`: how a failing pass is split until the culprit is alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from shared.models import Priority


class Claimed(Protocol):
    """What scheduling reads of a claimed job."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def priority(self) -> Priority: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def deadline_at(self) -> datetime: ...
    @property
    def attempts(self) -> int: ...


J = TypeVar("J", bound=Claimed)
T = TypeVar("T")
R = TypeVar("R")


def claim_order(job: Claimed, prefer: uuid.UUID | None) -> tuple[Any, ...]:
    """Sort key of claimed jobs (see the module docstring)."""
    return (
        job.attempts > 1,
        job.id != prefer,
        job.priority != Priority.INTERACTIVE,
        job.created_at,
    )


@dataclass(frozen=True)
class Triage:
    """Claimed jobs by what happens to them: ``expired`` fail without running, ``fresh``
    run together, ``suspects`` (claimed before) run one at a time."""

    expired: list[Any]
    fresh: list[Any]
    suspects: list[Any]


def triage(jobs: Sequence[J], now: datetime) -> Triage:
    """Split ``jobs`` (see :class:`Triage`); a job past its deadline expires whatever its
    attempts."""
    live = [job for job in jobs if job.deadline_at > now]
    return Triage(
        expired=[job for job in jobs if job.deadline_at <= now],
        fresh=[job for job in live if job.attempts == 1],
        suspects=[job for job in live if job.attempts > 1],
    )


def collect(
    first: list[J],
    claim_more: Callable[[int], list[J]],
    *,
    limit: int,
    wait_s: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> list[J]:
    """Fill a batch that started with ``first``: every quarter of ``wait_s`` ask
    ``claim_more(room)`` for up to ``room`` more fresh jobs, until ``limit`` fresh jobs
    are in, ``wait_s`` has passed since the first claim, or a claim comes back empty
    (nothing arrived meanwhile: waiting longer only adds latency). An empty ``first``
    means nothing to do: no waiting at all."""
    jobs = list(first)
    if not jobs:
        return jobs
    deadline = clock() + wait_s
    poll_s = wait_s / 4
    fresh = sum(1 for job in jobs if job.attempts == 1)
    while fresh < limit and clock() + poll_s <= deadline:
        sleep(poll_s)
        more = claim_more(limit - fresh)
        if not more:
            break
        jobs.extend(more)
        fresh += len(more)
    return jobs


@dataclass(frozen=True)
class Room:
    """How many more jobs a running batch takes in now: ``any`` of either priority
    (interactive first), then ``interactive_only`` more of interactive ones."""

    any: int
    interactive_only: int


def room(rows: int, *, bulk_rows: int, max_rows: int, headroom: int, free: int) -> Room:
    """Room for new jobs beside ``rows`` running ones (``bulk_rows`` of them bulk): up
    to ``max_rows`` rows of any job; past that, interactive jobs alone may take one more
    row per running bulk row, at most ``headroom``, so an interactive job never waits
    for a bulk row to finish while a batch of interactive jobs still holds ``max_rows``.
    ``free`` is what the engine itself still accepts; neither count exceeds it."""
    shared = max(0, min(max_rows - rows, free))
    ceiling = max_rows + min(headroom, bulk_rows)
    return Room(any=shared, interactive_only=max(0, min(ceiling - rows - shared, free - shared)))


# Tokens an interactive row decodes before bulk jobs may join beside it (see bulk_joins).
INTERACTIVE_CLEAR_TOKENS = 16


def bulk_joins(
    free: int,
    *,
    group: int,
    free_ahead: int,
    waiting_ahead: int,
    waited_steps: int,
    interactive_tokens: Sequence[int] = (),
) -> int:
    """How many bulk jobs to claim now into a running batch with ``free`` free rows:
    a group, prefilled together in one pass (which costs less per job than one pass
    each: half as much on CPU, less still on a GPU). That is ``group`` jobs, or the free
    rows if more; those beyond the free rows are added ahead (at most ``free_ahead``) and
    take rows as they free, without a pass of their own. So rows that free one at a time
    are filled at once from the group, not by one prefill each.

    None while jobs added ahead still wait for a row (``waiting_ahead``: they take the
    free rows first), and none while a running interactive row (``interactive_tokens``:
    the tokens each has decoded) is within its first :data:`INTERACTIVE_CLEAR_TOKENS`: a
    prefill pauses every row for its length (on CPU a group costs several steps), and a
    short interactive answer would wait for each one that came during its steps.
    ``waited_steps`` counts the steps held so, and bulk jobs join once they reach that
    same number, interactive rows or not: a steady flow of interactive jobs delays bulk
    joins by at most :data:`INTERACTIVE_CLEAR_TOKENS` steps, it never stops them."""
    if free <= 0 or waiting_ahead:
        return 0
    held = any(tokens < INTERACTIVE_CLEAR_TOKENS for tokens in interactive_tokens)
    if held and waited_steps < INTERACTIVE_CLEAR_TOKENS:
        return 0
    return max(free, min(group, free + free_ahead))


def run_isolated(
    items: list[T],
    run: Callable[[list[T]], list[R]],
    failed: Callable[[T, Exception], R],
    on_split: Callable[[int, Exception], None] = lambda size, exc: None,
    *,
    catch: type[Exception] = Exception,
) -> list[R]:
    """``run(items)``; if it raises ``catch``, split the items in halves and run each the
    same way, so only the culprit fails (``failed(item, exc)``) and its neighbours still
    get results. Results come back in the order of ``items``. ``on_split`` is told each
    split (the failed group's size and why). Any other exception propagates: it is not
    the items' failure (a database outage while results are written)."""
    try:
        return run(items)
    except catch as exc:
        return split_failed(items, exc, run, failed, on_split, catch=catch)


def split_failed(
    items: list[T],
    exc: Exception,
    run: Callable[[list[T]], list[R]],
    failed: Callable[[T, Exception], R],
    on_split: Callable[[int, Exception], None] = lambda size, exc: None,
    *,
    catch: type[Exception] = Exception,
) -> list[R]:
    """What :func:`run_isolated` does once ``items`` failed together with ``exc``: a lone
    item fails; more are split in halves, each run isolated."""
    if len(items) == 1:
        return [failed(items[0], exc)]
    on_split(len(items), exc)
    middle = len(items) // 2
    return run_isolated(items[:middle], run, failed, on_split, catch=catch) + run_isolated(
        items[middle:], run, failed, on_split, catch=catch
    )
