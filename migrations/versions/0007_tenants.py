"""Tenants: keys belong to one; jobs, batches and webhook events are scoped to it.

Every existing key becomes the only key of a tenant of its own, with the same id, the
key's name (made unique where names repeat) and its webhook secrets, so everything a key
could see before, its tenant sees now, and receivers keep verifying signatures.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared.models import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_SECRET_COLUMNS = ("webhook_secret", "previous_webhook_secret", "previous_secret_expires_at")


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("webhook_secret", sa.String(100), nullable=False),
        sa.Column("previous_webhook_secret", sa.String(100), nullable=True),
        sa.Column("previous_secret_expires_at", UTCDateTime(), nullable=True),
    )
    _one_tenant_per_key()

    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("tenant_id", sa.Uuid(), nullable=True))
    op.execute("UPDATE api_keys SET tenant_id = id")
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("tenant_id", existing_type=sa.Uuid(), nullable=False)
        batch.create_foreign_key("fk_api_keys_tenant_id", "tenants", ["tenant_id"], ["id"])
        for column in _SECRET_COLUMNS:
            batch.drop_column(column)
    op.create_index("ix_api_keys_tenant_id", "api_keys", ["tenant_id"])

    for index in ("ux_jobs_idempotency", "ix_jobs_listing", "ix_jobs_key_status"):
        op.drop_index(index, table_name="jobs")
    op.drop_index("ix_jobs_api_key_id", table_name="jobs")
    op.drop_index("ix_batches_api_key_id", table_name="batches")
    for table in ("jobs", "batches", "webhook_events"):
        _add_tenant_id(table)
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_column("api_key_id")
    op.create_index("ux_jobs_idempotency", "jobs", ["tenant_id", "idempotency_key"], unique=True)
    op.create_index("ix_jobs_listing", "jobs", ["tenant_id", "created_at", "id"])
    op.create_index("ix_jobs_tenant_status", "jobs", ["tenant_id", "status"])
    op.create_index("ix_batches_tenant_id", "batches", ["tenant_id"])


def _one_tenant_per_key() -> None:
    """A tenant per key, with the key's id, name and secrets; a name that several keys
    share gets the key's prefix appended (tenant names are unique)."""
    secrets = ", ".join(_SECRET_COLUMNS)
    op.execute(
        f"INSERT INTO tenants (id, name, created_at, {secrets}) "
        "SELECT id, CASE WHEN EXISTS (SELECT 1 FROM api_keys other "
        "WHERE other.name = api_keys.name AND other.id <> api_keys.id) "
        "THEN name || ' (' || prefix || ')' ELSE name END, "
        f"created_at, {secrets} FROM api_keys"
    )


def _add_tenant_id(table: str) -> None:
    """``tenant_id`` on ``table``, filled from the key that created each row (migrated
    tenants share their key's id), then NOT NULL with a foreign key."""
    with op.batch_alter_table(table) as batch:
        batch.add_column(sa.Column("tenant_id", sa.Uuid(), nullable=True))
    op.execute(
        f"UPDATE {table} SET tenant_id = "
        "(SELECT api_keys.tenant_id FROM api_keys WHERE api_keys.id = "
        f"{table}.api_key_id)"
    )
    with op.batch_alter_table(table) as batch:
        batch.alter_column("tenant_id", existing_type=sa.Uuid(), nullable=False)
        batch.create_foreign_key(f"fk_{table}_tenant_id", "tenants", ["tenant_id"], ["id"])


def downgrade() -> None:
    for index, table in (
        ("ix_batches_tenant_id", "batches"),
        ("ix_jobs_tenant_status", "jobs"),
        ("ix_jobs_listing", "jobs"),
        ("ux_jobs_idempotency", "jobs"),
        ("ix_api_keys_tenant_id", "api_keys"),
    ):
        op.drop_index(index, table_name=table)
    with op.batch_alter_table("webhook_events") as batch:
        batch.add_column(sa.Column("api_key_id", sa.Uuid(), nullable=True))
    # An event goes back to its tenant's oldest key.
    op.execute(
        "UPDATE webhook_events SET api_key_id = (SELECT api_keys.id FROM api_keys "
        "WHERE api_keys.tenant_id = webhook_events.tenant_id "
        "ORDER BY api_keys.created_at LIMIT 1)"
    )
    with op.batch_alter_table("webhook_events") as batch:
        batch.alter_column("api_key_id", existing_type=sa.Uuid(), nullable=False)
        batch.create_foreign_key("fk_webhook_events_api_key_id", "api_keys", ["api_key_id"], ["id"])
    for table in ("webhook_events", "batches", "jobs"):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"fk_{table}_tenant_id", type_="foreignkey")
            batch.drop_column("tenant_id")
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("webhook_secret", sa.String(100), nullable=True))
        batch.add_column(sa.Column("previous_webhook_secret", sa.String(100), nullable=True))
        batch.add_column(sa.Column("previous_secret_expires_at", UTCDateTime(), nullable=True))
    for column in _SECRET_COLUMNS:
        op.execute(
            f"UPDATE api_keys SET {column} = "
            f"(SELECT tenants.{column} FROM tenants WHERE tenants.id = api_keys.tenant_id)"
        )
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("webhook_secret", existing_type=sa.String(100), nullable=False)
        batch.drop_constraint("fk_api_keys_tenant_id", type_="foreignkey")
        batch.drop_column("tenant_id")
    op.create_index("ix_batches_api_key_id", "batches", ["api_key_id"])
    op.create_index("ix_jobs_api_key_id", "jobs", ["api_key_id"])
    op.create_index("ux_jobs_idempotency", "jobs", ["api_key_id", "idempotency_key"], unique=True)
    op.create_index("ix_jobs_listing", "jobs", ["api_key_id", "created_at", "id"])
    op.create_index("ix_jobs_key_status", "jobs", ["api_key_id", "status"])
    op.drop_table("tenants")
