"""``/v1/endpoints``: the tenant's webhook endpoints, their health, and enabling one again.

An endpoint is (tenant, scheme, host, port) of its callback URLs (:mod:`shared.endpoints`).
It is ``healthy``, ``failing`` (every attempt since ``failing_since`` failed) or
``disabled`` (failing for ``SIGHTLINE_ENDPOINT_DISABLE_AFTER_S``): no attempt is made to
a disabled endpoint and its events are ``kept``. Enabling it clears its record; its kept
events are then recovered with ``POST /v1/deliveries/redeliver``.
"""

from __future__ import annotations

import uuid
from typing import Literal

from flask import Blueprint
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.access import load_owned
from api.auth import authenticate, current_key
from api.context import services
from shared.endpoints import enable_endpoint
from shared.models import EventStatus, WebhookEndpoint, WebhookEvent
from shared.schemas import EndpointList, EndpointOut

endpoints = Blueprint("endpoints", __name__, url_prefix="/v1/endpoints")
endpoints.before_request(authenticate)


@endpoints.get("")
def list_endpoints() -> dict[str, object]:
    """Every endpoint of the caller's tenant, disabled first, then by URL."""
    with services().sessions() as session:
        rendered = tenant_endpoints(session, current_key().tenant_id)
    return EndpointList(endpoints=rendered).model_dump(mode="json")


@endpoints.post("/<endpoint_id>/enable")
def enable(endpoint_id: str) -> dict[str, object]:
    """Enable the endpoint again (200 with it; a no-op for one not disabled)."""
    found = load_owned(WebhookEndpoint, endpoint_id, "webhook endpoint")
    with services().sessions() as session, session.begin():
        endpoint = session.get_one(WebhookEndpoint, found.id, with_for_update=True)
        enable_endpoint(session, endpoint)
    with services().sessions() as session:
        return render_endpoint(session, endpoint).model_dump(mode="json")


def tenant_endpoints(session: Session, tenant_id: uuid.UUID) -> list[EndpointOut]:
    """The endpoints of ``tenant_id`` as the API lists them."""
    rows = session.scalars(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.tenant_id == tenant_id)
        .order_by(
            WebhookEndpoint.disabled_at.is_(None),
            WebhookEndpoint.scheme,
            WebhookEndpoint.host,
            WebhookEndpoint.port,
        )
    ).all()
    counted = session.execute(
        select(WebhookEvent.endpoint_id, func.count())
        .where(WebhookEvent.tenant_id == tenant_id, WebhookEvent.status == EventStatus.KEPT)
        .group_by(WebhookEvent.endpoint_id)
    ).tuples()
    kept = {endpoint_id: count for endpoint_id, count in counted}
    return [_render(endpoint, kept.get(endpoint.id, 0)) for endpoint in rows]


def render_endpoint(session: Session, endpoint: WebhookEndpoint) -> EndpointOut:
    """One endpoint as the API shows it."""
    kept = session.scalar(
        select(func.count()).where(
            WebhookEvent.endpoint_id == endpoint.id, WebhookEvent.status == EventStatus.KEPT
        )
    )
    return _render(endpoint, kept or 0)


def _render(endpoint: WebhookEndpoint, kept: int) -> EndpointOut:
    state: Literal["healthy", "failing", "disabled"] = "healthy"
    if endpoint.disabled_at is not None:
        state = "disabled"
    elif endpoint.failing_since is not None:
        state = "failing"
    return EndpointOut(
        id=endpoint.id,
        url=f"{endpoint.scheme}://{endpoint.host}:{endpoint.port}",
        state=state,
        failing_since=endpoint.failing_since,
        disabled_at=endpoint.disabled_at,
        last_error=endpoint.last_error,
        kept=kept,
    )
