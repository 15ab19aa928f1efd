"""Weighted fair share in the claim (``shared.fair_share`` through ``lifecycle.claim``),
on PostgreSQL (the lateral plan) and SQLite (the window plan).

Jobs are queued straight into the database and claimed the way workers claim them, so
each test sees exactly which job every claim took. What each test expects is written out
from the rule, not computed by the code under test.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, update
from sqlalchemy.orm import Session, sessionmaker

from migrations import upgrade
from shared import lifecycle
from shared.db import create_engine_for, session_factory, transaction
from shared.models import ApiKey, Job, JobStatus, Priority, Tenant, utcnow
from shared.settings import Settings
from shared.tenants import set_weight, shares
from tests.services import postgres_server, scratch_database
from tests.stack import Stack, make_image
from tests.waiting import wait_until

START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def sessions(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[sessionmaker[Session]]:
    """A migrated scratch database of the module's own."""
    workdir = tmp_path_factory.mktemp("fair")
    with postgres_server() as admin, scratch_database(admin) as url:
        if request.param == "sqlite":
            url = f"sqlite:///{workdir / 'fair.db'}"
        settings = Settings(data_dir=workdir, database_url=url)
        upgrade(settings)
        engine = create_engine_for(settings)
        yield session_factory(engine)
        engine.dispose()


@pytest.fixture
def db(sessions: sessionmaker[Session]) -> Iterator[sessionmaker[Session]]:
    yield sessions
    with transaction(sessions) as session:
        for table in (Job, ApiKey, Tenant):
            session.execute(delete(table))


def tenant(sessions: sessionmaker[Session], name: str, weight: int = 1) -> uuid.UUID:
    with transaction(sessions) as session:
        row = Tenant(name=name, webhook_secret="whsec_test")
        session.add(row)
        session.flush()
        set_weight(session, row, weight)
        session.add(ApiKey(id=row.id, tenant_id=row.id, name=name, prefix="sl_x", key_sha256=name))
        return row.id


def queue(
    sessions: sessionmaker[Session],
    owner: uuid.UUID,
    count: int,
    *,
    priority: Priority = Priority.BULK,
    after: int = 0,
) -> list[uuid.UUID]:
    """``count`` queued jobs of ``owner``, created ``after`` seconds past :data:`START`
    and one millisecond apart (oldest first)."""
    now = utcnow()
    jobs = [
        Job(
            tenant_id=owner,
            api_key_id=owner,
            status=JobStatus.QUEUED,
            priority=priority,
            prompt="describe",
            image_key="ab/cd.png",
            image_sha256="a" * 64,
            image_width=4,
            image_height=4,
            options={"max_new_tokens": 4, "temperature": 0.0},
            created_at=START + timedelta(seconds=after, milliseconds=index),
            deadline_at=now + timedelta(hours=1),
        )
        for index in range(count)
    ]
    with transaction(sessions) as session:
        session.add_all(jobs)
    return [job.id for job in jobs]


def claim(
    sessions: sessionmaker[Session],
    limit: int,
    *,
    prefer: uuid.UUID | None = None,
    only: Priority | None = None,
) -> list[Job]:
    with transaction(sessions) as session:
        claimed = lifecycle.claim(
            lifecycle.JobChanges(session),
            worker="w@test",
            token=uuid.uuid4(),
            limit=limit,
            lease_s=60,
            max_attempts=3,
            fair_share_window_s=60,
            prefer=prefer,
            only=only,
        )
        session.expunge_all()
    return claimed


def owners(jobs: list[Job], names: dict[uuid.UUID, str]) -> str:
    """The claimed jobs' tenants, oldest job first: e.g. ``"ABAB"``."""
    return "".join(names[job.tenant_id] for job in sorted(jobs, key=lambda job: job.created_at))


