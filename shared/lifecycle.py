"""The job lifecycle: the only code that moves a job from one status to another.

:data:`TRANSITIONS` says which moves are legal and who may make them. Every move is one
function here, a conditional UPDATE whose condition is that table's row (so a late,
duplicate or stale caller changes nothing), run in the caller's transaction through a
:class:`JobChanges`: a job that becomes final gets its outbox event (``job.<status>``)
in that same transaction, and :func:`unit_of_work` completes the batches those jobs
finished, commits, and only then wakes the webhook sender and tells the job feed
(:mod:`shared.job_feed`) which jobs and batches moved. No caller writes outbox rows,
wakes the sender or publishes moves itself.

Who moves what:

- the **worker** claims queued jobs (and abandoned ones: running under an expired lease,
  attempts left), renews its claim's lease, finishes what it claimed, and on shutdown
  hands back what it could not finish, only while its claim token is still the job's
  (:func:`claim`, :func:`renew`, :func:`finish`, :func:`release`); a worker starting
  under a node name expires the leases its dead predecessor of that name left, so they
  are claimed again at once as abandoned jobs (:func:`expire_predecessor`);
- the **caller** cancels one queued or running job, or every unfinished job of a
  batch (:func:`cancel`, :func:`cancel_batch`), and a purge cancels whatever it erases that
  is not final yet (:func:`cancel_jobs`, ``shared.purge``); a running job's worker
  aborts its row at the next step, and could not write its result anyway: it finishes
  only jobs still running under its token;
- the **sweeper** fails queued jobs past their deadline (``expired``) and running jobs
  whose lease expired with no attempts left (``worker_lost``) (:func:`expire_overdue`,
  :func:`fail_lost`). Re-sending lost wake-ups (``worker/sweeper.py``) moves nothing: a
  requeued job stays queued, an abandoned one running until a worker claims it.
"""

from __future__ import annotations

