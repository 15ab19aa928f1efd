"""``POST /v1/batches/{id}/retry``: the failed items of a batch, run again as a new batch.

The new batch (``retry_of`` = the original) holds one job per failed item of the
original (optionally only those whose ``error.code`` is one of ``error_codes``), with the
item's index, metadata, stored image (the same blob: nothing is uploaded or decoded
again) and request fields (prompt, options, answer format, preset and policy, callback
URL and event types, queue timeout). It is admitted like a new batch: the batch item
rate and the tenant's queue cap count its jobs. The original stays as it was: its jobs
keep their outcome and its completion stands (a job's state only moves forward).
"""

from __future__ import annotations

import uuid

from flask import Request
from sqlalchemy import select

from api.context import Services
from api.job_insert import insert_jobs
from api.limits import enforce_item_rate, enforce_queue_cap
from api.small_body import read_small_body
from api.submission import BLANK_ROW, JobRow
from shared.error_codes import ErrorCode
from shared.errors import Conflict
from shared.models import ApiKey, Batch, Job, JobStatus, Priority, utcnow
from shared.schemas import BatchAccepted, BatchRetried, BatchRetryRequest

# The request fields a retried item takes over from its failed job, as they were stored.
COPIED_COLUMNS = (
    "prompt",
    "image_key",
    "image_sha256",
    "image_width",
    "image_height",
    "options",
    "response_schema",
    "thinking",
    "preset",
    "policy",
    "callback_url",
    "webhook_events",
    "item_index",
    "item_metadata",
    "cache_key",
    "use_cache",
    "request_sha256",
)


def read_retry_request(request: Request) -> list[str] | None:
    """The ``error_codes`` of the request's optional body (None: every failed item)."""
    return read_small_body(request, BatchRetryRequest).error_codes


def retry_failed(
    svc: Services, key: ApiKey, original: Batch, error_codes: list[str] | None
) -> BatchRetried:
    """Create the retry batch of ``original`` for ``key`` (see the module docstring) and
    commit it; the caller wakes the workers. 409 ``nothing_to_retry`` when no item
    qualifies, 429 past the item rate or the queue cap."""
    query = select(Job).where(Job.batch_id == original.id, Job.status == JobStatus.FAILED)
    if error_codes is not None:
        query = query.where(Job.error_code.in_(error_codes))
    with svc.sessions() as session:
        failed = list(session.scalars(query.order_by(Job.item_index)))
    if not failed:
        wanted = f" with error code {', '.join(error_codes)}" if error_codes else ""
        raise Conflict(
            f"batch {original.id} has no failed item{wanted} to retry",
            code=ErrorCode.NOTHING_TO_RETRY,
        )
    enforce_item_rate(svc, svc.counters, key, len(failed))
    enforce_queue_cap(svc, key, adding=len(failed))
    now = utcnow()
    batch = Batch(
        id=uuid.uuid4(),
        tenant_id=key.tenant_id,
        api_key_id=key.id,
        created_at=now,
        items_submitted=len(failed),
        items_accepted=len(failed),
        callback_url=original.callback_url,
        item_events=original.item_events,
        retry_of=original.id,
    )
    rows = [_retry_row(job, key, batch.id) for job in failed]
    with svc.sessions() as session, session.begin():
        session.add(batch)
        session.flush()
        insert_jobs(session, rows)
    return BatchRetried(
        id=batch.id,
        items_submitted=len(rows),
        items_accepted=len(rows),
        items_rejected=0,
        accepted=[BatchAccepted(index=row["item_index"], id=row["id"]) for row in rows],
        rejected=[],
        retry_of=original.id,
    )


def _retry_row(job: Job, key: ApiKey, batch_id: uuid.UUID) -> JobRow:
    """A fresh queued job of ``batch_id`` with ``job``'s request (:data:`COPIED_COLUMNS`)
    and the same time to wait in the queue; no idempotency key (the original keeps it)."""
    now = utcnow()
    return (
        BLANK_ROW
        | {column: getattr(job, column) for column in COPIED_COLUMNS}
        | dict(
            id=uuid.uuid4(),
            tenant_id=key.tenant_id,
            api_key_id=key.id,
            status=JobStatus.QUEUED,
            priority=Priority.BULK,
            created_at=now,
            enqueued_at=now,
            deadline_at=now + (job.deadline_at - job.created_at),
            batch_id=batch_id,
            attempts=0,
        )
    )
