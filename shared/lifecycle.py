"""Caller-side transitions of a job (the worker's own are in ``worker/claims.py``)."""

from __future__ import annotations

import uuid
from typing import Any, cast

from sqlalchemy import CursorResult, update
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus, utcnow
from shared.webhooks import record_events


def cancel_job(session: Session, job_id: uuid.UUID) -> list[str] | None:
    """Move a queued or running job to ``canceled``; ``None`` if it was already final,
    else the ids of the webhook events written with it (to wake the sender after commit).

    A queued job then never runs (no worker can claim it); a running one keeps running
    on its worker, but its result is discarded because the worker writes only where the
    job is still running under its claim.
    """
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        .values(status=JobStatus.CANCELED, finished_at=utcnow(), lease_expires_at=None)
    )
    result = session.execute(stmt, execution_options={"synchronize_session": False})
    if not cast(CursorResult[Any], result).rowcount:
        return None
    return record_events(session, [job_id])
