"""Celery tasks: thin wrappers that hand a message to the batch service."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import Celery, Task

from shared.tasks import INFER_TASK
from worker.batching import BatchService

log = logging.getLogger(__name__)


def register_tasks(app: Celery, service: BatchService) -> None:
    """Register ``sightline.infer`` on ``app``, bound to this process's batch service."""

    @app.task(name=INFER_TASK, bind=True)
    def infer(self: Task, job_id: str) -> dict[str, Any]:
        """Wake-up for ``job_id``: run a batch starting with it (or with whatever is queued
        if it already ran). Returns after the results are committed; the message is acked
        only then (``acks_late``)."""
        try:
            wanted = uuid.UUID(job_id)
        except ValueError:
            log.error("dropping message with malformed job id %r", job_id)
            return {"job_id": job_id, "status": "malformed"}
        report = service.run(wanted)
        status = report.status_of(wanted)
        return {
            "job_id": job_id,
            "status": status.value if status else "not_run_here",
            "batch_jobs": len(report.outcomes),
        }
