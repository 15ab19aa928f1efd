"""``sightline webhooks`` and ``sightline beat``: the processes that need no GPU.

The ops worker consumes ``webhooks`` (one delivery attempt per message) and
``maintenance`` (the sweeper) with a small thread pool, so a slow receiver does not hold
up the others; beat schedules the sweep. Neither loads a model.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from celery import Celery

from shared.celery_app import create_celery
from shared.db import create_engine_for, session_factory
from shared.settings import Settings
from shared.tasks import DELIVER_WEBHOOK_TASK, QUEUE_MAINTENANCE, QUEUE_WEBHOOKS, SWEEP_TASK
from worker.sweeper import sweep
from worker.webhook_sender import WebhookSender

# Webhook attempts wait on the network, not the CPU: threads overlap them.
OPS_THREADS = 8


def create_ops_app(settings: Settings) -> Celery:
    """A Celery app with the maintenance tasks registered, bound to ``settings``."""
    app = create_celery(settings)
    sessions = session_factory(create_engine_for(settings))
    sender = WebhookSender(settings, sessions)

    @app.task(name=SWEEP_TASK, ignore_result=True)
    def run_sweep() -> dict[str, Any]:
        """One sweeper pass (see ``worker.sweeper``)."""
        return vars(sweep(settings, sessions, app))

    @app.task(name=DELIVER_WEBHOOK_TASK, ignore_result=True)
    def deliver_webhook(event_id: str) -> str:
        """The due attempt of one webhook event (see ``worker.webhook_sender``)."""
        return sender.deliver(event_id)

    return app


def run_ops_worker(settings: Settings) -> int:
    """Consume ``webhooks`` and ``maintenance`` until shut down; returns the exit code."""
    app = create_ops_app(settings)
    worker = app.Worker(
        hostname=f"ops@{socket.gethostname()}",
        pool="threads",
        concurrency=OPS_THREADS,
        queues=[QUEUE_WEBHOOKS, QUEUE_MAINTENANCE],
        loglevel=settings.log_level,
        without_mingle=True,
        without_gossip=True,
    )
    worker.start()
    return int(worker.exitcode or 0)


def run_beat(settings: Settings) -> int:
    """Send ``sightline.sweep`` every ``sweep_interval_s`` until shut down.

    Each message expires after one interval: a sweep nobody ran in time is superseded
    by the next one rather than piling up.
    """
    app = create_celery(settings)
    app.conf.beat_schedule = {
        "sweep": {
            "task": SWEEP_TASK,
            "schedule": settings.sweep_interval_s,
            "options": {"queue": QUEUE_MAINTENANCE, "expires": settings.sweep_interval_s},
        }
    }
    schedule = Path(settings.data_dir) / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    app.Beat(schedule=str(schedule), loglevel=settings.log_level).run()
    return 0
