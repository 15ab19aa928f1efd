"""Pydantic schemas: what callers send and what they get back.

The API validates every request against these before anything is written, and renders
every job through :class:`JobOut` and every batch answer through the ``Batch*`` models
below, so the HTTP contract lives in one place.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.models import Job, JobStatus, Priority

EventType = Literal["job.succeeded", "job.failed", "job.canceled"]

MODEL_REVISION = (
    "The model checkpoint that produced the result; null for a job without one (queued, "
    "running, failed or canceled). For a local checkpoint directory: 16 hex digits of a "
    "SHA-256 over its top-level files, by content up to 1 MiB (configs, tokenizer, chat "
    "template) and by name and size above (weight shards are not read). For a hub id: "
    "the commit sha the weights were loaded from (or, where transformers reports no "
    "commit, 16 hex digits of the id's SHA-256). A cached result (``cached``) carries the "
    "revision of the job that first produced it, which is the answering worker's own."
)
POLICY_VERSION = (
    "The version of the preset's policy that decided ``action`` (the policy's "
    "``version``, or ``sha256:`` and 12 hex digits of its rules when it names none); "
    "null when no policy judged the job."
)


class JobOptions(BaseModel):
    """Generation settings of one job. Jobs with equal options can share a forward pass.

    ``max_new_tokens`` defaults to the server's setting and may not exceed its ceiling;
    ``temperature`` 0 is greedy decoding.
    """

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)


class TextFormat(BaseModel):
    """Free text (the default)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]


