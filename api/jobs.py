"""``/v1/jobs``: submit a job, read it back."""

from __future__ import annotations

import logging
import uuid

from flask import Blueprint, request, url_for

from api.auth import authenticate, current_key
from api.context import services
from api.job_input import read_job_input
from shared.enqueue import enqueue_job
from shared.errors import NotFound, ValidationFailed
from shared.images import normalise_image
from shared.models import Job, JobStatus, Priority
from shared.schemas import JobOptions, JobOut

log = logging.getLogger(__name__)

jobs = Blueprint("jobs", __name__, url_prefix="/v1/jobs")
jobs.before_request(authenticate)


@jobs.post("")
def create_job() -> tuple[dict[str, object], int, dict[str, str]]:
    """Validate, store the image, commit the job row, then send its message (202)."""
    svc = services()
    settings = svc.settings
    submitted = read_job_input(request)
    fields = submitted.fields
    if len(fields.prompt) > settings.max_prompt_chars:
        raise ValidationFailed(
            f"prompt is {len(fields.prompt)} characters; the limit is {settings.max_prompt_chars}",
            code="prompt_too_long",
        )
    max_new_tokens = fields.max_new_tokens or settings.default_max_new_tokens
    if max_new_tokens > settings.max_new_tokens_limit:
        raise ValidationFailed(
            f"max_new_tokens is {max_new_tokens}; the limit is {settings.max_new_tokens_limit}",
            code="max_new_tokens_too_large",
        )
    options = JobOptions(max_new_tokens=max_new_tokens, temperature=fields.temperature)
    image = normalise_image(
        submitted.image,
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        max_side=settings.max_image_side,
    )
    key, sha256 = svc.blobs.put(image.png)
    job = Job(
        id=uuid.uuid4(),
        api_key_id=current_key().id,
        status=JobStatus.QUEUED,
        priority=Priority.INTERACTIVE,
        prompt=fields.prompt,
        image_key=key,
        image_sha256=sha256,
        image_width=image.width,
        image_height=image.height,
        options=options.model_dump(),
        attempts=0,
    )
    with svc.sessions() as session, session.begin():
        session.add(job)
    try:
        enqueue_job(svc.celery, job.id, job.priority)
    except Exception as exc:  # the broker is down: the job is safe in the database
        log.warning("job %s committed but not enqueued (%s); the sweeper will send it", job.id, exc)
    body = JobOut.from_job(job).model_dump(mode="json")
    return body, 202, {"Location": url_for("jobs.get_job", job_id=job.id)}


@jobs.get("/<job_id>")
def get_job(job_id: str) -> dict[str, object]:
    """The job as the caller may see it; 404 for an unknown id or another caller's job."""
    job = _load_job(job_id)
    return JobOut.from_job(job).model_dump(mode="json")


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
