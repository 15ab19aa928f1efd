"""Server-sent event streams: ``GET /v1/jobs/{id}/events`` and ``/v1/batches/{id}/events``.

The events are described in :mod:`api.job_stream` and :mod:`api.batch_stream`. A stream
holds no thread: the API runs under gunicorn's gevent worker, so a waiting stream is a
sleeping greenlet, woken by the job feed (:mod:`api.feed_listener`). Same tenant rules
as the other routes (another tenant's job or batch is 404). A tenant may hold
``SIGHTLINE_STREAMS_PER_TENANT`` streams open at once across all API processes (counted
in Redis with leases renewed for every open stream of the process together:
:mod:`api.stream_upkeep`; a stream whose client vanished holds its slot until its next
write fails, at most ``SIGHTLINE_STREAM_HEARTBEAT_S``): one more is
refused with 429 ``too_many_streams``. If Redis cannot count, the stream goes ahead.
A status event that does not end its job is spread over a moment that grows with the
process's open streams (:func:`status_delay`).

A stream lasts no longer than the key that opened it: before each event (heartbeats
included, so at least every ``SIGHTLINE_STREAM_HEARTBEAT_S``) it asks whether that key
still holds (:mod:`api.stream_keys`: per key, one stream of the process asks at most
every ``api.context.STREAM_KEY_CHECK_S``, the others take its answer), and ends without
``done`` once it is revoked or expired. A reader resuming it then gets the 401 any
request with that key gets. So a revoked key reads nothing more after
``SIGHTLINE_KEY_CACHE_S`` plus ``STREAM_KEY_CHECK_S`` plus a heartbeat, however long the
job or batch it watched goes on (``STREAM_KEY_STALE_S`` plus a heartbeat while the
database cannot be asked). A stream whose job or batch is purged ends the same
way (a resume gets 404).
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Iterator
from datetime import UTC
from functools import partial

import redis
from flask import Blueprint, Response, current_app, request

from api.access import load_job, load_owned
from api.auth import authenticate, current_key
from api.batch_stream import BatchStream
from api.context import Services, services
from api.feed_listener import FeedListener
from api.job_reads import Gone
from api.job_stream import JobStream
from api.metrics import ApiMetrics
from api.stream_upkeep import StreamUpkeep
from shared.error_codes import ErrorCode
from shared.errors import TooManyRequests
from shared.fair_share import queued_ahead
from shared.models import ApiKey, Batch, Job
from shared.redis_slots import Hold

log = logging.getLogger(__name__)

# The spread of status events (see status_delay): per waiter, and at most.
STATUS_SPREAD_S = 0.001
STATUS_SPREAD_MAX_S = 0.25

streams = Blueprint("streams", __name__, url_prefix="/v1")
streams.before_request(authenticate)


@streams.get("/jobs/<job_id>/events")
def job_events(job_id: str) -> Response:
    """The job's events (``text/event-stream``); ``Last-Event-ID`` resumes."""
    job = load_job(job_id)
    return job_event_stream(services(), job, current_key())


@streams.get("/batches/<batch_id>/events")
def batch_events(batch_id: str) -> Response:
    """The batch's events (``text/event-stream``); ``Last-Event-ID`` resumes."""
    batch = load_owned(Batch, batch_id, "batch")
    svc = services()
    stream = BatchStream(batch.id, svc.sessions, svc.listener, svc.settings.stream_heartbeat_s)
    return _respond(svc, current_key(), stream.events(request.headers.get("Last-Event-ID")))


def job_event_stream(svc: Services, job: Job, key: ApiKey) -> Response:
    """The event stream of ``job`` (already checked to belong to ``key``'s tenant), for
    the API and the console alike."""
    metrics = stream_metrics()

    def ahead(queued: Job) -> int:
        with svc.sessions() as session:
            return queued_ahead(session, queued)

    def first_delta(at: float) -> None:
        created = job.created_at if job.created_at.tzinfo else job.created_at.replace(tzinfo=UTC)
        metrics.first_delta.observe(max(0.0, at - created.timestamp()))

    stream = JobStream(
        job.id,
        partial(svc.reads.read, job.id),
        ahead,
        svc.listener,
        svc.counters,
        svc.upkeep,
        svc.settings.stream_heartbeat_s,
        on_first_delta=first_delta,
        status_delay=partial(status_delay, svc.listener),
    )
    return _respond(svc, key, stream.events(request.headers.get("Last-Event-ID")))


def status_delay(listener: FeedListener) -> float:
    """How long a stream holds back a status event that does not end its job, or puts
    off reading a queued job's first notice (:class:`api.job_stream.JobStream`): a
    random moment within a spread of ``STATUS_SPREAD_S`` per waiter of this process, at
    most ``STATUS_SPREAD_MAX_S``. A lone stream sends at once; a thousand woken by fifty
    jobs starting together send over ``STATUS_SPREAD_MAX_S``, not in one instant."""
    return random.uniform(0.0, min(STATUS_SPREAD_MAX_S, listener.waiters * STATUS_SPREAD_S))


def _respond(svc: Services, key: ApiKey, events: Iterator[str]) -> Response:
    """The streaming response, once ``key``'s tenant has a stream slot (429 otherwise);
    the slot is renewed while the stream lasts (:mod:`api.stream_upkeep`) and given back
    when the response is closed, whether its body ever started or not (a ``HEAD``, a
    client gone before the first byte: a generator never started runs no ``finally``).
    The stream ends once ``key`` no longer holds (see the module docstring)."""
    upkeep = svc.upkeep
    hold = _take_slot(upkeep, key.tenant_id, svc.settings.streams_per_tenant)
    digest, prefix = key.key_sha256, key.prefix
    svc.stream_keys.opened(key)
    metrics = stream_metrics()
    held = [hold] if hold is not None else []

    def release() -> None:
        while held:
            upkeep.release(held.pop())

    def body() -> Iterator[str]:
        metrics.streams_open.inc()
        try:
            for event in events:
                if not svc.stream_keys.holds(digest):
                    log.info("event stream ended: API key %s revoked or expired", prefix)
                    return
                yield event
        except Gone as exc:  # purged under it: nothing more will come
            log.info("event stream ended: %s", exc)
        finally:
            metrics.streams_open.dec()
            close = getattr(events, "close", None)
            if close is not None:
                close()
            release()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    response = Response(body(), mimetype="text/event-stream", headers=headers)
    response.call_on_close(release)
    return response


def _take_slot(upkeep: StreamUpkeep, tenant_id: uuid.UUID, limit: int) -> Hold | None:
    try:
        hold = upkeep.take({f"sightline:streams:{tenant_id}": limit})
    except redis.RedisError as exc:
        log.warning("stream cap not enforced: Redis unreachable (%s)", type(exc).__name__)
        return None
    if hold is None:
        raise TooManyRequests(
            f"this tenant already holds {limit} event streams open; close one or poll",
            retry_after=int(upkeep.lease_s),
            code=ErrorCode.TOO_MANY_STREAMS,
        )
    return hold


def stream_metrics() -> ApiMetrics:
    found: ApiMetrics = current_app.extensions["sightline_metrics"]
    return found
