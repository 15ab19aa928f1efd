"""Caps on concurrent long-polls (``GET /v1/jobs/{id}?wait=``), per process and per tenant.

A long-poll is a sleeping greenlet (the API runs gunicorn's gevent worker) woken by the
job feed, so it costs little; the caps keep one tenant from holding an unbounded number
of connections and Redis subscriptions all the same. A wait goes ahead only while

- this process holds fewer than ``long_poll_per_process`` waits, and
- the tenant holds fewer than ``long_poll_per_tenant`` waits across all API processes
  (counted in Redis, :mod:`shared.redis_slots`, holds lapsing after the longest wait).

A wait over either cap is not refused: the request answers at once with the job's
current state, as ``wait=0`` would, and the caller polls again (the client library
loops until the job is final). If Redis cannot be reached, only the process cap applies
(logged). Event streams have their own cap, which refuses (:mod:`api.streams`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from flask import current_app

from api.context import services
from shared.redis_slots import RedisSlots

log = logging.getLogger(__name__)

_EXTENSION = "sightline.wait_limits"
# A tenant's hold outlives the longest wait by this much before it lapses on its own.
_LEASE_MARGIN_S = 10.0


class WaitLimits:
    """The wait caps of one API process."""

    def __init__(
        self, slots: RedisSlots, *, per_process: int, per_tenant: int, longest_wait_s: float
    ) -> None:
        self._slots = slots
        self._process = threading.BoundedSemaphore(per_process) if per_process else None
        self._per_tenant = per_tenant
        self._lease_s = longest_wait_s + _LEASE_MARGIN_S

    @contextmanager
    def turn(self, tenant_id: object) -> Iterator[bool]:
        """Yields whether ``tenant_id`` may wait now; the turn ends with the block."""
        if self._process is None or not self._process.acquire(blocking=False):
            yield False
            return
        try:
            with self._tenant_turn(tenant_id) as granted:
                yield granted
        finally:
            self._process.release()

    @contextmanager
    def _tenant_turn(self, tenant_id: object) -> Iterator[bool]:
        if self._per_tenant == 0:
            yield False
            return
        limits = {f"sightline:long-polls:{tenant_id}": self._per_tenant}
        try:
            hold = self._slots.acquire(limits, self._lease_s)
        except redis.RedisError as exc:
            log.warning(
                "long-poll tenant cap not enforced: Redis unreachable (%s)", type(exc).__name__
            )
            yield True
            return
        if hold is None:
            yield False
            return
        try:
            yield True
        finally:
            try:
                self._slots.release(hold)
            except redis.RedisError as exc:
                log.warning("long-poll hold not released (%s); it lapses", type(exc).__name__)


def wait_limits(longest_wait_s: float) -> WaitLimits:
    """This app's :class:`WaitLimits`, made on first use from its settings and Redis."""
    found = current_app.extensions.get(_EXTENSION)
    if isinstance(found, WaitLimits):
        return found
    svc = services()
    made = WaitLimits(
        RedisSlots(svc.counters),
        per_process=svc.settings.long_poll_per_process,
        per_tenant=svc.settings.long_poll_per_tenant,
        longest_wait_s=longest_wait_s,
    )
    # Two first requests at once: both keep the one stored first.
    kept: WaitLimits = current_app.extensions.setdefault(_EXTENSION, made)
    return kept