class JsonSchemaFormat(BaseModel):
    """An answer that parses as JSON and validates against ``schema`` (the enforceable
    subset: object, properties, required, enum, string maxLength, number/integer
    minimum/maximum, boolean, array maxItems), guaranteed at the token level."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


ResponseFormat = Annotated[TextFormat | JsonSchemaFormat, Field(discriminator="type")]


class JobRequest(BaseModel):
    """The non-image fields of ``POST /v1/jobs`` (JSON body or multipart form fields).

    ``prompt`` is required unless a ``preset`` supplies it. In multipart,
    ``response_format`` is a JSON string and ``webhook_events`` comma-separated.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    prompt: str | None = Field(default=None, min_length=1)
    preset: str | None = Field(default=None, max_length=64, description="A named policy preset.")
    response_format: ResponseFormat | None = None
    thinking: bool | None = Field(
        default=None, description="The model's thinking switch; default on, off for json_schema."
    )
    max_new_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    timeout_s: int | None = Field(
        default=None, ge=1, description="Seconds the job may wait in the queue before expiring."
    )
    callback_url: str | None = Field(
        default=None,
        max_length=2048,
        description="Where to POST the job's webhook; default: the API key's callback URL.",
    )
    webhook_events: list[EventType] | None = Field(
        default=None,
        description="Event types to send (default all); multipart: comma-separated.",
    )
    cache: bool = Field(
        default=True, description="Reuse an identical request's result (false: always run)."
    )

    @field_validator("response_format", mode="before")
    @classmethod
    def _parse_json_string(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except (ValueError, RecursionError) as exc:
                raise ValueError(f"not valid JSON: {exc}") from exc
        return value

    @field_validator("webhook_events", mode="before")
    @classmethod
    def _split_comma_list(cls, value: object) -> object:
        return (
            [part.strip() for part in value.split(",") if part.strip()]
            if isinstance(value, str)
            else value
        )


class ErrorOut(BaseModel):
    """Why a job failed: a stable ``code`` and a human ``message``."""

    code: str
    message: str


class ImageOut(BaseModel):
    """The stored (normalised) image: content hash and size in pixels (the hash is null
    once retention deleted the job's content)."""

    sha256: str | None
    width: int
    height: int


class JobOut(BaseModel):
    """A job as ``GET /v1/jobs/{id}`` returns it. Times are UTC, durations milliseconds.

    A tombstone (``content_deleted_at`` set: retention deleted its content) keeps status,
    times, error code and settings; its prompt, image hash, result, reasoning, action,
    error message and metadata are null (``shared.retention``)."""

    id: uuid.UUID
    status: JobStatus
    priority: Priority
    prompt: str | None
    options: dict[str, Any]
    image: ImageOut
    preset: str | None
    response_format: dict[str, Any]
    thinking: bool
    result: str | None
    result_json: Any
    reasoning: str | None
    action: str | None
    policy_version: str | None = Field(description=POLICY_VERSION)
    model_revision: str | None = Field(description=MODEL_REVISION)
    output_tokens: int | None
    error: ErrorOut | None
    created_at: datetime
    deadline_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queue_ms: int | None
    inference_ms: int | None
    batch_size: int | None
    worker: str | None
    attempts: int
    callback_url: str | None
    cached: bool
    batch_id: uuid.UUID | None
    item_index: int | None
    metadata: Any
    content_deleted_at: datetime | None = Field(
        description="When retention deleted the job's content (null: it still has it)."
    )

    @classmethod
    def from_job(cls, job: Job) -> JobOut:
        error = None
        if job.error_code is not None:
            error = ErrorOut(code=job.error_code, message=job.error_message or "")
        tombstone = job.content_deleted_at is not None
        return cls(
            id=job.id,
            status=job.status,
            priority=job.priority,
            prompt=None if tombstone else job.prompt,
            options=job.options,
            image=ImageOut(
                sha256=None if tombstone else job.image_sha256,
                width=job.image_width,
                height=job.image_height,
            ),
            preset=job.preset,
            response_format=(
                {"type": "json_schema", "schema": job.response_schema}
                if job.response_schema is not None
                else {"type": "text"}
            ),
            thinking=job.thinking,
            result=job.result,
            result_json=job.result_json,
            reasoning=job.reasoning,
            action=job.action,
            policy_version=job.policy_version,
            model_revision=job.model_revision,
            output_tokens=job.output_tokens,
            error=error,
            created_at=job.created_at,
            deadline_at=job.deadline_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            queue_ms=job.queue_ms,
            inference_ms=job.inference_ms,
            batch_size=job.batch_size,
            worker=job.worker,
            attempts=job.attempts,
            callback_url=job.callback_url,
            cached=job.cached,
            batch_id=job.batch_id,
            item_index=job.item_index,
            metadata=job.item_metadata,
            content_deleted_at=job.content_deleted_at,
        )


class Purged(BaseModel):
    """``DELETE /v1/jobs/{id}?purge=true`` and ``DELETE /v1/batches/{id}?purge=true``:
    what was erased. From now on the id answers 404, as if it had never existed."""

    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID
    object: Literal["job", "batch"]
    purged: Literal[True] = True
    jobs: int = Field(ge=0, description="Jobs erased (1 for a job, a batch's items).")


class DeliveryOut(BaseModel):
    """One attempt to deliver a webhook event."""

    attempt: int
    attempted_at: datetime
    status_code: int | None
    latency_ms: int | None
    error: str | None
    next_attempt_at: datetime | None


class EventOut(BaseModel):
    """A job's webhook event and every attempt made to deliver it, oldest first."""

    id: str
    type: str
    url: str
    status: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    deliveries: list[DeliveryOut]


class DeliveryEventOut(BaseModel):
    """A webhook event as ``GET /v1/deliveries`` lists it: what it is for, where it goes,
    how its delivery stands (``kept``: held back while its endpoint is disabled)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="The ``webhook-id``, the same on every attempt.")
    type: str
    url: str
    status: Literal["pending", "delivered", "failed", "kept"]
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_error: str | None
    job_id: uuid.UUID | None
    batch_id: uuid.UUID | None
    endpoint_id: uuid.UUID | None = Field(description="Set at the first attempt.")


class DeliveryList(BaseModel):
    """One page of the caller's tenant's webhook events, newest first."""

    model_config = ConfigDict(extra="forbid")

    deliveries: list[DeliveryEventOut]
    next_cursor: str | None = Field(description="Pass as ``cursor`` for the next page.")


class RedeliverRequest(BaseModel):
    """``POST /v1/deliveries/redeliver``: the events created in ``[since, until)``."""

    model_config = ConfigDict(extra="forbid")

    since: str = Field(description="ISO 8601 time with a time zone.")
    until: str | None = Field(default=None, description="ISO 8601 time; default now.")


class RedeliveryQueued(BaseModel):
    """The failed and kept events made due again (``more``: others in the range are left
    for another call)."""

    model_config = ConfigDict(extra="forbid")

    redelivering: list[str]
    more: bool


class EndpointOut(BaseModel):
    """A webhook endpoint (tenant, scheme, host, port) and its health."""

    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID
    url: str = Field(description="``scheme://host:port``.")
    state: Literal["healthy", "failing", "disabled"]
    failing_since: datetime | None = Field(
        description="First failed attempt since the last delivered one."
    )
    disabled_at: datetime | None
    last_error: str | None
    kept: int = Field(ge=0, description="Events held back while disabled, to redeliver.")


class EndpointList(BaseModel):
    """The caller's tenant's webhook endpoints."""

    model_config = ConfigDict(extra="forbid")

    endpoints: list[EndpointOut]


class BatchItem(JobRequest):
    """One item of ``POST /v1/batches``: a job's fields plus exactly one of ``image``
    (base64 or a ``data:`` URL) or ``image_url`` (fetched by the API through the SSRF
    guard), optional ``metadata`` returned with its result, and an optional per-item
    ``idempotency_key`` that makes resubmitting the same item return the existing job."""

    image: str | None = None
    image_url: str | None = Field(default=None, max_length=2048)
    metadata: Any = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)


class BatchRequest(BaseModel):
    """The JSON form of ``POST /v1/batches`` (NDJSON sends one item per line instead)."""

    model_config = ConfigDict(extra="forbid")

    items: list[dict[str, Any]]
    callback_url: str | None = Field(default=None, max_length=2048)
    item_events: bool = Field(
        default=False,
        description="Also send each item's job.* events to ``callback_url`` (items with a "
        "callback URL of their own send them there).",
    )


# The batch answers. Closed (``extra="forbid"``): their OpenAPI schemas say
# ``additionalProperties: false``, so a key a route adds without its model is a contract
# violation, and rendering a dict with an unknown key through them fails.


class BatchAccepted(BaseModel):
    """An item that became a new job."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0, description="The item's position in the request.")
    id: uuid.UUID = Field(description="Its job.")


class BatchExisting(BaseModel):
    """An item whose ``idempotency_key`` this tenant used before: the earlier job is
    returned and nothing is created."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0, description="The item's position in the request.")
    id: uuid.UUID = Field(description="The existing job.")
    existing: Literal[True] = Field(description="Marks an item answered by an earlier job.")


class BatchRejected(BaseModel):
    """An item that was refused (and created nothing), with its problem."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0, description="The item's position in the request.")
    code: str = Field(description="Stable snake_case identifier, as in a problem's ``code``.")
    detail: str = Field(description="What exactly is wrong, for a human.")


class BatchCreated(BaseModel):
    """``POST /v1/batches``'s answer: which items became jobs and which were refused, by
    index (partial acceptance)."""

    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID
    items_submitted: int = Field(ge=1)
    items_accepted: int = Field(ge=1)
    items_rejected: int = Field(ge=0)
    accepted: list[BatchAccepted | BatchExisting]
    rejected: list[BatchRejected]


class BatchOut(BaseModel):
    """A batch as ``GET /v1/batches/{id}`` returns it (and as the ``batch.completed``
    webhook's ``data`` carries it). Times are UTC."""

    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID
    created_at: datetime
    completed_at: datetime | None = Field(
        description="When its last item ended; null while any is queued or running."
    )
    items_submitted: int
    items_accepted: int
    counts: dict[JobStatus, int] = Field(description="Its jobs by status, every status present.")
    progress: float = Field(ge=0, le=1, description="Finished items / accepted items.")
    callback_url: str | None = Field(description="Where ``batch.completed`` is sent.")
    item_events: bool = Field(description="Whether items' job.* events go there too.")
    retry_of: uuid.UUID | None = Field(
        description="The batch whose failed items this one runs again (null: an original)."
    )


class BatchList(BaseModel):
    """One page of the caller's tenant's batches, newest first."""

    model_config = ConfigDict(extra="forbid")

    batches: list[BatchOut]
    next_cursor: str | None = Field(description="Pass as ``cursor`` for the next page.")


class BatchRetryRequest(BaseModel):
    """``POST /v1/batches/{id}/retry``'s optional body."""

    model_config = ConfigDict(extra="forbid")

    error_codes: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Only retry items that failed with one of these ``error.code`` values "
        "(default: every failed item).",
    )


