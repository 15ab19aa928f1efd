"""Webhook events: Standard Webhooks signing and the outbox writer.

Signing follows the Standard Webhooks specification: ``webhook-id`` (the event id, the
same on every retry), ``webhook-timestamp`` (unix seconds of this attempt) and
``webhook-signature`` = ``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))
where the key is the base64-decoded part of the ``whsec_…`` secret. During a secret
rotation both signatures are sent, space-separated, as the specification allows.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared.models import EventStatus, Job, JobStatus, Tenant, WebhookEvent, utcnow
from shared.schemas import JobOut

SECRET_PREFIX = "whsec_"
_EVENT_FOR_STATUS = {
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELED: "job.canceled",
}


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """The ``v1,<base64>`` signature of one attempt's body under ``secret``."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    content = f"{msg_id}.{timestamp}.{body}".encode()
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def signing_secrets(tenant: Tenant, now: datetime) -> list[str]:
    """The secrets that sign ``tenant``'s webhooks right now: the current one, and the
    previous one while its rotation grace period lasts."""
    found = [tenant.webhook_secret]
    expires = tenant.previous_secret_expires_at
    if tenant.previous_webhook_secret and expires is not None and expires > now:
        found.append(tenant.previous_webhook_secret)
    return found


def signed_headers(
    secrets_: Iterable[str], msg_id: str, timestamp: int, body: str
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets_),
    }


def event_type_for(status: JobStatus) -> str | None:
    """``job.<status>`` for a final status, ``None`` otherwise."""
    return _EVENT_FOR_STATUS.get(status)


def record_events(session: Session, job_ids: Iterable[uuid.UUID]) -> list[str]:
    """Write the outbox event of every job in ``job_ids`` that is final, has a callback
    URL and wants that event type; call it in the transaction that made them final.

    The payload is frozen now: ``{"type", "timestamp", "data": <the job as GET returns
    it>}``. At most one event per job and type ever exists (a unique index; a second
    write is ignored), so a retried transition cannot send a second, different event.
    Returns the ids of the events written. Only :mod:`shared.lifecycle` calls this.
    """
    ids = list(job_ids)
    if not ids:
        return []
    jobs = session.scalars(select(Job).where(Job.id.in_(ids), Job.callback_url.is_not(None))).all()
    now = utcnow()
    rows = []
    for job in jobs:
        kind = event_type_for(job.status)
        if kind is None or (job.webhook_events is not None and kind not in job.webhook_events):
            continue
        body = {
            "type": kind,
            "timestamp": now.isoformat().replace("+00:00", "Z"),
            "data": JobOut.from_job(job).model_dump(mode="json"),
        }
        rows.append(
            {
                "id": f"msg_{uuid.uuid4().hex}",
                "job_id": job.id,
                "tenant_id": job.tenant_id,
                "type": kind,
                "url": job.callback_url,
                "payload": json.dumps(body, separators=(",", ":")),
                "status": EventStatus.PENDING,
                "attempts": 0,
                "created_at": now,
                "next_attempt_at": now,
            }
        )
    if not rows:
        return []
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(WebhookEvent).on_conflict_do_nothing(index_elements=["job_id", "type"])
    written = session.scalars(stmt.returning(WebhookEvent.id), rows)
    return list(written)
