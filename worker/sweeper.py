"""The sweeper: what makes "no accepted job is ever lost" true when messages are.

Run periodically by Celery beat (``sightline beat`` → task ``sightline.sweep`` on the
``maintenance`` queue, consumed by ``sightline webhooks``, a worker with no GPU), so it
keeps working when every GPU worker is dead. Each sweep:

1. fails queued jobs past their deadline as ``expired``;
2. fails running jobs whose lease expired after ``max_attempts`` claims as
   ``worker_lost`` (a job that keeps killing its worker must not loop forever);
3. wakes the webhook sender for events that are due and have no wake-up outstanding
   (first attempts whose message was lost, and every retry: the schedule's delays are
   kept here, so their granularity is ``sweep_interval_s``);
4. re-sends wake-ups for claimable jobs (queued, or running under an expired lease) that
   have had none for ``requeue_after_s``, but only for a queue the broker shows empty:
   a non-empty queue still has messages that will claim them (the oldest first), and a
   backlog of thousands is not worth thousands of duplicate messages every sweep. At
   most ``sweep_batch`` per queue per sweep; each wakes a whole batch.

5. empties the content of jobs past their tenant's retention into tombstones
   (:mod:`shared.retention`);
6. deletes released images no job names any more (:mod:`shared.blob_release`).

Every step is a conditional UPDATE, so two sweepers running at once neither double-fail
nor double-send.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from shared import lifecycle
from shared.blob_release import release_blobs
from shared.blobs import BlobStore
from shared.broker import queue_depths
from shared.db import transaction
from shared.enqueue import enqueue_event, enqueue_job
from shared.job_feed import JobFeed
from shared.models import EventStatus, Job, Priority, WebhookEvent, utcnow
from shared.retention import apply_retention
from shared.settings import Settings
from shared.tasks import queue_for
from worker.webhook_sender import LOCK_MARGIN_S

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepReport:
    """What one sweep did: jobs it expired, failed as lost, and woke up again, jobs it
    emptied to tombstones and images it deleted."""

    expired: int
    lost: int
    webhooks: int
    resent: int
    emptied: int = 0
    blobs_deleted: int = 0


def sweep(
    settings: Settings,
    sessions: sessionmaker[Session],
    celery: Celery,
    feed: JobFeed,
    blobs: BlobStore,
) -> SweepReport:
    """One pass; see the module docstring. Broker errors end the pass early (the next one
    retries); database and blob store errors propagate."""
    now = utcnow()
    with lifecycle.unit_of_work(sessions, celery, feed) as changes:
        expired = lifecycle.expire_overdue(changes, now)
        lost = lifecycle.fail_lost(changes, now, settings.max_attempts)
        # Catches batches whose last two jobs ended in concurrent transactions.
        changes.complete_batches(every_open=True)
    due = _take_due_events(settings, sessions)
    for event_id in due:
        enqueue_event(celery, event_id)
    resent = 0
    for priority in Priority:
        queue = queue_for(priority)
        depth = queue_depths(celery, [queue])
        if depth is None or depth[queue] > 0:  # broker down, or messages still waiting
            continue
        for job_id in _take_stale(settings, sessions, priority):
            enqueue_job(celery, job_id, priority)
            resent += 1
    emptied = apply_retention(settings, sessions, now)
    blobs_deleted = release_blobs(settings, sessions, blobs, now)
    report = SweepReport(
        expired=expired,
        lost=lost,
        webhooks=len(due),
        resent=resent,
        emptied=emptied,
        blobs_deleted=blobs_deleted,
    )
    if any(dataclasses.astuple(report)):
        log.info("sweep: %s", report)
    return report


def _take_due_events(settings: Settings, sessions: sessionmaker[Session]) -> list[str]:
    """Stamp due pending events with no wake-up outstanding (or one lost: older than an
    attempt could take) as just enqueued; return their ids, disjoint across sweepers."""
    now = utcnow()
    lost_after = now - timedelta(seconds=settings.webhook_timeout_s + LOCK_MARGIN_S)
    free = or_(WebhookEvent.locked_until.is_(None), WebhookEvent.locked_until < now)
    return _stamp_enqueued(
        sessions,
        WebhookEvent,
        due=[WebhookEvent.status == EventStatus.PENDING, WebhookEvent.next_attempt_at <= now, free],
        waiting=or_(WebhookEvent.enqueued_at.is_(None), WebhookEvent.enqueued_at < lost_after),
        oldest_first=WebhookEvent.next_attempt_at,
        limit=settings.sweep_batch,
        now=now,
    )


def _take_stale(
    settings: Settings, sessions: sessionmaker[Session], priority: Priority
) -> list[uuid.UUID]:
    """Stamp up to ``sweep_batch`` stale claimable jobs as just enqueued; return their
    ids, disjoint across sweepers."""
    now = utcnow()
    cutoff = now - timedelta(seconds=settings.requeue_after_s)
    return _stamp_enqueued(
        sessions,
        Job,
        due=[lifecycle.claimable(settings.max_attempts), Job.priority == priority],
        waiting=or_(Job.enqueued_at.is_(None), Job.enqueued_at < cutoff),
        oldest_first=Job.created_at,
        limit=settings.sweep_batch,
        now=now,
    )


def _stamp_enqueued(
    sessions: sessionmaker[Session],
    model: type[Job] | type[WebhookEvent],
    *,
    due: list[ColumnElement[bool]],
    waiting: ColumnElement[bool],
    oldest_first: InstrumentedAttribute[Any],
    limit: int,
    now: datetime,
) -> list[Any]:
    """Set ``enqueued_at = now`` on up to ``limit`` rows of ``model`` that are ``due``
    and ``waiting`` for a wake-up, oldest first, and return their ids. Rows another
    sweeper holds are skipped, and the UPDATE re-checks ``waiting``, so two sweepers at
    once stamp disjoint rows."""
    candidates = (
        select(model.id)
        .where(*due, waiting)
        .order_by(oldest_first)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    with transaction(sessions) as session:
        stamped = session.scalars(
            update(model)
            .where(model.id.in_(candidates.scalar_subquery()), waiting)
            .values(enqueued_at=now)
            .returning(model.id),
            execution_options={"synchronize_session": False},
        )
        return list(stamped)
