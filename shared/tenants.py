"""Tenants as operators see them: found by name or id, weighted, and their share of work.

A tenant's ``weight`` sets its share of the workers against the other tenants with queued
work (:mod:`shared.fair_share`); :func:`shares` reports what each tenant actually got.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.fair_share import recent_starts
from shared.models import ApiKey, Tenant

MAX_WEIGHT = 1000
# What "lately" means where shares are shown (the console, ``sightline tenants shares``).
SHARE_WINDOW = timedelta(minutes=15)


def find_tenant(session: Session, name_or_id: str) -> Tenant:
    """The tenant whose name or id is ``name_or_id``; ``LookupError`` if none."""
    query = select(Tenant).where(Tenant.name == name_or_id)
    with contextlib.suppress(ValueError):
        query = select(Tenant).where(Tenant.id == uuid.UUID(name_or_id))
    row = session.scalars(query).one_or_none()
    if row is None:
        raise LookupError(f"no tenant {name_or_id!r}")
    return row


def set_weight(session: Session, row: Tenant, weight: int) -> None:
    """Give tenant ``row`` the weight ``weight`` (1 to :data:`MAX_WEIGHT`): the next claim
    shares by it. ``ValueError`` outside that range."""
    if not 1 <= weight <= MAX_WEIGHT:
        raise ValueError(f"a weight is a whole number from 1 to {MAX_WEIGHT}, not {weight}")
    row.weight = weight
    session.flush()


@dataclass(frozen=True)
class Share:
    """What one tenant got since some moment: jobs started (claimed) of each priority,
    and their fraction of all jobs started then."""

    tenant_id: uuid.UUID
    tenant: str
    weight: int
    interactive: int
    bulk: int
    fraction: float


def shares(session: Session, since: datetime) -> list[Share]:
    """Every tenant that started jobs since ``since``, most first."""
    recent = recent_starts(since)
    rows = session.execute(
        select(Tenant.id, Tenant.name, Tenant.weight, recent.c.priority, recent.c.used).join(
            recent, recent.c.tenant_id == Tenant.id
        )
    ).all()
    counts: dict[tuple[uuid.UUID, str, int], dict[str, int]] = {}
    for tenant_id, name, weight, priority, used in rows:
        counts.setdefault((tenant_id, name, weight), {})[priority] = used
    total = sum(sum(by.values()) for by in counts.values())
    found = [
        Share(
            tenant_id=tenant_id,
            tenant=name,
            weight=weight,
            interactive=by.get("interactive", 0),
            bulk=by.get("bulk", 0),
            fraction=sum(by.values()) / total,
        )
        for (tenant_id, name, weight), by in counts.items()
    ]
    return sorted(found, key=lambda share: (-share.fraction, share.tenant))


def list_tenants(session: Session) -> list[dict[str, object]]:
    """Every tenant by name: id, weight and how many keys it has."""
    keys = (
        select(ApiKey.tenant_id, func.count().label("key_count"))
        .group_by(ApiKey.tenant_id)
        .subquery("keys")
    )
    rows = session.execute(
        select(Tenant.id, Tenant.name, Tenant.weight, func.coalesce(keys.c.key_count, 0))
        .outerjoin(keys, keys.c.tenant_id == Tenant.id)
        .order_by(Tenant.name)
    ).all()
    return [{"id": str(row[0]), "name": row[1], "weight": row[2], "keys": row[3]} for row in rows]
