"""Purge: erase a job, a batch or a whole tenant's jobs now, and record who did it.

A purge deletes the job rows (prompt, options, result, reasoning, item metadata, every
other column), their webhook events and delivery attempts, a purged batch's row and
events, and the jobs' replay text in Redis; their images are released
(:mod:`shared.blob_release`) and deleted once no other job, of any tenant, names them.
No webhook is sent for a purge.

Afterwards a purged job or batch answers 404 on every route, exactly like an id that
never existed: no tombstone is kept, since a tombstone would itself say that the job
existed and when; the only trace is the operator's audit row (``purges``: who, what,
when, how many jobs, never content). Its idempotency key is free again: the same key
submits a new job.

A job not final yet is first canceled (:func:`shared.lifecycle.cancel_jobs`), in the
transaction that deletes it. Its worker cannot bring anything back: a result is written
only to a row still running under the worker's claim token (:func:`lifecycle.finish`),
and the row is gone, so the worker's late write updates nothing and records no event;
the worker aborts the row at its next step.

A job is purged in one transaction; a batch or a tenant in chunks of
``retention_chunk`` jobs, one transaction each, so millions of jobs never hold one giant
transaction. The audit row is written with the last chunk: an interrupted purge leaves
the rest in place, and running it again finishes it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from celery import Celery
from sqlalchemy import ColumnElement, delete, exists, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared import lifecycle
from shared.blob_release import release_keys
from shared.job_feed import JobFeed
from shared.models import (
    Batch,
    Job,
    Purge,
    PurgeScope,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    utcnow,
)

_NO_SYNC = {"synchronize_session": False}


@dataclass(frozen=True)
class Purger:
    """Who purges: an API key (``api_key_id``) or an operator at the CLI (``operator``)."""

    api_key_id: uuid.UUID | None = None
    operator: str | None = None


@dataclass(frozen=True)
class Eraser:
    """What a purge works with: the database, the webhook sender's wake-up (as for
    :func:`lifecycle.unit_of_work`), the job feed and the chunk size."""

    sessions: sessionmaker[Session]
    wake: Celery | Callable[[list[str]], None]
    feed: JobFeed
    chunk: int


def purge_job(eraser: Eraser, tenant_id: uuid.UUID, job_id: uuid.UUID, who: Purger) -> bool:
    """Erase ``tenant_id``'s job ``job_id``; False if it has no such job (any more)."""
    batches: list[uuid.UUID] = []
    with lifecycle.unit_of_work(eraser.sessions, eraser.wake, eraser.feed) as changes:
        found = changes.session.scalar(
            select(Job.id).where(Job.id == job_id, Job.tenant_id == tenant_id).with_for_update()
        )
        if found is not None:
            batches = erase_jobs(changes, [job_id])
            _record(changes.session, tenant_id, PurgeScope.JOB, job_id, who, 1)
    _erased(eraser.feed, [job_id], batches)
    return found is not None


def purge_batch(
    eraser: Eraser, tenant_id: uuid.UUID, batch_id: uuid.UUID, who: Purger
) -> int | None:
    """Erase ``tenant_id``'s batch ``batch_id`` with all its jobs; returns how many
    jobs went, or None if it has no such batch (any more)."""
    return _purge(
        eraser,
        tenant_id,
        PurgeScope.BATCH,
        batch_id,
        who,
        jobs=Job.batch_id == batch_id,
        batches=(Batch.id == batch_id) & (Batch.tenant_id == tenant_id),
    )


def purge_tenant(eraser: Eraser, tenant_id: uuid.UUID, who: Purger) -> int:
    """Erase every job and batch of ``tenant_id`` (the tenant, its keys and secrets
    stay: revoke the keys first so nothing new arrives meanwhile); returns how many jobs
    went. Batches still holding a job submitted during the purge are left."""
    erased = _purge(
        eraser,
        tenant_id,
        PurgeScope.TENANT,
        tenant_id,
        who,
        jobs=Job.tenant_id == tenant_id,
        batches=Batch.tenant_id == tenant_id,
    )
    return erased or 0


def _purge(
    eraser: Eraser,
    tenant_id: uuid.UUID,
    scope: PurgeScope,
    target_id: uuid.UUID,
    who: Purger,
    *,
    jobs: ColumnElement[bool],
    batches: ColumnElement[bool],
) -> int | None:
    """Erase the tenant's jobs matching ``jobs`` chunk by chunk, then, in the last
    chunk's transaction, the batches matching ``batches`` (those holding no job) and the
    audit row. Returns how many jobs went; None for a batch purge that found neither a
    job nor the batch. Rows a worker holds are waited for, not skipped: a purge must not
    end while one of its jobs is still there."""
    erased = 0
    while True:
        with lifecycle.unit_of_work(eraser.sessions, eraser.wake, eraser.feed) as changes:
            session = changes.session
            job_ids = list(
                session.scalars(
                    select(Job.id)
                    .where(jobs, Job.tenant_id == tenant_id)
                    .limit(eraser.chunk)
                    .with_for_update()
                )
            )
            touched = erase_jobs(changes, job_ids)
            erased += len(job_ids)
            last = len(job_ids) < eraser.chunk
            found = True
            if last:
                batches_gone = _erase_batches(session, batches)
                touched = list({*touched, *batches_gone})
                found = scope is not PurgeScope.BATCH or erased > 0 or bool(batches_gone)
                if scope is PurgeScope.TENANT:
                    _erase_endpoints(session, tenant_id)
                if found:
                    _record(session, tenant_id, scope, target_id, who, erased)
        _erased(eraser.feed, job_ids, touched)
        if last:
            return erased if found else None


