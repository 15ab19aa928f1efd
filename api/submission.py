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
from shared.error_codes import ErrorCode
from shared.errors import BadRequest, ValidationFailed
from shared.images import NormalisedImage, normalise_image
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
    Everything that can refuse the request (fields, idempotency, image, queue cap) is
    checked before the image is stored, so a refused or repeated request stores nothing
    and a repeat does not decode the image again.
    """
    if idempotency_key is not None:
        _check_idempotency_key(idempotency_key)
    draft = draft_job(svc, key, submitted.fields, Priority.INTERACTIVE)
    fingerprint = draft.fingerprint(hashlib.sha256(submitted.image).hexdigest())
    if idempotency_key is not None:
        earlier = _earlier(svc, key, idempotency_key, fingerprint)
        if earlier is not None:
            return earlier, False
    image = normalise_upload(svc, submitted.image)
    enforce_queue_cap(svc, key, adding=1)
    row = finish_job_row(svc, draft, image, fingerprint)
    row["idempotency_key"] = idempotency_key
    job = Job(**row)
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


@dataclass(frozen=True)
class JobDraft:
    """A submission whose fields passed validation: its row without the image columns,
    and what the image-dependent columns are computed from."""

    row: JobRow
    fields: JobRequest
    plan: GenerationPlan
    options: JobOptions
    timeout_s: int

    @property
    def callback_url(self) -> str | None:
        url: str | None = self.row["callback_url"]
        return url

    def fingerprint(self, image_sha256: str) -> str:
        """What makes two submissions "the same request" for idempotency, given the
        SHA-256 (hex) of the image as submitted (before normalisation)."""
        return _fingerprint(self.fields, self.plan, self.options, self.timeout_s, image_sha256)


def draft_job(
    svc: Services,
    key: ApiKey,
    fields: JobRequest,
    priority: Priority,
    *,
    check_callback: bool = True,
) -> JobDraft:
    """Validate one submission's fields (no image work, nothing stored); raises the 4xx
    of the first problem found. With ``check_callback`` False the caller has checked the
    callback URL (:attr:`JobDraft.callback_url`) against the SSRF guard itself."""
    settings = svc.settings
    plan = plan_generation(svc, fields)
    timeout_s = fields.timeout_s or settings.default_timeout_s
    if timeout_s > settings.max_timeout_s:
        raise ValidationFailed(
            f"timeout_s is {timeout_s}; the limit is {settings.max_timeout_s}",
            code=ErrorCode.TIMEOUT_TOO_LARGE,
        )
    options = JobOptions(max_new_tokens=plan.max_new_tokens, temperature=fields.temperature)
    callback_url = fields.callback_url or key.callback_url
    if callback_url is not None and check_callback:
        svc.outbound.for_owner(str(key.tenant_id)).check(callback_url, field="callback_url")
    now = utcnow()
    row = BLANK_ROW | dict(
        id=uuid.uuid4(),
        tenant_id=key.tenant_id,
        api_key_id=key.id,
        status=JobStatus.QUEUED,
        priority=priority,
        prompt=plan.prompt,
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
        use_cache=fields.cache,
        attempts=0,
    )
    return JobDraft(row, fields, plan, options, timeout_s)


def normalise_upload(svc: Services, image_bytes: bytes) -> NormalisedImage:
    """The submitted image decoded and normalised under the configured limits; 4xx if it
    is not an acceptable image (see ``shared.images``)."""
    settings = svc.settings
    return normalise_image(
        image_bytes,
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        max_side=settings.max_image_side,
        max_frames=settings.max_image_frames,
    )


def finish_job_row(
    svc: Services,
    draft: JobDraft,
    image: NormalisedImage,
    fingerprint: str,
    *,
    durable: bool = True,
) -> JobRow:
    """Store ``image`` and return the draft's complete row to insert: every column, as a
    plain dict (thousands of them are built per batch; an ORM object costs more than the
    rest). Call only once nothing can refuse the job any more: the blob is written here.
    With ``durable`` False the caller must ``svc.blobs.sync()`` before committing."""
    blob_key, sha256 = svc.blobs.put(image.png, durable=durable)
    return draft.row | dict(
        image_key=blob_key,
        image_sha256=sha256,
        image_width=image.width,
        image_height=image.height,
        request_sha256=fingerprint,
        cache_key=_cache_key(
            draft.row["tenant_id"], draft.plan, draft.options, sha256, draft.fields.preset
        ),
    )


def _cache_key(
    tenant_id: uuid.UUID,
    plan: GenerationPlan,
    options: JobOptions,
    image_sha256: str,
    preset: str | None,
) -> str | None:
    """Identical requests of one tenant: same stored image, prompt, options, answer
    format and policy (the model revision is matched by the worker, which knows it).

    The tenant is part of the key, so one tenant is never answered from (nor learns of)
    another's requests. Sampled requests (temperature > 0) get no key: they are neither
    served from the cache nor serve anyone else, since a fresh sample is what they ask."""
    if options.temperature > 0:
        return None
    summary = {
        "tenant": str(tenant_id),
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
                f"unknown preset {fields.preset!r}; known: {known}", code=ErrorCode.UNKNOWN_PRESET
            )
    prompt = fields.prompt or (preset.prompt if preset else None)
    if prompt is None:
        raise ValidationFailed(
            "prompt is required unless a preset is given", code=ErrorCode.INVALID_FIELDS
        )
    if len(prompt) > settings.max_prompt_chars:
        raise ValidationFailed(
            f"prompt is {len(prompt)} characters; the limit is {settings.max_prompt_chars}",
            code=ErrorCode.PROMPT_TOO_LONG,
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
            code=ErrorCode.MAX_NEW_TOKENS_TOO_LARGE,
        )
    if max_new_tokens < needed:
        raise ValidationFailed(
            f"max_new_tokens is {max_new_tokens}; this schema needs at least {needed} tokens "
            "to guarantee a complete answer",
            code=ErrorCode.MAX_NEW_TOKENS_TOO_SMALL,
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
            f"the JSON schema is {size} bytes; the limit is {max_bytes}",
            code=ErrorCode.SCHEMA_TOO_LARGE,
        )
    try:
        return min_new_tokens(schema, thinking)
    except SchemaError as exc:
        raise ValidationFailed(
            f"unsupported JSON schema: {exc}", code=ErrorCode.UNSUPPORTED_SCHEMA
        ) from exc


def _fingerprint(
    fields: JobRequest, plan: GenerationPlan, options: JobOptions, timeout_s: int, image_sha256: str
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
        "image_sha256": image_sha256,
    }
    return hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()


def _check_idempotency_key(value: str) -> None:
    if not value or len(value) > MAX_IDEMPOTENCY_KEY_CHARS or not value.isprintable():
        raise BadRequest(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable characters",
            code=ErrorCode.INVALID_IDEMPOTENCY_KEY,
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
            code=ErrorCode.IDEMPOTENCY_KEY_REUSED,
        )
    return job
