"""Weighted fair share between tenants: which queued jobs a claim takes.

Workers used to take the oldest queued job across all tenants, so one tenant's backfill
held every other tenant's work back until it was done. The claim now picks across the
tenants with queued work by *weighted fair share*, separately within each priority
(interactive still before any bulk):

- Every tenant's use is the number of jobs of that priority it had *started* (claimed)
  in the last ``SIGHTLINE_FAIR_SHARE_WINDOW_S`` seconds (:func:`recent_starts`).
- A tenant's ``k``-th oldest queued job has the share ``(use + k) / weight``; a claim of
  ``n`` jobs takes the ``n`` smallest shares (ties: older first). With both tenants
  backlogged, a tenant of weight 3 thus gets three jobs for every one of a tenant of
  weight 1; a tenant arriving with a small batch beside another's backlog has used
  nothing lately, so its jobs go first until its use catches up.
- The share counts jobs, not tokens or seconds of a worker: what a caller controls and
  sees (it submits jobs), known before a job runs (its length is not), and what a backlog
  is measured in. A tenant with longer jobs gets more worker time per job; see
  ``docs/scheduling.md`` for why that is the right default here.

The job whose wake-up message the worker is handling (``prefer``) takes its *own*
tenant's next turn, not another tenant's; an abandoned job (a suspect, run alone) is
taken from the tenant with the smallest share first, and, being claimed, counts towards
that tenant's use like any other. So neither bypasses the share.

On PostgreSQL the candidates are read per tenant and priority with a lateral index scan
(``ix_jobs_tenant_queue``: at most ``n`` rows each), so a claim reads about ``tenants ×
n`` index entries whatever the queue's length, and locks its picks with ``FOR UPDATE SKIP
LOCKED`` so workers claim side by side. Elsewhere (SQLite, one worker) a window function
over the queued jobs does the same.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    Select,
    Subquery,
    Uuid,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal,
    select,
    true,
    union_all,
)
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus, Priority, Tenant, UTCDateTime

# How many candidates per job wanted a claim ranks before locking: more lets claims of
# several workers at once pass over each other's picks; fewer is cheaper.
CANDIDATES = 4

# The statements take their values as parameters (:func:`parameters`), so each is built
# and compiled once and SQLAlchemy's cache serves it after.
_LIMIT = bindparam("fair_limit", type_=Integer())
_CANDIDATES = bindparam("fair_candidates", type_=Integer())
_SINCE = bindparam("fair_since", type_=UTCDateTime())
_PREFER = bindparam("fair_prefer", type_=Uuid())


def parameters(*, limit: int, since: datetime, prefer: uuid.UUID | None) -> dict[str, Any]:
    """The values of a claim: ``limit`` jobs, the share counting jobs started after
    ``since``, ``prefer`` taking its tenant's next turn (only with a statement built for
    one)."""
    values = {"fair_limit": limit, "fair_candidates": CANDIDATES * limit, "fair_since": since}
    return values if prefer is None else {**values, "fair_prefer": prefer}


def recent_starts(since: datetime | ColumnElement[datetime] = _SINCE) -> Subquery:
    """``(tenant_id, priority, used)``: jobs each tenant started since ``since``."""
    return (
        select(Job.tenant_id, Job.priority, func.count().label("used"))
        .where(Job.started_at > since)
        .group_by(Job.tenant_id, Job.priority)
        .subquery("recent")
    )


def _priorities(only: Priority | None) -> list[Priority]:
    return [only] if only is not None else [Priority.INTERACTIVE, Priority.BULK]


def _rank(priority: ColumnElement[Any]) -> ColumnElement[int]:
    return case((priority == Priority.INTERACTIVE, 0), else_=1)


def _of(recent: Subquery, tenant_id: Any, priority: Any) -> ColumnElement[bool]:
    """The join condition of :func:`recent_starts` to a (tenant, priority)."""
    return and_(recent.c.tenant_id == tenant_id, recent.c.priority == priority)


def _any_queued(*where: ColumnElement[bool]) -> ColumnElement[bool]:
    """Whether a job matching ``where`` is queued, asked of its oldest one, so that the
    probe reads one index entry (``ix_jobs_tenant_queue`` for a tenant's queue,
    ``ix_jobs_claim`` for a whole priority) rather than every match."""
    oldest = (
        select(Job.id)
        .where(Job.status == JobStatus.QUEUED, *where)
        .order_by(Job.created_at)
        .limit(1)
    )
    return oldest.scalar_subquery().is_not(None)


def _heads_lateral(recent: Subquery, prefer: bool, only: Priority | None) -> Subquery:
    """The candidates on PostgreSQL: ``(id, tenant_id, priority, created_at, used)``.

    A claim of ``limit`` jobs needs the jobs of at most ``limit`` (tenant, priority)
    queues: those with work whose *first* share ``(used + 1) / weight`` is smallest, since
    any other queue's every job comes after each of their first jobs. So the queues are
    sorted by that (a few thousand rows: tenants × priorities), and only as many are
    probed for work, in that order, as it takes to find ``limit`` with some (the sort is
    materialised so the probes run lazily after it); each of those gives its ``limit``
    oldest jobs by one index scan. ``prefer`` joins if queued.
    """
    # Literals, not VALUES: a statement with VALUES data is compiled anew every time.
    listed = union_all(
        *(
            select(literal(priority, Job.priority.type).label("priority"))
            for priority in _priorities(only)
        )
    ).subquery("listed")
    # Priorities with no queued job at all are dropped first (one probe each).
    wanted = (
        select(listed.c.priority)
        .where(_any_queued(Job.priority == listed.c.priority))
        .subquery("wanted")
    )
    used = func.coalesce(recent.c.used, 0)
    queues = (
        select(Tenant.id.label("tenant_id"), wanted.c.priority, used.label("used"))
        .select_from(Tenant)
        .join(wanted, true())
        .outerjoin(recent, _of(recent, Tenant.id, wanted.c.priority))
        .order_by(_rank(wanted.c.priority), cast(used + 1, Float) / Tenant.weight, Tenant.id)
        .cte("queues")
        .prefix_with("MATERIALIZED")
    )
    busy = (
        select(queues)
        .where(_any_queued(Job.tenant_id == queues.c.tenant_id, Job.priority == queues.c.priority))
        .limit(_LIMIT)
        .subquery("busy")
    )
    oldest = (
        select(Job.id, Job.created_at)
        .where(
            Job.tenant_id == busy.c.tenant_id,
            Job.priority == busy.c.priority,
            Job.status == JobStatus.QUEUED,
        )
        .order_by(Job.created_at)
        .limit(_LIMIT)
        .lateral("oldest")
    )
    heads = select(
        oldest.c.id, busy.c.tenant_id, busy.c.priority, oldest.c.created_at, busy.c.used
    ).join_from(busy, oldest, true())
    if not prefer:
        return heads.subquery("heads")
    preferred = (
        select(Job.id, Job.tenant_id, Job.priority, Job.created_at, used)
        .outerjoin(recent, _of(recent, Job.tenant_id, Job.priority))
        .where(
            Job.id == _PREFER,
            Job.status == JobStatus.QUEUED,
            Job.priority.in_(_priorities(only)),
        )
    )
    return heads.union(preferred).subquery("heads")  # UNION: no row twice


def _heads_window(recent: Subquery, only: Priority | None) -> Subquery:
    """The candidates elsewhere: every queued job (SQLite: one worker, small queues)."""
    return (
        select(
            Job.id,
            Job.tenant_id,
            Job.priority,
            Job.created_at,
            func.coalesce(recent.c.used, 0).label("used"),
        )
        .outerjoin(recent, _of(recent, Job.tenant_id, Job.priority))
        .where(Job.status == JobStatus.QUEUED, Job.priority.in_(_priorities(only)))
        .subquery("heads")
    )


def fair_pick(*, dialect: str, prefer: bool, only: Priority | None) -> Select[Any]:
    """The ids of the queued jobs a claim takes (see the module docstring; values from
    :func:`parameters`), locked ``FOR UPDATE SKIP LOCKED``: a job another claim holds is
    passed over, and the next candidates (up to ``CANDIDATES × limit`` in all) are taken
    instead. ``prefer``: whether the statement gives a preferred job its tenant's turn."""
    recent = recent_starts()
    heads = (
        _heads_lateral(recent, prefer, only)
        if dialect == "postgresql"
        else _heads_window(recent, only)
    )
    turn = func.row_number().over(
        partition_by=(heads.c.tenant_id, heads.c.priority),
        order_by=(
            (case((heads.c.id == _PREFER, 0), else_=1), heads.c.created_at)
            if prefer
            else heads.c.created_at
        ),
    )
    ranked = (
        select(
            heads.c.id,
            _rank(heads.c.priority).label("rank"),
            (cast(heads.c.used + turn, Float) / Tenant.weight).label("share"),
            heads.c.created_at,
        )
        .join(Tenant, Tenant.id == heads.c.tenant_id)
        .subquery("ranked")
    )
    order = (ranked.c.rank, ranked.c.share, ranked.c.created_at, ranked.c.id)
    candidates = select(ranked).order_by(*order).limit(_CANDIDATES).subquery("candidates")
    return (
        select(Job.id)
        .join(candidates, candidates.c.id == Job.id)
        .where(Job.status == JobStatus.QUEUED)
        .order_by(*(candidates.c[column.name] for column in order))
        .limit(_LIMIT)
        .with_for_update(of=Job, skip_locked=True)
    )


def orphan_pick(abandoned: ColumnElement[bool]) -> Select[Any]:
    """The id of the abandoned job (``abandoned``: its condition) a claim takes: of the
    tenant with the smallest share, oldest first, locked ``FOR UPDATE SKIP LOCKED``."""
    recent = recent_starts()
    share = cast(func.coalesce(recent.c.used, 0) + literal(1), Float) / Tenant.weight
    return (
        select(Job.id)
        .join(Tenant, Tenant.id == Job.tenant_id)
        .outerjoin(recent, _of(recent, Job.tenant_id, Job.priority))
        .where(abandoned)
        .order_by(share, Job.created_at)
        .limit(1)
        .with_for_update(of=Job, skip_locked=True)
    )


def queued_ahead(session: Session, job: Job) -> int:
    """How many of ``job``'s tenant's jobs of its priority are queued before it: what it
    waits for within its own tenant's turns (one range of ``ix_jobs_tenant_queue``)."""
    count = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(
            Job.tenant_id == job.tenant_id,
            Job.priority == job.priority,
            Job.status == JobStatus.QUEUED,
            Job.created_at < job.created_at,
        )
    )
    return int(count or 0)
