"""Liveness and readiness probes (no authentication, so they say nothing but up or down).

Load balancers and orchestrators call these every few seconds, and anyone can: they must
stay cheap and tell outsiders nothing about the service's load or its machines. Which
workers are alive and how much waits is for operators: ``sightline_worker_up`` and
``sightline_queue_depth`` in Prometheus, the console's Status page.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Blueprint, current_app
from flask.blueprints import BlueprintSetupState
from sqlalchemy import text

from api.context import Services
from api.fresh_for import FreshFor
from shared.errors import ServiceUnavailable

health = Blueprint("health", __name__)
_READINESS = "sightline_readiness"

# How long the broker check may take to connect; keeps the probe inside the usual 3-5 s
# probe timeouts.
BROKER_TIMEOUT_S = 2


@health.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and serving requests."""
    return {"status": "ok"}


@health.get("/readyz")
def readyz() -> dict[str, object]:
    """Ready (200) when the database answers a query and the broker a connection; else
    503 naming what is down.

    No worker does *not* make the API unready: the API's job is to accept and store
    jobs, which it does without workers (they run once a worker is back), and a
    readiness failure would take every API replica out of its load balancer, turning a
    worker outage into refused submissions. Nothing is sent to the workers either: a
    probe anyone may call must not make every worker answer a broadcast. The verdict is
    reused for ``SIGHTLINE_READINESS_CACHE_S`` per process, so a flood of probes costs one
    check per interval.
    """
    verdict: FreshFor[Readiness] = current_app.extensions[_READINESS]
    found = verdict.get()
    failing = [name for name, state in found.checks.items() if state != "ok"]
    if failing:
        raise ServiceUnavailable(
            "not ready: " + "; ".join(f"{name} {found.checks[name]}" for name in failing)
        )
    return {"status": "ready", "checks": found.checks}


@dataclass(frozen=True)
class Readiness:
    """Each dependency's state: ``ok`` or ``unreachable: <exception class>``."""

    checks: dict[str, str]


def check_dependencies(svc: Services) -> Readiness:
    """One ``SELECT 1`` on a pooled database connection and one broker connection."""
    checks: dict[str, str] = {}
    try:
        with svc.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {exc.__class__.__name__}"
    try:
        with svc.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_S)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unreachable: {exc.__class__.__name__}"
    return Readiness(checks)


@health.record_once
def _remember_readiness(state: BlueprintSetupState) -> None:
    """Give the app the per-process memo of :func:`check_dependencies` that ``/readyz``
    answers from (the app's services exist before its blueprints are registered)."""
    svc: Services = state.app.extensions["sightline"]
    state.app.extensions[_READINESS] = FreshFor(
        svc.settings.readiness_cache_s, lambda: check_dependencies(svc)
    )
