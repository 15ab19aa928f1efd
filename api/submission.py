"""Accepting a job: validate, store the image, commit the row, then wake a worker.

The row is committed before the message is sent: a job exists once its row does, and a
message lost on the way (Redis down, flushed) is re-sent by the sweeper.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.context import Services
from api.job_input import JobInput
from shared.enqueue import enqueue_job
from shared.errors import BadRequest, ValidationFailed
from shared.images import normalise_image
from shared.models import ApiKey, Job, JobStatus, Priority, utcnow
from shared.schemas import JobOptions

log = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY_CHARS = 255


def submit_job(
    svc: Services, key: ApiKey, submitted: JobInput, idempotency_key: str | None
) -> tuple[Job, bool]:
    """Accept ``submitted`` for ``key``; returns ``(job, created)``.

    With an ``idempotency_key`` already used by this API key, the original job is
    returned (``created`` False) if the request is the same, and 422 is raised if it is
    not. Field limits raise 422, image problems their 4xx (see ``shared.images``).
    """
    settings = svc.settings
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
    timeout_s = fields.timeout_s or settings.default_timeout_s
    if timeout_s > settings.max_timeout_s:
        raise ValidationFailed(
            f"timeout_s is {timeout_s}; the limit is {settings.max_timeout_s}",
            code="timeout_too_large",
        )
    options = JobOptions(max_new_tokens=max_new_tokens, temperature=fields.temperature)
    fingerprint = _fingerprint(fields.prompt, options, timeout_s, submitted.image)
    if idempotency_key is not None:
        _check_idempotency_key(idempotency_key)
        earlier = _earlier(svc, key, idempotency_key, fingerprint)
        if earlier is not None:
            return earlier, False
    image = normalise_image(
        submitted.image,
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        max_side=settings.max_image_side,
    )
    blob_key, sha256 = svc.blobs.put(image.png)
    now = utcnow()
    job = Job(
        id=uuid.uuid4(),
        api_key_id=key.id,
        status=JobStatus.QUEUED,
        priority=Priority.INTERACTIVE,
        prompt=fields.prompt,
        image_key=blob_key,
        image_sha256=sha256,
        image_width=image.width,
        image_height=image.height,
        options=options.model_dump(),
        created_at=now,
        enqueued_at=now,
        deadline_at=now + timedelta(seconds=timeout_s),
        idempotency_key=idempotency_key,
        request_sha256=fingerprint,
        attempts=0,
    )
    try:
        with svc.sessions() as session, session.begin():
            session.add(job)
    except IntegrityError:
        # Another request with the same idempotency key committed first.
        if idempotency_key is None:
            raise
        earlier = _earlier(svc, key, idempotency_key, fingerprint)
        if earlier is None:
            raise
        return earlier, False
    try:
        enqueue_job(svc.celery, job.id, job.priority)
    except Exception as exc:  # the broker is down: the job is safe in the database
        log.warning("job %s committed but not enqueued (%s); the sweeper will send it", job.id, exc)
    return job, True


def _fingerprint(prompt: str, options: JobOptions, timeout_s: int, image: bytes) -> str:
    """What makes two submissions "the same request" for idempotency."""
    summary = {
        "prompt": prompt,
        "options": options.model_dump(),
        "timeout_s": timeout_s,
        "image_sha256": hashlib.sha256(image).hexdigest(),
    }
    return hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()


def _check_idempotency_key(value: str) -> None:
    if not value or len(value) > MAX_IDEMPOTENCY_KEY_CHARS or not value.isprintable():
        raise BadRequest(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable characters",
            code="invalid_idempotency_key",
        )


def _earlier(svc: Services, key: ApiKey, idempotency_key: str, fingerprint: str) -> Job | None:
    with svc.sessions() as session:
        job = session.scalars(
            select(Job).where(Job.api_key_id == key.id, Job.idempotency_key == idempotency_key)
        ).one_or_none()
    if job is not None and job.request_sha256 != fingerprint:
        raise ValidationFailed(
            "this Idempotency-Key was already used with a different request",
            code="idempotency_key_reused",
        )
    return job
