"""Send the wake-up message for a job: its id, by task name, never its data."""

from __future__ import annotations

import uuid

from celery import Celery

from shared.models import Priority
from shared.tasks import INFER_TASK, queue_for


def enqueue_job(celery: Celery, job_id: uuid.UUID, priority: Priority) -> None:
    """Publish ``sightline.infer(job_id)`` on the job's priority queue.

    The Celery task id is the job id, so Flower and the logs name jobs the way the API
    does. Raises the broker's error if it cannot be reached; the job row is already
    committed at that point, and the sweeper re-sends its message later.
    """
    celery.send_task(
        INFER_TASK,
        args=[str(job_id)],
        queue=queue_for(priority),
        task_id=str(job_id),
    )
