"""API key expiry, per-key rate limit and queue cap.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared.models import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expires_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("rate_limit", sa.String(32), nullable=True))
        batch.add_column(sa.Column("max_queued", sa.Integer(), nullable=True))
    # The queue cap counts a key's queued jobs at every submission.
    op.create_index("ix_jobs_key_status", "jobs", ["api_key_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_jobs_key_status", table_name="jobs")
    with op.batch_alter_table("api_keys") as batch:
        for column in ("max_queued", "rate_limit", "expires_at"):
            batch.drop_column(column)
