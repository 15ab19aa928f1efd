"""``Authorization: Bearer <key>`` on every ``/v1`` route."""

from __future__ import annotations

from flask import g, request

from api.context import Services, services
from api.key_cache import active_key_row
from api.limits import enforce_rate
from shared.errors import Unauthorized
from shared.keys import hash_key
from shared.models import ApiKey


def authenticate() -> None:
    """``before_request`` hook: resolve the caller's key into ``g.api_key`` or raise 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("send your API key as 'Authorization: Bearer <key>'")
    row = active_key(services(), key.strip())
    if row is None:
        raise Unauthorized("the API key is unknown, revoked or expired")
    enforce_rate(services(), services().counters, row)
    g.api_key = row


def active_key(svc: Services, key: str) -> ApiKey | None:
    """The row of ``key`` if it is neither revoked nor expired, else ``None``; looked up
    in the process's :class:`api.key_cache.KeyCache` first, then the database."""
    return active_key_row(svc.sessions, svc.keys, hash_key(key))


def current_key() -> ApiKey:
    """The authenticated caller's key (only valid inside a ``/v1`` request)."""
    key: ApiKey = g.api_key
    return key
