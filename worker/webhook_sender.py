"""Deliver one webhook attempt, record it, and schedule the next.

Runs in ``sightline webhooks`` (no GPU) on the ``webhooks`` queue. An attempt is
reserved with a conditional UPDATE (the event is pending, due, and not being attempted
elsewhere), so duplicate wake-ups never send twice at once. Any 2xx is success;
redirects are not followed (a 3xx is a failed attempt); 410 Gone stops the retries;
anything else (other status, timeout, refused connection, a destination the SSRF guard
refuses now) is retried after the next delay of ``webhook_retry_schedule_s`` ± jitter,
until the schedule is exhausted. A 429, 502, 503 or 504 with a ``Retry-After`` (seconds or
an HTTP-date) waits at least that long, cut to ``webhook_retry_after_max_s``. Every
attempt becomes a ``webhook_deliveries`` row and counts for its endpoint's health
(:mod:`shared.endpoints`): an event of a disabled endpoint is ``kept``, not attempted.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.db import transaction
from shared.endpoints import attach_endpoint, record_outcome
from shared.models import EventStatus, Tenant, WebhookDelivery, WebhookEvent, utcnow
from shared.outbound import OutboundClient, OutboundFailed
from shared.settings import Settings
from shared.ssrf import ForbiddenDestination, OutboundPolicy, loggable_origin
from shared.webhooks import signed_headers, signing_secrets

log = logging.getLogger(__name__)

USER_AGENT = "sightline-webhooks/0.1"
# An attempt's reservation outlives its HTTP timeout by this much before another may try.
LOCK_MARGIN_S = 30.0
# How much of a receiver's answer is read: only the status matters, so a huge or endless
# body costs at most this much.
RESPONSE_BODY_BYTES = 4096
# The answers whose Retry-After the retry schedule honours.
RETRY_AFTER_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class AttemptResult:
    """One attempt's outcome: the HTTP status (None if none came) or the error, and the
    seconds the receiver asked to wait (``Retry-After``, capped) if it did."""

    status_code: int | None
    error: str | None
    latency_ms: int | None
    retry_after_s: float | None = None


@dataclass(frozen=True)
class Reserved:
    """An attempt reserved: the event, its tenant and its endpoint's id."""

    event: WebhookEvent
    tenant: Tenant
    endpoint_id: uuid.UUID


