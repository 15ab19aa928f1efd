"""``sightline webhooks``, ``sightline beat`` and ``sightline flower``: no GPU needed.

The ops worker consumes ``maintenance`` (the sweeper) and ``webhooks`` (one delivery
attempt per message) with a small thread pool, so a slow receiver does not hold up the
others. Attempts may hold at most ``DELIVERY_THREADS`` of its threads and take turns per
endpoint and per tenant (:mod:`worker.fair_delivery`); the rest are the sweeper's, so
slow receivers never stop sweeping. Beat schedules the sweep; Flower watches the
broker's task events. None loads a model.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from celery.platforms import EX_FAILURE

from shared.blobs import BlobStore
from shared.celery_app import create_celery
from shared.db import session_factory, worker_engine
from shared.job_feed import JobFeed
from shared.logs import configure_logging
from shared.redis_slots import RedisSlots
from shared.settings import Settings
from shared.tasks import DELIVER_WEBHOOK_TASK, QUEUE_MAINTENANCE, QUEUE_WEBHOOKS, SWEEP_TASK
from worker.delivery_slots import DeliverySlots
from worker.fair_delivery import FairDelivery
from worker.sweeper import sweep
from worker.webhook_sender import LOCK_MARGIN_S, WebhookSender

log = logging.getLogger(__name__)

# Webhook attempts wait on the network, not the CPU: threads overlap them.
DELIVERY_THREADS = 8
# Threads attempts can never hold (they are deferred instead): the sweep's, and the
# brief runs that defer an attempt.
MAINTENANCE_THREADS = 1
# After an unrecoverable error the ops worker starts afresh this much later (seconds).
RESTART_PAUSE_S = 2.0


def create_ops_app(settings: Settings) -> Celery:
    """A Celery app with the maintenance tasks registered, bound to ``settings``."""
    app = create_celery(settings)
    sessions = session_factory(worker_engine(settings))
    broker = redis.Redis.from_url(settings.broker_url, socket_timeout=2, socket_connect_timeout=2)
    feed = JobFeed(broker)
    blobs = BlobStore(settings.blob_url)
    slots = DeliverySlots(
        RedisSlots(broker),
        per_endpoint=settings.webhook_endpoint_concurrency,
        per_tenant=settings.webhook_tenant_concurrency,
        # A killed process's holds lapse when its attempts' reservations do.
        lease_s=settings.webhook_timeout_s + LOCK_MARGIN_S,
    )
    delivery = FairDelivery(
        sessions, WebhookSender(settings, sessions), slots, app, threads=DELIVERY_THREADS
    )

    @app.task(name=SWEEP_TASK, ignore_result=True)
    def run_sweep() -> dict[str, Any]:
        """One sweeper pass (see ``worker.sweeper``)."""
        return vars(sweep(settings, sessions, app, feed, blobs))

    @app.task(name=DELIVER_WEBHOOK_TASK, ignore_result=True)
    def deliver_webhook(event_id: str, deferrals: int = 0) -> str:
        """The due attempt of one webhook event when its turn comes (see
        ``worker.fair_delivery`` and ``worker.webhook_sender``)."""
        return delivery.run(event_id, deferrals)

    return app


def run_ops_worker(settings: Settings) -> int:
    """Consume ``maintenance`` and ``webhooks`` until shut down; returns the exit code.

    ``maintenance`` is listed first: the broker's queue order is by priority, so a sweep
    is taken before any waiting attempt whenever a thread frees.

    If Celery stops on an unrecoverable error rather than a shutdown request, the
    process starts afresh (same command, same pid) after ``RESTART_PAUSE_S``: the sweeper
    and every webhook live here, and nothing else would bring them back. kombu 5.7 does
    this to a thread-pool worker when Redis drops its connection while messages are
    unacknowledged (a Redis restart under load): closing the channel then raises
    ``AttributeError`` instead of a connection error (found by ``make chaos``)."""
    configure_logging(settings.log_level, "webhooks")
    app = create_ops_app(settings)
    worker = app.Worker(
        hostname=f"ops@{socket.gethostname()}",
        pool="threads",
        concurrency=DELIVERY_THREADS + MAINTENANCE_THREADS,
        queues=[QUEUE_MAINTENANCE, QUEUE_WEBHOOKS],
        loglevel=settings.log_level,
        without_mingle=True,
        without_gossip=True,
        quiet=True,  # no banner: stdout and stderr carry JSON log lines only
    )
    worker.start()
    if worker.exitcode == EX_FAILURE:
        log.error(
            "ops worker stopped on an unrecoverable error; restarting in %g s", RESTART_PAUSE_S
        )
        time.sleep(RESTART_PAUSE_S)
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    return int(worker.exitcode or 0)


def run_beat(settings: Settings) -> int:
    """Send ``sightline.sweep`` every ``sweep_interval_s`` until shut down.

    Each message expires after one interval: a sweep nobody ran in time is superseded
    by the next one rather than piling up.
    """
    configure_logging(settings.log_level, "beat")
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
    app.Beat(schedule=str(schedule), loglevel=settings.log_level, quiet=True).run()
    return 0


def run_flower(settings: Settings, *, address: str, port: int, options: list[str]) -> int:
    """Run Flower (``celery flower``) on ``address:port`` against the broker until shut
    down; returns the exit code.

    ``options`` are passed to Flower as given (``--basic_auth=user:pass``, ``--auth=…``,
    ``--url_prefix=…``), after ours, so they win; ``FLOWER_*`` environment variables work
    too. Unless set otherwise, Flower keeps its task history in
    ``<data_dir>/flower.db`` (saved every minute and on shutdown), so a restart does not
    forget every job it has seen.
    """
    configure_logging(settings.log_level, "flower")
    db = Path(settings.data_dir).resolve() / "flower.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    # Defaults through Flower's own environment variables: an operator's FLOWER_* (or a
    # command-line option) still overrides them.
    os.environ.setdefault("FLOWER_PERSISTENT", "true")
    os.environ.setdefault("FLOWER_DB", str(db))
    os.environ.setdefault("FLOWER_STATE_SAVE_INTERVAL", "60000")  # milliseconds
    argv = [
        "flower",
        f"--address={address}",
        f"--port={port}",
        # Tornado sets the root logger's level from this; keep ours.
        f"--logging={settings.log_level.lower()}",
        *options,
    ]
    # celery-types declares start() NoReturn; Celery 5.7 returns click's exit code, or
    # None when the command returns normally.
    start: Callable[[list[str]], int | None] = create_celery(settings).start
    return int(start(argv) or 0)
