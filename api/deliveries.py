"""Webhook deliveries: a job's events, their attempts and redelivery
(``/v1/jobs/{id}/deliveries``), and the tenant's events across jobs and batches
(``/v1/deliveries``): listed by status, and redelivered by time range.

A redelivery makes events due again now, with the same ``webhook-id``, except those of
a disabled endpoint: they stay ``kept`` until the tenant enables it (the sender would
only keep them again). A job's redelivery is refused (409 ``endpoint_disabled``) when
all its events are of such an endpoint. By time range it takes the ``failed`` and
``kept`` events created in ``[since, until)``, oldest first, at most
:data:`REDELIVER_LIMIT` per call. It is idempotent: an
event it re-queued is ``pending`` (then ``delivered``), so a second call for the same
range does not send it again, and two calls at once re-queue disjoint events (each
UPDATE re-checks the status).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from flask import Blueprint, request
from sqlalchemy import ColumnElement, select, update

from api.access import load_job
from api.auth import authenticate, current_key
from api.context import Services, services
from api.listing import DeliveryFilter, encode_cursor, parse_timestamp
from api.small_body import read_small_body
from shared.enqueue import enqueue_events
from shared.error_codes import ErrorCode
from shared.errors import Conflict, ValidationFailed
from shared.models import EventStatus, WebhookDelivery, WebhookEndpoint, WebhookEvent, utcnow
from shared.schemas import (
    DeliveryEventOut,
    DeliveryList,
    DeliveryOut,
    EventOut,
    RedeliverRequest,
    RedeliveryQueued,
)

# Events one time-range redelivery re-queues at most; ``more`` tells the caller to call again.
REDELIVER_LIMIT = 1000

deliveries = Blueprint("deliveries", __name__, url_prefix="/v1/jobs/<job_id>/deliveries")
deliveries.before_request(authenticate)
tenant_deliveries = Blueprint("tenant_deliveries", __name__, url_prefix="/v1/deliveries")
tenant_deliveries.before_request(authenticate)


@deliveries.get("")
def list_deliveries(job_id: str) -> dict[str, object]:
    """Every webhook event of the job with all its attempts (empty without a callback)."""
    job = load_job(job_id)
    rendered = [event.model_dump(mode="json") for event in job_events(services(), job.id)]
    return {"job_id": str(job.id), "events": rendered}


@deliveries.post("/redeliver")
def redeliver(job_id: str) -> tuple[dict[str, object], int]:
    """Send the job's events again now, with the same ``webhook-id`` (202); 409 when the
    job has no event yet (not finished, or no callback URL) or only events of a disabled
    endpoint."""
    job = load_job(job_id)
    svc = services()
    ids = redeliver_events(svc, job.id)
    if not ids:
        raise nothing_redelivered(svc, job.id)
    return {"job_id": str(job.id), "redelivering": ids}, 202


@tenant_deliveries.get("")
def list_tenant_deliveries() -> dict[str, object]:
    """The webhook events of the caller's tenant, newest first: ``?status=&limit=&cursor=``
    (``status=failed``: those that need attention). ``next_cursor`` is null on the last
    page."""
    wanted = DeliveryFilter.parse(request.args.to_dict())
    with services().sessions() as session:
        rows = list(session.scalars(wanted.query(current_key().tenant_id)))
    page, more = rows[: wanted.limit], len(rows) > wanted.limit
    listed = DeliveryList(
        deliveries=[DeliveryEventOut.model_validate(e, from_attributes=True) for e in page],
        next_cursor=encode_cursor(page[-1]) if more else None,
    )
    return listed.model_dump(mode="json")


@tenant_deliveries.post("/redeliver")
def redeliver_range() -> tuple[dict[str, object], int]:
    """Send the failed and kept events created in ``[since, until)`` again (202; see the
    module docstring); 422 ``invalid_time_range`` for a bad range."""
    body = read_small_body(request, RedeliverRequest)
    try:
        since = parse_timestamp(body.since, "since")
        until = utcnow() if body.until is None else parse_timestamp(body.until, "until")
    except ValueError as exc:
        raise ValidationFailed(str(exc), code=ErrorCode.INVALID_TIME_RANGE) from exc
    if until <= since:
        raise ValidationFailed("until must be after since", code=ErrorCode.INVALID_TIME_RANGE)
    ids, more = redeliver_events_between(services(), current_key().tenant_id, since, until)
    return RedeliveryQueued(redelivering=ids, more=more).model_dump(mode="json"), 202


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
    """Make the webhook events of job ``job_id`` due again now (same ``webhook-id``),
    except those of a disabled endpoint, and wake the sender; returns their ids, empty
    when there is none (then nothing changes). The caller has already checked that it
    may see the job."""
    return _requeue(svc, [WebhookEvent.job_id == job_id, _endpoint_enabled()])


def nothing_redelivered(svc: Services, job_id: uuid.UUID) -> Conflict:
    """Why :func:`redeliver_events` found nothing to send for job ``job_id``: it has no
    event yet (not finished, or no callback URL), or only events of a disabled
    endpoint."""
    with svc.sessions() as session:
        endpoints = session.scalars(
            select(WebhookEvent.endpoint_id).where(WebhookEvent.job_id == job_id).distinct()
        ).all()
    if not endpoints:
        return Conflict(
            f"job {job_id} has no webhook event to redeliver (not finished, or no callback_url)",
            code=ErrorCode.NO_WEBHOOK_EVENT,
        )
    return Conflict(
        f"job {job_id}'s webhook events go to a disabled endpoint "
        f"({', '.join(map(str, endpoints))}); enable it (POST /v1/endpoints/{{id}}/enable), "
        "then redeliver",
        code=ErrorCode.ENDPOINT_DISABLED,
    )


def redeliver_events_between(
    svc: Services, tenant_id: uuid.UUID, since: datetime, until: datetime
) -> tuple[list[str], bool]:
    """Requeue up to :data:`REDELIVER_LIMIT` of ``tenant_id``'s failed and kept events
    created in ``[since, until)`` whose endpoint is not disabled, oldest first; returns
    their ids and whether more such events are left."""
    recoverable = [
        WebhookEvent.tenant_id == tenant_id,
        WebhookEvent.status.in_([EventStatus.FAILED, EventStatus.KEPT]),
        WebhookEvent.created_at >= since,
        WebhookEvent.created_at < until,
    ]
    with svc.sessions() as session:
        found = list(
            session.scalars(
                select(WebhookEvent.id)
                .where(*recoverable, _endpoint_enabled())
                .order_by(WebhookEvent.created_at, WebhookEvent.id)
                .limit(REDELIVER_LIMIT + 1)
            )
        )
    chosen = found[:REDELIVER_LIMIT]
    if not chosen:
        return [], False
    ids = _requeue(svc, [WebhookEvent.id.in_(chosen), *recoverable])
    return ids, len(found) > REDELIVER_LIMIT


def _endpoint_enabled() -> ColumnElement[bool]:
    """The event's endpoint is not disabled (or not known yet: the sender attaches it at
    the first attempt)."""
    disabled = select(WebhookEndpoint.id).where(WebhookEndpoint.disabled_at.is_not(None))
    return WebhookEvent.endpoint_id.is_(None) | WebhookEvent.endpoint_id.not_in(disabled)


def _requeue(svc: Services, where: list[ColumnElement[bool]]) -> list[str]:
    """Make the events matching ``where`` pending and due now, and wake the sender;
    returns their ids."""
    with svc.sessions() as session, session.begin():
        ids = list(
            session.scalars(
                update(WebhookEvent)
                .where(*where)
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
