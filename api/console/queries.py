"""The console's reads of jobs, all scoped to the signed-in key through :func:`visible_jobs`.

There is no job-listing API yet, so the console queries the database itself. Tenant
isolation is exactly the API's: a key sees its own jobs, and anyone else's id is "not
found" (its existence is not revealed).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from shared.errors import BadRequest, NotFound
from shared.models import ApiKey, Batch, Job, JobStatus

PAGE_SIZE = 25


def visible_jobs(key: ApiKey) -> Select[Job]:
    """``SELECT`` of every job ``key`` may see. Every console query of jobs starts here,
    so a future tenants layer changes this one function."""
    return select(Job).where(Job.api_key_id == key.id)


def find_job(db: Session, key: ApiKey, raw_id: str) -> Job:
    """Job ``raw_id`` if ``key`` may see it; :class:`NotFound` for a malformed id, an
    unknown one, or another key's job (the same answer as ``GET /v1/jobs/{id}``)."""
    try:
        job_id = uuid.UUID(raw_id)
    except ValueError as exc:
        raise NotFound(f"no job {raw_id!r}") from exc
    job = db.scalars(visible_jobs(key).where(Job.id == job_id)).one_or_none()
    if job is None:
        raise NotFound(f"no job {raw_id}")
    return job


@dataclass(frozen=True)
class JobPage:
    """One page of jobs, newest first; ``next_cursor`` continues with older ones (``None``
    on the last page)."""

    jobs: list[Job]
    next_cursor: str | None


def list_jobs(db: Session, key: ApiKey, status: JobStatus | None, cursor: str | None) -> JobPage:
    """Up to :data:`PAGE_SIZE` of ``key``'s jobs (only ``status`` ones if given), newest
    first, after ``cursor`` (from a previous page; :class:`BadRequest` if malformed).

    Keyset pagination on ``(created_at, id)``: a page costs the same however deep it is,
    and jobs submitted meanwhile do not shift later pages.
    """
    query = visible_jobs(key)
    if status is not None:
        query = query.where(Job.status == status)
    if cursor is not None:
        created_at, job_id = _parse_cursor(cursor)
        query = query.where(
            or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id))
        )
    rows = list(
        db.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(PAGE_SIZE + 1))
    )
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    return JobPage(jobs=rows, next_cursor=_cursor(rows[-1]) if more else None)


def count_by_status(db: Session, key: ApiKey) -> dict[JobStatus, int]:
    """How many of ``key``'s jobs are in each status (every status present, zeros too)."""
    scoped = visible_jobs(key).subquery()
    rows = db.execute(select(scoped.c.status, func.count()).group_by(scoped.c.status)).all()
    counts = dict.fromkeys(JobStatus, 0)
    counts.update({JobStatus(status): count for status, count in rows})
    return counts


def _cursor(job: Job) -> str:
    return f"{job.created_at.isoformat()}_{job.id}"


def _parse_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    created, _, raw_id = cursor.partition("_")
    try:
        created_at = datetime.fromisoformat(created)
        job_id = uuid.UUID(raw_id)
    except ValueError as exc:
        raise BadRequest(f"the page cursor {cursor!r} is malformed", code="bad_cursor") from exc
    if created_at.tzinfo is None:
        raise BadRequest(f"the page cursor {cursor!r} is malformed", code="bad_cursor")
    return created_at, job_id


def find_batch(db: Session, key: ApiKey, raw_id: str) -> Batch:
    """Batch ``raw_id`` if ``key`` created it; :class:`NotFound` otherwise (as the API)."""
    try:
        batch_id = uuid.UUID(raw_id)
    except ValueError as exc:
        raise NotFound(f"no batch {raw_id!r}") from exc
    batch = db.get(Batch, batch_id)
    if batch is None or batch.api_key_id != key.id:
        raise NotFound(f"no batch {raw_id}")
    return batch
