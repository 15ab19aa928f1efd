"""Migrations on real PostgreSQL and SQLite: the schema they build is the models' schema,
and the tenants migration carries existing keys, jobs and webhook events over."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from migrations import downgrade, upgrade
from shared.db import create_engine_for
from shared.models import Base
from shared.settings import Settings


def test_migrations_build_exactly_the_models_schema(database_settings: Settings) -> None:
    upgrade(database_settings)
    engine = create_engine_for(database_settings)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []


def test_each_key_becomes_a_tenant_that_keeps_its_jobs_and_secrets(
    database_settings: Settings,
) -> None:
    upgrade(database_settings, "0006")
    engine = create_engine_for(database_settings)
    keys = [
        ("00000000-0000-0000-0000-00000000000a", "pipeline", "sl_aaaaaaa", "whsec_a"),
        ("00000000-0000-0000-0000-00000000000b", "pipeline", "sl_bbbbbbb", "whsec_b"),
        ("00000000-0000-0000-0000-00000000000c", "reviewer", "sl_ccccccc", "whsec_c"),
    ]
    with engine.begin() as db:
        for key_id, name, prefix, secret in keys:
            db.execute(
                sa.text(
                    "INSERT INTO api_keys (id, name, prefix, key_sha256, created_at, "
                    "webhook_secret) VALUES (:id, :name, :prefix, :sha, :now, :secret)"
                ),
                {
                    "id": _uuid(db, key_id),
                    "name": name,
                    "prefix": prefix,
                    "sha": prefix * 6,
                    "now": "2026-01-01 00:00:00",
                    "secret": secret,
                },
            )
        db.execute(
            sa.text(
                "INSERT INTO jobs (id, api_key_id, status, priority, prompt, image_key, "
                "image_sha256, image_width, image_height, options, thinking, created_at, "
                "deadline_at, attempts, use_cache, cached) VALUES (:id, :key, 'succeeded', "
                "'interactive', 'p', 'k', 's', 1, 1, '{}', true, :now, :now, 1, true, false)"
            ),
            {
                "id": _uuid(db, "00000000-0000-0000-0000-0000000000f1"),
                "key": _uuid(db, keys[2][0]),
                "now": "2026-01-01 00:00:00",
            },
        )
        db.execute(
            sa.text(
                "INSERT INTO webhook_events (id, job_id, api_key_id, type, url, payload, "
                "status, attempts, created_at) VALUES ('msg_1', :job, :key, 'job.succeeded', "
                "'http://x', '{}', 'pending', 0, :now)"
            ),
            {
                "job": _uuid(db, "00000000-0000-0000-0000-0000000000f1"),
                "key": _uuid(db, keys[2][0]),
                "now": "2026-01-01 00:00:00",
            },
        )

    upgrade(database_settings)

    with engine.connect() as db:
        tenants = {
            str(row.id)[-1]: (row.name, row.webhook_secret)
            for row in db.execute(sa.text("SELECT id, name, webhook_secret FROM tenants"))
        }
        job_tenant = db.scalar(sa.text("SELECT tenant_id FROM jobs"))
        event_tenant = db.scalar(sa.text("SELECT tenant_id FROM webhook_events"))
    assert tenants == {
        "a": ("pipeline (sl_aaaaaaa)", "whsec_a"),
        "b": ("pipeline (sl_bbbbbbb)", "whsec_b"),
        "c": ("reviewer", "whsec_c"),
    }
    assert str(job_tenant).endswith("c") and str(event_tenant).endswith("c")

    downgrade(database_settings, "0006")
    with engine.connect() as db:
        secrets = db.execute(sa.text("SELECT name, webhook_secret FROM api_keys")).all()
        event_key = db.scalar(sa.text("SELECT api_key_id FROM webhook_events"))
    assert sorted(secrets) == [
        ("pipeline", "whsec_a"),
        ("pipeline", "whsec_b"),
        ("reviewer", "whsec_c"),
    ]
    assert str(event_key).endswith("c")
    upgrade(database_settings)
    engine.dispose()


def _uuid(db: sa.Connection, value: str) -> str:
    """How a UUID column takes a literal: SQLite's ``Uuid`` stores 32 hex digits."""
    return value.replace("-", "") if db.dialect.name == "sqlite" else value
