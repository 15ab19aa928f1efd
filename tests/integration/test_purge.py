"""Purge, retention and blob release on real PostgreSQL, images on disk and on S3 (moto).

No model worker: jobs are claimed and finished in-process through the lifecycle
functions a worker uses, so what is under test is what happens to their rows, events and
images afterwards. Time is moved by writing timestamps into the database, never slept.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import requests
from sqlalchemy import select, update

from cli.redis_server import free_port
from shared import lifecycle
from shared.blob_release import release_blobs
from shared.blobs import BlobMissing, BlobStore
from shared.job_feed import text_key
from shared.models import (
    ApiKey,
    EventStatus,
    Job,
    JobStatus,
    Purge,
    PurgeScope,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    utcnow,
)
from shared.retention import apply_retention
from tests.receiver import Receiver
from tests.stack import Stack, make_image
from worker.webhook_sender import WebhookSender

HOOK = "http://127.0.0.1:9/hook"  # nothing delivers in these tests: events stay pending


@pytest.fixture(params=["postgresql", "s3"])
def erasing_stack(request: pytest.FixtureRequest, _stacks: dict[str, Stack]) -> Iterator[Stack]:
    """PostgreSQL with images on disk, then on a loopback S3 bucket."""
    running = _stacks[request.param]
    running.reset()
    yield running
    running.stop_workers()


def _new_tenant(stack: Stack, name: str) -> str:
    """A key of a new tenant ``name-<random>``; returns the key."""
    created = json.loads(stack.cli("keys", "create", f"{name}-{uuid.uuid4().hex[:8]}", "--json"))
    key: str = created["key"]
    return key


def _claim(stack: Stack, ids: list[str]) -> uuid.UUID:
    """Claim the jobs ``ids`` (every queued job) as a worker does; returns the token."""
    token = uuid.uuid4()
    with lifecycle.unit_of_work(stack.sessions, lambda events: None, None) as changes:
        claimed = lifecycle.claim(
            changes,
            worker="test@host",
            token=token,
            limit=100,
            lease_s=60,
            max_attempts=3,
            fair_share_window_s=60,
        )
    assert {str(job.id) for job in claimed} == set(ids)
    return token


def _finish(stack: Stack, token: uuid.UUID, ids: list[str]) -> list[uuid.UUID]:
    """Write a result for ``ids`` under ``token``, as a worker does; returns those written."""
    outcomes = [
        lifecycle.Outcome(
            job_id=uuid.UUID(job_id),
            status=JobStatus.SUCCEEDED,
            result=f"secret answer {job_id}",
            reasoning="private reasoning",
            model_revision="rev-1",
        )
        for job_id in ids
    ]
    with lifecycle.unit_of_work(stack.sessions, lambda events: None, None) as changes:
        return lifecycle.finish(changes, token=token, outcomes=outcomes)


def _release_now(stack: Stack) -> int:
    """One blob release pass with no grace (every put happened before it)."""
    settings = stack.settings.model_copy(update={"blob_grace_s": 0})
    return release_blobs(settings, stack.sessions, BlobStore(settings.blob_url), utcnow())


def _gone(stack: Stack, key: str) -> bool:
    try:
        BlobStore(stack.settings.blob_url).get(key)
    except BlobMissing:
        return True
    return False


def _audit(stack: Stack, tenant_id: uuid.UUID) -> list[Purge]:
    with stack.sessions() as session:
        return list(
            session.scalars(
                select(Purge).where(Purge.tenant_id == tenant_id).order_by(Purge.purged_at)
            )
        )


def test_purged_job_and_batch_are_unreadable_everywhere_and_a_shared_image_survives(
    erasing_stack: Stack,
) -> None:
    stack = erasing_stack
    client = stack.client()
    other_key = _new_tenant(stack, "neighbour")
    other = stack.client(other_key)
    shared_image, batch_images = make_image(901), [make_image(902), make_image(903)]
    job = client.submit(shared_image, "who is this?", idempotency_key="k-901", callback_url=HOOK)
    neighbours = other.submit(shared_image, "same picture, other tenant")
    batch = client.batch(
        [
            {"image": image, "prompt": "describe", "metadata": {"n": i}}
            for i, image in enumerate(batch_images)
        ],
        callback_url=HOOK,
    )
    batch_job_ids = [item["id"] for item in batch["accepted"]]
    ids = [job["id"], neighbours["id"], *batch_job_ids]
    token = _claim(stack, ids)
    # Everything finishes except one batch item, still running when its batch is purged.
    assert len(_finish(stack, token, ids[:-1])) == 3
    rows = {str(row.id): row for row in stack.jobs(ids)}
    shared_key, batch_keys = rows[job["id"]].image_key, [rows[i].image_key for i in batch_job_ids]
    assert rows[neighbours["id"]].image_key == shared_key

    # What a worker streamed of it (the replay text a reader resumes from).
    stack.redis.hset(text_key(job["id"]), mapping={"claim": "0", "answer": "secret answer"})
    stranger = stack.call("DELETE", f"/v1/jobs/{job['id']}?purge=true", key=other_key)
    typo = stack.call("DELETE", f"/v1/jobs/{job['id']}?purge=yes")
    purged = stack.call("DELETE", f"/v1/jobs/{job['id']}?purge=true")
    purged_batch = stack.call("DELETE", f"/v1/batches/{batch['id']}?purge=true")

    assert stranger.status_code == 404  # another tenant's job: as if it did not exist
    assert not stack.redis.exists(text_key(job["id"]))
    assert typo.status_code == 422 and typo.json()["code"] == "invalid_query"
    assert typo.headers["Content-Type"] == "application/problem+json"
    assert purged.status_code == 200, purged.text
    assert purged.json() == {"id": job["id"], "object": "job", "purged": True, "jobs": 1}
    assert purged_batch.json() == {"id": batch["id"], "object": "batch", "purged": True, "jobs": 2}
    for path in [
        f"/v1/jobs/{job['id']}",
        f"/v1/jobs/{job['id']}/deliveries",
        f"/v1/jobs/{job['id']}/events",
        f"/v1/batches/{batch['id']}",
        f"/v1/batches/{batch['id']}/results",
        f"/v1/batches/{batch['id']}/events",
        *(f"/v1/jobs/{job_id}" for job_id in batch_job_ids),
    ]:
        assert stack.call("GET", path).status_code == 404, path
    redeliver = stack.call("POST", f"/v1/jobs/{job['id']}/deliveries/redeliver")
    assert redeliver.status_code == 404
    assert stack.call("DELETE", f"/v1/jobs/{job['id']}?purge=true").status_code == 404
    listed = stack.call("GET", "/v1/jobs").json()["jobs"]
    assert not {row["id"] for row in listed} & {job["id"], *batch_job_ids}
    # The running item's worker finishes late: its claim writes nothing back.
    assert _finish(stack, token, [batch_job_ids[-1]]) == []
    assert stack.jobs([job["id"], *batch_job_ids]) == []
    purged_ids = [uuid.UUID(i) for i in (job["id"], *batch_job_ids)]
    with stack.sessions() as session:
        assert not session.scalars(
            select(WebhookEvent.id).where(
                (WebhookEvent.job_id.in_(purged_ids))
                | (WebhookEvent.batch_id == uuid.UUID(batch["id"]))
            )
        ).all()
        assert not session.scalars(
            select(WebhookDelivery.id).where(WebhookDelivery.job_id.in_(purged_ids))
        ).all()
        key_id = session.scalar(select(ApiKey.id).where(ApiKey.name == "tests"))
    # The same idempotency key no longer returns the purged job: it submits a new one.
    again = client.submit(shared_image, "who is this?", idempotency_key="k-901", callback_url=HOOK)
    assert again["id"] != job["id"] and again["result"] is None

    assert _release_now(stack) == 2

    assert all(_gone(stack, key) for key in batch_keys)
    assert not _gone(stack, shared_key)  # the neighbour's job still names it
    assert other.get(neighbours["id"])["result"] == f"secret answer {neighbours['id']}"
    # Other tests purge as this tenant too: its rows for these two targets.
    targets = {uuid.UUID(job["id"]), uuid.UUID(batch["id"])}
    audit = [row for row in _audit(stack, rows[job["id"]].tenant_id) if row.target_id in targets]
    assert [(a.scope, a.target_id, a.jobs, a.api_key_id, a.operator) for a in audit] == [
        (PurgeScope.JOB, uuid.UUID(job["id"]), 1, key_id, None),
        (PurgeScope.BATCH, uuid.UUID(batch["id"]), 2, key_id, None),
    ]


def test_tenant_purge_by_an_operator_erases_all_and_leaves_other_tenants(pg_stack: Stack) -> None:
    name = f"leaving-{uuid.uuid4().hex[:8]}"
    created = json.loads(pg_stack.cli("keys", "create", name, "--json"))
    leaving = pg_stack.client(created["key"])
    kept = pg_stack.client().submit(make_image(911), "stays")
    finished = [leaving.submit(make_image(910 + i), f"private {i}")["id"] for i in range(2)]
    batch = leaving.batch([{"image": make_image(920), "prompt": "private batch item"}])
    _finish(
        pg_stack, _claim(pg_stack, [kept["id"], *finished, batch["accepted"][0]["id"]]), finished
    )
    queued = leaving.submit(make_image(921), "still queued")["id"]
    tenant_id = uuid.UUID(created["tenant_id"])
    with pg_stack.sessions.begin() as session:  # a host its webhooks went to
        session.add(
            WebhookEndpoint(tenant_id=tenant_id, scheme="https", host="hooks.example", port=443)
        )

    refused = pg_stack.cli_result("tenants", "purge", name)
    done = json.loads(
        pg_stack.cli("tenants", "purge", name, "--yes", "--operator", "dpo@example", "--json")
    )

    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert done["jobs"] == 4
    for path in [
        *(f"/v1/jobs/{job_id}" for job_id in [*finished, queued, batch["accepted"][0]["id"]]),
        f"/v1/batches/{batch['id']}",
    ]:
        assert pg_stack.call("GET", path, key=created["key"]).status_code == 404, path
    assert pg_stack.call("GET", "/v1/jobs", key=created["key"]).json()["jobs"] == []
    assert pg_stack.client().get(kept["id"])["status"] == "running"
    # Its images go, but the one another tenant's job also names.
    assert _release_now(pg_stack) == 3
    assert not _gone(pg_stack, pg_stack.jobs([kept["id"]])[0].image_key)
    (audit,) = _audit(pg_stack, uuid.UUID(created["tenant_id"]))
    assert (audit.scope, audit.target_id, audit.jobs) == (
        PurgeScope.TENANT,
        uuid.UUID(created["tenant_id"]),
        4,
    )
    assert (audit.operator, audit.api_key_id) == ("dpo@example", None)
    with pg_stack.sessions() as session:
        assert (
            session.scalars(
                select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
            ).all()
            == []
        ), "its webhook endpoints went too"


def _age(stack: Stack, job_id: str, days: float) -> None:
    """Make ``job_id`` look finished ``days`` ago."""
    with stack.sessions.begin() as session:
        session.execute(
            update(Job)
            .where(Job.id == uuid.UUID(job_id))
            .values(finished_at=utcnow() - timedelta(days=days))
        )


def test_retention_empties_only_what_is_past_its_time(pg_stack: Stack) -> None:
    name = f"retained-{uuid.uuid4().hex[:8]}"
    key = json.loads(pg_stack.cli("keys", "create", name, "--json"))["key"]
    pg_stack.cli("tenants", "retention", name, "30")
    tenant = pg_stack.client(key)
    old, recent, hooked = (
        tenant.submit(make_image(930 + i), f"private {i}", callback_url=HOOK)["id"]
        for i in range(3)
    )
    forever = pg_stack.client().submit(make_image(934), "server default: kept")["id"]
    ids = [old, recent, hooked, forever]
    _finish(pg_stack, _claim(pg_stack, ids), ids)
    with pg_stack.sessions.begin() as session:  # only the hooked job's event is pending
        session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.job_id.in_([uuid.UUID(old), uuid.UUID(recent)]))
            .values(status=EventStatus.DELIVERED)
        )
    for job_id, days in ((old, 31), (recent, 29), (hooked, 31), (forever, 400)):
        _age(pg_stack, job_id, days)
    old_key = pg_stack.jobs([old])[0].image_key

    assert apply_retention(pg_stack.settings, pg_stack.sessions, utcnow()) == 1

    tombstone: dict[str, Any] = tenant.get(old)
    assert tombstone["content_deleted_at"] is not None
    assert tombstone["status"] == "succeeded" and tombstone["finished_at"] is not None
    assert [tombstone[k] for k in ("prompt", "result", "reasoning", "metadata")] == [None] * 4
    assert tombstone["image"]["sha256"] is None
    assert pg_stack.jobs([old])[0].model_revision == "rev-1"
    for job_id in (recent, hooked):
        assert tenant.get(job_id)["result"] == f"secret answer {job_id}"
    assert pg_stack.client().get(forever)["content_deleted_at"] is None
    assert _release_now(pg_stack) == 1 and _gone(pg_stack, old_key)
    # The hooked job's event was pending (being retried); once given up, it goes too.
    with pg_stack.sessions.begin() as session:
        session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.job_id == uuid.UUID(hooked))
            .values(status=EventStatus.FAILED)
        )
    assert apply_retention(pg_stack.settings, pg_stack.sessions, utcnow()) == 1
    assert tenant.get(hooked)["result"] is None
    with pg_stack.sessions() as session:
        assert not session.scalars(
            select(WebhookEvent.id).where(WebhookEvent.job_id == uuid.UUID(hooked))
        ).all()


def test_console_purges_only_after_confirmation(pg_stack: Stack) -> None:
    browser = requests.Session()
    page = browser.get(f"{pg_stack.url}/console/sign-in", timeout=10)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    browser.post(
        f"{pg_stack.url}/console/sign-in",
        data={"api_key": pg_stack.key, "csrf_token": token[1]},
        timeout=10,
    )
    job = pg_stack.client().submit(make_image(940), "erase me from the console")
    batch = pg_stack.client().batch([{"image": make_image(941), "prompt": "and this batch"}])
    job_page = f"{pg_stack.url}/console/jobs/{job['id']}/purge"
    batch_page = f"{pg_stack.url}/console/batches/{batch['id']}/purge"

    asked = browser.get(job_page, timeout=10)
    forged = browser.post(job_page, data={"csrf_token": "forged"}, timeout=10)
    assert "cannot be undone" in asked.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', asked.text)  # the signed-in one
    assert token is not None
    assert "cannot be undone" in browser.get(batch_page, timeout=10).text
    assert forged.status_code == 403 and pg_stack.jobs([job["id"]])
    confirmed = [
        browser.post(url, data={"csrf_token": token[1]}, allow_redirects=False, timeout=10)
        for url in (job_page, batch_page)
    ]

    assert [answer.status_code for answer in confirmed] == [302, 302]
    assert pg_stack.call("GET", f"/v1/jobs/{job['id']}").status_code == 404
    assert pg_stack.call("GET", f"/v1/batches/{batch['id']}").status_code == 404
    assert browser.get(job_page, timeout=10).status_code == 404
    with pg_stack.sessions() as session:
        tenant_id = session.scalar(select(ApiKey.tenant_id).where(ApiKey.name == "tests"))
    assert tenant_id is not None
    scopes = [(a.scope, str(a.target_id)) for a in _audit(pg_stack, tenant_id)]
    assert scopes[-2:] == [(PurgeScope.JOB, job["id"]), (PurgeScope.BATCH, batch["id"])]


def test_a_webhook_attempt_in_flight_when_its_job_is_purged_records_nothing(
    pg_stack: Stack,
) -> None:
    hold = threading.Event()
    receiver = Receiver(free_port(), hold=hold).start()
    verdicts: list[str] = []
    try:
        job = pg_stack.client().submit(
            make_image(950), "purged mid-delivery", callback_url=receiver.url
        )
        _finish(pg_stack, _claim(pg_stack, [job["id"]]), [job["id"]])
        with pg_stack.sessions() as session:
            event_id = session.scalars(
                select(WebhookEvent.id).where(WebhookEvent.job_id == uuid.UUID(job["id"]))
            ).one()
        sender = WebhookSender(pg_stack.settings, pg_stack.sessions)
        attempt = threading.Thread(target=lambda: verdicts.append(sender.deliver(event_id)))
        attempt.start()
        receiver.wait_for(1)  # the attempt is in flight, its answer held back

        purged = pg_stack.call("DELETE", f"/v1/jobs/{job['id']}?purge=true")
        hold.set()
        attempt.join(timeout=30)
    finally:
        hold.set()
        receiver.stop()

    assert purged.status_code == 200
    assert verdicts == ["erased"]
    with pg_stack.sessions() as session:
        assert session.get(WebhookEvent, event_id) is None
        assert not session.scalars(
            select(WebhookDelivery.id).where(WebhookDelivery.event_id == event_id)
        ).all()
