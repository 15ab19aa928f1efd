"""Keyset pagination for ``GET /v1/jobs``: newest first, stable under concurrent inserts.

The cursor is the ``(created_at, id)`` of the last job of the previous page, opaque to the
caller (URL-safe base64). A page continues strictly after it in ``(created_at DESC, id
DESC)`` order, so jobs inserted meanwhile (which are newer) never shift, repeat or hide
rows of later pages.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, and_, or_, select

from shared.error_codes import ErrorCode
from shared.errors import ValidationFailed
from shared.models import Job, JobStatus

MAX_PAGE = 500
DEFAULT_PAGE = 50
# Filters matched exactly, each at most as long as its column.
_EXACT = {"model_revision": 64, "policy_version": 64}


@dataclass(frozen=True)
class JobFilter:
    """The query string of ``GET /v1/jobs``, validated."""

    status: JobStatus | None
    action: str | None
    batch_id: uuid.UUID | None
    model_revision: str | None
    policy_version: str | None
    created_after: datetime | None
    limit: int
    after: tuple[datetime, uuid.UUID] | None

    @classmethod
    def parse(cls, args: dict[str, str]) -> JobFilter:
        """Parse and check the query arguments; 422 naming the bad one."""
        unknown = set(args) - {
            *_EXACT,
            "status",
            "action",
            "batch_id",
            "created_after",
            "limit",
            "cursor",
        }
        if unknown:
            raise ValidationFailed(
                f"unknown query parameter(s): {sorted(unknown)}", code=ErrorCode.INVALID_QUERY
            )
        status = None
        if "status" in args:
            try:
                status = JobStatus(args["status"])
            except ValueError as exc:
                allowed = ", ".join(s.value for s in JobStatus)
                raise ValidationFailed(
                    f"status must be one of {allowed}", code=ErrorCode.INVALID_QUERY
                ) from exc
        action = args.get("action")
        if action is not None and action not in ("allow", "flag", "block"):
            raise ValidationFailed(
                "action must be allow, flag or block", code=ErrorCode.INVALID_QUERY
            )
        batch_id = None
        if "batch_id" in args:
            try:
                batch_id = uuid.UUID(args["batch_id"])
            except ValueError as exc:
                raise ValidationFailed(
                    "batch_id must be a batch's id", code=ErrorCode.INVALID_QUERY
                ) from exc
        return cls(
            status=status,
            action=action,
            batch_id=batch_id,
            model_revision=_exact(args, "model_revision"),
            policy_version=_exact(args, "policy_version"),
            created_after=_timestamp(args["created_after"]) if "created_after" in args else None,
            limit=_limit(args.get("limit")),
            after=decode_cursor(args["cursor"]) if "cursor" in args else None,
        )

    def query(self, tenant_id: uuid.UUID) -> Select[Job]:
        """One page of ``tenant_id``'s jobs (plus one row, to know whether another page
        follows)."""
        query = select(Job).where(Job.tenant_id == tenant_id)
        if self.status is not None:
            query = query.where(Job.status == self.status)
        if self.action is not None:
            query = query.where(Job.action == self.action)
        if self.batch_id is not None:
            query = query.where(Job.batch_id == self.batch_id)
        if self.model_revision is not None:
            query = query.where(Job.model_revision == self.model_revision)
        if self.policy_version is not None:
            query = query.where(Job.policy_version == self.policy_version)
        if self.created_after is not None:
            query = query.where(Job.created_at > self.created_after)
        if self.after is not None:
            created, job_id = self.after
            query = query.where(
                or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id))
            )
        return query.order_by(Job.created_at.desc(), Job.id.desc()).limit(self.limit + 1)


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Undo :func:`encode_cursor`; 422 for anything it did not produce."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, job_id = raw.partition("|")
        return datetime.fromisoformat(created), uuid.UUID(job_id)
    except ValueError as exc:
        raise ValidationFailed(
            "cursor is not one this API returned", code=ErrorCode.INVALID_QUERY
        ) from exc


def _exact(args: dict[str, str], name: str) -> str | None:
    """``args[name]`` for an exact match, if given; 422 if empty or longer than the column."""
    value = args.get(name)
    if value is not None and not 1 <= len(value) <= _EXACT[name]:
        raise ValidationFailed(
            f"{name} must be 1 to {_EXACT[name]} characters", code=ErrorCode.INVALID_QUERY
        )
    return value


def _timestamp(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValidationFailed(
            f"created_after must be an ISO 8601 timestamp, got {value!r}",
            code=ErrorCode.INVALID_QUERY,
        ) from exc
    if parsed.tzinfo is None:
        raise ValidationFailed(
            "created_after needs a time zone (e.g. Z)", code=ErrorCode.INVALID_QUERY
        )
    return parsed


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_PAGE
    if not value.isdigit() or not 1 <= int(value) <= MAX_PAGE:
        raise ValidationFailed(
            f"limit must be an integer from 1 to {MAX_PAGE}", code=ErrorCode.INVALID_QUERY
        )
    return int(value)
