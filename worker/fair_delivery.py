"""Webhook attempts in a fair order: no endpoint, tenant or slow receiver takes every thread.

Each ``sightline.deliver_webhook`` message runs :meth:`FairDelivery.run`, which makes the
attempt only when three bounds have room:

- the process's delivery threads (``threads``): the ops worker has more pool threads
  than this, so attempts can never occupy the one the sweeper runs on;
- the endpoint's slots (``webhook_endpoint_concurrency``) and
- the tenant's slots (``webhook_tenant_concurrency``), both counted across every ops
  process (:mod:`worker.delivery_slots`).

An attempt that finds no room is *deferred*, not dropped and not waited for: the
message is sent again with a short countdown that doubles with each deferral of the same
event (``DEFER_BASE_S`` up to ``DEFER_MAX_S``, jittered), and the thread returns at once,
so the attempts of other endpoints that arrive meanwhile go first. The event's
``enqueued_at`` is stamped at each deferral, which tells the sweeper a wake-up is
outstanding; if the deferred message is lost anyway (broker flushed, process killed
while holding it), the sweeper re-sends the event once that stamp is older than an
attempt could take, as for any lost wake-up. Nothing about the event itself changes:
its attempts count, retry schedule and ``next_attempt_at`` are the sender's alone.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Literal

import redis
from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.db import transaction
from shared.models import EventStatus, WebhookEvent, utcnow
from shared.redis_slots import Hold
from shared.tasks import DELIVER_WEBHOOK_TASK, QUEUE_WEBHOOKS
from worker.delivery_slots import DeliverySlots
from worker.webhook_sender import WebhookSender

log = logging.getLogger(__name__)

# The first deferral waits about this long (seconds); each further one twice as long, up
# to DEFER_MAX_S, which stays far below the sweeper's "wake-up lost" age (the attempt
# timeout plus LOCK_MARGIN_S), so the sweeper never sends a duplicate of a live deferral.
DEFER_BASE_S = 0.25
DEFER_MAX_S = 8.0


class FairDelivery:
    """Gates :meth:`WebhookSender.deliver` behind the process, endpoint and tenant bounds."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        sender: WebhookSender,
        slots: DeliverySlots,
        celery: Celery,
        threads: int,
        rng: random.Random | None = None,
    ) -> None:
        self._sessions = sessions
        self._sender = sender
        self._slots = slots
        self._celery = celery
        self._threads = threading.BoundedSemaphore(threads)
        self._rng = rng or random.Random()

    def run(self, event_id: str, deferrals: int = 0) -> str:
        """Attempt ``event_id`` now if the bounds allow (the sender's verdict), defer it
        (``deferred``), or ``skipped`` when it is not due, not pending or being attempted
        elsewhere."""
        target = self._due_target(event_id)
        if target is None:
            return "skipped"
        tenant_id, callback_url = target
        if not self._threads.acquire(blocking=False):
            return self._defer(event_id, deferrals)
        try:
            slot = self._take_slot(tenant_id, callback_url)
            if slot is False:
                return self._defer(event_id, deferrals)
            try:
                return self._sender.deliver(event_id)
            finally:
                if slot is not None:
                    self._give_back(slot)
        finally:
            self._threads.release()

    def _due_target(self, event_id: str) -> tuple[object, str] | None:
        """(tenant id, URL) of the event if an attempt could be reserved now: the same
        conditions as the sender's reservation, read without locking (the sender's
        conditional UPDATE still decides)."""
        now = utcnow()
        with self._sessions() as session:
            row = session.execute(
                select(WebhookEvent.tenant_id, WebhookEvent.url).where(
                    WebhookEvent.id == event_id,
                    WebhookEvent.status == EventStatus.PENDING,
                    WebhookEvent.next_attempt_at <= now,
                    (WebhookEvent.locked_until.is_(None)) | (WebhookEvent.locked_until < now),
                )
            ).one_or_none()
        return None if row is None else (row.tenant_id, row.url)

    def _take_slot(self, tenant_id: object, url: str) -> Hold | Literal[False] | None:
        """The slot taken, ``False`` when the endpoint or tenant is full, ``None`` when
        Redis cannot count (the attempt goes ahead: the thread bound still holds)."""
        try:
            slot = self._slots.acquire(tenant_id, url)
        except redis.RedisError as exc:
            log.warning("delivery slots unavailable (%s); attempting anyway", type(exc).__name__)
            return None
        return False if slot is None else slot

    def _give_back(self, slot: Hold) -> None:
        try:
            self._slots.release(slot)
        except redis.RedisError as exc:
            log.warning("delivery slot not released (%s); it lapses", type(exc).__name__)

    def _defer(self, event_id: str, deferrals: int) -> str:
        """Stamp the event as having a wake-up outstanding and send that wake-up with a
        countdown; a broker error is logged (the sweeper re-sends the event later)."""
        with transaction(self._sessions) as session:
            session.execute(
                update(WebhookEvent)
                .where(WebhookEvent.id == event_id, WebhookEvent.status == EventStatus.PENDING)
                .values(enqueued_at=utcnow()),
                execution_options={"synchronize_session": False},
            )
        backoff = min(DEFER_BASE_S * 2 ** min(deferrals, 16), DEFER_MAX_S)
        delay = backoff * self._rng.uniform(0.5, 1.0)
        try:
            self._celery.send_task(
                DELIVER_WEBHOOK_TASK,
                args=[event_id],
                kwargs={"deferrals": deferrals + 1},
                queue=QUEUE_WEBHOOKS,
                countdown=delay,
            )
        except Exception as exc:
            log.warning("deferred webhook %s not re-sent (%s); the sweeper will", event_id, exc)
        return "deferred"
