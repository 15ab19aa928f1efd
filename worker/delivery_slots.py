"""Delivery slots: how many webhook attempts one endpoint or one tenant may have in flight.

An *endpoint* is (tenant, scheme, host, port) of the callback URL: paths and query
strings do not make new ones, so a tenant cannot multiply its share by varying them.

The counts live in Redis (the broker's server; :mod:`shared.redis_slots`), not in the
process, because several ``sightline webhooks`` processes share the limits: a
per-process count would give a tenant N times its share with N processes. They are not
in the database either: a slot is taken and given back around every attempt, and a row
lock per attempt would be a write per attempt on the hot table for nothing durable.
A hold lapses after ``lease_s`` (the margin the database's attempt reservation uses),
so a process killed mid-attempt does not leak slots.
"""

from __future__ import annotations

import hashlib

from shared.endpoints import origin_of
from shared.redis_slots import Hold, RedisSlots

_PREFIX = "sightline:webhook-slots"


def endpoint_of(tenant_id: object, url: str) -> str:
    """The endpoint ``url`` belongs to for ``tenant_id`` (:func:`shared.endpoints.origin_of`):
    ``tenant|scheme://host:port``."""
    scheme, host, port = origin_of(url)
    return f"{tenant_id}|{scheme}://{host}:{port}"


class DeliverySlots:
    """Per-endpoint and per-tenant limits on attempts in flight, across ops processes."""

    def __init__(
        self, slots: RedisSlots, *, per_endpoint: int, per_tenant: int, lease_s: float
    ) -> None:
        self._slots = slots
        self._per_endpoint = per_endpoint
        self._per_tenant = per_tenant
        self._lease_s = lease_s

    def acquire(self, tenant_id: object, url: str) -> Hold | None:
        """A slot for an attempt to ``url`` of ``tenant_id``; ``None`` when the endpoint
        or the tenant already has its limit in flight. Raises ``redis.RedisError`` when
        Redis cannot be reached."""
        # Keys of a fixed shape whatever the URL holds (length, odd characters).
        endpoint = hashlib.sha256(endpoint_of(tenant_id, url).encode()).hexdigest()[:32]
        limits = {
            f"{_PREFIX}:tenant:{tenant_id}": self._per_tenant,
            f"{_PREFIX}:endpoint:{endpoint}": self._per_endpoint,
        }
        return self._slots.acquire(limits, self._lease_s)

    def release(self, hold: Hold) -> None:
        """Give ``hold`` back; raises ``redis.RedisError`` (it then lapses on its own)."""
        self._slots.release(hold)
