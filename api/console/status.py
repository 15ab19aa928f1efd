"""What the Status page shows: workers online, broker queue depths, recent throughput.

Workers and queues are asked of the broker with short timeouts, so a slow or absent
broker makes the page say so instead of hanging. Throughput and batch sizes come from the
jobs table (service-wide counts; no job content).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import ColumnElement, and_, case, func, select
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus

# A broadcast ping waits this long for replies, whatever the number of workers.
PING_TIMEOUT_S = 0.5
WINDOW_MINUTES = 15
_FINISHED_BY_WORKER = (JobStatus.SUCCEEDED, JobStatus.FAILED)
_NODE = re.compile(r"^(?P<kind>gpu|cpu)(?P<index>\d+)@")


@dataclass(frozen=True)
class Worker:
    """A Celery node that answered the ping: its name and what it runs on."""

    name: str
    device: str


def online_workers(celery: Celery) -> list[Worker] | None:
    """The nodes answering a ping within :data:`PING_TIMEOUT_S`, sorted by name;
    ``None`` when the broker cannot be reached."""
    try:
        # ``None`` only when called with ``reply=False``; the stubs cannot tell.
        replies = celery.control.ping(timeout=PING_TIMEOUT_S) or []
    except Exception:  # any broker failure reads as "unreachable" on the page
        return None
    names = sorted(name for reply in replies for name in reply)
    return [Worker(name=name, device=_device(name)) for name in names]


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


def _device(node: str) -> str:
    found = _NODE.match(node)
    if found is None:
        return "no GPU (webhooks, sweeper)" if node.startswith("ops@") else "unknown"
    if found["kind"] == "gpu":
        return f"GPU {found['index']}"
    return "CPU"
