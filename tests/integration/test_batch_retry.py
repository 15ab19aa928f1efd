"""Batch listing and retries through the API and the client, on PostgreSQL, with no model
worker: items submitted with ``timeout_s=1`` fail as ``expired`` when the sweeper (the
ops process) finds them past their deadline, which is all a retry needs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from cli.redis_server import free_port
from client import ApiError
from tests.console_browser import ConsoleBrowser
from tests.receiver import Receiver
from tests.stack import Stack, make_image

OPS = {"sweep_interval_s": "0.5", "webhook_retry_schedule_s": "0,0.4", "webhook_jitter": "0"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver(free_port()).start()
    yield started
    started.stop()


def _tenant_keys(stack: Stack) -> tuple[str, str]:
    """Two keys of a fresh tenant (so its batches are this test's alone): one without a
    queue cap, one capped at 2 queued jobs."""
    name = f"retry-{uuid.uuid4().hex[:8]}"
    free = json.loads(stack.cli("keys", "create", name, "--json"))["key"]
    capped = json.loads(
        stack.cli(
            "keys", "create", f"{name}-capped", "--tenant", name, "--max-queued", "2", "--json"
        )
    )["key"]
    return free, capped


def _items(count: int, timeout_s: int) -> list[dict[str, Any]]:
    return [
        {
            "image": make_image(40 + i),
            "prompt": f"retry me {i}",
            "max_new_tokens": 4,
            "timeout_s": timeout_s,
            "metadata": {"row": i},
        }
        for i in range(count)
    ]


def test_failed_items_run_again_as_a_new_batch_listed_beside_the_original(
    pg_stack: Stack, receiver: Receiver
) -> None:
    key, capped_key = _tenant_keys(pg_stack)
    client, capped = pg_stack.client(key), pg_stack.client(capped_key)
    original = client.batch(_items(3, timeout_s=1), callback_url=receiver.url, item_events=True)
    waiting = client.batch(_items(1, timeout_s=3600))  # no worker: it stays open
    pg_stack.start_ops(**OPS)
    done = client.wait_batch(original["id"], timeout_s=60, poll_s=0.2)
    assert done["counts"]["failed"] == 3 and done["item_events"] and done["retry_of"] is None

    with pytest.raises(ApiError) as nothing:
        client.retry_batch(original["id"], error_codes=["worker_lost"])
    assert nothing.value.status == 409 and nothing.value.problem["code"] == "nothing_to_retry"
    with pytest.raises(ApiError) as full:  # the retry is admitted like a new batch
        capped.retry_batch(original["id"])
    assert full.value.status == 429 and full.value.problem["code"] == "queue_full"

    retried = client.retry_batch(original["id"], error_codes=["expired"])
    assert retried["retry_of"] == original["id"] and retried["items_accepted"] == 3
    assert [item["index"] for item in retried["accepted"]] == [0, 1, 2]
    old_jobs = {job.item_index: job for job in pg_stack.jobs(a["id"] for a in original["accepted"])}
    new_jobs = pg_stack.jobs(a["id"] for a in retried["accepted"])
    for job in new_jobs:
        before = old_jobs[job.item_index]
        assert job.id != before.id and str(job.batch_id) == retried["id"]
        assert job.item_metadata == {"row": job.item_index} == before.item_metadata
        assert (job.image_key, job.prompt, job.options) == (
            before.image_key,
            before.prompt,
            before.options,
        )
        assert job.callback_url == receiver.url and job.idempotency_key is None
    again = client.batch_status(original["id"])
    assert again["counts"] == done["counts"] and again["completed_at"] == done["completed_at"]
    new = client.wait_batch(retried["id"], timeout_s=60, poll_s=0.2)
    assert new["retry_of"] == original["id"] and new["item_events"]
    assert new["callback_url"] == receiver.url

    # item_events: each item's job.failed came too, for both batches, beside their completion.
    sent = [json.loads(r.body) for r in receiver.wait_for(8)]
    kinds = sorted((e["data"].get("batch_id") or e["data"]["id"], e["type"]) for e in sent)
    assert kinds == sorted(
        [(b, "job.failed") for b in (original["id"], retried["id"]) for _ in range(3)]
        + [(original["id"], "batch.completed"), (retried["id"], "batch.completed")]
    )

    first = client.batches(limit=2)
    assert [b["id"] for b in first["batches"]] == [retried["id"], waiting["id"]]
    rest = client.batches(limit=2, cursor=first["next_cursor"])
    assert [b["id"] for b in rest["batches"]] == [original["id"]] and rest["next_cursor"] is None
    assert [b["id"] for b in client.batches(status="open")["batches"]] == [waiting["id"]]
    completed = client.batches(status="completed")["batches"]
    assert [b["id"] for b in completed] == [retried["id"], original["id"]]

    # The console lists them too, and its retry button makes another retry batch.
    console = ConsoleBrowser(pg_stack.url, key)
    listed = console.get("/batches").text
    assert (
        listed.count("Retry 3 failed items") == 2
        and f"retry of <code>{original['id'][:8]}" in listed
    )
    shown = console.post(f"/batches/{original['id']}/retry").text
    newest = client.batches(limit=1)["batches"][0]
    assert newest["retry_of"] == original["id"] and newest["id"] != retried["id"]
    assert f"as batch {newest['id'][:8]}" in shown

    # Purging the original leaves its retries, no longer pointing at it.
    assert client.purge_batch(original["id"])["purged"] is True
    assert pg_stack.call("GET", f"/v1/batches/{original['id']}", key=key).status_code == 404
    assert client.batch_status(retried["id"])["retry_of"] is None


def test_bad_retry_and_listing_requests_are_refused_before_anything_runs(pg_stack: Stack) -> None:
    batch = pg_stack.client().batch(_items(1, timeout_s=3600))
    refused = {
        "error_codes not a list": pg_stack.call(
            "POST", f"/v1/batches/{batch['id']}/retry", json={"error_codes": "expired"}
        ),
        "unknown field": pg_stack.call(
            "POST", f"/v1/batches/{batch['id']}/retry", json={"items": []}
        ),
        "no failed item": pg_stack.call("POST", f"/v1/batches/{batch['id']}/retry"),
        "unknown batch": pg_stack.call("POST", f"/v1/batches/{uuid.uuid4()}/retry"),
        "bad status": pg_stack.call("GET", "/v1/batches?status=failed"),
        "bad cursor": pg_stack.call("GET", "/v1/batches?cursor=nope"),
        "item_events without callback": pg_stack.call(
            "POST", "/v1/batches", json={"items": [{"prompt": "x"}], "item_events": True}
        ),
    }
    answers = {why: (r.status_code, r.json()["code"]) for why, r in refused.items()}
    assert answers == {
        "error_codes not a list": (422, "invalid_fields"),
        "unknown field": (422, "invalid_fields"),
        "no failed item": (409, "nothing_to_retry"),
        "unknown batch": (404, "not_found"),
        "bad status": (422, "invalid_query"),
        "bad cursor": (422, "invalid_query"),
        "item_events without callback": (422, "invalid_fields"),
    }
    assert all(r.headers["Content-Type"] == "application/problem+json" for r in refused.values())
    assert len(pg_stack.jobs()) == 1
