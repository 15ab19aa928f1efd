"""``GET /metrics``: the API's Prometheus metrics, and the state of the service as a whole.

Per request: ``sightline_http_requests_total`` and
``sightline_http_request_duration_seconds`` by method and route *template*
(``/v1/jobs/<job_id>``, never a raw path: one series per route, not per job), and
``sightline_api_jobs_accepted_total`` by priority; ``sightline_event_streams_open`` and
``sightline_stream_first_delta_seconds`` (job creation to a stream's first text).
Computed at each scrape, from the broker and the database: ``sightline_queue_depth`` per
broker queue, ``sightline_jobs`` per job status, ``sightline_webhook_events`` per undelivered status
(pending, failed), ``sightline_webhook_oldest_pending_seconds`` (how far webhook
delivery lags) and ``sightline_broker_up`` / ``sightline_database_up`` (1 when the
scrape could read them). Only service-wide totals: no series names a tenant.

Who may scrape: with ``SIGHTLINE_METRICS_TOKEN`` set, only a request carrying
``Authorization: Bearer <token>`` (Prometheus' ``authorization`` scrape option), else 401;
without it, anyone in development and no one in production (404), since the totals
tell outsiders how busy the service is. What it costs: the broker and database figures
are read at most once per ``SIGHTLINE_METRICS_CACHE_S`` per process (a GROUP BY over the
jobs table is not free), however often it is scraped.

Under gunicorn each worker process counts its own requests; ``sightline api`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory shared by its workers, and a scrape,
whichever process answers it, sums them all (prometheus_client's multiprocess mode).
Without that variable (``--dev``, tests) the values live in the app's own registry.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client import Histogram as PromHistogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, select

from api.context import Services
from api.fresh_for import FreshFor
from shared.broker import queue_depths
from shared.errors import NotFound, Unauthorized
from shared.logs import configure_logging
from shared.models import EventStatus, Job, JobStatus, WebhookEvent, utcnow
from shared.settings import Settings
from shared.tasks import QUEUE_BULK, QUEUE_INTERACTIVE, QUEUE_MAINTENANCE, QUEUE_WEBHOOKS

metrics = Blueprint("metrics", __name__)

_QUEUES = (QUEUE_INTERACTIVE, QUEUE_BULK, QUEUE_WEBHOOKS, QUEUE_MAINTENANCE)
_UNDELIVERED = (EventStatus.PENDING, EventStatus.FAILED, EventStatus.KEPT)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Endpoints that accept jobs, and how to count the jobs in a 202 answer's body.
_SINGLE_SUBMISSION = "jobs.create_job"
_BATCH_SUBMISSION = "batches.create_batch"


class ApiMetrics:
    """The request metrics of one app, and the registry a scrape reads."""

    def __init__(self, services: Services) -> None:
        multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        # In multiprocess mode the values go to files, read back by MultiProcessCollector
        # at scrape time; registering the metrics themselves as well would count twice.
        own = None if multiprocess else CollectorRegistry()
        self.requests = Counter(
            "sightline_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=own,
        )
        self.latency = PromHistogram(
            "sightline_http_request_duration_seconds",
            "Time to build the response (to the first byte of a streamed one).",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=own,
        )
        self.accepted = Counter(
            "sightline_api_jobs_accepted",
            "Jobs accepted (stored and enqueued), by priority.",
            ["priority"],
            registry=own,
        )
        self.streams_open = Gauge(
            "sightline_event_streams_open",
            "Event streams (GET …/events) open now.",
            multiprocess_mode="livesum",
            registry=own,
        )
        self.first_delta = PromHistogram(
            "sightline_stream_first_delta_seconds",
            "From a job's creation to the first text one of its event streams sent.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=own,
        )
        self.registry = own or CollectorRegistry()
        if multiprocess:
            MultiProcessCollector(self.registry)
        self.registry.register(_StateCollector(services))


def instrument(app: Flask) -> None:
    """Make ``app`` observable: JSON log lines (:mod:`shared.logs`) at the configured
    level, every request counted and timed, and ``/metrics`` served to whoever holds
    the metrics token (see the module's docstring). Call once the app's services exist."""
    svc: Services = app.extensions["sightline"]
    configure_logging(svc.settings.log_level, "api")
    app.extensions["sightline_metrics"] = ApiMetrics(svc)
    app.before_request(_start_timer)
    app.after_request(_observe)
    app.register_blueprint(metrics)


@metrics.get("/metrics")
def scrape() -> Response:
    """The metrics in Prometheus' text format, for the holder of the metrics token."""
    _authorise_scrape(current_app.extensions["sightline"].settings)
    registry = current_app.extensions["sightline_metrics"].registry
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def _authorise_scrape(settings: Settings) -> None:
    """Raise :class:`Unauthorized` unless the request carries the metrics token, or
    :class:`NotFound` in production when no token is configured."""
    token = settings.metrics_token
    if not token:
        if settings.environment == "production":
            raise NotFound("/metrics is off in production until SIGHTLINE_METRICS_TOKEN is set")
        return
    scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
    # Compared in constant time: the time taken must not tell how much of a guess matched.
    if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), token.encode()):
        raise Unauthorized("/metrics needs 'Authorization: Bearer <SIGHTLINE_METRICS_TOKEN>'")


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


