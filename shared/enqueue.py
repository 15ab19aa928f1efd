"""Send the wake-up message for a job: its id, by task name, never its data."""

from __future__ import annotations

import logging
import uuid

from celery import Celery
from kombu import Producer

from shared.models import Priority
from shared.tasks import DELIVER_WEBHOOK_TASK, INFER_TASK, QUEUE_WEBHOOKS, queue_for

log = logging.getLogger(__name__)


def enqueue_job(
    celery: Celery, job_id: uuid.UUID, priority: Priority, producer: Producer | None = None
) -> None:
    """Publish ``sightline.infer(job_id)`` on the job's priority queue.

    The Celery task id is the job id, so Flower and the logs name jobs the way the API
    does. Raises the broker's error if it cannot be reached; the job row is already
    committed at that point, and the sweeper re-sends its message later.
    """
    with celery.producer_or_acquire(producer) as held, held.batch():
        # One pipelined round trip for the message and its task-sent event.
        celery.send_task(
            INFER_TASK,
            args=[str(job_id)],
            queue=queue_for(priority),
            task_id=str(job_id),
            producer=held,
        )


def enqueue_wakeups(
    celery: Celery, job_ids: list[uuid.UUID], priority: Priority, every: int
) -> None:
    """Wake workers for a bulk insert: one message per ``every`` jobs (a worker claims up
    to a whole batch per message, oldest first), pipelined over one broker connection (a
    thousand at a time). Raises the broker's error like :func:`enqueue_job`; the sweeper
    covers what was not sent."""
    with celery.producer_or_acquire() as producer, producer.batch():
        for job_id in job_ids[::every]:
            enqueue_job(celery, job_id, priority, producer)


def enqueue_event(celery: Celery, event_id: str) -> None:
    """Publish ``sightline.deliver_webhook(event_id)`` on the ``webhooks`` queue. An event
    whose message is lost is found again by the sweeper."""
    celery.send_task(DELIVER_WEBHOOK_TASK, args=[event_id], queue=QUEUE_WEBHOOKS)


def enqueue_events(celery: Celery, event_ids: list[str]) -> None:
    """Wake the sender for each event; a broker error is logged, not raised, because the
    events are already committed and the sweeper sends what is left behind."""
    for event_id in event_ids:
        try:
            enqueue_event(celery, event_id)
        except Exception as exc:
            log.warning("event %s committed but not enqueued (%s); the sweeper will", event_id, exc)
            return
