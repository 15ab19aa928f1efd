"""The console's reads of jobs, all scoped to the signed-in key's tenant through
:func:`visible_jobs`.

Tenant isolation is exactly the API's: a key sees its tenant's jobs, and anyone else's
id is "not found" (its existence is not revealed).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from api.listing import JobFilter, encode_cursor
from shared.errors import NotFound
from shared.models import ApiKey, Batch, Job, JobStatus, WebhookEndpoint

PAGE_SIZE = 25


def visible_jobs(key: ApiKey) -> Select[Job]:
    """``SELECT`` of every job ``key`` may see: its tenant's. Every console query of jobs
    starts here."""
    return select(Job).where(Job.tenant_id == key.tenant_id)


def find_job(db: Session, key: ApiKey, raw_id: str) -> Job:
    """Job ``raw_id`` if ``key`` may see it; :class:`NotFound` for a malformed id, an
    unknown one, or another tenant's job (the same answer as ``GET /v1/jobs/{id}``)."""
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


def list_jobs(db: Session, key: ApiKey, args: dict[str, str]) -> JobPage:
    """One page of ``key``'s jobs for the query ``args`` — the API's own filters
    (``status``, ``action``, ``batch_id``, ``created_after``, ``cursor``) and keyset
    pagination (:class:`api.listing.JobFilter`), :data:`PAGE_SIZE` per page; 422 for a
    bad filter, as the API."""
    wanted = JobFilter.parse({"limit": str(PAGE_SIZE), **args})
    rows = list(db.scalars(wanted.query(key.tenant_id)))
    more = len(rows) > wanted.limit
    rows = rows[: wanted.limit]
    return JobPage(jobs=rows, next_cursor=encode_cursor(rows[-1]) if more else None)


def count_by_status(db: Session, key: ApiKey) -> dict[JobStatus, int]:
    """How many of ``key``'s jobs are in each status (every status present, zeros too)."""
    scoped = visible_jobs(key).subquery()
    rows = db.execute(select(scoped.c.status, func.count()).group_by(scoped.c.status)).all()
    counts = dict.fromkeys(JobStatus, 0)
    counts.update({JobStatus(status): count for status, count in rows})
    return counts


def find_batch(db: Session, key: ApiKey, raw_id: str) -> Batch:
    """Batch ``raw_id`` if ``key`` created it; :class:`NotFound` otherwise (as the API)."""
    try:
        batch_id = uuid.UUID(raw_id)
    except ValueError as exc:
        raise NotFound(f"no batch {raw_id!r}") from exc
    batch = db.get(Batch, batch_id)
    if batch is None or batch.tenant_id != key.tenant_id:
        raise NotFound(f"no batch {raw_id}")
    return batch


def find_endpoint(db: Session, key: ApiKey, raw_id: str) -> WebhookEndpoint:
    """Webhook endpoint ``raw_id`` of ``key``'s tenant, locked for update in ``db``'s
    transaction; :class:`NotFound` otherwise (as the API)."""
    try:
        endpoint_id = uuid.UUID(raw_id)
    except ValueError as exc:
        raise NotFound(f"no webhook endpoint {raw_id!r}") from exc
    endpoint = db.get(WebhookEndpoint, endpoint_id, with_for_update=True)
    if endpoint is None or endpoint.tenant_id != key.tenant_id:
        raise NotFound(f"no webhook endpoint {raw_id}")
    return endpoint
