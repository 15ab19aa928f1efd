"""The job state machine's worker-side transitions, each one a conditional UPDATE.

A worker takes jobs with :func:`claim_jobs`: queued jobs, and running jobs whose lease
expired (their worker died), move to running under a fresh claim token and lease.
:func:`renew_leases` keeps a long batch's claim alive. :func:`finish_jobs` settles jobs
(running → succeeded | failed) only where the claim token is still this batch's, so a
job canceled or retaken meanwhile keeps its state: exactly one result per job.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import JSON, ColumnElement, bindparam, case, or_, select, update
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus, Priority, utcnow
from shared.webhooks import record_events


@dataclass(frozen=True)
class Outcome:
    """How one claimed job ended. ``batch_size`` is the forward pass it ran in (0 when it
    failed before reaching the model), ``inference_ms`` that pass's duration and
    ``queue_ms`` the time from submission to claim."""

    job_id: uuid.UUID
    status: JobStatus
    result: str | None = None
    result_json: Any = None
    reasoning: str | None = None
    action: str | None = None
    output_tokens: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    batch_size: int = 0
    inference_ms: int = 0
    queue_ms: int | None = None
    cached: bool = False
    model_revision: str | None = None


def claimable(max_attempts: int) -> ColumnElement[bool]:
    """Jobs a worker may take: queued, or abandoned (see :func:`abandoned`)."""
    return or_(Job.status == JobStatus.QUEUED, abandoned(max_attempts))


def abandoned(max_attempts: int) -> ColumnElement[bool]:
    """Running under an expired lease (its worker died) with attempts left; a job out of
    attempts is left for the sweeper to fail as ``worker_lost``."""
    return (
        (Job.status == JobStatus.RUNNING)
        & (Job.lease_expires_at < utcnow())
        & (Job.attempts < max_attempts)
    )


def claim_jobs(
    session: Session,
    *,
    worker: str,
    token: uuid.UUID,
    limit: int,
    lease_s: int,
    max_attempts: int,
    prefer: uuid.UUID | None = None,
    with_abandoned: bool = True,
) -> list[Job]:
    """Take up to ``limit`` queued jobs, plus at most one abandoned job, in one statement.

    Queued jobs come in this order: ``prefer`` first (the job whose message woke us),
    then interactive before bulk, then oldest first. An abandoned job (its worker died
    while running it) may be the one that killed that worker, so it is taken alone and
    run alone: a poison job must not burn its neighbours' attempts. On PostgreSQL
    ``FOR UPDATE SKIP LOCKED`` lets workers claim side by side; on SQLite the
    transaction holds the write lock. Every claimed job gets ``attempts + 1``, the claim
    ``token`` (one per batch; it alone may settle the jobs) and a lease of ``lease_s``
    seconds. Returns the rows, queued ones in the order above, the abandoned one last.
    """
    now = utcnow()
    order = [case((Job.priority == Priority.INTERACTIVE, 0), else_=1), Job.created_at]
    if prefer is not None:
        order.insert(0, case((Job.id == prefer, 0), else_=1))
    queued = (
        select(Job.id)
        .where(Job.status == JobStatus.QUEUED)
        .order_by(*order)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    taken = Job.id.in_(queued.scalar_subquery())
    if with_abandoned:
        orphan = (
            select(Job.id)
            .where(abandoned(max_attempts))
            .order_by(Job.created_at)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        taken = or_(taken, Job.id.in_(orphan.scalar_subquery()))
    stmt = (
        update(Job)
        .where(taken)
        .values(
            status=JobStatus.RUNNING,
            worker=worker,
            claim_token=token,
            started_at=now,
            lease_expires_at=now + timedelta(seconds=lease_s),
            attempts=Job.attempts + 1,
        )
        .returning(Job)
    )
    jobs = list(session.scalars(stmt, execution_options={"synchronize_session": False}))
    jobs.sort(
        key=lambda job: (
            job.attempts > 1,
            job.id != prefer,
            job.priority != Priority.INTERACTIVE,
            job.created_at,
        )
    )
    return jobs


def renew_leases(session: Session, *, token: uuid.UUID, lease_s: int) -> int:
    """Extend the lease of every job still running under ``token``; returns how many."""
    stmt = (
        update(Job)
        .where(Job.claim_token == token, Job.status == JobStatus.RUNNING)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
    )
    return session.execute(stmt, execution_options={"synchronize_session": False}).rowcount


def finish_jobs(session: Session, *, token: uuid.UUID, outcomes: Sequence[Outcome]) -> list[str]:
    """Write every outcome in one executemany, and the webhook events of the jobs that
    now are final, in the caller's transaction (the outbox). A job no longer running
    under ``token`` (canceled, or retaken after its lease expired) is skipped: its state
    stays as is. Returns the ids of the events written."""
    if not outcomes:
        return []
    table = Job.__table__
    stmt = (
        update(table)
        .where(
            table.c.id == bindparam("b_id"),
            table.c.status == JobStatus.RUNNING,
            table.c.claim_token == token,
        )
        .values(
            status=bindparam("b_status"),
            result=bindparam("b_result"),
            result_json=bindparam("b_result_json", type_=JSON(none_as_null=True)),
            reasoning=bindparam("b_reasoning"),
            action=bindparam("b_action"),
            output_tokens=bindparam("b_tokens"),
            error_code=bindparam("b_error_code"),
            error_message=bindparam("b_error_message"),
            batch_size=bindparam("b_batch_size"),
            inference_ms=bindparam("b_inference_ms"),
            queue_ms=bindparam("b_queue_ms"),
            cached=bindparam("b_cached"),
            model_revision=bindparam("b_model_revision"),
            finished_at=utcnow(),
            lease_expires_at=None,
        )
    )
    session.execute(
        stmt,
        [
            {
                "b_id": outcome.job_id,
                "b_status": outcome.status,
                "b_result": outcome.result,
                "b_result_json": outcome.result_json,
                "b_reasoning": outcome.reasoning,
                "b_action": outcome.action,
                "b_tokens": outcome.output_tokens,
                "b_error_code": outcome.error_code,
                "b_error_message": outcome.error_message,
                "b_batch_size": outcome.batch_size or None,
                "b_inference_ms": outcome.inference_ms if outcome.batch_size else None,
                "b_queue_ms": outcome.queue_ms,
                "b_cached": outcome.cached,
                "b_model_revision": outcome.model_revision,
            }
            for outcome in outcomes
        ],
    )
    settled = session.scalars(
        select(Job.id).where(
            Job.id.in_([outcome.job_id for outcome in outcomes]),
            Job.claim_token == token,
            Job.status.in_([JobStatus.SUCCEEDED, JobStatus.FAILED]),
        )
    )
    return record_events(session, list(settled))


def cached_results(
    session: Session, keys: Sequence[str], revision: str, ttl_s: int
) -> dict[str, Job]:
    """For each cache key, a job that succeeded with it on model ``revision`` within the
    last ``ttl_s`` seconds (and was not itself opted out of the cache)."""
    if not keys or ttl_s <= 0:
        return {}
    since = utcnow() - timedelta(seconds=ttl_s)
    rows = session.scalars(
        select(Job)
        .where(
            Job.cache_key.in_(set(keys)),
            Job.model_revision == revision,
            Job.status == JobStatus.SUCCEEDED,
            Job.use_cache.is_(True),
            Job.finished_at > since,
        )
        .order_by(Job.finished_at.desc())
    )
    found: dict[str, Job] = {}
    for job in rows:
        if job.cache_key is not None:
            found.setdefault(job.cache_key, job)
    return found
