"""The job lifecycle under random interleavings, against real PostgreSQL.

A hypothesis state machine submits jobs (some in a batch), claims them under fresh
tokens, renews, finishes (also late, under a token the job no longer has), cancels one
job or a batch's queued jobs, lets leases and deadlines pass, and sweeps, all through
``shared.lifecycle``. After every step it reads the jobs and the outbox back and checks:

- every change of a job's status is a move of ``TRANSITIONS``: nothing moves backwards;
- a final job never changes again (status, result, error, finish time): one result;
- a job has exactly one outbox event once final, none before;
- only the claim a job is running under can finish it;
- a batch is completed, with one ``batch.completed`` event, exactly when all its jobs are
  final.

The examples are derandomised (the same every run: a steady suite) and bounded. A
mutation test beside it removes the guard of every move and requires the machine to
find a violation, so the properties are known to bite.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from migrations import upgrade
from shared import lifecycle
from shared.db import create_engine_for, session_factory, transaction
from shared.keys import create_key
from shared.lifecycle import TRANSITIONS, Outcome
from shared.models import Batch, Job, JobStatus, Priority, WebhookEvent, utcnow
from shared.settings import Settings
from tests.services import postgres_server, scratch_database

MAX_ATTEMPTS = 2
BOUNDED = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sessionmaker[Session]]:
    """A migrated scratch PostgreSQL database of its own."""
    with postgres_server() as admin, scratch_database(admin) as url:
        db_settings = Settings(data_dir=tmp_path_factory.mktemp("lifecycle"), database_url=url)
        upgrade(db_settings)
        engine = create_engine_for(db_settings)
        yield session_factory(engine)
        engine.dispose()


def _job(
    tenant_id: uuid.UUID, key_id: uuid.UUID, batch_id: uuid.UUID | None, created_at: datetime
) -> Job:
    now = utcnow()
    return Job(
        tenant_id=tenant_id,
        api_key_id=key_id,
        status=JobStatus.QUEUED,
        priority=Priority.BULK if batch_id else Priority.INTERACTIVE,
        prompt="describe",
        image_key="ab/cd.png",
        image_sha256="a" * 64,
        image_width=4,
        image_height=4,
        options={"max_new_tokens": 4, "temperature": 0.0},
        created_at=created_at,
        enqueued_at=now,
        deadline_at=now + timedelta(hours=1),
        callback_url="https://hooks.example/job",
        batch_id=batch_id,
    )


def machine_for(sessions: sessionmaker[Session]) -> type[RuleBasedStateMachine]:
    """The state machine class, bound to ``sessions``. A job's row is read as (status,
    result, error code, finished at, claim token, batch id)."""

    class LifecycleMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.seen: dict[uuid.UUID, tuple[Any, ...]] = {}
            # Jobs in submission order: steps pick jobs by position, never by their random
            # ids, and submission times are distinct, so a replay takes the same path.
            self.order: list[uuid.UUID] = []
            self.epoch = utcnow()
            self.tokens: list[uuid.UUID] = []
            self.woken: list[str] = []
            self.batch_id = uuid.uuid4()

        def _wake(self, events: list[str]) -> None:
            self.woken += events

        def _new_jobs(self, count: int, batch_id: uuid.UUID | None) -> list[Job]:
            jobs = []
            for _ in range(count):
                created = self.epoch + timedelta(milliseconds=len(self.order))
                job = _job(self.tenant_id, self.key_id, batch_id, created)
                job.id = uuid.uuid4()
                self.order.append(job.id)
                jobs.append(job)
            return jobs

        def _pick(self, data: st.DataObject) -> uuid.UUID:
            return self.order[data.draw(st.integers(0, len(self.order) - 1))]

        @initialize(items=st.integers(min_value=1, max_value=3))
        def start(self, items: int) -> None:
            with transaction(sessions) as session:
                for table in (WebhookEvent, Job, Batch):
                    session.execute(delete(table))
                key, _ = create_key(session, f"t-{uuid.uuid4().hex[:8]}")
                self.tenant_id, self.key_id = key.tenant_id, key.id
                session.add(
                    Batch(
                        id=self.batch_id,
                        tenant_id=self.tenant_id,
                        api_key_id=self.key_id,
                        items_submitted=items,
                        items_accepted=items,
                        callback_url="https://hooks.example/batch",
                    )
                )
                session.flush()
                session.add_all(self._new_jobs(items, self.batch_id))
            self._check()

        @rule(count=st.integers(min_value=1, max_value=3))
        def submit(self, count: int) -> None:
            with transaction(sessions) as session:
                session.add_all(self._new_jobs(count, None))

        @rule(limit=st.integers(min_value=1, max_value=3), with_abandoned=st.booleans())
        def claim(self, limit: int, with_abandoned: bool) -> None:
            token = uuid.uuid4()
            self.tokens.append(token)
            with transaction(sessions) as session:
                lifecycle.claim(
                    lifecycle.JobChanges(session),
                    worker="w@test",
                    token=token,
                    limit=limit,
                    lease_s=60,
                    max_attempts=MAX_ATTEMPTS,
                    fair_share_window_s=60,
                    with_abandoned=with_abandoned,
                )

        @precondition(lambda self: self.tokens)
        @rule(data=st.data())
        def renew(self, data: st.DataObject) -> None:
            token = data.draw(st.sampled_from(self.tokens))
            with transaction(sessions) as session:
                lifecycle.renew(lifecycle.JobChanges(session), token=token, lease_s=60)

        @precondition(lambda self: self.tokens)
        @rule(data=st.data(), succeeded=st.booleans())
        def finish(self, data: st.DataObject, succeeded: bool) -> None:
            """Finish some jobs under some token, current or stale."""
            token = data.draw(st.sampled_from(self.tokens))
            ids = [self._pick(data) for _ in range(data.draw(st.integers(1, 3)))]
            before = self._rows()
            status = JobStatus.SUCCEEDED if succeeded else JobStatus.FAILED
            outcomes = [
                Outcome(job_id=i, status=status, result=f"by {token}", batch_size=1)
                for i in dict.fromkeys(ids)
            ]
            with lifecycle.unit_of_work(sessions, self._wake, None) as changes:
                finished = lifecycle.finish(changes, token=token, outcomes=outcomes)
            after = self._rows()
            mine = {i for i in ids if before[i][0] is JobStatus.RUNNING and before[i][4] == token}
            assert set(finished) == mine, "finish reported jobs it did not move (or missed some)"
            for job_id in dict.fromkeys(ids):
                was = before[job_id]
                if not (was[0] is JobStatus.RUNNING and was[4] == token):
                    assert after[job_id] == was, f"{job_id} finished under a claim it lacks"

        @precondition(lambda self: self.tokens)
        @rule(data=st.data())
        def release(self, data: st.DataObject) -> None:
            """A worker shutting down hands back some jobs under some token, some of them
            suspected (dropped by a failed step): their claim keeps counting."""
            token = data.draw(st.sampled_from(self.tokens))
            ids = [self._pick(data) for _ in range(data.draw(st.integers(1, 3)))]
            suspected = {i for i in ids if data.draw(st.booleans())}
            before = self._rows()
            with transaction(sessions) as session:
                lifecycle.release(
                    lifecycle.JobChanges(session), token=token, job_ids=ids, suspected=suspected
                )
            after = self._rows()
            for job_id in ids:
                was = before[job_id]
                if not (was[0] is JobStatus.RUNNING and was[4] == token):
                    assert after[job_id] == was, f"{job_id} released under a claim it lacks"
                    continue
                kept = was[6] if job_id in suspected else was[6] - 1
                assert (after[job_id][0], after[job_id][6]) == (JobStatus.QUEUED, kept), job_id

        @rule(data=st.data())
        def cancel(self, data: st.DataObject) -> None:
            job_id = self._pick(data)
            with lifecycle.unit_of_work(sessions, self._wake, None) as changes:
                lifecycle.cancel(changes, job_id)

        @rule()
        def cancel_batch(self) -> None:
            with lifecycle.unit_of_work(sessions, self._wake, None) as changes:
                lifecycle.cancel_batch(changes, self.batch_id)

        @rule()
        def predecessor_expired(self) -> None:
            """A restarted worker of the claims' node name frees what its predecessor held."""
            with transaction(sessions) as session:
                lifecycle.expire_predecessor(lifecycle.JobChanges(session), worker="w@test")

        @rule(data=st.data())
        def lease_passes(self, data: st.DataObject) -> None:
            """Time passes for one running job's claim (its worker died)."""
            job_id = self._pick(data)
            with transaction(sessions) as session:
                session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
                    .values(lease_expires_at=utcnow() - timedelta(seconds=1))
                )

        @rule(data=st.data())
        def deadline_passes(self, data: st.DataObject) -> None:
            job_id = self._pick(data)
            with transaction(sessions) as session:
                session.execute(
                    update(Job)
                    .where(Job.id == job_id)
                    .values(deadline_at=utcnow() - timedelta(seconds=1))
                )

        @rule()
        def sweep(self) -> None:
            now = utcnow()
            with lifecycle.unit_of_work(sessions, self._wake, None) as changes:
                lifecycle.expire_overdue(changes, now)
                lifecycle.fail_lost(changes, now, MAX_ATTEMPTS)
                changes.complete_batches(every_open=True)

        def _rows(self) -> dict[uuid.UUID, tuple[Any, ...]]:
            with sessions() as session:
                return {
                    job.id: (
                        job.status,
                        job.result,
                        job.error_code,
                        job.finished_at,
                        job.claim_token,
                        job.batch_id,
                        job.attempts,
                    )
                    for job in session.scalars(select(Job))
                }

        @invariant()
        def moves_are_legal_and_final_is_final(self) -> None:
            self._check()

        def _check(self) -> None:
            rows = self._rows()
            for job_id, row in rows.items():
                was = self.seen.get(job_id)
                if was is None:
                    assert row[0] is JobStatus.QUEUED, f"{job_id} was born {row[0]}"
                elif was[0].is_final:
                    assert row[:4] == was[:4], f"final job {job_id} changed: {was} -> {row}"
                elif row[0] is not was[0] or row[4] != was[4]:
                    assert (was[0], row[0]) in TRANSITIONS, f"{job_id}: {was[0]} -> {row[0]}"
            self.seen = rows
            with sessions() as session:
                events = session.execute(
                    select(WebhookEvent.job_id, WebhookEvent.batch_id, WebhookEvent.id)
                ).all()
                batch = session.get_one(Batch, self.batch_id)
            per_job = {job_id: 0 for job_id in rows}
            for event_job_id, _, _ in events:
                if event_job_id is not None:
                    per_job[event_job_id] += 1
            for job_id, count in per_job.items():
                wanted = 1 if rows[job_id][0].is_final else 0
                assert count == wanted, f"{job_id} ({rows[job_id][0]}) has {count} events"
            done = all(row[0].is_final for row in rows.values() if row[5] == self.batch_id)
            completions = sum(1 for _, batch_id, _ in events if batch_id == self.batch_id)
            assert (batch.completed_at is not None) == done, "batch completion is off"
            assert completions == (1 if done else 0), f"{completions} batch.completed events"
            written = {event_id for _, _, event_id in events}
            assert set(self.woken) <= written, "the sender was woken for an unwritten event"

    return LifecycleMachine


