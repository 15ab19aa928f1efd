"""Bulk batches, result cache, batch webhooks.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared.models import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("api_key_id", sa.Uuid(), sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("items_submitted", sa.Integer(), nullable=False),
        sa.Column("items_accepted", sa.Integer(), nullable=False),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_batches_api_key_id", "batches", ["api_key_id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("batch_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("item_index", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("item_metadata", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("cache_key", sa.String(64), nullable=True))
        batch.add_column(
            sa.Column("use_cache", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch.add_column(
            sa.Column("cached", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("model_revision", sa.String(64), nullable=True))
        batch.create_foreign_key("fk_jobs_batch_id", "batches", ["batch_id"], ["id"])
    op.create_index("ix_jobs_batch", "jobs", ["batch_id", "item_index"])
    op.create_index("ix_jobs_cache", "jobs", ["cache_key", "model_revision", "finished_at"])
    with op.batch_alter_table("webhook_events") as batch:
        batch.alter_column("job_id", existing_type=sa.Uuid(), nullable=True)
        batch.add_column(sa.Column("batch_id", sa.Uuid(), nullable=True))
        batch.create_foreign_key("fk_webhook_events_batch_id", "batches", ["batch_id"], ["id"])
    op.create_index("ix_webhook_events_batch_id", "webhook_events", ["batch_id"])
    op.create_index(
        "ux_webhook_events_batch_type", "webhook_events", ["batch_id", "type"], unique=True
    )
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.alter_column("job_id", existing_type=sa.Uuid(), nullable=True)


def downgrade() -> None:
    op.drop_index("ux_webhook_events_batch_type", table_name="webhook_events")
    op.drop_index("ix_webhook_events_batch_id", table_name="webhook_events")
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_constraint("fk_webhook_events_batch_id", type_="foreignkey")
        batch.drop_column("batch_id")
    op.drop_index("ix_jobs_cache", table_name="jobs")
    op.drop_index("ix_jobs_batch", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("fk_jobs_batch_id", type_="foreignkey")
        for column in (
            "model_revision",
            "cached",
            "use_cache",
            "cache_key",
            "item_metadata",
            "item_index",
            "batch_id",
        ):
            batch.drop_column(column)
    op.drop_table("batches")
