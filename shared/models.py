"""SQLAlchemy 2 models: the database is the source of truth for every job.

Portable across PostgreSQL (production) and SQLite (embedded): UUIDs use the generic
``Uuid`` type, enums are stored as VARCHAR with a CHECK constraint, timestamps are UTC.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    Uuid,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware-UTC datetimes on every backend.

    Stored naive in UTC (SQLite has no time zones), returned aware in UTC; an aware value
    in another zone is converted, a naive one is refused so no local time sneaks in.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class JobStatus(enum.StrEnum):
    """Lifecycle of a job. Moves only forward: queued → running → succeeded | failed,
    queued → failed (expired before it ran), and queued | running → canceled; who may
    make which move is ``shared.lifecycle.TRANSITIONS``."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


class Priority(enum.StrEnum):
    """Which queue a job travels on; workers always claim interactive work first."""

    INTERACTIVE = "interactive"
    BULK = "bulk"


def _enum_column(kind: type[enum.StrEnum], name: str) -> Enum:
    return Enum(
        kind,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Tenant(Base):
    """Who owns jobs: every API key belongs to one tenant, and jobs, batches, webhook
    events and deliveries are visible to all of its keys and to nobody else.

    ``webhook_secret`` (``whsec_…``) signs the tenant's webhooks and must be kept in
    clear to compute signatures. After a rotation the previous secret keeps signing too
    (both signatures are sent) until ``previous_secret_expires_at``.
    """

    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    webhook_secret: Mapped[str] = mapped_column(String(100))
    previous_webhook_secret: Mapped[str | None] = mapped_column(String(100), nullable=True)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Share of workers against other tenants with queued work (``lifecycle.claim``).
    weight: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # Days a finished job keeps its content (``shared.retention``): NULL follows
    # ``SIGHTLINE_RETENTION_DAYS``, 0 keeps it forever.
    retention_days: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ApiKey(Base):
    """A caller's credential, belonging to one ``tenant`` (loaded with the key). Only the
    SHA-256 of the key is stored; the key itself is shown once, at creation.

    ``callback_url`` is the default destination for jobs submitted with this key without
    one. A key past ``expires_at`` is refused like a revoked one. ``rate_limit``
    (``"N/S"``: N requests per S seconds, counted per key) and ``max_queued`` (submissions
    with this key are refused while its tenant has that many jobs queued) override the
    server-wide defaults.
    """

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    callback_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    rate_limit: Mapped[str | None] = mapped_column(String(32), nullable=True)
    max_queued: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tenant: Mapped[Tenant] = relationship(lazy="joined")


class Batch(Base):
    """A bulk submission: up to thousands of jobs accepted in one request.

    Its items are ordinary jobs (``jobs.batch_id``, ``item_index``, ``item_metadata``)
    on the ``bulk`` queue. ``completed_at`` is set once, when its last job ends; a
    ``batch.completed`` webhook goes to ``callback_url`` then.
    """

    __tablename__ = "batches"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id"), index=True)
    api_key_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("api_keys.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    items_submitted: Mapped[int] = mapped_column(Integer)
    items_accepted: Mapped[int] = mapped_column(Integer)
    callback_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    item_events: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    retry_of: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("batches.id"), nullable=True
    )

    __table_args__ = (
        # Listing: newest first per tenant, keyset on (created_at, id).
        Index("ix_batches_listing", "tenant_id", "created_at", "id"),
    )


class Job(Base):
    """One inference request: an image (by blob key), a prompt, options, and its outcome.

    ``options`` holds the generation settings as JSON (``max_new_tokens``,
    ``temperature``); ``response_schema`` the JSON schema the answer must follow (NULL for
    text) and ``thinking`` the chat template's switch. A job from a ``preset`` keeps a
    copy of its ``policy``; the worker stores the parsed answer in ``result_json``, any
    ``<think>`` section in ``reasoning``, the policy's verdict in ``action`` and the
    version of the policy that reached it in ``policy_version``; ``model_revision`` is
    the loaded checkpoint that answered (``worker.model.base.ModelBackend``).
    ``attempts`` counts claims by a worker. While running,
    ``claim_token`` identifies the claim and ``lease_expires_at`` its reservation: a lease
    in the past means the worker that claimed it is presumed dead, and only the holder of
    the current token may write a result. ``enqueued_at`` is when its wake-up message was
    last sent; ``deadline_at`` is when a job still queued fails as ``expired``.
    ``idempotency_key`` (unique per tenant) and ``request_sha256`` (a fingerprint of the
    submission) let a retried ``POST`` return the original job. ``queue_ms`` is
    created→started, ``inference_ms`` the forward pass that produced the result.

    ``content_deleted_at`` is set when retention emptied the row into a tombstone
    (:data:`shared.retention.TOMBSTONE_KEEPS` says which columns survive); a purged job
    has no row at all.
    """

    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id"))
    api_key_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("api_keys.id"))
    status: Mapped[JobStatus] = mapped_column(
        _enum_column(JobStatus, "job_status"), default=JobStatus.QUEUED
    )
    priority: Mapped[Priority] = mapped_column(
        _enum_column(Priority, "job_priority"), default=Priority.INTERACTIVE
    )
    prompt: Mapped[str] = mapped_column(Text)
    image_key: Mapped[str] = mapped_column(String(200))
    image_sha256: Mapped[str] = mapped_column(String(64))
    image_width: Mapped[int] = mapped_column(Integer)
    image_height: Mapped[int] = mapped_column(Integer)
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    response_schema: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    thinking: Mapped[bool] = mapped_column(Boolean, default=True)
    preset: Mapped[str | None] = mapped_column(String(64), nullable=True)
    policy: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)
    result_json: Mapped[Any] = mapped_column(JSON, nullable=True)
    reasoning: Mapped[str | None] = mapped_column(Text, nullable=True)
    action: Mapped[str | None] = mapped_column(String(16), nullable=True)
    policy_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    output_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    claim_token: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    deadline_at: Mapped[datetime] = mapped_column(UTCDateTime)
    callback_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    webhook_events: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    batch_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("batches.id"), nullable=True
    )
    item_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    item_metadata: Mapped[Any] = mapped_column(JSON, nullable=True)
    cache_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    use_cache: Mapped[bool] = mapped_column(Boolean, default=True)
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    model_revision: Mapped[str | None] = mapped_column(String(64), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    batch_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    queue_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    inference_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    content_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        # The claim query: oldest queued work, interactive first.
        Index("ix_jobs_claim", "status", "priority", "created_at"),
        # The fair claim: each tenant's queued work of one priority, oldest first.
        Index(
            "ix_jobs_tenant_queue",
            "tenant_id",
            "priority",
            "created_at",
            postgresql_where=text("status = 'queued'"),
            sqlite_where=text("status = 'queued'"),
        ),
        # The fair claim's window: jobs each tenant started lately.
        Index("ix_jobs_started", "started_at", "tenant_id", "priority"),
        Index("ux_jobs_idempotency", "tenant_id", "idempotency_key", unique=True),
        # Listing: newest first per tenant, keyset on (created_at, id).
        Index("ix_jobs_listing", "tenant_id", "created_at", "id"),
        Index("ix_jobs_batch", "batch_id", "item_index"),
        # The queue cap counts a tenant's queued jobs at every submission.
        Index("ix_jobs_tenant_status", "tenant_id", "status"),
        # The result cache: a finished job with the same request and model revision.
        Index("ix_jobs_cache", "cache_key", "model_revision", "finished_at"),
        # Retention: each tenant's jobs that still hold content, oldest finished first.
        Index(
            "ix_jobs_retention",
            "tenant_id",
            "finished_at",
            postgresql_where=text("content_deleted_at IS NULL"),
            sqlite_where=text("content_deleted_at IS NULL"),
        ),
        # Blob release: does any job still name this image?
        Index("ix_jobs_image", "image_key"),
    )


