"""Accepting a job: validate, store the image, commit the row, then wake a worker.

The row is committed before the message is sent: a job exists once its row does, and a
message lost on the way (Redis down, flushed) is re-sent by the sweeper.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from api.context import Services
from api.job_input import JobInput
from api.limits import enforce_queue_cap
from shared.enqueue import enqueue_job
from shared.errors import BadRequest, ValidationFailed
from shared.images import normalise_image
from shared.json_schema import SchemaError, min_new_tokens
from shared.models import ApiKey, Job, JobStatus, Priority, utcnow
from shared.schemas import JobOptions, JobRequest, JsonSchemaFormat

log = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY_CHARS = 255

# A job's INSERT parameters: every column of ``jobs`` by attribute name.
JobRow = dict[str, Any]
# Every column at its default (None where it has none), so a row built from it lists all
# columns and one executemany or COPY takes a whole batch of them.
BLANK_ROW: JobRow = {
    column.key: column.default.arg
    if column.default is not None and column.default.is_scalar
    else None
    for column in Job.__table__.columns
}


def submit_job(
    svc: Services, key: ApiKey, submitted: JobInput, idempotency_key: str | None
) -> tuple[Job, bool]:
    """Accept ``submitted`` for ``key``; returns ``(job, created)``.

    With an ``idempotency_key`` already used in this key's tenant, the original job is
    returned (``created`` False) if the request is the same, and 422 is raised if it is
    not. Field limits raise 422, image problems their 4xx (see ``shared.images``).
    """
    if idempotency_key is not None:
        _check_idempotency_key(idempotency_key)
    row = build_job_row(svc, key, submitted.fields, submitted.image, Priority.INTERACTIVE)
    row["idempotency_key"] = idempotency_key
    job = Job(**row)
    if idempotency_key is not None:
        earlier = _earlier(svc, key, idempotency_key, job.request_sha256)
        if earlier is not None:
            return earlier, False
    enforce_queue_cap(svc, key, adding=1)
    try:
        with svc.sessions() as session, session.begin():
            session.execute(insert(Job), [row])
    except IntegrityError:
        # Another request with the same idempotency key committed first.
        if idempotency_key is None:
            raise
        earlier = _earlier(svc, key, idempotency_key, job.request_sha256)
        if earlier is None:
            raise
        return earlier, False
    try:
        enqueue_job(svc.celery, job.id, job.priority)
    except Exception as exc:  # the broker is down: the job is safe in the database
        log.warning("job %s committed but not enqueued (%s); the sweeper will send it", job.id, exc)
    return job, True


def build_job_row(
    svc: Services,
    key: ApiKey,
    fields: JobRequest,
    image_bytes: bytes,
    priority: Priority,
    *,
    durable: bool = True,
) -> JobRow:
    """Validate one submission, store its normalised image, and return the job's row to
    insert: every column, as a plain dict (thousands of them are built per batch; an ORM
    object costs more than the rest). Raises the 4xx of the first problem found. With
    ``durable`` False the caller must ``svc.blobs.sync()`` before committing."""
    settings = svc.settings
    plan = plan_generation(svc, fields)
    timeout_s = fields.timeout_s or settings.default_timeout_s
    if timeout_s > settings.max_timeout_s:
        raise ValidationFailed(
            f"timeout_s is {timeout_s}; the limit is {settings.max_timeout_s}",
            code="timeout_too_large",
        )
    options = JobOptions(max_new_tokens=plan.max_new_tokens, temperature=fields.temperature)
    callback_url = fields.callback_url or key.callback_url
    if callback_url is not None:
        svc.outbound.check(callback_url, field="callback_url")
    image = normalise_image(
        image_bytes,
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        max_side=settings.max_image_side,
        max_frames=settings.max_image_frames,
    )
    blob_key, sha256 = svc.blobs.put(image.png, durable=durable)
    now = utcnow()
    return BLANK_ROW | dict(
        id=uuid.uuid4(),
        tenant_id=key.tenant_id,
        api_key_id=key.id,
        status=JobStatus.QUEUED,
        priority=priority,
        prompt=plan.prompt,
        image_key=blob_key,
        image_sha256=sha256,
        image_width=image.width,
        image_height=image.height,
        options=options.model_dump(),
        response_schema=plan.schema,
        thinking=plan.thinking,
        preset=fields.preset,
        policy=plan.policy,
        created_at=now,
        enqueued_at=now,
        deadline_at=now + timedelta(seconds=timeout_s),
        callback_url=callback_url,
        webhook_events=fields.webhook_events,
        request_sha256=_fingerprint(fields, plan, options, timeout_s, image_bytes),
        cache_key=_cache_key(plan, options, sha256, fields.preset),
        use_cache=fields.cache,
        attempts=0,
    )


def _cache_key(
    plan: GenerationPlan, options: JobOptions, image_sha256: str, preset: str | None
) -> str:
    """Identical requests: same stored image, prompt, options, answer format and policy
    (the model revision is matched by the worker, which knows it)."""
    summary = {
        "image": image_sha256,
        "prompt": plan.prompt,
        "options": options.model_dump(),
        "schema": plan.schema,
        "thinking": plan.thinking,
        "preset": preset,
        "policy": plan.policy,
    }
    return hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class GenerationPlan:
    """What a submission asks the model for, with preset and defaults applied."""

    prompt: str
    schema: dict[str, Any] | None
    thinking: bool
    max_new_tokens: int
    policy: dict[str, Any] | None


def plan_generation(svc: Services, fields: JobRequest) -> GenerationPlan:
    """Resolve preset, prompt, response format, thinking and token budget; 422 for an
    unknown preset, a missing or too long prompt, an unsupported or too large schema, or a
    ``max_new_tokens`` over the ceiling or too small to finish the schema's answer.

    A preset supplies prompt (unless the caller gives one), schema, budget and thinking;
    the caller's ``response_format``, ``thinking`` and ``max_new_tokens`` win over it.
    ``thinking`` defaults to off for JSON answers and on for text. A JSON answer with no
    ``max_new_tokens`` gets the default budget on top of the schema's minimum.
    """
    settings = svc.settings
    preset = None
    if fields.preset is not None:
        preset = svc.presets.get(fields.preset)
        if preset is None:
            known = ", ".join(sorted(svc.presets)) or "none"
            raise ValidationFailed(
                f"unknown preset {fields.preset!r}; known: {known}", code="unknown_preset"
            )
    prompt = fields.prompt or (preset.prompt if preset else None)
    if prompt is None:
        raise ValidationFailed("prompt is required unless a preset is given", code="invalid_fields")
    if len(prompt) > settings.max_prompt_chars:
        raise ValidationFailed(
            f"prompt is {len(prompt)} characters; the limit is {settings.max_prompt_chars}",
            code="prompt_too_long",
        )
    schema = preset.schema_ if preset else None
    if fields.response_format is not None:
        fmt = fields.response_format
        schema = fmt.schema_ if isinstance(fmt, JsonSchemaFormat) else None
    thinking = fields.thinking
    if thinking is None:
        thinking = preset.thinking if preset and schema is preset.schema_ else schema is None
    needed = _check_schema(schema, thinking, settings.max_schema_bytes)
    default = preset.max_new_tokens if preset else settings.default_max_new_tokens + needed
    max_new_tokens = fields.max_new_tokens or max(default, needed)
    if max_new_tokens > settings.max_new_tokens_limit:
        raise ValidationFailed(
            f"max_new_tokens is {max_new_tokens}; the limit is {settings.max_new_tokens_limit}",
            code="max_new_tokens_too_large",
        )
    if max_new_tokens < needed:
        raise ValidationFailed(
            f"max_new_tokens is {max_new_tokens}; this schema needs at least {needed} tokens "
            "to guarantee a complete answer",
            code="max_new_tokens_too_small",
        )
    policy = preset.policy.model_dump() if preset and preset.policy else None
    return GenerationPlan(prompt, schema, thinking, max_new_tokens, policy)


def _check_schema(schema: dict[str, Any] | None, thinking: bool, max_bytes: int) -> int:
    """The schema's minimum token budget (0 for text); 422 if too large or unsupported."""
    if schema is None:
        return 0
    size = len(json.dumps(schema))
    if size > max_bytes:
        raise ValidationFailed(
            f"the JSON schema is {size} bytes; the limit is {max_bytes}", code="schema_too_large"
        )
    try:
        return min_new_tokens(schema, thinking)
    except SchemaError as exc:
        raise ValidationFailed(
            f"unsupported JSON schema: {exc}", code="unsupported_schema"
        ) from exc


