"""The Celery app factory used by the API (to send) and the workers (to consume).

Every setting that decides what happens on a crash or a backlog is set here, with its
reason, so the API and the workers can never disagree about them.
"""

from __future__ import annotations

from celery import Celery

from shared.settings import Settings
from shared.tasks import QUEUE_INTERACTIVE


def create_celery(settings: Settings, *, fail_fast: bool = False) -> Celery:
    """A Celery app bound to ``settings.broker_url``; tasks are registered by the worker.

    With ``fail_fast`` (the API, which only publishes), a publish to a Redis whose packets
    are dropped (cut off, no RST) fails in about 2 s, retries included, instead of
    waiting forever for its reply (kombu's default): the job is committed already and
    the sweeper re-sends its wake-up. Consumers keep kombu's defaults: a worker whose ack
    timed out that way stopped consuming for good (``make chaos``, worker partition)."""
    transport_options: dict[str, object] = {
        # Redis: consume the queues in the order the worker lists them (interactive
        # first) rather than round-robin.
        "queue_order_strategy": "priority",
    }
    if fail_fast:
        transport_options |= {"socket_timeout": 2, "socket_connect_timeout": 1}
    app = Celery("sightline", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=QUEUE_INTERACTIVE,
        task_serializer="json",
        accept_content=["json"],
        # Results live in the database; a result backend would be a second, weaker copy.
        task_ignore_result=True,
        result_backend=None,
        # Ack only after the task returned, i.e. after the results were committed: a worker
        # that dies mid-batch leaves its message to be delivered again.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Batches are formed from the database, not from prefetched messages, so a worker
        # holds at most one message: a bulk backlog never sits inside a worker.
        worker_prefetch_multiplier=1,
        # Flower follows jobs through task events.
        worker_send_task_events=True,
        task_send_sent_event=True,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        # The API must answer fast when Redis is down: the job is already committed, and
        # the sweeper enqueues it later, so don't retry publishing for long.
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        broker_connection_timeout=2,
        worker_hijack_root_logger=False,
    )
    return app
