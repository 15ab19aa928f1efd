"""Liveness and readiness probes (no authentication)."""

from __future__ import annotations

from celery import Celery
from flask import Blueprint
from sqlalchemy import Engine, select, text

from api.context import services
from shared.broker import queue_depths
from shared.errors import ServiceUnavailable
from shared.models import Job, JobStatus, utcnow
from shared.tasks import GPU_QUEUES

health = Blueprint("health", __name__)

# A broadcast ping waits this long for replies, whatever the number of workers; it keeps
# a readiness probe well inside the usual 1 s probe timeout.
PING_TIMEOUT_S = 0.5


@health.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and serving requests."""
    return {"status": "ok"}


@health.get("/readyz")
def readyz() -> dict[str, object]:
    """Ready (200) when the database answers a query and the broker a connection; else
    503 naming what is down.

    The body also says whether any inference worker is alive and how many wake-up
    messages wait per GPU queue. No worker does *not* make the API unready: the API's job
    is to accept and store jobs, which it does without workers (they run once a worker
    is back), and a readiness failure would take every API replica out of its load
    balancer, turning a worker outage into refused submissions. Alert on
    ``workers.alive`` (or ``sightline_worker_up``) instead.
    """
    svc = services()
    checks: dict[str, str] = {}
    try:
        with svc.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {exc.__class__.__name__}"
    try:
        with svc.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unreachable: {exc.__class__.__name__}"
    failing = [name for name, state in checks.items() if state != "ok"]
    if failing:
        raise ServiceUnavailable(
            "not ready: " + "; ".join(f"{name} {checks[name]}" for name in failing)
        )
    return {
        "status": "ready",
        "checks": checks,
        "workers": worker_status(svc.celery, svc.engine),
        "queues": queue_depths(svc.celery, GPU_QUEUES),
    }


def worker_status(celery: Celery, engine: Engine) -> dict[str, object]:
    """Which inference workers are alive: ``answering`` lists the nodes that answered a
    ping within :data:`PING_TIMEOUT_S`; ``busy`` the nodes holding a live lease on a
    running job. Both count, because a solo worker in the middle of a long batch cannot
    answer a ping, while its batch renews the lease every third of its length. The no-GPU
    ops node (``ops@…``) is not an inference worker and is left out."""
    try:
        replies = celery.control.ping(timeout=PING_TIMEOUT_S)
        answering = sorted(
            name for reply in replies for name in reply if not name.startswith("ops@")
        )
    except Exception:  # the broker answered a moment ago; a failed ping is "none"
        answering = []
    with engine.connect() as conn:
        busy = sorted(
            conn.scalars(
                select(Job.worker)
                .where(
                    Job.status == JobStatus.RUNNING,
                    Job.lease_expires_at > utcnow(),
                    Job.worker.is_not(None),
                )
                .distinct()
            )
        )
    return {"alive": bool(answering or busy), "answering": answering, "busy": busy}
