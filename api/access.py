"""Loading what the caller may see: everything else answers 404, never 403."""

from __future__ import annotations

import uuid

from api.auth import current_key
from api.context import services
from shared.errors import NotFound
from shared.models import Job


def load_job(raw_id: str) -> Job:
    """The caller's job ``raw_id``; :class:`NotFound` for a malformed or unknown id, or a
    job another key submitted (its existence is not revealed)."""
    try:
        job_id = uuid.UUID(raw_id)
    except ValueError as exc:
        raise NotFound(f"no job {raw_id!r}") from exc
    with services().sessions() as session:
        job = session.get(Job, job_id)
    if job is None or job.api_key_id != current_key().id:
        raise NotFound(f"no job {raw_id}")
    return job
