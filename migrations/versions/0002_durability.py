"""Durability: claim tokens, enqueue times, deadlines, idempotency keys.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared.models import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("claim_token", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("enqueued_at", UTCDateTime(), nullable=True))
        # Existing rows get a deadline far enough away never to expire them by surprise.
        batch.add_column(
            sa.Column(
                "deadline_at",
                UTCDateTime(),
                nullable=False,
                server_default=sa.text("'2999-01-01 00:00:00'"),
            )
        )
        batch.add_column(sa.Column("idempotency_key", sa.String(255), nullable=True))
        batch.add_column(sa.Column("request_sha256", sa.String(64), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("deadline_at", server_default=None)
    op.create_index("ux_jobs_idempotency", "jobs", ["api_key_id", "idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_jobs_idempotency", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        for column in (
            "request_sha256",
            "idempotency_key",
            "deadline_at",
            "enqueued_at",
            "claim_token",
        ):
            batch.drop_column(column)
