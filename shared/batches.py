"""Batch completion: the moment a batch's last job ends, once.

:func:`complete_batches` stamps ``completed_at`` on batches that have no queued or
running job left and writes their ``batch.completed`` outbox event, in the caller's
transaction. It is called wherever jobs become final; since two transactions ending a
batch's last two jobs at once can each still see the other's job as unfinished, the
sweeper calls it for every open batch too, so no completion is ever missed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from shared.models import Batch, EventStatus, Job, JobStatus, WebhookEvent, utcnow

UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)


def batch_counts(session: Session, batch_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, int]]:
    """Jobs of each batch by status, every status present (0 when none), in one query."""
    rows = session.execute(
        select(Job.batch_id, Job.status, func.count())
        .where(Job.batch_id.in_(batch_ids))
        .group_by(Job.batch_id, Job.status)
    ).all()
    counts = {batch_id: {status.value: 0 for status in JobStatus} for batch_id in batch_ids}
    for batch_id, status, count in rows:
        if batch_id is not None:  # always: the query selects these batches' jobs
            counts[batch_id][status.value] = count
    return counts


def batch_summaries(session: Session, batches: list[Batch]) -> list[dict[str, Any]]:
    """Each batch as ``GET /v1/batches/{id}`` returns it (one query for all counts)."""
    counts = batch_counts(session, [batch.id for batch in batches]) if batches else {}
    return [_summary(batch, counts[batch.id]) for batch in batches]


def batch_summary(session: Session, batch: Batch) -> dict[str, Any]:
    """The batch as ``GET /v1/batches/{id}`` returns it."""
    return _summary(batch, batch_counts(session, [batch.id])[batch.id])


def _summary(batch: Batch, counts: dict[str, int]) -> dict[str, Any]:
    finished = sum(counts[s.value] for s in JobStatus if s not in UNFINISHED)
    return {
        "id": str(batch.id),
        "created_at": batch.created_at.isoformat().replace("+00:00", "Z"),
        "completed_at": (
            batch.completed_at.isoformat().replace("+00:00", "Z") if batch.completed_at else None
        ),
        "items_submitted": batch.items_submitted,
        "items_accepted": batch.items_accepted,
        "counts": counts,
        "progress": (
            1.0
            if batch.completed_at or not batch.items_accepted
            else round(finished / batch.items_accepted, 4)
        ),
        "callback_url": batch.callback_url,
        "item_events": batch.item_events,
        "retry_of": str(batch.retry_of) if batch.retry_of else None,
    }


def complete_batches(session: Session, batch_ids: Iterable[uuid.UUID] | None) -> list[str]:
    """Mark finished batches among ``batch_ids`` (every open batch when ``None``) as
    completed, once each; returns the ids of the ``batch.completed`` events written."""
    unfinished = exists().where(Job.batch_id == Batch.id, Job.status.in_(UNFINISHED))
    stmt = update(Batch).where(Batch.completed_at.is_(None), ~unfinished)
    if batch_ids is not None:
        ids = list(set(batch_ids))
        if not ids:
            return []
        stmt = stmt.where(Batch.id.in_(ids))
    done = list(
        session.scalars(
            stmt.values(completed_at=utcnow()).returning(Batch),
            execution_options={"synchronize_session": False},
        )
    )
    events = []
    for batch in done:
        if batch.callback_url is None:
            continue
        event = WebhookEvent(
            id=f"msg_{uuid.uuid4().hex}",
            batch_id=batch.id,
            tenant_id=batch.tenant_id,
            type="batch.completed",
            url=batch.callback_url,
            payload=json.dumps(
                {
                    "type": "batch.completed",
                    "timestamp": utcnow().isoformat().replace("+00:00", "Z"),
                    "data": batch_summary(session, batch),
                },
                separators=(",", ":"),
            ),
            status=EventStatus.PENDING,
            attempts=0,
            created_at=utcnow(),
            next_attempt_at=utcnow(),
        )
        session.add(event)
        events.append(event.id)
    session.flush()
    return events
