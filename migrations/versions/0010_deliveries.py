"""Batch listing and retries, webhook endpoint health.

``batches.retry_of`` links a retry to the batch whose failed items it runs again and
``batches.item_events`` sends each item's ``job.*`` events to the batch's callback URL;
``ix_batches_listing`` serves ``GET /v1/batches``. ``webhook_endpoints`` records each
tenant's endpoints (scheme, host, port) and their health; ``webhook_events.endpoint_id``
points at one, ``ix_webhook_events_listing`` serves ``GET /v1/deliveries`` and
redelivery by time range, and the event status ``kept`` marks an event held back because
its endpoint is disabled.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared.models import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_STATUSES = "'pending', 'delivered', 'failed'"


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(
            sa.Column("item_events", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("retry_of", sa.Uuid(), nullable=True))
        batch.create_foreign_key("fk_batches_retry_of", "batches", ["retry_of"], ["id"])
    op.create_index("ix_batches_listing", "batches", ["tenant_id", "created_at", "id"])
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("scheme", sa.String(16), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("failing_since", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("disabled_at", UTCDateTime(), nullable=True),
    )
    op.create_index(
        "ux_webhook_endpoints_origin",
        "webhook_endpoints",
        ["tenant_id", "scheme", "host", "port"],
        unique=True,
    )
    with op.batch_alter_table("webhook_events") as batch:
        batch.add_column(sa.Column("endpoint_id", sa.Uuid(), nullable=True))
        batch.create_foreign_key(
            "fk_webhook_events_endpoint_id", "webhook_endpoints", ["endpoint_id"], ["id"]
        )
        batch.drop_constraint("event_status", type_="check")
        batch.create_check_constraint("event_status", f"status IN ({_STATUSES}, 'kept')")
    op.create_index("ix_webhook_events_endpoint_id", "webhook_events", ["endpoint_id"])
    op.create_index(
        "ix_webhook_events_listing", "webhook_events", ["tenant_id", "created_at", "id"]
    )


def downgrade() -> None:
    """Kept events become ``failed`` (the status they would have ended in)."""
    op.execute("UPDATE webhook_events SET status = 'failed' WHERE status = 'kept'")
    op.drop_index("ix_webhook_events_listing", table_name="webhook_events")
    op.drop_index("ix_webhook_events_endpoint_id", table_name="webhook_events")
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_constraint("event_status", type_="check")
        batch.create_check_constraint("event_status", f"status IN ({_STATUSES})")
        batch.drop_constraint("fk_webhook_events_endpoint_id", type_="foreignkey")
        batch.drop_column("endpoint_id")
    op.drop_index("ux_webhook_endpoints_origin", table_name="webhook_endpoints")
    op.drop_table("webhook_endpoints")
    op.drop_index("ix_batches_listing", table_name="batches")
    with op.batch_alter_table("batches") as batch:
        batch.drop_constraint("fk_batches_retry_of", type_="foreignkey")
        batch.drop_column("retry_of")
        batch.drop_column("item_events")