def _erased(feed: JobFeed, job_ids: Sequence[uuid.UUID], batch_ids: Sequence[uuid.UUID]) -> None:
    """After a purge's commit: drop the jobs' replay text, and tell the watchers of the
    batches it changed or erased (their jobs' own notices go out with the cancels; a
    batch's would not, its jobs being gone by the end of the transaction), so that an
    open batch stream or long-poll learns of it now."""
    feed.forget(job_ids)
    feed.changed([], batch_ids)


def erase_jobs(changes: lifecycle.JobChanges, job_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Delete ``job_ids`` in ``changes``' transaction, canceling first those not final,
    with their events and delivery attempts; release their images. Returns the batches
    that held them."""
    if not job_ids:
        return []
    session = changes.session
    ids = list(job_ids)
    batches = session.scalars(
        select(Job.batch_id).where(Job.id.in_(ids), Job.batch_id.is_not(None)).distinct()
    ).all()
    lifecycle.cancel_jobs(changes, ids)
    keys = session.scalars(select(Job.image_key).where(Job.id.in_(ids)).distinct()).all()
    events = _locked_events(session, WebhookEvent.job_id.in_(ids))
    session.execute(
        delete(WebhookDelivery).where(
            or_(WebhookDelivery.job_id.in_(ids), WebhookDelivery.event_id.in_(events))
        ),
        execution_options=_NO_SYNC,
    )
    session.execute(
        delete(WebhookEvent).where(WebhookEvent.id.in_(events)), execution_options=_NO_SYNC
    )
    session.execute(delete(Job).where(Job.id.in_(ids)), execution_options=_NO_SYNC)
    release_keys(session, keys, utcnow())
    # The cancels' events went with their jobs: nothing to wake the sender for.
    erased = set(events)
    changes.events = [event for event in changes.events if event not in erased]
    return [batch_id for batch_id in batches if batch_id is not None]


def _locked_events(session: Session, which: ColumnElement[bool]) -> list[str]:
    """The ids of the events matching ``which``, locked: an attempt in flight records
    its delivery row first (``worker.webhook_sender``), and that row goes with them."""
    return list(session.scalars(select(WebhookEvent.id).where(which).with_for_update()))


def _erase_batches(session: Session, batches: ColumnElement[bool]) -> list[uuid.UUID]:
    """Delete the batches matching ``batches`` that hold no job, with their events and
    delivery attempts; returns their ids."""
    empty = select(Batch.id).where(
        batches,
        ~exists().where(Job.batch_id == Batch.id),
    )
    ids = list(session.scalars(empty))
    if not ids:
        return []
    events = _locked_events(session, WebhookEvent.batch_id.in_(ids))
    session.execute(
        delete(WebhookDelivery).where(WebhookDelivery.event_id.in_(events)),
        execution_options=_NO_SYNC,
    )
    session.execute(
        delete(WebhookEvent).where(WebhookEvent.id.in_(events)), execution_options=_NO_SYNC
    )
    # A retry of a purged batch stays, no longer naming it.
    session.execute(
        update(Batch).where(Batch.retry_of.in_(ids)).values(retry_of=None),
        execution_options=_NO_SYNC,
    )
    session.execute(delete(Batch).where(Batch.id.in_(ids)), execution_options=_NO_SYNC)
    return ids


def _erase_endpoints(session: Session, tenant_id: uuid.UUID) -> None:
    """Delete the tenant's webhook endpoints (hosts it sent webhooks to) that no remaining
    event names."""
    session.execute(
        delete(WebhookEndpoint).where(
            WebhookEndpoint.tenant_id == tenant_id,
            ~exists().where(WebhookEvent.endpoint_id == WebhookEndpoint.id),
        ),
        execution_options=_NO_SYNC,
    )


def _record(
    session: Session,
    tenant_id: uuid.UUID,
    scope: PurgeScope,
    target_id: uuid.UUID,
    who: Purger,
    jobs: int,
) -> None:
    session.add(
        Purge(
            purged_at=utcnow(),
            tenant_id=tenant_id,
            scope=scope,
            target_id=target_id,
            api_key_id=who.api_key_id,
            operator=who.operator,
            jobs=jobs,
        )
    )
