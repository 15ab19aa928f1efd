"""``/v1/jobs/{id}/deliveries``: a job's webhook events, their attempts, redelivery."""

from __future__ import annotations

import uuid

from flask import Blueprint
from sqlalchemy import select, update

from api.access import load_job
from api.auth import authenticate
from api.context import Services, services
from shared.enqueue import enqueue_events
from shared.error_codes import ErrorCode
from shared.errors import Conflict
from shared.models import EventStatus, WebhookDelivery, WebhookEvent, utcnow
from shared.schemas import DeliveryOut, EventOut

deliveries = Blueprint("deliveries", __name__, url_prefix="/v1/jobs/<job_id>/deliveries")
deliveries.before_request(authenticate)


@deliveries.get("")
def list_deliveries(job_id: str) -> dict[str, object]:
    """Every webhook event of the job with all its attempts (empty without a callback)."""
    job = load_job(job_id)
    rendered = [event.model_dump(mode="json") for event in job_events(services(), job.id)]
    return {"job_id": str(job.id), "events": rendered}


@deliveries.post("/redeliver")
def redeliver(job_id: str) -> tuple[dict[str, object], int]:
    """Send the job's events again now, with the same ``webhook-id`` (202); 409 when the
    job has no event yet (not finished, or no callback URL)."""
    job = load_job(job_id)
    ids = redeliver_events(services(), job.id)
    if not ids:
        raise Conflict(
            f"job {job.id} has no webhook event to redeliver (not finished, or no callback_url)",
            code=ErrorCode.NO_WEBHOOK_EVENT,
        )
    return {"job_id": str(job.id), "redelivering": ids}, 202


def job_events(svc: Services, job_id: uuid.UUID) -> list[EventOut]:
    """The webhook events of job ``job_id``, oldest first, each with its delivery attempts
    in the order they were made. The caller has already checked that it may see the job.

    One statement reads events and attempts together: two would see two moments, and an
    attempt recorded in between would show up beside its event's earlier status (two
    attempts, still "pending")."""
    with svc.sessions() as session:
        rows = session.execute(
            select(WebhookEvent, WebhookDelivery)
            .outerjoin(WebhookDelivery, WebhookDelivery.event_id == WebhookEvent.id)
            .where(WebhookEvent.job_id == job_id)
            .order_by(WebhookEvent.created_at, WebhookDelivery.attempted_at, WebhookDelivery.id)
        ).all()
    events: dict[str, WebhookEvent] = {}
    attempts: dict[str, list[DeliveryOut]] = {}
    for event, attempt in rows:
        events.setdefault(event.id, event)
        found = attempts.setdefault(event.id, [])
        if attempt is not None:
            found.append(DeliveryOut.model_validate(attempt, from_attributes=True))
    return [
        EventOut(
            id=event.id,
            type=event.type,
            url=event.url,
            status=event.status.value,
            attempts=event.attempts,
            created_at=event.created_at,
            next_attempt_at=event.next_attempt_at,
            delivered_at=event.delivered_at,
            deliveries=attempts[event.id],
        )
        for event in events.values()
    ]


def redeliver_events(svc: Services, job_id: uuid.UUID) -> list[str]:
    """Make every webhook event of job ``job_id`` due again now (same ``webhook-id``) and
    wake the sender; returns their ids, empty when the job has no event (then nothing
    changes). The caller has already checked that it may see the job."""
    with svc.sessions() as session, session.begin():
        ids = list(
            session.scalars(
                update(WebhookEvent)
                .where(WebhookEvent.job_id == job_id)
                .values(
                    status=EventStatus.PENDING,
                    next_attempt_at=utcnow(),
                    enqueued_at=utcnow(),
                    delivered_at=None,
                )
                .returning(WebhookEvent.id),
                execution_options={"synchronize_session": False},
            )
        )
    if ids:
        enqueue_events(svc.celery, ids)
    return ids
