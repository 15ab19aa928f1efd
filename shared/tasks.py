"""Task and queue names: the wire contract between the API and the workers.

Names are explicit strings so that moving code never strands queued messages, and the
API can enqueue by name without importing worker code (or torch).
"""

from __future__ import annotations

from shared.models import Priority

INFER_TASK = "sightline.infer"
SWEEP_TASK = "sightline.sweep"
DELIVER_WEBHOOK_TASK = "sightline.deliver_webhook"

QUEUE_INTERACTIVE = "interactive"
QUEUE_BULK = "bulk"
# Housekeeping (the sweeper), consumed by the no-GPU ops worker.
QUEUE_MAINTENANCE = "maintenance"
# Webhook attempts, consumed by the same no-GPU worker: no GPU worker ever sends one.
QUEUE_WEBHOOKS = "webhooks"

# Workers list interactive first: with Redis, Celery polls queues in the order given.
GPU_QUEUES = (QUEUE_INTERACTIVE, QUEUE_BULK)


def queue_for(priority: Priority) -> str:
    """The broker queue a job of this priority is sent to."""
    return QUEUE_INTERACTIVE if priority is Priority.INTERACTIVE else QUEUE_BULK
