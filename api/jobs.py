"""``/v1/jobs``: submit a job, read it back, cancel it."""

from __future__ import annotations

import uuid

from flask import Blueprint, request, url_for

from api.auth import authenticate, current_key
from api.context import services
from api.job_input import read_job_input
from api.submission import submit_job
from shared.errors import Conflict, NotFound
from shared.lifecycle import cancel_job
from shared.models import Job
from shared.schemas import JobOut

jobs = Blueprint("jobs", __name__, url_prefix="/v1/jobs")
jobs.before_request(authenticate)

Body = dict[str, object]


@jobs.post("")
def create_job() -> tuple[Body, int, dict[str, str]]:
    """202 with the new job; 200 with the original one for a repeated Idempotency-Key."""
    job, created = submit_job(
        services(),
        current_key(),
        read_job_input(request),
        request.headers.get("Idempotency-Key"),
    )
    location = url_for("jobs.get_job", job_id=job.id)
    return _render(job), 202 if created else 200, {"Location": location}


@jobs.get("/<job_id>")
def get_job(job_id: str) -> Body:
    """The job as the caller may see it; 404 for an unknown id or another caller's job."""
    return _render(_load_job(job_id))


@jobs.delete("/<job_id>")
def delete_job(job_id: str) -> Body:
    """Cancel a queued or running job (200 with the job); 409 if it already finished."""
    job = _load_job(job_id)
    with services().sessions() as session, session.begin():
        canceled = cancel_job(session, job.id)
    job = _load_job(job_id)
    if not canceled:
        raise Conflict(
            f"job {job.id} already {job.status.value}; only queued or running jobs can be canceled",
            code="job_finished",
        )
    return _render(job)


def _load_job(raw_id: str) -> Job:
    try:
        job_id = uuid.UUID(raw_id)
    except ValueError as exc:
        raise NotFound(f"no job {raw_id!r}") from exc
    with services().sessions() as session:
        job = session.get(Job, job_id)
    if job is None or job.api_key_id != current_key().id:
        raise NotFound(f"no job {raw_id}")
    return job


def _render(job: Job) -> Body:
    return JobOut.from_job(job).model_dump(mode="json")