def test_a_small_batch_is_not_held_behind_another_tenants_backlog(
    db: sessionmaker[Session],
) -> None:
    a, b = tenant(db, "A"), tenant(db, "B")
    queue(db, a, 300)
    first = claim(db, 8)  # A's backlog is running
    assert len(first) == 8
    queue(db, b, 24, after=60)  # B's batch arrives behind all of A's queued jobs
    a_jobs = b_jobs = 0
    while b_jobs < 24:
        taken = claim(db, 8)
        b_jobs += sum(1 for job in taken if job.tenant_id == b)
        a_jobs += sum(1 for job in taken if job.tenant_id == a)
    print(f"B's 24 jobs were all claimed after {a_jobs} more of A's")
    # B started 0 lately and A 8: B's first 8 go first, then the two alternate (ties to
    # the older job: A's), so B's 24 take 16 of A's beside them.
    assert a_jobs == 16


def test_weights_share_the_claims_three_to_one(db: sessionmaker[Session]) -> None:
    a, b = tenant(db, "A", weight=3), tenant(db, "B", weight=1)
    queue(db, a, 200)
    queue(db, b, 200)
    taken = [job.tenant_id for _ in range(20) for job in claim(db, 4)]
    a_share = taken.count(a) / len(taken)
    print(
        f"A (weight 3) got {taken.count(a)} of {len(taken)} claims, B (weight 1) {taken.count(b)}"
    )
    assert a_share == pytest.approx(0.75, rel=0.2)
    with db() as session:
        got = {share.tenant: share for share in shares(session, utcnow() - timedelta(minutes=1))}
    assert got["A"].bulk == taken.count(a) and got["B"].bulk == taken.count(b)
    assert got["A"].fraction == pytest.approx(a_share)


def test_interactive_work_goes_before_bulk_whatever_the_shares(
    db: sessionmaker[Session],
) -> None:
    a, b = tenant(db, "A"), tenant(db, "B")
    names = {a: "A", b: "B"}
    queue(db, b, 6, priority=Priority.INTERACTIVE, after=30)
    claim(db, 4, only=Priority.INTERACTIVE)  # B has used 4 lately, A nothing
    queue(db, a, 4)
    # B's two remaining interactive jobs come before A's bulk ones (older, less used).
    assert owners(claim(db, 3), names) == "ABB"  # sorted by age: A's bulk job is oldest
    assert [job.priority for job in claim(db, 3)] == [Priority.BULK] * 3


def test_interactive_work_is_shared_between_tenants_too(db: sessionmaker[Session]) -> None:
    a, b = tenant(db, "A"), tenant(db, "B")
    names = {a: "A", b: "B"}
    queue(db, a, 10, priority=Priority.INTERACTIVE)
    queue(db, b, 2, priority=Priority.INTERACTIVE, after=60)
    assert owners(claim(db, 4), names) == "AABB"


def test_the_woken_job_takes_its_own_tenants_turn(db: sessionmaker[Session]) -> None:
    a, b = tenant(db, "A"), tenant(db, "B")
    a_jobs = queue(db, a, 10)
    claim(db, 2)  # A's two oldest: A has used 2, B nothing
    b_jobs = queue(db, b, 10, after=60)
    # A's newest job woke the worker, but B is owed two turns: a claim of two takes B's.
    assert {job.id for job in claim(db, 2, prefer=a_jobs[-1])} == set(b_jobs[:2])
    # Now both have used 2: the woken job takes A's next turn instead of A's oldest.
    assert {job.id for job in claim(db, 2, prefer=a_jobs[-1])} == {a_jobs[-1], b_jobs[2]}