class BatchRetried(BatchCreated):
    """``POST /v1/batches/{id}/retry``'s answer: the new batch, one job per failed item
    (``index`` is the item's index in the original batch)."""

    retry_of: uuid.UUID = Field(description="The original batch.")


class BatchCanceled(BatchOut):
    """``DELETE /v1/batches/{id}``'s answer: the batch after its queued jobs were canceled."""

    canceled: int = Field(ge=0, description="Jobs this request canceled.")


class BatchResultLine(BaseModel):
    """One line of ``GET /v1/batches/{id}/results``: a finished item of the batch."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0, description="The item's position in the request.")
    id: uuid.UUID
    metadata: Any = Field(description="The item's ``metadata``, as sent.")
    status: JobStatus
    result: str | None
    result_json: Any
    action: str | None
    policy_version: str | None = Field(description=POLICY_VERSION)
    model_revision: str | None = Field(description=MODEL_REVISION)
    cached: bool
    error: ErrorOut | None

    @classmethod
    def from_job(cls, job: Job) -> BatchResultLine:
        if job.item_index is None:  # every job of a batch has one (api/batches.py)
            raise ValueError(f"job {job.id} has no item_index; it is not a batch item")
        error = None
        if job.error_code is not None:
            error = ErrorOut(code=job.error_code, message=job.error_message or "")
        return cls(
            index=job.item_index,
            id=job.id,
            metadata=job.item_metadata,
            status=job.status,
            result=job.result,
            result_json=job.result_json,
            action=job.action,
            policy_version=job.policy_version,
            model_revision=job.model_revision,
            cached=job.cached,
            error=error,
        )
