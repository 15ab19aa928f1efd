"""Fair share between tenants: a weight per tenant and the indexes of the fair claim.

``tenants.weight`` (default 1, so every existing tenant gets an equal share) scales a
tenant's share of the workers against the other tenants with queued work. The claim reads
each tenant's oldest queued jobs (``ix_jobs_tenant_queue``, queued rows only) and counts
the jobs each tenant started lately (``ix_jobs_started``).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("weight", sa.Integer(), nullable=False, server_default="1"))
    queued = sa.text("status = 'queued'")
    op.create_index(
        "ix_jobs_tenant_queue",
        "jobs",
        ["tenant_id", "priority", "created_at"],
        postgresql_where=queued,
        sqlite_where=queued,
    )
    op.create_index("ix_jobs_started", "jobs", ["started_at", "tenant_id", "priority"])


def downgrade() -> None:
    op.drop_index("ix_jobs_started", table_name="jobs")
    op.drop_index("ix_jobs_tenant_queue", table_name="jobs")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("weight")
