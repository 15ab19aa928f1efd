"""``sightline webhooks`` and ``sightline beat``: the processes that need no GPU.

The ops worker consumes the ``maintenance`` queue (the sweeper) and, once webhooks
exist, ``webhooks``; beat schedules the sweep. Neither loads a model.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from celery import Celery

from shared.celery_app import create_celery
from shared.db import create_engine_for, session_factory
from shared.settings import Settings
from shared.tasks import QUEUE_MAINTENANCE, SWEEP_TASK
from worker.sweeper import sweep


def create_ops_app(settings: Settings) -> Celery:
    """A Celery app with the maintenance tasks registered, bound to ``settings``."""
    app = create_celery(settings)
    sessions = session_factory(create_engine_for(settings))

    @app.task(name=SWEEP_TASK, ignore_result=True)
    def run_sweep() -> dict[str, Any]:
        """One sweeper pass (see ``worker.sweeper``)."""
        return vars(sweep(settings, sessions, app))

    return app


def run_ops_worker(settings: Settings) -> int:
    """Consume ``maintenance`` until shut down; returns the exit code."""
    app = create_ops_app(settings)
    worker = app.Worker(
        hostname=f"ops@{socket.gethostname()}",
        pool="solo",
        concurrency=1,
        queues=[QUEUE_MAINTENANCE],
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