class WebhookSender:
    """Sends the attempts of one process, with one HTTP session and one policy."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        outbound: OutboundClient | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``outbound`` defaults to a client of ``SIGHTLINE_OUTBOUND_ALLOWLIST``'s policy."""
        self._settings = settings
        self._sessions = sessions
        self._outbound = outbound or OutboundClient(
            OutboundPolicy.from_setting(settings.outbound_allowlist)
        )
        self._rng = rng or random.Random()

    def deliver(self, event_id: str) -> str:
        """Make the due attempt of ``event_id``; returns what happened (``delivered``,
        ``retry``, ``failed``, ``kept`` when its endpoint is or just became disabled),
        ``skipped`` when nothing was due or it is in progress, or ``erased`` when a purge
        deleted the event during the attempt. A redelivery asked for during the attempt is
        sent right after it."""
        now = utcnow()
        reserved = self._reserve(event_id, now)
        if isinstance(reserved, str):
            return reserved
        outcome = self._attempt(reserved.event, reserved.tenant, now)
        verdict = self._record(reserved, outcome)
        if verdict == "redeliver":
            # Its wake-up found this attempt's reservation and was skipped: send it now.
            return self.deliver(event_id)
        return verdict

    def _reserve(self, event_id: str, now: datetime) -> Reserved | Literal["skipped", "kept"]:
        """Reserve the due attempt, or say why there is none: ``skipped`` (not due, not
        pending, in progress) or ``kept`` (its endpoint is disabled: the event is kept,
        its reservation undone)."""
        lock = now + timedelta(seconds=self._settings.webhook_timeout_s + LOCK_MARGIN_S)
        with transaction(self._sessions) as session:
            event = session.scalars(
                update(WebhookEvent)
                .where(
                    WebhookEvent.id == event_id,
                    WebhookEvent.status == EventStatus.PENDING,
                    WebhookEvent.next_attempt_at <= now,
                    (WebhookEvent.locked_until.is_(None)) | (WebhookEvent.locked_until < now),
                )
                .values(attempts=WebhookEvent.attempts + 1, locked_until=lock)
                .returning(WebhookEvent),
                execution_options={"synchronize_session": False},
            ).one_or_none()
            if event is None:
                return "skipped"
            endpoint = attach_endpoint(session, event)
            if endpoint.disabled_at is not None:
                session.execute(
                    update(WebhookEvent)
                    .where(WebhookEvent.id == event_id)
                    .values(
                        status=EventStatus.KEPT,
                        attempts=WebhookEvent.attempts - 1,
                        locked_until=None,
                        next_attempt_at=None,
                        enqueued_at=None,
                    ),
                    execution_options={"synchronize_session": False},
                )
                return "kept"
            return Reserved(event, session.get_one(Tenant, event.tenant_id), endpoint.id)

    def _attempt(self, event: WebhookEvent, tenant: Tenant, now: datetime) -> AttemptResult:
        """POST the event through the outbound client: the SSRF guard vets the URL now and
        the connection goes to the vetted address; the whole attempt, answer included,
        ends within ``webhook_timeout_s`` (so it always ends before its reservation), and
        at most ``RESPONSE_BODY_BYTES`` of the answer are read."""
        headers = signed_headers(
            signing_secrets(tenant, now), event.id, int(time.time()), event.payload
        )
        headers |= {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        started = time.perf_counter()
        try:
            response = self._outbound.request(
                "POST",
                event.url,
                field="callback_url",
                deadline_s=self._settings.webhook_timeout_s,
                max_body_bytes=RESPONSE_BODY_BYTES,
                headers=headers,
                body=event.payload.encode(),
            )
        except ForbiddenDestination as exc:
            return AttemptResult(None, f"refused by the SSRF guard: {exc.detail}", None)
        except OutboundFailed as exc:
            return AttemptResult(None, f"{type(exc).__name__}: {exc}", _since(started))
        error = None if 200 <= response.status < 300 else f"HTTP {response.status}"
        retry_after = None
        if response.status in RETRY_AFTER_STATUSES:
            retry_after = retry_after_s(
                response.headers, utcnow(), self._settings.webhook_retry_after_max_s
            )
        return AttemptResult(response.status, error, _since(started), retry_after)

    def _record(self, reserved: Reserved, outcome: AttemptResult) -> str:
        """Write the attempt's ``webhook_deliveries`` row and the event's next state.

        A redelivery requested while the attempt was in flight has moved the event's
        ``next_attempt_at``: that request wins (the event stays pending and due, only the
        reservation is released) and the verdict is ``redeliver``, so it is not lost to
        this attempt's outcome. The endpoint's health is updated in the same
        transaction; an attempt that disables it keeps this event (verdict ``kept``)
        unless it failed for good."""
        event = reserved.event
        now = utcnow()
        schedule = self._settings.retry_schedule
        next_at: datetime | None = None
        if outcome.error is None:
            status, verdict = EventStatus.DELIVERED, "delivered"
        elif outcome.status_code == 410 or event.attempts >= len(schedule):
            status, verdict = EventStatus.FAILED, "failed"
        else:
            status, verdict = EventStatus.PENDING, "retry"
            delay = self._delay(schedule[event.attempts])
            next_at = now + timedelta(seconds=max(delay, outcome.retry_after_s or 0.0))
        with transaction(self._sessions) as session:
            # A purge erases events under this row lock: either it waits for this
            # attempt's row (and erases it too), or the event is gone and there is no
            # event left to record an attempt of.
            held = session.scalar(
                select(WebhookEvent.id).where(WebhookEvent.id == event.id).with_for_update()
            )
            if held is None:
                log.info("webhook %s was purged during its attempt", event.id)
                return "erased"
            session.add(
                WebhookDelivery(
                    event_id=event.id,
                    job_id=event.job_id,
                    url=event.url,
                    attempt=event.attempts,
                    status_code=outcome.status_code,
                    latency_ms=outcome.latency_ms,
                    error=outcome.error,
                    attempted_at=now,
                    next_attempt_at=next_at,
                )
            )
            updated = cast(
                CursorResult[Any],
                session.execute(
                    update(WebhookEvent)
                    .where(
                        WebhookEvent.id == event.id,
                        WebhookEvent.next_attempt_at == event.next_attempt_at,
                    )
                    .values(
                        status=status,
                        next_attempt_at=next_at,
                        locked_until=None,
                        enqueued_at=None,
                        last_error=outcome.error,
                        delivered_at=now if status is EventStatus.DELIVERED else None,
                    ),
                    execution_options={"synchronize_session": False},
                ),
            )
            if updated.rowcount == 0:
                verdict = "redeliver"
                session.execute(
                    update(WebhookEvent)
                    .where(WebhookEvent.id == event.id)
                    .values(locked_until=None, last_error=outcome.error),
                    execution_options={"synchronize_session": False},
                )
            disabled = record_outcome(
                session,
                reserved.endpoint_id,
                outcome.error,
                now,
                self._settings.endpoint_disable_after_s,
            )
            if disabled and verdict in ("retry", "redeliver"):
                verdict = "kept"
        log.info(
            "webhook %s attempt %d to %s: %s (%s)",
            event.id,
            event.attempts,
            loggable_origin(event.url),
            verdict,
            outcome.status_code or outcome.error,
        )
        return verdict

    def _delay(self, base_s: float) -> float:
        jitter = self._settings.webhook_jitter
        return base_s * self._rng.uniform(1 - jitter, 1 + jitter)


def retry_after_s(headers: Mapping[str, str], now: datetime, cap_s: int) -> float | None:
    """The wait a ``Retry-After`` header in ``headers`` asks for, in seconds from ``now``
    (delay-seconds or an HTTP-date; a date in the past is 0), at most ``cap_s``; ``None``
    when there is none or it does not parse."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(min(int(value), cap_s))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max((when - now).total_seconds(), 0.0), float(cap_s))


def _since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
