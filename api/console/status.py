"""What the Status page shows besides the workers (``shared.workers``): recent throughput.

Workers and queues are asked of the broker with short timeouts, so a slow or absent
broker makes the page say so instead of hanging. Throughput and batch sizes come from the
jobs table (service-wide counts; no job content).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, case, func, select
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus

WINDOW_MINUTES = 15
_FINISHED_BY_WORKER = (JobStatus.SUCCEEDED, JobStatus.FAILED)


@dataclass(frozen=True)
class Throughput:
    """Jobs workers finished (succeeded or failed) per minute over the last
    :data:`WINDOW_MINUTES` minutes, oldest first (the last minute is still running), and
    how many of them ran in a batch of each size."""

    per_minute: list[tuple[datetime, int]]
    batch_sizes: list[tuple[int, int]]

    @property
    def total(self) -> int:
        return sum(count for _, count in self.per_minute)

    @property
    def mean_batch_size(self) -> float | None:
        jobs = sum(count for _, count in self.batch_sizes)
        if not jobs:
            return None
        return sum(size * count for size, count in self.batch_sizes) / jobs


def recent_throughput(db: Session, now: datetime) -> Throughput:
    """:class:`Throughput` of the minutes up to ``now`` (aware UTC), in two queries that
    run the same on PostgreSQL and SQLite (no date-truncation functions)."""
    first = now.replace(second=0, microsecond=0) - timedelta(minutes=WINDOW_MINUTES - 1)
    minutes = [first + timedelta(minutes=i) for i in range(WINDOW_MINUTES)]
    recent = and_(Job.finished_at >= first, Job.status.in_(_FINISHED_BY_WORKER))
    buckets = [_count_between(start, start + timedelta(minutes=1)) for start in minutes]
    counts = db.execute(select(*buckets).where(recent)).one()
    sizes = db.execute(
        select(Job.batch_size, func.count())
        .where(recent, Job.batch_size.is_not(None))
        .group_by(Job.batch_size)
        .order_by(Job.batch_size)
    ).all()
    return Throughput(
        per_minute=[(start, int(count)) for start, count in zip(minutes, counts, strict=True)],
        batch_sizes=[(size, int(count)) for size, count in sizes if size is not None],
    )


def _count_between(start: datetime, end: datetime) -> ColumnElement[int]:
    """SUM of 1 for each row finished in ``[start, end)``: one column of the per-minute
    query (0, not NULL, when no row matched)."""
    inside = and_(Job.finished_at >= start, Job.finished_at < end)
    return func.coalesce(func.sum(case((inside, 1), else_=0)), 0)