def test_an_abandoned_job_counts_and_comes_from_the_least_served_tenant(
    db: sessionmaker[Session],
) -> None:
    a, b = tenant(db, "A"), tenant(db, "B")
    a_jobs, b_jobs = queue(db, a, 6), queue(db, b, 1, after=60)
    claim(db, 7)  # everything: A has used 6, B 1
    with transaction(db) as session:  # both workers died: every lease has run out
        session.execute(update(Job).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    orphan = claim(db, 0)
    assert [job.id for job in orphan] == b_jobs  # B's, although A's are older
    assert orphan[0].attempts == 2
    [next_orphan] = claim(db, 0)
    assert next_orphan.id in a_jobs


# -- on the running stack ----------------------------------------------------------------


def _key(stack: Stack, name: str) -> str:
    created: dict[str, Any] = json.loads(stack.cli("keys", "create", name, "--json"))
    return str(created["key"])


def _batch(stack: Stack, key: str, count: int, label: str) -> list[str]:
    items = [
        {
            "image": base64.b64encode(make_image(index)).decode(),
            "prompt": f"{label} {index}",
            "max_new_tokens": 2,
        }
        for index in range(count)
    ]
    answer = stack.call("POST", "/v1/batches", key=key, json={"items": items})
    assert answer.status_code == 202, answer.text
    return [item["id"] for item in answer.json()["accepted"]]


def _finished(stack: Stack, ids: list[str]) -> list[Job]:
    wait_until(
        lambda: all(row.status is JobStatus.SUCCEEDED for row in stack.jobs(ids)),
        timeout_s=180,
        what=f"{len(ids)} jobs succeeding",
    )
    return stack.jobs(ids)


def test_tenants_share_a_running_worker_by_weight(pg_stack: Stack) -> None:
    suffix = uuid.uuid4().hex[:6]
    heavy, light = f"heavy-{suffix}", f"light-{suffix}"
    keys = {name: _key(pg_stack, name) for name in (heavy, light)}
    refused = pg_stack.cli_result("tenants", "weight", heavy, "0")
    assert refused.returncode == 2 and "from 1 to 1000" in refused.stderr
    pg_stack.cli("tenants", "weight", heavy, "3")
    listed = json.loads(pg_stack.cli("tenants", "list", "--json"))
    assert {row["name"]: row["weight"] for row in listed}[heavy] == 3
    heavy_ids = _batch(pg_stack, keys[heavy], 40, "heavy")
    light_ids = _batch(pg_stack, keys[light], 40, "light")
    urgent = pg_stack.client(keys[light]).submit(make_image(99), "urgent", max_new_tokens=2)
    pg_stack.start_worker()

    rows = _finished(pg_stack, [*heavy_ids, *light_ids, urgent["id"]])

    [interactive] = [row for row in rows if row.priority is Priority.INTERACTIVE]
    first_claim = min(row.started_at for row in rows if row.started_at is not None)
    assert interactive.started_at == first_claim, "interactive work still goes first"
    bulk = sorted(
        (row for row in rows if row.priority is Priority.BULK),
        key=lambda row: (row.started_at, row.created_at),
    )
    first = bulk[:40]
    heavy_share = sum(1 for row in first if str(row.id) in heavy_ids) / len(first)
    print(f"of the first 40 bulk jobs run, {heavy_share:.0%} were the weight-3 tenant's")
    assert heavy_share == pytest.approx(0.75, rel=0.2)


def test_a_small_batch_overtakes_a_running_backlog(pg_stack: Stack) -> None:
    suffix = uuid.uuid4().hex[:6]
    backfill, small = _key(pg_stack, f"backfill-{suffix}"), _key(pg_stack, f"small-{suffix}")
    backlog = _batch(pg_stack, backfill, 120, "backfill")
    pg_stack.start_worker()
    wait_until(
        lambda: sum(row.status is JobStatus.SUCCEEDED for row in pg_stack.jobs(backlog)) >= 8,
        timeout_s=120,
        what="the backlog running",
    )
    arrived = utcnow()
    batch = _finished(pg_stack, _batch(pg_stack, small, 12, "small"))

    last_start = max(row.started_at for row in batch if row.started_at is not None)
    overtaken = [
        row
        for row in pg_stack.jobs(backlog)
        if row.started_at is not None and arrived < row.started_at <= last_start
    ]
    print(f"the 12-job batch ran while {len(overtaken)} of the backlog's jobs started")
    assert len(overtaken) <= 2 * len(batch)
    assert any(row.status is JobStatus.QUEUED for row in pg_stack.jobs(backlog)), (
        "the backlog outlived the small batch"
    )
