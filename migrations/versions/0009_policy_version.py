"""Per-label policies: the version of the policy that decided each job's action.

``jobs.policy_version`` is written with ``action``, by the worker, from the policy the job
copied from its preset (``shared.presets.Policy.version``); NULL for jobs no policy
judged, including every job finished before this migration.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("policy_version", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("policy_version")
