"""``?purge=true`` on ``DELETE /v1/jobs/{id}`` and ``DELETE /v1/batches/{id}``: the
query switch, and what a purge by the calling key works with (see :mod:`shared.purge`)."""

from __future__ import annotations

from flask import request

from api.auth import current_key
from api.context import Services
from shared.error_codes import ErrorCode
from shared.errors import ValidationFailed
from shared.purge import Eraser, Purger


def purge_requested() -> bool:
    """Whether the request says ``?purge=true``; 422 for a value other than ``true`` or
    ``false`` (a typo must not turn an erasure into a mere cancel, or the reverse)."""
    raw = request.args.get("purge", "false")
    if raw not in ("true", "false"):
        raise ValidationFailed(
            f"purge must be true or false, not {raw!r}", code=ErrorCode.INVALID_QUERY
        )
    return raw == "true"


def eraser(svc: Services) -> Eraser:
    """The API's purge context: its database, broker, job feed and chunk size."""
    return Eraser(svc.sessions, svc.celery, svc.feed, svc.settings.retention_chunk)


def by_caller() -> Purger:
    """The calling key, as the audit records it."""
    return Purger(api_key_id=current_key().id)
