"""Keyset pagination for ``GET /v1/jobs`` (and the other lists: batches, deliveries):
newest first, stable under concurrent inserts.

The cursor is the ``(created_at, id)`` of the last row of the previous page, opaque to the
caller (URL-safe base64). A page continues strictly after it in ``(created_at DESC, id
DESC)`` order, so jobs inserted meanwhile (which are newer) never shift, repeat or hide
rows of later pages.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import Select, and_, or_, select

from shared.error_codes import ErrorCode
from shared.errors import ValidationFailed
from shared.models import Batch, EventStatus, Job, JobStatus, WebhookEvent

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
        _only(
            args,
            {*_EXACT, "status", "action", "batch_id", "created_after", "limit", "cursor"},
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
        created_after = None
        if "created_after" in args:
            try:
                created_after = parse_timestamp(args["created_after"], "created_after")
            except ValueError as exc:
                raise ValidationFailed(str(exc), code=ErrorCode.INVALID_QUERY) from exc
        return cls(
            status=status,
            action=action,
            batch_id=batch_id,
            model_revision=_exact(args, "model_revision"),
            policy_version=_exact(args, "policy_version"),
            created_after=created_after,
            limit=page_limit(args.get("limit")),
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


BATCH_STATES = ("open", "completed")


@dataclass(frozen=True)
class BatchFilter:
    """The query string of ``GET /v1/batches``, validated: ``status`` is ``open`` (an
    item is queued or running) or ``completed``."""

    status: str | None
    limit: int
    after: tuple[datetime, uuid.UUID] | None

    @classmethod
    def parse(cls, args: dict[str, str]) -> BatchFilter:
        """Parse and check the query arguments; 422 naming the bad one."""
        _only(args, {"status", "limit", "cursor"})
        status = args.get("status")
        if status is not None and status not in BATCH_STATES:
            raise ValidationFailed(
                f"status must be one of {', '.join(BATCH_STATES)}", code=ErrorCode.INVALID_QUERY
            )
        return cls(
            status=status,
            limit=page_limit(args.get("limit")),
            after=decode_cursor(args["cursor"]) if "cursor" in args else None,
        )

    def query(self, tenant_id: uuid.UUID) -> Select[Batch]:
        """One page of ``tenant_id``'s batches (plus one row)."""
        query = select(Batch).where(Batch.tenant_id == tenant_id)
        if self.status == "open":
            query = query.where(Batch.completed_at.is_(None))
        elif self.status == "completed":
            query = query.where(Batch.completed_at.is_not(None))
        if self.after is not None:
            created, batch_id = self.after
            query = query.where(
                or_(
                    Batch.created_at < created,
                    and_(Batch.created_at == created, Batch.id < batch_id),
                )
            )
        return query.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(self.limit + 1)


@dataclass(frozen=True)
class DeliveryFilter:
    """The query string of ``GET /v1/deliveries``, validated."""

    status: EventStatus | None
    limit: int
    after: tuple[datetime, str] | None

    @classmethod
    def parse(cls, args: dict[str, str]) -> DeliveryFilter:
        """Parse and check the query arguments; 422 naming the bad one."""
        _only(args, {"status", "limit", "cursor"})
        status = None
        if "status" in args:
            try:
                status = EventStatus(args["status"])
            except ValueError as exc:
                allowed = ", ".join(s.value for s in EventStatus)
                raise ValidationFailed(
                    f"status must be one of {allowed}", code=ErrorCode.INVALID_QUERY
                ) from exc
        return cls(
            status=status,
            limit=page_limit(args.get("limit")),
            after=decode_text_cursor(args["cursor"]) if "cursor" in args else None,
        )

    def query(self, tenant_id: uuid.UUID) -> Select[WebhookEvent]:
        """One page of ``tenant_id``'s webhook events (plus one row)."""
        query = select(WebhookEvent).where(WebhookEvent.tenant_id == tenant_id)
        if self.status is not None:
            query = query.where(WebhookEvent.status == self.status)
        if self.after is not None:
            created, event_id = self.after
            query = query.where(
                or_(
                    WebhookEvent.created_at < created,
                    and_(WebhookEvent.created_at == created, WebhookEvent.id < event_id),
                )
            )
        order = (WebhookEvent.created_at.desc(), WebhookEvent.id.desc())
        return query.order_by(*order).limit(self.limit + 1)


def _only(args: dict[str, str], known: set[str]) -> None:
    unknown = set(args) - known
    if unknown:
        raise ValidationFailed(
            f"unknown query parameter(s): {sorted(unknown)}", code=ErrorCode.INVALID_QUERY
        )


class Keyed(Protocol):
    """A listed row: ordered by ``(created_at, id)``."""

    @property
    def created_at(self) -> datetime: ...

    @property
    def id(self) -> object: ...


def encode_cursor(row: Keyed) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Undo :func:`encode_cursor` of a row with a UUID id; 422 for anything it did not
    produce."""
    created, row_id = decode_text_cursor(cursor)
    try:
        return created, uuid.UUID(row_id)
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


def decode_text_cursor(cursor: str) -> tuple[datetime, str]:
    """Undo :func:`encode_cursor` of a row with a text id; 422 for anything it did not
    produce."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, row_id = raw.partition("|")
        if not row_id:
            raise ValueError("no id")
        return datetime.fromisoformat(created), row_id
    except ValueError as exc:
        raise ValidationFailed(
            "cursor is not one this API returned", code=ErrorCode.INVALID_QUERY
        ) from exc


def parse_timestamp(value: str, name: str) -> datetime:
    """``value`` as an aware datetime; ``ValueError`` naming ``name`` unless it is ISO 8601
    with a time zone."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"{name} must be an ISO 8601 timestamp, got {value!r}") from exc
    if parsed.tzinfo is None:
        raise ValueError(f"{name} needs a time zone (e.g. Z)")
    return parsed


def page_limit(value: str | None) -> int:
    """The ``limit`` query argument: :data:`DEFAULT_PAGE` when absent; 422 unless an
    integer from 1 to :data:`MAX_PAGE`."""
    if value is None:
        return DEFAULT_PAGE
    if not value.isdigit() or not 1 <= int(value) <= MAX_PAGE:
        raise ValidationFailed(
            f"limit must be an integer from 1 to {MAX_PAGE}", code=ErrorCode.INVALID_QUERY
        )
    return int(value)
