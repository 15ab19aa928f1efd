"""Loading what the caller may see: everything else answers 404, never 403."""

from __future__ import annotations

import uuid
from typing import TypeVar

from api.auth import current_key
from api.context import services
from shared.errors import NotFound
from shared.models import Batch, Job, WebhookEndpoint

Owned = TypeVar("Owned", Job, Batch, WebhookEndpoint)


def load_owned(model: type[Owned], raw_id: str, noun: str) -> Owned:
    """The caller's ``model`` row ``raw_id``; :class:`NotFound` for a malformed or unknown
    id, or another tenant's row (its existence is not revealed)."""
    try:
        row_id = uuid.UUID(raw_id)
    except ValueError as exc:
        raise NotFound(f"no {noun} {raw_id!r}") from exc
    with services().sessions() as session:
        row = session.get(model, row_id)
    if row is None or row.tenant_id != current_key().tenant_id:
        raise NotFound(f"no {noun} {raw_id}")
    return row


def load_job(raw_id: str) -> Job:
    """The caller's job ``raw_id`` (see :func:`load_owned`)."""
    return load_owned(Job, raw_id, "job")
