"""Bulk job inserts (COPY on PostgreSQL, executemany on SQLite) write exactly what the
ORM writes, column by column."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from api.job_insert import insert_jobs
from api.submission import BLANK_ROW
from migrations import upgrade
from shared.db import create_engine_for, session_factory, transaction
from shared.keys import create_key
from shared.models import Job, JobStatus, Priority, utcnow
from shared.settings import Settings


def _fields(tenant_id: uuid.UUID, key_id: uuid.UUID, index: int) -> dict[str, Any]:
    """A job's columns as a submission sets them (the rest left to defaults)."""
    now = utcnow()
    return dict(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        api_key_id=key_id,
        status=JobStatus.QUEUED,
        priority=Priority.BULK,
        prompt=f"prompt {index} with 'quotes', tabs\tand\nnewlines \\ é",
        image_key=f"ab/{index}.png",
        image_sha256="a" * 64,
        image_width=3,
        image_height=4,
        options={"max_new_tokens": 8, "temperature": 0.0},
        response_schema={"type": "object"} if index % 10 else None,
        created_at=now,
        enqueued_at=now,
        deadline_at=now + timedelta(hours=1),
        item_index=index,
        item_metadata={"nested": [1, None, "x"]} if index % 10 else None,
        idempotency_key=f"key-{index}",
    )


def test_bulk_insert_writes_what_the_orm_writes(database_settings: Settings) -> None:
    upgrade(database_settings)
    engine = create_engine_for(database_settings)
    sessions = session_factory(engine)
    with transaction(sessions) as session:
        key, _ = create_key(session, "bulk")
        tenant_id, key_id = key.tenant_id, key.id
    by_orm = [Job(**_fields(tenant_id, key_id, i)) for i in range(2)]
    in_bulk = [BLANK_ROW | _fields(tenant_id, key_id, i + 10) for i in range(2)]
    with transaction(sessions) as session:
        session.add_all(by_orm)
    with transaction(sessions) as session:
        insert_jobs(session, in_bulk)

    with sessions() as session:
        loaded = {job.id: job for job in session.scalars(select(Job))}
    engine.dispose()
    skip = {
        "id",
        "prompt",
        "image_key",
        "item_index",
        "idempotency_key",
        "created_at",
        "enqueued_at",
        "deadline_at",
    }
    for orm_job, bulk_job in zip(by_orm, in_bulk, strict=True):
        written, expected = loaded[bulk_job["id"]], loaded[orm_job.id]
        for column in Job.__table__.columns:
            if column.key not in skip:
                assert getattr(written, column.key) == getattr(expected, column.key), column.key
        for name in ("prompt", "created_at", "deadline_at", "item_index"):
            assert getattr(written, name) == bulk_job[name], name
