"""Webhook endpoints and their health: which ones fail, which are disabled.

An *endpoint* is (tenant, scheme, host, port) of a callback URL: paths and query strings
do not make new ones. The sender records each endpoint at its first attempt
(:func:`attach_endpoint`) and reports every attempt's outcome (:func:`record_outcome`):
a delivered attempt clears ``failing_since``; a failed one sets it if it was clear, and
once an endpoint has failed every attempt for ``endpoint_disable_after_s`` it is
disabled and its pending events are ``kept``, attempted no more. Its tenant enables it
again (:func:`enable_endpoint`) and recovers the kept events by redelivery.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared.models import EventStatus, WebhookEndpoint, WebhookEvent, utcnow

_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of ``url``, lower-cased, with the scheme's default port
    filled in. A URL that does not parse (the SSRF guard refuses it anyway) is its own
    origin: its text as the host, port 0."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        return "", url[:255], 0


def attach_endpoint(session: Session, event: WebhookEvent) -> WebhookEndpoint:
    """The endpoint of ``event`` (created on its tenant's first attempt to it), stored in
    ``event.endpoint_id``; call it in the transaction that reserves the attempt."""
    scheme, host, port = origin_of(event.url)
    if event.endpoint_id is None:
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        session.execute(
            dialect.insert(WebhookEndpoint)
            .values(
                id=uuid.uuid4(),
                tenant_id=event.tenant_id,
                scheme=scheme,
                host=host,
                port=port,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["tenant_id", "scheme", "host", "port"])
        )
    endpoint = session.scalars(
        select(WebhookEndpoint).where(
            WebhookEndpoint.tenant_id == event.tenant_id,
            WebhookEndpoint.scheme == scheme,
            WebhookEndpoint.host == host,
            WebhookEndpoint.port == port,
        )
    ).one()
    if event.endpoint_id != endpoint.id:
        session.execute(
            update(WebhookEvent).where(WebhookEvent.id == event.id).values(endpoint_id=endpoint.id),
            execution_options={"synchronize_session": False},
        )
    return endpoint


def record_outcome(
    session: Session,
    endpoint_id: uuid.UUID,
    error: str | None,
    now: datetime,
    disable_after_s: float,
) -> bool:
    """Note one attempt's outcome (``error`` None: delivered) on the endpoint; returns
    whether this attempt disabled it, having then kept its pending events."""
    if error is None:
        session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.failing_since.is_not(None))
            .values(failing_since=None, last_error=None),
            execution_options={"synchronize_session": False},
        )
        return False
    endpoint = session.get_one(WebhookEndpoint, endpoint_id, with_for_update=True)
    endpoint.last_error = error
    if endpoint.failing_since is None:
        endpoint.failing_since = now
    disable = endpoint.disabled_at is None and now - endpoint.failing_since >= timedelta(
        seconds=disable_after_s
    )
    if disable:
        endpoint.disabled_at = now
        keep_events(session, endpoint_id)
    session.flush()
    return disable


def keep_events(session: Session, endpoint_id: uuid.UUID) -> None:
    """Hold back every pending event of a disabled endpoint (``kept``, nothing due)."""
    session.execute(
        update(WebhookEvent)
        .where(
            WebhookEvent.endpoint_id == endpoint_id,
            WebhookEvent.status == EventStatus.PENDING,
        )
        .values(status=EventStatus.KEPT, next_attempt_at=None, enqueued_at=None),
        execution_options={"synchronize_session": False},
    )


def enable_endpoint(session: Session, endpoint: WebhookEndpoint) -> None:
    """Enable ``endpoint`` again with a clean record; its kept events stay kept until
    they are redelivered."""
    endpoint.disabled_at = None
    endpoint.failing_since = None
    endpoint.last_error = None
