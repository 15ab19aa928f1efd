"""Liveness and readiness probes (no authentication)."""

from __future__ import annotations

from flask import Blueprint
from sqlalchemy import text

from api.context import services
from shared.errors import ServiceUnavailable

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and serving requests."""
    return {"status": "ok"}


@health.get("/readyz")
def readyz() -> dict[str, object]:
    """Ready when the database answers a query and the broker answers a ping (503 if not)."""
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
    return {"status": "ready", "checks": checks}