def _observe(response: Response) -> Response:
    found: ApiMetrics = current_app.extensions["sightline_metrics"]
    route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
    status = response.status_code
    found.requests.labels(request.method, route, str(status)).inc()
    started = g.get("metrics_started")
    if started is not None:
        found.latency.labels(request.method, route).observe(time.perf_counter() - started)
    if status == 202 and request.endpoint in (_SINGLE_SUBMISSION, _BATCH_SUBMISSION):
        _count_accepted(found, response)
    return response


def _count_accepted(found: ApiMetrics, response: Response) -> None:
    """Count the jobs a 202 submission answer created: one for a single job, the new
    (not ``existing``) accepted items of a batch, which are all bulk."""
    body = response.get_json(silent=True) or {}
    if request.endpoint == _SINGLE_SUBMISSION:
        found.accepted.labels(str(body.get("priority", "unknown"))).inc()
        return
    created = [item for item in body.get("accepted", []) if not item.get("existing")]
    if created:
        found.accepted.labels("bulk").inc(len(created))


@dataclass(frozen=True)
class _ServiceState:
    """What a scrape reports of the broker and the database; ``None`` where it could not
    be read."""

    depths: dict[str, int] | None
    database: _DatabaseState | None


class _StateCollector:
    """Gauges read from the broker and the database, so they are right whichever process
    answers and however many API replicas run (each reports the same service-wide
    values; aggregate them with ``max``, not ``sum``). Read at most once per
    ``metrics_cache_s`` per process: scrapes in between get the same figures."""

    def __init__(self, services: Services) -> None:
        self._state = FreshFor(
            services.settings.metrics_cache_s,
            lambda: _ServiceState(
                depths=queue_depths(services.celery, _QUEUES),
                database=_database_state(services),
            ),
        )

    def collect(self) -> Iterator[Metric]:
        found = self._state.get()
        depths = found.depths
        broker_up = GaugeMetricFamily(
            "sightline_broker_up", "1 when this scrape could read the broker's queues."
        )
        broker_up.add_metric([], 0.0 if depths is None else 1.0)
        yield broker_up
        queue = GaugeMetricFamily(
            "sightline_queue_depth", "Messages waiting in a broker queue.", labels=["queue"]
        )
        for name, depth in (depths or {}).items():
            queue.add_metric([name], depth)
        yield queue

        state = found.database
        database_up = GaugeMetricFamily(
            "sightline_database_up", "1 when this scrape could count jobs in the database."
        )
        database_up.add_metric([], 0.0 if state is None else 1.0)
        yield database_up
        jobs = GaugeMetricFamily(
            "sightline_jobs", "Jobs in the database by status.", labels=["status"]
        )
        webhooks = GaugeMetricFamily(
            "sightline_webhook_events",
            "Webhook events not delivered: pending (retrying), failed (gave up, or 410) or kept "
            "(their endpoint is disabled).",
            labels=["status"],
        )
        lag = GaugeMetricFamily(
            "sightline_webhook_oldest_pending_seconds",
            "Age of the oldest webhook event still pending (0 when none is).",
        )
        if state is not None:
            for status in JobStatus:
                jobs.add_metric([status.value], state.jobs.get(status, 0))
            for event_status in _UNDELIVERED:
                webhooks.add_metric([event_status.value], state.events.get(event_status, 0))
            oldest = state.oldest_pending
            lag.add_metric([], 0.0 if oldest is None else (utcnow() - oldest).total_seconds())
        yield jobs
        yield webhooks
        yield lag


@dataclass(frozen=True)
class _DatabaseState:
    jobs: dict[JobStatus, int]
    events: dict[EventStatus, int]
    oldest_pending: datetime | None


def _database_state(services: Services) -> _DatabaseState | None:
    """Jobs by status and undelivered webhook events, or ``None`` if the database did
    not answer. Only undelivered events are counted: ix_webhook_events_due serves them,
    while delivered ones pile up and would cost a full scan per scrape."""
    try:
        with services.sessions() as session:
            jobs = session.execute(select(Job.status, func.count()).group_by(Job.status))
            events = session.execute(
                select(WebhookEvent.status, func.count(), func.min(WebhookEvent.created_at))
                .where(WebhookEvent.status.in_(_UNDELIVERED))
                .group_by(WebhookEvent.status)
            ).all()
            return _DatabaseState(
                jobs={JobStatus(status): int(n) for status, n in jobs},
                events={EventStatus(status): int(n) for status, n, _ in events},
                oldest_pending=next(
                    (oldest for status, _, oldest in events if status == EventStatus.PENDING),
                    None,
                ),
            )
    except Exception:
        return None