def test_random_interleavings_keep_the_lifecycle_promises(
    sessions: sessionmaker[Session],
) -> None:
    run_state_machine_as_test(machine_for(sessions), settings=BOUNDED)


def test_the_properties_bite_when_a_guard_is_removed(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutation check: with every move's guard gone (any status may be moved from), the
    machine must find a violation."""
    monkeypatch.setattr(lifecycle, "sources", lambda target, actor: list(JobStatus))
    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            machine_for(sessions), settings=settings(BOUNDED, report_multiple_bugs=False)
        )


def _moved(
    sessions: sessionmaker[Session], source: JobStatus, move: Any, **fields: Any
) -> tuple[Job, Job]:
    """A job put in ``source`` (with ``fields``), then ``move(changes, job)`` run in a
    unit of work; returns the row before and after. The only job in the database."""
    with transaction(sessions) as session:
        for table in (WebhookEvent, Job, Batch):
            session.execute(delete(table))
        key, _ = create_key(session, f"t-{uuid.uuid4().hex[:8]}")
        job = _job(key.tenant_id, key.id, None, utcnow())
        job.status, job.claim_token = source, uuid.uuid4()
        job.lease_expires_at = utcnow() + timedelta(minutes=1)
        for name, value in fields.items():
            setattr(job, name, value)
        session.add(job)
        session.flush()
        session.expunge(job)
    with lifecycle.unit_of_work(sessions, lambda events: None, None) as changes:
        move(changes, job)
    with sessions() as session:
        return job, session.get_one(Job, job.id)


PAST = {"lease_expires_at": utcnow() - timedelta(minutes=1)}
# Each move of TRANSITIONS, made the way its actor makes it (some more than one way).
MOVES: dict[str, tuple[JobStatus, JobStatus, Any, dict[str, Any]]] = {
    "worker claims a queued job": (
        JobStatus.QUEUED,
        JobStatus.RUNNING,
        lambda c, job: lifecycle.claim(
            c,
            worker="w",
            token=uuid.uuid4(),
            limit=50,
            lease_s=60,
            max_attempts=2,
            fair_share_window_s=60,
        ),
        {},
    ),
    "worker renews its claim": (
        JobStatus.RUNNING,
        JobStatus.RUNNING,
        lambda c, job: lifecycle.renew(c, token=job.claim_token, lease_s=600),
        {},
    ),
    "worker reclaims an abandoned job": (
        JobStatus.RUNNING,
        JobStatus.RUNNING,
        lambda c, job: lifecycle.claim(
            c,
            worker="w",
            token=uuid.uuid4(),
            limit=0,
            lease_s=60,
            max_attempts=2,
            fair_share_window_s=60,
        ),
        {**PAST, "attempts": 1},
    ),
    "restarted worker expires its predecessor's claim": (
        JobStatus.RUNNING,
        JobStatus.RUNNING,
        lambda c, job: lifecycle.expire_predecessor(c, worker="cpu0@dead"),
        {"worker": "cpu0@dead", "attempts": 1},
    ),
    "worker finishes, succeeded": (
        JobStatus.RUNNING,
        JobStatus.SUCCEEDED,
        lambda c, job: lifecycle.finish(
            c, token=job.claim_token, outcomes=[Outcome(job.id, JobStatus.SUCCEEDED, "ok")]
        ),
        {},
    ),
    "worker finishes, failed": (
        JobStatus.RUNNING,
        JobStatus.FAILED,
        lambda c, job: lifecycle.finish(
            c, token=job.claim_token, outcomes=[Outcome(job.id, JobStatus.FAILED)]
        ),
        {},
    ),
    "worker hands a job back on shutdown": (
        JobStatus.RUNNING,
        JobStatus.QUEUED,
        lambda c, job: lifecycle.release(c, token=job.claim_token, job_ids=[job.id]),
        {"attempts": 1},
    ),
    "sweeper fails a lost job": (
        JobStatus.RUNNING,
        JobStatus.FAILED,
        lambda c, job: lifecycle.fail_lost(c, utcnow(), max_attempts=2),
        {**PAST, "attempts": 2},
    ),
    "sweeper expires an overdue job": (
        JobStatus.QUEUED,
        JobStatus.FAILED,
        lambda c, job: lifecycle.expire_overdue(c, utcnow()),
        {"deadline_at": utcnow() - timedelta(minutes=1)},
    ),
    "caller cancels a queued job": (
        JobStatus.QUEUED,
        JobStatus.CANCELED,
        lambda c, job: lifecycle.cancel(c, job.id),
        {},
    ),
    "caller cancels a running job": (
        JobStatus.RUNNING,
        JobStatus.CANCELED,
        lambda c, job: lifecycle.cancel(c, job.id),
        {},
    ),
}


@pytest.mark.parametrize("name", MOVES)
def test_each_move_of_the_table(sessions: sessionmaker[Session], name: str) -> None:
    source, target, move, fields = MOVES[name]
    before, after = _moved(sessions, source, move, **fields)
    assert (before.status, after.status) == (source, target)
    assert (source, target) in TRANSITIONS
    if name == "worker renews its claim":
        assert after.lease_expires_at and before.lease_expires_at
        assert after.lease_expires_at > before.lease_expires_at
    if name == "worker reclaims an abandoned job":
        assert after.claim_token != before.claim_token and after.attempts == 2
    if name == "restarted worker expires its predecessor's claim":
        assert after.lease_expires_at and after.lease_expires_at <= utcnow()
        assert (after.claim_token, after.attempts) == (before.claim_token, 1)
    if name == "worker hands a job back on shutdown":
        assert after.claim_token is None and after.attempts == 0 and after.worker is None


def test_a_claim_does_not_take_back_a_job_abandoned_under_its_own_token(
    sessions: sessionmaker[Session],
) -> None:
    def reclaim(changes: lifecycle.JobChanges, job: Job) -> None:
        assert job.claim_token is not None
        claimed = lifecycle.claim(
            changes,
            worker="w",
            token=job.claim_token,
            limit=0,
            lease_s=60,
            max_attempts=2,
            fair_share_window_s=60,
        )
        assert claimed == []

    before, after = _moved(sessions, JobStatus.RUNNING, reclaim, **PAST, attempts=1)
    assert (after.attempts, after.lease_expires_at) == (1, before.lease_expires_at)


def test_the_table_is_exactly_these_moves_and_nothing_leaves_a_final_status() -> None:
    assert {(source, target) for source, target, _, _ in MOVES.values()} == set(TRANSITIONS)
    assert not [move for move in TRANSITIONS if move[0].is_final]


def test_a_restarted_worker_expires_only_its_own_node_s_claims(
    sessions: sessionmaker[Session],
) -> None:
    before, after = _moved(
        sessions,
        JobStatus.RUNNING,
        lambda c, job: lifecycle.expire_predecessor(c, worker="cpu0@here"),
        worker="cpu0@elsewhere",
    )
    assert after.lease_expires_at == before.lease_expires_at


def test_a_late_finish_and_a_second_cancel_change_nothing(
    sessions: sessionmaker[Session],
) -> None:
    _, after = _moved(
        sessions,
        JobStatus.RUNNING,
        lambda c, job: lifecycle.finish(
            c, token=uuid.uuid4(), outcomes=[Outcome(job.id, JobStatus.FAILED)]
        ),
    )
    assert after.status is JobStatus.RUNNING, "a finish under another token moved the job"
    _, canceled = _moved(sessions, JobStatus.SUCCEEDED, lambda c, job: lifecycle.cancel(c, job.id))
    assert canceled.status is JobStatus.SUCCEEDED
