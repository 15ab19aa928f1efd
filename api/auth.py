"""``Authorization: Bearer <key>`` on every ``/v1`` route."""

from __future__ import annotations

from flask import g, request

from api.context import services
from api.limits import enforce_rate
from shared.errors import Unauthorized
from shared.keys import find_active_key
from shared.models import ApiKey


def authenticate() -> None:
    """``before_request`` hook: resolve the caller's key into ``g.api_key`` or raise 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("send your API key as 'Authorization: Bearer <key>'")
    with services().sessions() as session:
        row = find_active_key(session, key.strip())
    if row is None:
        raise Unauthorized("the API key is unknown, revoked or expired")
    enforce_rate(services(), services().counters, row)
    g.api_key = row


def current_key() -> ApiKey:
    """The authenticated caller's key (only valid inside a ``/v1`` request)."""
    key: ApiKey = g.api_key
    return key
