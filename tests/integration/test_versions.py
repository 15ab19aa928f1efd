"""Which model and which policy judged each job: ``model_revision`` and ``policy_version``
in every answer that carries a job (GET, lists, the ``done`` event, batch results,
webhook payloads, the console's jobs list), and as filters of ``GET /v1/jobs``, through
the API and the client, with a real worker on the tiny checkpoint."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import select

from shared.models import WebhookEvent
from tests.stack import Stack, make_image
from worker.model.hf import TransformersBackend

# The ``version`` of the bundled moderation-v2 policy (shared/presets/default.json).
POLICY_VERSION = "moderation-v2/2026-11-30"
# No webhook sender runs here: the events wait in the outbox, where their payload is read.
HOOK = "http://127.0.0.1:9/hook"


def _listed(stack: Stack, **params: Any) -> list[str]:
    """Every job id ``GET /v1/jobs`` returns for ``params``, following the cursor."""
    ids: list[str] = []
    params = {"limit": 3, **params}
    while True:
        response = stack.call("GET", "/v1/jobs", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        ids += [job["id"] for job in page["jobs"]]
        if page["next_cursor"] is None:
            return ids
        params["cursor"] = page["next_cursor"]


def test_model_revision_and_policy_version_are_returned_and_filterable(
    pg_stack: Stack, tiny_checkpoint: Path
) -> None:
    client = pg_stack.client()
    judged = [client.submit(make_image(200 + i), preset="moderation-v2")["id"] for i in range(6)]
    text = [client.submit(make_image(210 + i), "hi", max_new_tokens=4)["id"] for i in range(2)]
    batch = client.batch(
        [
            {"image": make_image(220 + i), "preset": "moderation-v2", "callback_url": HOOK}
            for i in range(3)
        ]
    )
    items = [item["id"] for item in batch["accepted"]]
    queued = client.get(judged[0])
    assert queued["model_revision"] is None and queued["policy_version"] is None
    backend = TransformersBackend(tiny_checkpoint)
    backend.load("cpu")
    revision = backend.model_revision

    pg_stack.start_worker()
    done = {job["id"]: job for job in pg_stack.wait_all([*judged, *text, *items])}
    again = client.submit(make_image(200), preset="moderation-v2")["id"]
    cached = client.wait(again)

    assert cached["cached"] is True, "an identical request is answered from the cache"
    done[again] = cached
    for job_id, job in done.items():
        assert job["status"] == "succeeded" and job["model_revision"] == revision, job
        if job_id in text:
            assert job["policy_version"] is None and job["action"] is None
        else:
            assert job["policy_version"] == POLICY_VERSION
            assert job["action"] in ("allow", "flag", "block")
    everything = set(done)
    with_policy = everything - set(text)
    actions = {job["action"] for job in done.values() if job["action"]}
    assert actions, "the policy decided something"

    # The API's filters, alone, combined, and paged.
    assert set(_listed(pg_stack, model_revision=revision)) == everything
    assert set(_listed(pg_stack, policy_version=POLICY_VERSION)) == with_policy
    for action in actions:
        expected = {i for i in with_policy if done[i]["action"] == action}
        both = _listed(
            pg_stack, model_revision=revision, policy_version=POLICY_VERSION, action=action
        )
        assert set(both) == expected and len(both) == len(expected), action
    assert _listed(pg_stack, model_revision="0" * 16) == []
    assert _listed(pg_stack, policy_version="moderation-v0") == []
    assert _listed(pg_stack, policy_version=POLICY_VERSION, batch_id=batch["id"]) == list(
        reversed(items)
    ), "newest first"
    for bad in ({"model_revision": ""}, {"policy_version": "v" * 65}):
        refused = pg_stack.call("GET", "/v1/jobs", params=bad)
        assert refused.status_code == 422, bad
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert refused.json()["code"] == "invalid_query"

    # The client: the fields on what it returns, the filters on its listing.
    listed = list(client.jobs(model_revision=revision, policy_version=POLICY_VERSION, limit=2))
    assert {job["id"] for job in listed} == with_policy
    assert all(job == done[job["id"]] for job in listed if job["id"] != again)
    assert list(client.jobs(model_revision="f" * 16)) == []

    # Batch results, the done event and the webhook payloads carry both.
    lines = list(client.batch_results(batch["id"]))
    assert [(line["model_revision"], line["policy_version"]) for line in lines] == [
        (revision, POLICY_VERSION)
    ] * 3
    [final] = [event for event in client.stream(judged[1]) if event.event == "done"]
    assert final.data == done[judged[1]]
    with pg_stack.sessions() as session:
        events = session.scalars(
            select(WebhookEvent).where(WebhookEvent.job_id.in_([uuid.UUID(i) for i in items]))
        ).all()
    payloads = [json.loads(event.payload)["data"] for event in events]
    assert sorted(p["id"] for p in payloads) == sorted(items)
    assert all(p["model_revision"] == revision for p in payloads)
    assert all(p["policy_version"] == POLICY_VERSION for p in payloads)

    # The console's jobs list shows them, and filters on them like the API.
    browser = requests.Session()
    form = browser.get(f"{pg_stack.url}/console/sign-in", timeout=10)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    browser.post(
        f"{pg_stack.url}/console/sign-in",
        data={"api_key": pg_stack.key, "csrf_token": token[1]},
        timeout=10,
    )
    page = browser.get(
        f"{pg_stack.url}/console/jobs", params={"policy_version": POLICY_VERSION}, timeout=10
    )
    assert page.status_code == 200
    rows = re.findall(r"<tr>\s*<td data-label=\"Prompt\">.*?</tr>", page.text, re.S)
    assert len(rows) == len(with_policy)
    assert all(f"<code>{revision}</code>" in row for row in rows)
    assert all(f"<code>{POLICY_VERSION}</code>" in row for row in rows)