import enum
import functools
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from celery import Celery
from sqlalchemy import (
    JSON,
    ColumnElement,
    Table,
    Uuid,
    bindparam,
    case,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.dml import ReturningUpdate
from sqlalchemy.sql.selectable import SelectBase

from shared import fair_share
from shared.batches import complete_batches
from shared.db import transaction
from shared.enqueue import enqueue_events
from shared.error_codes import JobErrorCode
from shared.job_feed import JobFeed
from shared.models import Job, JobStatus, Priority, UTCDateTime, utcnow
from shared.webhooks import record_events


class Actor(enum.StrEnum):
    """Who makes a move."""

    WORKER = "worker"
    CALLER = "caller"
    SWEEPER = "sweeper"


Q, R = JobStatus.QUEUED, JobStatus.RUNNING
S, F, C = JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED
# (from, to) -> who may make that move. Nothing leaves a final status; running → running
# is a renewal or the reclaim of an abandoned job under a new claim token.
TRANSITIONS: Mapping[tuple[JobStatus, JobStatus], frozenset[Actor]] = {
    (Q, R): frozenset({Actor.WORKER}),
    (R, R): frozenset({Actor.WORKER}),
    (R, Q): frozenset({Actor.WORKER}),
    (R, S): frozenset({Actor.WORKER}),
    (R, F): frozenset({Actor.WORKER, Actor.SWEEPER}),
    (Q, F): frozenset({Actor.SWEEPER}),
    (Q, C): frozenset({Actor.CALLER}),
    (R, C): frozenset({Actor.CALLER}),
}
EXPIRED_MESSAGE = "the job's timeout passed before it ran"
# The jobs table for Core statements: finish is an executemany keyed by id, which an ORM
# update would turn into a bulk update by primary key without the guard.
_JOBS = cast(Table, Job.__table__)


def may_move(source: JobStatus, target: JobStatus, actor: Actor) -> bool:
    """Whether ``actor`` may move a job from ``source`` to ``target``."""
    return actor in TRANSITIONS.get((source, target), frozenset())


def sources(target: JobStatus, actor: Actor) -> list[JobStatus]:
    """The statuses ``actor`` may move a job to ``target`` from (the guard of a move)."""
    return [source for source in JobStatus if may_move(source, target, actor)]


@dataclass
class JobChanges:
    """One transaction's moves: its session, the jobs it made final, the other jobs it
    moved (claimed, handed back), the batches it completed work of and the outbox events
    written for them. Build it with :func:`unit_of_work` (or, where the caller owns the
    transaction and the wake-up, directly around its session)."""

    session: Session
    final: list[uuid.UUID] = field(default_factory=list)
    moved: list[uuid.UUID] = field(default_factory=list)
    batches: list[uuid.UUID] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def settled(self, job_ids: Sequence[uuid.UUID]) -> None:
        """Record that ``job_ids`` just became final: write their outbox events."""
        ids = list(job_ids)
        if ids:
            self.final += ids
            self.events += record_events(self.session, ids)

    def complete_batches(self, *, every_open: bool = False) -> None:
        """Complete the batches whose last jobs were made final here (or, for the
        sweeper's catch-up, every open batch that has none left) and write their
        ``batch.completed`` events."""
        if every_open:
            self.events += complete_batches(self.session, None)
            return
        batch_ids = self.session.scalars(
            select(Job.batch_id).where(Job.id.in_(self.final), Job.batch_id.is_not(None)).distinct()
        ).all()
        self.batches = [b for b in batch_ids if b is not None]
        self.events += complete_batches(self.session, self.batches)


@contextmanager
def unit_of_work(
    sessions: sessionmaker[Session],
    wake: Celery | Callable[[list[str]], None],
    feed: JobFeed | None,
) -> Iterator[JobChanges]:
    """One transaction of moves: yields its :class:`JobChanges`; at the end completes the
    batches they finished, commits, and then wakes the webhook sender for every event
    written and tells ``feed`` which jobs and batches moved (never before the commit,
    never for a rolled-back transaction). ``wake`` is the Celery app to send the
    wake-ups with, or a function given the event ids; ``feed`` is ``None`` only where no
    one can be watching (tests of the moves themselves)."""
    with transaction(sessions) as session:
        changes = JobChanges(session)
        yield changes
        if changes.final:
            changes.complete_batches()
    if isinstance(wake, Celery):
        enqueue_events(wake, changes.events)
    else:
        wake(changes.events)
    if feed is not None:
        feed.changed([*changes.moved, *changes.final], changes.batches)


def _update(changes: JobChanges, stmt: Any) -> list[uuid.UUID]:
    return list(
        changes.session.scalars(
            stmt.returning(Job.id), execution_options={"synchronize_session": False}
        )
    )


# -- the worker ------------------------------------------------------------------------


def abandoned(
    max_attempts: int | ColumnElement[int], now: datetime | ColumnElement[datetime] | None = None
) -> ColumnElement[bool]:
    """Running under an expired lease (its worker died) at ``now`` (default: this
    moment) with attempts left; a job out of attempts is left for the sweeper to fail as
    ``worker_lost``."""
    return (
        (Job.status == JobStatus.RUNNING)
        & (Job.lease_expires_at < (utcnow() if now is None else now))
        & (Job.attempts < max_attempts)
    )


def next_queued() -> list[ColumnElement[Any]]:
    """The order workers take queued jobs in: interactive before bulk, oldest first."""
    return [case((Job.priority == Priority.INTERACTIVE, 0), else_=1), Job.created_at.asc()]


def claimable(max_attempts: int) -> ColumnElement[bool]:
    """Jobs a worker may take: queued, or abandoned (see :func:`abandoned`)."""
    return or_(Job.status == JobStatus.QUEUED, abandoned(max_attempts))


def claim(
    changes: JobChanges,
    *,
    worker: str,
    token: uuid.UUID,
    limit: int,
    lease_s: int,
    max_attempts: int,
    fair_share_window_s: int,
    prefer: uuid.UUID | None = None,
    with_abandoned: bool = True,
    only: Priority | None = None,
) -> list[Job]:
    """Take up to ``limit`` queued jobs, plus at most one abandoned job, in one statement
    (queued → running, running → running under a new token).

    Queued jobs are picked by weighted fair share between tenants, interactive before
    bulk (:mod:`shared.fair_share`; the share counts the jobs each tenant started in the
    last ``fair_share_window_s`` seconds); ``prefer`` (the job whose message woke us)
    takes its own tenant's next turn. An abandoned job (its worker died while running it)
    may be the one that killed that worker, so it is taken alone and run alone: a poison
    job must not burn its neighbours' attempts; a job abandoned under ``token`` itself
    is not taken (its run is alive). On PostgreSQL ``FOR UPDATE SKIP LOCKED``
    lets workers claim side by side; on SQLite the transaction holds the write lock.
    Every claimed job gets ``attempts + 1``, the claim ``token`` (one per batch; it alone
    may finish the jobs) and a lease of ``lease_s`` seconds. ``only`` restricts the
    queued jobs to one priority. Returns the rows in no particular order
    (``worker.scheduling.claim_order`` orders them for running).
    """
    now = utcnow()
    stmt = _claim_statement(
        changes.session.get_bind().dialect.name, prefer is not None, with_abandoned, only
    )
    values = {
        **fair_share.parameters(
            limit=limit, since=now - timedelta(seconds=fair_share_window_s), prefer=prefer
        ),
        "claim_worker": worker,
        "claim_token": token,
        "claim_now": now,
        "claim_lease_until": now + timedelta(seconds=lease_s),
        "claim_max_attempts": max_attempts,
    }
    claimed = list(
        changes.session.scalars(stmt, values, execution_options={"synchronize_session": False})
    )
    changes.moved += [job.id for job in claimed]
    return claimed


@functools.cache
def _claim_statement(
    dialect: str, prefer: bool, with_abandoned: bool, only: Priority | None
) -> ReturningUpdate[Job]:
    """The claim's statement, built once per shape: its values are parameters."""
    now = bindparam("claim_now", type_=UTCDateTime())
    picks: SelectBase = fair_share.fair_pick(dialect=dialect, prefer=prefer, only=only)
    if with_abandoned:
        # Never a job of the claiming run itself: its row may still be in that run's
        # engine (a lease renewal that failed), and running it again beside itself would
        # spend an attempt for nothing.
        orphan = fair_share.orphan_pick(
            abandoned(bindparam("claim_max_attempts"), now=now)
            & (Job.claim_token != bindparam("claim_token", type_=Uuid()))
        )
        # One IN over both picks: an OR of two would make PostgreSQL scan the whole table.
        # Each pick locks its rows in its own subquery (no FOR UPDATE over a UNION).
        picks = union_all(
            select(picks.subquery("fair").c.id), select(orphan.subquery("orphan").c.id)
        )
    return (
        update(Job)
        .where(Job.id.in_(picks.scalar_subquery()))
        .values(
            status=JobStatus.RUNNING,
            worker=bindparam("claim_worker"),
            claim_token=bindparam("claim_token", type_=Uuid()),
            started_at=now,
            lease_expires_at=bindparam("claim_lease_until", type_=UTCDateTime()),
            attempts=Job.attempts + 1,
        )
        .returning(Job)
    )


def renew(changes: JobChanges, *, token: uuid.UUID, lease_s: int) -> int:
    """Extend the lease of every job still running under ``token``; returns how many."""
    stmt = (
        update(Job)
        .where(Job.claim_token == token, Job.status == JobStatus.RUNNING)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
    )
    return len(_update(changes, stmt))


def release(
    changes: JobChanges,
    *,
    token: uuid.UUID,
    job_ids: Sequence[uuid.UUID],
    suspected: Collection[uuid.UUID] = (),
) -> int:
    """Hand jobs still running under ``token`` back to the queue (running → queued), as
    a worker that stops before finishing them does; the claim does not count as an
    attempt, except for the jobs of ``suspected`` (a failed step dropped them and the
    worker had not yet found the culprit among them): their claim counts, so the next
    claim takes each as a suspect, to run alone. Returns how many; the caller leaves a
    wake-up for them."""
    if not job_ids:
        return 0
    attempts: ColumnElement[int] | int = Job.attempts - 1
    if suspected:
        attempts = case((Job.id.in_(list(suspected)), Job.attempts), else_=Job.attempts - 1)
    stmt = (
        update(Job)
        .where(
            Job.id.in_(list(job_ids)),
            Job.claim_token == token,
            Job.status.in_(sources(JobStatus.QUEUED, Actor.WORKER)),
        )
        .values(
            status=JobStatus.QUEUED,
            worker=None,
            claim_token=None,
            started_at=None,
            lease_expires_at=None,
            attempts=attempts,
        )
    )
    released = _update(changes, stmt)
    changes.moved += released
    return len(released)


def expire_predecessor(changes: JobChanges, *, worker: str) -> list[uuid.UUID]:
    """Expire, now, the lease of every job still running under the node name ``worker``
    (running → running, attempts and claim token kept), and return their ids.

    Called by a worker's launcher when the worker process dies, before it starts the
    next one under the same name, and by a worker process as it starts, before it claims
    anything: a job running under that node name was claimed by a process of that name on
    this host, which is dead (killed, or the host rebooted). Instead of waiting out
    the lease, the jobs become abandoned at once: claimed again alone, as suspects, and
    failed as ``worker_lost`` by the sweeper when out of attempts. Fenced by the worker
    name (node names are unique per host): a job another worker has claimed since
    carries that worker's name and is left alone, and the dead claim's token can write
    nothing after the reclaim. The caller leaves wake-ups for the returned jobs.
    """
    now = utcnow()
    stmt = (
        update(Job)
        .where(Job.worker == worker, Job.status == JobStatus.RUNNING, Job.lease_expires_at > now)
        .values(lease_expires_at=now)
    )
    return _update(changes, stmt)


@dataclass(frozen=True)
class Outcome:
    """How one claimed job ended. ``batch_size`` is the number of rows that ran in the
    step in which it finished (0 when it failed before reaching the model),
    ``inference_ms`` the time from joining the batch to finishing and ``queue_ms`` the
    time from submission to claim; ``policy_version`` is the version of the policy that
    decided ``action``."""

    job_id: uuid.UUID
    status: JobStatus
    result: str | None = None
    result_json: Any = None
    reasoning: str | None = None
    action: str | None = None
    policy_version: str | None = None
    output_tokens: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    batch_size: int = 0
    inference_ms: int = 0
    queue_ms: int | None = None
    cached: bool = False
    model_revision: str | None = None


def finishable(token: uuid.UUID) -> ColumnElement[bool]:
    """The guard of :func:`finish`: still running, still under this claim. (Spelled as
    equalities, not IN: :func:`finish` is an executemany, which cannot expand lists.)"""
    status = _JOBS.c.status
    from_states = or_(*(status == source for source in sources(JobStatus.SUCCEEDED, Actor.WORKER)))
    return from_states & (_JOBS.c.claim_token == token)


def finish(
    changes: JobChanges, *, token: uuid.UUID, outcomes: Sequence[Outcome]
) -> list[uuid.UUID]:
    """Write every outcome (running → succeeded | failed) in one executemany, only where
    the job is still running under ``token``: a job canceled or retaken meanwhile keeps
    its state, so a job gets exactly one result. Returns the jobs it finished (this
    call: not those the same claim finished before)."""
    if any(not may_move(JobStatus.RUNNING, o.status, Actor.WORKER) for o in outcomes):
        raise ValueError("a worker's outcome is succeeded or failed")
    if not outcomes:
        return []
    table = _JOBS
    # The executemany reports no rows: the jobs it moved are read back by this stamp.
    stamp = utcnow()
    stmt = (
        update(table)
        .where(table.c.id == bindparam("b_id"), finishable(token))
        .values(
            status=bindparam("b_status"),
            result=bindparam("b_result"),
            result_json=bindparam("b_result_json", type_=JSON(none_as_null=True)),
            reasoning=bindparam("b_reasoning"),
            action=bindparam("b_action"),
            policy_version=bindparam("b_policy_version"),
            output_tokens=bindparam("b_tokens"),
            error_code=bindparam("b_error_code"),
            error_message=bindparam("b_error_message"),
            batch_size=bindparam("b_batch_size"),
            inference_ms=bindparam("b_inference_ms"),
            queue_ms=bindparam("b_queue_ms"),
            cached=bindparam("b_cached"),
            model_revision=bindparam("b_model_revision"),
            finished_at=stamp,
            lease_expires_at=None,
        )
    )
    changes.session.execute(
        stmt,
        [
            {
                "b_id": outcome.job_id,
                "b_status": outcome.status,
                "b_result": outcome.result,
                "b_result_json": outcome.result_json,
                "b_reasoning": outcome.reasoning,
                "b_action": outcome.action,
                "b_policy_version": outcome.policy_version,
                "b_tokens": outcome.output_tokens,
                "b_error_code": outcome.error_code,
                "b_error_message": outcome.error_message,
                "b_batch_size": outcome.batch_size or None,
                "b_inference_ms": outcome.inference_ms if outcome.batch_size else None,
                "b_queue_ms": outcome.queue_ms,
                "b_cached": outcome.cached,
                "b_model_revision": outcome.model_revision,
            }
            for outcome in outcomes
        ],
    )
    finished = list(
        changes.session.scalars(
            select(Job.id).where(
                Job.id.in_([outcome.job_id for outcome in outcomes]),
                Job.claim_token == token,
                Job.status.in_([JobStatus.SUCCEEDED, JobStatus.FAILED]),
                Job.finished_at == stamp,
            )
        )
    )
    changes.settled(finished)
    return finished


# -- the caller ------------------------------------------------------------------------


def cancel(changes: JobChanges, job_id: uuid.UUID) -> bool:
    """Move a queued or running job to ``canceled``; False if it was already final.

    A queued job then never runs (no worker can claim it); a running one keeps running
    until its worker sees the cancel (at its next step), and no result of it is written
    (see :func:`finish`).
    """
    return bool(cancel_jobs(changes, [job_id]))


def cancel_jobs(changes: JobChanges, job_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """:func:`cancel` for many jobs in one statement (a purge cancels what it erases);
    returns the ones it canceled."""
    if not job_ids:
        return []
    return _cancel_where(changes, Job.id.in_(list(job_ids)))


def cancel_batch(changes: JobChanges, batch_id: uuid.UUID) -> int:
    """:func:`cancel` for every job of the batch that is not final yet, queued or
    running (a running one's row is aborted at its worker's next step, so a stopped
    batch stops using the device); returns how many were canceled."""
    return len(_cancel_where(changes, Job.batch_id == batch_id))


def _cancel_where(changes: JobChanges, which: ColumnElement[bool]) -> list[uuid.UUID]:
    """Cancel the jobs matching ``which`` that the caller may still cancel (queued or
    running); returns their ids."""
    stmt = (
        update(Job)
        .where(which, Job.status.in_(sources(JobStatus.CANCELED, Actor.CALLER)))
        .values(status=JobStatus.CANCELED, finished_at=utcnow(), lease_expires_at=None)
    )
    canceled = _update(changes, stmt)
    changes.settled(canceled)
    return canceled


# -- the sweeper -----------------------------------------------------------------------


def expire_overdue(changes: JobChanges, now: datetime) -> int:
    """Fail queued jobs whose deadline passed as ``expired``; returns how many."""
    stmt = (
        update(Job)
        .where(Job.status == JobStatus.QUEUED, Job.deadline_at <= now)
        .values(
            status=JobStatus.FAILED,
            error_code=JobErrorCode.EXPIRED,
            error_message=EXPIRED_MESSAGE,
            finished_at=now,
        )
    )
    expired = _update(changes, stmt)
    changes.settled(expired)
    return len(expired)


def fail_lost(changes: JobChanges, now: datetime, max_attempts: int) -> int:
    """Fail running jobs whose lease expired after ``max_attempts`` claims as
    ``worker_lost`` (a job that keeps killing its worker must not loop forever)."""
    stmt = (
        update(Job)
        .where(
            Job.status == JobStatus.RUNNING,
            Job.lease_expires_at < now,
            Job.attempts >= max_attempts,
        )
        .values(
            status=JobStatus.FAILED,
            error_code=JobErrorCode.WORKER_LOST,
            error_message=(
                f"the worker running this job stopped {max_attempts} times; it is not retried again"
            ),
            finished_at=now,
            lease_expires_at=None,
        )
    )
    lost = _update(changes, stmt)
    changes.settled(lost)
    return len(lost)