class EventStatus(enum.StrEnum):
    """A webhook event is ``pending`` until a 2xx answer (``delivered``), or until its
    retries run out or the receiver answers 410 Gone (``failed``). An event whose
    endpoint is disabled is ``kept``: never attempted again until redelivered."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    KEPT = "kept"


class WebhookEndpoint(Base):
    """Where a tenant's webhooks go: (tenant, scheme, host, port) of their callback URLs
    (paths and query strings do not make new endpoints), recorded at its first attempt.

    ``failing_since`` is the first failed attempt since the last delivered one (NULL while
    healthy). An endpoint that fails every attempt for ``endpoint_disable_after_s`` is
    disabled (``disabled_at``): no attempt is made to it until its tenant enables it again.
    """

    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id"))
    scheme: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        Index("ux_webhook_endpoints_origin", "tenant_id", "scheme", "host", "port", unique=True),
    )


class WebhookEvent(Base):
    """The outbox: one event per job (or batch) and type, written in the same transaction
    as the job's final state (or the batch's last job's), so a crash between "result
    saved" and "webhook sent" loses nothing.

    ``id`` is the Standard Webhooks ``webhook-id`` (the same on every retry) and
    ``payload`` the exact body, frozen when the event is written. ``next_attempt_at`` is
    when the next attempt is due; ``locked_until`` reserves an attempt in progress;
    ``enqueued_at`` is when a wake-up was last sent (NULL: none outstanding).
    ``endpoint_id`` is set at the first attempt (the endpoint the URL belongs to).
    """

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id"), index=True, nullable=True
    )
    batch_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("batches.id"), index=True, nullable=True
    )
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id"))
    type: Mapped[str] = mapped_column(String(40))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[EventStatus] = mapped_column(
        _enum_column(EventStatus, "event_status"), default=EventStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("webhook_endpoints.id"), index=True, nullable=True
    )

    __table_args__ = (
        Index("ux_webhook_events_job_type", "job_id", "type", unique=True),
        # Listing and redelivery: a tenant's events by time, keyset on (created_at, id).
        Index("ix_webhook_events_listing", "tenant_id", "created_at", "id"),
        Index("ux_webhook_events_batch_type", "batch_id", "type", unique=True),
        Index("ix_webhook_events_due", "status", "next_attempt_at"),
    )


class WebhookDelivery(Base):
    """One attempt to deliver an event: what was answered, how fast, what comes next.

    ``status_code`` is NULL when no HTTP answer came (refused, timeout, SSRF guard);
    ``error`` then says why. ``next_attempt_at`` is NULL when no retry follows.
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(40), ForeignKey("webhook_events.id"), index=True)
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id"), index=True, nullable=True
    )
    url: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latency_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class BlobRelease(Base):
    """An image key some job stopped naming (its content was purged or retained away):
    a candidate for deletion from the blob store. ``shared.blob_release`` deletes the
    blob once no job names it and nothing wrote it for a grace period, then the row."""

    __tablename__ = "blob_releases"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    released_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PurgeScope(enum.StrEnum):
    """What one purge erased."""

    JOB = "job"
    BATCH = "batch"
    TENANT = "tenant"


class Purge(Base):
    """The audit trail of erasures: who purged what, when, and how many jobs went. It
    holds ids and counts only, never content, and no foreign keys: it outlives what it
    names. ``api_key_id`` is the caller's key for an API purge, ``operator`` the
    operator's login for a CLI one."""

    __tablename__ = "purges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    purged_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    scope: Mapped[PurgeScope] = mapped_column(_enum_column(PurgeScope, "purge_scope"))
    target_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    operator: Mapped[str | None] = mapped_column(String(200), nullable=True)
    jobs: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_purges_tenant", "tenant_id", "purged_at"),)
