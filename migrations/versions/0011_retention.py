"""Retention and purge: tombstones, a per-tenant retention, blob release and the audit.

``jobs.content_deleted_at`` marks a job whose content retention deleted (the row stays as
a tombstone), ``ix_jobs_retention`` finds each tenant's jobs that still hold content by
finish time, and ``ix_jobs_image`` answers "does any job still name this image?".
``tenants.retention_days`` overrides ``SIGHTLINE_RETENTION_DAYS`` (NULL: the server's;
0: forever). ``blob_releases`` lists image keys awaiting deletion from the blob store and
``purges`` is the audit trail of erasures (ids and counts, no content). Nothing existing
changes: an upgrade deletes nothing.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared.models import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("retention_days", sa.Integer(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("content_deleted_at", UTCDateTime(), nullable=True))
    holding = sa.text("content_deleted_at IS NULL")
    op.create_index(
        "ix_jobs_retention",
        "jobs",
        ["tenant_id", "finished_at"],
        postgresql_where=holding,
        sqlite_where=holding,
    )
    op.create_index("ix_jobs_image", "jobs", ["image_key"])
    op.create_table(
        "blob_releases",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("released_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "purges",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("purged_at", UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column(
            "scope",
            sa.Enum(
                "job",
                "batch",
                "tenant",
                name="purge_scope",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("target_id", sa.Uuid(), nullable=False),
        sa.Column("api_key_id", sa.Uuid(), nullable=True),
        sa.Column("operator", sa.String(200), nullable=True),
        sa.Column("jobs", sa.Integer(), nullable=False),
    )
    op.create_index("ix_purges_tenant", "purges", ["tenant_id", "purged_at"])


def downgrade() -> None:
    op.drop_index("ix_purges_tenant", table_name="purges")
    op.drop_table("purges")
    op.drop_table("blob_releases")
    op.drop_index("ix_jobs_image", table_name="jobs")
    op.drop_index("ix_jobs_retention", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("content_deleted_at")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("retention_days")
