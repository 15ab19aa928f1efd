"""Pydantic schemas: what callers send and what they get back.

The API validates every request against these before anything is written, and renders
every job through :class:`JobOut`, so the HTTP contract lives in one place.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.models import Job, JobStatus, Priority


class JobOptions(BaseModel):
    """Generation settings of one job. Jobs with equal options can share a forward pass.

    ``max_new_tokens`` defaults to the server's setting and may not exceed its ceiling;
    ``temperature`` 0 is greedy decoding.
    """

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)


class JobRequest(BaseModel):
    """The non-image fields of ``POST /v1/jobs`` (JSON body or multipart form fields)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    prompt: str = Field(min_length=1)
    max_new_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    timeout_s: int | None = Field(
        default=None, ge=1, description="Seconds the job may wait in the queue before expiring."
    )


class ErrorOut(BaseModel):
    """Why a job failed: a stable ``code`` and a human ``message``."""

    code: str
    message: str


class ImageOut(BaseModel):
    """The stored (normalised) image: content hash and size in pixels."""

    sha256: str
    width: int
    height: int


class JobOut(BaseModel):
    """A job as ``GET /v1/jobs/{id}`` returns it. Times are UTC, durations milliseconds."""

    id: uuid.UUID
    status: JobStatus
    priority: Priority
    prompt: str
    options: dict[str, Any]
    image: ImageOut
    result: str | None
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

    @classmethod
    def from_job(cls, job: Job) -> JobOut:
        error = None
        if job.error_code is not None:
            error = ErrorOut(code=job.error_code, message=job.error_message or "")
        return cls(
            id=job.id,
            status=job.status,
            priority=job.priority,
            prompt=job.prompt,
            options=job.options,
            image=ImageOut(sha256=job.image_sha256, width=job.image_width, height=job.image_height),
            result=job.result,
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
        )
