"""Send the wake-up message for a job: its id, by task name, never its data; then
announce it to running workers (``shared.job_feed.queued_channel``)."""

from __future__ import annotations

import functools
import logging
import uuid

import redis
from celery import Celery
from kombu import Producer

from shared.job_feed import queued_channel
from shared.models import Priority
from shared.tasks import DELIVER_WEBHOOK_TASK, INFER_TASK, QUEUE_WEBHOOKS, queue_for

log = logging.getLogger(__name__)


def enqueue_job(celery: Celery, job_id: uuid.UUID, priority: Priority) -> None:
    """Publish ``sightline.infer(job_id)`` on the job's priority queue, then announce it.

    The Celery task id is the job id, so Flower and the logs name jobs the way the API
    does. Raises the broker's error if it cannot be reached; the job row is already
    committed at that point, and the sweeper re-sends its message later.
    """
    _send(celery, job_id, priority)
    _announce(celery, priority)


def _send(
    celery: Celery, job_id: uuid.UUID, priority: Priority, producer: Producer | None = None
) -> None:
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
            _send(celery, job_id, priority, producer)
    _announce(celery, priority)


def _announce(celery: Celery, priority: Priority) -> None:
    """Tell running workers that a job of ``priority`` was queued (after its row was
    committed). Best effort: a worker that misses it claims anyway within
    ``worker.queue_hint.RECHECK_S``."""
    client = _broker(celery.conf.broker_url)
    try:
        client.publish(queued_channel(client), priority.value)
    except redis.RedisError as exc:
        log.warning("wake-up for a %s job not announced (%s)", priority.value, exc)


@functools.cache
def _broker(url: str) -> redis.Redis:
    """One client per broker URL and process (its pool reconnects after a fork)."""
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


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