def _fingerprint(
    fields: JobRequest, plan: GenerationPlan, options: JobOptions, timeout_s: int, image: bytes
) -> str:
    """What makes two submissions "the same request" for idempotency."""
    summary = {
        "prompt": plan.prompt,
        "schema": plan.schema,
        "thinking": plan.thinking,
        "preset": fields.preset,
        "options": options.model_dump(),
        "timeout_s": timeout_s,
        "callback_url": fields.callback_url,
        "webhook_events": fields.webhook_events,
        "image_sha256": hashlib.sha256(image).hexdigest(),
    }
    return hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()


def _check_idempotency_key(value: str) -> None:
    if not value or len(value) > MAX_IDEMPOTENCY_KEY_CHARS or not value.isprintable():
        raise BadRequest(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable characters",
            code="invalid_idempotency_key",
        )


def _earlier(
    svc: Services, key: ApiKey, idempotency_key: str, fingerprint: str | None
) -> Job | None:
    with svc.sessions() as session:
        job = session.scalars(
            select(Job).where(
                Job.tenant_id == key.tenant_id, Job.idempotency_key == idempotency_key
            )
        ).one_or_none()
    if job is not None and job.request_sha256 != fingerprint:
        raise ValidationFailed(
            "this Idempotency-Key was already used with a different request",
            code="idempotency_key_reused",
        )
    return job
