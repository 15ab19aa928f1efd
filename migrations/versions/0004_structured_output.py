"""Structured output: response schema, thinking, presets, parsed answer, action; listing.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("response_schema", sa.JSON(), nullable=True))
        batch.add_column(
            sa.Column("thinking", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch.add_column(sa.Column("preset", sa.String(64), nullable=True))
        batch.add_column(sa.Column("policy", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("result_json", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("reasoning", sa.Text(), nullable=True))
        batch.add_column(sa.Column("action", sa.String(16), nullable=True))
    op.create_index("ix_jobs_listing", "jobs", ["api_key_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_listing", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        for column in (
            "action",
            "reasoning",
            "result_json",
            "policy",
            "preset",
            "thinking",
            "response_schema",
        ):
            batch.drop_column(column)
