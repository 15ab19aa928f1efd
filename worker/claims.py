"""The job state machine's worker-side transitions, each one conditional.

A worker takes jobs with :func:`claim_jobs` (queued → running, with a lease) and settles
them with :func:`finish_jobs` (running → succeeded | failed), which writes only where the
claim is still this worker's: a job canceled or retaken meanwhile is left untouched.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import bindparam, case, select, update
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus, Priority, utcnow


@dataclass(frozen=True)
class Outcome:
    """How one claimed job ended. ``batch_size`` is the forward pass it ran in (0 when it
    failed before reaching the model), ``inference_ms`` that pass's duration and
    ``queue_ms`` the time from submission to claim."""

    job_id: uuid.UUID
    status: JobStatus
    result: str | None = None
    output_tokens: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    batch_size: int = 0
    inference_ms: int = 0
    queue_ms: int | None = None


def claim_jobs(
    session: Session,
    *,
    worker: str,
    limit: int,
    lease_s: int,
    prefer: uuid.UUID | None = None,
) -> list[Job]:
    """Move up to ``limit`` queued jobs to running for ``worker``, in one statement.

    Order: ``prefer`` first (the job whose message woke us), then interactive before
    bulk, then oldest first. On PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets workers claim
    side by side without waiting on each other; on SQLite the transaction holds the write
    lock. Returns the claimed rows in that order (empty if nothing is queued).
    """
    now = utcnow()
    order = [case((Job.priority == Priority.INTERACTIVE, 0), else_=1), Job.created_at]
    if prefer is not None:
        order.insert(0, case((Job.id == prefer, 0), else_=1))
    candidates = (
        select(Job.id)
        .where(Job.status == JobStatus.QUEUED)
        .order_by(*order)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    stmt = (
        update(Job)
        .where(Job.id.in_(candidates.scalar_subquery()))
        .values(
            status=JobStatus.RUNNING,
            worker=worker,
            started_at=now,
            lease_expires_at=now + timedelta(seconds=lease_s),
            attempts=Job.attempts + 1,
        )
        .returning(Job)
    )
    claimed = list(session.scalars(stmt, execution_options={"synchronize_session": False}))
    claimed.sort(
        key=lambda job: (job.id != prefer, job.priority != Priority.INTERACTIVE, job.created_at)
    )
    return claimed


def finish_jobs(session: Session, *, worker: str, outcomes: Sequence[Outcome]) -> None:
    """Write every outcome in one executemany; a job no longer running under ``worker``
    (canceled, or retaken after its lease expired) is skipped, so its state stays final."""
    if not outcomes:
        return
    now = utcnow()
    table = Job.__table__
    stmt = (
        update(table)
        .where(
            table.c.id == bindparam("b_id"),
            table.c.status == JobStatus.RUNNING,
            table.c.worker == worker,
        )
        .values(
            status=bindparam("b_status"),
            result=bindparam("b_result"),
            output_tokens=bindparam("b_tokens"),
            error_code=bindparam("b_error_code"),
            error_message=bindparam("b_error_message"),
            batch_size=bindparam("b_batch_size"),
            inference_ms=bindparam("b_inference_ms"),
            queue_ms=bindparam("b_queue_ms"),
            finished_at=now,
            lease_expires_at=None,
        )
    )
    params = []
    for outcome in outcomes:
        params.append(
            {
                "b_id": outcome.job_id,
                "b_status": outcome.status,
                "b_result": outcome.result,
                "b_tokens": outcome.output_tokens,
                "b_error_code": outcome.error_code,
                "b_error_message": outcome.error_message,
                "b_batch_size": outcome.batch_size or None,
                "b_inference_ms": outcome.inference_ms if outcome.batch_size else None,
                "b_queue_ms": outcome.queue_ms,
            }
        )
    session.execute(stmt, params)
