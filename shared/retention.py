"""Retention: finished jobs lose their content after a tenant's retention period.

A tenant's period is its ``retention_days`` if set (0: forever), else
``SIGHTLINE_RETENTION_DAYS``; with neither, nothing is ever deleted (the default, so an
upgrade deletes nothing). Once a job has been final (succeeded, failed, canceled) for
that long, the sweeper (:func:`apply_retention`) turns its row into a tombstone: the
columns in :data:`EMPTIED` are emptied, the ones in :data:`TOMBSTONE_KEEPS` stay, and
``content_deleted_at`` says when. Its webhook events (payloads hold the result) and their
delivery attempts are deleted, and its image is released (:mod:`shared.blob_release`).
A job with an event still pending (being retried) waits until that event is delivered or
given up, then goes with the next sweep.

The work is done in chunks of ``retention_chunk`` jobs, one short transaction each, at
most :data:`MAX_CHUNKS` per sweep: a tenant with millions of old jobs is emptied over
successive sweeps, never in one giant transaction. Rows another sweeper holds are
skipped, so two sweepers at once empty disjoint jobs.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.blob_release import release_keys
from shared.db import transaction
from shared.models import EventStatus, Job, JobStatus, Tenant, WebhookDelivery, WebhookEvent
from shared.settings import Settings

log = logging.getLogger(__name__)

# Chunks one sweep works through at most, over all tenants.
MAX_CHUNKS = 20

# What a tombstone keeps: who, when, how it ended and on what, never what was asked or
# answered. (Options, schema and policy are the caller's settings, not its data.)
TOMBSTONE_KEEPS = frozenset(
    {
        "id",
        "tenant_id",
        "api_key_id",
        "batch_id",
        "item_index",
        "status",
        "priority",
        "error_code",
        "model_revision",
        "policy_version",
        "created_at",
        "started_at",
        "finished_at",
        "deadline_at",
        "enqueued_at",
        "lease_expires_at",
        "claim_token",
        "content_deleted_at",
        "image_width",
        "image_height",
        "options",
        "response_schema",
        "thinking",
        "preset",
        "policy",
        "callback_url",
        "webhook_events",
        "use_cache",
        "cached",
        "output_tokens",
        "attempts",
        "worker",
        "batch_size",
        "queue_ms",
        "inference_ms",
    }
)
# What it loses, and the value left in its place. The prompt and image columns are NOT
# NULL, so they are emptied to ""; the API shows them as null. The cache key and request
# fingerprint are digests of the content, and the idempotency key is forgotten with it.
EMPTIED: dict[str, Any] = {
    "prompt": "",
    "image_key": "",
    "image_sha256": "",
    "result": None,
    "result_json": None,
    "reasoning": None,
    "action": None,
    "error_message": None,
    "item_metadata": None,
    "cache_key": None,
    "request_sha256": None,
    "idempotency_key": None,
}
_FINAL = [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED]
_NO_SYNC = {"synchronize_session": False}


def retention_days(settings: Settings, tenant_days: int | None) -> int | None:
    """A tenant's period in days: its own (0: forever) or the server's; None: forever."""
    days = settings.retention_days if tenant_days is None else tenant_days
    return days or None


def apply_retention(settings: Settings, sessions: sessionmaker[Session], now: datetime) -> int:
    """Empty the content of jobs final for longer than their tenant's period; returns
    how many (see the module docstring)."""
    with sessions() as session:
        tenants = session.execute(select(Tenant.id, Tenant.retention_days)).all()
    emptied = 0
    chunks = 0
    for tenant_id, tenant_days in tenants:
        days = retention_days(settings, tenant_days)
        if days is None:
            continue
        cutoff = now - timedelta(days=days)
        while chunks < MAX_CHUNKS:
            chunks += 1
            done = _empty_chunk(sessions, tenant_id, cutoff, now, settings.retention_chunk)
            emptied += done
            if done < settings.retention_chunk:
                break
    if emptied:
        log.info("retention: %d jobs emptied to tombstones", emptied)
    return emptied


def _empty_chunk(
    sessions: sessionmaker[Session],
    tenant_id: uuid.UUID,
    cutoff: datetime,
    now: datetime,
    limit: int,
) -> int:
    """One transaction: empty up to ``limit`` of the tenant's jobs final before
    ``cutoff`` with no event pending; returns how many."""
    pending = exists().where(
        WebhookEvent.job_id == Job.id, WebhookEvent.status == EventStatus.PENDING
    )
    with transaction(sessions) as session:
        rows = session.execute(
            select(Job.id, Job.image_key)
            .where(
                Job.tenant_id == tenant_id,
                Job.content_deleted_at.is_(None),
                Job.finished_at < cutoff,
                Job.status.in_(_FINAL),
                ~pending,
            )
            .order_by(Job.finished_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        ids, keys = [], []
        for job_id, key in rows:
            ids.append(job_id)
            keys.append(key)
        if not ids:
            return 0
        # Locked like a purge's (shared.purge): an attempt in flight records first.
        events = list(
            session.scalars(
                select(WebhookEvent.id).where(WebhookEvent.job_id.in_(ids)).with_for_update()
            )
        )
        session.execute(
            delete(WebhookDelivery).where(
                or_(WebhookDelivery.job_id.in_(ids), WebhookDelivery.event_id.in_(events))
            ),
            execution_options=_NO_SYNC,
        )
        session.execute(
            delete(WebhookEvent).where(WebhookEvent.id.in_(events)), execution_options=_NO_SYNC
        )
        session.execute(
            update(Job).where(Job.id.in_(ids)).values(**EMPTIED, content_deleted_at=now),
            execution_options=_NO_SYNC,
        )
        release_keys(session, keys, now)
        return len(ids)
